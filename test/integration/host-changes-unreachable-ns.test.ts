/**
 * --cleanup-on-exit and a recorded device in a network namespace the daemon cannot enter by name (a review's
 * findings; docs/architecture.md, promise 6):
 *  - without CAP_SYS_ADMIN (the documented container set: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_NET_RAW
 *    under setpriv) the devices in named namespaces were called "gone", the exit said "cleanup: host restored"
 *    and host-changes.json was emptied, although they still existed (setns needs CAP_SYS_ADMIN): now what it
 *    cannot undo is kept in host-changes.json, said (`cannot enter netns X without CAP_SYS_ADMIN`, with the
 *    command that undoes it), the exit line is "cleanup incomplete", and a later privileged daemon undoes it;
 *  - as root, a backend's veth peer whose namespace lost its name (`ip netns del` while a process keeps the
 *    namespace alive) was "not found (/run/netns/X no longer exists): left alone" and its records cleared: now
 *    it is reached through its veth (the namespace by its nsid, entered through /proc/PID/ns/net of a process
 *    in it) and GRO is switched off there.
 * Real namespaces and veths; GRO and tx-vlan-offload read with ethtool inside each namespace.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

/** The documented container's capabilities: root uid, no CAP_SYS_ADMIN. */
const CONTAINER = ['setpriv', '--bounding-set', '-all,+bpf,+net_admin,+perfmon,+net_raw', '--'];

