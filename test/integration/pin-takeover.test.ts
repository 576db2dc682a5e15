/**
 * One daemon per datapath by its kernel objects, not by the path they are reached by
 * (docs/architecture.md, promise 3). A live daemon's pin root renamed under it (`mv PINROOT OTHER`): the daemon makes
 * PINROOT again and keeps OTHER locked; a second daemon on OTHER, even with --reset-datapath (which a
 * refusal advises), is refused naming the first. The same maps and program pinned under yet another
 * directory (the renamed one's maps/ and progs/ moved out of it) are refused by their kernel ids: a live
 * xdpctld holds them. Traffic through the first daemon loses nothing meanwhile (before: the second daemon
 * started, detached the first one's program and the two fought: 146 of 6000 datagrams lost).
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Protocol, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7998;

/** Start a daemon that must refuse; what it printed (exit 1, "start failed" logged once at error). */
async function refused(id: string, extra: string[]): Promise<string> {
  let out: string;
  try {
    const d = await DaemonProcess.start(id, extra);
    await d.destroy();
    assert.fail(`a second daemon started with ${extra.join(' ')}`);
  } catch (e) {
    out = (e as Error).message;
  }
  assert.match(out, /^xdpctld exited 1: /, `a refusal exits 1: ${out}`);
  const records = out
    .slice('xdpctld exited 1: '.length)
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { msg: string; level: number });
  assert.equal(records.filter((r) => r.msg === 'start failed' && r.level === 50).length, 1, 'refused once, at error');
  assert.ok(!records.some((r) => /--reset-datapath: (clearing|detached)/.test(r.msg)), 'nothing cleared or detached');
  return out;
}

