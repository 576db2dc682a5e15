/**
 * --cleanup-on-exit puts back what the daemon changed on a veth peer that was moved to another network
 * namespace while the daemon ran (docs/architecture.md, promise 6; a review found: `ip link set PEER netns
 * OTHER`, and the exit logged the peer "gone" and left GRO on there). The veth in the daemon's namespace
 * still names its peer (IFLA_LINK, in the namespace IFLA_LINK_NETNSID names): the daemon follows it, when that
 * veth is provably the one recorded (the daemon's namespace by its id, its ifindex). With real namespaces and
 * veths, a daemon switches GRO on on six backends' veth peers and turns tx VLAN offloads off on its
 * ingress's peer, then, while it runs:
 *  - b1's peer is moved to namespace A (ifindex kept), and brought up there;
 *  - b2's peer is moved to namespace B and renamed there;
 *  - b3's peer is renamed and moved to A, where its ifindex is taken: the kernel gives it another one;
 *  - the ingress's peer is moved to B (ifindex taken there too);
 *  - b4's peer is moved to namespace C and back, and brought up again;
 *  - b5's peer is moved to namespace D, which is deleted (with it the veth pair: really gone);
 *  - b6's peer is moved to a namespace without a name (a process's, as a container runtime's);
 *  - b7's peer is moved to namespace E, then b7's veth in the daemon's namespace to F: nothing proves that the
 *    veth in F is the one recorded (a name and a MAC address are settings), so b7's peer is left alone.
 * The daemon stops: GRO is off again on the five peers it can follow, wherever they are, the offloads on
 * again on the ingress's peer; the log says where each was found, that b5's veth pair no longer exists, and
 * where b7's veth is.
 */
