/**
 * The datapath picks a ring slot with ring_pos() (bpf/xdpctl.bpf.c): h % RING_SIZE as a multiply and a
 * shift, because a BPF modulo becomes an x86 `div`. The identity holds for every 32-bit h if the constant
 * is ceil(2^(32+l) / d) and overshoots 2^(32+l) by at most 2^l (Granlund and Montgomery, "Division by
 * invariant integers using multiplication", 1994, thm. 4.2); a C loop over all 2^32 values agreed. This
 * test reads the constant and shift from the source, checks the condition, and compares with % on the
 * values where an error would show first (multiples of d and their neighbours at the top of the range) and
 * on random ones. test/integration/verdicts.test.ts checks the program itself against ringIndex().
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import fc from 'fast-check';

import { RING_SIZE } from '../../src/server/dataplane/codec.js';

const src = readFileSync(new URL('../../bpf/xdpctl.bpf.c', import.meta.url), 'utf8');
const body = /__u32 ring_pos\(__u32 h\)\n\{([\s\S]*?)\n\}/.exec(src)?.[1] ?? '';
const m = /\(__u64\)h \* (\d+)ULL\) >> (\d+)/.exec(body);

describe('ring_pos(): h % RING_SIZE without a division', () => {
  assert.ok(m, `ring_pos() not found in bpf/xdpctl.bpf.c: ${body}`);
  const mult = BigInt(m[1]);
  const shift = BigInt(m[2]);
  const d = BigInt(RING_SIZE);
  const pos = (h: bigint) => h - ((h * mult) >> shift) * d;

  it('uses a multiplier that is exact for every 32-bit value', () => {
    assert.match(body, /XDPCTL_RING_SIZE/);
    assert.ok(shift >= 32n, `shift ${shift}`);
    const l = shift - 32n;
    assert.equal(mult, ((1n << shift) + d - 1n) / d, 'ceil(2^shift / RING_SIZE)');
    assert.ok(mult * d - (1n << shift) <= 1n << l, 'overshoot <= 2^(shift-32)');
    assert.ok(mult * 0xffffffffn < 1n << 64n, 'the product fits in 64 bits');
  });

  it('agrees with % at the multiples of RING_SIZE, the top of the range and random values', () => {
    const top = 0xffffffffn;
    for (let k = top / d - 3000n; k <= top / d; k++) {
      for (const h of [k * d - 1n, k * d, k * d + 1n, k * d + d - 1n])
        if (h >= 0n && h <= top) assert.equal(pos(h), h % d, `h=${h}`);
    }
    for (let h = 0n; h < 5000n; h++) assert.equal(pos(h), h % d, `h=${h}`);
    for (let h = top - 5000n; h <= top; h++) assert.equal(pos(h), h % d, `h=${h}`);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), (n) => pos(BigInt(n)) === BigInt(n) % d),
      { numRuns: 20_000 },
    );
  });
});
