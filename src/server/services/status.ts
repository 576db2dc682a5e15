/**
 * The one place where failures become gRPC statuses. Core and kernel
 * errors carry a kind; this table maps kinds to codes and attaches
 * google.rpc error details (BadRequest, PreconditionFailure, ErrorInfo) in
 * the standard `grpc-status-details-bin` trailer. Anything unexpected is
 * INTERNAL with a generic message; the cause goes to the log only.
 */
import { Metadata, ServerError, Status, type CallContext, type ServerMiddleware } from 'nice-grpc';

import { CoreError, PortError, type CoreErrorKind } from '../core/errors.js';
import type { Logger } from '../log.js';
import { Any } from '../../gen/google/protobuf/any.js';
import { BadRequest, ErrorInfo, PreconditionFailure } from '../../gen/google/rpc/error_details.js';
import { Status as RpcStatus } from '../../gen/google/rpc/status.js';
import { visible } from '../../shared/visible.js';

/** Error kind -> gRPC status code. */
export const STATUS_BY_KIND: Record<CoreErrorKind, Status> = {
  'not-found': Status.NOT_FOUND,
  exists: Status.ALREADY_EXISTS,
  busy: Status.FAILED_PRECONDITION,
  precondition: Status.FAILED_PRECONDITION,
  invalid: Status.INVALID_ARGUMENT,
  exhausted: Status.RESOURCE_EXHAUSTED,
  unsupported: Status.UNIMPLEMENTED,
  // The daemon's own EPERM/EACCES: a capability it lacks, not the caller refused.
  permission: Status.FAILED_PRECONDITION,
  conflict: Status.ABORTED,
  unavailable: Status.UNAVAILABLE,
  cancelled: Status.CANCELLED,
  internal: Status.INTERNAL,
};

const DOMAIN = 'xdpctl.io';
/**
 * google.rpc.ErrorInfo reason on an UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED that xdpctld sent itself (domain
 * xdpctl.io): these codes also come from the client's own library when the answer was lost (its deadline, a dropped
 * connection), and only then may a change have been made without the client hearing of it.
 */
export const ANSWERED_REASON = 'XDPCTLD_ANSWERED';

/**
 * Bounds on what an error sends back. The message and the details travel in
 * HTTP/2 trailers (the initial headers of a trailers-only response), and a
 * client's metadata limit is small: gRPC's C core (Python grpcio, C++, Ruby...)
 * refuses more than 8 KiB by default (GRPC_ARG_MAX_METADATA_SIZE) and reports
 * RESOURCE_EXHAUSTED "received initial metadata size exceeds limit" instead of
 * the error; a larger limit elsewhere (grpc-js: 16 KiB) is no excuse. Requests
 * can make errors echo anything (a 3 MB name, a 250-rule ApplyRules with
 * seven violations each), so every part is bounded: the message to 1024
 * characters and 1.5 KiB percent-encoded (grpc-message; the details repeat
 * it), the violations to 2 KiB, so that the details are at most ~3.6 KiB
 * (4.8 KiB in base64) and everything with the other headers under 7 KiB.
 */
export const ERROR_LIMITS = {
  message: 1024,
  messageEncoded: 1536,
  field: 256,
  description: 512,
  detailsBytes: 2 * 1024,
};

/** `text` cut (as {@link bound}) until grpc-message's percent-encoding of it is at most `maxEncoded` bytes. */
export function boundEncoded(text: string, max: number, maxEncoded: number): string {
  let out = bound(text, max);
  for (let n = Math.min(text.length, max); encodedLength(out) > maxEncoded && n > 16; n = Math.floor(n * 0.75)) {
    out = bound(text, n);
  }
  return out;
}

/** Bytes of `text` as grpc-message carries it: UTF-8, with bytes outside 0x20-0x7e and '%' as %XX. */
function encodedLength(text: string): number {
  let n = 0;
  for (const b of Buffer.from(text)) n += b >= 0x20 && b <= 0x7e && b !== 0x25 ? 1 : 3;
  return n;
}

/** Cut text to `max` characters (never inside a surrogate pair), saying how long it was. */
export function bound(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max;
  const c = text.charCodeAt(end - 1);
  if (c >= 0xd800 && c <= 0xdbff) end--;
  return `${text.slice(0, end)}…(${text.length} chars)`;
}

/** The violations that fit the details budget, each bounded. */
function boundViolations(all: { field: string; description: string }[]): {
  kept: { field: string; description: string }[];
  omitted: number;
} {
  const kept: { field: string; description: string }[] = [];
  let bytes = 0;
  for (const v of all) {
    const b = {
      field: bound(v.field, ERROR_LIMITS.field),
      description: bound(v.description, ERROR_LIMITS.description),
    };
    // Field and description in UTF-8 plus tags and lengths.
    bytes += Buffer.byteLength(b.field) + Buffer.byteLength(b.description) + 12;
    if (bytes > ERROR_LIMITS.detailsBytes) break;
    kept.push(b);
  }
  return { kept, omitted: all.length - kept.length };
}

function any(typeUrl: string, value: Uint8Array): Any {
  return { typeUrl: `type.googleapis.com/${typeUrl}`, value };
}