describe('host changes in a namespace the daemon cannot enter by name', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let keeper: ChildProcess | undefined;
  let vm: Host, b1: Host, b2: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.2.2/24');
  });
  after(async () => {
    await d?.destroy();
    keeper?.kill('SIGKILL');
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const inNs = (where: string, cmd: string, args: string[]) =>
    sh('nsenter', [`--net=${where.startsWith('/') ? where : `/run/netns/${where}`}`, cmd, ...args]);
  const feature = (where: string, name: string) =>
    new RegExp(`^${name}: (\\w+)`, 'm').exec(inNs(where, 'ethtool', ['-k', 'eth0']))![1];
  const records = () =>
    JSON.parse(readFileSync(`/tmp/xdpctl-test-${id}-state/host-changes.json`, 'utf8')) as {
      gro: { ifname: string; netns?: string }[];
      offloads: { ifname: string; netns?: string; features: string[] }[];
    };
  const cleanupLine = (out: string) => {
    const done = out
      .split('\n')
      .filter((l) => /"msg":"cleanup: host restored"|"msg":"cleanup incomplete"/.test(l))
      .map((l) => JSON.parse(l) as { msg: string; restored: string[]; leftAlone?: string[]; failed?: string[] });
    assert.equal(done.length, 1, out.slice(-4000));
    return done[0];
  };

  it('without CAP_SYS_ADMIN: keeps the records it cannot undo, says why, and a privileged daemon undoes them', async () => {
    for (const h of [b1, b2]) assert.equal(feature(h.netns, 'generic-receive-offload'), 'off', "a new veth's default");
    assert.equal(feature(vm.netns, 'tx-vlan-offload'), 'on', "a new veth's default");
    // A root daemon makes the changes (GRO on the backends' peers, VLAN offloads off on the ingress's peer).
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'native']);
    await d.clients().rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7987, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [b1, b2].map((h) => ({ ip: h.ip!, mac: h.mac, interface: h.hostIf, weight: 1 })),
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    for (const h of [b1, b2]) assert.equal(feature(h.netns, 'generic-receive-offload'), 'on', h.role);
    assert.equal(feature(vm.netns, 'tx-vlan-offload'), 'off', 'turned off by the daemon for XDP');
    assert.equal(await d.stop(), 0);
    const before = records();
    assert.equal(before.gro.length, 2, JSON.stringify(before));
    assert.ok(before.offloads.length >= 1, JSON.stringify(before));

    // The container's daemon, --cleanup-on-exit: it cannot enter those namespaces.
    d = await DaemonProcess.start(
      id,
      ['--log-level', 'info', '--xdp-mode', 'native', '--cleanup-on-exit'],
      {},
      CONTAINER,
    );
    const code = await d.stop();
    const done = cleanupLine(d.output);
    d = undefined;
    assert.equal(done.msg, 'cleanup incomplete', JSON.stringify(done));
    assert.equal(code, 0, 'the stop itself ran whole');
    for (const h of [b1, b2]) assert.equal(feature(h.netns, 'generic-receive-offload'), 'on', `${h.role}: left on`);
    assert.equal(feature(vm.netns, 'tx-vlan-offload'), 'off', 'vm: left off');
    const said = [...(done.failed ?? []), ...(done.leftAlone ?? [])].join('\n');
    for (const h of [b1, b2]) {
      assert.match(
        said,
        new RegExp(
          `eth0 in netns ${h.netns}: cannot enter netns ${h.netns} without CAP_SYS_ADMIN: GRO left on, recorded ` +
            `\\(ip netns exec ${h.netns} ethtool -K eth0 gro off\\)`,
        ),
        said,
      );
    }
    assert.match(said, new RegExp(`eth0 in netns ${vm.netns}: cannot enter netns ${vm.netns} without CAP_SYS_ADMIN`));
    assert.doesNotMatch(said, /: gone|not found/, said);
    assert.deepEqual(records(), before, 'host-changes.json still holds every record it could not undo');

    // A privileged daemon undoes them from the records.
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'native', '--cleanup-on-exit']);
    assert.equal(await d.stop(), 0);
    const done2 = cleanupLine(d.output);
    d = undefined;
    assert.equal(done2.msg, 'cleanup: host restored', JSON.stringify(done2));
    for (const h of [b1, b2]) assert.equal(feature(h.netns, 'generic-receive-offload'), 'off', `${h.role}: GRO off`);
    assert.equal(feature(vm.netns, 'tx-vlan-offload'), 'on', 'vm: tx-vlan-offload on again');
    assert.deepEqual(records(), { gro: [], offloads: [] });
  });

  /**
   * As root, a daemon with --cleanup-on-exit switches GRO on on b2's peer; a process keeps b2's namespace
   * alive and `ip netns del` takes its name; `strip` takes the veth fields out of the records first (a record
   * that names no veth of the daemon's: written before records carried them), so that only the namespace's id
   * can lead there.
   */
  const lostName = async (port: number, strip: boolean) => {
    sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'down']);
    sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['netns', 'exec', b2.netns, 'ethtool', '-K', 'eth0', 'gro', 'off']);
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'native', '--cleanup-on-exit']);
    await d.clients().rules.createRule({
      rule: {
        name: `w${port}`,
        match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b2.ip!, mac: b2.mac, interface: b2.hostIf, weight: 1 }],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    assert.equal(feature(b2.netns, 'generic-receive-offload'), 'on', 'switched on by the daemon');
    if (strip) {
      // Stopped without cleanup, the records edited, started again with --cleanup-on-exit (it adopts the rule).
      await d.stop('SIGKILL');
      const file = `/tmp/xdpctl-test-${id}-state/host-changes.json`;
      const r = JSON.parse(readFileSync(file, 'utf8')) as {
        gro: Record<string, unknown>[];
        offloads: Record<string, unknown>[];
      };
      for (const x of [...r.gro, ...r.offloads])
        for (const k of ['linkIndex', 'linkNetnsId', 'linkIfname', 'linkMac']) delete x[k];
      assert.ok(
        r.gro.some((x) => x.netns === b2.netns && x.netnsId !== undefined),
        JSON.stringify(r),
      );
      writeFileSync(file, JSON.stringify(r));
      d = await DaemonProcess.start(id, ['--log-level', 'info', '--xdp-mode', 'native', '--cleanup-on-exit']);
    }
    keeper = spawn('ip', ['netns', 'exec', b2.netns, 'sleep', '600'], { stdio: 'ignore' });
    const path = `/proc/${keeper.pid}/ns/net`;
    const want = readlinkSync(`/proc/self/ns/net`);
    await until('the keeper in b2', () => {
      try {
        return readlinkSync(path) !== want && readlinkSync(`/proc/${keeper!.pid}/exe`).endsWith('/sleep');
      } catch {
        return false;
      }
    });
    sh('ip', ['netns', 'del', b2.netns]);
    assert.equal(feature(path, 'generic-receive-offload'), 'on', 'still on in the unnamed namespace');
    assert.equal(await d.stop(), 0);
    const done = cleanupLine(d.output);
    d = undefined;
    const gro = feature(path, 'generic-receive-offload');
    // b2's namespace gets its name back for the next test (a bind mount of the same namespace).
    sh('touch', [`/run/netns/${b2.netns}`]);
    sh('mount', ['--bind', path, `/run/netns/${b2.netns}`]);
    keeper.kill('SIGKILL');
    keeper = undefined;
    assert.equal(gro, 'off', `GRO off again there: ${JSON.stringify(done)}`);
    assert.equal(done.msg, 'cleanup: host restored', JSON.stringify(done));
    assert.ok(
      done.restored.some((l) =>
        new RegExp(
          `^eth0 in netns ${b2.netns}: GRO off again \\(.*/run/netns/${b2.netns} no longer exists: its namespace ` +
            'found by its id \\d+, entered through /proc/\\d+/ns/net\\)$',
        ).test(l),
      ),
      JSON.stringify(done),
    );
    assert.deepEqual(records(), { gro: [], offloads: [] });
  };

  it('as root: a peer whose namespace lost its name is reached by the namespace id and restored', () =>
    lostName(7988, false));

  it('as root: the same with records that name no veth of the daemon (only the namespace id leads there)', () =>
    lostName(7989, true));
});
