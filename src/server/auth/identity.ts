/**
 * Who is calling: identities derived from what the transport proves, never
 * from anything the client sends. A verified client certificate gives a
 * SPIFFE ID (from its one `URI:spiffe://` SAN) or else its subject CN; a
 * local peer (Unix socket: SO_PEERCRED; loopback TCP: the uid the kernel
 * records for the client's socket) gives a uid; everything else is
 * anonymous. Pure functions plus one /proc read; no gRPC, no koffi.
 */
import { readFileSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';

import { parseIp } from '../net/addr.js';

/** How an identity was established. */
export type IdentityVia = 'mtls' | 'tls' | 'unix-socket' | 'loopback-tcp' | 'plaintext';

/** An authenticated (or anonymous) caller. */
export interface Identity {
  kind: 'spiffe' | 'x509-cn' | 'unix' | 'anonymous';
  /**
   * The principal allow-lists match: the SPIFFE ID, `x509-cn:NAME`,
   * `unix-uid:N` or `anonymous`. Also the key for per-client limits.
   */
  principal: string;
  via: IdentityVia;
  uid?: number;
  /** Unix socket peers: the effective gid at connect time. */
  gid?: number;
  pid?: number;
  /** Why the caller is anonymous, when it is. */
  note?: string;
}

export const anonymous = (via: IdentityVia, note: string): Identity => ({
  kind: 'anonymous',
  principal: 'anonymous',
  via,
  note,
});

/**
 * Split Node's `subjectaltname` ("DNS:a, URI:spiffe://x, ..."). Node quotes
 * values with special characters as JSON strings (`URI:"a,b"`); those are
 * decoded, so a comma inside a value cannot forge a second entry.
 */
export function parseSubjectAltNames(text: string | undefined): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  if (!text) return out;
  let i = 0;
  while (i < text.length) {
    const colon = text.indexOf(':', i);
    if (colon < 0) break;
    const type = text.slice(i, colon).trim();
    let value: string;
    let end: number;
    if (text[colon + 1] === '"') {
      // JSON string: find the closing quote that is not escaped.
      let j = colon + 2;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      value = JSON.parse(text.slice(colon + 1, j + 1)) as string;
      end = text.indexOf(', ', j);
    } else {
      end = text.indexOf(', ', colon);
      value = text.slice(colon + 1, end < 0 ? undefined : end);
    }
    out.push({ type, value });
    if (end < 0) break;
    i = end + 2;
  }
  return out;
}

// SPIFFE ID (spiffe.io SPIFFE-ID spec): lowercase trust domain, path segments of [A-Za-z0-9._-], no
// empty, "." or ".." segment, no trailing slash, query or fragment.
const TRUST_DOMAIN = /^[a-z0-9._-]+$/;
const SEGMENT = /^[A-Za-z0-9._-]+$/;

/** Why `id` is not a valid SPIFFE ID, or undefined when it is. */
export function spiffeIdProblem(id: string): string | undefined {
  if (!id.startsWith('spiffe://')) return 'must start with spiffe://';
  if (id.length > 2048) return 'is longer than 2048 bytes';
  const rest = id.slice('spiffe://'.length);
  const slash = rest.indexOf('/');
  const td = slash < 0 ? rest : rest.slice(0, slash);
  if (!td || !TRUST_DOMAIN.test(td)) return 'trust domain must be lowercase letters, digits, ".", "-" or "_"';
  if (slash >= 0) {
    const segs = rest.slice(slash + 1).split('/');
    for (const s of segs) {
      if (s === '' || s === '.' || s === '..' || !SEGMENT.test(s)) {
        return 'path segments must be non-empty letters, digits, ".", "-" or "_" (not "." or "..")';
      }
    }
  }
  return undefined;
}

/**
 * The identity a verified client certificate proves. An SVID has exactly one
 * URI SAN; a certificate with several SPIFFE IDs is ambiguous and gets no
 * identity (anonymous), as does one with neither a SPIFFE ID nor a CN.
 */
