/**
 * VLAN tags carried as offload metadata: a tc egress program on the sender's
 * eth0 pushes an 802.1Q tag (VLAN 100), which the kernel keeps beside the
 * frame (hardware VLAN acceleration) while the device offers tx-vlan-offload,
 * as a new veth does. Such a frame must be treated like an in-band tagged one
 * in both XDP modes: an untagged rule does not match it, and a cross-connect
 * delivers it with its tag, byte for byte. The product gets there by asking
 * for the tag in the frame (tx-vlan-offload off on the ingress veth's peer);
 * the test checks that it did, and that the frames say so.
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ensureVethPeerNapi, ifindexOf } from '../../src/server/dataplane/netdev.js';
import {
  connectDirection,
  disconnectDirection,
  globalCounters,
  removeMatches,
  ruleCounters,
} from '../../src/server/dataplane/tables.js';
import type { XdpMode } from '../../src/server/dataplane/xdp.js';
import { GlobalStat } from '../../src/server/dataplane/codec.js';
import { kernelOnly, removeIproute2BpffsDirs, ROOT, runId } from '../helpers/env.js';
import { installRule, openDatapath } from '../helpers/fixture.js';
import { rawExchange } from '../helpers/raw-exchange.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7999;
const PUSH_VLAN = `${ROOT}build/bpf/test-vlan.bpf.o`;

/** A frame sent untagged with a packet socket, and how it must arrive: with the tag after the MACs. */
const FRAME = `f = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x07" + b"\\x88\\xb5" + bytes(range(200))
tagged = f[:12] + b"\\x81\\x00\\x00\\x64" + f[12:]`;

/** Receive frames on eth0; rebuild the tag the kernel reports beside the frame (PACKET_AUXDATA). */
const RX = `import socket, select, struct
${FRAME}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.bind(("eth0", 0))
print("READY", flush=True)
got = []
seen = []
while len(got) < 3 and select.select([s], [], [], 5)[0]:
    d, anc, _, addr = s.recvmsg(4096, 1024)
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    for lvl, typ, data in anc:
        if lvl == 263 and typ == 8:
            st, ln, snap, mac, net, tci, tpid = struct.unpack("IIIHHHH", data[:20])
            if st & 0x10:  # TP_STATUS_VLAN_VALID
                d = d[:12] + struct.pack("!HH", tpid or 0x8100, tci) + d[12:]
    seen.append(d[:18].hex())
    if b"\\x88\\xb5" in (d[12:14], d[16:18]):  # ours, tagged or not (not the sender's IPv6 chatter)
        got.append(d)
print("RECEIVED %d TAGGED %d SEEN %s" % (len(got), sum(1 for d in got if d == tagged), seen), flush=True)
`;
const TX = `import socket, time
${FRAME}
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind(("eth0", 0))
for i in range(3):
    s.send(f); time.sleep(0.02)
`;

for (const mode of ['native', 'generic'] as XdpMode[]) {
  describe(`VLAN tags as offload metadata (${mode} mode)`, kernelOnly(), () => {
    const id = runId();
    const topo = new Topology(id);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    let dp: XdpDatapath;
    let vm: Host, c1: Host, a: Host, b: Host;
    const procs: ChildProcess[] = [];
    const listeners: UdpListener[] = [];

    const pushVlan = (h: Host) => {
      topo.exec(h.role, 'tc', ['qdisc', 'add', 'dev', 'eth0', 'clsact']);
      topo.exec(h.role, 'tc', ['filter', 'add', 'dev', 'eth0', 'egress', 'bpf', 'da', 'obj', PUSH_VLAN, 'sec', 'tc']);
    };

    before(async () => {
      vm = topo.addHost('vm', '198.18.1.1/24');
      c1 = topo.addHost('c1', '198.18.2.1/24');
      a = topo.addHost('a', '198.18.40.1/24');
      b = topo.addHost('b', '198.18.40.2/24');
      topo.routeToXdp('vm');
      for (const h of [vm, a]) {
        assert.match(
          topo.exec(h.role, 'ethtool', ['-k', 'eth0']),
          /^tx-vlan-offload: on$/m,
          'a new veth offloads tags',
        );
        pushVlan(h);
      }
      dp = openDatapath(pinRoot);
      for (const h of [vm, a, b]) {
        const r = dp.attach(h.hostIf, mode);
        assert.equal(r.mode, mode);
        assert.deepEqual(r.warnings, [], 'nothing the product could not set');
      }
      if (mode === 'native') for (const h of [c1, a, b]) assert.ok((await ensureVethPeerNapi(h.hostIf, true)).ok);
    });
    after(() => {
      listeners.forEach((l) => l.kill());
      procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL'));
      dp?.close();
      topo.destroy();
      XdpDatapath.unpinAll(pinRoot);
      removeIproute2BpffsDirs();
    });

    it('the product asked for tags in the frame (tx-vlan-offload off on the ingress peers)', () => {
      for (const h of [vm, a]) assert.match(topo.exec(h.role, 'ethtool', ['-k', 'eth0']), /^tx-vlan-offload: off$/m);
    });

    it('an untagged rule does not match a tagged datagram', async () => {
      const keys = installRule(dp, {
        slot: 1,
        statsId: 1,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [{ id: 1, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      try {
        const l = await UdpListener.start(c1.netns, c1.ip!, PORT);
        listeners.push(l);
        const before = globalCounters(dp.maps);
        const { sent } = await sendUdp(vm.netns, '198.18.9.9', PORT, 20).done;
        await new Promise((r) => setTimeout(r, 100));
        assert.equal((await l.stop()).count, 0, 'nothing reached the backend');
        const rs = ruleCounters(dp.maps, 1);
        assert.equal(rs.matched, 0n);
        assert.equal(rs.redirected, 0n);
        const passed = globalCounters(dp.maps)[GlobalStat.PASS] - before[GlobalStat.PASS];
        assert.ok(passed >= BigInt(sent), `all ${sent} passed to the stack (${passed})`);
      } finally {
        removeMatches(dp.maps, keys);
      }
    });

    it('a cross-connect delivers the frame with its tag, byte for byte', async () => {
      const [ia, ib] = [a, b].map((h) => ifindexOf(h.hostIf));
      connectDirection(dp.maps, ia, ib);
      connectDirection(dp.maps, ib, ia);
      try {
        const out = await rawExchange(topo, procs, b.netns, RX, 'a', TX);
        assert.match(out, /RECEIVED 3 TAGGED 3/, out);
      } finally {
        disconnectDirection(dp.maps, ia);
        disconnectDirection(dp.maps, ib);
      }
    });
  });
}
