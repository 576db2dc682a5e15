/**
 * core/counter-resets.ts: a served counter that goes down is a reset, said once per object per 10 s, counted,
 * a warning for an hour; the daemon's own zeroing (forget) is none; the OpenTelemetry series of an object reset
 * restarts with a new start time (telemetry/datapath-metrics.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { CounterSnapshot } from '../../src/server/core/controller.js';
import { CounterResets, RESET_LOG_MS, RESET_WARNING_MS } from '../../src/server/core/counter-resets.js';
import { zeroRuleStats } from '../../src/server/core/dataplane.js';
import type { Logger } from '../../src/server/log.js';
import { otelRulePoints } from '../helpers/otel-points.js';

function logger(): { log: Logger; lines: { o: Record<string, unknown>; msg: string }[] } {
  const lines: { o: Record<string, unknown>; msg: string }[] = [];
  const warn = (o: Record<string, unknown>, msg: string) => void lines.push({ o, msg });
  const nop = () => undefined;
  const log = { warn, info: nop, error: nop, debug: nop, trace: nop, fatal: nop } as unknown as Logger;
  return { log, lines };
}

describe('counter resets (one detector for every served counter)', () => {
  it('a decrease is said once per object per 10 s, counted every time, a warning for an hour', () => {
    const { log, lines } = logger();
    const r = new CounterResets();
    let mono = 0;
    const env = () => ({ log, now: 1_700_000_000_000 + mono, mono });
    assert.equal(r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 100n }, env()), false);
    mono += 1000;
    assert.equal(r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 150n }, env()), false);
    mono += 1000;
    assert.equal(r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 0n }, env()), true);
    assert.equal(lines.length, 1);
    assert.match(
      lines[0].msg,
      /^the counters of rule "web" went down at .* \(matched 150 -> 0\): their kernel entry \(map rule_stats, key 3\) was written by another tool; they count on from there$/,
    );
    // Again within 10 s: counted, not logged; the next line after the window says how many were not.
    mono += 1000;
    r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 50n }, env());
    r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 0n }, env());
    assert.equal(lines.length, 1);
    assert.equal(r.counts.rule, 2);
    mono += RESET_LOG_MS;
    r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 70n }, env());
    r.observe('rule', 3, 'rule "web"', 'map rule_stats, key 3', { matched: 1n }, env());
    assert.equal(lines.length, 2);
    assert.match(lines[1].msg, /\(1 more reset\(s\) of it in the last 10 s not logged\)$/);
    assert.equal(r.counts.rule, 3);
    assert.equal(r.total, 3);
    assert.match(r.warning('rule', 3, mono)!, /matched 70 -> 1/);
    assert.equal(r.warning('rule', 3, mono + RESET_WARNING_MS + 1), undefined, 'gone after an hour');
  });

  it("the daemon's own zeroing (forget) is no reset, nor a read that began before it", () => {
    const { log, lines } = logger();
    const r = new CounterResets();
    const env = { log, now: 0, mono: 0 };
    r.observe('backend', 7, 'b', 'e', { packets: 100n }, env);
    const readEpoch = r.begin(); // a read begins, then the id is given to a new backend and zeroed
    r.forget('backend', 7, 0, 0);
    assert.equal(r.observe('backend', 7, 'b', 'e', { packets: 100n }, { ...env, readEpoch }), false);
    assert.equal(r.observe('backend', 7, 'b', 'e', { packets: 0n }, { ...env, readEpoch: r.begin() }), false);
    r.observe('link', 2, 'l', 'e', { packets: 10n }, env);
    r.forgetSeen('link');
    assert.equal(r.observe('link', 2, 'l', 'e', { packets: 0n }, env), false);
    assert.equal(lines.length, 0);
    assert.equal(r.total, 0);
  });

  it('the OpenTelemetry series of an object reset starts again at the reset', async () => {
    let snap: CounterSnapshot = {
      time: Date.now(),
      rules: [{ ...zeroRuleStats(), name: 'web', matched: 100n }],
      backends: [],
      links: [],
      global: [0n, 0n, 0n, 0n, 0n],
    };
    const o = otelRulePoints(() => snap);
    try {
      const first = await o.rulePoint();
      const resetAt = first.start + 5000;
      snap = { ...snap, time: Date.now(), rules: [{ ...zeroRuleStats(), name: 'web', matched: 0n, resetAt }] };
      o.next();
      const second = await o.rulePoint();
      assert.equal(second.value, 0);
      assert.equal(second.start, resetAt, 'a new start time: a new cumulative sum');
      o.next();
      const third = await o.rulePoint();
      assert.equal(third.start, resetAt, 'kept');
    } finally {
      o.close();
    }
  });
});
