/**
 * The one place where failures become gRPC statuses. Core and kernel
 * errors carry a kind; this table maps kinds to codes and attaches
 * google.rpc error details (BadRequest, PreconditionFailure, ErrorInfo) in
 * the standard `grpc-status-details-bin` trailer. Anything unexpected is
 * INTERNAL with a generic message; the cause goes to the log only.
 */
import { Metadata, ServerError, Status, type CallContext, type ServerMiddleware } from 'nice-grpc';

import { CoreError, type CoreErrorKind } from '../core/errors.js';
import { KernelError } from '../dataplane/errors.js';
import type { Logger } from '../log.js';
import { Any } from '../../gen/google/protobuf/any.js';
import { BadRequest, ErrorInfo, PreconditionFailure } from '../../gen/google/rpc/error_details.js';
import { Status as RpcStatus } from '../../gen/google/rpc/status.js';

/** Error kind -> gRPC status code. */
export const STATUS_BY_KIND: Record<CoreErrorKind, Status> = {
  'not-found': Status.NOT_FOUND,
  exists: Status.ALREADY_EXISTS,
  busy: Status.FAILED_PRECONDITION,
  precondition: Status.FAILED_PRECONDITION,
  invalid: Status.INVALID_ARGUMENT,
  exhausted: Status.RESOURCE_EXHAUSTED,
  unsupported: Status.UNIMPLEMENTED,
  permission: Status.PERMISSION_DENIED,
  conflict: Status.ABORTED,
  internal: Status.INTERNAL,
};

const DOMAIN = 'xdpctl.io';

function any(typeUrl: string, value: Uint8Array): Any {
  return { typeUrl: `type.googleapis.com/${typeUrl}`, value };
}

/** Map an error to a ServerError plus the google.rpc.Status details. */
export function toServerError(err: unknown): { error: ServerError; details?: Uint8Array; internal: boolean } {
  if (err instanceof ServerError) return { error: err, internal: false };
  let kind: CoreErrorKind;
  let message: string;
  let violations: { field: string; description: string }[] = [];
  if (err instanceof CoreError) {
    kind = err.kind;
    message = err.message;
    violations = err.violations;
  } else if (err instanceof KernelError) {
    kind = err.kind;
    message = err.message;
  } else {
    kind = 'internal';
    message = 'internal error';
  }
  const code = STATUS_BY_KIND[kind];
  if (code === Status.INTERNAL) message = 'internal error (see the daemon log)';
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

/** Server middleware: every handler's errors go through toServerError. */
export function errorMiddleware(log: Logger): ServerMiddleware {
  return async function* mapErrors(call, context: CallContext) {
    try {
      return yield* call.next(call.request, context);
    } catch (err) {
      const { error, details, internal } = toServerError(err);
      if (internal) log.error({ err, method: call.method.path }, 'internal error');
      if (details) context.trailer.set('grpc-status-details-bin', details);
      throw error;
    }
  };
}

/** Decode the details trailer (used by clients and tests). */
export function decodeStatusDetails(md: Metadata | undefined): RpcStatus | undefined {
  const raw = md?.get('grpc-status-details-bin');
  return raw instanceof Uint8Array ? RpcStatus.decode(raw) : undefined;
}
