/**
 * A change of many rows (an ApplyRules of 300 rules) runs its SQLite transaction on the store's worker thread
 * (core/store.ts WORKER_ROWS): the disk failing under it must leave the kernel and the disk as they were, as
 * for a change committed on the event loop (state-faults.test.ts). The state directory is a tiny tmpfs filled
 * up for real (ENOSPC) while traffic flows to a rule the change does not touch; the client gets
 * RESOURCE_EXHAUSTED naming the state path, the kernel maps are byte for byte unchanged, and a restart shows
 * what the client was told. With space again the same ApplyRules lands, and a restart shows all of it.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { ChangeAction } from '../../src/gen/xdpctl/v1/common.js';
import { type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { WORKER_ROWS } from '../../src/server/core/store.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, shQuiet, sleep } from '../helpers/env.js';
import { apiUdpRule, backendOf } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7999;
const MANY = WORKER_ROWS + 44;

describe('state store faults in a large change (its transaction on the worker thread)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host;
  const listeners: UdpListener[] = [];

  const start = async () => {
    d = await DaemonProcess.start(id, ['--max-rules', String(MANY + 8)]);
    c = d.clients();
  };
  const rule = (name: string, port: number): Rule => apiUdpRule(name, port, [vm.hostIf], [backendOf(b1)]);
  const fill = () => {
    for (let i = 0; ; i++) {
      try {
        writeFileSync(`${stateDir}/fill-${i}`, Buffer.alloc(64 * 1024, 1));
      } catch (e) {
        assert.equal((e as NodeJS.ErrnoException).code, 'ENOSPC');
        return;
      }
    }
  };
  const unfill = () => {
    for (const f of readdirSync(stateDir)) if (f.startsWith('fill-')) rmSync(`${stateDir}/${f}`);
  };
  const names = async () => {
    const out: string[] = [];
    let pageToken = '';
    do {
      const page = await c.rules.listRules({ pageSize: 1000, pageToken });
      out.push(...page.rules.map((r) => r.name));
      pageToken = page.nextPageToken;
    } while (pageToken);
    return out;
  };
  const many = () => [rule('web', PORT), ...Array.from({ length: MANY }, (_, i) => rule(`n${i}`, 20000 + i))];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
    mkdirSync(stateDir, { recursive: true });
    sh('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', stateDir]);
    await start();
    await c.rules.createRule({ rule: rule('web', PORT) });
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    shQuiet('umount', ['-l', stateDir]);
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it(`full disk during an ApplyRules adding ${MANY} rules: RESOURCE_EXHAUSTED naming the path, kernel unchanged, restart agrees; then it lands`, async () => {
    const maps = d!.dumpMaps();
    const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
    listeners.push(l);
    const sender = sendUdp(vm.netns, NOWHERE, PORT, 20_000, { perTick: 10, tickMs: 4 });
    fill();
    try {
      await sleep(200);
      await assert.rejects(
        c.rules.applyRules({ rules: many(), validateOnly: false }),
        (e: Error & { code?: Status }) => {
          assert.equal(e.code, Status.RESOURCE_EXHAUSTED, `${e.code === undefined ? e : Status[e.code]}: ${e.message}`);
          assert.match(e.message, /disk is full/);
          assert.ok(e.message.includes(`${stateDir}/state.db`), `the message names the state path: ${e.message}`);
          return true;
        },
      );
      await sleep(200);
    } finally {
      sender.stop();
      unfill();
    }
    const { sent } = await sender.done;
    await sleep(150);
    const got = await l.stop();
    assert.ok(sent >= 100, `traffic flowed (${sent})`);
    assert.equal(got.unique, sent, 'every datagram forwarded across the fault');
    assert.deepEqual(d!.dumpMaps(), maps, 'kernel maps unchanged');
    assert.deepEqual(await names(), ['web']);
    await d!.stop('SIGTERM');
    await start();
    assert.deepEqual(await names(), ['web'], 'the restart shows what the client was told');
    // With space, the same change lands, and a restart shows all of it.
    const r = await c.rules.applyRules({ rules: many(), validateOnly: false });
    assert.equal(r.changes.filter((x) => x.action === ChangeAction.CHANGE_ACTION_CREATE).length, MANY, 'created');
    await d!.stop('SIGTERM');
    await start();
    assert.equal((await names()).length, MANY + 1, 'the restart shows every rule of it');
  });
});
