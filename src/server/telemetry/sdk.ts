/**
 * Starting and stopping the OpenTelemetry SDK for xdpctld. Call startTelemetry
 * before the gRPC server is made (main.ts does, before Daemon.start) and give
 * the result to the daemon, which shuts it down (flushing spans and metrics)
 * when it stops.
 *
 * What is exported is decided by the standard OTEL_* environment variables,
 * as the SDK reads them (readers made here: see envMetricReaders), plus `--prometheus`. Unlike the SDK's
 * defaults, NOTHING is exported and no connection is ever made when none of
 * them is set: the SDK would otherwise default to OTLP on localhost:4318.
 *   traces:  on when OTEL_TRACES_EXPORTER is set (and not "none"), or when
 *            OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is.
 *   metrics: on when OTEL_METRICS_EXPORTER is set (and has no "none"), or when
 *            OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
 *            is; and the Prometheus endpoint when asked for.
 *   logs:    stay JSON lines on stdout (pino, with trace ids); no OTel log export.
 * Every exporter made here is watched (export-health.ts): a failing one is logged once with the cause it
 * observed, summarised while it fails, said once when it succeeds again, counted
 * (`xdpctl.telemetry.export_failures`) and shown by GetStatus ({@link Telemetry.exports}). Its timeout is
 * kept below its reader's or processor's, so that the exporter's own result (connection refused, an HTTP
 * status) is what ends an export rather than the reader's "export timed out". The SDK's diagnostics reach
 * the log outside any RPC's context, a repeated one at most once per {@link SUMMARY_MS} with its count.
 * W3C trace context is always extracted from RPC metadata (OTEL_PROPAGATORS
 * may change that), so logs carry a client's trace id even without export.
 *
 * The SDK's packages are imported only when something is exported: with no
 * OTEL_* export, no --prometheus and no OTEL_PROPAGATORS, only a context
 * manager and @opentelemetry/core's W3C trace-context propagator (what trace ids
 * in logs need) are set up, and RPCs get no recorded span
 * ({@link Telemetry.rpcSpans}). The SDK and its exporters take ~40 MB and a
 * large share of the start time.
 */
import { context, diag, DiagLogLevel, metrics, propagation, ROOT_CONTEXT, type DiagLogger } from '@opentelemetry/api';
import type { IMetricReader, PushMetricExporter } from '@opentelemetry/sdk-metrics';
import type { SpanExporter, SpanProcessor } from '@opentelemetry/sdk-trace';

import { monotonicMs } from '../core/clock.js';
import { silentLogger, type Logger } from '../log.js';
import { describeExportError, ExportHealth, isReported, SUMMARY_MS, type ExportReport } from './export-health.js';
import { configMetrics } from './config-metrics.js';
import { storeMetrics } from './state-metrics.js';
import { datapathMetrics } from './datapath-metrics.js';
import { isLoopback, PROMETHEUS_DEFAULT, PrometheusEndpoint, type HostPort } from './prometheus.js';

/** The resource's service.name (OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override it). */
export const SERVICE_NAME = 'xdpctld';

export interface TelemetryOptions {
  /** service.version of the resource. */
  version: string;
  /** Serve Prometheus metrics here (`--prometheus`). */
  prometheus?: HostPort;
  /** Where the SDK's own warnings go (export failures); default: nowhere unless OTEL_LOG_LEVEL is set. */
  log?: Logger;
  /** Replace the environment's span export (tests: an in-memory exporter). */
  spanProcessors?: SpanProcessor[];
  /** Extra metric readers (tests). */
  metricReaders?: IMetricReader[];
}

/** A started SDK. */
export interface Telemetry {
  /** Whether spans are exported (a TracerProvider is registered). */
  readonly traces: boolean;
  /** Whether metrics are collected by any reader. */
  readonly metrics: boolean;
  /**
   * Whether RPC spans are recorded (nice-grpc-opentelemetry's middleware, with the SDK's TracerProvider);
   * false when the SDK was not started: the API's no-op tracer then only carries the client's trace context
   * (telemetryMiddleware).
   */
  readonly rpcSpans: boolean;
  /** The Prometheus endpoint's bound address ("127.0.0.1:9464"), when on. */
  readonly prometheus?: string;
  /** Each exporter made from the OTEL_* variables, as its exports last ended (none: nothing exported). */
  exports(): ExportReport[];
  /** Flush and stop everything (idempotent). */
  shutdown(): Promise<void>;
}

