/**
 * Encoders and decoders for every map key and value in bpf/xdpctl.h. Each
 * layout lists its C struct name, size and field offsets; the unit test
 * test/unit/codec-layout.test.ts compares them with the BTF of the compiled
 * object, so the TypeScript and C views cannot drift apart silently.
 *
 * Multi-byte integers are host order (little-endian here: asserted below);
 * ports and addresses are network order, as in the packet.
 */
import { endianness } from 'node:os';

import {
  GlobalStat,
  type BackendEntry,
  type BackendStats,
  type LinkStats,
  type MatchKey,
  type RuleStats,
  type SrcKey,
} from '../core/dataplane.js';

if (endianness() !== 'LE') throw new Error('xdpctl dataplane: only little-endian hosts are supported');

/** Constants from bpf/xdpctl.h (checked at load against the object's maps). */
export const RING_SIZE = 1031;
export const NO_BACKEND = 0xffffffff;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const IPPROTO_UDP = 17;
export const IPPROTO_TCP = 6;

/** if_flags: entries (ifindexes below this have flags; larger ones have them in if_flags_big) and bits. */
export const MAX_IFINDEX = 65536;
export const MAX_BIG_IFINDEXES = 4096;
export const IF_F_XCONNECT = 0x1;
/** The ingress's link direction has counters: xc_stats[flags >>> IF_LINK_SHIFT]. */
export const IF_F_LINK = 0x2;
export const IF_LINK_SHIFT = 8;
/** Our program runs in generic (skb) mode on this interface (UDP checksum handling differs). */
export const IF_F_GENERIC = 0x4;

export const RULE_F_ACTIVE = 0x1;
export const RULE_F_SRC_FILTER = 0x2;
export const RULE_F_UDP_CSUM_ZERO = 0x4;
/**
 * Every entry of the slot's ring holds one backend id: the datapath skips the flow hash. Kept by
 * dataplane/tables.ts from the ring it writes (never part of a plan's flags).
 */
export const RULE_F_ONE_BACKEND = 0x8;

/** enum xdpctl_stat: the core's port type (the dataplane implements the core's ports), checked
 * against the compiled object's BTF by test/unit/codec-layout.test.ts. */
export { GlobalStat } from '../core/dataplane.js';
// The types that cross the port are the core's (core/dataplane.ts): declared there once, encoded here.
export type { BackendEntry, BackendStats, LinkStats, MatchKey, RuleStats, SrcKey } from '../core/dataplane.js';
export const GLOBAL_STAT_COUNT = Object.keys(GlobalStat).length;

/** A C struct's layout: what the BTF test compares. */
export interface Layout {
  /** The struct's name in bpf/xdpctl.h. */
  cName: string;
  size: number;
  /** Field name -> byte offset. */
  fields: Record<string, number>;
}

/** A codec for one key or value type. */
export interface Codec<T> {
  readonly layout: Layout;
  encode(value: T, out?: Buffer): Buffer;
  /** Copies what the value keeps: `buf` may be a view of a buffer that is reused (BpfMap.entriesBatch). */
  decode(buf: Uint8Array): T;
}

function view(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
}

function bytesAt(buf: Uint8Array, off: number, len: number): Uint8Array {
  return Uint8Array.from(buf.subarray(off, off + len));
}

function putBytes(out: Buffer, off: number, len: number, src: Uint8Array): void {
  if (src.length > len) throw new RangeError(`value of ${src.length} bytes does not fit ${len}`);
  out.fill(0, off, off + len);
  out.set(src, off);
}

/** A plain __u32 key or value. */
export const u32: Codec<number> = {
  layout: { cName: '__u32', size: 4, fields: {} },
  encode(v, out = Buffer.alloc(4)) {
    out.writeUInt32LE(v >>> 0, 0);
    return out;
  },
  decode: (b) => view(b).readUInt32LE(0),
};

/** A plain __u8 value. */
export const u8: Codec<number> = {
  layout: { cName: '__u8', size: 1, fields: {} },
  encode(v, out = Buffer.alloc(1)) {
    out[0] = v;
    return out;
  },
  decode: (b) => b[0],
};

/** A plain __u64 counter. */
export const u64: Codec<bigint> = {
  layout: { cName: '__u64', size: 8, fields: {} },
  encode(v, out = Buffer.alloc(8)) {
    out.writeBigUInt64LE(v, 0);
    return out;
  },
  decode: (b) => view(b).readBigUInt64LE(0),
};

/** XDPCTL_MATCH_GEN: the family byte's bit that marks a match entry of generation 1 (bpf/xdpctl.h). */
export const MATCH_GEN = 0x80;
/** rule_ports entries per generation (XDPCTL_PORTS_PER_GEN): generation g's port p is index g << 16 | p. */
export const PORTS_PER_GEN = 65536;

