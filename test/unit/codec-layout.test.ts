/**
 * The TypeScript codecs must describe the same bytes as bpf/xdpctl.h: struct
 * layouts are compared with the BTF of the compiled object (what the kernel
 * sees), constants with the header text. Either drifting fails here.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import * as codec from '../../src/server/dataplane/codec.js';

const OBJECT = new URL('../../build/bpf/xdpctl.bpf.o', import.meta.url).pathname;
const HEADER = new URL('../../bpf/xdpctl.h', import.meta.url).pathname;

interface BtfType {
  kind: string;
  name: string;
  size?: number;
  members?: { name: string; bits_offset: number }[];
}

describe('codec layouts match the BPF object', () => {
  const btf = JSON.parse(execFileSync('bpftool', ['-j', 'btf', 'dump', 'file', OBJECT], { encoding: 'utf8' })) as {
    types: BtfType[];
  };
  for (const layout of codec.STRUCT_LAYOUTS) {
    it(`struct ${layout.cName}`, () => {
      const t = btf.types.find((x) => x.kind === 'STRUCT' && x.name === layout.cName);
      assert.ok(t, `struct ${layout.cName} not in the object's BTF`);
      assert.equal(layout.size, t.size, 'size');
      const cFields = Object.fromEntries((t.members ?? []).map((m) => [m.name, m.bits_offset / 8]));
      assert.deepEqual(layout.fields, cFields, 'field offsets');
    });
  }
});

describe('constants match bpf/xdpctl.h', () => {
  const h = readFileSync(HEADER, 'utf8');
  const define = (name: string) => {
    const m = new RegExp(`#define ${name}\\s+(0x[0-9a-fA-F]+|\\d+)`).exec(h);
    assert.ok(m, `${name} not defined`);
    return Number(m[1].replace(/u$/, ''));
  };
  const enumValue = (name: string) => {
    const m = new RegExp(`\\b${name}\\s*=\\s*(\\d+)`).exec(h);
    assert.ok(m, `${name} not in the enum`);
    return Number(m[1]);
  };
  it('defines', () => {
    assert.equal(codec.RING_SIZE, define('XDPCTL_RING_SIZE'));
    assert.equal(codec.NO_BACKEND, define('XDPCTL_NO_BACKEND'));
    assert.equal(codec.AF_INET, define('XDPCTL_AF_INET'));
    assert.equal(codec.AF_INET6, define('XDPCTL_AF_INET6'));
    assert.equal(codec.RULE_F_ACTIVE, define('XDPCTL_RULE_F_ACTIVE'));
    assert.equal(codec.RULE_F_SRC_FILTER, define('XDPCTL_RULE_F_SRC_FILTER'));
    assert.equal(codec.RULE_F_UDP_CSUM_ZERO, define('XDPCTL_RULE_F_UDP_CSUM_ZERO'));
    assert.equal(codec.RULE_F_ONE_BACKEND, define('XDPCTL_RULE_F_ONE_BACKEND'));
    assert.equal(codec.MAX_IFINDEX, define('XDPCTL_MAX_IFINDEX'));
    assert.equal(codec.MAX_BIG_IFINDEXES, define('XDPCTL_MAX_BIG_IFINDEXES'));
    assert.equal(codec.IF_F_XCONNECT, define('XDPCTL_IF_F_XCONNECT'));
    assert.equal(codec.IF_F_LINK, define('XDPCTL_IF_F_LINK'));
    assert.equal(codec.IF_F_GENERIC, define('XDPCTL_IF_F_GENERIC'));
    assert.equal(codec.IF_LINK_SHIFT, define('XDPCTL_IF_LINK_SHIFT'));
  });
  it('enum xdpctl_stat', () => {
    for (const [name, value] of Object.entries(codec.GlobalStat)) {
      assert.equal(value, enumValue(`XDPCTL_STAT_${name}`), name);
    }
    assert.equal(codec.GLOBAL_STAT_COUNT, enumValue('XDPCTL_STAT__MAX'));
  });
});

describe('codecs round-trip', () => {
  it('match key: port in network order, address padded', () => {
    const k = { ifindex: 7, dport: 7999, proto: 17, family: 2, daddr: Uint8Array.of(10, 0, 0, 1) };
    const b = codec.matchKey.encode(k);
    assert.equal(b.length, 24);
    assert.deepEqual([...b.subarray(4, 6)], [0x1f, 0x3f]); // 7999 big-endian
    assert.deepEqual([...b.subarray(12, 24)], new Array(12).fill(0));
    assert.deepEqual(codec.matchKey.decode(b), k);
  });
  it('source key: prefixlen counts the slot bits', () => {
    const b = codec.srcKey.encode({ slot: 3, length: 24, addr: Uint8Array.of(192, 168, 1, 0) });
    assert.equal(b.readUInt32LE(0), 56);
    assert.deepEqual(codec.srcKey.decode(b), { slot: 3, length: 24, addr: Uint8Array.of(192, 168, 1, 0) });
  });
  it('backend', () => {
    const e = {
      dmac: Uint8Array.of(2, 0x42, 0xac, 0x11, 0, 2),
      smac: Uint8Array.of(2, 0, 0, 0, 0, 1),
      ifindex: 25,
      statsId: 9,
      family: 2,
      addr: Uint8Array.of(172, 17, 0, 2),
    };
    assert.deepEqual(codec.backendEntry.decode(codec.backendEntry.encode(e)), e);
  });
  it('counters and per-CPU sums', () => {
    const c = {
      matched: 1n,
      matchedBytes: 2n,
      redirected: 3n,
      redirectedBytes: 4n,
      filtered: 5n,
      noBackend: 6n,
      redirectErrors: 7n,
    };
    assert.deepEqual(codec.ruleStats.decode(codec.ruleStats.encode(c)), c);
    assert.deepEqual(codec.sumCounters([c, c]), {
      matched: 2n,
      matchedBytes: 4n,
      redirected: 6n,
      redirectedBytes: 8n,
      filtered: 10n,
      noBackend: 12n,
      redirectErrors: 14n,
    });
  });
});
