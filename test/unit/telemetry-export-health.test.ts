/**
 * telemetry/export-health.ts and the SDK hooks of telemetry/sdk.ts, without a daemon:
 *  - an exporter failure's cause in words (refused with the address, DNS, HTTP status with the body, gRPC,
 *    timeout), never a stack;
 *  - one exporter failing: one line, then nothing until the summary interval, a new cause once, one line when
 *    it succeeds again; the counter per signal; what the SDK is handed is dropped by its error handler;
 *  - real OTLP/HTTP exporters under the SDK's PeriodicExportingMetricReader against a local receiver answering
 *    503 (retried; the status found through node:http's diagnostics channel), 400 (with its body), then 200:
 *    nothing logged by the SDK besides these lines, none with the trace id of the context the export ran in.
 */
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { context, diag, DiagLogLevel, ROOT_CONTEXT, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { setGlobalErrorHandler, type ExportResult } from '@opentelemetry/core';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import {
  AggregationTemporality,
  MeterProvider,
  PeriodicExportingMetricReader,
  type PushMetricExporter,
  type ResourceMetrics,
} from '@opentelemetry/sdk-metrics';

import type { Logger } from '../../src/server/log.js';
import {
  describeExportError,
  ExportHealth,
  isReported,
  ReportedExportFailure,
} from '../../src/server/telemetry/export-health.js';
import { traceLogFields } from '../../src/server/telemetry/log-context.js';
import { Damper, diagToLog, errorHandler, otlpUrl } from '../../src/server/telemetry/sdk.js';

type Line = { level: string; msg: string; fields: Record<string, unknown> };

/** A Logger keeping each line with the trace fields the daemon's pino mixin would add at that moment. */
function capture(lines: Line[], bindings: object = {}): Logger {
  const at =
    (level: string) =>
    (obj: object, msg = '') =>
      lines.push({ level, msg, fields: { ...bindings, ...obj, ...traceLogFields() } });
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (b) => capture(lines, { ...bindings, ...b }),
  };
}

const sysErr = (code: string, extra: object = {}) =>
  Object.assign(new Error(`connect ${code} 127.0.0.1:4318`), { code, syscall: 'connect', ...extra });

/** An RPC's context: a span context with a trace id the export lines must not carry. */
const RPC = trace.setSpanContext(ROOT_CONTEXT, {
  traceId: 'd9c2cdf2af0461f9e7f6cb228fc45d8e',
  spanId: 'aa8898f28a1e3519',
  traceFlags: TraceFlags.SAMPLED,
});

