/**
 * Bounds on connections, so that a local user who opens thousands of TCP
 * connections and never speaks HTTP/2 cannot exhaust the daemon's file
 * descriptors and lock the admin out of the Unix socket:
 *
 * - a connection must send its HTTP/2 preface and SETTINGS within
 *   `prefaceTimeoutMs` (a TLS one must also finish its handshake in that
 *   time: tls.Server's handshakeTimeout, 120 s by default), or it is closed;
 * - on a TCP listener, one peer address may hold at most `maxPerPeer`
 *   connections and the listener at most `maxConnections` (the Unix socket is
 *   only open to its owner and group, by its file mode, and is the admin's
 *   way in: it is not bounded, so that nothing on TCP can take it away);
 * - refusals and accept failures (EMFILE) are logged, at most 5 lines per
 *   kind per 10 s, then a count.
 *
 * grpc-js creates its HTTP/2 servers inside and exposes none of these knobs
 * (nor the servers), so http2.createServer and createSecureServer are
 * wrapped once per process to set them on the servers grpc-js creates.
 */
import http2 from 'node:http2';
import type { Server, Socket } from 'node:net';

import { peerCred } from './dataplane/peer-cred.js';
import type { Logger } from './log.js';

export interface ConnectionLimits {
  prefaceTimeoutMs: number;
  maxPerPeer: number;
  maxConnections: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  prefaceTimeoutMs: 10_000,
  maxPerPeer: 256,
  maxConnections: 4096,
};

const LOG_BURST = 5;
const LOG_WINDOW_MS = 10_000;

/** A logger that writes at most LOG_BURST lines per kind per window, then how many it left out. */
function boundedLog(log: Logger): (kind: string, fields: object, msg: string) => void {
  let windowStart = 0;
  const logged = new Map<string, number>();
  let suppressed = 0;
  return (kind, fields, msg) => {
    const now = Date.now();
    if (now - windowStart >= LOG_WINDOW_MS) {
      if (suppressed)
        log.warn({ suppressed, windowMs: LOG_WINDOW_MS }, `${suppressed} more connection refusals not logged`);
      windowStart = now;
      logged.clear();
      suppressed = 0;
    }
    const n = logged.get(kind) ?? 0;
    if (n >= LOG_BURST) {
      suppressed++;
      return;
    }
    logged.set(kind, n + 1);
    log.warn(fields, msg);
  };
}

/** The peer of a connection: the remote address on TCP, `uid:N` on a Unix socket (SO_PEERCRED). */
function peerKey(socket: Socket): string {
  if (socket.remoteAddress) return socket.remoteAddress.replace(/^::ffff:/, '');
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd === 'number' && fd >= 0) {
    try {
      return `uid:${peerCred(fd).uid}`;
    } catch {
      /* fall through */
    }
  }
  return 'unknown';
}

let current: { limits: ConnectionLimits; note: ReturnType<typeof boundedLog> } | undefined;

/** Every open connection of the guarded gRPC servers (TCP and Unix), for destroyConnections. */
const open = new Set<Socket>();

/**
 * Destroy every open connection of the guarded gRPC servers, whatever state
 * its HTTP/2 session is in; returns how many. The last step of a shutdown:
 * grpc-js's forceShutdown destroys sessions, but a session whose writes are
 * stalled (a client that stopped reading: SIGSTOP, a full TCP window) closes
 * its socket only once those writes finish, which may be never.
 */
export function destroyConnections(): number {
  const n = open.size;
  for (const socket of open) socket.destroy();
  open.clear();
  return n;
}

/** Apply `limits` to every HTTP/2 server grpc-js creates from now on (call before listening). */
export function guardConnections(limits: ConnectionLimits, log: Logger): void {
  current = { limits, note: boundedLog(log) };
  const h = http2 as typeof http2 & { xdpctlGuarded?: boolean };
  if (h.xdpctlGuarded) return;
  h.xdpctlGuarded = true;
  const create = http2.createServer;
  const createSecure = http2.createSecureServer;
  http2.createServer = ((...args: Parameters<typeof create>) => guard(create(...args))) as typeof create;
  http2.createSecureServer = ((options: http2.SecureServerOptions, ...rest: unknown[]) =>
    guard(
      (createSecure as (...a: unknown[]) => http2.Http2SecureServer)(
        { handshakeTimeout: current?.limits.prefaceTimeoutMs, ...options },
        ...rest,
      ),
    )) as typeof createSecure;
}

/**
 * The per-peer and per-listener connection bounds (and a bounded log of listener errors) on any TCP
 * server; grpc-js's servers get them through guardConnections, the HTTP/JSON listener's HTTP/1.1
 * server (http-json.ts) directly. No-op before guardConnections set the limits.
 */
export function limitConnections<S extends Server>(server: S): S {
  const g = current;
  if (!g) return server;
  const { limits, note } = g;
  const perPeer = new Map<string, number>();
  let total = 0;
  // 'connection' comes before the server's own listeners: a refused socket never becomes a session.
  server.prependListener('connection', (socket: Socket) => {
    if (!socket.remoteAddress) return; // the Unix socket: not bounded (see above)
    const key = peerKey(socket);
    const n = perPeer.get(key) ?? 0;
    if (total >= limits.maxConnections) {
      note(
        'max',
        { peer: key, limit: limits.maxConnections },
        `connection refused: the listener holds its maximum of ${limits.maxConnections} connections`,
      );
      socket.destroy();
      return;
    }
    if (n >= limits.maxPerPeer) {
      note(
        'per-peer',
        { peer: key, limit: limits.maxPerPeer },
        `connection refused: ${key} already has ${n} connections`,
      );
      socket.destroy();
      return;
    }
    perPeer.set(key, n + 1);
    total++;
    socket.once('close', () => {
      total--;
      const left = (perPeer.get(key) ?? 1) - 1;
      if (left > 0) perPeer.set(key, left);
      else perPeer.delete(key);
    });
  });
  server.on('error', (err: NodeJS.ErrnoException) => {
    note(err.code ?? 'error', { err: err.message, code: err.code }, `listener error: ${err.message}`);
  });
  return server;
}

/** The limits guardConnections set (undefined before). */
export function connectionLimits(): ConnectionLimits | undefined {
  return current?.limits;
}

function guard<S extends http2.Http2Server | http2.Http2SecureServer>(server: S): S {
  const g = current;
  if (!g) return server;
  const { limits, note } = g;
  limitConnections(server);
  server.on('connection', (socket: Socket) => {
    open.add(socket);
    socket.once('close', () => open.delete(socket));
  });
  server.on('session', (session: http2.ServerHttp2Session) => {
    const timer = setTimeout(() => {
      const peer = session.socket ? peerKey(session.socket as Socket) : 'unknown';
      note(
        'preface',
        { peer, timeoutMs: limits.prefaceTimeoutMs },
        'connection closed: no HTTP/2 preface and SETTINGS in time',
      );
      session.destroy();
    }, limits.prefaceTimeoutMs);
    timer.unref();
    session.once('remoteSettings', () => clearTimeout(timer));
    session.once('close', () => clearTimeout(timer));
  });
  return server;
}
