/**
 * What a change's preflight found of its rules' backends whose way back cannot be told, recorded before its rules
 * are judged (resync.ts recordChangeLoopsUnknown), so that its reply says it (nineteenth review, LOW-3): the changed
 * rules' entries replaced, a deleted rule's dropped, the others kept, and the next pass made to judge again.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { recordChangeLoopsUnknown } from '../../src/server/core/resync.js';
import { CoreState } from '../../src/server/core/state.js';
import { MODEL_CAPACITY } from '../helpers/model-dataplane.js';

describe('recordChangeLoopsUnknown', () => {
  it("replaces the changed rules' entries, drops a deleted rule's, keeps the others, and forces the next check", () => {
    const state = new CoreState(MODEL_CAPACITY);
    state.hostLoopsUnknown = new Map([
      ['a|10.0.0.1@e1', 'old a'],
      ['b|10.0.0.2@e2', 'b'],
      ['gone|10.0.0.3@e3', 'gone'],
    ]);
    state.hostLoopInput = '';
    const told = {
      rules: new Set(['a', 'gone', 'new']),
      unknown: new Map([['new|10.0.0.4@e4', 'new']]),
    };
    recordChangeLoopsUnknown(state, told);
    assert.deepEqual(
      [...state.hostLoopsUnknown],
      [
        ['b|10.0.0.2@e2', 'b'],
        ['new|10.0.0.4@e4', 'new'],
      ],
    );
    assert.notEqual(state.hostLoopInput, '', 'the next pass checks again');
    // Idempotent: the same record again changes nothing.
    const was = state.hostLoopsUnknown;
    state.hostLoopInput = 'x';
    recordChangeLoopsUnknown(state, told);
    assert.equal(state.hostLoopsUnknown, was);
    assert.equal(state.hostLoopInput, 'x');
    recordChangeLoopsUnknown(state, undefined);
    assert.equal(state.hostLoopsUnknown, was);
  });
});
