/**
 * Access control and audit for every RPC, in two pieces:
 *
 * - {@link listenerCredentials}: a grpc-js interceptor, bound to one
 *   listener's credentials so that it runs first on every call, works out the
 *   caller's identity from what the transport proves (verified client
 *   certificate, SO_PEERCRED on the Unix socket, the kernel's socket table for
 *   loopback TCP) and hands it to the middleware in an internal metadata entry.
 *   Whatever the client sent under that key is removed first, and the entry is
 *   sealed with a per-process secret, so a client cannot claim an identity.
 * - {@link accessMiddleware}: the nice-grpc middleware that checks the role the
 *   method needs (auth/roles.ts), bounds watch streams per identity, and writes
 *   one audit record for every mutation and every denial with the final gRPC
 *   code. It wraps errorMiddleware so that it sees the mapped code.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

import {
  experimental,
  ServerCredentials,
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
} from '@grpc/grpc-js';
import { ServerError, Status, type CallContext, type ServerMiddleware } from 'nice-grpc';

import {
  anonymous,
  identityFromCertificate,
  isLoopbackAddress,
  localIdentity,
  loopbackPeerUid,
  type Identity,
} from '../auth/identity.js';
import { roleSatisfies, type Policy, type Role } from '../auth/policy.js';
import { roleForMethod } from '../auth/roles.js';
import { MAX_TIMER_MS, monotonicMs, setLongTimeout } from '../core/clock.js';
import { longDeadlineOf } from '../grpc-timeout.js';
import type { Logger } from '../log.js';
import { normalizePeer } from '../net/addr.js';
import { lazyRules } from './apply-rules-codec.js';
import { AUDIT_OUTCOME, type OutcomeBox } from './audit-outcome.js';
import { CALLER } from './caller.js';
import { visible } from '../../shared/visible.js';

/** Internal metadata key carrying the sealed identity from the interceptor to the middleware. */
export const IDENTITY_KEY = 'x-xdpctl-identity';

/**
 * Internal metadata key carrying the call's deadline from the interceptor to the middleware, by the monotonic
 * clock (core/clock.ts): a wall-clock step in between neither ends the call nor stretches its deadline.
 */
export const DEADLINE_KEY = 'x-xdpctl-deadline';

/** What a listener is: decides where identities come from. */
export type ListenerKind = 'unix' | 'tcp';

/** The secret that seals identity entries (one per process). */
export const SEAL = randomBytes(24).toString('hex');

/** The sealed form of an identity for the IDENTITY_KEY entry (listeners that are not grpc-js: http-json.ts). */
export function sealIdentity(id: Identity): string {
  return seal(id);
}

function seal(id: Identity): string {
  return `${SEAL}.${JSON.stringify(id)}`;
}

function unseal(value: unknown): Identity | undefined {
  if (typeof value !== 'string' || value.length <= SEAL.length + 1) return undefined;
  const a = Buffer.from(value.slice(0, SEAL.length));
  if (a.length !== SEAL.length || !timingSafeEqual(a, Buffer.from(SEAL)) || value[SEAL.length] !== '.') {
    return undefined;
  }
  return JSON.parse(value.slice(SEAL.length + 1)) as Identity;
}

/** Reads a connected Unix socket's peer credentials (SO_PEERCRED); given by the server wiring. */
export type PeerCredentialReader = (fd: number) => { uid: number; gid: number; pid: number };

let peerCred: PeerCredentialReader | undefined;

/**
 * Set how Unix-socket peers are identified (the wiring passes
 * dataplane/peer-cred.ts): services import nothing from dataplane/.
 */
export function usePeerCredentials(reader: PeerCredentialReader, tcpUid?: LoopbackUidReader): void {
  peerCred = reader;
  loopbackUid = tcpUid;
}

/**
 * The uid owning the TCP socket with local end `local` and remote end
 * `remote` in our network namespace (dataplane/peer-cred.ts tcpSocketUid:
 * one NETLINK_SOCK_DIAG lookup); given by the wiring.
 */
export type LoopbackUidReader = (
  local: { address: string; port: number },
  remote: { address: string; port: number },
) => number | undefined;

let loopbackUid: LoopbackUidReader | undefined;

/**
 * The uid of a loopback client: one sock_diag lookup of the client's socket when the wiring gave the
 * reader (~0.1 ms), else the kernel's socket tables (/proc/net/tcp: ~15 ms with a thousand sockets, which
 * a local user churning connections would make the daemon pay again and again).
 */
