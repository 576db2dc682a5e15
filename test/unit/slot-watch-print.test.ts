/**
 * dataplane/slot-watch-print.ts: the prints the slot watcher's thread keeps of each rule slot (its rule entry's
 * bytes, then its table's ids, 8 bytes apart as the mmap of rule_ring lays them) and of each backend entry. A
 * change of any id or byte changes the print; the words between two ids (the padding of an mmapable array's
 * values) do not take part.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { printBytes, printRing } from '../../src/server/dataplane/slot-watch-print.js';

const RING = 1031;

describe('slot watcher prints', () => {
  it('a table: any id moved changes the print, padding does not; two tables swapped give other prints', () => {
    const u32 = new Uint32Array(2 * RING * 2);
    for (let j = 0; j < 2 * RING; j++) u32[2 * j] = j % 2 ? 7 : 9;
    const cfg = Buffer.from([1, 0, 0, 0, 3, 0, 0, 0]);
    const slot = (s: number) => printRing(printBytes(cfg, 0, 8), u32, s * RING * 2, RING);
    const before = [slot(0), slot(1)];
    for (const j of [0, 500, RING - 1]) {
      const was = u32[2 * j];
      u32[2 * j] = 8;
      assert.notEqual(slot(0), before[0], `id ${j} rewritten`);
      assert.equal(slot(1), before[1], 'the other slot unchanged');
      u32[2 * j] = was;
      assert.equal(slot(0), before[0], `id ${j} written back`);
    }
    u32[1] = 0xffffffff; // padding of value 0
    assert.equal(slot(0), before[0]);
    // Half the entries holding one id set to the other (what a review did): another print.
    for (let j = 0; j < RING; j++) if (u32[2 * j] === 7) u32[2 * j] = 9;
    assert.notEqual(slot(0), before[0]);
  });

  it('a rule entry or backend entry: any byte changes the print (whole words and the rest)', () => {
    const b = Buffer.alloc(41, 0);
    const p0 = printBytes(b, 0, 41);
    for (const i of [0, 3, 4, 39, 40]) {
      b[i] = 1;
      assert.notEqual(printBytes(b, 0, 41), p0, `byte ${i}`);
      b[i] = 0;
    }
    assert.equal(printBytes(b, 0, 41), p0);
    // The flags word 0x9 and 0x1 of one rule entry (ACTIVE | ONE_BACKEND, ACTIVE).
    assert.notEqual(printBytes(Buffer.from([9, 0, 0, 0, 0, 0, 0, 0]), 0, 8), printBytes(Buffer.alloc(8, 0), 0, 8));
  });
});
