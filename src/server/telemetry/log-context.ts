/**
 * Trace ids in log lines: a pino `mixin` that adds `trace_id`, `span_id` and
 * `trace_flags` of the active span (an RPC's span, or the client's trace when
 * no exporter is configured), so that the logs of an RPC join its trace.
 * Adds nothing outside a trace.
 */
import { isSpanContextValid, trace } from '@opentelemetry/api';

/** Fields for the current log line (pino `mixin`). */
export function traceLogFields(): Record<string, string> {
  const ctx = trace.getActiveSpan()?.spanContext();
  if (!ctx || !isSpanContextValid(ctx)) return {};
  return {
    trace_id: ctx.traceId,
    span_id: ctx.spanId,
    trace_flags: `0${ctx.traceFlags.toString(16)}`.slice(-2),
  };
}
