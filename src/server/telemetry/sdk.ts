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
import { context, diag, DiagLogLevel, propagation, type DiagLogger } from '@opentelemetry/api';
import type { IMetricReader, PushMetricExporter } from '@opentelemetry/sdk-metrics';
import type { SpanProcessor } from '@opentelemetry/sdk-trace';

import type { Logger } from '../log.js';
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
async function envMetricReaders(log?: Logger): Promise<IMetricReader[]> {
  const readers: IMetricReader[] = [];
  const { getNumberFromEnv } = await import('@opentelemetry/core');
  const { ConsoleMetricExporter, PeriodicExportingMetricReader } = await import('@opentelemetry/sdk-metrics');
  const periodic = (exporter: PushMetricExporter) => {
    const interval = getNumberFromEnv('OTEL_METRIC_EXPORT_INTERVAL') ?? 60_000;
    const timeout = Math.min(getNumberFromEnv('OTEL_METRIC_EXPORT_TIMEOUT') ?? 30_000, interval);
    return new PeriodicExportingMetricReader({
      exporter,
      exportIntervalMillis: interval,
      exportTimeoutMillis: timeout,
      metricProducers: [datapathMetrics, configMetrics, storeMetrics],
    });
  };
  const names = list(process.env.OTEL_METRICS_EXPORTER);
  for (const name of names.length ? names : ['otlp']) {
    if (name === 'otlp') {
      const protocol = (
        process.env.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL ??
        process.env.OTEL_EXPORTER_OTLP_PROTOCOL ??
        'http/protobuf'
      ).trim();
      // The SDK's own exporter packages (dependencies of @opentelemetry/sdk-node), loaded only when used.
      const { OTLPMetricExporter } =
        protocol === 'grpc'
          ? await import('@opentelemetry/exporter-metrics-otlp-grpc')
          : protocol === 'http/json'
            ? await import('@opentelemetry/exporter-metrics-otlp-http')
            : await import('@opentelemetry/exporter-metrics-otlp-proto');
      readers.push(periodic(new OTLPMetricExporter()));
    } else if (name === 'console') {
      readers.push(periodic(new ConsoleMetricExporter()));
    } else if (name !== 'prometheus') {
      log?.warn({ exporter: name }, 'OTEL_METRICS_EXPORTER: unsupported exporter ignored');
    }
  }
  return readers;
}

/** Route the SDK's diagnostics (e.g. failed exports) to our log, at warn and above. */
function diagToLog(log: Logger): DiagLogger {
  const l = log.child({ component: 'otel' });
  const out =
    (level: 'error' | 'warn' | 'info' | 'debug') =>
    (message: string, ...args: unknown[]) =>
      l[level]({ args: args.length ? args.map(String) : undefined }, message);
  return { error: out('error'), warn: out('warn'), info: out('info'), debug: out('debug'), verbose: out('debug') };
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
  if (o.log && !process.env.OTEL_LOG_LEVEL) diag.setLogger(diagToLog(o.log), DiagLogLevel.WARN);

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
      ...(want.metrics ? await envMetricReaders(o.log) : []),
    ];
  } else {
    // Our own readers, not the SDK's from the environment: each must be given the datapath's producer.
    metricReaders = want.metrics ? await envMetricReaders(o.log) : [];
  }
  const spanProcessors = o.spanProcessors ?? (want.traces ? undefined : []); // undefined: OTEL_TRACES_EXPORTER

  if (metricReaders?.length === 0 && spanProcessors?.length === 0 && !process.env.OTEL_PROPAGATORS) {
    return propagationOnly();
  }
  const [{ NodeSDK }, { defaultResource, resourceFromAttributes }, { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION }] =
    await Promise.all([
      import('@opentelemetry/sdk-node'),
      import('@opentelemetry/resources'),
      import('@opentelemetry/semantic-conventions'),
    ]);
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

  let done: Promise<void> | undefined;
  return {
    traces: spanProcessors === undefined || spanProcessors.length > 0,
    metrics: metricReaders === undefined || metricReaders.length > 0,
    rpcSpans: true,
    prometheus: prometheus?.address,
    shutdown() {
      done ??= (async () => {
        try {
          await sdk.shutdown();
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
