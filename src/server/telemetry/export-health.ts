/**
 * Whether the daemon's own telemetry leaves the host: each exporter the OTEL_* variables ask for (OTLP
 * traces and metrics over grpc, http/protobuf or http/json; zipkin; console) is wrapped here, and the result
 * the exporter itself reports for each export (ExportResult, with its error) is what is said:
 *  - the log: once when an exporter starts failing, with the cause the exporter observed ("connection
 *    refused by 127.0.0.1:4318 (ECONNREFUSED)", "HTTP 503 Service Unavailable", "no answer within 9000 ms",
 *    "DNS: no such host ..."), then a summary at most every {@link SUMMARY_MS} while it keeps failing, and
 *    once when an export succeeds again;
 *  - the counter `xdpctl.telemetry.export_failures` by `xdpctl.telemetry.signal`;
 *  - GetStatus `telemetry_exports` (`xdpctl status`).
 * Exports run, and these lines are logged, outside any RPC's context (ROOT_CONTEXT, tracing suppressed): a
 * batch of spans is often exported from a timer an RPC started, whose trace id must not end up on them.
 * The SDK's own reports of the same failures (its global error handler; PeriodicExportingMetricReader's
 * "metrics export failed") are dropped by sdk.ts ({@link isReported}): said once here instead.
 * It never retries or buffers anything itself; what the exporter drops stays dropped.
 */
import { subscribe } from 'node:diagnostics_channel';
import type { ClientRequest, IncomingMessage } from 'node:http';

import { context, ROOT_CONTEXT, type Meter } from '@opentelemetry/api';
import { suppressTracing, type ExportResult } from '@opentelemetry/core';
import type { PushMetricExporter, ResourceMetrics } from '@opentelemetry/sdk-metrics';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace';

import { monotonicMs } from '../core/clock.js';
import type { Logger } from '../log.js';

/** The signals the daemon exports (logs stay JSON lines on stdout: no log exporter). */
export type Signal = 'traces' | 'metrics';

/** How often a failing exporter is said again in the log (a summary), at most. */
export const SUMMARY_MS = 5 * 60_000;

export const EXPORT_METRICS = { failures: 'xdpctl.telemetry.export_failures' } as const;
export const SIGNAL_ATTR = 'xdpctl.telemetry.signal';

const SUCCESS = 0; // @opentelemetry/core ExportResultCode.SUCCESS
const FAILED = 1; // ExportResultCode.FAILED

/** What a signal's exports carry, in the log's words. */
const ITEMS: Record<Signal, string> = { traces: 'spans', metrics: 'metric points' };

/** One exporter as its exports last ended (GetStatus TelemetryExportStatus). */
export interface ExportReport {
  signal: Signal;
  /** The exporter and where it sends, e.g. "otlp http/json http://127.0.0.1:4318/v1/metrics". */
  exporter: string;
  /** undefined: no export has ended yet. */
  ok?: boolean;
  lastExportAt?: number;
  /** The first failure since the last success, while failing. */
  failingSince?: number;
  /** The last failure's cause, while failing. */
  error?: string;
  /** Failed exports since the start. */
  failedExports: number;
  /** Failed exports since failingSince (0 while ok). */
  failingExports: number;
  /** Spans or metric points in them. */
  failingItems: number;
}

/**
 * The error handed to the SDK for a failure this module has reported: its processors and readers pass it
 * to the global error handler (BatchSpanProcessor as it is; PeriodicExportingMetricReader inside a new
 * Error whose message has `String(error)`, i.e. this name), which drops it ({@link isReported}).
 */
const REPORTED = 'ReportedExportFailure';

export class ReportedExportFailure extends Error {
  override name = REPORTED;
}

/** Whether `err` is a failure an exporter of ours already reported (see ReportedExportFailure). */
export function isReported(err: unknown): boolean {
  return (
    err instanceof ReportedExportFailure ||
    (err instanceof Error && err.message.includes(`${REPORTED}: `)) ||
    (typeof err === 'string' && err.includes(`${REPORTED}: `))
  );
}

