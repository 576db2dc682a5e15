/**
 * Child spans for dataplane operations (map writes, XDP attach/detach). Uses
 * only `@opentelemetry/api`, so the dataplane can call it without depending
 * on the SDK: with no SDK, or outside a recording span (the benchmark, the
 * resync timer), it runs the operation and creates nothing. It must never
 * change what the operation does: errors are recorded and rethrown as is.
 */
import { SpanStatusCode, trace, type Attributes, type Tracer } from '@opentelemetry/api';

// Taken on first use under a recording span, i.e. once a provider is
// registered (a tracer taken before would stay bound to the API copy's own,
// never-registered proxy when the SDK comes through the other module format).
let tracer: Tracer | undefined;

/** Span attribute names of dataplane spans (documented in the report/README). */
export const DP_ATTR = {
  /** The BPF map's kernel name ("rule_cfg"). */
  mapName: 'bpf.map.name',
  /** update | delete | batch_update | batch_delete | mmap_update (stores into a BPF_F_MMAPABLE array's mapped pages). */
  mapOp: 'bpf.map.operation',
  /** Number of entries the operation writes or deletes. */
  entries: 'bpf.map.entries',
  /** Interface of an XDP attach/detach. */
  iface: 'xdp.interface',
  /** Requested XDP mode (auto | native | generic). */
  modeRequested: 'xdp.mode.requested',
  /** Mode the kernel reports after an attach. */
  mode: 'xdp.mode',
  /** Positive errno of a failed operation. */
  errno: 'bpf.errno',
  /** Symbolic errno of a failed operation ("EBUSY"); the semantic-conventions error attribute. */
  errorType: 'error.type',
} as const;

/** What a kernel error carries; KernelError has both (kept structural to stay in this layer). */
interface ErrnoLike {
  errno?: unknown;
  code?: unknown;
}

/**
 * Run `fn` inside a child span named `name` when the active span is recording;
 * otherwise just run it. `attrs` is a function so that no attribute object is
 * built on the fast path.
 */
export function dataplaneSpan<T>(name: string, attrs: () => Attributes, fn: (span?: SpanLike) => T): T {
  const parent = trace.getActiveSpan();
  if (!parent?.isRecording()) return fn();
  tracer ??= trace.getTracer('xdpctl.dataplane');
  const span = tracer.startSpan(name, { attributes: attrs() });
  try {
    return fn(span);
  } catch (err) {
    const e = err as ErrnoLike;
    if (typeof e.errno === 'number') span.setAttribute(DP_ATTR.errno, e.errno);
    if (typeof e.code === 'string') span.setAttribute(DP_ATTR.errorType, e.code);
    if (err instanceof Error) span.recordException(err);
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
    throw err;
  } finally {
    span.end();
  }
}

/** The part of a span an operation may add attributes to (e.g. the mode it ended in). */
export interface SpanLike {
  setAttribute(key: string, value: string | number | boolean): unknown;
}
