/**
 * Errors the core raises, by kind; services map kinds to gRPC status codes in
 * one table (services/status.ts). Field violations name the request field
 * ("rules[2].backends[0].mac") so that the client can point at it.
 */

/**
 * Broad kinds of failure that a port (the dataplane) reports; the single
 * errno-to-kind table lives with the adapter (dataplane/errors.ts).
 */
export type ErrorKind =
  'not-found' | 'exists' | 'busy' | 'invalid' | 'exhausted' | 'unsupported' | 'permission' | 'internal';

export type CoreErrorKind = ErrorKind | 'conflict' | 'precondition';

/**
 * A failure raised behind a port (kernel, disk): the adapter's typed errors
 * extend this, so services map them by kind without importing the adapter.
 */
export abstract class PortError extends Error {
  abstract readonly kind: ErrorKind;
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
