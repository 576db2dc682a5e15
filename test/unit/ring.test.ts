import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { fillRing, type RingMember } from '../../src/server/core/ring.js';
import { RING_SIZE } from '../../src/server/dataplane/codec.js';

const EMPTY = -1;
const members = (spec: [string, number][]): RingMember<string>[] =>
  spec.map(([key, weight]) => ({ key, weight, value: key }));
const share = (table: string[] | number[], v: string) => table.filter((x) => x === v).length;

describe('ring filling (weighted rendezvous)', () => {
  it('is deterministic and uses every positive-weight member', () => {
    const m = members([
      ['10.0.0.1@a', 1],
      ['10.0.0.2@a', 1],
      ['10.0.0.3@b', 1],
    ]);
    const t1 = fillRing(m, RING_SIZE, '');
    const t2 = fillRing([...m].reverse(), RING_SIZE, '');
    assert.deepEqual(t1, t2, 'order of members must not matter');
    for (const { key } of m) assert.ok(share(t1, key) > RING_SIZE / 6, `${key} has ${share(t1, key)} slots`);
  });

  it('removing a backend moves only the slots it held', () => {
    const m = members(Array.from({ length: 8 }, (_, i): [string, number] => [`10.0.0.${i}@eth`, 1]));
    const before = fillRing(m, RING_SIZE, '');
    const after = fillRing(
      m.filter((x) => x.key !== '10.0.0.3@eth'),
      RING_SIZE,
      '',
    );
    let moved = 0;
    for (let s = 0; s < RING_SIZE; s++) {
      if (before[s] === '10.0.0.3@eth') {
        moved++;
        assert.notEqual(after[s], '10.0.0.3@eth');
      } else {
        assert.equal(after[s], before[s], `slot ${s} moved from ${before[s]} to ${after[s]}`);
      }
    }
    assert.ok(moved > 0);
  });

  it('weight 0 drains a backend and moves nothing else', () => {
    const m = members([
      ['a', 1],
      ['b', 1],
      ['c', 1],
    ]);
    const before = fillRing(m, RING_SIZE, '');
    const drained = fillRing(
      m.map((x) => (x.key === 'b' ? { ...x, weight: 0 } : x)),
      RING_SIZE,
      '',
    );
    assert.equal(share(drained, 'b'), 0);
    for (let s = 0; s < RING_SIZE; s++) if (before[s] !== 'b') assert.equal(drained[s], before[s]);
  });

  it('shares follow weights', () => {
    const t = fillRing(
      members([
        ['heavy', 3],
        ['light', 1],
      ]),
      4099,
      '',
    );
    const ratio = share(t, 'heavy') / share(t, 'light');
    assert.ok(ratio > 2.5 && ratio < 3.6, `ratio ${ratio}`);
  });

  it('no positive weight gives an empty table', () => {
    const t = fillRing([{ key: 'x', weight: 0, value: 7 }], 11, EMPTY);
    assert.deepEqual(t, new Array(11).fill(EMPTY));
  });
});
