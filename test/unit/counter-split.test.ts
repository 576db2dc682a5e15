/**
 * Counters of 700 rules x 64 backends with 63-character names (44 800
 * backend entries, ~5 MB as one message) reach a default client in pieces
 * under its 4 MiB limit: GetCounters pages, WatchCounters parts of one sample.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { CounterSnapshot } from '../../src/server/core/controller.js';
import type { CounterHub } from '../../src/server/core/counter-hub.js';
import { counterService, MAX_COUNTER_ENTRIES } from '../../src/server/services/counter-service.js';
import { GetCountersResponse, WatchCountersResponse } from '../../src/gen/xdpctl/v1/counters.js';

const LIMIT = 4 * 1024 * 1024;
const name63 = (i: number) => `r${String(i).padStart(4, '0')}`.padEnd(63, 'x');

function bigSnapshot(): CounterSnapshot {
  const big = 2n ** 60n;
  const rules = Array.from({ length: 700 }, (_, r) => ({
    name: name63(r),
    matched: big,
    matchedBytes: big,
    redirected: big,
    redirectedBytes: big,
    filtered: big,
    noBackend: big,
    redirectErrors: big,
  }));
  const backends = rules.flatMap((r, i) =>
    Array.from({ length: 64 }, (_, b) => ({
      rule: r.name,
      ip: `2001:db8::${i.toString(16)}:${b.toString(16)}`,
      interface: `veth${b}`.padEnd(15, 'v'),
      packets: big,
      bytes: big,
      redirectErrors: big,
    })),
  );
  return { time: Date.now(), rules, backends, links: [], global: Array.from({ length: 10 }, () => big) };
}

describe('counters in pieces under the client limit', () => {
  const snap = bigSnapshot();
  const hub = {
    snapshot: () => snap,
    isClosed: false,
    async *watch() {
      yield snap;
    },
  } as unknown as CounterHub;
  const svc = counterService(hub) as unknown as {
    getCounters(req: { pageToken: string }): Promise<GetCountersResponse>;
    watchCounters(req: object, ctx: { signal: AbortSignal }): AsyncIterable<WatchCountersResponse>;
  };
  const total = snap.rules.length + snap.backends.length;

  it('GetCounters pages: each under the limit, together every entry once, global on the first', async () => {
    let token = '';
    let pages = 0;
    let entries = 0;
    do {
      const page = await svc.getCounters({ pageToken: token });
      const bytes = GetCountersResponse.encode(page).finish().length;
      assert.ok(bytes < LIMIT / 2, `page ${pages}: ${bytes} bytes`);
      const c = page.counters!;
      entries += c.rules.length + c.backends.length + c.links.length;
      assert.equal(c.global !== undefined, pages === 0, 'global counters on the first page only');
      token = page.nextPageToken;
      pages++;
    } while (token);
    assert.equal(entries, total);
    assert.equal(pages, Math.ceil(total / MAX_COUNTER_ENTRIES));
    await assert.rejects(svc.getCounters({ pageToken: 'bogus' }), /page_token/);
  });

  it('WatchCounters sends one sample as parts marked continued, each under the limit', async () => {
    const parts: WatchCountersResponse[] = [];
    for await (const m of svc.watchCounters({}, { signal: new AbortController().signal })) parts.push(m);
    assert.ok(parts.length > 1);
    for (const [i, p] of parts.entries()) {
      assert.ok(WatchCountersResponse.encode(p).finish().length < LIMIT / 2, `part ${i}`);
      assert.equal(p.continued, i < parts.length - 1);
      assert.equal(p.counters!.time!.getTime(), parts[0].counters!.time!.getTime(), 'one sample');
    }
    const got = parts.flatMap((p) => p.counters!.backends.map((b) => `${b.rule}|${b.ip}`));
    assert.deepEqual(
      got,
      snap.backends.map((b) => `${b.rule}|${b.ip}`),
    );
  });
});