/** A match key with its generation (absent: 0), as rule_match holds it. */
export interface GenMatchKey extends MatchKey {
  gen?: number;
}

/** struct xdpctl_match_key (`dport` stored in network order; the generation in the family byte's top bit). */
export const matchKey: Codec<GenMatchKey> = {
  layout: {
    cName: 'xdpctl_match_key',
    size: 24,
    fields: { ifindex: 0, dport: 4, proto: 6, family: 7, daddr: 8 },
  },
  encode(k, out = Buffer.alloc(24)) {
    out.writeUInt32LE(k.ifindex, 0);
    out.writeUInt16BE(k.dport, 4);
    out[6] = k.proto;
    out[7] = k.family | (k.gen ? MATCH_GEN : 0);
    putBytes(out, 8, 16, k.daddr);
    return out;
  },
  decode(b) {
    const v = view(b);
    const family = v[7] & ~MATCH_GEN;
    const k: GenMatchKey = {
      ifindex: v.readUInt32LE(0),
      dport: v.readUInt16BE(4),
      proto: v[6],
      family,
      daddr: bytesAt(v, 8, family === AF_INET ? 4 : 16),
    };
    if (v[7] & MATCH_GEN) k.gen = 1;
    return k;
  },
};

/** struct xdpctl_rule. */
export interface RuleEntry {
  flags: number;
  statsId: number;
}

export const ruleEntry: Codec<RuleEntry> = {
  layout: { cName: 'xdpctl_rule', size: 8, fields: { flags: 0, stats_id: 4 } },
  encode(r, out = Buffer.alloc(8)) {
    out.writeUInt32LE(r.flags, 0);
    out.writeUInt32LE(r.statsId, 4);
    return out;
  },
  decode(b) {
    const v = view(b);
    return { flags: v.readUInt32LE(0), statsId: v.readUInt32LE(4) };
  },
};

/** struct xdpctl_src_key: a source prefix of one rule slot. */
export const srcKey: Codec<SrcKey> = {
  layout: { cName: 'xdpctl_src_key', size: 24, fields: { prefixlen: 0, slot: 4, addr: 8 } },
  encode(k, out = Buffer.alloc(24)) {
    out.writeUInt32LE(32 + k.length, 0); // the slot's 32 bits are always part of the prefix
    out.writeUInt32LE(k.slot, 4);
    putBytes(out, 8, 16, k.addr);
    return out;
  },
  decode(b) {
    const v = view(b);
    const length = v.readUInt32LE(0) - 32;
    return { slot: v.readUInt32LE(4), length, addr: bytesAt(v, 8, length <= 32 ? 4 : 16) };
  },
};

/** struct xdpctl_mac_key: a unicast MAC an ingress takes as this host's besides its own (ingress_macs). */
export interface MacKey {
  ifindex: number;
  /** The MAC as `ip` prints it (lower-case hex, colons). */
  mac: string;
}

export const macKey: Codec<MacKey> = {
  layout: { cName: 'xdpctl_mac_key', size: 12, fields: { ifindex: 0, mac: 4, pad: 10 } },
  encode(k, out = Buffer.alloc(12)) {
    out.fill(0);
    out.writeUInt32LE(k.ifindex >>> 0, 0);
    Buffer.from(k.mac.replace(/:/g, ''), 'hex').copy(out, 4, 0, 6);
    return out;
  },
  decode(b) {
    const v = view(b);
    return {
      ifindex: v.readUInt32LE(0),
      mac: [...v.subarray(4, 10)].map((x) => x.toString(16).padStart(2, '0')).join(':'),
    };
  },
};

/** struct xdpctl_backend. */
export const backendEntry: Codec<BackendEntry> = {
  layout: {
    cName: 'xdpctl_backend',
    size: 40,
    fields: { dmac: 0, smac: 6, ifindex: 12, stats_id: 16, family: 20, pad: 21, addr: 24 },
  },
  encode(e, out = Buffer.alloc(40)) {
    putBytes(out, 0, 6, e.dmac);
    putBytes(out, 6, 6, e.smac);
    out.writeUInt32LE(e.ifindex, 12);
    out.writeUInt32LE(e.statsId, 16);
    out[20] = e.family;
    out.fill(0, 21, 24);
    putBytes(out, 24, 16, e.addr);
    return out;
  },
  decode(b) {
    const v = view(b);
    const family = v[20];
    return {
      dmac: bytesAt(v, 0, 6),
      smac: bytesAt(v, 6, 6),
      ifindex: v.readUInt32LE(12),
      statsId: v.readUInt32LE(16),
      family,
      addr: bytesAt(v, 24, family === AF_INET6 ? 16 : 4),
    };
  },
};