const CODES: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset by the receiver',
  EPIPE: 'connection closed by the receiver while sending',
  ETIMEDOUT: 'connect timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  EADDRNOTAVAIL: 'address not available',
  ECONNABORTED: 'connection aborted',
};

const GRPC_CODES = [
  'OK',
  'CANCELLED',
  'UNKNOWN',
  'INVALID_ARGUMENT',
  'DEADLINE_EXCEEDED',
  'NOT_FOUND',
  'ALREADY_EXISTS',
  'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED',
  'FAILED_PRECONDITION',
  'ABORTED',
  'OUT_OF_RANGE',
  'UNIMPLEMENTED',
  'INTERNAL',
  'UNAVAILABLE',
  'DATA_LOSS',
  'UNAUTHENTICATED',
];

type Errorish = Error & {
  code?: unknown;
  errno?: unknown;
  address?: string;
  port?: number;
  hostname?: string;
  syscall?: string;
  details?: string;
  data?: string;
  errors?: unknown[];
};

/** What the exporter knows about one export besides its error. */
export interface ErrorContext {
  /** The exporter's own timeout (its "Request timed out" is said with it). */
  timeoutMs?: number;
  /** The last HTTP answer to this exporter's URL (a retryable status is reported without one). */
  lastHttp?: { status: number; message: string };
}

/**
 * The cause of a failed export in words, from what the exporter reported: a socket error (its code, address
 * and port), a DNS failure (the name), an HTTP status (with the start of the body), a gRPC status, a
 * timeout; otherwise the error's own message. Never a stack.
 */
export function describeExportError(err: unknown, ctx: ErrorContext = {}): string {
  if (err === undefined || err === null) return 'the exporter reported a failure without a cause';
  if (typeof err !== 'object') return String(err);
  const e = err as Errorish;
  if (e instanceof ReportedExportFailure) return e.message;
  if (Array.isArray(e.errors) && e.errors.length) {
    // Node's connect to a name with several addresses (localhost: ::1 and 127.0.0.1): one error each.
    const each = [...new Set(e.errors.map((x) => describeExportError(x, ctx)))];
    return each.join('; ');
  }
  const code = typeof e.code === 'string' ? e.code : undefined;
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL' || code === 'EAI_NONAME') {
    const why = code === 'EAI_AGAIN' ? 'temporary failure of name resolution' : 'no such host';
    return `DNS: ${why}${e.hostname ? ` ${e.hostname}` : ''} (${code})`;
  }
  if (code && CODES[code]) {
    const at = e.address
      ? ` ${e.port === undefined ? '' : 'by '}${e.address}${e.port === undefined ? '' : `:${e.port}`}`
      : '';
    return `${CODES[code]}${at} (${code})`;
  }
  if (code) return `${e.message || code}${e.message?.includes(code) ? '' : ` (${code})`}`;
  // gRPC (@grpc/grpc-js ServiceError): a numeric status and details.
  if (typeof e.code === 'number' && typeof e.details === 'string') {
    // @grpc/grpc-js 1.14: "No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:4317.
    // Resolution note: " (a channel sharing a subchannel that failed earlier has "Last error: null").
    const details = e.details
      .replace(/\s*Resolution note:\s*$/, '')
      .replace(/Last error: null\.?/, 'gRPC did not say why for this call.')
      .replace(/Last error: Error: /, 'Last error: ')
      .replace(/\.+$/, '');
    return `gRPC ${GRPC_CODES[e.code] ?? e.code}: ${details}`;
  }
  // OTLP/HTTP (OTLPExporterError): the HTTP status, its message, the start of the body.
  if (typeof e.code === 'number') {
    const body = typeof e.data === 'string' && e.data.trim() ? `: ${e.data.trim().slice(0, 200)}` : '';
    return `HTTP ${e.code}${e.message ? ` ${e.message}` : ''}${body}`;
  }
  if (e.message === 'Request timed out') {
    return ctx.timeoutMs ? `no answer within ${ctx.timeoutMs} ms (request timed out)` : 'request timed out';
  }
  if (e.message === 'Export failed with retryable status') {
    // The OTLP/HTTP exporter retries 429, 502, 503 and 504 and then reports this, without the status.
    return ctx.lastHttp
      ? `HTTP ${ctx.lastHttp.status}${ctx.lastHttp.message ? ` ${ctx.lastHttp.message}` : ''} (retried until its timeout)`
      : 'the receiver answered with a status to retry later (HTTP 429, 502, 503 or 504) until the timeout';
  }
  const cause = e.cause === undefined ? '' : `: ${describeExportError(e.cause, ctx)}`;
  return `${e.message || e.name || 'unknown error'}${cause}`;
}

