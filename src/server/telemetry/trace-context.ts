/**
 * What a daemon that exports nothing still does with a client's trace: the W3C Trace Context
 * (`traceparent`, `tracestate`) of an RPC's metadata becomes the call's active context, so that log
 * lines carry the client's trace id (log-context.ts). Used instead of the OpenTelemetry SDK's
 * propagator and nice-grpc-opentelemetry when no span is exported (sdk.ts `propagationOnly`):
 * @opentelemetry/core (whose index loads the whole semantic-conventions package) and
 * nice-grpc-opentelemetry (a CommonJS copy of the API and of the conventions) held ~2.6 MB of heap in
 * every daemon at rest, for this alone (measured; the at-rest memory target). With an exporter the SDK's own
 * propagators and nice-grpc-opentelemetry's spans are used, as before.
 *
 * The propagator follows @opentelemetry/core's W3CTraceContextPropagator (Apache-2.0) and the W3C
 * Trace Context recommendation: version 00 is exactly four fields, a later version may add more, version
 * ff, an all-zero trace or parent id and upper-case hex are invalid (the header is then ignored).
 */
import {
  context,
  createTraceState,
  isSpanContextValid,
  propagation,
  ROOT_CONTEXT,
  trace,
  type Context,
  type SpanContext,
  type TextMapGetter,
  type TextMapPropagator,
  type TextMapSetter,
} from '@opentelemetry/api';
import type { ServerMiddleware } from 'nice-grpc-common';

const TRACE_PARENT = 'traceparent';
const TRACE_STATE = 'tracestate';
const TRACE_PARENT_RE =
  /^\s?((?!ff)[\da-f]{2})-((?![0]{32})[\da-f]{32})-((?![0]{16})[\da-f]{16})-([\da-f]{2})(-.*)?\s?$/;

/** A `traceparent` header's span context, or undefined when it is not a valid one. */
export function parseTraceParent(header: string): SpanContext | undefined {
  const m = TRACE_PARENT_RE.exec(header);
  if (!m || (m[1] === '00' && m[5])) return undefined;
  return { traceId: m[2], spanId: m[3], traceFlags: parseInt(m[4], 16), isRemote: true };
}

/** The W3C `traceparent`/`tracestate` propagator. */
export class W3CTraceContext implements TextMapPropagator {
  inject(ctx: Context, carrier: unknown, setter: TextMapSetter): void {
    const sc = trace.getSpanContext(ctx);
    if (!sc || !isSpanContextValid(sc)) return;
    setter.set(carrier, TRACE_PARENT, `00-${sc.traceId}-${sc.spanId}-0${Number(sc.traceFlags || 0).toString(16)}`);
    if (sc.traceState) setter.set(carrier, TRACE_STATE, sc.traceState.serialize());
  }

  extract(ctx: Context, carrier: unknown, getter: TextMapGetter): Context {
    const header = getter.get(carrier, TRACE_PARENT);
    const value = Array.isArray(header) ? header[0] : header;
    if (typeof value !== 'string') return ctx;
    const sc = parseTraceParent(value);
    if (!sc) return ctx;
    const state = getter.get(carrier, TRACE_STATE);
    if (state) {
      const joined = Array.isArray(state) ? state.join(',') : state;
      sc.traceState = createTraceState(typeof joined === 'string' ? joined : undefined);
    }
    return trace.setSpanContext(ctx, sc);
  }

  fields(): string[] {
    return [TRACE_PARENT, TRACE_STATE];
  }
}

/** nice-grpc metadata as a propagation carrier (first value of a key). */
interface MetadataLike {
  get(key: string): unknown;
  [Symbol.iterator](): Iterator<[string, unknown]>;
}
const metadataGetter: TextMapGetter<MetadataLike> = {
  get: (carrier, key) => {
    const v = carrier.get(key);
    return typeof v === 'string' ? v : undefined;
  },
  keys: (carrier) => Array.from(carrier, ([key]) => key),
};

/** Run an async generator's steps inside a context (each next/return/throw). */
function bindAsyncGenerator<T, R, N>(ctx: Context, g: AsyncGenerator<T, R, N>): AsyncGenerator<T, R, N> {
  const bound: AsyncGenerator<T, R, N> = {
    next: context.bind(ctx, g.next.bind(g)),
    return: context.bind(ctx, g.return.bind(g)),
    throw: context.bind(ctx, g.throw.bind(g)),
    [Symbol.asyncIterator]: () => bound,
    [Symbol.asyncDispose]: async () => {
      await bound.return(undefined as R);
    },
  };
  return bound;
}

/**
 * The RPC middleware when no span is exported: the call runs in the context the registered propagator
 * extracts from its metadata (the client's trace, if it sent one), as nice-grpc-opentelemetry's
 * middleware does with the API's no-op tracer, whose span is the client's span context itself.
 */
export function traceContextMiddleware(): ServerMiddleware {
  return (call, callContext) => {
    const ctx = propagation.extract(ROOT_CONTEXT, callContext.metadata as MetadataLike, metadataGetter);
    const next = call.next(call.request, callContext);
    return bindAsyncGenerator(ctx, next as AsyncGenerator<unknown, unknown, undefined>) as typeof next;
  };
}
