/**
 * The CLI's errors: exit codes by gRPC status, one-line messages for failed calls (with the field
 * violations and precondition failures of google.rpc.Status details), and CliError for local ones.
 */
import { ClientError, Status, type Metadata } from 'nice-grpc';

import { visible } from './output.js';

import { BadRequest, ErrorInfo, PreconditionFailure } from '../../gen/google/rpc/error_details.js';
import { Status as RpcStatus } from '../../gen/google/rpc/status.js';
import { socketAccessWhy } from '../../shared/socket-access.js';
import { DEFAULT_SERVER } from '../index.js';

export const EXIT = {
  OK: 0,
  LOCAL: 1,
  USAGE: 2,
  INVALID: 3,
  NOT_FOUND: 4,
  EXISTS: 5,
  PRECONDITION: 6,
  ABORTED: 7,
  EXHAUSTED: 8,
  DENIED: 9,
  UNAVAILABLE: 10,
  DEADLINE: 11,
  OTHER: 12,
} as const;

export const EXIT_BY_STATUS: Partial<Record<Status, number>> = {
  [Status.INVALID_ARGUMENT]: EXIT.INVALID,
  [Status.NOT_FOUND]: EXIT.NOT_FOUND,
  [Status.ALREADY_EXISTS]: EXIT.EXISTS,
  [Status.FAILED_PRECONDITION]: EXIT.PRECONDITION,
  [Status.ABORTED]: EXIT.ABORTED,
  [Status.RESOURCE_EXHAUSTED]: EXIT.EXHAUSTED,
  [Status.PERMISSION_DENIED]: EXIT.DENIED,
  [Status.UNAUTHENTICATED]: EXIT.DENIED,
  [Status.UNAVAILABLE]: EXIT.UNAVAILABLE,
  [Status.DEADLINE_EXCEEDED]: EXIT.DEADLINE,
};

export const EXIT_HELP = `
Exit codes:
  0   success
  1   local error (file unreadable, ...)
  2   usage error (bad flags or arguments)
  3   invalid argument (the server rejected a field; config file errors)
  4   not found (rule, link or interface)
  5   already exists
  6   failed precondition (conflict; the daemon runs with --config; its state store is read-only)
  7   aborted: the rule changed since you read it (--generation)
  8   resource exhausted (a datapath table is full, the state store's disk is full,
      or the request is over xdpctld's --max-message-bytes)
  9   permission denied or unauthenticated (also: xdpctld refused this client's TLS
      certificate, or requires one)
  10  unavailable (xdpctld unreachable or shutting down)
  11  deadline exceeded (--timeout)
  12  any other error
A change (create, update, delete, apply, connect, disconnect) that ends with 10 after reaching
xdpctld, or with 11, may have been made all the same: xdpctld completes a change it has started
and its audit log says which; the message names the command that reads it back.

Environment:
  XDPCTL_SERVER   default for --server (else ${DEFAULT_SERVER})`;

/** An error with its own exit code and a one-line message. */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number = EXIT.LOCAL,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Whether xdpctld itself sent the failed call's status: its google.rpc.ErrorInfo reason XDPCTLD_ANSWERED on
 * UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED (server services/status.ts ANSWERED_REASON). Without it such a code
 * is the client library's own: the answer was lost (deadline, dropped connection).
 */
export function answeredByDaemon(trailer: Metadata | undefined): boolean {
  const raw = trailer?.get('grpc-status-details-bin');
  if (!(raw instanceof Uint8Array)) return false;
  try {
    return RpcStatus.decode(raw).details.some(
      (d) => d.typeUrl.endsWith('/google.rpc.ErrorInfo') && ErrorInfo.decode(d.value).reason === 'XDPCTLD_ANSWERED',
    );
  } catch {
    return false;
  }
}

/** Field violations from the grpc-status-details-bin trailer ("field: description"). */
export function detailLines(trailer: Metadata | undefined): { bad: string[]; precondition: string[] } {
  const out = { bad: [] as string[], precondition: [] as string[] };
  const raw = trailer?.get('grpc-status-details-bin');
  if (!(raw instanceof Uint8Array)) return out;
  try {
    for (const d of RpcStatus.decode(raw).details) {
      if (d.typeUrl.endsWith('/google.rpc.BadRequest')) {
        for (const v of BadRequest.decode(d.value).fieldViolations) {
          out.bad.push(v.field ? `${v.field}: ${v.description}` : v.description);
        }
      } else if (d.typeUrl.endsWith('/google.rpc.PreconditionFailure')) {
        for (const v of PreconditionFailure.decode(d.value).violations) {
          out.precondition.push(v.subject ? `${v.subject}: ${v.description}` : v.description);
        }
      }
    }
  } catch {
    /* undecodable details: the message alone will do */
  }
  return out;
}