export function identityFromCertificate(cert: PeerCertificate): Identity {
  const spiffe = parseSubjectAltNames(cert.subjectaltname)
    .filter((s) => s.type === 'URI' && s.value.startsWith('spiffe://'))
    .map((s) => s.value);
  if (spiffe.length > 1) return anonymous('mtls', `certificate has ${spiffe.length} SPIFFE IDs (an SVID has one)`);
  if (spiffe.length === 1) {
    const problem = spiffeIdProblem(spiffe[0]);
    if (problem) return anonymous('mtls', `certificate's SPIFFE ID ${problem}`);
    return { kind: 'spiffe', principal: spiffe[0], via: 'mtls' };
  }
  const cn = (cert.subject as Record<string, string | string[] | undefined> | undefined)?.CN;
  if (Array.isArray(cn)) return anonymous('mtls', 'certificate has several subject CNs');
  if (!cn) return anonymous('mtls', 'certificate has neither a SPIFFE ID nor a subject CN');
  return { kind: 'x509-cn', principal: `x509-cn:${cn}`, via: 'mtls' };
}

/** A local peer identified by uid (and, on a Unix socket, gid and pid). */
export function localIdentity(via: 'unix-socket' | 'loopback-tcp', uid: number, gid?: number, pid?: number): Identity {
  return { kind: 'unix', principal: `unix-uid:${uid}`, via, uid, gid, pid };
}

/** 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
export function isLoopbackAddress(addr: string): boolean {
  try {
    const { family, bytes } = parseIp(addr);
    if (family === 4) return bytes[0] === 127;
    const zeros = (n: number) => bytes.slice(0, n).every((b) => b === 0);
    if (zeros(15) && bytes[15] === 1) return true;
    return zeros(10) && bytes[10] === 0xff && bytes[11] === 0xff && bytes[12] === 127;
  } catch {
    return false;
  }
}

/** An address and port as /proc/net/tcp{,6} prints them: each 32-bit word in host (little-endian) order. */
function procText(bytes: Uint8Array, port: number): string {
  let hex = '';
  for (let i = 0; i < bytes.length; i += 4) {
    for (let j = 3; j >= 0; j--) hex += bytes[i + j].toString(16).padStart(2, '0');
  }
  return `${hex.toUpperCase()}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * Where a socket bound to `addr:port` can appear: an IPv4 address in
 * /proc/net/tcp, and also in /proc/net/tcp6 as `::ffff:a.b.c.d` (an AF_INET6
 * socket talking IPv4, as gRPC's C core and many other clients dial
 * 127.0.0.1); an IPv4-mapped address likewise in both; other IPv6 addresses
 * (::1) in tcp6 only.
 */
function procForms(addr: string, port: number): { tcp?: string; tcp6?: string } {
  const { family, bytes } = parseIp(addr);
  let v4: Uint8Array | undefined;
  if (family === 4) v4 = bytes;
  else if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    v4 = bytes.slice(12);
  }
  if (!v4) return { tcp6: procText(bytes, port) };
  const mapped = new Uint8Array(16);
  mapped[10] = mapped[11] = 0xff;
  mapped.set(v4, 12);
  return { tcp: procText(v4, port), tcp6: procText(mapped, port) };
}

/**
 * The uid owning the client end of a loopback TCP connection, from the
 * kernel's socket tables (/proc/self/net/tcp and tcp6, as identd does). The
 * client's socket is in the same network namespace (loopback never leaves
 * it), and its uid is set by the kernel when the socket is created. The
 * client's socket family need not be the server's: an IPv4 connection may
 * come from an AF_INET6 socket (listed in tcp6 with IPv4-mapped addresses),
 * and a server on `[::]` sees IPv4 clients as `::ffff:127.0.0.1`; both tables
 * are searched for the client's row (local = client, remote = server).
 */
export function loopbackPeerUid(
  remoteAddress: string,
  remotePort: number,
  localAddress: string,
  localPort: number,
  procNet = '/proc/self/net',
): number | undefined {
  const client = procForms(remoteAddress, remotePort);
  const server = procForms(localAddress, localPort);
  for (const table of ['tcp', 'tcp6'] as const) {
    const c = client[table];
    const s = server[table];
    if (!c || !s) continue;
    let text: string;
    try {
      text = readFileSync(`${procNet}/${table}`, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      const f = line.trim().split(/\s+/);
      // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
      if (f.length > 7 && f[1] === c && f[2] === s) return Number(f[7]);
    }
  }
  return undefined;
}
