/**
 * One log line for many findings of one kind (core/log-summary.ts): the count exact, the first 10 named, the rest at
 * debug one by one; and why a start removed rules the store lacks (restore.ts orphanCause), from what it read of the
 * pins' store generation: a --reset-datapath, a store older than the pins, a change never committed, and "the pins
 * record no store generation" only when they record none. 24th review MED-4: a reset over 3 000 rules wrote 3 000
 * error lines, each saying "the pins record no store generation" while they recorded generation 13.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { logFindings, someNames } from '../../src/server/core/log-summary.js';
import { orphanCause } from '../../src/server/core/restore.js';
import type { StoredState } from '../../src/server/core/store.js';

function recorder() {
  const lines: { level: string; fields: Record<string, unknown>; msg: string }[] = [];
  const at =
    (level: string) =>
    (fields: object, msg = '') =>
      lines.push({ level, fields: fields as Record<string, unknown>, msg });
  return { lines, log: { debug: at('debug'), warn: at('warn'), error: at('error') } };
}

const slots = (n: number) => Array.from({ length: n }, (_, i) => i + 1);
const text = {
  name: (s: number) => `slot ${s}`,
  text: (n: number, named: string) => `removed ${n}: ${named}`,
  detail: (s: number): [object, string] => [{ slot: s }, `removed slot ${s}`],
};

describe('log summary', () => {
  it('3000 findings: one line at their level with the exact count and the first 10 named; the other 2990 at debug', () => {
    const { lines, log } = recorder();
    logFindings(log, 'error', slots(3000), { ...text, fields: { kind: 'orphan' } });
    const errors = lines.filter((l) => l.level === 'error');
    assert.equal(errors.length, 1);
    assert.deepEqual(errors[0].fields, { kind: 'orphan', count: 3000, named: 10 });
    assert.equal(
      errors[0].msg,
      'removed 3000: slot 1; slot 2; slot 3; slot 4; slot 5; slot 6; slot 7; slot 8; slot 9; slot 10; and 2990 more ' +
        '(each at debug)',
    );
    const debug = lines.filter((l) => l.level === 'debug');
    assert.equal(debug.length, 2990);
    assert.deepEqual(debug[0], { level: 'debug', fields: { slot: 11 }, msg: 'removed slot 11' });
    assert.equal(debug.at(-1)!.msg, 'removed slot 3000');
  });

  it('a few: one line naming them all, nothing at debug; none: nothing', () => {
    const { lines, log } = recorder();
    logFindings(log, 'warn', slots(3), text);
    assert.deepEqual(lines, [
      { level: 'warn', fields: { count: 3, named: 3 }, msg: 'removed 3: slot 1; slot 2; slot 3' },
    ]);
    logFindings(log, 'warn', [], text);
    assert.equal(lines.length, 1);
    assert.equal(someNames(['a', 'b', 'c'], 2), 'a; b; and 1 more');
  });
});

describe('why a start removed rules the store lacks (orphanCause)', () => {
  const base: StoredState = { version: 1, rules: [], links: [] };
  const reset =
    'the state store /s/state.db does not exist, but the pinned datapath under /p still forwards 3000 rule match ' +
    'entries and 0 link directions';

  it('--reset-datapath with a new store over pins that record generation 13: the reset, both generations', () => {
    const c = orphanCause({ ...base, reset, pins: { generation: 13, store: 0 } });
    assert.equal(
      c,
      'This start ran with --reset-datapath, which takes the state store as the truth and removes what the ' +
        'datapath holds that it lacks (why: its warning "--reset-datapath: clearing them" above); the pins record ' +
        'store generation 13; this store was at generation 0 (new)',
    );
    assert.doesNotMatch(c, /record no store generation|Either a change was not saved/);
  });

  it('a store older than the pins (no reset): both generations, no "either"', () => {
    const c = orphanCause({ ...base, pins: { generation: 13, store: 9 } });
    assert.match(
      c,
      /^This state store is older than the datapath: the pins record store generation 13; this store was at generation 9 /,
    );
  });

  it("a change written into the kernel and never committed: the pins record this store's generation", () => {
    assert.match(
      orphanCause({ ...base, pinsLevel: true, pins: { generation: 7, store: 7 } }),
      /^The pins record this store's generation \(7\): it is a change the daemon wrote into the kernel and stopped before committing/,
    );
  });

  it('"the pins record no store generation" only when they record none; unreadable says why', () => {
    assert.match(orphanCause({ ...base, pins: { store: 4 } }), /\(the pins record no store generation to tell\)/);
    assert.match(
      orphanCause({ ...base, pins: { store: 4, unreadable: '/p/store_generation has no entry 0' } }),
      /\(the pins' store generation cannot be read: \/p\/store_generation has no entry 0\)/,
    );
    assert.doesNotMatch(orphanCause(base), /record no store generation/);
  });
});
