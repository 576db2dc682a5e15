/**
 * Parsing and formatting of IP addresses, prefixes and MAC addresses. Pure
 * functions with no I/O: shared by validation (core) and the map codecs
 * (dataplane). Errors are plain messages; callers attach the field name.
 */
import { isIPv4, isIPv6 } from 'node:net';

/** An address family the datapath knows. */
export type Family = 4 | 6;

/** A parsed IP address: family and its bytes in network order. */
export interface IpBytes {
  family: Family;
  bytes: Uint8Array; // 4 or 16 bytes
}

/** Parse a dotted-quad or IPv6 address; throws with a reason. */
export function parseIp(text: string): IpBytes {
  const v4 = parseIpv4(text);
  if (v4) return { family: 4, bytes: v4 };
  if (isIPv4(text)) {
    return { family: 4, bytes: Uint8Array.from(text.split('.').map(Number)) };
  }
  if (isIPv6(text)) return { family: 6, bytes: parseIpv6(text) };
  throw new Error(`"${truncate(text)}" is not an IP address`);
}

/**
 * The common case of {@link parseIp} without a regular expression or an array
 * per call (starts and large changes parse every backend's address): the
 * dotted quads node:net's isIPv4 accepts (each part 0-255 in decimal, no
 * leading zero), else undefined for the general path to decide.
 */
function parseIpv4(text: string): Uint8Array | undefined {
  const n = text.length;
  if (n < 7 || n > 15) return undefined;
  const out = new Uint8Array(4);
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? text.charCodeAt(i) : 46; // '.' closes the last part
    if (c === 46) {
      if (digits === 0 || part > 3) return undefined;
      out[part++] = value;
      value = 0;
      digits = 0;
      continue;
    }
    if (c < 48 || c > 57) return undefined;
    if (digits > 0 && value === 0) return undefined; // a leading zero
    value = value * 10 + (c - 48);
    if (++digits > 3 || value > 255) return undefined;
  }
  return part === 4 ? out : undefined;
}

function parseIpv6(text: string): Uint8Array {
  let s = text;
  const out = new Uint8Array(16);
  // A trailing dotted quad (::ffff:1.2.3.4) becomes two groups.
  const dotted = s.match(/(\d+\.\d+\.\d+\.\d+)$/);
  if (dotted) {
    const v4 = dotted[1].split('.').map(Number);
    s = s.slice(0, -dotted[1].length) + `${((v4[0] << 8) | v4[1]).toString(16)}:${((v4[2] << 8) | v4[3]).toString(16)}`;
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 0xff;
  });
  return out;
}

/** Format address bytes (4 or 16) as text. */
export function formatIp(bytes: Uint8Array, family: Family = bytes.length === 4 ? 4 : 6): string {
  if (family === 4) return Array.from(bytes.subarray(0, 4)).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** A parsed prefix: network bytes (host bits cleared) and length. */
export interface Prefix extends IpBytes {
  length: number;
}

/**
 * Parse "10.0.0.0/8", "192.168.1.10" (a /32) or an IPv6 prefix. Host bits must
 * be zero, as a router would insist, so that "10.1.2.3/8" is not silently
 * read as 10.0.0.0/8.
 */
export function parsePrefix(text: string): Prefix {
  const slash = text.indexOf('/');
  const ip = parseIp(slash < 0 ? text : text.slice(0, slash));
  const max = ip.family === 4 ? 32 : 128;
  let length = max;
  if (slash >= 0) {
    const lenText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lenText) || Number(lenText) > max) {
      throw new Error(`prefix length "${truncate(lenText)}" is not between 0 and ${max}`);
    }
    length = Number(lenText);
  }
  for (let bit = length; bit < max; bit++) {
    if (ip.bytes[bit >> 3] & (0x80 >> (bit & 7))) {
      throw new Error(`"${truncate(text)}" has host bits set (did you mean ${formatPrefix(mask(ip, length))}?)`);
    }
  }
  return { ...ip, length };
}

function mask(ip: IpBytes, length: number): Prefix {
  const bytes = Uint8Array.from(ip.bytes);
  for (let bit = length; bit < bytes.length * 8; bit++) bytes[bit >> 3] &= ~(0x80 >> (bit & 7));
  return { family: ip.family, bytes, length };
}

/** Whether every address of `inner` is in `outer` (same family, `outer` no longer and equal on its bits). */
export function prefixCovers(outer: Prefix, inner: Prefix): boolean {
  if (outer.family !== inner.family || outer.length > inner.length) return false;
  for (let bit = 0; bit < outer.length; bit++) {
    const m = 0x80 >> (bit & 7);
    if ((outer.bytes[bit >> 3] & m) !== (inner.bytes[bit >> 3] & m)) return false;
  }
  return true;
}

/** Format a prefix as "a.b.c.d/len". */
export function formatPrefix(p: Prefix): string {
  return `${formatIp(p.bytes, p.family)}/${p.length}`;
}

