/**
 * The demo's clean-up (scripts/remove-each.ts) retries a removal that fails for a moment and reports what it
 * could not remove, with the error, instead of swallowing the failure and counting it as removed (a loaded
 * run once left xdpdemo-...-h2 behind while it printed "removed 5 namespaces").
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { removeEach } from '../../scripts/remove-each.js';

describe('removeEach', () => {
  it('retries, counts only what is gone, and names what is left with its error', async () => {
    const present = new Set(['a', 'b', 'c']);
    const calls: string[] = [];
    const r = await removeEach(
      ['a', 'b', 'c', 'never-made'],
      (n) => {
        calls.push(n);
        // b is busy twice, then goes; c never goes.
        if (n === 'b' && calls.filter((x) => x === 'b').length < 3)
          throw Object.assign(new Error('x'), { stderr: 'busy\n' });
        if (n === 'c')
          throw Object.assign(new Error('x'), { stderr: 'Cannot remove namespace file: Device or resource busy\n' });
        present.delete(n);
      },
      (n) => present.has(n),
      { tries: 4, delayMs: 1 },
    );
    assert.deepEqual(r.removed, ['a', 'b']);
    assert.deepEqual(r.left, [{ name: 'c', error: 'Cannot remove namespace file: Device or resource busy' }]);
    assert.equal(calls.filter((x) => x === 'b').length, 3);
    assert.equal(calls.filter((x) => x === 'c').length, 4);
    assert.ok(!calls.includes('never-made'));
  });
});