const list = (v: string | undefined) =>
  (v ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

/** Which signals the environment asks to export (see the module comment). */
export function exportFromEnv(env: NodeJS.ProcessEnv): { traces: boolean; metrics: boolean } {
  const traces = list(env.OTEL_TRACES_EXPORTER);
  const metrics = list(env.OTEL_METRICS_EXPORTER);
  return {
    traces: traces.length
      ? traces[0] !== 'none' // the SDK's rule: a leading "none" disables
      : !!(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
    metrics: metrics.length
      ? !metrics.includes('none')
      : !!(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT),
  };
}

/**
 * The metric readers OTEL_METRICS_EXPORTER asks for (otlp, the default, and
 * console), made here rather than by the SDK so that each is given the
 * datapath's producer (datapath-metrics.ts). "prometheus" is the endpoint of
 * `--prometheus` (see envPrometheus).
 */
async function envMetricReaders(health: ExportHealth, log?: Logger): Promise<IMetricReader[]> {
  const readers: IMetricReader[] = [];
  const { getNumberFromEnv } = await import('@opentelemetry/core');
  const { ConsoleMetricExporter, PeriodicExportingMetricReader } = await import('@opentelemetry/sdk-metrics');
  const interval = getNumberFromEnv('OTEL_METRIC_EXPORT_INTERVAL') ?? 60_000;
  const timeout = Math.min(getNumberFromEnv('OTEL_METRIC_EXPORT_TIMEOUT') ?? 30_000, interval);
  const periodic = (exporter: PushMetricExporter) =>
    new PeriodicExportingMetricReader({
      exporter,
      exportIntervalMillis: interval,
      exportTimeoutMillis: timeout,
      metricProducers: [datapathMetrics, configMetrics, storeMetrics],
    });
  const names = list(process.env.OTEL_METRICS_EXPORTER);
  for (const name of names.length ? names : ['otlp']) {
    if (name === 'otlp') {
      const protocol = otlpProtocol('METRICS');
      const timeoutMillis = exporterTimeout('METRICS', timeout);
      // The SDK's own exporter packages (dependencies of @opentelemetry/sdk-node), loaded only when used.
      const { OTLPMetricExporter } =
        protocol === 'grpc'
          ? await import('@opentelemetry/exporter-metrics-otlp-grpc')
          : protocol === 'http/json'
            ? await import('@opentelemetry/exporter-metrics-otlp-http')
            : await import('@opentelemetry/exporter-metrics-otlp-proto');
      const url = otlpUrl('METRICS', protocol);
      readers.push(
        periodic(
          health.metricExporter(new OTLPMetricExporter({ timeoutMillis }), {
            name: `otlp ${protocol} ${url}`,
            url: protocol === 'grpc' ? undefined : url,
            timeoutMs: timeoutMillis,
          }),
        ),
      );
    } else if (name === 'console') {
      readers.push(periodic(health.metricExporter(new ConsoleMetricExporter(), { name: 'console (stdout)' })));
    } else if (name !== 'prometheus') {
      log?.warn({ exporter: name }, 'OTEL_METRICS_EXPORTER: unsupported exporter ignored');
    }
  }
  return readers;
}

/**
 * The span processors OTEL_TRACES_EXPORTER asks for (otlp, the default, zipkin, console), as the SDK would
 * make them (sdk-node's getSpanProcessorsFromEnv: a BatchSpanProcessor with the OTEL_BSP_* settings, a
 * SimpleSpanProcessor for console), each exporter watched by `health`.
 */
async function envSpanProcessors(health: ExportHealth, log?: Logger): Promise<SpanProcessor[]> {
  const { getNumberFromEnv } = await import('@opentelemetry/core');
  const { BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor } = await import('@opentelemetry/sdk-trace');
  const positive = (name: string) => {
    const v = getNumberFromEnv(name);
    return v !== undefined && v > 0 ? v : undefined;
  };
  const bspTimeout = positive('OTEL_BSP_EXPORT_TIMEOUT') ?? 30_000;
  const batch = (exporter: SpanExporter) =>
    new BatchSpanProcessor({
      exporter,
      maxQueueSize: positive('OTEL_BSP_MAX_QUEUE_SIZE'),
      scheduledDelayMillis: positive('OTEL_BSP_SCHEDULE_DELAY'),
      exportTimeoutMillis: bspTimeout,
      maxExportBatchSize: positive('OTEL_BSP_MAX_EXPORT_BATCH_SIZE'),
    });
  const processors: SpanProcessor[] = [];
  const names = [...new Set(list(process.env.OTEL_TRACES_EXPORTER))];
  for (const name of names.length ? names : ['otlp']) {
    if (name === 'otlp') {
      const protocol = otlpProtocol('TRACES');
      const timeoutMillis = exporterTimeout('TRACES', bspTimeout);
      const { OTLPTraceExporter } =
        protocol === 'grpc'
          ? await import('@opentelemetry/exporter-trace-otlp-grpc')
          : protocol === 'http/json'
            ? await import('@opentelemetry/exporter-trace-otlp-http')
            : await import('@opentelemetry/exporter-trace-otlp-proto');
      const url = otlpUrl('TRACES', protocol);
      processors.push(
        batch(
          health.spanExporter(new OTLPTraceExporter({ timeoutMillis }), {
            name: `otlp ${protocol} ${url}`,
            url: protocol === 'grpc' ? undefined : url,
            timeoutMs: timeoutMillis,
          }),
        ),
      );
    } else if (name === 'zipkin') {
      const { ZipkinExporter } = await import('@opentelemetry/exporter-zipkin');
      const url = process.env.OTEL_EXPORTER_ZIPKIN_ENDPOINT || 'http://localhost:9411/api/v2/spans';
      // No timeout of its own: an export that has not ended by 90% of the processor's is said as such.
      const guardMs = Math.floor(bspTimeout * 0.9);
      processors.push(batch(health.spanExporter(new ZipkinExporter(), { name: `zipkin ${url}`, url, guardMs })));
    } else if (name === 'console') {
      processors.push(
        new SimpleSpanProcessor({
          exporter: health.spanExporter(new ConsoleSpanExporter(), { name: 'console (stdout)' }),
        }),
      );
    } else if (name !== 'none') {
      log?.warn({ exporter: name }, 'OTEL_TRACES_EXPORTER: unsupported exporter ignored');
    }
  }
  return processors;
}

type OtlpSignal = 'TRACES' | 'METRICS';

/** OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL, or the SDK's default http/protobuf. */
function otlpProtocol(signal: OtlpSignal): string {
  return (
    process.env[`OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`] ??
    process.env.OTEL_EXPORTER_OTLP_PROTOCOL ??
    'http/protobuf'
  ).trim();
}

/** Where the SDK's OTLP exporter sends (for the log and GetStatus; the exporter reads the variables itself). */
export function otlpUrl(signal: OtlpSignal, protocol: string, env: NodeJS.ProcessEnv = process.env): string {
  const own = env[`OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`]?.trim();
  const all = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  if (protocol === 'grpc') return own || all || 'http://localhost:4317';
  if (own) return own;
  return `${(all || 'http://localhost:4318').replace(/\/+$/, '')}/v1/${signal.toLowerCase()}`;
}

/**
 * The OTLP exporter's timeout (OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT, default
 * 10 s), kept to 90% of the reader's or batch processor's own (`outer`): the exporter then ends each export
 * with what it observed (and stops retrying) before the outer timeout would end it as "timed out".
 */
function exporterTimeout(signal: OtlpSignal, outer: number): number {
  const n = (v: string | undefined) => (v !== undefined && Number(v) > 0 ? Number(v) : undefined);
  const own = n(process.env[`OTEL_EXPORTER_OTLP_${signal}_TIMEOUT`]) ?? n(process.env.OTEL_EXPORTER_OTLP_TIMEOUT);
  return Math.max(1, Math.min(own ?? 10_000, Math.floor(outer * 0.9)));
}

/** Repeats of one SDK diagnostic within {@link SUMMARY_MS}: logged once, then counted. */
export class Damper {
  private readonly seen = new Map<string, { lastLogAt: number; repeats: number }>();
  constructor(
    private readonly windowMs = SUMMARY_MS,
    /** A window, not a time: the monotonic clock (core/clock.ts); tests give their own. */
    private readonly now: () => number = monotonicMs,
  ) {}

  /** undefined: not to be logged now; otherwise how many repeats were held back since it was last logged. */
  pass(key: string): number | undefined {
    const now = this.now();
    const e = this.seen.get(key);
    if (e && now - e.lastLogAt < this.windowMs) {
      e.repeats++;
      return undefined;
    }
    const held = e?.repeats ?? 0;
    this.seen.delete(key);
    if (this.seen.size >= 256) this.seen.delete(this.seen.keys().next().value!); // the oldest
    this.seen.set(key, { lastLogAt: now, repeats: 0 });
    return held;
  }
}

/** An SDK diagnostic's argument in a log line: an error as its cause in words, never a stack. */
function argText(a: unknown): string {
  if (a instanceof Error) return describeExportError(a);
  if (typeof a === 'object' && a !== null) {
    try {
      return JSON.stringify(a).slice(0, 500);
    } catch {
      return String(a);
    }
  }
  return String(a);
}

/**
 * Route the SDK's diagnostics (at warn and above) to our log: outside any RPC's context (a diagnostic is
 * often emitted from a timer an RPC started; its trace id is not the diagnostic's), errors as their cause
 * rather than a JSON-encoded stack, and a message repeated within {@link SUMMARY_MS} logged once, with the
 * count of repeats held back on its next line.
 */
export function diagToLog(log: Logger, damper = new Damper()): DiagLogger {
  const l = log.child({ component: 'otel' });
  const out =
    (level: 'error' | 'warn' | 'info' | 'debug') =>
    (message: string, ...args: unknown[]): void =>
      context.with(ROOT_CONTEXT, () => {
        if (level !== 'debug' && OUTER_TIMEOUT.test(message)) return out('debug')(message, ...args);
        const held = damper.pass(`${level} ${message}`);
        if (held === undefined) return;
        const fields = { args: args.length ? args.map(argText) : undefined, ...(held ? { repeated: held } : {}) };
        l[level](fields, held ? `${message} (and ${held} more time(s) since it was last logged)` : message);
      });
  return { error: out('error'), warn: out('warn'), info: out('info'), debug: out('debug'), verbose: out('debug') };
}

/**
 * The reader's (sdk-metrics PeriodicExportingMetricReader) "metrics export timed out after N ms": it only
 * stopped waiting for the exporter, whose own result, ended by its own timeout (kept below the reader's),
 * is what export-health.ts says (or "did not end within N ms" when it does not end). It happens with a
 * connect refused at once too: on a busy event loop timers run before I/O callbacks. Logged at debug only.
 */
const OUTER_TIMEOUT = /^PeriodicExportingMetricReader: metrics export timed out after/;

/**
 * The SDK's global error handler: a failure an exporter of ours reported is dropped (export-health.ts);
 * anything else is logged as its cause (the SDK's default logs a JSON-encoded stack) through `diagLog`.
 */
export function errorHandler(diagLog: DiagLogger): (err: unknown) => void {
  return (err) => {
    if (isReported(err)) return;
    // BatchSpanProcessor's own timer ("Timeout"): as OUTER_TIMEOUT, the exporter's own result is said.
    if (err instanceof Error && err.message === 'Timeout') return diagLog.debug('BatchSpanProcessor: Timeout');
    diagLog.error(`OpenTelemetry SDK: ${typeof err === 'string' ? err : describeExportError(err)}`);
  };
}

/**
 * `OTEL_METRICS_EXPORTER=prometheus` without `--prometheus`: the endpoint `--prometheus` would serve, at
 * OTEL_EXPORTER_PROMETHEUS_HOST (default 127.0.0.1, as `--prometheus`) and OTEL_EXPORTER_PROMETHEUS_PORT
 * (default 9464). Our endpoint rather than the SDK's own, whose reader would not carry the datapath counters.
 */
export function envPrometheus(env: NodeJS.ProcessEnv): HostPort | undefined {
  if (!list(env.OTEL_METRICS_EXPORTER).includes('prometheus')) return undefined;
  const port = Number(env.OTEL_EXPORTER_PROMETHEUS_PORT || PROMETHEUS_DEFAULT.port);
  return { host: env.OTEL_EXPORTER_PROMETHEUS_HOST || PROMETHEUS_DEFAULT.host, port };
}

/** Start the SDK (see the module comment for what it exports). */
export async function startTelemetry(o: TelemetryOptions): Promise<Telemetry> {
  const want = exportFromEnv(process.env);
  const diagLog = o.log && !process.env.OTEL_LOG_LEVEL ? diagToLog(o.log) : undefined;
  if (diagLog) diag.setLogger(diagLog, DiagLogLevel.WARN);
  const health = new ExportHealth(o.log ?? silentLogger);

  const promAt = o.prometheus ?? envPrometheus(process.env);
  const prometheus = promAt ? await PrometheusEndpoint.listen(promAt) : undefined;
  if (prometheus && o.log && !isLoopback(promAt!.host)) {
    o.log.warn(
      { address: prometheus.address },
      'Prometheus endpoint listens on a non-loopback address: anyone who can reach it reads rule and interface names',
    );
  }
  let metricReaders: IMetricReader[] | undefined;
  if (prometheus || o.metricReaders) {
    metricReaders = [
      ...(prometheus ? [prometheus.reader] : []),
      ...(o.metricReaders ?? []),
      ...(want.metrics ? await envMetricReaders(health, o.log) : []),
    ];
  } else {
    // Our own readers, not the SDK's from the environment: each must be given the datapath's producer.
    metricReaders = want.metrics ? await envMetricReaders(health, o.log) : [];
  }
  // Our own processors, not the SDK's from OTEL_TRACES_EXPORTER: each exporter is watched (export-health.ts).
  const spanProcessors = o.spanProcessors ?? (want.traces ? await envSpanProcessors(health, o.log) : []);

  if (metricReaders?.length === 0 && spanProcessors?.length === 0 && !process.env.OTEL_PROPAGATORS) {
    return propagationOnly();
  }
  const [
    { NodeSDK },
    { defaultResource, resourceFromAttributes },
    { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION },
    { setGlobalErrorHandler },
  ] = await Promise.all([
    import('@opentelemetry/sdk-node'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/semantic-conventions'),
    import('@opentelemetry/core'),
  ]);
  if (diagLog) setGlobalErrorHandler(errorHandler(diagLog));
  const sdk = new NodeSDK({
    // service.name and version are the lowest priority: OTEL_SERVICE_NAME/OTEL_RESOURCE_ATTRIBUTES win.
    resource: defaultResource().merge(
      resourceFromAttributes({ [ATTR_SERVICE_NAME]: SERVICE_NAME, [ATTR_SERVICE_VERSION]: o.version }),
    ),
    spanProcessors,
    metricReaders,
    logRecordProcessors: [],
  });
  sdk.start();
  // After start: the meter provider the SDK registered (none without a reader).
  const unregister = metricReaders.length ? health.register(metrics.getMeter('xdpctld', o.version)) : undefined;

  let done: Promise<void> | undefined;
  return {
    traces: spanProcessors.length > 0,
    metrics: metricReaders.length > 0,
    rpcSpans: true,
    prometheus: prometheus?.address,
    exports: () => health.reports(),
    shutdown() {
      done ??= (async () => {
        try {
          await sdk.shutdown();
          unregister?.();
        } finally {
          await prometheus?.close();
        }
      })();
      return done;
    },
  };
}

/**
 * Nothing exported: the AsyncLocalStorage context manager the SDK would register and @opentelemetry/core's
 * W3C trace-context propagator, so that a client's trace id still reaches the logs. Spans stay
 * non-recording (the API's no-op tracer keeps the parent's context). W3C baggage, which the SDK would
 * also extract, is not: with nothing exported and no outgoing call, nothing would read it.
 */
async function propagationOnly(): Promise<Telemetry> {
  const [{ AsyncLocalStorageContextManager }, { W3CTraceContextPropagator }] = await Promise.all([
    import('@opentelemetry/context-async-hooks'),
    import('@opentelemetry/core'),
  ]);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  let done = false;
  return {
    traces: false,
    metrics: false,
    rpcSpans: false,
    exports: () => [],
    shutdown() {
      if (!done) {
        done = true;
        context.disable();
        propagation.disable();
      }
      return Promise.resolve();
    },
  };
}
