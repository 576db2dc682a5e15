/**
 * Packet verdicts through BPF_PROG_TEST_RUN with hand-built frames: what the
 * program does to each kind of packet, byte for byte, with checksums
 * recomputed from scratch. Runs the real program in the kernel; no traffic
 * leaves (test runs do not transmit redirected frames).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { GlobalStat, IPPROTO_UDP, NO_BACKEND, RING_SIZE } from '../../src/server/dataplane/codec.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { ringIndex } from '../../src/server/dataplane/flow-hash.js';
import { ifindexOf, macOf } from '../../src/server/dataplane/netdev.js';
import {
  backendCounters,
  connectDirection,
  disconnectDirection,
  globalCounters,
  linkCounters,
  removeMatches,
  ruleCounters,
} from '../../src/server/dataplane/tables.js';
import { kernelOnly, runId, sh, shQuiet } from '../helpers/env.js';
import { installRule, openDatapath } from '../helpers/fixture.js';
import { arpFrame, checksums, ipBytes, udpFrame } from '../helpers/packets.js';

const XDP = { ABORTED: 0, DROP: 1, PASS: 2, TX: 3, REDIRECT: 4 };
const VM_MAC = '02:00:00:00:00:01';
const BE1 = { ip: '198.18.2.1', mac: '02:42:ac:11:00:02' };
const BE2 = { ip: '198.18.3.1', mac: '02:42:ac:11:00:03' };

describe('packet verdicts (BPF_PROG_TEST_RUN)', kernelOnly(), () => {
  const id = runId();
  const inIf = `x${id}in`;
  const outIf = `x${id}out`;
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  let dp: XdpDatapath;
  let inIdx: number;

  before(() => {
    sh('ip', ['link', 'add', inIf, 'type', 'veth', 'peer', 'name', outIf]);
    sh('ip', ['link', 'set', inIf, 'up']);
    sh('ip', ['link', 'set', outIf, 'up']);
    inIdx = ifindexOf(inIf);
    dp = openDatapath(pinRoot);
  });
  after(() => {
    dp?.close();
    XdpDatapath.unpinAll(pinRoot);
    shQuiet('ip', ['link', 'del', inIf]);
  });

  const frame = (over: Partial<Parameters<typeof udpFrame>[0]> = {}) =>
    udpFrame({
      dmac: macOf(inIf),
      smac: VM_MAC,
      sip: '198.18.1.1',
      dip: '198.18.9.9',
      sport: 40000,
      dport: 7999,
      payload: Buffer.from('the payload must arrive intact'),
      ...over,
    });

  it('redirects matching UDP with rewritten addresses and valid checksums', () => {
    const keys = installRule(dp, {
      slot: 1,
      statsId: 1,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 1, ...BE1, iface: outIf }],
    });
    try {
      const input = frame();
      const r = dp.testRun(input, inIdx);
      assert.equal(r.action, XDP.REDIRECT);
      const out = r.data;
      assert.equal(out.length, input.length);
      assert.deepEqual([...out.subarray(0, 6)], [...Buffer.from(BE1.mac.split(':').map((x) => parseInt(x, 16)))]);
      assert.equal(out.subarray(6, 12).toString('hex'), macOf(outIf).replaceAll(':', ''), 'source MAC = egress MAC');
      assert.deepEqual([...out.subarray(30, 34)], [...ipBytes(BE1.ip)], 'destination IP');
      assert.deepEqual([...out.subarray(26, 30)], [...ipBytes('198.18.1.1')], 'source IP unchanged');
      const cs = checksums(out);
      assert.ok(cs.ipOk, 'IPv4 header checksum valid');
      assert.ok(cs.udpOk && !cs.udpZero, 'UDP checksum valid and kept');
      // Everything but MACs, daddr and the two checksums is untouched.
      const masked = (b: Buffer) => {
        const c = Buffer.from(b);
        c.fill(0, 0, 12);
        c.fill(0, 24, 26);
        c.fill(0, 30, 34);
        c.fill(0, 40, 42);
        return c;
      };
      assert.deepEqual(masked(out), masked(input));
      const rs = ruleCounters(dp.maps, 1);
      assert.equal(rs.matched, 1n);
      assert.equal(rs.redirected, 1n);
      assert.equal(rs.redirectedBytes, BigInt(input.length));
      assert.deepEqual(backendCounters(dp.maps, 1), { packets: 1n, bytes: BigInt(input.length) });
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('zeroes the UDP checksum when the rule says so, and keeps an absent one absent', () => {
    const keys = installRule(dp, {
      slot: 2,
      statsId: 2,
      ingress: [inIf],
      port: 7999,
      csumZero: true,
      backends: [{ id: 2, ...BE1, iface: outIf }],
    });
    try {
      const r = dp.testRun(frame(), inIdx);
      assert.equal(r.action, XDP.REDIRECT);
      assert.deepEqual(checksums(r.data), { ipOk: true, udpOk: true, udpZero: true });
    } finally {
      removeMatches(dp.maps, keys);
    }
    const keys2 = installRule(dp, {
      slot: 3,
      statsId: 3,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 3, ...BE1, iface: outIf }],
    });
    try {
      const r = dp.testRun(frame({ noUdpChecksum: true }), inIdx);
      assert.equal(r.action, XDP.REDIRECT);
      assert.deepEqual(checksums(r.data), { ipOk: true, udpOk: true, udpZero: true });
    } finally {
      removeMatches(dp.maps, keys2);
    }
  });

  it('checksums stay valid for many addresses and ports (RFC 1624 edge cases)', () => {
    const keys = installRule(dp, {
      slot: 4,
      statsId: 4,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 4, ip: '255.255.0.0', mac: BE1.mac, iface: outIf }],
    });
    try {
      for (let i = 0; i < 300; i++) {
        const sip = `${(i * 37) & 255}.${(i * 11) & 255}.${i & 255}.${(i * 101) & 255}`;
        const dip = `${255 - (i & 255)}.${(i * 13) & 255}.0.${i & 255}`;
        const r = dp.testRun(frame({ sip, dip, sport: 1 + i * 211, payload: Buffer.alloc(i % 37, i) }), inIdx);
        assert.equal(r.action, XDP.REDIRECT);
        const cs = checksums(r.data);
        assert.ok(cs.ipOk && cs.udpOk, `frame ${i} (${sip} -> ${dip}): ${JSON.stringify(cs)}`);
      }
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('passes non-matching traffic and ARP untouched', () => {
    const keys = installRule(dp, {
      slot: 5,
      statsId: 5,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 5, ...BE1, iface: outIf }],
    });
    try {
      const before = globalCounters(dp.maps);
      for (const input of [
        frame({ dport: 8000 }),
        arpFrame(VM_MAC, '198.18.1.1', '198.18.1.254'),
        Buffer.from(frame().subarray(0, 20)), // truncated IPv4 header
      ]) {
        const r = dp.testRun(input, inIdx);
        assert.equal(r.action, XDP.PASS);
        assert.deepEqual(r.data, input);
      }
      // A rule on another ingress does not apply here.
      const other = dp.testRun(frame(), ifindexOf(outIf));
      assert.equal(other.action, XDP.PASS);
      const after = globalCounters(dp.maps);
      assert.equal(after[GlobalStat.PASS] - before[GlobalStat.PASS], 4n);
      assert.equal(after[GlobalStat.ERR_TRUNCATED] - before[GlobalStat.ERR_TRUNCATED], 1n);
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('applies a destination-specific rule before the any-destination one', () => {
    const anyKeys = installRule(dp, {
      slot: 6,
      statsId: 6,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 6, ...BE1, iface: outIf }],
    });
    const dstKeys = installRule(dp, {
      slot: 7,
      statsId: 7,
      ingress: [inIf],
      port: 7999,
      daddr: '198.18.9.10',
      backends: [{ id: 7, ...BE2, iface: outIf }],
    });
    try {
      assert.deepEqual([...dp.testRun(frame({ dip: '198.18.9.10' }), inIdx).data.subarray(30, 34)], [198, 18, 3, 1]);
      assert.deepEqual([...dp.testRun(frame({ dip: '198.18.9.11' }), inIdx).data.subarray(30, 34)], [198, 18, 2, 1]);
    } finally {
      removeMatches(dp.maps, [...anyKeys, ...dstKeys]);
    }
  });

  it('redirects only sources inside the allowed prefixes', () => {
    const keys = installRule(dp, {
      slot: 8,
      statsId: 8,
      ingress: [inIf],
      port: 7999,
      sources: [
        { length: 32, addr: '192.168.122.10' },
        { length: 24, addr: '10.1.2.0' },
      ],
      backends: [{ id: 8, ...BE1, iface: outIf }],
    });
    try {
      assert.equal(dp.testRun(frame({ sip: '192.168.122.10' }), inIdx).action, XDP.REDIRECT);
      assert.equal(dp.testRun(frame({ sip: '10.1.2.77' }), inIdx).action, XDP.REDIRECT);
      const outside = frame({ sip: '192.168.122.11' });
      const r = dp.testRun(outside, inIdx);
      assert.equal(r.action, XDP.PASS);
      assert.deepEqual(r.data, outside, 'a filtered packet is not rewritten');
      assert.equal(dp.testRun(frame({ sip: '10.1.3.1' }), inIdx).action, XDP.PASS);
      const rs = ruleCounters(dp.maps, 8);
      assert.equal(rs.matched, 4n);
      assert.equal(rs.redirected, 2n);
      assert.equal(rs.filtered, 2n);
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('drops with a counter when the rule has no backend', () => {
    const keys = installRule(dp, {
      slot: 9,
      statsId: 9,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 9, ...BE1, iface: outIf, weight: 0 }],
    });
    try {
      const before = globalCounters(dp.maps);
      assert.equal(dp.testRun(frame(), inIdx).action, XDP.DROP);
      assert.equal(ruleCounters(dp.maps, 9).noBackend, 1n);
      assert.equal(globalCounters(dp.maps)[GlobalStat.ERR_NO_BACKEND] - before[GlobalStat.ERR_NO_BACKEND], 1n);
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('leaves IPv4 fragments to the stack', () => {
    const keys = installRule(dp, {
      slot: 10,
      statsId: 10,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 10, ...BE1, iface: outIf }],
    });
    try {
      const input = frame({ fragOff: 0x2000 }); // MF set, offset 0
      const r = dp.testRun(input, inIdx);
      assert.equal(r.action, XDP.PASS);
      assert.deepEqual(r.data, input);
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('picks the ring slot the TypeScript flow hash predicts', () => {
    const backends = Array.from({ length: 16 }, (_, i) => ({
      id: 20 + i,
      ip: `198.18.4.${i + 1}`,
      mac: `02:00:00:00:04:${(i + 1).toString(16).padStart(2, '0')}`,
      iface: outIf,
    }));
    const keys = installRule(dp, { slot: 11, statsId: 11, ingress: [inIf], port: 7999, backends });
    try {
      const ring = Array.from({ length: RING_SIZE }, (_, i) => dp.maps.ruleRing.get(11 * RING_SIZE + i)!);
      const seen = new Set<number>();
      for (let sport = 1000; sport < 1400; sport++) {
        const r = dp.testRun(frame({ sport }), inIdx);
        const be = ring[ringIndex(ipBytes('198.18.1.1'), ipBytes('198.18.9.9'), sport, 7999, IPPROTO_UDP)];
        assert.notEqual(be, NO_BACKEND);
        const want = backends.find((b) => b.id === be)!;
        assert.equal([...r.data.subarray(30, 34)].join('.'), want.ip, `sport ${sport}`);
        seen.add(be);
      }
      assert.equal(seen.size, 16, 'flows spread over all 16 backends');
    } finally {
      removeMatches(dp.maps, keys);
    }
  });

  it('redirects a cross-connected ingress whole, before any rule', () => {
    const keys = installRule(dp, {
      slot: 12,
      statsId: 12,
      ingress: [inIf],
      port: 7999,
      backends: [{ id: 12, ...BE1, iface: outIf }],
    });
    connectDirection(dp.maps, inIdx, ifindexOf(outIf));
    try {
      const input = frame();
      const r = dp.testRun(input, inIdx);
      assert.equal(r.action, XDP.REDIRECT);
      assert.deepEqual(r.data, input, 'cross-connect forwards the frame unchanged');
      assert.deepEqual(linkCounters(dp.maps, inIdx), { packets: 1n, bytes: BigInt(input.length) });
      assert.equal(ruleCounters(dp.maps, 12).matched, 0n, 'the rule never saw it');
    } finally {
      disconnectDirection(dp.maps, inIdx);
      removeMatches(dp.maps, keys);
    }
  });
});
