/**
 * Safe transport defaults: which listen addresses would expose plaintext
 * gRPC beyond this host, bounded message sizes, keepalive and idle limits so
 * that vanished or idle clients do not hold connections forever. Pure.
 */
import { isLoopbackAddress } from './identity.js';

/** Largest request message accepted (`--max-message-bytes`); larger ones fail with RESOURCE_EXHAUSTED. */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/** Watch streams one identity may hold open (`--max-watch-streams`). */
export const DEFAULT_MAX_WATCH_STREAMS = 256;
/** Mode of the Unix socket (`--socket-mode`): owner and group may connect, others not. */
export const DEFAULT_SOCKET_MODE = 0o660;

/**
 * grpc-js server options. Keepalive pings find peers that vanished without
 * closing (a dead peer's connection and its streams go after ~80 s); a
 * connection with no call for 5 minutes is closed (clients reconnect on their
 * own); at most 1024 concurrent calls per connection. Slow readers are bounded
 * by HTTP/2 flow control: nice-grpc waits for 'drain' before the next message
 * and the counter hub keeps only the latest snapshot per watcher.
 */
export function serverOptions(maxMessageBytes: number): Record<string, number> {
  return {
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    'grpc.max_connection_idle_ms': 5 * 60_000,
    'grpc.max_concurrent_streams': 1024,
  };
}

/** The host part of "host:port" / "[v6]:port". */
export function listenHost(addr: string): string {
  const m = addr.match(/^\[(.*)\]:\d+$/) ?? addr.match(/^(.*):\d+$/);
  return m ? m[1] : addr;
}

/** Whether a TCP listen address only accepts connections from this host. */
export function isLoopbackListen(addr: string): boolean {
  const host = listenHost(addr);
  return host === 'localhost' || isLoopbackAddress(host);
}

/** TCP listen addresses that would serve plaintext beyond loopback (need TLS, or --insecure). */
export function exposedPlaintext(listen: string[], tls: boolean): string[] {
  if (tls) return [];
  return listen.filter((a) => !a.startsWith('unix:') && !isLoopbackListen(a));
}

/** Parse an octal socket mode ("660", "0660"). */
export function parseSocketMode(text: string): number | undefined {
  if (!/^0?[0-7]{3}$/.test(text)) return undefined;
  return parseInt(text, 8);
}
