/**
 * WatchCounters with changes_only: every changes-only sample, applied to the
 * client's last complete one (applyChanges, as the TypeScript client does),
 * gives exactly the complete sample the server would have sent, counters and
 * rates, whatever changed: a few counters, none, all of them, counters that
 * stop (rates fall to 0), counters that go down, rules added and removed (a
 * complete sample then), the global counters; with and without a filter,
 * over the wire encoding. Without changes_only a stream is as before.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { applyChanges } from '../../src/client/pages.js';
import type { CounterSnapshot } from '../../src/server/core/controller.js';
import { CounterHub } from '../../src/server/core/counter-hub.js';
import { counterService, toCounters } from '../../src/server/services/counter-service.js';
import {
  CounterKind,
  WatchCountersResponse,
  type CounterFilter,
  type Counters,
  type WatchCountersRequest,
} from '../../src/gen/xdpctl/v1/counters.js';
import { prng } from '../helpers/agree.js';

/**
 * Snapshots of 40 rules x 4 backends and 3 links whose counters change as
 * the script for each read says; every snapshot is kept by its time.
 */
function scriptedRead(seed: number, quiet = false) {
  const rnd = prng(seed);
  const byTime = new Map<number, CounterSnapshot>();
  let names = Array.from({ length: 40 }, (_, i) => `rule-${String(i).padStart(2, '0')}`);
  const ruleC = new Map<string, bigint[]>();
  const backC = new Map<string, bigint[]>();
  const linkC = [0n, 0n, 0n].map(() => [0n, 0n, 0n]);
  let global = Array.from({ length: 14 }, () => 0n);
  let reads = 0;
  let last = 0;
  const bump = (v: bigint[], by: bigint) => v.map((x, i) => x + by * BigInt(i + 1));
  const read = () => {
    reads++;
    const step = quiet && reads % 12 !== 7 ? 0 : reads % 12;
    // The script: 1-4 some counters, 5 none, 6 all, 7 a rule removed and one added, 8 counters reset (down),
    // 9 only global, 10-11 some again, 0 none.
    if (step === 7) {
      names = [...names.filter((n) => n !== names[3]), `rule-new-${reads}`].sort();
    }
    for (const n of names) {
      if (!ruleC.has(n)) ruleC.set(n, [0n, 0n, 0n, 0n, 0n, 0n, 0n]);
      for (let b = 0; b < 4; b++) if (!backC.has(`${n}|${b}`)) backC.set(`${n}|${b}`, [0n, 0n, 0n]);
      const change = step === 6 || ([1, 2, 3, 4, 10, 11].includes(step) && rnd() < 0.1);
      if (change) {
        ruleC.set(n, bump(ruleC.get(n)!, BigInt(1 + Math.floor(rnd() * 100))));
        const b = Math.floor(rnd() * 4);
        backC.set(`${n}|${b}`, bump(backC.get(`${n}|${b}`)!, 7n));
      }
      if (step === 8 && n === names[5]) {
        ruleC.set(n, [0n, 0n, 0n, 0n, 0n, 0n, 0n]);
        backC.set(`${n}|0`, [0n, 0n, 0n]);
      }
      if (step === 11 && n === names[7]) {
        // Only redirect errors: frames the kernel dropped after the redirect.
        const [p, by, e] = backC.get(`${n}|1`)!;
        backC.set(`${n}|1`, [p, by, e + 1n]);
      }
    }
    if (step === 6 || step === 2) linkC[1] = bump(linkC[1], 3n);
    if (step === 11) linkC[2] = [linkC[2][0], linkC[2][1], linkC[2][2] + 1n];
    if (step === 9 || step === 6) global = global.map((g, i) => (i === 2 ? g + 1n : g));
    const time = Math.max(Date.now(), last + 1);
    last = time;
    const snap: CounterSnapshot = {
      time,
      rules: names.map((name) => {
        const [matched, matchedBytes, redirected, redirectedBytes, filtered, noBackend, redirectErrors] =
          ruleC.get(name)!;
        return { name, matched, matchedBytes, redirected, redirectedBytes, filtered, noBackend, redirectErrors };
      }),
      backends: names.flatMap((rule) =>
        [0, 1, 2, 3].map((b) => {
          const [packets, bytes, redirectErrors] = backC.get(`${rule}|${b}`)!;
          return { rule, ip: `10.0.${b}.1`, interface: `veth${b}`, packets, bytes, redirectErrors };
        }),
      ),
      links: linkC.map(([packets, bytes, redirectErrors], i) => ({
        from: `a${i}`,
        to: `b${i}`,
        packets,
        bytes,
        redirectErrors,
      })),
      global: [...global],
    };
    byTime.set(time, snap);
    return snap;
  };
  return { read, byTime };
}

