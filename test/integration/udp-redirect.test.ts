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
import { backendCounters, removeMatches, ruleCounters } from '../../src/server/dataplane/tables.js';
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
