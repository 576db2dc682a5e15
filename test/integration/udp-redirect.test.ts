/**
 * The xdp-redirect demo with real packets: a "VM" namespace sends UDP to an
 * address nobody has, port 7999; the XDP program on the VM's veth rewrites
 * and redirects it into "container" namespaces, where a UDP listener on the
 * backend address checks every payload.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ensureVethPeerNapi } from '../../src/server/dataplane/netdev.js';
import { GlobalStat } from '../../src/server/dataplane/codec.js';
import { backendCounters, globalCounters, removeMatches, ruleCounters } from '../../src/server/dataplane/tables.js';
import type { XdpMode } from '../../src/server/dataplane/xdp.js';
import { kernelOnly, runId } from '../helpers/env.js';
import { installRule, openDatapath } from '../helpers/fixture.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9'; // no host has it: only XDP can deliver
const PORT = 7999;

for (const mode of ['native', 'generic'] as XdpMode[]) {
  describe(`UDP redirect demo (${mode} mode)`, kernelOnly(), () => {
    const id = runId();
    const topo = new Topology(id);
    const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
    let dp: XdpDatapath;
    let vm: Host, c1: Host, c2: Host;
    const listeners: UdpListener[] = [];
    const procs: ChildProcess[] = [];
    let slot = 0;

    before(async () => {
      vm = topo.addHost('vm', '198.18.1.1/24');
      c1 = topo.addHost('c1', '198.18.2.1/24');
      c2 = topo.addHost('c2', '198.18.3.1/24');
      topo.routeToXdp('vm');
      dp = openDatapath(pinRoot);
      assert.equal(dp.attach(vm.hostIf, mode).mode, mode);
      if (mode === 'native') for (const c of [c1, c2]) assert.ok((await ensureVethPeerNapi(c.hostIf, true)).ok);
    });
    after(() => {
      listeners.forEach((l) => l.kill());
      procs.forEach((p) => p.exitCode === null && p.kill('SIGKILL'));
      dp?.close();
      topo.destroy();
      XdpDatapath.unpinAll(pinRoot);
    });

    const listen = async (h: Host) => {
      const l = await UdpListener.start(h.netns, h.ip!, PORT);
      listeners.push(l);
      return l;
    };

    it('delivers every payload intact to one backend, counted exactly', async () => {
      slot++;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [{ id: 1, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      try {
        const l = await listen(c1);
        const csumErrors = topo.snmp('c1', 'Udp', 'InCsumErrors');
        const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 300).done;
        await new Promise((r) => setTimeout(r, 100));
        const got = await l.stop();
        assert.equal(topo.snmp('c1', 'Udp', 'InCsumErrors'), csumErrors, 'no UDP checksum errors at the backend');
        assert.equal(got.bad, 0, 'no damaged payloads');
        assert.equal(got.unique, sent, `received ${got.unique} of ${sent}`);
        const be = backendCounters(dp.maps, 1);
        assert.equal(be.packets, BigInt(sent), 'per-backend packets = sent');
        const rs = ruleCounters(dp.maps, slot);
        assert.equal(rs.redirected, BigInt(sent));
        assert.equal(be.bytes, rs.redirectedBytes);
      } finally {
        removeMatches(dp.maps, keys);
      }
    });

    it('delivers datagrams of a plain socket (python socket.sendto, default TX checksum offload)', async () => {
      // The sender's eth0 keeps the offloads a new veth has: its datagrams
      // leave with a partial checksum (CHECKSUM_PARTIAL).
      assert.match(topo.exec('vm', 'ethtool', ['-k', 'eth0']), /tx-checksumming: on/);
      slot++;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [{ id: 6, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      try {
        const got = new Promise<string>((resolve, reject) => {
          const py = [
            'import socket,sys',
            's=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)',
            `s.bind(("${c1.ip}",${PORT}))`,
            's.settimeout(5)',
            'print("READY",flush=True)',
            'n=0',
            'try:',
            '  while n<20:',
            '    d,a=s.recvfrom(2000)',
            '    n+=1 if d==b"hello %d" % n else 1000',
            'except socket.timeout: pass',
            'print(n,flush=True)',
          ].join('\n');
          const child = spawn('nsenter', [`--net=/run/netns/${c1.netns}`, 'python3', '-c', py]);
          let out = '';
          child.stdout.on('data', (d) => {
            out += d;
            if (out === 'READY\n') resolve('');
          });
          child.on('exit', () => (out.startsWith('READY') ? (received = out.split('\n')[1]) : reject(new Error(out))));
          procs.push(child);
        });
        let received = '';
        await got;
        const errors = topo.snmp('c1', 'Udp', 'InCsumErrors');
        topo.exec('vm', 'python3', [
          '-c',
          [
            'import socket,time',
            's=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)',
            'for i in range(20):',
            `  s.sendto(b"hello %d" % i, ("${NOWHERE}", ${PORT})); time.sleep(0.01)`,
          ].join('\n'),
        ]);
        await new Promise<void>((r) => procs[procs.length - 1].on('exit', () => r()));
        assert.equal(received, '20', 'the application read all 20 datagrams, in order');
        assert.equal(topo.snmp('c1', 'Udp', 'InCsumErrors'), errors, 'UdpInCsumErrors unchanged');
        assert.equal(ruleCounters(dp.maps, slot).redirected, 20n);
      } finally {
        removeMatches(dp.maps, keys);
      }
    });

    it('reassembles datagrams sent in 3 fragments at one backend', async () => {
      slot++;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [
          { id: 7, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf },
          { id: 8, ip: c2.ip!, mac: c2.mac, iface: c2.hostIf },
        ],
      });
      try {
        const [l1, l2] = await Promise.all([listen(c1), listen(c2)]);
        // 3 000-byte datagrams over the 1500-byte MTU: fragments of 1480, 1480, 48 bytes.
        const flows = 8;
        const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, flows * 5, { flows, sportBase: 42000, size: 3000 })
          .done;
        await new Promise((r) => setTimeout(r, 200));
        const [g1, g2] = await Promise.all([l1.stop(), l2.stop()]);
        assert.equal(g1.bad + g2.bad, 0, 'every datagram intact');
        assert.equal(g1.unique + g2.unique, sent, `all ${sent} datagrams reassembled at a backend`);
        assert.ok(g1.count > 0 && g2.count > 0, `both backends used: ${g1.count}/${g2.count}`);
        const rs = ruleCounters(dp.maps, slot);
        assert.equal(rs.redirected, BigInt(sent * 3), 'every fragment counted');
        assert.equal(backendCounters(dp.maps, 7).packets + backendCounters(dp.maps, 8).packets, BigInt(sent * 3));
        assert.equal(backendCounters(dp.maps, 7).packets, BigInt(g1.count * 3));
      } finally {
        removeMatches(dp.maps, keys);
      }
    });

    it('spreads flows over two backends and keeps each flow on one', async () => {
      slot++;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [
          { id: 2, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf },
          { id: 3, ip: c2.ip!, mac: c2.mac, iface: c2.hostIf },
        ],
      });
      try {
        const [l1, l2] = await Promise.all([listen(c1), listen(c2)]);
        const flows = 32;
        const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, flows * 10, { flows, sportBase: 41000 }).done;
        await new Promise((r) => setTimeout(r, 100));
        const [g1, g2] = await Promise.all([l1.stop(), l2.stop()]);
        assert.equal(g1.bad + g2.bad, 0);
        assert.equal(g1.unique + g2.unique, sent, 'every datagram arrived once');
        assert.ok(g1.count > 0 && g2.count > 0, `both backends used: ${g1.count}/${g2.count}`);
        for (const sport of Object.keys(g1.bySport)) {
          assert.equal(g2.bySport[sport], undefined, `flow from port ${sport} split over two backends`);
        }
        assert.equal(Object.keys(g1.bySport).length + Object.keys(g2.bySport).length, flows);
        assert.equal(backendCounters(dp.maps, 2).packets, BigInt(g1.count));
        assert.equal(backendCounters(dp.maps, 3).packets, BigInt(g2.count));
      } finally {
        removeMatches(dp.maps, keys);
      }
    });

    it("a source filter is part of the match: a packet the exact rule's filter rejects goes to the any-destination rule", async () => {
      // Issue 13's example: rule "dst" (destination 198.18.9.9, source
      // 10.50.7.0/24) and rule "any" (same port, no destination); the VM
      // (198.18.1.1) sends to 198.18.9.9.
      slot++;
      const anySlot = slot;
      const anyKeys = installRule(dp, {
        slot: anySlot,
        statsId: anySlot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [{ id: 20, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      slot++;
      const dstSlot = slot;
      const dstKeys = installRule(dp, {
        slot: dstSlot,
        statsId: dstSlot,
        ingress: [vm.hostIf],
        port: PORT,
        daddr: NOWHERE,
        sources: [{ length: 24, addr: '10.50.7.0' }],
        backends: [{ id: 21, ip: c2.ip!, mac: c2.mac, iface: c2.hostIf }],
      });
      try {
        assert.equal(vm.ip, '198.18.1.1');
        const [l1, l2] = await Promise.all([listen(c1), listen(c2)]);
        const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 40).done;
        await new Promise((r) => setTimeout(r, 100));
        const [g1, g2] = await Promise.all([l1.stop(), l2.stop()]);
        assert.equal(g1.bad, 0);
        assert.equal(g1.unique, sent, `"any" rule's backend received ${g1.unique} of ${sent}`);
        assert.equal(g2.count, 0, `"dst" rule's backend received nothing`);
        assert.equal(ruleCounters(dp.maps, anySlot).redirected, BigInt(sent));
        const dst = ruleCounters(dp.maps, dstSlot);
        assert.equal(dst.redirected, 0n);
        assert.equal(dst.matched, 0n, 'the rejected source did not match "dst"');
        assert.equal(dst.filtered, BigInt(sent), '"dst" says it filtered them');
      } finally {
        removeMatches(dp.maps, [...dstKeys, ...anyKeys]);
      }
    });

    it('forwards only what a router would: TTL decremented; TTL <= 1 and malformed headers go to the stack, counted', async () => {
      slot++;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [{ id: 22, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      // The receiver reports each datagram's payload and the TTL it arrived with (IP_RECVTTL).
      const rxPy = [
        'import socket, select',
        's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
        `s.bind(("${c1.ip}", ${PORT}))`,
        's.setsockopt(socket.IPPROTO_IP, 12, 1)  # IP_RECVTTL (Linux; Python has no name for it)',
        'print("READY", flush=True)',
        'while select.select([s], [], [], 1.5)[0]:',
        '    d, anc, _, _ = s.recvmsg(2048, 64)',
        '    ttl = [int.from_bytes(v[:4], "little") for l, t, v in anc if (l, t) == (socket.IPPROTO_IP, socket.IP_TTL)]',
        '    print(d.decode().rstrip("."), ttl[0] if ttl else -1, flush=True)',
      ].join('\n');
      // Crafted frames from the VM's eth0 (AF_PACKET), to the rule's address
      // and port, each case 5 times with its name as the payload.
      const txPy = `import socket, struct
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
def frame(name, ttl=64, ver=4, ip_extra=0, udp_extra=0, cut=0):
    payload = name.encode().ljust(32, b".")  # 74-byte frames: above the 60-byte minimum, never padded
    udp = struct.pack("!HHHH", 40000, ${PORT}, 8 + len(payload) + udp_extra, 0) + payload
    src, dst = socket.inet_aton("${vm.ip}"), socket.inet_aton("${NOWHERE}")
    ph = src + dst + struct.pack("!BBH", 0, 17, len(udp))
    u = udp + (b"\\0" if len(udp) % 2 else b"")
    c = csum(ph + u) if udp_extra == 0 else 0
    udp = udp[:6] + struct.pack("!H", c or 0xffff) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", (ver << 4) | 5, 0, 20 + len(udp) + ip_extra, 7, 0, ttl, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    f = bytes.fromhex("${vm.hostMac.replace(/:/g, '')}") + bytes.fromhex("${vm.mac.replace(/:/g, '')}") + b"\\x08\\x00" + ip + udp
    return f[:len(f) - cut]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(5):
    s.send(frame("ok-%d" % i))
    s.send(frame("ttl2-%d" % i, ttl=2))
    s.send(frame("ttl1-%d" % i, ttl=1))
    s.send(frame("ttl0-%d" % i, ttl=0))
    s.send(frame("iplen-%d" % i, ip_extra=4))
    s.send(frame("udplen-%d" % i, udp_extra=2))
    s.send(frame("udpshort-%d" % i, udp_extra=-2))
    s.send(frame("version-%d" % i, ver=6))
`;
      const rx = spawn('nsenter', [`--net=/run/netns/${c1.netns}`, 'python3', '-c', rxPy]);
      procs.push(rx);
      let out = '';
      rx.stdout.on('data', (d) => (out += d));
      rx.stderr.on('data', (d) => (out += d));
      const exited = new Promise<void>((r) => rx.on('exit', () => r()));
      try {
        await new Promise<void>((resolve, reject) => {
          const t = setInterval(() => out.includes('READY') && (clearInterval(t), resolve()), 20);
          rx.on('exit', () => (clearInterval(t), reject(new Error(out))));
        });
        const before = globalCounters(dp.maps);
        topo.exec('vm', 'python3', ['-c', txPy]);
        await exited;
        const got = out
          .trim()
          .split('\n')
          .slice(1)
          .map((l) => l.split(' '));
        const after = globalCounters(dp.maps);
        const delta = (i: number) => after[i] - before[i];
        assert.deepEqual(
          got.map(([name]) => name.replace(/-\d+$/, '')).sort(),
          [...Array(5).fill('ok'), ...Array(5).fill('ttl2')],
          `only the well-formed datagrams with TTL > 1 arrive: ${out}`,
        );
        for (const [name, ttl] of got) {
          assert.equal(Number(ttl), name.startsWith('ok') ? 63 : 1, `${name}: TTL decremented by one`);
        }
        assert.equal(delta(GlobalStat.ERR_TTL), 10n, 'TTL 1 and 0: counted as ttl');
        assert.equal(delta(GlobalStat.ERR_TRUNCATED), 5n, 'IP total length > frame: truncated');
        assert.equal(delta(GlobalStat.ERR_MALFORMED), 15n, 'UDP length != IP payload, version 6: malformed');
        const rs = ruleCounters(dp.maps, slot);
        assert.equal(rs.redirected, 10n, 'only the forwarded ones counted as redirected');
        assert.equal(rs.matched, 10n);
      } finally {
        if (rx.exitCode === null) rx.kill('SIGKILL');
        removeMatches(dp.maps, keys);
      }
    });

    it('honours the source filter', async () => {
      slot++;
      const allowed = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        sources: [{ length: 32, addr: vm.ip! }],
        backends: [{ id: 4, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      let l = await listen(c1);
      let { sent } = await sendUdp(vm.netns, NOWHERE, PORT, 50).done;
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await l.stop()).unique, sent, 'allowed source delivered');
      removeMatches(dp.maps, allowed);

      slot++;
      const denied = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        sources: [{ length: 24, addr: '198.18.100.0' }],
        backends: [{ id: 5, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
      });
      try {
        l = await listen(c1);
        ({ sent } = await sendUdp(vm.netns, NOWHERE, PORT, 50).done);
        await new Promise((r) => setTimeout(r, 100));
        assert.equal((await l.stop()).count, 0, 'other sources are not redirected');
        const rs = ruleCounters(dp.maps, slot);
        assert.equal(rs.filtered, BigInt(sent));
        assert.equal(rs.redirected, 0n);
      } finally {
        removeMatches(dp.maps, denied);
      }
    });
  });
}
