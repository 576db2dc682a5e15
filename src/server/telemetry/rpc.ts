/**
 * Telemetry of every RPC, as ONE server middleware that goes first on each
 * server: a span per call from nice-grpc-opentelemetry (W3C `traceparent`
 * from the client's metadata is honoured; status code and errors recorded),
 * and, inside that span, the RPC metrics nice-grpc-opentelemetry does not
 * provide: call duration by method and status, and an error count by status.
 *
 * Must not change a call: it observes the outcome and rethrows.
 *
 * nice-grpc-opentelemetry is loaded when the first server is made, i.e. after
 * the SDK started, on purpose: it is CommonJS and takes its tracer when it
 * loads, from the CommonJS copy of @opentelemetry/api, while the SDK (ESM)
 * registers its provider through the ESM copy. A tracer taken before that
 * registration stays a no-op forever (dual-package hazard); one taken after
 * finds the registered provider through the API's shared global.
 */
import { createRequire } from 'node:module';

import { metrics, type Attributes } from '@opentelemetry/api';
import { composeServerMiddleware, ServerError, Status, type ServerMiddleware } from 'nice-grpc-common';

type NiceGrpcOtel = typeof import('nice-grpc-opentelemetry');
const require = createRequire(import.meta.url);

/** Metric names. `rpc.server.call.duration` follows the stable RPC semantic conventions. */
export const RPC_METRICS = {
  duration: 'rpc.server.call.duration',
  errors: 'xdpctl.rpc.server.errors',
} as const;

/** Attribute names on the RPC metrics (semantic conventions). */
export const RPC_ATTRS = {
  system: 'rpc.system.name',
  /** "xdpctl.v1.RuleService/CreateRule". */
  method: 'rpc.method',
  /** gRPC status name: "OK", "INVALID_ARGUMENT", ... */
  status: 'rpc.status_code',
  /** Set when not OK: the status name again (semantic conventions' error.type). */
  errorType: 'error.type',
} as const;

/** Histogram buckets in seconds: most calls are sub-millisecond, watches last minutes. */
const BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

function isAbort(err: unknown): boolean {
  return err instanceof Error && err.name === 'AbortError';
}

/** RPC duration and error metrics (the span comes from telemetryMiddleware's first half). */
export function rpcMetricsMiddleware(): ServerMiddleware {
  // Taken when the server is made, i.e. after the SDK registered its MeterProvider.
  const meter = metrics.getMeter('xdpctld.rpc');
  const duration = meter.createHistogram(RPC_METRICS.duration, {
    description: 'Duration of RPCs served (streams: until they end)',
    unit: 's',
    advice: { explicitBucketBoundaries: BUCKETS },
  });
  const errors = meter.createCounter(RPC_METRICS.errors, {
    description: 'RPCs that ended with a gRPC status other than OK, by method and status',
    unit: '{call}',
  });
  return async function* rpcMetrics(call, context) {
    const start = performance.now();
    let status = Status.OK;
    try {
      return yield* call.next(call.request, context);
    } catch (err) {
      status = err instanceof ServerError ? err.code : isAbort(err) ? Status.CANCELLED : Status.UNKNOWN;
      throw err;
    } finally {
      const attrs: Attributes = {
        [RPC_ATTRS.system]: 'grpc',
        [RPC_ATTRS.method]: call.method.path.slice(1),
        [RPC_ATTRS.status]: Status[status],
      };
      if (status !== Status.OK) {
        attrs[RPC_ATTRS.errorType] = Status[status];
        errors.add(1, attrs);
      }
      duration.record((performance.now() - start) / 1000, attrs);
    }
  };
}

/**
 * The daemon's telemetry middleware: nice-grpc-opentelemetry's RPC span (outermost, so that the rest of
 * the call, including access checks and error mapping, runs inside it), then the RPC metrics. When the
 * SDK was not started (nothing is exported, see sdk.ts) the API's no-op tracer makes that span the
 * client's propagated span context itself, non-recording: the call runs in the client's trace context,
 * which is what the log lines need.
 */
export function telemetryMiddleware(): ServerMiddleware {
  const { openTelemetryServerMiddleware } = require('nice-grpc-opentelemetry') as NiceGrpcOtel;
  return composeServerMiddleware(openTelemetryServerMiddleware(), rpcMetricsMiddleware());
}
