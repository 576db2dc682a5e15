/**
 * The grpc-timeout values the daemon takes over from grpc-js (server/grpc-timeout.ts): read as the spec
 * says (at most 8 digits, units H M S m u n), and only those past 2^31-1 ms, which grpc-js misreads.
 * And the long timer the access layer enforces them with.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MAX_TIMER_MS, setLongTimeout } from '../../src/server/core/clock.js';
import { parseGrpcTimeout } from '../../src/server/grpc-timeout.js';

describe('grpc-timeout', () => {
  it('reads the spec form, and nothing else', () => {
    assert.equal(parseGrpcTimeout('2592000S'), 2_592_000_000);
    assert.equal(parseGrpcTimeout('720H'), 2_592_000_000);
    assert.equal(parseGrpcTimeout('99999999H'), 99_999_999 * 3_600_000);
    assert.equal(parseGrpcTimeout('1n'), 1e-6);
    assert.equal(parseGrpcTimeout('2147483647m'), undefined, '10 digits: not a spec value, left to grpc-js');
    for (const bad of ['', 'S', '12', '1.5S', '-1S', '1 S', '1s', '1SS'])
      assert.equal(parseGrpcTimeout(bad), undefined, bad);
  });

  it('grpc-js misreads exactly what is past 2^31-1 ms', () => {
    // grpc-js 1.14.7 server-interceptors.js: (value * unit) | 0.
    const grpcJs = (v: string) => {
      const m = /(\d{1,8})\s*([HMSmun])/.exec(v)!;
      return (Number(m[1]) * { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 }[m[2] as 'H']!) | 0;
    };
    for (const v of ['2147483S', '35791M', '596H', '99999999m']) {
      assert.ok(parseGrpcTimeout(v)! <= MAX_TIMER_MS, v);
      assert.equal(grpcJs(v), Math.trunc(parseGrpcTimeout(v)!), `${v}: grpc-js reads it right`);
    }
    for (const v of ['2147484S', '720H', '2592000S', '99999999H']) {
      assert.ok(parseGrpcTimeout(v)! > MAX_TIMER_MS, v);
      assert.notEqual(grpcJs(v), parseGrpcTimeout(v), `${v}: grpc-js misreads it`);
    }
  });

  it('setLongTimeout fires for a short wait and not before; cancel stops it', async () => {
    let fired = 0;
    const t0 = performance.now();
    await new Promise<void>((resolve) => setLongTimeout(() => (fired++, resolve()), 30));
    assert.ok(performance.now() - t0 >= 28, 'not before its time');
    const cancel = setLongTimeout(() => fired++, 10);
    cancel();
    // A 30-day one armed and cancelled: no TimeoutOverflowWarning (which would fire it after 1 ms).
    const long = setLongTimeout(() => fired++, 30 * 24 * 3600 * 1000);
    await new Promise((r) => setTimeout(r, 50));
    long();
    assert.equal(fired, 1);
  });
});
