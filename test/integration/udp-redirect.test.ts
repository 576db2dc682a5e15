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
import { installRule, openDatapath, type TestRule } from '../helpers/fixture.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener, type ListenSummary } from '../helpers/udp.js';

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

    /**
     * Installs a rule in the next slot (stats id = slot) on the VM's interface to PORT, with the
     * given backends, sources or destination; runs `body` with the slot, then removes the rule's
     * match entries whatever happened.
     */
    async function withRule(
      spec: Omit<TestRule, 'slot' | 'statsId' | 'ingress' | 'port'>,
      body: (slot: number) => Promise<void>,
    ) {
      slot++;
      const keys = installRule(dp, { slot, statsId: slot, ingress: [vm.hostIf], port: PORT, ...spec });
      try {
        await body(slot);
      } finally {
        removeMatches(dp.maps, keys);
      }
    }

    /**
     * Installs a rule on the VM's interface to PORT with two backends, c1 (backend id `idA`) and
     * c2 (`idB`), sends `perFlow` datagrams on each of `flows` flows (source ports from `sportBase`,
     * payloads of `size` bytes), and checks what holds for every such run: each datagram arrived
     * once and intact, and both backends got some. Returns what each backend's listener got, and
     * the slot, so that the caller can check counters; the rule's match entries are removed after.
     */
    async function spreadOverTwo(
      [idA, idB]: [number, number],
      flows: number,
      perFlow: number,
      opts: { sportBase: number; size?: number },
      check: (g1: ListenSummary, g2: ListenSummary, sent: number, slot: number) => void,
    ) {
      await withRule(
        {
          backends: [
            { id: idA, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf },
            { id: idB, ip: c2.ip!, mac: c2.mac, iface: c2.hostIf },
          ],
        },
        async (slot) => {
          const [l1, l2] = await Promise.all([listen(c1), listen(c2)]);
          const { sent } = await sendUdp(vm.netns, NOWHERE, PORT, flows * perFlow, { flows, ...opts }).done;
          await new Promise((r) => setTimeout(r, 200));
          const [g1, g2] = await Promise.all([l1.stop(), l2.stop()]);
          assert.equal(g1.bad + g2.bad, 0, 'every datagram intact');
          assert.equal(g1.unique + g2.unique, sent, `all ${sent} datagrams arrived once at a backend`);
          assert.ok(g1.count > 0 && g2.count > 0, `both backends used: ${g1.count}/${g2.count}`);
          check(g1, g2, sent, slot);
        },
      );
    }

    it('delivers every payload intact to one backend, counted exactly', async () => {
      await withRule(
        {
          backends: [{ id: 1, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
        },
        async (slot) => {
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
        },
      );
    });

    it('delivers datagrams of a plain socket (python socket.sendto, default TX checksum offload)', async () => {
      // The sender's eth0 keeps the offloads a new veth has: its datagrams
      // leave with a partial checksum (CHECKSUM_PARTIAL).
      assert.match(topo.exec('vm', 'ethtool', ['-k', 'eth0']), /tx-checksumming: on/);
      await withRule(
        {
          backends: [{ id: 6, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
        },
        async (slot) => {
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
            child.on('exit', () =>
              out.startsWith('READY') ? (received = out.split('\n')[1]) : reject(new Error(out)),
            );
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
        },
      );
    });

    it('reassembles datagrams sent in 3 fragments at one backend', async () => {
      // 3 000-byte datagrams over the 1500-byte MTU: fragments of 1480, 1480, 48 bytes. 32 flows:
      // all on one of two backends has odds 2^-31 (with 8 flows it was ~1 %; the table depends on the run).
      await spreadOverTwo([7, 8], 32, 5, { sportBase: 42000, size: 3000 }, (g1, g2, sent, slot) => {
        const rs = ruleCounters(dp.maps, slot);
        assert.equal(rs.redirected, BigInt(sent * 3), 'every fragment counted');
        assert.equal(backendCounters(dp.maps, 7).packets + backendCounters(dp.maps, 8).packets, BigInt(sent * 3));
        assert.equal(backendCounters(dp.maps, 7).packets, BigInt(g1.count * 3));
      });
    });

    it('follows the first fragment: 3 000-byte datagrams sent as 1200-byte fragments reassemble at ONE backend; a stray fragment matches nothing', async () => {
      slot++;
      const keys = installRule(dp, {
        slot,
        statsId: slot,
        ingress: [vm.hostIf],
        port: PORT,
        backends: [
          { id: 23, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf },
          { id: 24, ip: c2.ip!, mac: c2.mac, iface: c2.hostIf },
        ],
      });
      const DATAGRAMS = 12;
      // Datagram i: 3 000 bytes, (i * 13 + k) & 255, from source port 43000 + i.
      const body = `def body(i): return bytes((i * 13 + k) & 255 for k in range(3000))`;
      const rxPy = (ip: string) =>
        [
          'import socket, select',
          body,
          's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
          `s.bind(("${ip}", ${PORT}))`,
          'print("READY", flush=True)',
          'while select.select([s], [], [], 1.5)[0]:',
          '    d, a = s.recvfrom(65536)',
          '    i = a[1] - 43000',
          '    print("OK" if d == body(i) else "BAD", i, len(d), flush=True)',
        ].join('\n');
      // Fragments crafted on the VM's eth0 (AF_PACKET): offsets 0, 1200, 2400
      // (payload bytes 1200, 1200, 608 of the 3 008-byte UDP datagram).
      const txPy = `import socket, struct
${body}
def csum(b):
    if len(b) % 2: b += b"\\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
src, dst = socket.inet_aton("${vm.ip}"), socket.inet_aton("${NOWHERE}")
eth = bytes.fromhex("${vm.hostMac.replace(/:/g, '')}") + bytes.fromhex("${vm.mac.replace(/:/g, '')}") + b"\\x08\\x00"
def ip(ident, off, mf, part, dst=dst):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(part), ident, (0x2000 if mf else 0) | (off // 8), 64, 17, 0, src, dst)
    return eth + h[:10] + struct.pack("!H", csum(h)) + h[12:] + part
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for i in range(${DATAGRAMS}):
    data = body(i)
    udp = struct.pack("!HHHH", 43000 + i, ${PORT}, 8 + len(data), 0) + data
    c = csum(src + dst + struct.pack("!BBH", 0, 17, len(udp)) + udp) or 0xffff
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    for off in (0, 1200, 2400):
        s.send(ip(0x5000 + i, off, off < 2400, udp[off:off + 1200]))
# A stray non-first fragment (its first was never sent) whose payload bytes 2-3 are the rule's port. To an
# address nothing else here sends to: the fragment-tracking key is (source, destination, IP id, protocol),
# and the kernel gave the earlier tests' fragmented datagrams to NOWHERE ids from a random start (one of
# them was 0x6000 once, and the stray then rightly followed that datagram's first fragment).
s.send(ip(0x6000, 1200, False, struct.pack("!HHHH", ${PORT}, ${PORT}, 16, 0) + b"x" * 8, socket.inet_aton("198.18.9.10")))
`;
      const rxs = [c1, c2].map((h) => {
        const p = spawn('nsenter', [`--net=/run/netns/${h.netns}`, 'python3', '-c', rxPy(h.ip!)]);
        procs.push(p);
        const r = { out: '', exited: new Promise<void>((res) => p.on('exit', () => res())) };
        p.stdout.on('data', (x) => (r.out += x));
        p.stderr.on('data', (x) => (r.out += x));
        return { p, r };
      });
      try {
        for (const { p, r } of rxs) {
          await new Promise<void>((resolve, reject) => {
            const t = setInterval(() => r.out.includes('READY') && (clearInterval(t), resolve()), 20);
            p.on('exit', () => (clearInterval(t), reject(new Error(r.out))));
          });
        }
        const before = globalCounters(dp.maps);
        topo.exec('vm', 'python3', ['-c', txPy]);
        await Promise.all(rxs.map(({ r }) => r.exited));
        const lines = rxs.map(({ r }) => r.out.trim().split('\n').slice(1).filter(Boolean));
        const all = lines.flat();
        assert.ok(
          all.every((l) => l.startsWith('OK ') && l.endsWith(' 3000')),
          `every datagram whole: ${all.join('; ')}`,
        );
        assert.equal(new Set(all).size, DATAGRAMS, `all ${DATAGRAMS} reassembled, each once: ${all.join('; ')}`);
        assert.ok(
          lines[0].length > 0 && lines[1].length > 0,
          `both backends used: ${lines[0].length}/${lines[1].length}`,
        );
        const rs = ruleCounters(dp.maps, slot);
        assert.equal(rs.matched, BigInt(3 * DATAGRAMS), 'every fragment counted, the stray one not');
        assert.equal(rs.redirected, BigInt(3 * DATAGRAMS));
        assert.equal(backendCounters(dp.maps, 23).packets, BigInt(3 * lines[0].length), 'c1: 3 fragments per datagram');
        assert.equal(backendCounters(dp.maps, 24).packets, BigInt(3 * lines[1].length), 'c2: 3 fragments per datagram');
        const after = globalCounters(dp.maps);
        assert.equal(after[GlobalStat.ERR_FRAGMENT] - before[GlobalStat.ERR_FRAGMENT], 1n, 'the stray fragment');
      } finally {
        rxs.forEach(({ p }) => p.exitCode === null && p.kill('SIGKILL'));
        removeMatches(dp.maps, keys);
      }
    });

    it('delivers datagrams a VM writes into a tap with a partial checksum (virtio-net NEEDS_CSUM)', async () => {
      // A tap whose "VM" is this python process: it writes frames with a
      // virtio-net header asking for checksum offload (VIRTIO_NET_HDR_F_NEEDS_CSUM,
      // the UDP field holding only the pseudo-header sum), as a guest's virtio
      // driver does with default offloads.
      const tap = `x${id}tp`;
      const N = 20;
      const tapPy = `import fcntl, os, socket, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"${tap}", 0x0002 | 0x1000 | 0x4000))  # TUNSETIFF: TAP, NO_PI, VNET_HDR
os.system("ip link set ${tap} up")
print("READY", flush=True)
sys.stdin.readline()
def fold(s):
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return s
src, dst = socket.inet_aton("198.18.7.1"), socket.inet_aton("${NOWHERE}")
for i in range(${N}):
    payload = b"tap %d" % i
    ulen = 8 + len(payload)
    pseudo = fold(sum(struct.unpack("!4H", src + dst)) + 17 + ulen)
    udp = struct.pack("!HHHH", 40000 + i, ${PORT}, ulen, pseudo) + payload
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, i, 0, 64, 17, 0, src, dst)
    h = h[:10] + struct.pack("!H", ~fold(sum(struct.unpack("!10H", h))) & 0xffff) + h[12:]
    # to the tap's own MAC: a frame to another (a broadcast) is not for this host (not_for_us)
    eth = bytes.fromhex(open("/sys/class/net/${tap}/address").read().strip().replace(":", "")) + b"\\x02\\x00\\x00\\x00\\x07\\x01" + b"\\x08\\x00"
    vnet = struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 6)  # NEEDS_CSUM, csum_start 34, csum_offset 6
    os.write(fd, vnet + eth + h + udp)
print("SENT", flush=True)
sys.stdin.readline()
`;
      const vmProc = spawn('python3', ['-c', tapPy], { stdio: ['pipe', 'pipe', 'pipe'] });
      procs.push(vmProc);
      let vmOut = '';
      vmProc.stdout.on('data', (x) => (vmOut += x));
      vmProc.stderr.on('data', (x) => (vmOut += x));
      const waitFor = (what: string) =>
        new Promise<void>((resolve, reject) => {
          const t = setInterval(() => vmOut.includes(what) && (clearInterval(t), resolve()), 20);
          vmProc.on('exit', () => (clearInterval(t), reject(new Error(`tap process exited: ${vmOut}`))));
        });
      let keys: ReturnType<typeof installRule> = [];
      try {
        await waitFor('READY');
        assert.equal(dp.attach(tap, mode).mode, mode);
        slot++;
        keys = installRule(dp, {
          slot,
          statsId: slot,
          ingress: [tap],
          port: PORT,
          backends: [{ id: 25, ip: c1.ip!, mac: c1.mac, iface: c1.hostIf }],
        });
        const rxPy = [
          'import socket, select',
          's = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)',
          `s.bind(("${c1.ip}", ${PORT}))`,
          'print("READY", flush=True)',
          'got = set()',
          'while select.select([s], [], [], 1.5)[0]:',
          '    got.add(s.recv(2048))',
          `print(sum(1 for i in range(${N}) if b"tap %d" % i in got), len(got), flush=True)`,
        ].join('\n');
        const rx = spawn('nsenter', [`--net=/run/netns/${c1.netns}`, 'python3', '-c', rxPy]);
        procs.push(rx);
        let out = '';
        rx.stdout.on('data', (x) => (out += x));
        rx.stderr.on('data', (x) => (out += x));
        const exited = new Promise<void>((r) => rx.on('exit', () => r()));
        await new Promise<void>((resolve, reject) => {
          const t = setInterval(() => out.includes('READY') && (clearInterval(t), resolve()), 20);
          rx.on('exit', () => (clearInterval(t), reject(new Error(out))));
        });
        const errors = topo.snmp('c1', 'Udp', 'InCsumErrors');
        vmProc.stdin.write('go\n');
        await waitFor('SENT');
        await exited;
        assert.equal(out.trim().split('\n').pop(), `${N} ${N}`, `the application read all ${N}: ${out}`);
        assert.equal(topo.snmp('c1', 'Udp', 'InCsumErrors'), errors, 'UdpInCsumErrors unchanged');
        assert.equal(ruleCounters(dp.maps, slot).redirected, BigInt(N));
      } finally {
        removeMatches(dp.maps, keys);
        vmProc.stdin.end(); // the tap goes with its file descriptor
        if (vmProc.exitCode === null) await new Promise((r) => vmProc.on('exit', r));
      }
    });

    it('spreads flows over two backends and keeps each flow on one', async () => {
      const flows = 32;
      await spreadOverTwo([2, 3], flows, 10, { sportBase: 41000 }, (g1, g2) => {
        for (const sport of Object.keys(g1.bySport)) {
          assert.equal(g2.bySport[sport], undefined, `flow from port ${sport} split over two backends`);
        }
        assert.equal(Object.keys(g1.bySport).length + Object.keys(g2.bySport).length, flows);
        assert.equal(backendCounters(dp.maps, 2).packets, BigInt(g1.count));
        assert.equal(backendCounters(dp.maps, 3).packets, BigInt(g2.count));
      });
    });

    it("a source filter is part of the match: a packet the exact rule's filter rejects goes to the any-destination rule", async () => {
      // The example that found it: rule "dst" (destination 198.18.9.9, source
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

    it('forwards only what a router would: TTL decremented; TTL <= 1, malformed headers and martian addresses go to the stack, counted', async () => {
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
def frame(name, ttl=64, ver=4, ip_extra=0, udp_extra=0, cut=0, sip="${vm.ip}", dip="${NOWHERE}"):
    payload = name.encode().ljust(32, b".")  # 74-byte frames: above the 60-byte minimum, never padded
    udp = struct.pack("!HHHH", 40000, ${PORT}, 8 + len(payload) + udp_extra, 0) + payload
    src, dst = socket.inet_aton(sip), socket.inet_aton(dip)
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
    s.send(frame("loopback-%d" % i, sip="127.0.0.1"))
    s.send(frame("bcast-%d" % i, dip="255.255.255.255"))
    s.send(frame("mcast-%d" % i, dip="224.0.0.251"))
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
        assert.equal(delta(GlobalStat.ERR_MARTIAN), 15n, 'loopback source, broadcast and multicast destinations');
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
