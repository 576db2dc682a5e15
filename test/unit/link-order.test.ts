/**
 * A two-way link given again with its ends the other way round ({a: B, b: A} after `links connect A B`) is
 * the same link: ApplyLinks says "unchanged" and it is, the stored order kept and nothing written. Before: it
 * said "unchanged" while it stored a=B b=A, so A→B and B→A flipped in `links list`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import { MODEL_CAPACITY, ModelDataplane } from '../helpers/model-dataplane.js';

describe('ApplyLinks: a two-way link with its ends swapped is unchanged', () => {
  it('keeps the stored order and writes nothing; a one-way link swapped is an update', async () => {
    const dp = new ModelDataplane(MODEL_CAPACITY, ['a', 'b']);
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
    await c.connect({ a: 'a', b: 'b', direction: 'both' });
    const before = dp.snapshot();
    const changes = await c.applyLinks([{ a: 'b', b: 'a', direction: 'both' }], false);
    assert.deepEqual(
      changes.map((x) => [x.a, x.b, x.action]),
      [['a', 'b', 'unchanged']],
    );
    assert.deepEqual(
      c.listLinks().map((l) => [l.a, l.b, l.direction]),
      [['a', 'b', 'both']],
      'the stored order',
    );
    assert.deepEqual(dp.snapshot(), before, 'nothing written');
    const dry = await c.applyLinks([{ a: 'b', b: 'a', direction: 'both' }], true);
    assert.deepEqual(
      dry.map((x) => x.action),
      ['unchanged'],
    );

    const oneWay = await c.applyLinks([{ a: 'b', b: 'a', direction: 'a-to-b' }], false);
    assert.deepEqual(
      oneWay.map((x) => [x.a, x.b, x.action]),
      [['b', 'a', 'update']],
    );
    assert.deepEqual(
      c.listLinks().map((l) => [l.a, l.b, l.direction]),
      [['b', 'a', 'a-to-b']],
    );
  });
});
