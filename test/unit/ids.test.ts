/**
 * IdPool against a model (a set of used ids): any sequence of alloc, release
 * and take leaves the same ids used, never hands out an id in use, and keeps
 * `available` exact (releasing an id never handed out, or twice, used to make
 * it hand that id out twice).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';

import { IdPool } from '../../src/server/core/ids.js';

const FIRST = 1;
const END = 40;

type Op = { op: 'alloc' } | { op: 'release'; id: number } | { op: 'take'; id: number };
const op: fc.Arbitrary<Op> = fc.oneof(
  fc.constant({ op: 'alloc' as const }),
  fc.record({ op: fc.constant('release' as const), id: fc.integer({ min: -2, max: END + 2 }) }),
  fc.record({ op: fc.constant('take' as const), id: fc.integer({ min: FIRST, max: END - 1 }) }),
);

describe('IdPool', () => {
  it('agrees with a model of the used ids for any sequence of alloc, release and take', () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
        const pool = new IdPool(FIRST, END);
        const used = new Set<number>();
        for (const o of ops) {
          if (o.op === 'alloc') {
            if (used.size === END - FIRST) {
              assert.throws(() => pool.alloc(), RangeError);
              continue;
            }
            const id = pool.alloc();
            assert.ok(id >= FIRST && id < END, `id ${id} in range`);
            assert.ok(!used.has(id), `id ${id} handed out while in use`);
            used.add(id);
          } else if (o.op === 'release') {
            pool.release(o.id);
            used.delete(o.id);
          } else {
            pool.take(o.id);
            used.add(o.id);
          }
          assert.equal(pool.available, END - FIRST - used.size);
          // has(): exactly the ids in use (the slot watcher zeroes what is written into the others).
          for (let id = FIRST - 2; id < END + 2; id++) assert.equal(pool.has(id), used.has(id), `has(${id})`);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('takes 66 666 scattered ids (a large start), then allocates exactly the others', { timeout: 60_000 }, () => {
    const n = 200_000;
    const pool = new IdPool(1, n);
    for (let i = n - 1; i >= 1; i -= 3) pool.take(i); // worst order for a search: highest first
    const seen = new Set<number>();
    while (pool.available > 0) seen.add(pool.alloc());
    assert.equal(seen.size, n - 1 - Math.ceil((n - 1) / 3));
    for (let i = n - 1; i >= 1; i -= 3) assert.ok(!seen.has(i));
  });
});
