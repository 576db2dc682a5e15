/**
 * A restart on an older state store of the same pin root (a previous --state-dir, a rolled-back volume)
 * removes the rules the datapath forwarded that the store does not know; it cannot tell that from a change
 * never saved before a crash, so each rule it removes is named at error level with what the kernel showed it
 * forwarded (before: one info line, "orphans: 2", no names). Real daemons, pins and traffic.
 */
import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Protocol, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

describe('a restart on a state store older than the datapath', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const oldDir = `/tmp/xdpctl-test-${id}-old`;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    for (const x of [stateDir, oldDir]) rmSync(x, { recursive: true, force: true });
  });

  const rule = (name: string, port: number): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }],
    udpChecksum: 0,
    labels: {},
    generation: 0n,
  });
  /** Datagrams delivered of 20 sent to `port`. */
  const probe = async (port: number) => {
    const l = await UdpListener.start(b1.netns, b1.ip!, port);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, port, 20, { flows: 20 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  };

  it('names at error level each rule it removes, with the match entries the kernel held', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    await d.clients().rules.createRule({ rule: rule('web', 7811) });
    assert.equal(await d.stop(), 0);
    cpSync(stateDir, oldDir, { recursive: true }); // the store as it was with one rule
    rmSync(`${oldDir}/xdpctld.lock`, { force: true });
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    await d.clients().rules.createRule({ rule: rule('gb', 7812) });
    await d.clients().rules.createRule({ rule: rule('nb', 7813) });
    assert.equal(await probe(7812), 20, 'gb forwards');
    assert.equal(await d.stop(), 0);

    d = await DaemonProcess.start(id, ['--log-level', 'info', '--state-dir', oldDir]);
    const records = d.output
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; level: number; matchEntries?: string[] });
    const removed = records.filter((r) => r.msg.startsWith('restore removed a rule the state store does not know'));
    assert.equal(removed.length, 2, `one line per rule removed: ${d.output}`);
    for (const r of removed) assert.equal(r.level, 50, 'at error level');
    const ifindex = Number(readFileSync(`/sys/class/net/${vm.hostIf}/ifindex`, 'utf8'));
    const said = removed.map((r) => r.matchEntries!.join('; ')).sort();
    assert.deepEqual(said, [
      `udp port 7812 on ${vm.hostIf} (ifindex ${ifindex}), any destination`,
      `udp port 7813 on ${vm.hostIf} (ifindex ${ifindex}), any destination`,
    ]);
    assert.match(removed[0].msg, /this state store is older than the datapath/);
    // What it says happened did: those rules no longer forward; the store's own rule does.
    assert.equal(await probe(7812), 0, 'gb was removed');
    assert.equal(await probe(7811), 20, 'web forwards');
  });
});