/** `count` samples of one stream, each as the client decodes it (parts joined). */
async function stream(hub: CounterHub, req: Partial<WatchCountersRequest>, count: number) {
  const svc = counterService(hub);
  const ac = new AbortController();
  const request = {
    filter: undefined,
    interval: { seconds: 0n, nanos: 100_000_000 },
    changesOnly: false,
    ...req,
  } as WatchCountersRequest;
  const context = { signal: ac.signal } as Parameters<typeof svc.watchCounters>[1];
  const samples: { counters: Counters; changesOnly: boolean; bytes: number }[] = [];
  for await (const r of svc.watchCounters(request, context)) {
    const bytes = WatchCountersResponse.encode(r as WatchCountersResponse).finish();
    const m = WatchCountersResponse.decode(bytes); // what a client holds: through the wire format
    samples.push({ counters: m.counters!, changesOnly: m.changesOnly, bytes: bytes.length });
    if (samples.length === count) break;
  }
  ac.abort();
  return samples;
}

/** What the complete sample of `snap` is after `prev`, through the wire format. */
function complete(snap: CounterSnapshot, filter: CounterFilter | undefined, prev?: CounterSnapshot): Counters {
  const full = { counters: toCounters(snap, filter, prev), continued: false, changesOnly: false };
  return WatchCountersResponse.decode(WatchCountersResponse.encode(full).finish()).counters!;
}

for (const [label, filter] of [
  ['unfiltered', undefined],
  [
    'filtered (rules, kinds)',
    {
      kinds: [CounterKind.COUNTER_KIND_RULES, CounterKind.COUNTER_KIND_BACKENDS, CounterKind.COUNTER_KIND_GLOBAL],
      rules: ['rule-03', 'rule-05', 'rule-07', 'rule-11'],
      interfaces: [],
    },
  ],
] as [string, CounterFilter | undefined][]) {
  describe(`WatchCounters changes_only, ${label}`, () => {
    it('applied to the last complete sample, each changes-only sample gives the complete one', async () => {
      const { read, byTime } = scriptedRead(label.length);
      const hub = new CounterHub(read, 100);
      const N = 30;
      try {
        const samples = await stream(hub, { filter, changesOnly: true }, N);
        assert.equal(samples[0].changesOnly, false, 'the first sample is complete');
        let held: Counters | undefined;
        let prevSnap: CounterSnapshot | undefined;
        let changesOnly = 0;
        let reshaped = 0;
        for (const [i, s] of samples.entries()) {
          const snap = byTime.get(s.counters.time!.getTime())!;
          assert.ok(snap, `sample ${i}: a snapshot the hub read`);
          if (prevSnap && prevSnap.rules.map((r) => r.name).join() !== snap.rules.map((r) => r.name).join()) {
            assert.equal(s.changesOnly, false, `sample ${i}: the set of rules changed: complete`);
            reshaped++;
          }
          const got = s.changesOnly ? applyChanges(held!, s.counters) : s.counters;
          if (s.changesOnly) changesOnly++;
          assert.deepEqual(got, complete(snap, filter, prevSnap), `sample ${i} (changes only: ${s.changesOnly})`);
          held = got;
          prevSnap = snap;
        }
        assert.ok(changesOnly >= N / 2, `${changesOnly} of ${N} samples were changes only`);
        assert.ok(reshaped >= 1, 'the script added and removed a rule');
      } finally {
        hub.close();
      }
    });
  });
}

describe('WatchCounters changes_only: sizes and compatibility', () => {
  it('a sample where nothing changed is small; without changes_only every sample is complete', async () => {
    const { read } = scriptedRead(7, true); // counters stand still; a rule comes and goes
    const hub = new CounterHub(read, 100);
    try {
      const [changes, full] = await Promise.all([
        stream(hub, { changesOnly: true }, 14),
        stream(hub, { changesOnly: false }, 14),
      ]);
      assert.ok(
        full.every((s) => !s.changesOnly && s.counters.rules.length >= 40 && s.counters.backends.length >= 160),
      );
      const quiet = changes.filter((s) => s.changesOnly && s.counters.rules.length === 0);
      assert.ok(quiet.length > 0, 'some samples changed nothing');
      const fullBytes = Math.min(...full.map((s) => s.bytes));
      for (const s of quiet) assert.ok(s.bytes < fullBytes / 20, `${s.bytes} bytes against ${fullBytes} complete`);
    } finally {
      hub.close();
    }
  });
});
