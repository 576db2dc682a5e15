/**
 * Jumbo frames (MTU 9000 veths): the multi-buffer program (xdp.frags)
 * attaches natively in `auto` mode and carries 9014-byte frames intact, over
 * a cross-connect (byte for byte, raw frames) and through a UDP rule (whose partial checksum is completed
 * over every buffer of the frame). `auto` falls back to generic, with a
 * warning, on any native refusal: shown with a program without frags support,
 * which veth refuses natively at this MTU (ERANGE).
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { BpfObject } from '../../src/server/dataplane/bpf-object.js';
import { ensureVethPeerNapi, ifindexOf } from '../../src/server/dataplane/netdev.js';
import {
  connectDirection,
  disconnectDirection,
  linkCounters,
  removeMatches,
  ruleCounters,
} from '../../src/server/dataplane/tables.js';
import { attachXdp, detachXdp } from '../../src/server/dataplane/xdp.js';
import { EffectiveXdpMode } from '../../src/gen/xdpctl/v1/interface.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, ROOT, runId, sh, shQuiet } from '../helpers/env.js';
import { installRule, openDatapath } from '../helpers/fixture.js';
import { rawExchange } from '../helpers/raw-exchange.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7999;

/** Five 9014-byte frames: broadcast, ethertype 0x88b5, a pattern that differs per frame. */
const RAW_FRAMES = `
def frame(i):
    body = bytes((i * 31 + k * 7) & 255 for k in range(9000))
    return b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x01" + b"\\x88\\xb5" + body
`;
const RAW_TX = `import socket, time
${RAW_FRAMES}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(5):
    s.send(frame(i)); time.sleep(0.02)
`;
const RAW_RX = `import socket, select
${RAW_FRAMES}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind(("eth0", 0))
print("READY", flush=True)
got = []
while len(got) < 5 and select.select([s], [], [], 5)[0]:
    got.append(s.recv(65536))
same = sum(1 for i, f in enumerate(got) if f == frame(i))
print("RECEIVED %d IDENTICAL %d LENGTHS %s" % (len(got), same, [len(f) for f in got]), flush=True)
`;
const PAYLOAD = 9000 - 20 - 8; // a 9014-byte Ethernet frame

function jumbo(topo: Topology, role: string, cidr: string): Host {
  const h = topo.addHost(role, cidr);
  sh('ip', ['link', 'set', h.hostIf, 'mtu', '9000']);
  sh('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'mtu', '9000']);
  return h;
}

describe('jumbo frames (MTU 9000)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let dp: XdpDatapath;
  let a: Host, b: Host, vm: Host, c: Host;
  const listeners: UdpListener[] = [];
  const procs: ChildProcess[] = [];

  before(() => {
    a = jumbo(topo, 'a', '198.18.20.1/24');
    b = jumbo(topo, 'b', '198.18.20.2/24');
    vm = jumbo(topo, 'vm', '198.18.1.1/24');
    c = jumbo(topo, 'c', '198.18.2.1/24');
    topo.routeToXdp('vm');
    dp = openDatapath(pinRoot);
  });
  after(() => {
    listeners.forEach((l) => l.kill());
    procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL'));
    dp?.close();
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
  });

  it('a cross-connect attaches natively in auto mode and carries 9014-byte frames intact', async () => {
    for (const h of [a, b]) {
      assert.equal(dp.attach(h.hostIf, 'auto').mode, 'native', `${h.hostIf} native`);
      assert.ok((await ensureVethPeerNapi(h.hostIf, true)).ok);
    }
    const ai = ifindexOf(a.hostIf);
    const bi = ifindexOf(b.hostIf);
    connectDirection(dp.maps, ai, bi);
    connectDirection(dp.maps, bi, ai);
    try {
      // A raw 9014-byte frame (IEEE local experimental ethertype 0x88b5),
      // sent from a's eth0 and captured on b's eth0 with packet sockets.
      const out = await rawExchange(topo, procs, b.netns, RAW_RX, 'a', RAW_TX);
      assert.match(out, /RECEIVED 5 IDENTICAL 5/, out);
      const st = linkCounters(dp.maps, ai)!;
      assert.ok(st.bytes >= 5n * 9014n, `${st.bytes} bytes counted`);
    } finally {
      disconnectDirection(dp.maps, ai);
      disconnectDirection(dp.maps, bi);
      dp.detach(a.hostIf);
      dp.detach(b.hostIf);
    }
  });

  it('a rule attaches natively in auto mode and delivers 9014-byte frames with a valid checksum', async () => {
    assert.equal(dp.attach(vm.hostIf, 'auto').mode, 'native');
    assert.ok((await ensureVethPeerNapi(c.hostIf, true)).ok);
    const keys = installRule(dp, {
      slot: 1,
      statsId: 1,
      ingress: [vm.hostIf],
      port: PORT,
      backends: [{ id: 1, ip: c.ip!, mac: c.mac, iface: c.hostIf }],
    });
    try {
      const l = await UdpListener.start(c.netns, c.ip!, PORT);
      listeners.push(l);
      const errors = topo.snmp('c', 'Udp', 'InCsumErrors');
      const rcvbuf = topo.snmp('c', 'Udp', 'RcvbufErrors');
      const { sent } = await sendUdp(vm.netns, '198.18.9.9', PORT, 20, { size: PAYLOAD, perTick: 1, tickMs: 10 }).done;
      await new Promise((r) => setTimeout(r, 200));
      const got = await l.stop();
      assert.equal(got.bad, 0, 'every payload intact');
      assert.equal(got.unique, sent, `${got.unique} of ${sent} arrived`);
      assert.equal(topo.snmp('c', 'Udp', 'InCsumErrors'), errors, 'no checksum errors');
      // Paced (one 9 KB datagram per 10 ms): a burst overflows the listener's default receive buffer.
      assert.equal(topo.snmp('c', 'Udp', 'RcvbufErrors'), rcvbuf, 'no receive-buffer drops');
      const rs = ruleCounters(dp.maps, 1);
      assert.equal(rs.redirected, BigInt(sent));
      assert.equal(rs.redirectedBytes, BigInt(sent) * 9014n, 'whole multi-buffer frames counted');
    } finally {
      removeMatches(dp.maps, keys);
      dp.detach(vm.hostIf);
    }
  });

  it('auto falls back to generic with a warning when native is refused (ERANGE)', () => {
    const obj = BpfObject.load(`${ROOT}build/bpf/baseline.bpf.o`);
    const ifindex = ifindexOf(a.hostIf);
    try {
      const r = attachXdp(ifindex, a.hostIf, obj.progFd('base_pass'), 'auto', () => false);
      assert.equal(r.mode, 'generic');
      assert.equal(r.warnings.length, 1);
      assert.match(r.warnings[0], /native XDP refused .*ERANGE.*generic/);
      detachXdp(ifindex, a.hostIf);
      assert.throws(() => attachXdp(ifindex, a.hostIf, obj.progFd('base_pass'), 'native', () => false), /ERANGE/);
    } finally {
      detachXdp(ifindex, a.hostIf);
      obj.close();
    }
  });
});