/** Parse a MAC address "02:42:ac:11:00:02" (also with '-'). */
export function parseMac(text: string): Uint8Array {
  // Without a regular expression or an array per call: every backend's MAC is parsed at each start.
  if (text.length === 17) {
    const out = new Uint8Array(6);
    let ok = true;
    for (let i = 0; i < 6 && ok; i++) {
      const hi = hexDigit(text.charCodeAt(i * 3));
      const lo = hexDigit(text.charCodeAt(i * 3 + 1));
      const sep = i < 5 ? text.charCodeAt(i * 3 + 2) : 58;
      ok = hi >= 0 && lo >= 0 && (sep === 58 || sep === 45); // ':' or '-'
      out[i] = (hi << 4) | lo;
    }
    if (ok) return out;
  }
  const m =
    /^([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})[:-]([0-9a-fA-F]{2})$/.exec(
      text,
    );
  if (!m) throw new Error(`"${truncate(text)}" is not a MAC address (six hex pairs, e.g. 02:42:ac:11:00:02)`);
  return Uint8Array.from(m.slice(1, 7).map((h) => parseInt(h, 16)));
}

/**
 * Why a MAC address cannot be a unicast frame's destination, or undefined when
 * it can: the all-zero address (no station has it; IEEE 802-2014 8.2), the
 * broadcast address ff:ff:ff:ff:ff:ff, or a group (multicast) address, whose
 * first octet has its least significant bit (the I/G bit) set (IEEE 802-2014
 * 8.2.2; e.g. 01:00:5e:... for IPv4 multicast, RFC 1112 6.4, and 33:33:...
 * for IPv6, RFC 2464 7).
 */
export function nonUnicastMac(bytes: Uint8Array): string | undefined {
  if (bytes.every((b) => b === 0)) return 'is the all-zero MAC address, which no station has';
  if (bytes.every((b) => b === 0xff)) return 'is the broadcast MAC address; a backend needs its own unicast MAC';
  if (bytes[0] & 1) return 'is a multicast (group) MAC address (I/G bit set); a backend needs its own unicast MAC';
  return undefined;
}

/**
 * Why an IPv4 address is not a unicast host address a router forwards to, or
 * undefined: 0.0.0.0/8 ("this network"), 127.0.0.0/8 (loopback), 224.0.0.0/4
 * (multicast) and 240.0.0.0/4 (reserved, with the limited broadcast
 * 255.255.255.255): RFC 1812 5.3.7's martian addresses, which the datapath
 * never redirects (bpf/xdpctl.bpf.c martian()).
 */
export function martianIpv4(bytes: Uint8Array): string | undefined {
  const first = bytes[0];
  if (first === 0) return 'is in 0.0.0.0/8 ("this network", RFC 1812 5.3.7), not a host address';
  if (first === 127) return 'is a loopback address (127.0.0.0/8, RFC 1812 5.3.7)';
  if (first >= 224 && first < 240)
    return 'is a multicast address (224.0.0.0/4, RFC 1812 5.3.7), not a unicast host address';
  if (first >= 240) return 'is a reserved or broadcast address (240.0.0.0/4, RFC 1812 5.3.7), not a host address';
  return undefined;
}

/**
 * The one form a MAC address is stored and echoed in: lower-case hex pairs
 * separated by colons ("02:42:ac:11:00:02"), whatever case or separator was
 * given. Text that is not a MAC is returned unchanged, for validation to name.
 */
export function canonicalMac(text: string): string {
  try {
    return formatMac(parseMac(text));
  } catch {
    return text;
  }
}

/** The value of a hex digit's character code, or -1. */
function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  if (c >= 97 && c <= 102) return c - 87; // a-f
  if (c >= 65 && c <= 70) return c - 55; // A-F
  return -1;
}

const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, '0'));

/** Format 6 bytes as "aa:bb:cc:dd:ee:ff". */
export function formatMac(bytes: Uint8Array): string {
  if (bytes.length < 6) return Array.from(bytes, (b) => HEX[b]).join(':');
  return `${HEX[bytes[0]]}:${HEX[bytes[1]]}:${HEX[bytes[2]]}:${HEX[bytes[3]]}:${HEX[bytes[4]]}:${HEX[bytes[5]]}`;
}

/**
 * A transport peer as every log line writes it: "192.0.2.1:80" for IPv4 and
 * "[2001:db8::1]:80" for IPv6, the address in brackets as RFC 5952 section 6
 * recommends (an IPv4-mapped peer stays "[::ffff:127.0.0.1]:80", as the
 * kernel reports it, RFC 5952 section 5); without a port the bare address.
 */
export function formatPeer(address: string, port?: number): string {
  const host = isIPv6(address) ? `[${address}]` : address;
  return port === undefined || port === 0 ? address : `${host}:${port}`;
}

/**
 * grpc-js's peer text ("::1:40312": IPv6 without brackets; "127.0.0.1:40312")
 * in the form of {@link formatPeer}; anything else (a Unix socket's path,
 * "unknown", an already bracketed address) unchanged.
 */
export function normalizePeer(text: string): string {
  if (text.startsWith('[')) return text;
  const i = text.lastIndexOf(':');
  const host = text.slice(0, i);
  const port = text.slice(i + 1);
  if (i < 0 || !/^\d{1,5}$/.test(port) || !isIPv6(host)) return text;
  return formatPeer(host, Number(port));
}

/** Shorten user input quoted in an error message. */
export function truncate(text: string, max = 64): string {
  return text.length <= max ? text : `${text.slice(0, max)}…(${text.length} chars)`;
}
