/**
 * gRPC deadlines longer than a Node timer can hold. gRPC lets a client send up to 8 digits of hours in
 * `grpc-timeout` (PROTOCOL-HTTP2.md: TimeoutValue is at most 8 digits; units H, M, S, m, u, n), but
 * @grpc/grpc-js's server (1.14.7, the newest release; its main branch reads it the same way) computes
 * `(value * unit) | 0`: past 2^31-1 ms (~24.8 days) the int32 overflows — `2592000S` (30 days) becomes
 * -1702967296 ms — and grpc-js ends the call with DEADLINE_EXCEEDED 1 ms later, whatever the handler does.
 *
 * The fix lives before grpc-js reads the header: every HTTP/2 server grpc-js creates gets a first 'stream'
 * listener that takes such a header off the request and keeps the deadline it says (by the monotonic clock)
 * for that stream. The access layer (services/access.ts) reads it back for the call, ends the call with
 * DEADLINE_EXCEEDED when it passes, as grpc-js does for shorter ones, and aborts the handler's signal then.
 * A header within grpc-js's range, or one the spec does not allow, is left to grpc-js as it was.
 *
 * grpc-js creates its HTTP/2 servers inside, so http2.createServer and createSecureServer are wrapped
 * once per process (as connection-guard.ts and tls.ts do); call {@link carryLongDeadlines} before listening.
 * It must not touch anything but that header.
 */
import http2 from 'node:http2';

import { MAX_TIMER_MS, monotonicMs } from './core/clock.js';

/** Milliseconds per unit of `grpc-timeout` (PROTOCOL-HTTP2.md). */
const UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** The timeout a `grpc-timeout` value says, in ms; undefined for a value the spec does not allow. */
export function parseGrpcTimeout(value: string): number | undefined {
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  return m ? Number(m[1]) * UNIT_MS[m[2]!]! : undefined;
}

/** Deadlines (monotonic ms) taken off streams whose `grpc-timeout` grpc-js would misread. */
const longDeadlines = new WeakMap<object, number>();

/** The deadline (monotonic ms) kept for this HTTP/2 stream, if its `grpc-timeout` was one grpc-js misreads. */
export function longDeadlineOf(stream: object | undefined): number | undefined {
  return stream ? longDeadlines.get(stream) : undefined;
}

/**
 * On one HTTP/2 server: take a `grpc-timeout` past {@link MAX_TIMER_MS} off each request before any other
 * listener (grpc-js's) sees it, and keep its deadline for {@link longDeadlineOf}.
 */
export function carryLongDeadlinesOn(server: http2.Http2Server | http2.Http2SecureServer): void {
  server.prependListener('stream', (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => {
    const raw = headers['grpc-timeout'];
    if (typeof raw !== 'string') return;
    const ms = parseGrpcTimeout(raw);
    if (ms === undefined || ms <= MAX_TIMER_MS) return;
    longDeadlines.set(stream, monotonicMs() + ms);
    delete headers['grpc-timeout'];
  });
}

/** Apply {@link carryLongDeadlinesOn} to every HTTP/2 server created from now on (call before listening). */
export function carryLongDeadlines(): void {
  const h = http2 as typeof http2 & { xdpctlLongDeadlines?: boolean };
  if (h.xdpctlLongDeadlines) return;
  h.xdpctlLongDeadlines = true;
  const create = http2.createServer;
  const createSecure = http2.createSecureServer;
  http2.createServer = ((...args: Parameters<typeof create>) => {
    const s = create(...args);
    carryLongDeadlinesOn(s);
    return s;
  }) as typeof create;
  http2.createSecureServer = ((...args: unknown[]) => {
    const s = (createSecure as (...a: unknown[]) => http2.Http2SecureServer)(...args);
    carryLongDeadlinesOn(s);
    return s;
  }) as typeof createSecure;
}
