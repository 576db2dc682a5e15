/**
 * core/tap-drops.ts: a tap's tx_dropped read at each pass; what is said while it rose within TAP_DROP_WINDOW_MS.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { stepTapDrops, TAP_DROP_WINDOW_MS, tapDropText } from '../../src/server/core/tap-drops.js';

describe('tap drops', () => {
  it('says nothing at the first read, nor while the count stays', () => {
    let w = stepTapDrops(undefined, 40n, 1000);
    assert.equal(tapDropText('tap0', w, 1000), undefined, 'drops before the first read are not counted');
    w = stepTapDrops(w, 40n, 2000);
    assert.equal(tapDropText('tap0', w, 2000), undefined);
  });

  it('counts the rises of the window and the time they span, then nothing once it has not risen for the window', () => {
    let w = stepTapDrops(undefined, 0n, 0);
    w = stepTapDrops(w, 500n, 1000);
    assert.match(
      tapDropText('tap0', w, 1000)!,
      /^tap tap0: 500 frames dropped in the last 1 s \(its tx_dropped counter\): its reader is not reading/,
    );
    w = stepTapDrops(w, 501n, 2000);
    assert.match(tapDropText('tap0', w, 2000)!, /^tap tap0: 501 frames dropped in the last 2 s/);
    w = stepTapDrops(w, 501n, 1000 + TAP_DROP_WINDOW_MS);
    assert.match(tapDropText('tap0', w, 1000 + TAP_DROP_WINDOW_MS)!, /: 1 frame dropped in the last 5 s/);
    w = stepTapDrops(w, 501n, 2000 + TAP_DROP_WINDOW_MS);
    assert.equal(tapDropText('tap0', w, 2000 + TAP_DROP_WINDOW_MS), undefined, 'not risen for the window');
  });

  it('a lower count (the tap re-created) is no rise', () => {
    let w = stepTapDrops(undefined, 900n, 0);
    w = stepTapDrops(w, 3n, 1000);
    assert.equal(tapDropText('tap0', w, 1000), undefined);
    w = stepTapDrops(w, 10n, 2000);
    assert.match(tapDropText('tap0', w, 2000)!, /: 7 frames dropped in the last 1 s/);
  });
});
