/**
 * The egress watch (core/egress-watch.ts): how counters read on successive passes become a verdict on an
 * egress whose peer cannot be inspected, and the back-off of failed trials. The integration test
 * (egress-unverifiable) drives the same with real traffic; here every branch, with counters as given.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  FAIL_MIN_ERRORS,
  judgedEgress,
  RETRY_BASE_MS,
  RETRY_MAX_MS,
  stepEgress,
  type EgressWatch,
} from '../../src/server/core/egress-watch.js';

const read = (...c: [number, number, number][]) =>
  new Map(c.map(([id, packets, errors]) => [id, { packets: BigInt(packets), redirectErrors: BigInt(errors) }]));
const inspected = { ok: true, unverified: true, key: 'k1', detail: 'peer cannot be inspected' };

describe('egress watch', () => {
  it('unknown until traffic: taken frames verify, errors with none taken fail', () => {
    let w = stepEgress(undefined, 'k1', [1, 2], read([1, 10, 0], [2, 5, 0]), 0, 'v0');
    assert.equal(w.verdict, 'unknown');
    assert.deepEqual(judgedEgress(inspected, w), inspected, 'unknown: ok and unverified');
    w = stepEgress(w, 'k1', [1, 2], read([1, 10, 0], [2, 5, 0]), 1000, 'v0');
    assert.equal(w.verdict, 'unknown', 'nothing observed');
    w = stepEgress(w, 'k1', [1, 2], read([1, 12, 0], [2, 5, 0]), 2000, 'v0');
    assert.equal(w.verdict, 'verified');
    assert.deepEqual(
      [judgedEgress(inspected, w).ok, judgedEgress(inspected, w).unverified],
      [true, undefined],
      'verified: ok, not marked',
    );
    // Errors below the threshold, then more: failing, with the back-off's first step.
    w = stepEgress(w, 'k1', [1, 2], read([1, 12, 2], [2, 5, 0]), 3000, 'v0');
    assert.equal(w.verdict, 'verified');
    w = stepEgress(w, 'k1', [1, 2], read([1, 12, 2], [2, 5, Number(FAIL_MIN_ERRORS) - 2]), 4000, 'v0');
    assert.equal(w.verdict, 'failing');
    assert.equal(w.retryAt, 4000 + RETRY_BASE_MS);
    assert.match(w.why!, new RegExp(`dropped all of the last ${FAIL_MIN_ERRORS} frames redirected to v0`));
    const j = judgedEgress(inspected, w);
    assert.deepEqual([j.ok, j.detail], [false, w.why]);
  });

  it('a failed trial doubles the back-off up to the cap; a taken frame resets it', () => {
    let w: EgressWatch = stepEgress(undefined, 'k1', [1], read([1, 0, 0]), 0, 'v0');
    let errors = 0;
    let t = 0;
    const waits: number[] = [];
    for (let i = 0; i < 8; i++) {
      errors += Number(FAIL_MIN_ERRORS);
      w = stepEgress(w, 'k1', [1], read([1, 0, errors]), t, 'v0');
      assert.equal(w.verdict, 'failing');
      waits.push(w.retryAt! - t);
      t = w.retryAt! - 1;
      assert.equal(stepEgress(w, 'k1', [1], read([1, 0, errors]), t, 'v0').verdict, 'failing', 'not before its time');
      t = w.retryAt!;
      w = stepEgress(w, 'k1', [1], read([1, 0, errors]), t, 'v0');
      assert.equal(w.verdict, 'unknown', 'on trial');
    }
    assert.deepEqual(
      waits,
      waits.map((_, i) => Math.min(RETRY_BASE_MS * 2 ** i, RETRY_MAX_MS)),
    );
    w = stepEgress(w, 'k1', [1], read([1, 1, errors]), t + 1, 'v0');
    assert.equal(w.verdict, 'verified');
    w = stepEgress(w, 'k1', [1], read([1, 1, errors + Number(FAIL_MIN_ERRORS)]), t + 2, 'v0');
    assert.equal(w.retryAt! - (t + 2), RETRY_BASE_MS, 'verified in between: the back-off starts over');
  });

  it('frames both taken and dropped count as taken; a changed egress starts over; counter resets are not negative', () => {
    let w = stepEgress(undefined, 'k1', [1], read([1, 0, 0]), 0, 'v0');
    w = stepEgress(w, 'k1', [1], read([1, 5, 50]), 1, 'v0');
    assert.equal(w.verdict, 'verified', 'some taken (others too large for the MTU): the peer has NAPI');
    w = stepEgress(w, 'k1', [1], read([1, 5, 60]), 2, 'v0');
    assert.equal(w.verdict, 'failing');
    w = stepEgress(w, 'k2', [1], read([1, 5, 60]), 3, 'v0');
    assert.equal(w.verdict, 'unknown', 'the peer went down and up: what was seen says nothing now');
    assert.equal(w.ejections, 0);
    w = stepEgress(w, 'k2', [1, 2], read([1, 0, 0], [2, 0, 0]), 4, 'v0');
    assert.equal(w.verdict, 'unknown', 'a reset counter (and a new backend) count nothing');
    assert.deepEqual(
      judgedEgress({ ok: true, key: 'k2' }, w),
      { ok: true, key: 'k2' },
      'inspected egresses as they are',
    );
  });

  it('without retries (a link direction): failing until a frame is taken again, never re-created', () => {
    let w = stepEgress(undefined, 'k1', [7], read([7, 0, 0]), 0, 'v0', false, 'tx_dropped of v0');
    w = stepEgress(w, 'k1', [7], read([7, 0, 9]), 1, 'v0', false, 'tx_dropped of v0');
    assert.equal(w.verdict, 'failing');
    assert.equal(w.retryAt, undefined);
    assert.equal(
      w.why,
      'the kernel dropped all of the last 9 frames redirected to v0 (tx_dropped of v0) and took none: it cannot ' +
        'receive native XDP redirects (a veth whose peer has no NAPI)',
    );
    const same = stepEgress(w, 'k1', [7], read([7, 0, 30]), 1e9, 'v0', false);
    assert.equal(same, w, 'still failing: the same verdict (logged once), however long');
    w = stepEgress(w, 'k1', [7], read([7, 1, 30]), 1e9 + 1, 'v0', false);
    assert.equal(w.verdict, 'verified');
  });
});