/** How an exporter is described and which of its requests are its own (HTTP answers). */
export interface ExporterInfo {
  signal: Signal;
  /** e.g. "otlp http/json http://127.0.0.1:4318/v1/metrics" */
  name: string;
  /** Its URL, for HTTP exporters (their answers are matched to it). */
  url?: string;
  /** Its own timeout per export. */
  timeoutMs?: number;
  /**
   * How long an export may take before it is recorded as failed by this module ("did not end within N ms"),
   * whatever the exporter says later: an exporter that never calls back is said too. Default: timeoutMs +
   * 1 s; none without either (console: it ends at once).
   */
  guardMs?: number;
}

interface State extends ExportReport {
  info: ExporterInfo;
  lastLogAt: number;
  /** The causes logged since lastLogAt's summary (a new one is logged at once, up to CAUSES_LOGGED). */
  causesLogged: Set<string>;
}

/** New causes of one failing exporter logged at once between two summaries, at most. */
const CAUSES_LOGGED = 3;

/** HTTP answers seen by node:http's diagnostics channel, by "host:port/path" (for retryable statuses). */
const httpAnswers = new Map<string, { status: number; message: string; at: number }>();
let httpWatched = false;
function watchHttpAnswers(): void {
  if (httpWatched) return;
  httpWatched = true;
  subscribe('http.client.response.finish', (m) => {
    const { request, response } = m as { request: ClientRequest; response: IncomingMessage };
    const key = `${String(request.getHeader('host') ?? request.host)}${request.path}`;
    if (!httpAnswers.has(key) && httpAnswers.size >= 32) return; // only a few exporter URLs matter
    // `at`: monotonic (core/clock.ts), compared with an export's start only.
    httpAnswers.set(key, {
      status: response.statusCode ?? 0,
      message: response.statusMessage ?? '',
      at: monotonicMs(),
    });
  });
}
function httpKey(url: string): string | undefined {
  try {
    const u = new URL(url);
    return `${u.host}${u.pathname}${u.search}`;
  } catch {
    return undefined;
  }
}

/** Every exporter of the process, as its exports end. */
export class ExportHealth {
  private readonly states: State[] = [];
  private readonly log: Logger;
  private readonly summaryMs: number;
  private readonly now: () => number;
  private readonly mono: () => number;

  /**
   * `now`: the wall clock, for the times said (lastExportAt, failingSince); `mono`: the monotonic clock, for the
   * summary interval (core/clock.ts), by default `now` when a test gives one.
   */
  constructor(log: Logger, opts: { summaryMs?: number; now?: () => number; mono?: () => number } = {}) {
    this.log = log.child({ component: 'otel' });
    this.summaryMs = opts.summaryMs ?? SUMMARY_MS;
    this.now = opts.now ?? Date.now;
    this.mono = opts.mono ?? opts.now ?? monotonicMs;
  }