function loopbackClientUid(remoteAddress: string, remotePort: number, localAddress: string, localPort: number) {
  if (!loopbackUid) return loopbackPeerUid(remoteAddress, remotePort, localAddress, localPort);
  return loopbackUid({ address: remoteAddress, port: remotePort }, { address: localAddress, port: localPort });
}

type Session = { socket?: { _handle?: { fd?: number } } };

/** The call's HTTP/2 session (grpc-js keeps the http2 stream on the innermost call). */
function sessionOf(call: ServerInterceptingCallInterface): Session | undefined {
  let c = call as unknown as { nextCall?: unknown; stream?: { session?: Session } };
  while (c.nextCall) c = c.nextCall as typeof c;
  return c.stream?.session;
}

/** The connected socket's fd under a call. */
function socketFd(call: ServerInterceptingCallInterface): number | undefined {
  const fd = sessionOf(call)?.socket?._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Identities per connection: what the transport proves cannot change within
 * one (peer credentials, the verified certificate, the loopback socket's
 * owner), and the loopback lookup reads the kernel's socket table, which
 * costs milliseconds: done once per connection, not once per call.
 */
const bySession = new WeakMap<Session, Identity>();

/** The identity the transport proves for this call (computed once per connection). */
export function identify(kind: ListenerKind, call: ServerInterceptingCallInterface): Identity {
  const session = sessionOf(call);
  const known = session && bySession.get(session);
  if (known) return known;
  const id = identifyUncached(kind, call);
  if (session) bySession.set(session, id);
  return id;
}

function identifyUncached(kind: ListenerKind, call: ServerInterceptingCallInterface): Identity {
  if (kind === 'unix') return unixIdentity(socketFd(call));
  const auth = call.getAuthContext();
  // grpc-js reports a certificate only on an authorized (CA-verified) TLS connection.
  if (auth.sslPeerCertificate) return identityFromCertificate(auth.sslPeerCertificate);
  const via = auth.transportSecurityType === 'ssl' ? 'tls' : 'plaintext';
  return tcpIdentity(via, call.getConnectionInfo());
}

/** A Unix socket peer's identity from SO_PEERCRED on the connection's fd (undefined: not found); else anonymous, saying why. */
function unixIdentity(fd: number | undefined): Identity {
  if (fd === undefined) return anonymous('unix-socket', 'peer credentials unavailable (socket fd not found)');
  if (!peerCred) return anonymous('unix-socket', 'peer credentials unavailable (no reader configured)');
  try {
    const c = peerCred(fd);
    return localIdentity('unix-socket', c.uid, c.gid, c.pid);
  } catch (e) {
    return anonymous('unix-socket', `peer credentials unavailable: ${(e as Error).message}`);
  }
}

/**
 * A TCP peer without a verified certificate: the owner of a loopback client socket from the kernel's socket
 * table (a local user), else anonymous over `via`, saying why.
 */
function tcpIdentity(
  via: 'tls' | 'plaintext',
  c: { remoteAddress?: string; remotePort?: number; localAddress?: string; localPort?: number },
): Identity {
  if (c.remoteAddress && isLoopbackAddress(c.remoteAddress) && c.remotePort && c.localAddress) {
    const uid = loopbackClientUid(c.remoteAddress, c.remotePort, c.localAddress, c.localPort ?? 0);
    if (uid !== undefined) return localIdentity('loopback-tcp', uid);
    return anonymous(via, 'loopback peer not found in the kernel socket table');
  }
  return anonymous(via, via === 'tls' ? 'no client certificate' : 'plaintext connection');
}

const bySocket = new WeakMap<Socket, Identity>();

/**
 * The identity a plain Node socket proves (the HTTP/JSON listener, http-json.ts), from the same
 * sources as {@link identify}: SO_PEERCRED on a Unix socket, the verified client certificate on TLS,
 * the kernel's socket table for loopback TCP; else anonymous. Once per connection.
 */
export function identifySocket(kind: ListenerKind, socket: Socket): Identity {
  const known = bySocket.get(socket);
  if (known) return known;
  const id = identifySocketUncached(kind, socket);
  bySocket.set(socket, id);
  return id;
}

function identifySocketUncached(kind: ListenerKind, socket: Socket): Identity {
  if (kind === 'unix') {
    const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    return unixIdentity(typeof fd === 'number' && fd >= 0 ? fd : undefined);
  }
  const tls = (socket as TLSSocket).encrypted === true ? (socket as TLSSocket) : undefined;
  // Only a certificate the client CA verified counts (as grpc-js reports one only then).
  if (tls?.authorized) {
    const cert = tls.getPeerCertificate();
    if (cert && Object.keys(cert).length) return identityFromCertificate(cert);
  }
  const via = tls ? 'tls' : 'plaintext';
  return tcpIdentity(via, socket);
}

/** The HTTP/2 stream under a call (grpc-js keeps it on the innermost call). */
function streamOf(call: ServerInterceptingCallInterface): object | undefined {
  let c = call as unknown as { nextCall?: unknown; stream?: object };
  while (c.nextCall) c = c.nextCall as typeof c;
  return c.stream;
}

/**
 * grpc-js interceptor: replace any client-sent identity entry with the proven one, and hand the call's
 * deadline to the middleware. A deadline grpc-js would misread (past 2^31-1 ms: grpc-timeout.ts took its
 * header off) is enforced here as grpc-js enforces the others: DEADLINE_EXCEEDED when it passes.
 */
export function identityInterceptor(kind: ListenerKind): ServerInterceptor {
  return (_method, call) => {
    const long = longDeadlineOf(streamOf(call));
    let stopTimer: (() => void) | undefined;
    const stop = () => stopTimer?.();
    return new ServerInterceptingCall(call, {
      start(next) {
        if (long !== undefined) {
          stopTimer = setLongTimeout(
            () => call.sendStatus({ code: Status.DEADLINE_EXCEEDED, details: 'Deadline exceeded', metadata: null }),
            long - monotonicMs(),
          );
        }
        next({
          onReceiveMetadata(md, nextMd) {
            md.remove(IDENTITY_KEY);
            md.set(IDENTITY_KEY, seal(identify(kind, call)));
            // The call's deadline (grpc-js parsed grpc-timeout); nice-grpc does not expose it.
            md.remove(DEADLINE_KEY);
            if (long !== undefined) {
              md.set(DEADLINE_KEY, String(long));
            } else {
              // grpc-js gives it by the wall clock, as it set it from grpc-timeout just now: turned into time left.
              const deadline = call.getDeadline();
              const ms = deadline instanceof Date ? deadline.getTime() : deadline;
              if (Number.isFinite(ms)) md.set(DEADLINE_KEY, String(monotonicMs() + (ms - Date.now())));
            }
            nextMd(md);
          },
          onCancel: stop,
        });
      },
      sendStatus(status, next) {
        stop();
        next(status);
      },
    });
  };
}

/** A listener's credentials with the identity interceptor bound to them (it then runs before any other). */
export function listenerCredentials(kind: ListenerKind, base: ServerCredentials): ServerCredentials {
  return experimental.createServerCredentialsWithInterceptors(base, [identityInterceptor(kind)]);
}

const MAX_NAMES = 32;
const MAX_NAME_LENGTH = 128;

/** Names bounded for the log: the first 32, each cut to 128 characters, then how many more. */
export function cutNames(xs: readonly (string | undefined)[]): string[] {
  const out = xs.slice(0, MAX_NAMES).map((x) => String(x ?? '').slice(0, MAX_NAME_LENGTH));
  if (xs.length > MAX_NAMES) out.push(`... ${xs.length - MAX_NAMES} more`);
  return out;
}

/**
 * Names of the resources a mutation request lists, bounded for the log. ApplyRules and ApplyLinks replace them
 * in their record by what the change did (audit-outcome.ts reportChanges) and keep these as `requested`.
 */
export function resourcesOf(path: string, req: unknown): { rules?: string[]; links?: string[] } | undefined {
  if (typeof req !== 'object' || req === null) return undefined;
  const r = req as {
    name?: string;
    rule?: { name?: string };
    rules?: { name?: string }[];
    link?: { a?: string; b?: string };
    links?: { a?: string; b?: string }[];
    a?: string;
    b?: string;
  };
  const cut = cutNames;
  const link = (l?: { a?: string; b?: string }) => `${l?.a ?? ''}-${l?.b ?? ''}`;
  const method = path.slice(path.lastIndexOf('/') + 1);
  switch (method) {
    case 'CreateRule':
    case 'UpdateRule':
      return { rules: cut([r.rule?.name]) };
    case 'DeleteRule':
      return { rules: cut([r.name]) };
    case 'ApplyRules': {
      // A request decoded lazily (apply-rules-codec.ts): its names without decoding every rule.
      const raw = lazyRules(req);
      if (raw) {
        const names = Array.from({ length: Math.min(raw.count, MAX_NAMES) }, (_, i) => raw.name(i));
        if (raw.count > MAX_NAMES) names.length = raw.count; // cut() counts the rest
        return { rules: cut(names) };
      }
      return { rules: cut((r.rules ?? []).map((x) => x.name)) };
    }
    case 'Connect':
      return { links: cut([link(r.link)]) };
    case 'Disconnect':
      return { links: cut([link(r)]) };
    case 'ApplyLinks':
      return { links: cut((r.links ?? []).map(link)) };
    default:
      return undefined;
  }
}

export interface AccessOptions {
  policy: Policy;
  /** Where audit records go (one per mutation and per denial). */
  audit: Logger;
  /** Watch streams (server-streaming calls) one identity may hold open at once. */
  maxWatchStreams: number;
}

function codeOf(err: unknown): Status {
  if (err instanceof ServerError) return err.code;
  if ((err as { name?: string } | null)?.name === 'AbortError') return Status.CANCELLED;
  return Status.UNKNOWN;
}

/** Why a change failed, for its audit record: what the caller was told (a ServerError's details), else the message. */
function reasonOf(err: unknown): string {
  const text = err instanceof ServerError ? err.details : ((err as Error | null)?.message ?? String(err));
  // Made safe for a log line: control characters visible, and a U+FFFD the request carried (a name the client
  // decoded from bytes) written as its escape: in the log it would read as bytes the daemon failed to decode,
  // while the daemon says a name that is not UTF-8 escaped (\xNN, core/non-utf8.ts).
  return visible(text).replace(/\ufffd/g, '\\ufffd');
}

const who = (id: Identity) => `${id.principal} (${id.via}${id.note ? `: ${id.note}` : ''})`;

/** The access middleware, with `flush`: write the audit records still waiting (at once). */
export type AccessMiddleware = ServerMiddleware & { flush(): void };

/** nice-grpc middleware: role check, per-identity watch bound, audit. */
export function accessMiddleware(o: AccessOptions): AccessMiddleware {
  const watching = new Map<string, number>();
  // The record of a call that ran is written one turn of the event loop later, after its reply was handed
  // to HTTP/2 (which sends it first): the synchronous log write (~100 us) no longer delays every change's
  // reply. Records keep their order, their fields are taken when the call ends (its code, its duration)
  // and they are written in its context (the trace ids of its log lines). A denial writes the records
  // waiting before it and itself at once; Daemon.stop calls flush, so a stop loses none.
  const waiting: (() => void)[] = [];
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    for (const write of waiting.splice(0)) write();
  };
  const later = (write: () => void) => {
    const inContext = AsyncLocalStorage.snapshot();
    waiting.push(() => inContext(write));
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  };
  const access = async function* access(call, context: CallContext) {
    const start = performance.now();
    const method = call.method.path;
    const raw = context.metadata.get(IDENTITY_KEY);
    context.metadata.delete(IDENTITY_KEY);
    const identity = unseal(raw) ?? anonymous('plaintext', 'no transport identity on this listener');
    const needed: Role = roleForMethod(method);
    const mutation = needed === 'admin';
    let resources = mutation && !call.requestStream ? resourcesOf(method, call.request) : undefined;
    const record = (code: Status, extra: object = {}, now = false) => {
      const fields = {
        identity,
        peer: normalizePeer(context.peer), // grpc-js writes "::1:5555"; every log line: [::1]:5555
        method,
        resources,
        code: Status[code],
        durationMs: Math.round((performance.now() - start) * 1000) / 1000,
        ...extra,
      };
      later(() => (code === Status.OK ? o.audit.info(fields, 'audit') : o.audit.warn(fields, 'audit')));
      if (now) flush();
    };

    const role = o.policy.roleOf(identity);
    if (!roleSatisfies(role, needed)) {
      record(Status.PERMISSION_DENIED, { denied: true, roleNeeded: needed, role: role ?? 'none' }, true);
      throw new ServerError(
        Status.PERMISSION_DENIED,
        `${method} needs the ${needed} role; ${who(identity)} has ${role ? `the ${role} role` : 'no role'}`,
      );
    }

    let release: (() => void) | undefined;
    if (call.responseStream && !call.requestStream) {
      const open = watching.get(identity.principal) ?? 0;
      if (open >= o.maxWatchStreams) {
        record(Status.RESOURCE_EXHAUSTED, { denied: true, watchStreams: open }, true);
        throw new ServerError(
          Status.RESOURCE_EXHAUSTED,
          `${identity.principal} already has ${open} watch streams open (the limit per client is ${o.maxWatchStreams})`,
        );
      }
      watching.set(identity.principal, open + 1);
      release = () => {
        const n = (watching.get(identity.principal) ?? 1) - 1;
        if (n > 0) watching.set(identity.principal, n);
        else watching.delete(identity.principal);
      };
    }
    // The handler's signal also aborts at the call's deadline: grpc-js ends a
    // call whose deadline passed without a 'cancelled' event, so nice-grpc's
    // signal alone would never say that the caller has gone.
    const deadline = Number(context.metadata.get(DEADLINE_KEY) ?? NaN);
    context.metadata.delete(DEADLINE_KEY);
    let signal = context.signal;
    let stopDeadline: (() => void) | undefined;
    if (Number.isFinite(deadline)) {
      const left = deadline - monotonicMs();
      let atDeadline: AbortSignal;
      if (left <= 0) atDeadline = AbortSignal.abort();
      // AbortSignal.timeout takes whole ms only (a fraction is ERR_OUT_OF_RANGE): the monotonic clock has fractions.
      else if (left <= MAX_TIMER_MS) atDeadline = AbortSignal.timeout(Math.ceil(left));
      else {
        // Past a Node timer's range AbortSignal.timeout would abort after 1 ms (or throw past 2^32-1 ms).
        const ac = new AbortController();
        stopDeadline = setLongTimeout(() => ac.abort(), left);
        atDeadline = ac.signal;
      }
      signal = AbortSignal.any([context.signal, atDeadline]);
    }
    // What the change did, reported by its handler (audit-outcome.ts): a no-op is not audited as applied.
    const outcome: OutcomeBox = {};
    const ctx = { ...context, signal, [AUDIT_OUTCOME]: outcome, [CALLER]: { identity, role, who: who(identity) } };
    // A dry run (validate_only) is marked `dryRun: true` in its record, OK or refused: its `changes` are what the
    // change would do (was: listed with nothing but `applied: false` to tell them from a change's).
    const validateOnly = (call.request as { validateOnly?: boolean } | undefined)?.validateOnly === true;
    const dry = validateOnly ? { dryRun: true } : {};
    try {
      const result = yield* call.next(call.request, ctx);
      // A change that started completes even if its caller has gone meanwhile: say so.
      if (mutation) {
        const applied = !validateOnly && outcome.value !== 'unchanged';
        const done: Record<string, unknown> = validateOnly
          ? { ...dry }
          : outcome.value
            ? { outcome: outcome.value }
            : {};
        // ApplyRules, ApplyLinks: the resources the change created, updated, deleted or repaired (under validate_only:
        // would), by action; what the request listed is `requested` (a rule left out of it is deleted).
        if (outcome.changed) {
          const { kind, changes } = outcome.changed;
          const groups = Object.entries(changes).map(([action, names]) => [action, cutNames(names)] as const);
          const changed = Object.values(changes).flat();
          Object.assign(done, { requested: resources, changes: { [kind]: Object.fromEntries(groups) } });
          resources = { [kind]: cutNames(changed) };
        }
        record(
          Status.OK,
          signal.aborted
            ? { applied, ...done, callerGone: 'the caller cancelled or its deadline passed while the change ran' }
            : { applied, ...done },
        );
      }
      return result;
    } catch (err) {
      // A failed change never half-applies (core/controller.ts); CANCELLED: not started.
      // Its reason: the error the caller was told (a full state disk, a bad field), not only its code.
      if (mutation) record(codeOf(err), { applied: false, reason: reasonOf(err), ...dry });
      throw err;
    } finally {
      release?.();
      stopDeadline?.();
    }
  } satisfies ServerMiddleware;
  return Object.assign(access, { flush });
}
