/**
 * The datapath does not depend on the process that programmed it:
 *  1. a process attaches and programs a rule, then exits; a new process
 *     adopts the pins and moves the rule to another backend while traffic
 *     flows: no datagram is lost;
 *  2. a new program version replaces the attached one (maps reused, atomic
 *     REPLACE) while traffic flows: none lost, counters continue.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ensureVethPeerNapi } from '../../src/server/dataplane/netdev.js';
import { backendCounters, clearRuleSlot, ruleCounters } from '../../src/server/dataplane/tables.js';
import { kernelOnly, OBJECT_NEXT, ROOT, runId, sleep, waitFor } from '../helpers/env.js';
import { installRule, openDatapath, type TestRule } from '../helpers/fixture.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7999;
/** Upper bound of one run's datagrams; the sender is stopped MARGIN_MS after the change. */
const MAX_COUNT = 40_000;
const MARGIN_MS = 300;

describe('restart and upgrade without loss', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let vm: Host, c1: Host, c2: Host;
  const listeners: UdpListener[] = [];
  const opened: XdpDatapath[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    c1 = topo.addHost('c1', '198.18.2.1/24');
    c2 = topo.addHost('c2', '198.18.3.1/24');
    topo.routeToXdp('vm');
    for (const c of [c1, c2]) assert.ok((await ensureVethPeerNapi(c.hostIf, true)).ok);
  });
  after(() => {
    listeners.forEach((l) => l.kill());
    opened.forEach((d) => d.close());
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
  });

  const rule = (slot: number, backend: Host, beId: number): TestRule => ({
    slot,
    statsId: 1,
    ingress: [vm.hostIf],
    port: PORT,
    backends: [{ id: beId, ip: backend.ip!, mac: backend.mac, iface: backend.hostIf }],
  });

  /** Run a programming process to completion (it exits; the datapath stays). */
  const child = (spec: object): { progId: number } =>
    JSON.parse(
      execFileSync(process.execPath, ['--import', 'tsx', `${ROOT}test/helpers/dp-child.ts`, JSON.stringify(spec)], {
        encoding: 'utf8',
        cwd: ROOT,
      }),
    );

  it('a new process adopts the pins and changes the backend under traffic: none lost', async (t) => {
    const first = child({ pinRoot, attach: [[vm.hostIf, 'native']], rule: rule(1, c1, 1) });
    const [l1, l2] = await Promise.all([c1, c2].map((c) => UdpListener.start(c.netns, c.ip!, PORT)));
    listeners.push(l1, l2);
    const sender = sendUdp(vm.netns, NOWHERE, PORT, MAX_COUNT, { perTick: 10, tickMs: 5 });
    await sleep(300); // traffic is flowing through the program the exited process left

    const dp = openDatapath(pinRoot);
    opened.push(dp);
    assert.equal(dp.adopted, true, 'maps adopted from pins');
    assert.equal(dp.progId, first.progId, 'same program kept');
    assert.equal(dp.attach(vm.hostIf, 'native').replaced, false, 'attachment left as it was');
    await waitFor(() => ruleCounters(dp.maps, 1).redirected > 0n, 'traffic through the adopted rule');
    // Move the rule to backend 2: write slot 2, repoint the match, clear slot 1.
    installRule(dp, rule(2, c2, 2));
    clearRuleSlot(dp.maps, 1, [], [1]);

    assert.equal(sender.child.exitCode, null, 'traffic still flowing after the change');
    await sleep(MARGIN_MS);
    sender.stop();
    const { sent } = await sender.done;
    await sleep(200);
    const [g1, g2] = await Promise.all([l1.stop(), l2.stop()]);
    t.diagnostic(`sent ${sent}, delivered ${g1.unique} to backend 1 + ${g2.unique} to backend 2`);
    assert.equal(g1.bad + g2.bad, 0);
    assert.ok(g1.unique > 0 && g2.unique > 0, 'the change happened while traffic flowed');
    const all = new Set([...g1.seqs, ...g2.seqs]);
    assert.equal(all.size, sent, `lost ${sent - all.size} of ${sent}`);
    assert.equal(ruleCounters(dp.maps, 1).redirected, BigInt(sent), 'rule counters span both processes');
  });

  it('replaces the program hitlessly with maps reused: none lost, counters continue', async (t) => {
    const dp = opened[0];
    const before = backendCounters(dp.maps, 2).packets;
    const [l2] = await Promise.all([UdpListener.start(c2.netns, c2.ip!, PORT)]);
    listeners.push(l2);
    const sender = sendUdp(vm.netns, NOWHERE, PORT, MAX_COUNT, { perTick: 10, tickMs: 5 });
    await waitFor(() => backendCounters(dp.maps, 2).packets > before, 'traffic through the old program');

    const next = openDatapath(pinRoot, OBJECT_NEXT);
    opened.push(next);
    assert.equal(next.adopted, true);
    assert.equal(next.upgraded, true, 'a different program was loaded');
    assert.notEqual(next.progId, dp.progId);
    const r = next.attach(vm.hostIf, 'native');
    assert.equal(r.replaced, true, 'swapped with XDP_FLAGS_REPLACE');
    assert.equal(next.state(vm.hostIf).progId, next.progId);

    assert.equal(sender.child.exitCode, null, 'traffic still flowing after the swap');
    await sleep(MARGIN_MS);
    sender.stop();
    const { sent } = await sender.done;
    await sleep(200);
    const got = await l2.stop();
    t.diagnostic(`sent ${sent}, delivered ${got.unique} across the program swap`);
    assert.equal(got.bad, 0);
    assert.equal(got.unique, sent, `lost ${sent - got.unique} of ${sent}`);
    assert.equal(backendCounters(next.maps, 2).packets - before, BigInt(sent), 'counters continued in the reused maps');
  });
});