describe('telemetry export health', () => {
  before(() => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  });
  after(() => {
    context.disable();
    diag.disable();
  });

  it('says the cause the exporter observed, never a stack', () => {
    assert.equal(
      describeExportError(sysErr('ECONNREFUSED', { address: '127.0.0.1', port: 4318 })),
      'connection refused by 127.0.0.1:4318 (ECONNREFUSED)',
    );
    const both = Object.assign(
      new AggregateError([
        sysErr('ECONNREFUSED', { address: '::1', port: 4318 }),
        sysErr('ECONNREFUSED', { address: '127.0.0.1', port: 4318 }),
      ]),
      { code: 'ECONNREFUSED' },
    );
    assert.equal(
      describeExportError(both),
      'connection refused by ::1:4318 (ECONNREFUSED); connection refused by 127.0.0.1:4318 (ECONNREFUSED)',
    );
    assert.equal(
      describeExportError(sysErr('ENOTFOUND', { hostname: 'collector.invalid' })),
      'DNS: no such host collector.invalid (ENOTFOUND)',
    );
    const http = Object.assign(new Error('Bad Request'), {
      name: 'OTLPExporterError',
      code: 400,
      data: 'no such metric\n',
    });
    assert.equal(describeExportError(http), 'HTTP 400 Bad Request: no such metric');
    const grpc = Object.assign(new Error('14 UNAVAILABLE: ...'), {
      code: 14,
      details: 'No connection established. Last error: Error: connect ECONNREFUSED 127.0.0.1:4317. Resolution note: ',
    });
    assert.equal(
      describeExportError(grpc),
      'gRPC UNAVAILABLE: No connection established. Last error: connect ECONNREFUSED 127.0.0.1:4317',
    );
    assert.equal(
      describeExportError(new Error('Request timed out'), { timeoutMs: 9000 }),
      'no answer within 9000 ms (request timed out)',
    );
    assert.equal(
      describeExportError(new Error('Export failed with retryable status'), {
        lastHttp: { status: 503, message: 'Service Unavailable' },
      }),
      'HTTP 503 Service Unavailable (retried until its timeout)',
    );
    assert.doesNotMatch(describeExportError(new Error('boom')), /\bat \w|stack/);
  });

  it('one exporter failing: one line, a summary per interval, a new cause once, one line when it succeeds again', () => {
    const lines: Line[] = [];
    let now = Date.parse('2026-12-06T12:00:00Z');
    const health = new ExportHealth(capture(lines), { summaryMs: 60_000, now: () => now });
    let next: ExportResult = { code: 1, error: sysErr('ECONNREFUSED', { address: '127.0.0.1', port: 4318 }) };
    const handed: ExportResult[] = [];
    const inner: PushMetricExporter = {
      export: (_m, cb) => cb(next),
      forceFlush: () => Promise.resolve(),
      shutdown: () => Promise.resolve(),
      selectAggregationTemporality: () => AggregationTemporality.CUMULATIVE,
    };
    const exp = health.metricExporter(inner, { name: 'otlp http/json http://127.0.0.1:4318/v1/metrics' });
    assert.equal(exp.selectAggregationTemporality!(0 as never), AggregationTemporality.CUMULATIVE);
    const points = { resource: {}, scopeMetrics: [{ scope: { name: 's' }, metrics: [{ dataPoints: [1, 2] }] }] };
    const once = () => context.with(RPC, () => exp.export(points as unknown as ResourceMetrics, (r) => handed.push(r)));

    assert.deepEqual(health.reports()[0].ok, undefined, 'no export ended yet');
    for (let i = 0; i < 30; i++, now += 1000) once();
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0].level, 'warn');
    assert.match(
      lines[0].msg,
      /^telemetry export of metrics to otlp http\/json .* failing: connection refused by 127\.0\.0\.1:4318 \(ECONNREFUSED\); the points/,
    );
    assert.equal(lines[0].fields.trace_id, undefined, "not the RPC's trace id");
    assert.ok(handed.every((r) => r.code === 1 && r.error instanceof ReportedExportFailure && isReported(r.error)));
    // PeriodicExportingMetricReader wraps the error's string in an Error of its own: still recognised.
    assert.ok(isReported(new Error(`PeriodicExportingMetricReader: metrics export failed (error ${handed[0].error})`)));
    assert.ok(!isReported(new Error('connect ECONNREFUSED')));
    assert.deepEqual(health.failures(), { metrics: 30 });

    now += 31_000; // 61 s after the first line
    once();
    assert.equal(lines.length, 2);
    assert.match(
      lines[1].msg,
      /still failing since 2026-12-06T12:00:00\.000Z: 31 export\(s\) failed, 62 metric points dropped; last: connection refused/,
    );

    next = { code: 1, error: Object.assign(new Error('Service Unavailable'), { code: 500, data: '' }) };
    once();
    once();
    assert.equal(lines.length, 3, 'a new cause, said once');
    assert.match(lines[2].msg, /still failing, now: HTTP 500 Service Unavailable \(before: connection refused/);
    const r = health.reports()[0];
    assert.equal(r.ok, false);
    assert.equal(r.error, 'HTTP 500 Service Unavailable');
    assert.equal(r.failingSince, Date.parse('2026-12-06T12:00:00Z'));
    assert.equal(r.failingExports, 33);

    next = { code: 0 };
    now += 1000;
    once();
    once();
    assert.equal(lines.length, 4);
    assert.equal(lines[3].level, 'info');
    assert.match(
      lines[3].msg,
      /succeeds again: 33 export\(s\) failed since 2026-12-06T12:00:00\.000Z \(66 metric points dropped\)/,
    );
    assert.deepEqual(health.failures(), { metrics: 33 }, 'the counter stops');
    assert.equal(health.reports()[0].ok, true);
    assert.equal(health.reports()[0].failingExports, 0);
    assert.ok(lines.every((l) => l.fields.trace_id === undefined));
  });

  it('an exporter that does not end its export is said as such at its guard; its late result is not counted', async () => {
    const lines: Line[] = [];
    const health = new ExportHealth(capture(lines));
    let late: ((r: ExportResult) => void) | undefined;
    const exp = health.spanExporter(
      { export: (_s, cb) => void (late = cb), shutdown: () => Promise.resolve() },
      { name: 'stuck', timeoutMs: 20, guardMs: 50 },
    );
    const handed: ExportResult[] = [];
    exp.export([], (r) => handed.push(r));
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(handed.length, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0].msg, /traces to stuck failing: the exporter did not end the export within 50 ms/);
    late!({ code: 0 });
    assert.equal(handed.length, 1);
    assert.equal(lines.length, 1);
    assert.deepEqual(health.failures(), { traces: 1 });
  });

  it('otlpUrl: where the SDK sends, per signal and protocol', () => {
    assert.equal(
      otlpUrl('METRICS', 'http/json', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' }),
      'http://c:4318/v1/metrics',
    );
    assert.equal(otlpUrl('TRACES', 'http/protobuf', {}), 'http://localhost:4318/v1/traces');
    assert.equal(
      otlpUrl('TRACES', 'http/json', {
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://t/x',
      }),
      'http://t/x',
    );
    assert.equal(otlpUrl('METRICS', 'grpc', { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4317' }), 'http://c:4317');
  });

  it('SDK diagnostics: no trace id of the context they are emitted in, repeats held back and counted', () => {
    const lines: Line[] = [];
    let now = 0;
    const d = diagToLog(capture(lines), new Damper(60_000, () => now));
    context.with(RPC, () => {
      for (let i = 0; i < 5; i++) d.error('PeriodicExportingMetricReader: metrics export timed out after 2000ms');
    });
    assert.equal(lines.length, 1);
    assert.equal(lines[0].fields.component, 'otel');
    assert.equal(lines[0].fields.trace_id, undefined);
    now = 60_000;
    d.error('PeriodicExportingMetricReader: metrics export timed out after 2000ms');
    assert.equal(lines.length, 2);
    assert.equal(lines[1].fields.repeated, 4);
    assert.match(lines[1].msg, /and 4 more time\(s\)/);
    // The reader only stopped waiting (the exporter's own result is said): debug, not error.
    d.error('PeriodicExportingMetricReader: metrics export timed out after 1000ms');
    assert.equal(lines.length, 3);
    assert.equal(lines[2].level, 'debug');
    lines.pop();
    // The SDK's global error handler: a reported failure dropped, anything else as its cause (no JSON stack).
    const h = errorHandler(d);
    h(new ReportedExportFailure('connection refused'));
    assert.equal(lines.length, 2);
    context.with(RPC, () => h(sysErr('EPIPE')));
    assert.equal(lines.length, 3);
    assert.match(lines[2].msg, /^OpenTelemetry SDK: connection closed by the receiver while sending \(EPIPE\)$/);
    assert.equal(lines[2].fields.trace_id, undefined);
  });

  describe('real OTLP/HTTP exporters under the SDK reader', () => {
    let server: Server;
    let port = 0;
    let answer = 503;
    const got: number[] = [];
    before(async () => {
      server = createServer((req, res) => {
        req.resume();
        req.on('end', () => {
          got.push(answer);
          res.statusCode = answer;
          res.end(answer === 200 ? '{}' : answer === 400 ? 'unknown field "x"' : '');
        });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
      port = (server.address() as { port: number }).port;
    });
    after(() => new Promise<void>((r) => server.close(() => r())));

    it('503 (the status said), 400 (with its body), 200: only these lines, outside the trace', async () => {
      const lines: Line[] = [];
      const log = capture(lines);
      const diagLog = diagToLog(log);
      diag.setLogger(diagLog, DiagLogLevel.WARN);
      setGlobalErrorHandler(errorHandler(diagLog));
      const health = new ExportHealth(log);
      const url = `http://127.0.0.1:${port}/v1/metrics`;
      const exporter = health.metricExporter(new OTLPMetricExporter({ url, timeoutMillis: 500 }), {
        name: `otlp http/json ${url}`,
        url,
        timeoutMs: 500,
      });
      const reader = new PeriodicExportingMetricReader({
        exporter,
        exportIntervalMillis: 60_000,
        exportTimeoutMillis: 1000,
      });
      const provider = new MeterProvider({ readers: [reader] });
      provider.getMeter('t').createCounter('c').add(1);
      const flush = () => context.with(RPC, () => reader.forceFlush().catch(() => undefined));

      await flush();
      assert.ok(got.includes(503), `the receiver answered: ${got.join(',')}`);
      assert.equal(lines.length, 1, JSON.stringify(lines.map((l) => l.msg)));
      assert.match(lines[0].msg, /failing: HTTP 503 Service Unavailable \(retried until its timeout\)/);
      answer = 400;
      await flush();
      assert.equal(lines.length, 2, JSON.stringify(lines.map((l) => l.msg)));
      assert.match(lines[1].msg, /still failing, now: HTTP 400 Bad Request: unknown field "x"/);
      answer = 200;
      await flush();
      assert.equal(lines.length, 3, JSON.stringify(lines.map((l) => l.msg)));
      assert.match(lines[2].msg, /succeeds again: 2 export\(s\) failed since/);
      assert.ok(
        lines.every((l) => l.fields.trace_id === undefined),
        'no trace id',
      );
      await provider.shutdown();
    });

    it('a closed port: connection refused with the address, within the exporter timeout', async () => {
      const s = createNetServer();
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
      const closed = (s.address() as { port: number }).port;
      await new Promise((r) => s.close(r));
      const lines: Line[] = [];
      const health = new ExportHealth(capture(lines));
      const url = `http://127.0.0.1:${closed}/v1/metrics`;
      const exporter = health.metricExporter(new OTLPMetricExporter({ url, timeoutMillis: 900 }), {
        name: url,
        url,
        timeoutMs: 900,
      });
      const reader = new PeriodicExportingMetricReader({
        exporter,
        exportIntervalMillis: 60_000,
        exportTimeoutMillis: 1000,
      });
      const provider = new MeterProvider({ readers: [reader] });
      provider.getMeter('t').createCounter('c').add(1);
      await reader.forceFlush().catch(() => undefined);
      assert.equal(lines.length, 1, JSON.stringify(lines));
      assert.match(
        lines[0].msg,
        new RegExp(`failing: connection refused by 127\\.0\\.0\\.1:${closed} \\(ECONNREFUSED\\)`),
      );
      await provider.shutdown().catch(() => undefined);
    });
  });
});