/**
 * The capability an operation the kernel refused needs (capabilities(7);
 * BPF: CAP_BPF since Linux 5.8, CAP_SYS_ADMIN before; netlink link changes:
 * CAP_NET_ADMIN; entering another network namespace: CAP_SYS_ADMIN).
 */
export function capabilityFor(op: string): string {
  if (/^(attach|detach) xdp|netlink|link /.test(op)) return 'CAP_NET_ADMIN (attach/detach XDP through netlink)';
  if (/namespace|setns/.test(op)) return 'CAP_SYS_ADMIN (enter a network namespace)';
  return 'CAP_BPF (or CAP_SYS_ADMIN) for bpf() map and program operations';
}

/** Map an error to a ServerError plus the google.rpc.Status details. */
export function toServerError(err: unknown): { error: ServerError; details?: Uint8Array; internal: boolean } {
  if (err instanceof ServerError) {
    const bounded = boundEncoded(err.details, ERROR_LIMITS.message, ERROR_LIMITS.messageEncoded);
    return { error: bounded === err.details ? err : new ServerError(err.code, bounded), internal: false };
  }
  let kind: CoreErrorKind;
  let message: string;
  let violations: { field: string; description: string }[] = [];
  if (err instanceof CoreError) {
    kind = err.kind;
    message = err.message;
    violations = err.violations;
  } else if (err instanceof PortError) {
    kind = err.kind;
    // A missing capability is only a guess for an EPERM whose cause the port did not observe.
    message =
      err.kind === 'permission' && !err.causeObserved
        ? `${err.message}: xdpctld lacks ${capabilityFor(err.op)}`
        : err.message;
  } else {
    kind = 'internal';
    message = 'internal error';
  }
  const code = STATUS_BY_KIND[kind];
  if (code === Status.INTERNAL) message = 'internal error (see the daemon log)';
  // A name the host gave (an interface's) may hold control characters: made visible, as the CLI shows them.
  message = visible(message, true);
  violations = violations.map((v) => ({ field: visible(v.field), description: visible(v.description, true) }));
  const { kept, omitted } = boundViolations(violations);
  violations = kept;
  const m = boundEncoded(message, ERROR_LIMITS.message, ERROR_LIMITS.messageEncoded);
  message = omitted ? `${m} [details list ${kept.length}, ${omitted} more omitted]` : m;
  const details: Any[] = [];
  if (code === Status.INVALID_ARGUMENT && violations.length) {
    details.push(any('google.rpc.BadRequest', BadRequest.encode({ fieldViolations: violations }).finish()));
  }
  if (code === Status.FAILED_PRECONDITION) {
    details.push(
      any(
        'google.rpc.PreconditionFailure',
        PreconditionFailure.encode({
          violations: (violations.length ? violations : [{ field: '', description: message }]).map((v) => ({
            type: 'INTERFACE',
            subject: v.field,
            description: v.description,
          })),
        }).finish(),
      ),
    );
  }
  if (code === Status.ABORTED) {
    details.push(
      any(
        'google.rpc.ErrorInfo',
        ErrorInfo.encode({ reason: 'GENERATION_MISMATCH', domain: DOMAIN, metadata: {} }).finish(),
      ),
    );
  }
  const statusBytes = details.length ? RpcStatus.encode({ code, message, details }).finish() : undefined;
  return { error: new ServerError(code, message), details: statusBytes, internal: kind === 'internal' };
}

/**
 * The details of an UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED xdpctld sends itself: google.rpc.ErrorInfo reason
 * {@link ANSWERED_REASON}. A client cannot otherwise tell these from its library's own (a lost answer: its deadline,
 * a dropped connection), after which a change may have been made unheard; after this one the message says what
 * became of it (the CLI then adds no "may have been made").
 */
function answeredDetails(e: ServerError): Uint8Array | undefined {
  if (e.code !== Status.UNAVAILABLE && e.code !== Status.DEADLINE_EXCEEDED && e.code !== Status.CANCELLED) return;
  const info = any(
    'google.rpc.ErrorInfo',
    ErrorInfo.encode({ reason: ANSWERED_REASON, domain: DOMAIN, metadata: {} }).finish(),
  );
  return RpcStatus.encode({ code: e.code, message: e.details, details: [info] }).finish();
}

/** Server middleware: every handler's errors go through toServerError. */
export function errorMiddleware(log: Logger): ServerMiddleware {
  return async function* mapErrors(call, context: CallContext) {
    try {
      return yield* call.next(call.request, context);
    } catch (err) {
      // The client cancelled (or the server force-closed the call): nobody is there to answer.
      if (context.signal.aborted && (err as { name?: string } | null)?.name === 'AbortError') throw err;
      const { error, details, internal } = toServerError(err);
      if (internal) log.error({ err, method: call.method.path }, 'internal error');
      const said = details ?? answeredDetails(error);
      if (said) context.trailer.set('grpc-status-details-bin', said);
      throw error;
    }
  };
}

/** Decode the details trailer (used by clients and tests). */
export function decodeStatusDetails(md: Metadata | undefined): RpcStatus | undefined {
  const raw = md?.get('grpc-status-details-bin');
  return raw instanceof Uint8Array ? RpcStatus.decode(raw) : undefined;
}