  /** Each exporter as its exports last ended. */
  reports(): ExportReport[] {
    return this.states.map(({ info: _i, lastLogAt: _l, causesLogged: _c, ...r }) => ({ ...r }));
  }

  /** Failed exports since the start, by signal (0 for a signal exported without failure). */
  failures(): Partial<Record<Signal, number>> {
    const out: Partial<Record<Signal, number>> = {};
    for (const s of this.states) out[s.signal] = (out[s.signal] ?? 0) + s.failedExports;
    return out;
  }

  /** `xdpctl.telemetry.export_failures` on `meter`; returns the function that removes it. */
  register(meter: Meter): () => void {
    const counter = meter.createObservableCounter(EXPORT_METRICS.failures, {
      description:
        "Exports of the daemon's own telemetry that failed, by xdpctl.telemetry.signal (traces, metrics), as each exporter reported them (connection refused, HTTP status, timeout); since the start. The cause is in the log and in GetStatus telemetry_exports",
      unit: '{export}',
    });
    const observe = (r: { observe(v: number, a?: Record<string, string>): void }) => {
      for (const [signal, n] of Object.entries(this.failures())) r.observe(n, { [SIGNAL_ATTR]: signal });
    };
    counter.addCallback(observe);
    return () => counter.removeCallback(observe);
  }

  /** `inner`, its results recorded (see the module comment). */
  spanExporter(inner: SpanExporter, info: Omit<ExporterInfo, 'signal'>): SpanExporter {
    const s = this.add({ ...info, signal: 'traces' });
    return {
      export: (spans: ReadableSpan[], done: (r: ExportResult) => void) =>
        this.run(s, spans.length, (cb) => inner.export(spans, cb), done),
      shutdown: () => inner.shutdown(),
      forceFlush: () => inner.forceFlush?.() ?? Promise.resolve(),
    };
  }

  /** `inner`, its results recorded (see the module comment). */
  metricExporter(inner: PushMetricExporter, info: Omit<ExporterInfo, 'signal'>): PushMetricExporter {
    const s = this.add({ ...info, signal: 'metrics' });
    const wrapped: PushMetricExporter = {
      export: (metrics: ResourceMetrics, done: (r: ExportResult) => void) =>
        this.run(s, pointsOf(metrics), (cb) => inner.export(metrics, cb), done),
      forceFlush: () => inner.forceFlush(),
      shutdown: () => inner.shutdown(),
    };
    if (inner.selectAggregationTemporality) {
      wrapped.selectAggregationTemporality = inner.selectAggregationTemporality.bind(inner);
    }
    if (inner.selectAggregation) wrapped.selectAggregation = inner.selectAggregation.bind(inner);
    return wrapped;
  }

  private add(info: ExporterInfo): State {
    if (info.url) watchHttpAnswers();
    const s: State = {
      info,
      signal: info.signal,
      exporter: info.name,
      failedExports: 0,
      failingExports: 0,
      failingItems: 0,
      lastLogAt: 0,
      causesLogged: new Set(),
    };
    this.states.push(s);
    return s;
  }

  /** Run one export outside any RPC's context, record its result, hand the SDK its result. */
  private run(s: State, items: number, exp: (cb: (r: ExportResult) => void) => void, done: (r: ExportResult) => void) {
    const started = monotonicMs(); // the HTTP answers' clock
    let ended = false;
    const guardMs = s.info.guardMs ?? (s.info.timeoutMs === undefined ? undefined : s.info.timeoutMs + 1000);
    const finish = (r: ExportResult) => {
      if (ended) return; // a result after the guard's: that export was already said
      ended = true;
      if (guard) clearTimeout(guard);
      context.with(ROOT_CONTEXT, () => {
        if (r.code === SUCCESS) {
          this.succeeded(s);
          done(r);
          return;
        }
        const cause = describeExportError(r.error, {
          timeoutMs: s.info.timeoutMs,
          lastHttp: this.lastHttp(s, started),
        });
        this.failed(s, cause, items);
        done({ code: FAILED, error: new ReportedExportFailure(cause, { cause: r.error }) });
      });
    };
    const guard =
      guardMs === undefined
        ? undefined
        : setTimeout(
            () =>
              finish({ code: FAILED, error: new Error(`the exporter did not end the export within ${guardMs} ms`) }),
            guardMs,
          ).unref();
    context.with(suppressTracing(ROOT_CONTEXT), () => {
      try {
        exp(finish);
      } catch (err) {
        finish({ code: FAILED, error: err as Error });
      }
    });
  }