/** A struct of __u64 counters, decoded to bigint fields. */
function counters<K extends string>(
  cName: string,
  names: readonly K[],
  cFields: readonly string[],
): Codec<Record<K, bigint>> {
  const size = names.length * 8;
  return {
    layout: { cName, size, fields: Object.fromEntries(cFields.map((f, i) => [f, i * 8])) },
    encode(c, out = Buffer.alloc(size)) {
      names.forEach((n, i) => out.writeBigUInt64LE(c[n], i * 8));
      return out;
    },
    decode(b) {
      const v = view(b);
      return Object.fromEntries(names.map((n, i) => [n, v.readBigUInt64LE(i * 8)])) as Record<K, bigint>;
    },
  };
}

export const linkStats: Codec<LinkStats> = counters(
  'xdpctl_link_stats',
  ['packets', 'bytes', 'redirectErrors'] as const,
  ['packets', 'bytes', 'redirect_errors'],
);

export const ruleStats: Codec<RuleStats> = counters(
  'xdpctl_rule_stats',
  ['matched', 'matchedBytes', 'redirected', 'redirectedBytes', 'filtered', 'noBackend', 'redirectErrors'] as const,
  ['matched', 'matched_bytes', 'redirected', 'redirected_bytes', 'filtered', 'no_backend', 'redirect_errors'],
);

export const backendStats: Codec<BackendStats> = counters(
  'xdpctl_backend_stats',
  ['packets', 'bytes', 'redirectErrors'] as const,
  ['packets', 'bytes', 'redirect_errors'],
);

/**
 * Sum per-CPU copies of a counter struct field by field, modulo 2^64: the
 * counter the API reports is a uint64 that wraps to 0 after 2^64 - 1, as each
 * per-CPU __u64 in the kernel does and as SNMP's Counter64 is defined to
 * (RFC 2578 section 7.1.10: "when it reaches a maximum value of 2^64-1, it
 * wraps around and starts increasing again from zero"). Monitoring reads a
 * decrease as a wrap or reset: SNMP managers per RFC 2578, Prometheus's
 * rate() and increase() (which adjust for "breaks in monotonicity"). A sum is
 * never an error (it used to fail the whole read with INTERNAL).
 */
export function sumCounters<T extends Record<string, bigint>>(perCpu: readonly T[]): T {
  const out = {} as Record<string, bigint>;
  for (const c of perCpu) for (const [k, v] of Object.entries(c)) out[k] = BigInt.asUintN(64, (out[k] ?? 0n) + v);
  return out as T;
}

/**
 * struct xdpctl_port_use: match entries per destination port, and the XOR of
 * the any-destination entries' ingress ifindexes and slots (`xorIfindex`,
 * `xorSlot`: the entry itself when `any` is 1; absent means 0). Encoded as
 * the C struct's `any_fold` word, whose top byte is min(any, 255).
 */
export interface PortUse {
  any: number;
  dst: number;
  xorIfindex?: number;
  xorSlot?: number;
}

/** Bits of a slot in any_fold (XDPCTL_FOLD_SLOT_MASK): slots must stay below 2^24. */
export const FOLD_SLOT_BITS = 24;

export const portUse: Codec<PortUse> = {
  layout: { cName: 'xdpctl_port_use', size: 16, fields: { any: 0, dst: 4, any_fold: 8 } },
  encode(p, out = Buffer.alloc(16)) {
    out.writeUInt32LE(p.any, 0);
    out.writeUInt32LE(p.dst, 4);
    // any_fold, little-endian: ifindex XOR in bytes 8-11, slot XOR in 12-14, count in 15.
    out.writeUInt32LE((p.xorIfindex ?? 0) >>> 0, 8);
    out.writeUInt32LE((((p.xorSlot ?? 0) & 0xffffff) | (Math.min(p.any, 255) << 24)) >>> 0, 12);
    return out;
  },
  decode(b) {
    const v = view(b);
    const r: PortUse = { any: v.readUInt32LE(0), dst: v.readUInt32LE(4) };
    const x = v.readUInt32LE(8);
    const s = v.readUInt32LE(12) & 0xffffff;
    if (x) r.xorIfindex = x;
    if (s) r.xorSlot = s;
    return r;
  },
};

/** struct xdpctl_frag_key / xdpctl_frag_val: fragment tracking (read by tests only). */
export const fragKeyLayout: Layout = {
  cName: 'xdpctl_frag_key',
  size: 12,
  fields: { saddr: 0, daddr: 4, id: 8, proto: 10, pad: 11 },
};
export const fragValLayout: Layout = {
  cName: 'xdpctl_frag_val',
  size: 8,
  fields: { backend_id: 0, rule_stats_id: 4 },
};

/** Every codec with a C struct behind it, for the layout test. */
export const STRUCT_LAYOUTS: readonly Layout[] = [
  matchKey.layout,
  ruleEntry.layout,
  srcKey.layout,
  macKey.layout,
  backendEntry.layout,
  linkStats.layout,
  ruleStats.layout,
  backendStats.layout,
  portUse.layout,
  fragKeyLayout,
  fragValLayout,
];
