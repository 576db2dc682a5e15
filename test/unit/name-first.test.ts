/**
 * Many like things a start did, said without flooding the log (core/name-first.ts): the first 20 each, the rest in
 * one line with their exact count and their keys as ranges, each of the rest again for a debug line.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { NAMED_FIRST, nameFirst, rangesText } from '../../src/server/core/name-first.js';

describe('nameFirst: the first 20 named, the rest counted in one line', () => {
  it('3 000 cleared slots: 20 named lines, one summary line with the count and the ranges, 2 980 debug lines', () => {
    const slots = Array.from({ length: 3000 }, (_, i) => 1001 + i);
    const named: number[] = [];
    const debug: number[] = [];
    const summaries: { left: number; ranges: string }[] = [];
    const n = nameFirst(
      slots,
      (s) => s,
      (s, isNamed) => (isNamed ? named : debug).push(s),
      (left, ranges) => summaries.push({ left: left.length, ranges }),
    );
    assert.equal(n, 3000);
    assert.equal(NAMED_FIRST, 20);
    assert.deepEqual(named, slots.slice(0, 20));
    assert.deepEqual(summaries, [{ left: 2980, ranges: '1021-4000' }], 'one line: the exact count and the slots');
    assert.equal(debug.length, 2980);
    assert.equal(named.length + debug.length, 3000, 'every one said once at one level or the other');
  });
  it('20 or fewer: each named, no summary line', () => {
    for (const count of [0, 1, 20]) {
      const said: number[] = [];
      let summaries = 0;
      nameFirst(
        Array.from({ length: count }, (_, i) => i),
        (s) => s,
        (s, isNamed) => (assert.ok(isNamed), said.push(s)),
        () => summaries++,
      );
      assert.equal(said.length, count);
      assert.equal(summaries, 0);
    }
  });
  it('ranges: sorted, merged, bounded with the count of what is left out', () => {
    assert.equal(rangesText([9, 3, 5, 6, 7, 8, 12, 3]), '3, 5-9, 12');
    assert.equal(rangesText([]), '');
    const scattered = Array.from({ length: 500 }, (_, i) => i * 2);
    const text = rangesText(scattered, 200);
    assert.ok(text.startsWith('0, 2, 4, '));
    assert.ok(text.endsWith('396, 398 … and 300 more ranges (300 numbers)'), text.slice(-60));
  });
});
