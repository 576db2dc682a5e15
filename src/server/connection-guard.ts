/**
 * Bounds on connections, so that a local user who opens thousands of TCP
 * connections and never speaks HTTP/2 cannot exhaust the daemon's file
 * descriptors and lock the admin out of the Unix socket:
 *
 * - a connection must send its HTTP/2 preface and SETTINGS within
 *   `prefaceTimeoutMs` (a TLS one must also finish its handshake in that
 *   time: tls.Server's handshakeTimeout, 120 s by default), or it is closed;
 * - on a TCP listener, one peer may hold at most `maxPerPeer` connections
 *   (a remote peer per address, a loopback peer per uid: see
 *   limitConnections) and the listener at most `maxConnections` (the Unix socket is
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

import { monotonicMs } from './core/clock.js';
import { isLoopbackAddress } from './auth/identity.js';
import { peerCred, tcpSocketUid } from './dataplane/peer-cred.js';
import type { Logger } from './log.js';
import { formatPeer } from './net/addr.js';

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
    const now = monotonicMs();
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

/**
 * Log that a connection was closed because it sent nothing in time (the HTTP/JSON listener's silent
 * connections; grpc-js's get the preface timeout below), naming its peer, within the same bound as
 * every other refusal. No-op before guardConnections.
 */
export function noteSilentClose(socket: Socket, what: string): void {
  const g = current;
  if (!g) return;
  g.note('preface', { peer: socketPeer(socket), timeoutMs: g.limits.prefaceTimeoutMs }, `connection closed: ${what}`);
}

/** A connection's peer for the log: addr:port on TCP, `uid:N` of the Unix socket's peer (SO_PEERCRED). */
export function socketPeer(socket: Socket | undefined): string {
  return socket?.remoteAddress ? formatPeer(socket.remoteAddress, socket.remotePort) : unixPeer(socket);
}

/** The peer of a Unix-socket connection, for the log: `uid:N` (SO_PEERCRED), else why it is not known. */
function unixPeer(socket: Socket | undefined): string {
  const fd = (socket as unknown as { _handle?: { fd?: number } } | undefined)?._handle?.fd;
  if (typeof fd === 'number' && fd >= 0) {
    try {
      return `uid:${peerCred(fd).uid}`;
    } catch (e) {
      return `unix socket, uid unknown (${(e as Error).message})`;
    }
  }
  return 'unix socket, uid unknown (connection already closed)';
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
 *
 * The peer a bound counts is the remote address, except on loopback, where every local user shares
 * 127.0.0.1 (and ::1): there it is the uid owning the client's socket (the kernel's socket table, as
 * the daemon identifies loopback callers), so that one unprivileged user who fills its quota leaves
 * everyone else theirs. The uid is one NETLINK_SOCK_DIAG lookup (dataplane/peer-cred.ts; ~0.1 ms,
 * whatever the number of sockets: reading /proc/net/tcp instead costs ~15 ms with a thousand and
 * stalled the event loop under a flood), so a connection is refused before it is served.
 */
export function limitConnections<S extends Server>(server: S): S {
  const g = current;
  if (!g) return server;
  const { limits, note } = g;
  const perPeer = new Map<string, number>();
  let total = 0;

  /** Count `socket` against `key`, or refuse it when `key` holds its quota. */
  const admit = (socket: Socket, key: string, label: string) => {
    const n = perPeer.get(key) ?? 0;
    if (n >= limits.maxPerPeer) {
      note(
        'per-peer',
        { peer: formatPeer(socket.remoteAddress ?? '', socket.remotePort), bound: key, limit: limits.maxPerPeer },
        `connection refused: ${label} already has ${n} connections`,
      );
      socket.destroy();
      return;
    }
    perPeer.set(key, n + 1);
    socket.once('close', () => {
      const left = (perPeer.get(key) ?? 1) - 1;
      if (left > 0) perPeer.set(key, left);
      else perPeer.delete(key);
    });
  };

  // 'connection' comes before the server's own listeners: a refused socket never becomes a session.
  server.prependListener('connection', (socket: Socket) => {
    if (!socket.remoteAddress) return; // the Unix socket: not bounded (see above)
    if (total >= limits.maxConnections) {
      note(
        'max',
        { peer: formatPeer(socket.remoteAddress, socket.remotePort), limit: limits.maxConnections },
        `connection refused: the listener holds its maximum of ${limits.maxConnections} connections`,
      );
      socket.destroy();
      return;
    }
    total++;
    socket.once('close', () => total--);
    const addr = addressKey(socket.remoteAddress);
    // On loopback the client's socket is in our network namespace: its owner's uid is one lookup away.
    const uid = isLoopbackAddress(addr)
      ? tcpSocketUid(
          { address: socket.remoteAddress, port: socket.remotePort ?? 0 },
          { address: socket.localAddress ?? '', port: socket.localPort ?? 0 },
        )
      : undefined;
    if (uid !== undefined) admit(socket, `uid:${uid}`, `uid ${uid} (loopback)`);
    else admit(socket, addr, addr);
  });
  server.on('error', (err: NodeJS.ErrnoException) => {
    note(err.code ?? 'error', { err: err.message, code: err.code }, `listener error: ${err.message}`);
  });
  return server;
}

/** The remote address a bound counts: IPv4-mapped IPv6 as the IPv4 address it is. */
function addressKey(remoteAddress: string): string {
  return remoteAddress.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
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
      const peer = socketPeer(session.socket as Socket | undefined); // still open: the timer closes it
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
