/**
 * --cleanup-on-exit leaves alone a veth peer it cannot prove is the one it changed (a review's finding: a
 * daemon in config mode with `links: {A: B}` switched GRO on on A's peer; the operator deleted A and made it
 * again with the SAME ifindex (`ip link add A index N type veth peer name eth0 netns NS`), switched GRO on on
 * the new peer and brought it up; at SIGTERM the daemon switched GRO off on that new peer and logged "GRO off
 * again (moved to netns NS: ifindex 3 there, 2 before; found as the veth peer of A)": the old peer was
 * deleted, not moved). The veth at the recorded ifindex names a peer that names it back, but it is another
 * veth: its MAC address (a new veth gets a random one) and what only grows over its life (packets, carrier
 * changes) were recorded with the change and differ now. Real daemon, namespaces and veths.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('host changes: a veth made again with the same ifindex is not the one recorded', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-rv`;
  const file = `${dir}/xdpctl.yaml`;
  let d: DaemonProcess | undefined;
  let a: Host;
  let b: Host;

  before(() => {
    a = topo.addHost('a', '198.18.61.1/24');
    b = topo.addHost('b', '198.18.61.2/24');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const feature = (h: Host, name: string) =>
    new RegExp(`^${name}: (\\w+)`, 'm').exec(sh('ip', ['netns', 'exec', h.netns, 'ethtool', '-k', 'eth0']))![1];
  const gro = (h: Host) => feature(h, 'generic-receive-offload');
  const peerIfindex = (h: Host) =>
    (JSON.parse(sh('ip', ['-n', h.netns, '-j', 'link', 'show', 'eth0']))[0] as { ifindex: number }).ifindex;

  it('--cleanup-on-exit leaves GRO on on the new peer and says why (leftAlone), moving nothing', async () => {
    assert.equal(gro(a), 'off', "a new veth's default");
    writeFileSync(file, `links:\n  ${a.hostIf}: ${b.hostIf}\n`);
    d = await DaemonProcess.start(id, ['--config', file, '--cleanup-on-exit', '--log-level', 'info']);
    await until(`GRO switched on on ${a.hostIf}'s peer`, () => gro(a) === 'on', 15_000);
    const record = `/tmp/xdpctl-test-${id}-state/host-changes.json`;
    await until('the change recorded', () => {
      try {
        return readFileSync(record, 'utf8').includes(a.netns);
      } catch {
        return false;
      }
    });
    const idx = Number(readFileSync(`/sys/class/net/${a.hostIf}/ifindex`, 'utf8'));
    const oldPeer = peerIfindex(a);

    // The review's steps: deleted, made again with the same ifindex, GRO switched on by the operator, up.
    sh('ip', ['link', 'del', a.hostIf]);
    sh('ip', ['link', 'add', a.hostIf, 'index', String(idx), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', a.netns]);
    sh('ip', ['netns', 'exec', a.netns, 'ethtool', '-K', 'eth0', 'gro', 'on']);
    sh('ip', ['link', 'set', a.hostIf, 'up']);
    sh('ip', ['-n', a.netns, 'link', 'set', 'eth0', 'up']);
    const newPeer = peerIfindex(a);
    const newMac = (JSON.parse(sh('ip', ['-j', 'link', 'show', a.hostIf]))[0] as { address: string }).address;
    assert.equal(Number(readFileSync(`/sys/class/net/${a.hostIf}/ifindex`, 'utf8')), idx, 'the same ifindex');
    assert.equal(gro(a), 'on', 'switched on by the operator');
    // The daemon attaches to the new veth and turns the new peer's tx VLAN offloads off for XDP itself: its own
    // change on the new device, recorded apart from the old one's, and put back at the exit.
    await until(`tx-vlan-offload off on the new peer`, () => feature(a, 'tx-vlan-offload') === 'off', 15_000);

    assert.equal(await d.stop('SIGTERM'), 0);
    const out = d.output;
    d = undefined;
    const done = out
      .split('\n')
      .filter((l) => /"msg":"cleanup: host restored"|"msg":"cleanup incomplete"/.test(l))
      .map((l) => JSON.parse(l) as { msg: string; restored?: string[]; leftAlone?: string[]; failed?: string[] });
    assert.equal(done.length, 1, out.slice(-4000));
    assert.equal(gro(a), 'on', "the new peer's GRO, set by the operator, is left as it is");
    const mine = (l: string) => l.startsWith(`eth0 in netns ${a.netns}:`);
    assert.deepEqual(
      (done[0].restored ?? []).filter(mine),
      [`eth0 in netns ${a.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again`],
      "only the daemon's own change on the new peer is said put back",
    );
    assert.equal(feature(a, 'tx-vlan-offload'), 'on', 'on again');
    assert.ok(!out.includes('moved to netns'), 'no move is claimed');
    // Two records of the old peer: GRO switched on, and the tx VLAN offloads turned off for XDP (its ingress).
    const left = (done[0].leftAlone ?? []).filter(mine);
    assert.equal(left.length, 2, JSON.stringify(done[0]));
    for (const line of left) {
      assert.equal(
        line,
        `eth0 in netns ${a.netns}: replaced by another device (ifindex ${oldPeer} then, ${newPeer} now; its veth ` +
          `peer then, ifindex ${idx} in this daemon's network namespace (${a.hostIf} then, ${a.hostIf} now), is not ` +
          `shown to be the same veth: its MAC address was ${a.hostMac} then, ${newMac} now; a veth deleted and made ` +
          'again with that ifindex cannot be told from it otherwise: not followed): left alone',
      );
    }
  });

  it('a peer whose namespace was deleted: the next start says so once and drops its records; the one after is quiet', async () => {
    const c = topo.addHost('c', '198.18.61.3/24');
    writeFileSync(file, `links:\n  ${c.hostIf}: ${b.hostIf}\n`);
    d = await DaemonProcess.start(id, ['--config', file, '--log-level', 'info']);
    const record = `/tmp/xdpctl-test-${id}-state/host-changes.json`;
    const recorded = () => {
      try {
        return readFileSync(record, 'utf8').includes(c.netns);
      } catch {
        return false;
      }
    };
    await until(`GRO switched on on ${c.hostIf}'s peer and recorded`, () => gro(c) === 'on' && recorded(), 15_000);
    assert.equal(await d.stop('SIGTERM'), 0);
    d = undefined;
    assert.ok(recorded(), 'kept for a restart (no --cleanup-on-exit)');
    const saved = JSON.parse(readFileSync(record, 'utf8')) as {
      gro: { netns?: string }[];
      offloads: { netns?: string }[];
    };
    const records = [...saved.gro, ...saved.offloads].filter((r) => r.netns === c.netns).length;
    // The backend's namespace deleted: its eth0 and the veth pair with it, for good.
    sh('ip', ['netns', 'del', c.netns]);
    await until(`${c.hostIf} gone with its peer`, () => {
      try {
        sh('ip', ['link', 'show', c.hostIf]);
        return false;
      } catch {
        return true;
      }
    });
    writeFileSync(file, 'links: {}\n');
    const gone = (out: string) =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg: string })
        .filter((l) => l.msg.includes(`eth0 in netns ${c.netns}`));

    d = await DaemonProcess.start(id, ['--config', file, '--log-level', 'info']);
    const first = gone(d.output);
    assert.equal(first.length, records, d.output.slice(-4000)); // one line for each record of that device
    for (const l of first) {
      assert.match(l.msg, /^host-changes record: eth0 in netns \S+ \(ifindex \d+\), .* by xdpctld, is gone for good: /);
      assert.match(
        l.msg,
        /the veth pair no longer exists\); nothing will be undone for it, and its record is dropped$/,
      );
    }
    assert.ok(
      first.some((l) => l.msg.includes('GRO switched on by xdpctld')),
      JSON.stringify(first),
    );
    await until('the record written without them', () => !recorded());
    assert.equal(await d.stop('SIGTERM'), 0);
    d = undefined;

    d = await DaemonProcess.start(id, ['--config', file, '--log-level', 'info']);
    assert.deepEqual(gone(d.output), [], 'said once: nothing at the next start');
    assert.ok(!recorded(), 'not in the record any more');
    assert.equal(await d.stop('SIGTERM'), 0);
    d = undefined;
  });
});
