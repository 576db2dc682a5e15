/**
 * store-drift.ts: what another writer changed in the state store's rows compared with the accepted desired
 * state (the real store and daemon in test/integration/store-external.test.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { storeDrift, type RuleRow } from '../../src/server/core/store-drift.js';
import type { StoredRule } from '../../src/server/core/store.js';

const rule = (name: string, port = 7000): StoredRule => ({
  name,
  protocol: 'udp',
  port,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['eth0'],
  backends: [{ ip: '10.1.0.2', mac: '', interface: 'veth1', weight: 1 }],
  udpChecksum: 'update',
  labels: {},
  generation: 2,
  createTime: 1000,
  updateTime: 2000,
  kernel: { slot: 1, statsId: 2, backends: {} },
});
/** The row a store holds for `r` (its spec's keys in another order: compared as values). */
const row = (r: StoredRule, kernel: string | null = null): RuleRow => {
  const { name, generation, createTime, updateTime, kernel: _k, ...spec } = r;
  const reordered = Object.fromEntries(Object.entries(spec).reverse());
  return {
    name,
    spec: JSON.stringify(reordered),
    generation,
    create_time: createTime,
    update_time: updateTime,
    kernel,
  };
};

describe('store drift', () => {
  it('nothing when the rows hold the desired state (key order and kernel ids aside)', () => {
    const want = { version: 1, rules: [rule('a'), rule('b')], links: [{ a: 'x', b: 'y', direction: 'both' as const }] };
    const d = storeDrift(want, {
      rules: [row(rule('b')), row(rule('a'), '{"slot":9}')],
      links: [{ key: 'x|y', a: 'x', b: 'y', direction: 'both' }],
    });
    assert.deepEqual(d.said, []);
  });

  it('a row removed or changed is restored, one added is removed, each said', () => {
    const want = {
      version: 1,
      rules: [rule('a'), rule('b'), rule('c')],
      links: [{ a: 'x', b: 'y', direction: 'both' as const }],
    };
    const d = storeDrift(want, {
      rules: [row(rule('a', 9999)), row({ ...rule('c'), generation: 1 }), row(rule('ghost'))],
      links: [{ key: 'p|q', a: 'p', b: 'q', direction: 'a-to-b' }],
    });
    assert.deepEqual(
      d.putRules.map((r) => r.name),
      ['a', 'b', 'c'],
    );
    assert.deepEqual(d.deleteRules, ['ghost']);
    assert.deepEqual(d.putLinks, [{ a: 'x', b: 'y', direction: 'both' }]);
    assert.deepEqual(d.deleteLinks, ['p|q']);
    assert.deepEqual(d.said, [
      'rule a was changed in the state store by another writer; row restored',
      'rule b was removed from the state store by another writer; row restored',
      'rule c was changed in the state store by another writer; row restored',
      'rule ghost was added to the state store by another writer (not a rule this daemon accepted: a restart would have applied it); row removed',
      'link x-y was removed from the state store by another writer; row restored',
      'link p-q was added to the state store by another writer (not a link this daemon accepted: a restart would have applied it); row removed',
    ]);
  });
});