  private lastHttp(s: State, since: number) {
    const key = s.info.url && httpKey(s.info.url);
    const a = key ? httpAnswers.get(key) : undefined;
    return a && a.at >= since ? a : undefined;
  }

  private succeeded(s: State): void {
    const now = this.now();
    if (s.ok === false) {
      this.log.info(
        {
          signal: s.signal,
          exporter: s.exporter,
          failingSince: iso(s.failingSince!),
          failedExports: s.failingExports,
          [`dropped${s.signal === 'traces' ? 'Spans' : 'Points'}`]: s.failingItems,
        },
        `telemetry export of ${s.signal} to ${s.exporter} succeeds again: ${s.failingExports} export(s) failed since ${iso(s.failingSince!)} (${s.failingItems} ${ITEMS[s.signal]} dropped)`,
      );
    }
    s.ok = true;
    s.lastExportAt = now;
    s.failingSince = undefined;
    s.error = undefined;
    s.failingExports = 0;
    s.failingItems = 0;
  }

  private failed(s: State, cause: string, items: number): void {
    const now = this.now();
    s.failedExports++;
    s.lastExportAt = now;
    const first = s.ok !== false;
    if (first) {
      s.ok = false;
      s.failingSince = now;
      s.failingExports = 0;
      s.failingItems = 0;
    }
    const was = s.error;
    s.error = cause;
    s.failingExports++;
    s.failingItems += items;
    const fields = {
      signal: s.signal,
      exporter: s.exporter,
      error: cause,
      failingSince: iso(s.failingSince!),
      failedExports: s.failingExports,
    };
    const every = `said again every ${Math.round(this.summaryMs / 1000)} s while it fails, and once when an export succeeds`;
    const t = this.mono();
    if (first) {
      s.lastLogAt = t;
      s.causesLogged = new Set([cause]);
      const lost =
        s.signal === 'traces'
          ? 'the spans of each failed export are dropped'
          : 'the points of each failed export are dropped (cumulative sums carry on in the next export that succeeds)';
      this.log.warn(fields, `telemetry export of ${s.signal} to ${s.exporter} failing: ${cause}; ${lost} (${every})`);
    } else if (t - s.lastLogAt >= this.summaryMs) {
      s.lastLogAt = t;
      s.causesLogged = new Set([cause]);
      this.log.warn(
        fields,
        `telemetry export of ${s.signal} to ${s.exporter} still failing since ${iso(s.failingSince!)}: ${s.failingExports} export(s) failed, ${s.failingItems} ${ITEMS[s.signal]} dropped; last: ${cause}`,
      );
    } else if (!s.causesLogged.has(cause) && s.causesLogged.size < CAUSES_LOGGED) {
      // A cause not said yet (the receiver now answers, with an HTTP error; gRPC now says why): said at once.
      s.causesLogged.add(cause);
      this.log.warn(
        { ...fields, previousError: was },
        `telemetry export of ${s.signal} to ${s.exporter} still failing, now: ${cause} (before: ${was})`,
      );
    }
  }
}

const iso = (ms: number) => new Date(ms).toISOString();

function pointsOf(m: ResourceMetrics): number {
  let n = 0;
  for (const sm of m.scopeMetrics) for (const x of sm.metrics) n += x.dataPoints.length;
  return n;
}
