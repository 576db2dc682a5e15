/**
 * A counter series and its restarts (counters.proto: start_time, reset, Rates): CounterResets dates each series
 * (the daemon's zeroing, from 0; a decrease seen by a read; a first read), the counter service marks an entry
 * `reset` when its start time changed or a counter went down since the stream's previous sample and never
 * computes a rate across it (from the new start when it began at 0, none otherwise), applyChanges clears
 * `reset` on entries left out, `xdpctl watch` marks it, and the OpenTelemetry series of an object re-created
 * between two exports starts again.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { applyChanges } from '../../src/client/pages.js';
import { countersText, RESET_NOTE } from '../../src/client/cli/output.js';
import type { CounterSnapshot } from '../../src/server/core/controller.js';
import { CounterHub } from '../../src/server/core/counter-hub.js';
import { CounterResets } from '../../src/server/core/counter-resets.js';
import { zeroBackendStats, zeroLinkStats, zeroRuleStats } from '../../src/server/core/dataplane.js';
import type { Logger } from '../../src/server/log.js';
import { ABSENT_REMEMBERED, counterService, toCounters } from '../../src/server/services/counter-service.js';
import type { WatchCountersRequest, WatchCountersResponse } from '../../src/gen/xdpctl/v1/counters.js';
import { otelRulePoints } from '../helpers/otel-points.js';

const nop = () => undefined;
const log = { warn: nop, info: nop, error: nop, debug: nop, trace: nop, fatal: nop } as unknown as Logger;

const T = 1_700_000_000_000;

/** A snapshot read from `started` to `time` (wall = monotonic + T) of rule "web", one backend and one link. */
function snap(
  time: number,
  v: { matched: bigint; start?: number; fromZero?: boolean },
  started = time - 10,
): CounterSnapshot {
  const series = v.start === undefined ? {} : { start: T + v.start, startMono: v.start, fromZero: v.fromZero ?? false };
  return {
    time: T + time,
    mono: time,
    started: T + started,
    rules: [{ ...zeroRuleStats(), name: 'web', matched: v.matched, matchedBytes: v.matched * 100n, ...series }],
    backends: [
      {
        ...zeroBackendStats(),
        rule: 'web',
        ip: '10.0.0.2',
        interface: 'b1',
        packets: v.matched,
        bytes: v.matched,
        ...series,
      },
    ],
    links: [{ ...zeroLinkStats(), from: 'a', to: 'b', packets: v.matched, bytes: v.matched, ...series }],
    global: [],
  };
}