import assert from 'node:assert/strict';
import { type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, UdpChecksumMode } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { unsharedProcess } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('host changes: a veth peer moved to another network namespace is followed', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const ns = {
    A: `xdpt-${id}-mA`,
    B: `xdpt-${id}-mB`,
    C: `xdpt-${id}-mC`,
    D: `xdpt-${id}-mD`,
    E: `xdpt-${id}-mE`,
    F: `xdpt-${id}-mF`,
  };
  let d: DaemonProcess | undefined;
  let unnamed: ChildProcess | undefined;
  let vm: Host;
  const b: Host[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    for (let i = 1; i <= 7; i++) b.push(topo.addHost(`b${i}`, `198.18.2.${i}/24`));
    for (const n of Object.values(ns)) sh('ip', ['netns', 'add', n]);
  });
  after(async () => {
    await d?.destroy();
    topo.destroy(); // deletes the veths left in this namespace, and with them their peers wherever they are
    for (const n of Object.values(ns)) shQuiet('ip', ['netns', 'del', n]);
    unnamed?.kill();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  /** `cmd` run in a namespace: a name under /run/netns, or a path (/proc/PID/ns/net). */
  const inNs = (where: string, cmd: string, args: string[]) =>
    sh('nsenter', [`--net=${where.startsWith('/') ? where : `/run/netns/${where}`}`, cmd, ...args]);
  const feature = (where: string, dev: string, name: string) =>
    new RegExp(`^${name}: (\\w+)`, 'm').exec(inNs(where, 'ethtool', ['-k', dev]))![1];
  const link = (where: string, dev: string) =>
    JSON.parse(inNs(where, 'ip', ['-j', '-d', 'link', 'show', dev]))[0] as { ifindex: number; link_netnsid?: number };
  const ifindexHere = (dev: string) =>
    (JSON.parse(sh('ip', ['-j', 'link', 'show', dev]))[0] as { ifindex: number }).ifindex;

  it('--cleanup-on-exit follows each moved peer through its veth and puts its settings back there', async () => {
    for (const h of b) assert.equal(feature(h.netns, 'eth0', 'generic-receive-offload'), 'off', "a new veth's default");
    assert.equal(feature(vm.netns, 'eth0', 'tx-vlan-offload'), 'on', "a new veth's default");
    d = await DaemonProcess.start(id, ['--cleanup-on-exit', '--log-level', 'info', '--xdp-mode', 'native']);
    await d.clients().rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: 7987, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: b.map((h) => ({ ip: h.ip!, mac: h.mac, interface: h.hostIf, weight: 1 })),
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    for (const h of b) {
      assert.equal(feature(h.netns, 'eth0', 'generic-receive-offload'), 'on', `${h.role}: switched on by the daemon`);
    }
    assert.equal(feature(vm.netns, 'eth0', 'tx-vlan-offload'), 'off', 'turned off by the daemon for XDP');
    const was = Object.fromEntries([vm, ...b].map((h) => [h.role, link(h.netns, 'eth0').ifindex]));
    const b5End = ifindexHere(b[4].hostIf);

    const [b1, b2, b3, b4, b5, b6, b7] = b;
    sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'netns', ns.A]);
    sh('ip', ['-n', ns.A, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'netns', ns.B]);
    sh('ip', ['-n', ns.B, 'link', 'set', 'eth0', 'name', 'moved2']);
    sh('ip', ['-n', b3.netns, 'link', 'set', 'eth0', 'name', 'e3']);
    sh('ip', ['-n', b3.netns, 'link', 'set', 'e3', 'netns', ns.A]);
    sh('ip', ['-n', vm.netns, 'link', 'set', 'eth0', 'netns', ns.B]);
    sh('ip', ['-n', b4.netns, 'link', 'set', 'eth0', 'netns', ns.C]);
    sh('ip', ['-n', ns.C, 'link', 'set', 'eth0', 'netns', b4.netns]);
    sh('ip', ['-n', b4.netns, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', b5.netns, 'link', 'set', 'eth0', 'netns', ns.D]);
    sh('ip', ['netns', 'del', ns.D]);
    const u = unsharedProcess();
    unnamed = u.proc;
    const nsPath = `/proc/${unnamed.pid}/ns/net`;
    await u.ready;
    sh('ip', ['-n', b6.netns, 'link', 'set', 'eth0', 'netns', String(unnamed.pid)]);
    const nsid = (JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', b6.hostIf]))[0] as { link_netnsid: number })
      .link_netnsid;
    const b7End = ifindexHere(b7.hostIf);
    sh('ip', ['-n', b7.netns, 'link', 'set', 'eth0', 'netns', ns.E]);
    sh('ip', ['link', 'set', b7.hostIf, 'netns', ns.F]);
    const b7EndThere = link(ns.F, b7.hostIf).ifindex;
    // Deleting a namespace deletes the veths in it, with their peers (b5's end here), a moment later.
    await until(`${b5.hostIf} deleted with namespace D`, () => !existsSync(`/sys/class/net/${b5.hostIf}`), 15_000);
    const now = {
      b1: link(ns.A, 'eth0').ifindex,
      b2: link(ns.B, 'moved2').ifindex,
      b3: link(ns.A, 'e3').ifindex,
      vm: link(ns.B, 'eth0').ifindex,
      b4: link(b4.netns, 'eth0').ifindex,
      b6: link(nsPath, 'eth0').ifindex,
    };
    // The cases under test: moves that kept the ifindex, and moves into a namespace where it was taken.
    assert.equal(now.b1, was.b1, 'b1: ifindex kept');
    assert.equal(now.b2, was.b2, 'b2: ifindex kept');
    assert.notEqual(now.b3, was.b3, 'b3: a new ifindex (its own was taken by b1 in A)');
    assert.notEqual(now.vm, was.vm, 'vm: a new ifindex (its own was taken by b2 in B)');
    assert.equal(now.b4, was.b4, 'b4: back with its ifindex');
    for (const [where, dev] of [
      [ns.A, 'eth0'],
      [ns.B, 'moved2'],
      [ns.A, 'e3'],
      [b4.netns, 'eth0'],
      [nsPath, 'eth0'],
      [ns.E, 'eth0'],
    ]) {
      assert.equal(feature(where, dev, 'generic-receive-offload'), 'on', `${dev} in ${where}: GRO still on`);
    }
    await sleep(2500); // passes of the reconciler see the moves before the stop

    assert.equal(await d.stop('SIGTERM'), 0);
    const out = d.output;
    d = undefined;
    const done = out
      .split('\n')
      .filter((l) => /"msg":"cleanup: host restored"|"msg":"cleanup incomplete"/.test(l))
      .map((l) => JSON.parse(l) as { msg: string; restored: string[]; leftAlone?: string[]; failed?: string[] });
    assert.equal(done.length, 1, out.slice(-4000));
    assert.equal(feature(ns.A, 'eth0', 'generic-receive-offload'), 'off', 'b1: GRO off again in A');
    assert.equal(feature(ns.B, 'moved2', 'generic-receive-offload'), 'off', 'b2: GRO off again in B');
    assert.equal(feature(ns.A, 'e3', 'generic-receive-offload'), 'off', 'b3: GRO off again in A');
    assert.equal(feature(b4.netns, 'eth0', 'generic-receive-offload'), 'off', 'b4: GRO off again, back home');
    assert.equal(feature(nsPath, 'eth0', 'generic-receive-offload'), 'off', 'b6: GRO off again, unnamed namespace');
    assert.equal(feature(ns.E, 'eth0', 'generic-receive-offload'), 'on', 'b7: left alone');
    assert.equal(feature(ns.B, 'eth0', 'tx-vlan-offload'), 'on', 'vm: tx-vlan-offload on again in B');
    assert.equal(feature(ns.B, 'eth0', 'tx-vlan-stag-hw-insert'), 'on', 'vm: tx-vlan-stag-hw-insert on again in B');
    assert.equal(done[0].msg, 'cleanup: host restored', JSON.stringify(done[0]));
    const via = (h: Host) => `found as the veth peer of ${h.hostIf}`;
    assert.deepEqual(
      [...done[0].restored].sort(),
      [
        `eth0 in netns ${b1.netns}: GRO off again (moved to netns ${ns.A}: ifindex ${now.b1} there; ${via(b1)})`,
        `eth0 in netns ${b2.netns}: GRO off again (moved to netns ${ns.B}: ifindex ${now.b2} there, now named ` +
          `moved2; ${via(b2)})`,
        `eth0 in netns ${b3.netns}: GRO off again (moved to netns ${ns.A}: ifindex ${now.b3} there, ${was.b3} ` +
          `before, now named e3; ${via(b3)})`,
        `eth0 in netns ${b4.netns}: GRO off again`,
        `eth0 in netns ${b6.netns}: GRO off again (moved to the unnamed network namespace with nsid ${nsid}, ` +
          `entered through ${nsPath}: ifindex ${now.b6} there; ${via(b6)})`,
        `eth0 in netns ${vm.netns}: tx-vlan-offload, tx-vlan-stag-hw-insert on again (moved to netns ${ns.B}: ` +
          `ifindex ${now.vm} there, ${was.vm} before; ${via(vm)})`,
      ].sort(),
      'each setting put back is logged, with where its device was found',
    );
    assert.deepEqual(
      done[0].leftAlone,
      [
        `eth0 in netns ${b5.netns}: gone (no device with ifindex ${was.b5} in netns ${b5.netns} any more; its ` +
          `veth peer then, ifindex ${b5End} in this daemon's network namespace (${b5.hostIf} then), is gone too: ` +
          `no device has that ifindex here, nor its name and MAC address ${b5.hostMac} in any other namespace ` +
          'this one has an id for and could read; the veth pair no longer exists)',
        `eth0 in netns ${b7.netns}: gone (no device with ifindex ${was.b7} in netns ${b7.netns} any more; its ` +
          `veth peer then, ifindex ${b7End} in this daemon's network namespace (${b7.hostIf} then), is not here ` +
          `any more: a device with its name and MAC address (${b7.hostMac}) is in netns ${ns.F} (ifindex ` +
          `${b7EndThere} there), not followed: a name and a MAC address are settings, not its identity)`,
      ],
      'the peer whose veth pair was deleted (with the namespace it was moved to) is said to be gone, and why',
    );
  });
});