describe('a live daemon datapath is never taken over, whatever path it is reached by', kernelOnly(), () => {
  const id = runId();
  const other = `${id}b`;
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const renamed = `${pinRoot}-mv`;
  const elsewhere = `/sys/fs/bpf/xdpctl-test-${other}`;
  let first: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;
  const listeners: UdpListener[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.3.1/24');
    topo.routeToXdp('vm');
    first = await DaemonProcess.start(id);
    c = first.clients();
    const rule: Rule = {
      name: 'web',
      match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [vm.hostIf],
      backends: [b1, b2].map((b) => ({ ip: b.ip!, mac: b.mac, interface: b.hostIf })),
      udpChecksum: 0,
      labels: {},
      generation: 0n,
    };
    await c.rules.createRule({ rule });
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await first?.destroy();
    topo.destroy();
    for (const d of [pinRoot, renamed, elsewhere]) XdpDatapath.unpinAll(d);
    for (const x of [id, other]) {
      rmSync(`/tmp/xdpctl-test-${x}-state`, { recursive: true, force: true });
      rmSync(`/tmp/xdpctl-test-${x}.sock`, { force: true });
      rmSync(`/tmp/xdpctl-test-${x}.sock.lock`, { force: true });
    }
  });

  /** `during` runs while 32 flows of UDP go through the first daemon's rule; returns [sent, delivered]. */
  async function underTraffic(during: () => Promise<void>): Promise<[number, number]> {
    const ls = await Promise.all([b1, b2].map((b) => UdpListener.start(b.netns, b.ip!, PORT)));
    listeners.push(...ls);
    const sender = sendUdp(vm.netns, NOWHERE, PORT, 40_000, { flows: 32, perTick: 10, tickMs: 5 });
    try {
      await sleep(300);
      await during();
      await sleep(1500); // a fight would go on here: the second daemon's passes every second
    } catch (e) {
      sender.stop();
      await sender.done.catch(() => undefined);
      ls.forEach((l) => l.kill());
      listeners.length = 0;
      throw e;
    }
    sender.stop();
    const { sent } = await sender.done;
    await sleep(200);
    const got = await Promise.all(ls.map((l) => l.stop()));
    listeners.length = 0;
    assert.ok(
      got.every((g) => g.unique > 0),
      'both backends receive',
    );
    return [sent, new Set(got.flatMap((g) => g.seqs)).size];
  }

  const logFrom = (d: DaemonProcess) => {
    const at = d.output.length;
    return () => d.output.slice(at);
  };

  it('a pin root renamed under the daemon stays locked by it: a second daemon there is refused, --reset-datapath or not', async (t) => {
    const log = logFrom(first!);
    const status = await c.daemon.getStatus({});
    const progId = status.datapath!.programId;
    let msg = '';
    const [sent, delivered] = await underTraffic(async () => {
      sh('mv', [pinRoot, renamed]);
      await until(
        () => `the first daemon makes its pin root again: ${log()}`,
        () => /was removed or replaced under the running daemon: created again \(0700\) and locked again/.test(log()),
        5000,
      );
      await sleep(200); // its pins re-pinned there by the same pass
      msg = await refused(other, ['--pin-root', renamed, '--reset-datapath']);
    });
    t.diagnostic(
      `sent ${sent}, delivered ${delivered}; refusal: ${msg.split('\n').find((l) => l.includes('start failed'))}`,
    );
    assert.match(msg, new RegExp(`pin root ${renamed} is in use by another xdpctld \\(pid ${first!.child.pid}\\b`));
    assert.equal(delivered, sent, `lost ${sent - delivered} of ${sent}`);
    assert.equal(
      JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${renamed}/progs/xdpctl_main`])).id,
      progId,
      'the renamed directory still pins the running program (left as it was)',
    );
    assert.equal(
      JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${pinRoot}/progs/xdpctl_main`])).id,
      progId,
      'and the pin root made again pins it too',
    );
    assert.doesNotMatch(log(), /detached .*by someone else|re-attached/, 'nobody detached the first daemon');
    assert.equal(
      log()
        .split('\n')
        .filter((l) => l.includes(`pin root ${pinRoot} was renamed to ${renamed} under the running daemon`)).length,
      1,
      'the rename logged once, naming where the pins are now',
    );
  });

  it('the same maps and program pinned under another directory are refused by their kernel ids, naming the live daemon', async (t) => {
    const log = logFrom(first!);
    const status = await c.daemon.getStatus({});
    const progId = status.datapath!.programId;
    let msg = '';
    const [sent, delivered] = await underTraffic(async () => {
      // The renamed directory is locked, not what is inside it: its pins moved out to a directory nobody locks.
      mkdirSync(elsewhere, { mode: 0o700 });
      sh('mv', [`${renamed}/maps`, `${elsewhere}/maps`]);
      sh('mv', [`${renamed}/progs`, `${elsewhere}/progs`]);
      msg = await refused(other, ['--pin-root', elsewhere, '--reset-datapath']);
    });
    t.diagnostic(
      `sent ${sent}, delivered ${delivered}; refusal: ${msg.split('\n').find((l) => l.includes('start failed'))}`,
    );
    assert.match(
      msg,
      new RegExp(
        `the datapath pinned under ${elsewhere} is in use by another xdpctld \\(pid ${first!.child.pid} "[^"]*", ` +
          `pin root [^)]*${pinRoot}\\b[^)]*holding map ids [0-9, ]+ and program ids? [0-9, ]*\\b${progId}\\b`,
      ),
    );
    assert.match(msg, /--reset-datapath never takes a live daemon's datapath/);
    assert.equal(delivered, sent, `lost ${sent - delivered} of ${sent}`);
    assert.equal(
      JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${elsewhere}/progs/xdpctl_main`])).id,
      progId,
      'its pins are left as they were',
    );
    assert.doesNotMatch(log(), /detached .*by someone else|re-attached/, 'nobody detached the first daemon');
  });

  it('once the first daemon has exited, the same pins have no live owner: the refusal no longer applies', async () => {
    assert.equal(await first!.stop(), 0);
    first = undefined;
    // A start on them is judged as before (here: no state for a datapath that forwards, refused without
    // --reset-datapath), not as in use.
    let out = '';
    try {
      const d = await DaemonProcess.start(other, ['--pin-root', elsewhere]);
      await d.destroy();
    } catch (e) {
      out = (e as Error).message;
    }
    assert.doesNotMatch(out, /in use by another xdpctld/);
    assert.match(out, /still forwards 1 rule match entry/);
  });
});
