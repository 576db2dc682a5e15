/**
 * Where a link direction's counter series starts (twentieth review, MED-2), against the model dataplane and a test
 * clock: a direction whose counters entry the daemon gave out (zeroed) starts ZEROED at that write, also when the
 * link is disconnected and connected again later (before: FOUND at the first read; ZEROED at the disconnect);
 * its series goes with it when it is removed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';

describe("a link direction's counter series", () => {
  it('starts ZEROED when its entry is given out, again at a re-connect, never at the disconnect', async () => {
    const dp = new ModelDataplane(MODEL_CAPACITY, ['a', 'b']);
    let t = 1_000_000;
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, now: () => t });
    const starts = async () =>
      (await c.readCounters()).links.map((l) => `${l.from}>${l.to} ${l.startKind} ${l.start}`).sort();

    await c.connect({ a: 'a', b: 'b', direction: 'both' });
    t += 5000;
    assert.deepEqual(await starts(), ['a>b zeroed 1000000', 'b>a zeroed 1000000'], 'zeroed at the connect');
    t += 1000;
    await c.disconnect('a', 'b');
    t += 3000;
    await c.connect({ a: 'a', b: 'b', direction: 'a-to-b' });
    t += 2000;
    assert.deepEqual(await starts(), ['a>b zeroed 1009000'], 'zeroed at the new connect, not at the disconnect');
    const ifb = dp.lookupInterface('b')!.ifindex;
    assert.equal(c['state'].counterResets.series('link', ifb), undefined, 'the removed direction took its series');
  });
});