/** A gRPC failure as one line and an exit code. */
export function describeClientError(
  e: ClientError,
  server: string,
  trailer: Metadata | undefined,
  timeoutMs?: number,
): { message: string; exitCode: number } {
  const exitCode = EXIT_BY_STATUS[e.code] ?? EXIT.OTHER;
  const details = e.details.replace(/\s*\n\s*/g, ' ').trim();
  switch (e.code) {
    case Status.INVALID_ARGUMENT: {
      const { bad } = detailLines(trailer);
      return { message: bad.length ? bad.join('; ') : details, exitCode };
    }
    case Status.FAILED_PRECONDITION: {
      const { precondition } = detailLines(trailer);
      const extra = precondition.filter((p) => !details.includes(p.replace(/^[^:]*: /, '')));
      return { message: [details, ...extra].join('; '), exitCode };
    }
    case Status.RESOURCE_EXHAUSTED: {
      // The daemon refused the request's size (grpc-js: "Received message larger than max (N vs M)").
      const m = /larger than max \((\d+) vs\.? (\d+)\)/.exec(details);
      if (m) {
        const mb = (n: string) => `${(Number(n) / 1048576).toFixed(1)} MiB`;
        return {
          message:
            `the request is ${mb(m[1])}, over xdpctld's limit of ${mb(m[2])} (its --max-message-bytes): ` +
            'raise that limit, or send the change in parts (rules create/update/delete)',
          exitCode,
        };
      }
      return { message: details, exitCode };
    }
    case Status.ABORTED:
      return {
        message: /changed since you read it/.test(details)
          ? `${details} (read it again and retry)`
          : `${details}: changed since you read it (read it again and retry)`,
        exitCode,
      };
    case Status.UNAVAILABLE: {
      if (/SSL routines|certificate|handshake/i.test(details)) {
        const why = /alert certificate required/.test(details)
          ? 'the server requires a client certificate (--tls-cert, --tls-key)'
          : /(?<!alert )certificate has expired|CERT_HAS_EXPIRED/.test(details)
            ? "the server's certificate (xdpctld --tls-cert) has expired"
            : /(?<!alert )certificate is not yet valid|CERT_NOT_YET_VALID/.test(details)
              ? "the server's certificate (xdpctld --tls-cert) is not yet valid"
              : /certificate verify failed|self[- ]signed|unable to get (local )?issuer/i.test(details)
                ? 'the server certificate is not trusted (--tls-ca)'
                : /wrong version number|packet length too long|http request/i.test(details)
                  ? 'the server does not speak TLS on this port (drop --tls-*)'
                  : (/error:[0-9A-F]+:SSL routines:[^:]*:([^:]+)/.exec(details)?.[1] ?? 'handshake failed');
        // The server refused this client for want of a certificate: a refused identity (exit 9), not unreachable.
        const refused = /alert certificate required/.test(details);
        return { message: `TLS with xdpctld at ${server} failed: ${why}`, exitCode: refused ? EXIT.DENIED : exitCode };
      }
      // A Unix socket this user may not open: the daemon may well be running; a permission problem (exit 9).
      const unixPath = /^unix:(?:\/\/(?=\/))?(.*)$/.exec(server)?.[1];
      if (unixPath && /\b(EACCES|EPERM)\b/.test(details)) {
        return {
          message: `permission denied: you may not open ${unixPath} ${socketAccessWhy(unixPath)}`,
          exitCode: EXIT.DENIED,
        };
      }
      const m = /\b(ECONNREFUSED|ENOENT|EACCES|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT|ENOTFOUND|EAI_AGAIN)\b/.exec(details);
      if (m || /No connection established|Failed to connect|Name resolution failed/i.test(details)) {
        const reason =
          {
            ECONNREFUSED: 'connection refused',
            ENOENT: 'no such socket',
            EACCES: 'permission denied',
            EHOSTUNREACH: 'host unreachable',
            ENETUNREACH: 'network unreachable',
            ETIMEDOUT: 'connection timed out',
            ENOTFOUND: 'unknown host',
            EAI_AGAIN: 'name resolution failed',
          }[m?.[1] ?? ''] ?? (/Name resolution failed/i.test(details) ? 'name resolution failed' : details);
        return {
          message: `cannot reach xdpctld at ${server} (${reason}); is it running? (--server, XDPCTL_SERVER)`,
          exitCode,
        };
      }
      return { message: `xdpctld at ${server} is unavailable: ${details}`, exitCode };
    }
    case Status.DEADLINE_EXCEEDED:
      return {
        message: `no answer from xdpctld at ${server} within ${timeoutMs === undefined ? 'the deadline' : `${timeoutMs}ms`} (--timeout)`,
        exitCode,
      };
    case Status.UNAUTHENTICATED:
    case Status.PERMISSION_DENIED:
      return { message: `${Status[e.code].toLowerCase().replace(/_/g, ' ')}: ${details}`, exitCode };
    default:
      // Codes with their own exit code speak for themselves; others say which they are.
      return { message: exitCode === EXIT.OTHER ? `${details || 'failed'} (${Status[e.code]})` : details, exitCode };
  }
}

export function isAbort(e: unknown): boolean {
  return e instanceof Error && e.name === 'AbortError';
}

/** `s` on one line, its control characters made visible (output.ts visible: a message may carry data). */
export function oneLine(s: string): string {
  return visible(s.replace(/\s*\n\s*/g, ' ').trim());
}