describe('counter series: start time, reset, rates never across a restart', () => {
  it('the same series: no reset, the difference over the interval', () => {
    const c = toCounters(
      snap(3000, { matched: 150n, start: 500 }),
      undefined,
      snap(1000, { matched: 100n, start: 500 }),
    );
    for (const e of [c.rules[0], c.backends[0], c.links[0]]) {
      assert.equal(e.reset, false);
      assert.equal(e.startTime?.getTime(), T + 500);
    }
    assert.deepEqual(c.rules[0].matchedRates, { pps: 25, bps: 25 * 800 });
    assert.deepEqual(c.backends[0].rates, { pps: 25, bps: 200 });
  });

  it('lowered by another tool: reset, no rate for that interval, then the difference from the new base', () => {
    const before = snap(1000, { matched: 100n, start: 500 });
    // Dated by the read that saw it (start 1900) and counted past the old value before this sample (120 > 100):
    // a client subtracting would say 20 packets; the sample says reset and gives no rate.
    const at = snap(2000, { matched: 120n, start: 1900 });
    const c = toCounters(at, undefined, before);
    for (const e of [c.rules[0], c.backends[0], c.links[0]]) {
      assert.equal(e.reset, true);
      assert.equal(e.startTime?.getTime(), T + 1900);
    }
    assert.equal(c.rules[0].matchedRates, undefined);
    assert.equal(c.backends[0].rates, undefined);
    assert.equal(c.links[0].rates, undefined);
    const next = toCounters(snap(3000, { matched: 170n, start: 1900 }), undefined, at);
    assert.equal(next.rules[0].reset, false);
    assert.deepEqual(next.backends[0].rates, { pps: 50, bps: 400 });
  });

  it('a decrease not yet dated (or a wrap): reset, no rate', () => {
    const c = toCounters(
      snap(2000, { matched: 10n, start: 500 }),
      undefined,
      snap(1000, { matched: 100n, start: 500 }),
    );
    assert.equal(c.rules[0].reset, true);
    assert.equal(c.rules[0].matchedRates, undefined);
    const noStart = toCounters(snap(2000, { matched: 10n }), undefined, snap(1000, { matched: 100n }));
    assert.equal(noStart.rules[0].reset, true);
    assert.equal(noStart.rules[0].startTime, undefined);
  });

  it('re-created under the same name between two samples: reset, the rate over the time since its start', () => {
    // The old object had 50; the new one, zeroed at 1500 (after the previous read began), has 80 at 3500.
    const c = toCounters(
      snap(3500, { matched: 80n, start: 1500, fromZero: true }),
      undefined,
      snap(1000, { matched: 50n, start: 500, fromZero: true }),
    );
    for (const e of [c.rules[0], c.backends[0], c.links[0]]) assert.equal(e.reset, true);
    assert.deepEqual(c.rules[0].matchedRates, { pps: 40, bps: 40 * 800 }, 'not (80 - 50) / 2.5 s');
    assert.deepEqual(c.links[0].rates, { pps: 40, bps: 320 });
    // New to the stream (absent from the previous sample): no reset, the rate from its start.
    const prev = { ...snap(1000, { matched: 0n }), rules: [], backends: [], links: [] };
    const fresh = toCounters(snap(3500, { matched: 80n, start: 1500, fromZero: true }), undefined, prev);
    assert.equal(fresh.rules[0].reset, false);
    assert.deepEqual(fresh.rules[0].matchedRates, { pps: 40, bps: 40 * 800 });
  });

  it("GetCounters and a stream's first sample: the start time, no reset, no rate", () => {
    const c = toCounters(snap(1000, { matched: 5n, start: 500, fromZero: true }), undefined);
    assert.equal(c.rules[0].startTime?.getTime(), T + 500);
    assert.equal(c.rules[0].reset, false);
    assert.equal(c.rules[0].matchedRates, undefined);
  });

  it('applyChanges: an entry left out keeps its start time, with rates 0 and no reset', () => {
    const held = toCounters(
      snap(2000, { matched: 10n, start: 1900 }),
      undefined,
      snap(1000, { matched: 100n, start: 500 }),
    );
    assert.equal(held.rules[0].reset, true);
    const next = applyChanges(held, { time: new Date(T + 3000), rules: [], backends: [], links: [] });
    assert.equal(next.rules[0].reset, false);
    assert.equal(next.backends[0].reset, false);
    assert.equal(next.links[0].reset, false);
    assert.equal(next.rules[0].startTime?.getTime(), T + 1900);
    assert.deepEqual(next.rules[0].matchedRates, { pps: 0, bps: 0 });
  });

  it('xdpctl watch marks a reset and says what it means', () => {
    const reset = toCounters(
      snap(2000, { matched: 10n, start: 1900 }),
      undefined,
      snap(1000, { matched: 100n, start: 500 }),
    );
    const text = countersText(reset, 'head');
    assert.match(text, /web\s+10 \(reset\)/);
    assert.match(text, /10\.0\.0\.2@b1\s+10 \(reset\)/);
    assert.ok(text.includes(RESET_NOTE));
    const same = toCounters(
      snap(3000, { matched: 20n, start: 1900 }),
      undefined,
      snap(2000, { matched: 10n, start: 1900 }),
    );
    assert.ok(!countersText(same, 'head').includes('(reset)'));
  });

  it("CounterResets dates each series: the daemon's zeroing (from 0), a first read, a decrease", () => {
    const r = new CounterResets();
    const env = (t: number) => ({ log, now: T + t, mono: t });
    r.observe('rule', 3, 'w', 'e', { matched: 7n }, env(100));
    assert.deepEqual(
      r.series('rule', 3),
      { start: T + 100, fromZero: false, mono: 100, kind: 'found' },
      'found counting',
    );
    r.observe('rule', 3, 'w', 'e', { matched: 9n }, env(200));
    assert.equal(r.series('rule', 3)?.start, T + 100, 'counting on: the same series');
    r.observe('rule', 3, 'w', 'e', { matched: 1n }, env(300));
    assert.deepEqual(r.series('rule', 3), { start: T + 300, fromZero: false, mono: 300, kind: 'lowered' }, 'a reset');
    const readEpoch = r.begin(); // a read begins, then the id is zeroed for a new rule
    r.forget('rule', 3, T + 400, 400);
    assert.deepEqual(r.series('rule', 3, r.begin()), { start: T + 400, fromZero: true, mono: 400, kind: 'zeroed' });
    assert.equal(r.series('rule', 3, readEpoch)?.fromZero, false, "a read from before: maybe the old rule's values");
    assert.equal(r.series('rule', 3, readEpoch)?.kind, 'unknown');
    r.observe('rule', 3, 'w', 'e', { matched: 0n }, { ...env(500), readEpoch: r.begin() });
    assert.equal(r.series('rule', 3)?.start, T + 400, 'its first read keeps the start');
  });

  it('the OpenTelemetry series of an object re-created between two exports starts again', async () => {
    let s: CounterSnapshot = { ...snap(1000, { matched: 100n, start: 500, fromZero: true }), time: Date.now() };
    const o = otelRulePoints(() => s);
    try {
      const first = (await o.rulePoint()).start;
      const again = first + 5000;
      s = { ...s, time: Date.now(), rules: [{ ...s.rules[0], matched: 3n, start: again, fromZero: true }] };
      o.next();
      assert.equal((await o.rulePoint()).start, again, 'a new start time: a new object');
    } finally {
      o.close();
    }
  });

  it('absent from a sample, back re-created in a later one: reset against the last sample it was in', async () => {
    // The stream's samples: web (start 500); web gone (deleted); web re-created (start 2500, from 0); gone (its
    // counters not read, say); back with the same start: the same series, no reset.
    const gone = (t: number) => ({ ...snap(t, { matched: 0n }), rules: [], backends: [], links: [] });
    const script = [
      snap(1000, { matched: 50n, start: 500, fromZero: true }),
      gone(2000),
      snap(3000, { matched: 20n, start: 2500, fromZero: true }),
      gone(4000),
      snap(5000, { matched: 30n, start: 2500, fromZero: true }),
    ];
    for (const changesOnly of [false, true]) {
      let n = 0;
      const hub = new CounterHub(() => ({ ...script[Math.min(n++, script.length - 1)], version: n }), 1, 0);
      const svc = counterService(hub);
      const ac = new AbortController();
      const got: WatchCountersResponse[] = [];
      const req = { interval: { seconds: 0n, nanos: 100_000_000 }, changesOnly } as WatchCountersRequest;
      try {
        for await (const r of svc.watchCounters(req, { signal: ac.signal } as never)) {
          got.push(r as WatchCountersResponse);
          if (got.length === script.length) break;
        }
      } finally {
        ac.abort();
        hub.close();
      }
      const at = (i: number) => got[i].counters!;
      assert.equal(at(1).rules.length, 0);
      for (const e of [at(2).rules[0], at(2).backends[0], at(2).links[0]]) {
        assert.equal(e.startTime?.getTime(), T + 2500);
        assert.equal(e.reset, true, `changesOnly ${changesOnly}: re-created while absent: reset`);
      }
      assert.deepEqual(at(2).rules[0].matchedRates, { pps: 40, bps: 40 * 800 }, 'the rate from its start');
      for (const e of [at(4).rules[0], at(4).backends[0], at(4).links[0]]) {
        assert.equal(e.reset, false, `changesOnly ${changesOnly}: back with the same start time: the same series`);
      }
    }
    assert.ok(ABSENT_REMEMBERED >= 10_000);
  });
});
