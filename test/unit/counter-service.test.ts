import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { CounterSnapshot } from '../../src/server/core/controller.js';
import { CounterHub } from '../../src/server/core/counter-hub.js';
import type { CoreError } from '../../src/server/core/errors.js';
import { counterService, sharedEncoding } from '../../src/server/services/counter-service.js';
import {
  CounterKind,
  CounterServiceDefinition,
  WatchCountersResponse,
  type WatchCountersRequest,
} from '../../src/gen/xdpctl/v1/counters.js';

function fakeRead() {
  let n = 0n;
  return () =>
    ({
      time: Date.now(),
      rules: [
        {
          name: 'web',
          matched: (n += 10n),
          matchedBytes: n * 100n,
          redirected: n,
          redirectedBytes: n * 100n,
          filtered: 0n,
          noBackend: 0n,
          redirectErrors: 0n,
        },
      ],
      backends: [],
      links: [],
      global: [n],
    }) as unknown as CounterSnapshot;
}

/** The first `count` responses of one WatchCounters stream. */
async function take(hub: CounterHub, req: Partial<WatchCountersRequest>, count: number) {
  const svc = counterService(hub);
  const ac = new AbortController();
  const out: WatchCountersResponse[] = [];
  const request = { filter: undefined, interval: { seconds: 0n, nanos: 100_000_000 }, ...req } as WatchCountersRequest;
  const context = { signal: ac.signal } as Parameters<typeof svc.watchCounters>[1];
  for await (const r of svc.watchCounters(request, context)) {
    out.push(r as WatchCountersResponse);
    if (out.length === count) break;
  }
  ac.abort();
  return out;
}

describe('WatchCounters sharing', () => {
  it('identical streams get the same message objects, and each is encoded once', async () => {
    const hub = new CounterHub(fakeRead(), 100);
    try {
      const [a, b, other] = await Promise.all([
        take(hub, {}, 3),
        take(hub, {}, 3),
        take(hub, { filter: { kinds: [CounterKind.COUNTER_KIND_GLOBAL], rules: [], interfaces: [] } }, 3),
      ]);
      for (let i = 0; i < 3; i++) {
        assert.equal(a[i], b[i], `message ${i} is shared`);
        assert.notEqual(a[i], other[i], 'another filter gets its own message');
      }
      assert.ok(a[2].counters!.rules[0].matchedRates, 'rates against the previous snapshot');
      assert.equal(other[0].counters!.rules.length, 0, 'the filter applied');

      const def = sharedEncoding(CounterServiceDefinition);
      const bytes = def.watchCounters.responseSerialize(a[1]);
      assert.equal(def.watchCounters.responseSerialize(b[1]), bytes, 'encoded once');
      assert.deepEqual(WatchCountersResponse.decode(bytes), a[1], 'the bytes are the message');
      assert.notEqual(def.watchCounters.responseSerialize(a[2]), bytes);
    } finally {
      hub.close();
    }
  });
});

describe('CounterFilter names', () => {
  const call = (svc: ReturnType<typeof counterService>, filter: object) =>
    svc.getCounters(
      { filter: { kinds: [], rules: [], interfaces: [], ...filter }, pageToken: '' },
      {} as Parameters<typeof svc.getCounters>[1],
    );
  it('a rule or interface name no rule or interface can have is INVALID_ARGUMENT naming the field', async () => {
    // Before: both answered OK with no counters.
    const hub = new CounterHub(fakeRead(), 100);
    try {
      const svc = counterService(hub, () => true);
      await assert.rejects(call(svc, { rules: ['web', 'Bad Name!'] }), (e: CoreError) => {
        assert.equal(e.kind, 'invalid');
        assert.deepEqual(
          e.violations.map((v) => v.field),
          ['filter.rules[1]'],
        );
        assert.match(e.message, /^filter\.rules\[1\]: must be 1-63 lowercase letters/);
        return true;
      });
      await assert.rejects(call(svc, { interfaces: ['this-is-way-too-long-name'] }), (e: CoreError) => {
        assert.equal(e.kind, 'invalid');
        assert.match(e.message, /^filter\.interfaces\[0\]: is not a valid interface name/);
        return true;
      });
      // WatchCounters validates the same way, before its first sample.
      await assert.rejects(
        take(hub, { filter: { kinds: [], rules: ['Bad'], interfaces: [] } }, 1),
        /filter\.rules\[0\]/,
      );
    } finally {
      hub.close();
    }
  });
  it('GetCounters names a rule of its filter that does not exist: NOT_FOUND, not an empty answer', async () => {
    const hub = new CounterHub(fakeRead(), 100);
    try {
      const svc = counterService(hub, (name) => name === 'web');
      await assert.rejects(call(svc, { rules: ['web', 'nonexist'] }), (e: CoreError) => {
        assert.equal(e.kind, 'not-found');
        assert.equal(e.message, 'filter.rules[1]: rule "nonexist" does not exist');
        assert.deepEqual(e.violations, [{ field: 'filter.rules[1]', description: 'rule "nonexist" does not exist' }]);
        return true;
      });
      const ok = await call(svc, { rules: ['web'] });
      assert.deepEqual(
        ok.counters?.rules?.map((r) => r?.rule),
        ['web'],
      );
    } finally {
      hub.close();
    }
  });
});
