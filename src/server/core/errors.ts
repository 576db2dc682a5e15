/**
 * Errors the core raises, by kind; services map kinds to gRPC status codes in
 * one table (services/status.ts). Field violations name the request field
 * ("rules[2].backends[0].mac") so that the client can point at it.
 */

/**
 * Broad kinds of failure that a port (the dataplane) reports; the single
 * errno-to-kind table lives with the adapter (dataplane/errors.ts).
 * 'permission' is the daemon itself refused by the kernel (EPERM/EACCES: a
 * capability it lacks), never the caller: services map it to
 * FAILED_PRECONDITION naming the capability.
 */
export type ErrorKind =
  'not-found' | 'exists' | 'busy' | 'invalid' | 'exhausted' | 'unsupported' | 'permission' | 'internal';

/**
 * Kinds the core adds: a generation mismatch, a precondition not met, a
 * dependency that cannot serve now (the state store's disk reported EIO),
 * and a change not started because its caller had gone (cancelled, or its
 * deadline passed while it waited).
 */
export type CoreErrorKind = ErrorKind | 'conflict' | 'precondition' | 'unavailable' | 'cancelled';

/**
 * A failure raised behind a port (kernel, disk): the adapter's typed errors
 * extend this, so services map them by kind without importing the adapter.
 */
export abstract class PortError extends Error {
  abstract readonly kind: ErrorKind;
  /** What was attempted, "verb object" ("attach xdp to veth3", "update map rule_cfg"). */
  abstract readonly op: string;
  /**
   * Whether the port observed why the kernel refused (e.g. a map frozen by another tool, read from its
   * fdinfo): the message says it, and nothing is guessed on top (no missing-capability hint for an EPERM).
   */
  readonly causeObserved?: boolean;
}

/** One bad field of a request. */
export interface FieldViolation {
  field: string;
  description: string;
}

export class CoreError extends Error {
  override readonly name = 'CoreError';
  constructor(
    readonly kind: CoreErrorKind,
    message: string,
    readonly violations: FieldViolation[] = [],
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  static invalid(violations: FieldViolation[]): CoreError {
    const first = violations[0];
    const more = violations.length > 1 ? ` (and ${violations.length - 1} more)` : '';
    return new CoreError('invalid', `${first.field}: ${first.description}${more}`, violations);
  }
}

/**
 * What a state store error (store.ts storeError: "WHAT: state store PATH: DETAIL [CODE]") says the disk did,
 * without what was attempted or the path, e.g. "the disk is full (ENOSPC) [SQLITE_FULL]".
 */
export function storeReason(e: Error): string {
  return /state store \S+: (.*)$/.exec(e.message)?.[1] ?? e.message;
}