describe('jumbo frames through the daemon (--xdp-mode auto)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const bridge = `x${id}br`;
  const bridge2 = `x${id}br2`;
  let d: DaemonProcess | undefined;
  let a: Host, b: Host, vm: Host, c: Host;
  const listeners: UdpListener[] = [];
  const procs: ChildProcess[] = [];

  before(() => {
    a = jumbo(topo, 'a', '198.18.20.1/24');
    b = jumbo(topo, 'b', '198.18.20.2/24');
    vm = jumbo(topo, 'vm', '198.18.1.1/24');
    c = jumbo(topo, 'c', '198.18.2.1/24');
    topo.routeToXdp('vm');
    sh('ip', ['link', 'add', bridge, 'type', 'bridge']);
    sh('ip', ['link', 'add', bridge2, 'type', 'bridge']);
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL'));
    await d?.destroy();
    topo.destroy();
    shQuiet('ip', ['link', 'del', bridge]);
    shQuiet('ip', ['link', 'del', bridge2]);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  it('a link and a rule on MTU 9000 veths are accepted, run natively and carry 9014-byte frames', async () => {
    d = await DaemonProcess.start(id, ['--xdp-mode', 'auto']);
    const cl = d.clients();
    // The example that found it: this was INVALID_ARGUMENT "result out of range (ERANGE)".
    await cl.links.connect({ link: { a: a.hostIf, b: b.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    await cl.rules.createRule({
      rule: {
        name: 'jumbo',
        match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: c.ip!, mac: c.mac, interface: c.hostIf, weight: 1 }],
        udpChecksum: 0,
        labels: {},
        generation: 0,
      },
    });
    for (const h of [a, b, vm]) {
      const i = (await cl.interfaces.getInterface({ name: h.hostIf })).interface!;
      assert.equal(i.effectiveMode, EffectiveXdpMode.EFFECTIVE_XDP_MODE_NATIVE, `${h.hostIf} native`);
      assert.deepEqual(i.warnings, [], `${h.hostIf}: no warnings`);
    }

    const l = await UdpListener.start(c.netns, c.ip!, PORT);
    listeners.push(l);
    const errors = topo.snmp('c', 'Udp', 'InCsumErrors');
    const { sent } = await sendUdp(vm.netns, '198.18.9.9', PORT, 20, { size: PAYLOAD, perTick: 1, tickMs: 10 }).done;
    await new Promise((r) => setTimeout(r, 200));
    const got = await l.stop();
    assert.equal(got.bad, 0, 'every payload intact');
    assert.equal(got.unique, sent, `${got.unique} of ${sent} 9014-byte frames arrived`);
    assert.equal(topo.snmp('c', 'Udp', 'InCsumErrors'), errors, 'no checksum errors');

    const out = await rawExchange(topo, procs, b.netns, RAW_RX, 'a', RAW_TX);
    assert.match(out, /RECEIVED 5 IDENTICAL 5/, out);
  });

  it('auto falls back to generic where native is refused, and the interface status says why', async () => {
    const cl = d!.clients();
    // A bridge has no native XDP: the kernel refuses (EOPNOTSUPP). (Two bridges: a link of an interface to itself
    // is refused.)
    await cl.links.connect({ link: { a: bridge, b: bridge2, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    for (const name of [bridge, bridge2]) {
      const i = (await cl.interfaces.getInterface({ name })).interface!;
      assert.equal(i.effectiveMode, EffectiveXdpMode.EFFECTIVE_XDP_MODE_GENERIC, name);
      assert.match(i.warnings.join(' '), /native XDP refused .*; running in generic mode/, name);
    }
  });
});
