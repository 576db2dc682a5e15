/**
 * The loaded XDP datapath: the object (program + maps) opened from
 * build/bpf/xdpctl.bpf.o, its pins under a bpffs directory, attachment to
 * interfaces, and typed access to every map.
 *
 * Pins: maps live in <pinRoot>/maps/<name> (libbpf LIBBPF_PIN_BY_NAME: a
 * pinned map with a compatible definition is reused at load, otherwise the
 * load fails and says which map), the program in <pinRoot>/progs/xdpctl_main.
 * Opening adopts what is pinned, so a restarted daemon continues with the
 * same maps while the attached program keeps forwarding. If the freshly
 * loaded program differs from the pinned one (an upgrade), attach() swaps it
 * in on each interface with an atomic REPLACE, and the pin is updated.
 * Beside it, <pinRoot>/progs/loaded_<fingerprint> pins the same program under
 * the fingerprint of what it was loaded from (object file and libbpf): a start
 * that finds both pins naming one program, using exactly the pinned maps,
 * adopts it without loading and verifying the same code again.
 */
import { createHash } from 'node:crypto';
import { constants } from 'node:os';
import {
  type Dirent,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
  statSync,
  unlinkSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';

import { silentLogger, type Logger } from '../log.js';
import { dataplaneSpan, DP_ATTR } from '../telemetry/span.js';
import { BPF_F_MMAPABLE, BpfMap, countPinnedKeys, mapInfo, type MapInfo } from './bpf-map.js';
import { testRunTimed } from './bpf-object.js';
import {
  backendEntry,
  backendStats,
  IF_F_LINK,
  IF_LINK_SHIFT,
  linkStats,
  matchKey,
  portUse,
  RING_SIZE,
  ruleEntry,
  ruleStats,
  srcKey,
  macKey,
  u32,
  u64,
  u8,
  type BackendEntry,
  type BackendStats,
  type LinkStats,
  type GenMatchKey,
  type PortUse,
  type RuleEntry,
  type RuleStats,
  type SrcKey,
  type MacKey,
} from './codec.js';
import { KernelError } from './errors.js';
import {
  captureLibbpfLog,
  check,
  clearErrno,
  closeFd,
  lastErrno as errnoNow,
  lib,
  LIBBPF_DEBUG,
  LIBBPF_WARN,
  nullError,
  ObjectOpenOpts,
  possibleCpus,
  sizeOf,
} from './libbpf.js';
import { preparePinRoot } from './instance-lock.js';
import { ifindexOf, linkNames, prepareIngressSync, type OffloadChange } from './netdev.js';
import { peerNsids, xdpDevicesIn, type XdpElsewhere } from './netns.js';
import { programMapIds } from './prog-maps.js';
import { setGenericMode } from './tables.js';
import { attachXdp, detachXdp, queryXdp, type XdpMode, type XdpState } from './xdp.js';

/**
 * The ids of the maps a pinned program uses (bpf_prog_info's map_ids, read with BPF_OBJ_GET_INFO_BY_FD
 * into memory koffi allocates: no capability and no bpftool needed), or undefined when the pin cannot be
 * read as a program.
 */
function progMapIds(pin: string): number[] | undefined {
  const fd = lib.bpf_obj_get(pin) as number;
  if (fd < 0) return undefined;
  try {
    return programMapIds(fd, pin);
  } catch {
    return undefined;
  } finally {
    closeFd(fd);
  }
}

/** The program's name in the object (and its pin). */
export const PROGRAM_NAME = 'xdpctl_main';

/** Map capacities, fixed when the maps are first created. */
export interface Capacity {
  links: number;
  ruleSlots: number;
  matches: number;
  srcPrefixes: number;
  backends: number;
  statsIds: number;
}

/** Defaults match bpf/xdpctl.h. */
export const DEFAULT_CAPACITY: Capacity = {
  links: 1024,
  ruleSlots: 8192,
  matches: 16384,
  srcPrefixes: 65536,
  backends: 65536,
  statsIds: 8192,
};

/** How to open the datapath. */
export interface DatapathOptions {
  /** The compiled object (build/bpf/xdpctl.bpf.o). */
  objectPath: string;
  /** bpffs directory for pins, e.g. /sys/fs/bpf/xdpctl. */
  pinRoot: string;
  /** The tracepoint object (default: xdpctl-trace.bpf.o beside objectPath). */
  traceObjectPath?: string;
  capacity?: Partial<Capacity>;
  log?: Logger;
  /**
   * Leave to commit() what replaces a previous daemon's pins and links (an upgraded program's pin, the
   * load fingerprint pin, the tracepoint programs): the daemon calls it once its start has committed,
   * so that a start refused before leaves that daemon's pins and links as they were.
   */
  deferTrace?: boolean;
}

/** The typed maps of the datapath. */
export interface DatapathMaps {
  ifFlags: BpfMap<number, number>;
  ifFlagsBig: BpfMap<number, number>;
  xcLinks: BpfMap<number, number>;
  xcStats: BpfMap<number, LinkStats>;
  xcEgress: BpfMap<number, number>;
  ruleGen: BpfMap<number, number>;
  ruleMatch: BpfMap<GenMatchKey, number>;
  rulePorts: BpfMap<number, PortUse>;
  ruleCfg: BpfMap<number, RuleEntry>;
  ruleRing: BpfMap<number, number>;
  srcAllow: BpfMap<SrcKey, number>;
  ingressMacs: BpfMap<MacKey, number>;
  backends: BpfMap<number, BackendEntry>;
  ruleStats: BpfMap<number, RuleStats>;
  backendStats: BpfMap<number, BackendStats>;
  globalStats: BpfMap<number, bigint>;
}

const MAP_DEFS: { [K in keyof DatapathMaps]: [string, unknown, unknown, keyof Capacity | null] } = {
  ifFlags: ['if_flags', u32, u32, null],
  ifFlagsBig: ['if_flags_big', u32, u32, null],
  xcLinks: ['xc_links', u32, u32, 'links'],
  xcStats: ['xc_stats', u32, linkStats, 'links'],
  xcEgress: ['xc_egress', u32, u32, 'links'],
  ruleGen: ['rule_gen', u32, u32, null],
  ruleMatch: ['rule_match', matchKey, u32, 'matches'], // twice `matches`: room for two generations
  rulePorts: ['rule_ports', u32, portUse, null],
  ruleCfg: ['rule_cfg', u32, ruleEntry, 'ruleSlots'],
  ruleRing: ['rule_ring', u32, u32, null], // ruleSlots * RING_SIZE
  srcAllow: ['src_allow', srcKey, u8, 'srcPrefixes'],
  ingressMacs: ['ingress_macs', macKey, u8, null],
  backends: ['backends', u32, backendEntry, 'backends'],
  ruleStats: ['rule_stats', u32, ruleStats, 'statsIds'],
  backendStats: ['backend_stats', u32, backendStats, 'backends'],
  globalStats: ['global_stats', u32, u64, null],
};

/** Maps pinned by this loader instead of libbpf. */
const SELF_PINNED = ['xc_links'];

/**
 * The programs of bpf/xdpctl-trace.bpf.c, each attached and its link pinned under <pinRoot>/links: failed
 * redirects (two xdp tracepoints) and the end of each NAPI poll (which retires redirects still recorded).
 */
export const TRACE_PROGRAMS = ['xdpctl_redirect_err', 'xdpctl_devmap_xmit', 'xdpctl_napi_poll'];

/** The result of attaching to an interface. */
export interface AttachResult extends XdpState {
  ifindex: number;
  /** Why the effective mode is not the one asked for (e.g. native refused, generic used). */
  warnings: string[];
  requested: XdpMode;
  /** An older xdpctl program was swapped out atomically. */
  replaced: boolean;
}

/** The result of one BPF_PROG_TEST_RUN. */
export interface TestRunResult {
  /** XDP action returned (0 aborted, 1 drop, 2 pass, 3 tx, 4 redirect). */
  action: number;
  /** The frame after the program (not for live frames). */
  data: Buffer;
  /** Average ns per run as measured by the kernel. */
  durationNs: number;
}

const PROG_INFO_SIZE = 256;

interface ProgInfo {
  id: number;
  tag: string;
  name: string;
}

function progInfo(fd: number, what: string): ProgInfo {
  const buf = Buffer.alloc(PROG_INFO_SIZE);
  const len = [PROG_INFO_SIZE];
  check(`get info of program ${what}`, lib.bpf_obj_get_info_by_fd(fd, buf, len) as number);
  const nameEnd = buf.indexOf(0, 64);
  return {
    id: buf.readUInt32LE(4),
    tag: buf.subarray(8, 16).toString('hex'),
    name: buf.subarray(64, nameEnd < 0 || nameEnd > 80 ? 80 : nameEnd).toString(),
  };
}

/** The id of a BPF link (struct bpf_link_info: type, id). */
function linkId(fd: number, what: string): number {
  const buf = Buffer.alloc(64);
  check(`get info of link ${what}`, lib.bpf_obj_get_info_by_fd(fd, buf, [64]) as number);
  return buf.readUInt32LE(4);
}

/** The prefix of the program's second pin, named by the fingerprint of what it was loaded from. */
const LOADED_PREFIX = 'loaded_';
/**
 * The prefix of the pin of an earlier program of this datapath that still runs on some interface after
 * the program pins moved on (an upgrade or migration whose switch failed there): `prev_<id>`. It keeps
 * the program known as ours to a later start without CAP_SYS_ADMIN, which cannot open it by id.
 */
const PREV_PREFIX = 'prev_';

/** How a program attached to an interface relates to this datapath, as far as the daemon can observe. */
export type ProgramIdentity = 'ours' | 'foreign' | 'unknown';

/**
 * The programs pinned under `progsDir` (xdpctl_main, loaded_*, prev_*: this datapath's, now and before),
 * by kernel id, each with an fd (the caller closes them). BPF_OBJ_GET and BPF_OBJ_GET_INFO_BY_FD need no
 * capability beyond access to the pin, unlike opening a program by id (BPF_PROG_GET_FD_BY_ID:
 * CAP_SYS_ADMIN), so this is what a daemon without CAP_SYS_ADMIN knows of its own programs.
 */
function pinnedPrograms(progsDir: string): Map<number, number> {
  const out = new Map<number, number>();
  let names: string[];
  try {
    names = readdirSync(progsDir);
  } catch {
    return out;
  }
  for (const f of names) {
    const fd = lib.bpf_obj_get(join(progsDir, f)) as number;
    if (fd < 0) continue;
    let id: number | undefined;
    try {
      const info = progInfo(fd, f);
      if (info.name === PROGRAM_NAME) id = info.id;
    } catch {
      // not a program
    }
    if (id === undefined || out.has(id)) closeFd(fd);
    else out.set(id, fd);
  }
  return out;
}

/** Every interface of this network namespace, by name, with what XDP program it runs (none skipped). */
function attachedPrograms(): Map<string, XdpState & { ifindex: number }> {
  const out = new Map<string, XdpState & { ifindex: number }>();
  for (const ifname of linkNames()) {
    try {
      const ifindex = ifindexOf(ifname);
      const s = queryXdp(ifindex, ifname);
      if (s.mode !== 'none') out.set(ifname, { ...s, ifindex });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/**
 * What a loaded xdpctl_main depends on besides the kernel (a pin does not outlive a boot): the object
 * file's bytes and the libbpf that relocated it. 16 hex digits of their SHA-256.
 */
function loadFingerprint(objectPath: string): string {
  return createHash('sha256')
    .update(readFileSync(objectPath))
    .update(`\0${PROGRAM_NAME}\0libbpf ${String(lib.libbpf_version_string())}`)
    .digest('hex')
    .slice(0, 16);
}

/** The kernel id of a pinned program, or undefined when the pin is missing or not a program. */
function pinnedProgId(pin: string): number | undefined {
  if (!existsSync(pin)) return undefined;
  const fd = lib.bpf_obj_get(pin) as number;
  if (fd < 0) return undefined;
  try {
    return progInfo(fd, pin).id;
  } catch {
    return undefined;
  } finally {
    closeFd(fd);
  }
}

/** Ids of the maps pinned in `dir` under the object's map names (undefined entries skipped). */
function pinnedMapIds(obj: unknown, dir: string): Set<number> {
  const ids = new Set<number>();
  for (const [name] of objectMaps(obj)) {
    const path = join(dir, name);
    if (name.startsWith('.') || !existsSync(path)) continue;
    const fd = lib.bpf_obj_get(path) as number;
    if (fd < 0) continue;
    try {
      const id = mapInfo(fd, name).id;
      if (id !== undefined) ids.add(id);
    } finally {
      closeFd(fd);
    }
  }
  return ids;
}

/** Pin `fd` as the program loaded from `fingerprint`, replacing the pins of other loads. */
function pinLoaded(progsDir: string, fingerprint: string, fd: number): void {
  for (const f of readdirSync(progsDir)) if (f.startsWith(LOADED_PREFIX)) unlinkSync(join(progsDir, f));
  check(
    `pin program at ${join(progsDir, LOADED_PREFIX + fingerprint)}`,
    lib.bpf_obj_pin(fd, join(progsDir, LOADED_PREFIX + fingerprint)) as number,
  );
}

/** A migration to new maps in progress (see {@link XdpDatapath.open}). */
interface Migration {
  /** What differs, one line per map ("rule_cfg: max_entries 17 -> 65"). */
  changes: string[];
  /** The counters copied from the old maps at open. */
  copied?: CounterCopy;
  /** Interfaces that run the old program, with the mode asked for: switched at finishMigration(). */
  pending: Map<string, XdpMode>;
}

/** Open the object with its maps pinned under `pinDir`, sized for `capacity` (not loaded). */
function openObject(objectPath: string, pinDir: string, capacity: Capacity, lines: string[]): unknown {
  clearErrno();
  const obj = lib.bpf_object__open_file(objectPath, {
    sz: sizeOf(ObjectOpenOpts),
    object_name: null,
    relaxed_maps: false,
    pin_root_path: pinDir,
  });
  if (!obj) throw nullError(`open ${objectPath}`, lines);
  try {
    for (const [, [name, , , cap]] of Object.entries(MAP_DEFS)) {
      // rule_match: room for a change's whole new generation beside the active one (bpf/xdpctl.h).
      const n =
        name === 'rule_match'
          ? 2 * capacity.matches
          : cap
            ? capacity[cap]
            : name === 'rule_ring'
              ? capacity.ruleSlots * RING_SIZE
              : 0;
      if (n === 0) continue;
      const m = lib.bpf_object__find_map_by_name(obj, name);
      if (!m) throw new KernelError(`open map ${name}`, 2, lines, 'not in the object');
      check(`size map ${name}`, lib.bpf_map__set_max_entries(m, n) as number);
    }
  } catch (e) {
    lib.bpf_object__close(obj);
    throw e;
  }
  return obj;
}

/** The object's maps, by name (an opened object: definitions, no fds yet). */
function objectMaps(obj: unknown): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (let m = lib.bpf_object__next_map(obj, null); m; m = lib.bpf_object__next_map(obj, m)) {
    out.set(lib.bpf_map__name(m) as string, m);
  }
  return out;
}

/**
 * How the maps pinned in `pinDir` differ from the object's definitions (type,
 * key and value size, max_entries), one line per differing map; maps with no
 * pin (new in this object) are not differences: libbpf creates them.
 */
function layoutChanges(obj: unknown, pinDir: string): string[] {
  const out: string[] = [];
  for (const [name, m] of objectMaps(obj)) {
    if (name.startsWith('.')) continue; // .rodata/.bss: not pinned
    const path = join(pinDir, name);
    if (!existsSync(path)) continue;
    const fd = check(`open pinned map ${path}`, lib.bpf_obj_get(path) as number);
    let info: MapInfo;
    try {
      info = mapInfo(fd, name);
    } finally {
      closeFd(fd);
    }
    // Of the flags, only BPF_F_MMAPABLE (rule_ring) is compared: the kernel adds others to some maps
    // (BPF_F_RDONLY_PROG to devmaps), which would read as a change on every start.
    const want = {
      type: lib.bpf_map__type(m) as number,
      key_size: lib.bpf_map__key_size(m) as number,
      value_size: lib.bpf_map__value_size(m) as number,
      max_entries: lib.bpf_map__max_entries(m) as number,
      mmapable: (lib.bpf_map__map_flags(m) as number) & BPF_F_MMAPABLE,
    };
    const have = {
      type: info.type,
      key_size: info.keySize,
      value_size: info.valueSize,
      max_entries: info.maxEntries,
      mmapable: (info.flags ?? 0) & BPF_F_MMAPABLE,
    };
    const diff = (Object.keys(want) as (keyof typeof want)[])
      .filter((k) => want[k] !== have[k])
      .map((k) => `${k} ${have[k]} -> ${want[k]}`);
    if (diff.length) out.push(`${name}: ${diff.join(', ')}`);
  }
  return out;
}

/** Per-CPU counter maps whose entries are carried over by a migration (same value layout only). */
const COUNTER_MAPS = ['rule_stats', 'backend_stats', 'xc_stats', 'global_stats'];
const BPF_MAP_TYPE_HASH = 1;
const BPF_MAP_TYPE_ARRAY = 2;
const BPF_MAP_TYPE_PERCPU_HASH = 5;
const BPF_MAP_TYPE_PERCPU_ARRAY = 6;
/** Map types whose values are one per possible CPU (each rounded up to 8 bytes). */
const PER_CPU = new Set([BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY]);
const ARRAYS = new Set([BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY]);
const HASHES = new Set([BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_HASH]);

/** The u32 keys of a map: 0..n-1 for an array, the keys present for a hash. */
function counterKeys(fd: number, type: number, n: number): number[] {
  if (ARRAYS.has(type)) return Array.from({ length: n }, (_, i) => i);
  const keys: number[] = [];
  const cur = Buffer.alloc(4);
  const next = Buffer.alloc(4);
  let first = true;
  while ((lib.bpf_map_get_next_key(fd, first ? null : cur, next) as number) === 0) {
    keys.push(next.readUInt32LE(0));
    next.copy(cur);
    first = false;
  }
  return keys;
}

/**
 * Counters read from the old maps: map name -> id -> the raw per-CPU value (u64 fields); and, for link
 * counters of the per-CPU hash keyed by ingress ifindex (before xc_stats became an array), the index each
 * ingress got in the new array.
 */
interface CounterCopy {
  values: Map<string, Map<number, Buffer>>;
  linkIndexes: Map<number, number>;
}

/** A counter map both the old pins and the object have, and how its ids carry over. */
interface CounterPair {
  name: string;
  oldFd: number;
  newFd: number;
  n: number;
  size: number;
  type: number;
  /** xc_stats: the old map is the per-CPU hash keyed by ingress ifindex (its ids are mapped to indexes). */
  fromLinkHash: boolean;
}

/** The counter maps both the old pins and the object have with the same layout, with the ids both hold. */
function counterPairs(obj: unknown, oldDir: string, log: Logger): CounterPair[] {
  const maps = objectMaps(obj);
  const out: CounterPair[] = [];
  for (const name of COUNTER_MAPS) {
    const m = maps.get(name);
    const path = join(oldDir, name);
    if (!m || !existsSync(path)) continue;
    const oldFd = check(`open pinned map ${path}`, lib.bpf_obj_get(path) as number);
    const old = mapInfo(oldFd, name);
    const valueSize = lib.bpf_map__value_size(m) as number;
    const type = lib.bpf_map__type(m) as number;
    const known = ARRAYS.has(type) || HASHES.has(type);
    // Link counters of the layout before xc_stats became an array: the same values, keyed by ifindex.
    const fromLinkHash =
      name === 'xc_stats' && old.type === BPF_MAP_TYPE_PERCPU_HASH && type === BPF_MAP_TYPE_PERCPU_ARRAY;
    if (
      !known ||
      (old.type !== type && !fromLinkHash) ||
      old.valueSize !== valueSize ||
      old.keySize !== 4 ||
      valueSize % 8 !== 0
    ) {
      closeFd(oldFd);
      log.warn({ map: name }, `counters of ${name} not carried over: its value layout changed (they restart at 0)`);
      continue;
    }
    const cpus = PER_CPU.has(type) ? possibleCpus() : 1;
    out.push({
      name,
      oldFd,
      newFd: check(`open map ${name}`, lib.bpf_map__fd(m) as number),
      n: Math.min(old.maxEntries, lib.bpf_map__max_entries(m) as number),
      size: valueSize * cpus, // valueSize is a multiple of 8 (checked above)
      type: old.type,
      fromLinkHash,
    });
  }
  return out;
}

/** Link-index bits of an if_flags word (bpf/xdpctl.h: XDPCTL_IF_F_LINK, the index in bits 8-31). */
const LINK_BITS = ~(0xff & ~IF_F_LINK) >>> 0;

/** Write the link-index bits of an ingress's flags into the object's new if_flags / if_flags_big. */
function putLinkBits(obj: unknown, ifindex: number, bits: number): void {
  const flags = lib.bpf_object__find_map_by_name(obj, 'if_flags');
  const inArray = flags && ifindex < (lib.bpf_map__max_entries(flags) as number);
  const name = inArray ? 'if_flags' : 'if_flags_big';
  const m = inArray ? flags : lib.bpf_object__find_map_by_name(obj, name);
  if (!m) return;
  const fd = check(`open map ${name}`, lib.bpf_map__fd(m) as number);
  const cur = Buffer.alloc(4);
  if ((lib.bpf_map_lookup_elem(fd, u32.encode(ifindex), cur) as number) < 0) cur.fill(0);
  const v = ((cur.readUInt32LE(0) & ~LINK_BITS) | bits) >>> 0;
  check(`write ${name} entry ${ifindex}`, lib.bpf_map_update_elem(fd, u32.encode(ifindex), u32.encode(v), 0) as number);
}

/**
 * Migration, at open: the link-index bits of every ingress in the old if_flags and if_flags_big, into
 * the new ones, for indexes the new xc_stats holds: the copied link counters stay its link's (a link
 * whose index is past a smaller capacity gets a new one, from 0, when it is connected again).
 */
function copyLinkIndexes(obj: unknown, oldDir: string, max: number): void {
  const copy = (ifindex: number, flags: number) => {
    if (flags & IF_F_LINK && flags >>> IF_LINK_SHIFT < max) putLinkBits(obj, ifindex, flags & LINK_BITS);
  };
  for (const name of ['if_flags', 'if_flags_big']) {
    const path = join(oldDir, name);
    if (!existsSync(path)) continue;
    const fd = check(`open pinned map ${path}`, lib.bpf_obj_get(path) as number);
    try {
      const info = mapInfo(fd, name);
      if (info.keySize !== 4 || info.valueSize !== 4) continue;
      const key = Buffer.alloc(4);
      const v = Buffer.alloc(4);
      for (const i of counterKeys(fd, info.type, info.maxEntries)) {
        key.writeUInt32LE(i);
        if ((lib.bpf_map_lookup_elem(fd, key, v) as number) === 0) copy(i, v.readUInt32LE(0));
      }
    } finally {
      closeFd(fd);
    }
  }
}

/**
 * Migration, at open: copy the counters of the maps pinned in `oldDir` into
 * the object's new maps, for every id both hold (a smaller capacity drops
 * the ids above it; the core gives those rules fresh ids). A map whose value
 * layout changed is not copied (its counters restart at 0; logged). Link
 * counters keep their links: their indexes go along (or, from the per-CPU
 * hash keyed by ifindex, each ingress gets one). Returns what was copied, so
 * that finishMigration() can add what the old program counted after this copy.
 */
function copyCounters(obj: unknown, oldDir: string, log: Logger): CounterCopy {
  const copy: CounterCopy = { values: new Map(), linkIndexes: new Map() };
  for (const p of counterPairs(obj, oldDir, log)) {
    const ids = new Map<number, Buffer>();
    try {
      const key = Buffer.alloc(4);
      const oldKeys = counterKeys(p.oldFd, p.type, p.n);
      if (p.fromLinkHash) {
        // Every ingress with counters gets an index, in ifindex order, and its flags name it.
        oldKeys.sort((a, b) => a - b);
        for (const ifindex of oldKeys.slice(0, p.n)) {
          const idx = copy.linkIndexes.size;
          copy.linkIndexes.set(ifindex, idx);
          putLinkBits(obj, ifindex, (IF_F_LINK | (idx << IF_LINK_SHIFT)) >>> 0);
        }
      } else if (p.name === 'xc_stats') {
        copyLinkIndexes(obj, oldDir, lib.bpf_map__max_entries(lib.bpf_object__find_map_by_name(obj, p.name)) as number);
      }
      for (const i of oldKeys) {
        if (ids.size >= p.n) break; // a smaller hash holds fewer
        const to = p.fromLinkHash ? copy.linkIndexes.get(i) : i;
        if (to === undefined) continue;
        const value = Buffer.alloc(p.size);
        key.writeUInt32LE(i);
        if ((lib.bpf_map_lookup_elem(p.oldFd, key, value) as number) < 0) continue;
        if (value.every((b) => b === 0)) continue; // new maps start at zero
        check(
          `copy entry ${i} of map ${p.name} to the new maps`,
          lib.bpf_map_update_elem(p.newFd, u32.encode(to), value, 0) as number,
        );
        ids.set(i, value);
      }
    } finally {
      closeFd(p.oldFd);
    }
    copy.values.set(p.name, ids);
  }
  return copy;
}

/**
 * Migration, after the switch: add to the new maps what the old program
 * counted since copyCounters (it forwarded until the switch). The old
 * counters are read until two reads agree (the old program has stopped
 * running on every CPU). A packet the new program counts during the few
 * microseconds of one entry's read-add-write can be missed (per-CPU values
 * are written whole from user space).
 */
function addCounterDeltas(obj: unknown, oldDir: string, copied: CounterCopy, log: Logger): number {
  let added = 0;
  for (const p of counterPairs(obj, oldDir, log)) {
    try {
      const before = copied.values.get(p.name) ?? new Map<number, Buffer>();
      const key = Buffer.alloc(4);
      const read = () => {
        const out = new Map<number, Buffer>();
        for (const i of counterKeys(p.oldFd, p.type, p.n)) {
          const v = Buffer.alloc(p.size);
          key.writeUInt32LE(i);
          if ((lib.bpf_map_lookup_elem(p.oldFd, key, v) as number) === 0) out.set(i, v);
        }
        return out;
      };
      let last = read();
      for (let tries = 0; tries < 50; tries++) {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        const again = read();
        const same = [...again].every(([i, v]) => last.get(i)?.equals(v));
        last = again;
        if (same) break;
      }
      for (const [i, v] of last) {
        const was = before.get(i);
        if (was?.equals(v) || (!was && v.every((b) => b === 0))) continue;
        const to = p.fromLinkHash ? copied.linkIndexes.get(i) : i;
        if (to === undefined) continue; // an ingress the copy did not see: its link starts anew
        const now = Buffer.alloc(p.size);
        key.writeUInt32LE(to);
        if ((lib.bpf_map_lookup_elem(p.newFd, key, now) as number) < 0) now.fill(0); // a hash entry not there yet
        for (let off = 0; off < p.size; off += 8) {
          const delta = v.readBigUInt64LE(off) - (was ? was.readBigUInt64LE(off) : 0n);
          // u64 arithmetic, as the kernel's counters wrap (a sum past 2^64 - 1 would not encode).
          now.writeBigUInt64LE(BigInt.asUintN(64, now.readBigUInt64LE(off) + delta), off);
        }
        check(
          `add the old program's counts to entry ${i} of map ${p.name}`,
          lib.bpf_map_update_elem(p.newFd, key, now, 0) as number,
        );
        added++;
      }
    } finally {
      closeFd(p.oldFd);
    }
  }
  return added;
}

/** Remove a directory of pins (the maps live on while a program or fd holds them). */
function removePinDir(dir: string): void {
  for (const f of readdirSync(dir)) unlinkSync(join(dir, f));
  rmdirSync(dir);
}

/**
 * The pin (in progs/) of a migration's new program, made before its first attach and removed once the
 * program pin has moved to it: while it exists, a start knows that program and its maps as this
 * datapath's, whichever interfaces run it and wherever its maps are pinned (maps_next/ or maps/).
 */
const NEXT_PROG_PIN = 'next_xdpctl_main';

/**
 * Test hook: with XDPCTL_TEST_MIGRATION_KILL=<step>, the daemon kills itself (SIGKILL) at that step of
 * finishMigration(), as a crash there would: `before-attach`, `between-attaches`, `after-attach`,
 * `mid-rename`, `before-prog-pin`, `before-next-unpin`.
 */
function migrationStep(step: string, log: Logger): void {
  if (process.env.XDPCTL_TEST_MIGRATION_KILL !== step) return;
  log.warn({ step }, `test hook XDPCTL_TEST_MIGRATION_KILL: SIGKILL at migration step ${step}`);
  process.kill(process.pid, 'SIGKILL');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60_000); // nothing more runs
}

/** The maps pinned in `dir`, by pin name, with their kernel ids (pins that are no map skipped). */
function pinnedMapsIn(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const f of names) {
    const fd = lib.bpf_obj_get(join(dir, f)) as number;
    if (fd < 0) continue;
    try {
      const id = mapInfo(fd, f).id;
      if (id) out.set(f, id);
    } catch {
      // not a map
    } finally {
      closeFd(fd);
    }
  }
  return out;
}

/** Pin the program pinned at `from` also at `to` (nothing when `from` holds none). */
function pinAlso(from: string, to: string): void {
  const fd = lib.bpf_obj_get(from) as number;
  if (fd < 0) return;
  try {
    check(`pin program at ${to}`, lib.bpf_obj_pin(fd, to) as number);
  } finally {
    closeFd(fd);
  }
}

/**
 * What a migration that a stopped daemon left unfinished becomes, from what the kernel and the pins show
 * (open() calls it before anything else reads the pins). A migration's new program is pinned at
 * progs/next_xdpctl_main before its first attach, its maps under maps_next/ until the switch moves them
 * into maps/. When no interface runs that program and none of its maps is pinned in maps/ yet, the switch
 * never began: its pins go, the maps in maps/ are the ones in use (rolled back). Otherwise some interface
 * forwards through the new maps: the move is completed (rolled forward): every map in maps_next/ goes to
 * maps/, the old program's pin becomes prev_<id> (known as ours while an interface still runs it, so that
 * this start swaps it atomically), the new one takes progs/xdpctl_main. A migration of an earlier xdpctld
 * (no next pin) is recognised by an xdpctl_main attached here that uses maps pinned under maps_next/
 * (opened by id: CAP_SYS_ADMIN). What was found and done is logged.
 */
function settleUnfinishedMigration(pinRoot: string, log: Logger): void {
  const mapDir = XdpDatapath.mapPinDir(pinRoot);
  const nextDir = XdpDatapath.nextMapPinDir(pinRoot);
  const progsDir = join(pinRoot, 'progs');
  const nextPin = join(progsDir, NEXT_PROG_PIN);
  const progPin = XdpDatapath.progPinPath(pinRoot);
  const hasNextDir = existsSync(nextDir);
  let nextId = pinnedProgId(nextPin);
  if (!hasNextDir && nextId === undefined) {
    if (existsSync(nextPin)) unlinkSync(nextPin); // not a program
    return;
  }
  const inNext = pinnedMapsIn(nextDir);
  const nextIds = new Set(inNext.values());
  let nextMaps = nextId !== undefined ? (progMapIds(nextPin) ?? []) : [];
  const attached = attachedPrograms();
  if (nextId === undefined && nextIds.size) {
    // No next pin: a migration of an earlier xdpctld. Its program, if it runs here, uses maps of maps_next/.
    for (const [, s] of attached) {
      clearErrno();
      const fd = lib.bpf_prog_get_fd_by_id(s.progId) as number;
      if (fd < 0) continue; // gone, or no CAP_SYS_ADMIN: cannot tell
      try {
        if (progInfo(fd, `id ${s.progId}`).name !== PROGRAM_NAME) continue;
        const ids = programMapIds(fd, `id ${s.progId}`);
        if (!ids.some((id) => nextIds.has(id))) continue;
        check(`pin program at ${nextPin}`, lib.bpf_obj_pin(fd, nextPin) as number);
        nextId = s.progId;
        nextMaps = ids;
        break;
      } catch {
        // cannot say: not known to be the migration's
      } finally {
        closeFd(fd);
      }
    }
  }
  const running = [...attached].filter(([, s]) => nextId !== undefined && s.progId === nextId).map(([n]) => n);
  const inMaps = pinnedMapsIn(mapDir);
  const mapsIds = new Set(inMaps.values());
  const alreadyMoved = nextMaps.filter((id) => mapsIds.has(id)).length;
  if (!running.length && !alreadyMoved) {
    if (hasNextDir) removePinDir(nextDir);
    if (existsSync(nextPin)) unlinkSync(nextPin);
    log.warn(
      { nextProgId: nextId, pinnedNext: inNext.size },
      'a migration to new maps left unfinished by a stopped daemon had not switched any interface (none runs its ' +
        'program, none of its maps is in maps/): its new maps are dropped; the maps in maps/ are the ones in use',
    );
    return;
  }
  // Rolled forward: the switch had begun, interfaces forward through the new maps.
  const oldId = pinnedProgId(progPin);
  const oldMaps = oldId !== undefined && oldId !== nextId ? (progMapIds(progPin) ?? []) : [];
  const stillOld = [...attached].filter(([, s]) => oldId !== undefined && s.progId === oldId).map(([n]) => n);
  if (oldId !== undefined && oldId !== nextId) {
    const prev = join(progsDir, `${PREV_PREFIX}${oldId}`);
    if (!existsSync(prev)) pinAlso(progPin, prev); // still ours to this start while it runs anywhere
  }
  for (const f of inNext.keys()) renameSync(join(nextDir, f), join(mapDir, f)); // replaces the old pin
  const dropped: string[] = [];
  for (const [f, id] of pinnedMapsIn(mapDir)) {
    // A map of the old program the new one does not have (dropped by the object): not in use after the switch.
    if (oldMaps.includes(id) && !nextMaps.includes(id)) {
      unlinkSync(join(mapDir, f));
      dropped.push(f);
    }
  }
  if (hasNextDir) removePinDir(nextDir); // what is left there is no map
  if (oldId !== nextId) {
    if (existsSync(progPin)) unlinkSync(progPin);
    pinAlso(nextPin, progPin);
    // The load fingerprint pins named the old program: the next start loads and compares by tag.
    for (const f of readdirSync(progsDir)) if (f.startsWith(LOADED_PREFIX)) unlinkSync(join(progsDir, f));
  }
  unlinkSync(nextPin);
  log.warn(
    {
      progId: nextId,
      runsOn: running,
      movedNow: [...inNext.keys()],
      movedBefore: alreadyMoved,
      ...(stillOld.length ? { oldProgId: oldId, stillOld } : {}),
      ...(dropped.length ? { dropped } : {}),
    },
    `a migration to new maps left unfinished by a stopped daemon had switched ${
      running.length ? running.join(', ') : 'no interface'
    } to its program (id ${nextId}): completed from the pins: its maps are pinned in maps/ in place of the old ` +
      `ones and its program at ${progPin}` +
      (stillOld.length
        ? `; ${stillOld.join(', ')} still run${stillOld.length === 1 ? 's' : ''} the old program (id ${oldId}, on the old maps) until this start swaps it`
        : '') +
      "; what the old program counted between that daemon's counter copy and the switch is not in the counters",
  );
}

/** What the kernel itself puts at the root of every bpffs mount (kernel/bpf/preload: the bpf_preload iterators). */
const KERNEL_PRELOAD_PINS = new Set(['maps.debug', 'progs.debug']);

/** The loaded datapath. Create with {@link XdpDatapath.open}; close() when done. */
export class XdpDatapath {
  /** Maps reused from existing pins (a restart or upgrade) rather than created. */
  readonly adopted: boolean;
  /**
   * A pinned xdpctl_main (an earlier load on this pin root) existed and differed from the loaded one: attach()
   * swaps it (a program of another name pinned there is not one of ours: replaced at the pin, not swapped).
   */
  readonly upgraded: boolean;
  /**
   * Whether open() loaded (and the kernel verified) the program: false when it adopted the pinned
   * program by its load fingerprint (same object file and libbpf, same maps) without loading it again.
   */
  loadedAtOpen = true;
  readonly maps: DatapathMaps;
  readonly capacity: Capacity;
  private obj: unknown;
  private traceObj: unknown = null;
  private traceLinks: unknown[] = [];
  /** Where each of traceLinks is pinned (same order): repairPins puts back a pin removed under us. */
  private traceLinkPins: string[] = [];
  /** Why failed redirects are not counted (the tracepoint programs did not load or attach), if so. */
  traceWarning?: string;
  private progFdValue: number;
  private ownProgFd: number; // from bpf_obj_get of the pin, closed by us
  private readonly progInfoValue: ProgInfo;
  /**
   * Told of every device setting an attach changed (offloads turned off for XDP), so that the owner can
   * record it and --cleanup-on-exit can undo it.
   */
  onOffloadsChanged?: (changes: OffloadChange[]) => void;
  private readonly log: Logger;
  /** Set while pinned maps of another capacity or layout are being migrated (until finishMigration). */
  private migration?: Migration;

  private constructor(
    readonly options: DatapathOptions,
    init: {
      obj: unknown;
      maps: DatapathMaps;
      progFd: number;
      ownProgFd: number;
      adopted: boolean;
      upgraded: boolean;
      capacity: Capacity;
    },
  ) {
    this.obj = init.obj;
    this.maps = init.maps;
    this.progFdValue = init.progFd;
    this.ownProgFd = init.ownProgFd;
    this.adopted = init.adopted;
    this.upgraded = init.upgraded;
    this.capacity = init.capacity;
    this.log = options.log ?? silentLogger;
    this.progInfoValue = progInfo(this.progFdValue, PROGRAM_NAME);
  }

  /** Where the maps are pinned. */
  static mapPinDir(pinRoot: string): string {
    return join(pinRoot, 'maps');
  }

  /** Where a migration pins the new maps until it switches (then they move to maps/). */
  static nextMapPinDir(pinRoot: string): string {
    return join(pinRoot, 'maps_next'); // bpffs refuses names with a dot
  }

  /**
   * What the maps pinned under `pinRoot` forward now, counted before anything is opened, loaded or
   * changed (start-up's refuse-to-wipe check): rule match entries and link directions. The pins in
   * maps/ are the ones in use, also when they have another capacity or layout than this object's (a
   * migration copies from them) or when a migration that did not finish left maps_next/ beside them.
   */
  static pinnedForwarding(pinRoot: string): { matches: number; links: number } {
    const dir = XdpDatapath.mapPinDir(pinRoot);
    return {
      matches: countPinnedKeys(join(dir, MAP_DEFS.ruleMatch[0])) ?? 0,
      links: countPinnedKeys(join(dir, MAP_DEFS.xcLinks[0])) ?? 0,
    };
  }

  /**
   * The kernel ids of every map and program pinned under `pinRoot` (maps, maps_next, progs, tracepoint
   * links: each pin opened with BPF_OBJ_GET and named by its fdinfo map_id / prog_id), nothing read or
   * written. What a start checks against the live daemons' descriptors: a datapath is its kernel
   * objects, not the path they are reached by.
   */
  static pinnedObjectIds(pinRoot: string): { maps: Set<number>; progs: Set<number> } {
    const out = { maps: new Set<number>(), progs: new Set<number>() };
    const walk = (dir: string, depth: number) => {
      let entries: Dirent[];
      try {
        entries = readdirSync(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries) {
        const path = join(dir, e.name);
        if (e.isDirectory()) {
          if (depth < 4) walk(path, depth + 1);
          continue;
        }
        const fd = lib.bpf_obj_get(path) as number;
        if (fd < 0) continue;
        try {
          const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
          const map = /^map_id:\s*(\d+)/m.exec(info);
          if (map) out.maps.add(Number(map[1]));
          const prog = /^prog_id:\s*(\d+)/m.exec(info);
          if (prog) out.progs.add(Number(prog[1]));
        } catch {
          // no fdinfo: nothing known of it
        } finally {
          closeFd(fd);
        }
      }
    };
    walk(pinRoot, 0);
    return out;
  }

  /** Where the program is pinned. */
  static progPinPath(pinRoot: string): string {
    return join(pinRoot, 'progs', PROGRAM_NAME);
  }

  /**
   * Open and load the object, reusing pinned maps and adopting the pinned
   * program when it is the same code. libbpf's log, including the verifier's,
   * goes to the logger and onto the error if the load fails.
   */
  static open(options: DatapathOptions): XdpDatapath {
    const log = (options.log ?? silentLogger).child({ component: 'dataplane' });
    const capacity = { ...DEFAULT_CAPACITY, ...options.capacity };
    const mapDir = XdpDatapath.mapPinDir(options.pinRoot);
    const progPin = XdpDatapath.progPinPath(options.pinRoot);
    if (!existsSync(options.objectPath)) {
      throw new KernelError(`open ${options.objectPath}`, 2, [], 'no such file (run npm run build:bpf)');
    }
    preparePinRoot(options.pinRoot); // 0700, on bpffs, ours alone
    mkdirSync(mapDir, { recursive: true, mode: 0o700 });
    mkdirSync(join(options.pinRoot, 'progs'), { recursive: true, mode: 0o700 });
    const adopted = readdirSync(mapDir).length > 0;
    const nextDir = XdpDatapath.nextMapPinDir(options.pinRoot);
    // A migration that a stopped daemon left unfinished: dropped when no interface had switched (the pins in
    // maps/ are still the ones in use; this start migrates again from them if it must), completed when one had.
    settleUnfinishedMigration(options.pinRoot, log);
    // This datapath's programs as its pins name them, before this start changes any pin: how an
    // interface running one of them is known to be ours, and the fd an atomic REPLACE of it needs.
    const known = pinnedPrograms(join(options.pinRoot, 'progs'));

    const lines: string[] = [];
    const stop = captureLibbpfLog((level, line) => {
      if (level === LIBBPF_DEBUG) return;
      lines.push(line);
      (level === LIBBPF_WARN ? log.warn : log.debug).call(log, { libbpf: line }, 'libbpf');
    });
    let obj: unknown = null;
    let migration: Migration | undefined;
    try {
      obj = openObject(options.objectPath, mapDir, capacity, lines);
      // Pinned maps whose definition differs from the object's (--max-rules or
      // another map layout): migrate instead of refusing to start. New maps are
      // created and pinned under maps_next, the counters copied, the rules
      // written there by restore while the old program keeps forwarding with
      // the old maps; finishMigration() then swaps the program on every
      // interface (XDP_FLAGS_REPLACE) and moves the new pins into maps/.
      const changes = adopted ? layoutChanges(obj, mapDir) : [];
      let pinDir = mapDir;
      if (changes.length) {
        lib.bpf_object__close(obj);
        obj = null;
        mkdirSync(nextDir, { recursive: true, mode: 0o700 });
        obj = openObject(options.objectPath, nextDir, capacity, lines);
        pinDir = nextDir;
        migration = { changes, pending: new Map() };
        log.warn(
          { changes },
          'the pinned maps have another capacity or layout: migrating to new maps (the old ones forward until the switch)',
        );
      }
      // Maps that libbpf cannot pin for us (see xc_links in bpf/xdpctl.bpf.c).
      for (const name of SELF_PINNED) {
        const path = join(pinDir, name);
        if (!existsSync(path)) continue;
        const m = lib.bpf_object__find_map_by_name(obj, name);
        const fd = check(`open pinned map ${path}`, lib.bpf_obj_get(path) as number);
        const info = mapInfo(fd, name);
        const want = {
          type: lib.bpf_map__type(m) as number,
          keySize: lib.bpf_map__key_size(m) as number,
          valueSize: lib.bpf_map__value_size(m) as number,
          maxEntries: lib.bpf_map__max_entries(m) as number,
        };
        if (
          info.type !== want.type ||
          info.keySize !== want.keySize ||
          info.valueSize !== want.valueSize ||
          info.maxEntries !== want.maxEntries
        ) {
          closeFd(fd);
          throw new KernelError(
            `load ${options.objectPath}`,
            22,
            lines,
            `pinned map ${path} does not match the object (a difference the migration does not cover, e.g. map flags: report it; unpinning ${mapDir} starts empty)`,
          );
        }
        const r = lib.bpf_map__reuse_fd(m, fd) as number; // dups the fd
        closeFd(fd);
        check(`reuse pinned map ${path}`, r);
      }
      // The pinned program was loaded from this very object by this libbpf (its fingerprint pin names
      // the same program) and uses exactly the pinned maps: adopt it without verifying it again.
      const progsDir = join(options.pinRoot, 'progs');
      const fingerprint = loadFingerprint(options.objectPath);
      const pinnedId = migration ? undefined : pinnedProgId(progPin);
      // Pins that replace a previous daemon's (the program of an upgrade, the load fingerprint): made
      // by commit(), so that a start refused before it leaves that daemon's pins as they were.
      const pinOps: (() => void)[] = [];
      let skipLoad = false;
      if (pinnedId !== undefined && pinnedProgId(join(progsDir, LOADED_PREFIX + fingerprint)) === pinnedId) {
        const used = progMapIds(progPin);
        const pinnedMaps = pinnedMapIds(obj, mapDir);
        skipLoad = used !== undefined && used.every((id) => pinnedMaps.has(id));
      }
      const progHandle = lib.bpf_object__find_program_by_name(obj, PROGRAM_NAME);
      if (!progHandle) throw new KernelError(`find program ${PROGRAM_NAME}`, 2, lines, 'not in the object');
      if (skipLoad) check(`skip loading ${PROGRAM_NAME}`, lib.bpf_program__set_autoload(progHandle, false) as number);
      const ret = lib.bpf_object__load(obj) as number;
      if (ret < 0) {
        // Say the cause libbpf found, not just the errno: a map whose pinned
        // definition differs, or the verifier's complaint (full log on the error).
        const reuse = lines.find((l) => l.includes("couldn't reuse pinned map"));
        const detail = reuse
          ? `${reuse.replace(/^libbpf: /, '')} (a difference the migration does not cover, e.g. map flags: report it; unpinning ${mapDir} starts empty)`
          : undefined;
        throw new KernelError(`load ${options.objectPath}`, -ret, lines, detail);
      }

      const maps = {} as Record<string, BpfMap<unknown, unknown>>;
      for (const [key, [name, kc, vc]] of Object.entries(MAP_DEFS)) {
        const m = lib.bpf_object__find_map_by_name(obj, name);
        const fd = check(`open map ${name}`, lib.bpf_map__fd(m) as number);
        // The object owns these fds: closing the object closes them.
        maps[key] = new BpfMap(mapInfo(fd, name), fd, kc as never, vc as never, false);
      }
      for (const name of SELF_PINNED) {
        const path = join(pinDir, name);
        if (!existsSync(path)) {
          const fd = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(obj, name)) as number;
          check(`pin map at ${path}`, lib.bpf_obj_pin(fd, path) as number);
        }
      }
      const typed = maps as unknown as DatapathMaps;
      if (typed.ruleRing.info.maxEntries !== typed.ruleCfg.info.maxEntries * RING_SIZE) {
        throw new KernelError(
          'load datapath',
          22,
          lines,
          `rule_ring holds ${typed.ruleRing.info.maxEntries} slots, expected rule_cfg's ${typed.ruleCfg.info.maxEntries} x ring ${RING_SIZE}`,
        );
      }

      let progFd = -1;
      let ownProgFd = -1;
      let upgraded = false;
      if (skipLoad) {
        progFd = ownProgFd = check(`open pinned program ${progPin}`, lib.bpf_obj_get(progPin) as number);
        const pinned = progInfo(progFd, progPin);
        if (pinned.id !== pinnedId) {
          closeFd(progFd);
          throw new KernelError(
            `adopt ${progPin}`,
            16,
            lines,
            'the pinned program changed during the start; start again',
          );
        }
        log.info(
          { progId: pinned.id, tag: pinned.tag, fingerprint },
          'adopted pinned program (loaded from this object before)',
        );
        log.info({ adopted, pinRoot: options.pinRoot }, 'adopted pinned maps');
        const dp = new XdpDatapath(options, { obj, maps: typed, progFd, ownProgFd, adopted, upgraded, capacity });
        dp.adoptKnown(known);
        dp.loadedAtOpen = false;
        if (!options.deferTrace) dp.commit();
        return dp;
      }
      const newFd = check(`open program ${PROGRAM_NAME}`, lib.bpf_program__fd(progHandle) as number);
      const fresh = progInfo(newFd, PROGRAM_NAME);
      progFd = newFd;
      if (migration) {
        // Counters go on: copy them from the old maps (ids the new capacity holds).
        migration.copied = copyCounters(obj, mapDir, log);
        upgraded = true; // the program pin moves at finishMigration()
        // Pinned now, before anything attaches it (restore attaches it at once to an ingress that runs no XDP
        // program): a start after a crash from here on knows it as this datapath's, and settles the migration by
        // what the kernel shows (settleUnfinishedMigration). Before, it was pinned at finishMigration only: a crash
        // between left an interface forwarding through maps_next/ while the next start dropped them (the
        // twenty-fifth review).
        const nextPin = join(progsDir, NEXT_PROG_PIN);
        try {
          mkdirSync(progsDir, { recursive: true, mode: 0o700 });
          if (existsSync(nextPin)) unlinkSync(nextPin);
          check(`pin program at ${nextPin}`, lib.bpf_obj_pin(newFd, nextPin) as number);
        } catch (e) {
          log.error(
            { err: e, nextPin },
            'the new program could not be pinned before its first attach: a start after a crash would not know it',
          );
        }
      } else if (existsSync(progPin)) {
        const pinnedFd = check(`open pinned program ${progPin}`, lib.bpf_obj_get(progPin) as number);
        const pinned = progInfo(pinnedFd, progPin);
        // Same code is not enough: the pinned program must use exactly the
        // pinned maps (compare map ids). Pins removed or replaced by hand
        // leave a program that still uses the old, unpinned maps.
        // Every map of the object, not only the typed ones (frag_track, csum_buf, redir_*).
        const ours = new Set<number>();
        for (let m = lib.bpf_object__next_map(obj, null); m; m = lib.bpf_object__next_map(obj, m)) {
          ours.add(mapInfo(lib.bpf_map__fd(m) as number, lib.bpf_map__name(m) as string).id ?? 0);
        }
        const used = progMapIds(progPin);
        const stale = used !== undefined && used.some((id) => !ours.has(id));
        if (stale && pinned.name === PROGRAM_NAME) {
          log.warn(
            { progId: pinned.id, uses: used, pinnedMaps: [...ours] },
            'the pinned program uses other maps than the pinned ones (pins removed or replaced?): it is replaced',
          );
        }
        if (pinned.tag === fresh.tag && !stale) {
          progFd = pinnedFd; // same code: keep the program that is attached
          ownProgFd = pinnedFd;
          pinOps.push(() => pinLoaded(progsDir, fingerprint, pinnedFd));
          log.info({ progId: pinned.id, tag: pinned.tag }, 'adopted pinned program');
        } else {
          closeFd(pinnedFd);
          pinOps.push(() => {
            unlinkSync(progPin);
            check(`pin program at ${progPin}`, lib.bpf_obj_pin(newFd, progPin) as number);
            pinLoaded(progsDir, fingerprint, newFd);
          });
          // Said as found: an xdpctl_main on this datapath's maps is an earlier load of this datapath (another
          // build: an upgrade, or not); a program of another name was never loaded by xdpctld, whoever pinned it.
          if (pinned.name !== PROGRAM_NAME) {
            log.warn(
              { progId: pinned.id, name: pinned.name, tag: pinned.tag, now: { progId: fresh.id, tag: fresh.tag } },
              `the program pinned at ${progPin} (id ${pinned.id}, name ${pinned.name}, tag ${pinned.tag}) is not ` +
                `an ${PROGRAM_NAME}, so not one this datapath loaded: the pin is replaced by this daemon's ` +
                `program (id ${fresh.id}, tag ${fresh.tag}) as the start completes; an interface running the ` +
                'other one is not swapped (it is ' +
                'reported as running a foreign program)',
            );
          } else {
            upgraded = true;
            if (!stale) {
              log.info(
                { from: pinned.tag, to: fresh.tag, progId: fresh.id, was: pinned.id },
                `program replaced: the pinned ${PROGRAM_NAME} (id ${pinned.id}, tag ${pinned.tag}) uses this ` +
                  `datapath's maps and is other code than this daemon's (id ${fresh.id}, tag ${fresh.tag}); ` +
                  'interfaces running it are swapped to this one',
              );
            }
          }
        }
      } else {
        check(`pin program at ${progPin}`, lib.bpf_obj_pin(newFd, progPin) as number);
        pinLoaded(progsDir, fingerprint, newFd);
      }
      log.info({ adopted, pinRoot: options.pinRoot }, adopted ? 'adopted pinned maps' : 'created maps');
      const dp = new XdpDatapath(options, { obj, maps: typed, progFd, ownProgFd, adopted, upgraded, capacity });
      dp.adoptKnown(known);
      dp.migration = migration;
      dp.pendingPins = pinOps;
      // The tracepoint programs count into the maps the new program uses (pinDir while migrating).
      if (!options.deferTrace) dp.commit();
      return dp;
    } catch (e) {
      if (obj) lib.bpf_object__close(obj);
      for (const fd of known.values()) closeFd(fd);
      throw e;
    } finally {
      stop();
    }
  }

  /**
   * Earlier programs of this datapath (pinned under progs/ when this start began), by id, with an fd
   * each (ours to close): an interface that runs one runs ours, and REPLACE swaps it with that fd.
   */
  private readonly known = new Map<number, number>();

  private adoptKnown(known: Map<number, number>): void {
    for (const [id, fd] of known) {
      if (id === this.progId || this.known.has(id)) closeFd(fd);
      else this.known.set(id, fd);
    }
    known.clear();
  }

  /** The fd of the program that interfaces should run. */
  get progFd(): number {
    if (this.progFdValue < 0) throw new KernelError('use datapath', 9, [], 'datapath is closed');
    return this.progFdValue;
  }

  /** The kernel's id of that program. */
  get progId(): number {
    return this.progInfoValue.id;
  }

  /** The name of the BPF program with `progId` (bpf_prog_info), or undefined when it cannot be opened (EPERM, gone). */
  programName(progId: number): string | undefined {
    clearErrno();
    const fd = lib.bpf_prog_get_fd_by_id(progId) as number;
    if (fd < 0) return undefined;
    try {
      return progInfo(fd, `id ${progId}`).name;
    } catch {
      return undefined;
    } finally {
      closeFd(fd);
    }
  }

  /**
   * What a program attached to an interface is to this datapath, from what the daemon can observe:
   * 'ours' when it is the program in use or one pinned under this pin root (now or when this start
   * began); otherwise, opened by id, 'ours' only when it is an xdpctl_main that uses exactly this
   * datapath's maps (compared by map id: an earlier load on this pin root's maps, e.g. an upgrade or a
   * migration), 'foreign' when not (the same program name and tag on other maps is another xdpctld's,
   * with another pin root: see {@link otherDaemon}); 'unknown' when it cannot be opened by id (EPERM: no
   * CAP_SYS_ADMIN), so the daemon cannot tell.
   */
  identify(progId: number): ProgramIdentity {
    if (progId === this.progId || this.known.has(progId)) return 'ours';
    clearErrno();
    const fd = lib.bpf_prog_get_fd_by_id(progId) as number;
    if (fd < 0) {
      const errno = fd === -1 ? errnoNow() || 1 : -fd;
      if (errno === 1 || errno === 13) return 'unknown'; // EPERM, EACCES
      return 'foreign'; // gone meanwhile (ENOENT): not ours to touch
    }
    try {
      if (progInfo(fd, `id ${progId}`).name !== PROGRAM_NAME) return 'foreign';
      // A program's maps are fixed at load: read once per program id (ids are not reused while it lives).
      if (!this.progMaps.has(progId)) {
        if (this.progMaps.size >= 256) this.progMaps.clear();
        let ids: number[] | null = null;
        try {
          ids = programMapIds(fd, `id ${progId}`);
        } catch {
          // cannot say: not known to be ours
        }
        this.progMaps.set(progId, ids);
      }
    } finally {
      closeFd(fd);
    }
    const used = this.progMaps.get(progId);
    if (!used?.length) return 'foreign'; // its maps cannot be read: not known to be ours, so not touched
    const ours = this.ourMapIds();
    return used.every((id) => ours.has(id)) ? 'ours' : 'foreign';
  }

  /** The map ids of the xdpctl_main programs {@link identify} opened by id (null: they could not be read). */
  private readonly progMaps = new Map<number, number[] | null>();

  /**
   * The ids of this datapath's maps: every map of the loaded object (while a migration runs, the new
   * ones) and every map pinned under maps/ and maps_next/ of this pin root (the old ones until the switch).
   */
  private ourMapIds(): Set<number> {
    const ids = new Set<number>();
    if (this.obj) {
      for (let m = lib.bpf_object__next_map(this.obj, null); m; m = lib.bpf_object__next_map(this.obj, m)) {
        const fd = lib.bpf_map__fd(m) as number;
        if (fd >= 0) ids.add(mapInfo(fd, lib.bpf_map__name(m) as string).id ?? 0);
      }
    }
    const root = this.options.pinRoot;
    for (const dir of [XdpDatapath.mapPinDir(root), XdpDatapath.nextMapPinDir(root)]) {
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        continue;
      }
      for (const f of names) {
        const fd = lib.bpf_obj_get(join(dir, f)) as number;
        if (fd < 0) continue;
        try {
          ids.add(mapInfo(fd, f).id ?? 0);
        } catch {
          // not a map
        } finally {
          closeFd(fd);
        }
      }
    }
    ids.delete(0);
    return ids;
  }

  /**
   * What a foreign program is, when the daemon can tell more than "another program": an xdpctl_main
   * that {@link identify} opened and found on maps that are not this datapath's is another xdpctld's
   * (another pin root). Undefined otherwise.
   */
  otherDaemon(progId: number): string | undefined {
    if (!this.progMaps.get(progId)?.length || this.identify(progId) !== 'foreign') return undefined;
    return `an xdpctl_main of another xdpctld: it uses maps that are not pinned under ${this.options.pinRoot}`;
  }

  /** Why {@link identify} says 'unknown': what the daemon could not observe. */
  get unidentifiedReason(): string {
    return (
      `not one of the programs pinned under ${join(this.options.pinRoot, 'progs')}, and opening a program by id ` +
      'needs CAP_SYS_ADMIN, which this daemon lacks'
    );
  }

  /**
   * Whether a program id is one of ours (the one in use, one pinned under this pin root, or an
   * xdpctl_main on exactly this datapath's maps); an unidentified one is not.
   */
  isOurs(progId: number): boolean {
    return this.identify(progId) === 'ours';
  }

  /** A borrowed fd of one of our earlier programs (for REPLACE without opening it by id), if pinned. */
  private knownFd(progId: number): number | undefined {
    return progId === this.progId ? this.progFdValue : this.known.get(progId);
  }

  /**
   * Attach to an interface (idempotent). An older xdpctl program there is
   * replaced atomically; a foreign program is never clobbered (EBUSY).
   */
  attach(ifname: string, mode: XdpMode): AttachResult {
    return dataplaneSpan(
      'xdp.attach',
      () => ({ [DP_ATTR.iface]: ifname, [DP_ATTR.modeRequested]: mode }),
      (span) => {
        const r = this.attachNow(ifname, mode);
        span?.setAttribute(DP_ATTR.mode, r.mode);
        return r;
      },
    );
  }

  private attachNow(ifname: string, mode: XdpMode): AttachResult {
    const ifindex = ifindexOf(ifname);
    const before = queryXdp(ifindex, ifname);
    if (before.progId === this.progId && (mode === 'auto' || mode === before.mode)) {
      setGenericMode(this.maps, ifindex, before.mode === 'generic');
      return { ...before, ifindex, requested: mode, replaced: false, warnings: [] };
    }
    if (this.migration && before.progId !== 0 && this.isOurs(before.progId)) {
      // The old program forwards with the old maps until the new ones hold every rule.
      this.migration.pending.set(ifname, mode);
      return { ...before, ifindex, requested: mode, replaced: false, warnings: [] };
    }
    // The datapath's UDP checksum handling depends on the mode: say "generic"
    // before a generic attach, so no packet runs with the native assumption.
    const other = before.mode !== 'none' ? this.otherDaemon(before.progId) : undefined;
    if (other) {
      throw new KernelError(
        `attach xdp to ${ifname}`,
        16,
        [],
        `another XDP program (id ${before.progId}, ${before.mode} mode) is attached: ${other}; it is left alone`,
      );
    }
    if (mode === 'generic') setGenericMode(this.maps, ifindex, true);
    const after = attachXdp(
      ifindex,
      ifname,
      this.progFd,
      mode,
      (id) => this.isOurs(id),
      (id) => this.knownFd(id),
    );
    setGenericMode(this.maps, ifindex, after.mode === 'generic');
    if (after.progId !== this.progId) {
      throw new KernelError(`attach xdp to ${ifname}`, 5, [], `program id ${after.progId} is attached, not ours`);
    }
    const replaced = before.mode !== 'none' && before.progId !== this.progId;
    const prep = prepareIngressSync(ifname, after.mode === 'generic');
    after.warnings.push(...prep.problems);
    if (prep.changed.length) this.onOffloadsChanged?.(prep.changed);
    if (prep.done.length) this.log.info({ ifname, done: prep.done }, 'offloads set for XDP');
    this.log.info(
      { ifname, ifindex, requested: mode, effective: after.mode, replaced, warnings: after.warnings },
      'attached',
    );
    return { ...after, ifindex, requested: mode, replaced };
  }

  /** Whether a migration to new maps waits for finishMigration(); what differs. */
  get migrating(): string[] | undefined {
    return this.migration?.changes;
  }

  /**
   * End a migration (no-op without one), once the new maps hold what the
   * datapath must do (the daemon calls it after restoring its rules): swap
   * the program on every interface that runs the old one (XDP_FLAGS_REPLACE:
   * no moment without a program), then move the new pins into maps/ and pin
   * the new program. The old maps are freed when the old program is.
   * Returns the interfaces switched.
   */
  finishMigration(): string[] {
    const m = this.migration;
    if (!m) return [];
    this.migration = undefined;
    const progsDir = join(this.options.pinRoot, 'progs');
    const nextPin = join(progsDir, NEXT_PROG_PIN);
    // Pinned before the first attach: a start after a crash from here on knows this program and its maps as
    // this datapath's (settleUnfinishedMigration), takes it over and completes the move of the pins.
    try {
      if (existsSync(nextPin)) unlinkSync(nextPin);
      check(`pin program at ${nextPin}`, lib.bpf_obj_pin(this.progFd, nextPin) as number);
    } catch (e) {
      this.log.error(
        { err: e, nextPin },
        'the new program could not be pinned before the switch: a start after a crash during it would not know it',
      );
    }
    migrationStep('before-attach', this.log);
    const switched: string[] = [];
    const failed: string[] = [];
    for (const [ifname, mode] of m.pending) {
      try {
        this.attach(ifname, mode);
        switched.push(ifname);
      } catch (e) {
        failed.push(ifname);
        this.log.error({ err: e, ifname }, `${ifname} still runs the old program: switching it failed`);
      }
      if (switched.length === 1 && m.pending.size > 1 && switched.length + failed.length < m.pending.size) {
        migrationStep('between-attaches', this.log);
      }
    }
    migrationStep('after-attach', this.log);
    const mapDir = XdpDatapath.mapPinDir(this.options.pinRoot);
    const nextDir = XdpDatapath.nextMapPinDir(this.options.pinRoot);
    let countersAdded = 0;
    try {
      countersAdded = addCounterDeltas(
        this.obj,
        mapDir,
        m.copied ?? { values: new Map(), linkIndexes: new Map() },
        this.log,
      );
    } catch (e) {
      this.log.warn({ err: e }, 'what the old program counted during the migration was not added');
    }
    let pinned = false;
    try {
      const moved = readdirSync(nextDir);
      const keep = new Set(moved);
      const dropped = readdirSync(mapDir).filter((f) => !keep.has(f)); // maps the object dropped
      moved.forEach((f, i) => {
        renameSync(join(nextDir, f), join(mapDir, f)); // replaces the old pin
        if (i === Math.floor(moved.length / 2)) migrationStep('mid-rename', this.log);
      });
      for (const f of dropped) unlinkSync(join(mapDir, f));
      rmdirSync(nextDir);
      migrationStep('before-prog-pin', this.log);
      const progPin = XdpDatapath.progPinPath(this.options.pinRoot);
      // The old program stays known as ours (prev_<id>) while an interface still runs it; settlePrograms()
      // lets it go once none does.
      const oldId = pinnedProgId(progPin);
      if (oldId !== undefined && oldId !== this.progId) {
        const prev = join(progsDir, `${PREV_PREFIX}${oldId}`);
        if (!existsSync(prev)) pinAlso(progPin, prev);
      }
      if (existsSync(progPin)) unlinkSync(progPin);
      check(`pin program at ${progPin}`, lib.bpf_obj_pin(this.progFd, progPin) as number);
      pinLoaded(progsDir, loadFingerprint(this.options.objectPath), this.progFd);
      migrationStep('before-next-unpin', this.log);
      // Absent when pinning it failed (said then): the move is complete all the same.
      rmSync(nextPin, { force: true });
      pinned = true;
    } catch (e) {
      // The interfaces run the new program (pinned at progs/next_xdpctl_main); only the pins are behind: the
      // next start completes the move (settleUnfinishedMigration).
      this.log.error(
        { err: e, mapDir, nextDir },
        'the new maps could not be pinned in place of the old ones (the next start completes it)',
      );
    }
    const still = this.settlePrograms();
    const stillOld = [...still.keys()]; // observed: they run an earlier program of this datapath
    const lost = failed.filter((f) => !still.has(f)); // the switch failed, and they run none of ours now
    // Said as observed: which interfaces that ran the old program run the new one, which do not.
    const parts: string[] = [];
    if (stillOld.length) {
      parts.push(
        `${stillOld.join(', ')} still run${stillOld.length === 1 ? 's' : ''} the old program (on the old maps)`,
      );
    }
    if (lost.length)
      parts.push(`switching ${lost.join(', ')} failed (no earlier program of this datapath runs there now)`);
    const what = !m.pending.size
      ? 'no interface ran the old program'
      : parts.length
        ? parts.join('; ')
        : `every interface that ran the old program (${switched.join(', ')}) runs the new one`;
    const fields = {
      changes: m.changes,
      countersCopied: Object.fromEntries([...(m.copied?.values ?? [])].map(([k, v]) => [k, v.size])),
      countersAdded,
      switched,
      progId: this.progId,
      ...(still.size ? { stillOld: Object.fromEntries(still) } : {}),
      ...(failed.length ? { failed } : {}),
    };
    const sep = parts.length ? ';' : ':';
    if (pinned) this.log.info(fields, `migrated to the new maps${sep} ${what}`);
    else this.log.error(fields, `the switch to the new maps is not complete (their pins are not in maps/): ${what}`);
    return switched;
  }

  /** Detach our program from an interface; a foreign program is left alone. */
  /** Detach our program from `ifname` (given `ifindex`: from that device, `ifname` naming it in what is said). */
  detach(ifname: string, ifindex?: number): void {
    dataplaneSpan(
      'xdp.detach',
      () => ({ [DP_ATTR.iface]: ifname }),
      () => this.detachNow(ifname, ifindex),
    );
  }

  private detachNow(ifname: string, given?: number): void {
    const ifindex = given ?? ifindexOf(ifname);
    const state = queryXdp(ifindex, ifname);
    if (state.mode === 'none') return;
    if (!this.isOurs(state.progId)) {
      throw new KernelError(`detach xdp from ${ifname}`, 16, [], `program id ${state.progId} is not ours`);
    }
    detachXdp(ifindex, ifname, state);
    setGenericMode(this.maps, ifindex, false);
    this.log.info({ ifname, ifindex }, 'detached');
  }

  /**
   * Detach this datapath's program (by program id; and its earlier programs
   * still pinned under progs/) from every interface in our network
   * namespace, whoever recorded the attachment: for
   * --cleanup-on-exit, so that nothing we attached outlives us even when the
   * desired state lost track of it. The kernel refuses to change a device's
   * XDP while an upper device (a bridge over its port) has a program
   * (EEXIST): such devices are retried after the others, so uppers go
   * first. Programs of other tools and other xdpctl instances stay.
   */
  detachEverywhere(): { detached: string[]; failed: { ifname: string; error: string }[] } {
    const ours = new Map<string, number>();
    for (const ifname of linkNames()) {
      try {
        const ifindex = ifindexOf(ifname);
        const s = queryXdp(ifindex, ifname);
        if (s.mode !== 'none' && (s.progId === this.progId || this.known.has(s.progId))) ours.set(ifname, ifindex);
      } catch {
        // gone meanwhile
      }
    }
    const detached: string[] = [];
    let errors = new Map<string, string>();
    for (let progress = true; ours.size && progress;) {
      progress = false;
      errors = new Map();
      for (const [ifname, ifindex] of ours) {
        try {
          const s = queryXdp(ifindex, ifname);
          if (s.mode !== 'none' && (s.progId === this.progId || this.known.has(s.progId)))
            detachXdp(ifindex, ifname, s);
          ours.delete(ifname);
          detached.push(ifname);
          progress = true;
          this.log.info({ ifname, ifindex }, 'detached');
        } catch (e) {
          errors.set(ifname, (e as Error).message);
        }
      }
    }
    return { detached, failed: [...errors].map(([ifname, error]) => ({ ifname, error })) };
  }

  /**
   * Devices of other network namespaces that run this datapath's program or one of its earlier ones:
   * moved away while it ran there (`ip link set dev X netns OTHER`), out of sight of this namespace
   * (netns.ts). One RTM_GETNSID dump and one RTM_GETLINK dump per namespace id.
   */
  ownElsewhere(): XdpElsewhere[] {
    const out: XdpElsewhere[] = [];
    let ids: number[];
    try {
      ids = peerNsids();
    } catch {
      return out;
    }
    for (const nsid of ids) {
      for (const d of xdpDevicesIn(nsid)) if (d.progId === this.progId || this.known.has(d.progId)) out.push(d);
    }
    return out;
  }

  /** Interfaces of this network namespace that run this datapath's program or one of its earlier ones. */
  ownAttachments(): Map<string, { ifindex: number; mode: XdpState['mode'] }> {
    const out = new Map<string, { ifindex: number; mode: XdpState['mode'] }>();
    for (const [ifname, s] of attachedPrograms()) {
      if (s.progId === this.progId || this.known.has(s.progId)) out.set(ifname, { ifindex: s.ifindex, mode: s.mode });
    }
    return out;
  }

  /** What is attached to an interface now; `identity` when something is. */
  state(ifname: string): XdpState & { ifindex: number; ours: boolean; identity?: ProgramIdentity } {
    const ifindex = ifindexOf(ifname);
    const s = queryXdp(ifindex, ifname);
    if (s.mode === 'none') return { ...s, ifindex, ours: false };
    const identity = this.identify(s.progId);
    return { ...s, ifindex, ours: identity === 'ours', identity };
  }

  /**
   * Keep the earlier programs of this datapath known while an interface runs one, and let go of the
   * others: each one still attached somewhere in this network namespace is pinned as progs/prev_<id>
   * (so that a later start without CAP_SYS_ADMIN still knows it as ours); one attached nowhere loses its
   * pin and its fd (the kernel frees it, and the maps only it used). Called once the program pins have
   * moved to the program in use (commit, the end of a migration) and by every reconciler pass while an
   * earlier program is known. Returns the earlier programs still attached, by interface.
   */
  settlePrograms(): Map<string, number> {
    const still = new Map<string, number>();
    const progsDir = join(this.options.pinRoot, 'progs');
    const prevPins = () => {
      try {
        return readdirSync(progsDir).filter((f) => f.startsWith(PREV_PREFIX));
      } catch {
        return [];
      }
    };
    if (this.known.size === 0 && prevPins().length === 0) return still;
    const attached = attachedPrograms();
    const used = new Set<number>();
    for (const [ifname, s] of attached) {
      if (this.known.has(s.progId)) {
        used.add(s.progId);
        still.set(ifname, s.progId);
      }
    }
    for (const [id, fd] of [...this.known]) {
      const pin = join(progsDir, `${PREV_PREFIX}${id}`);
      if (used.has(id)) {
        if (!existsSync(pin)) {
          try {
            check(`pin program at ${pin}`, lib.bpf_obj_pin(fd, pin) as number);
          } catch (e) {
            this.log.warn(
              { err: e, progId: id },
              'an earlier program of this datapath still runs but could not be pinned',
            );
          }
        }
        continue;
      }
      closeFd(fd);
      this.known.delete(id);
    }
    for (const f of prevPins()) {
      if (!this.known.has(Number(f.slice(PREV_PREFIX.length)))) unlinkSync(join(progsDir, f));
    }
    return still;
  }

  /**
   * Run the program once or `repeat` times on a frame (BPF_PROG_TEST_RUN),
   * as if it arrived on `ingressIfindex`. Note the kernel runs repeats on the
   * frame as the previous run left it.
   */
  testRun(frame: Uint8Array, ingressIfindex: number, repeat = 1, progFd = this.progFd): TestRunResult {
    const r = testRunTimed(progFd, frame, ingressIfindex, repeat);
    return { action: r.action, data: r.data, durationNs: r.nsPerRun };
  }

  /** Pin changes open() left for commit(). */
  private pendingPins: (() => void)[] = [];

  /**
   * What replaces a previous daemon's pins and links, once the caller's start can no longer be
   * refused (open() does it itself without deferTrace; idempotent): the upgraded program's pin and the
   * load fingerprint pin, then the tracepoint programs, into the maps the program uses now (maps_next
   * while a migration or its pin move is unfinished).
   */
  commit(): void {
    for (const op of this.pendingPins.splice(0)) op();
    if (!this.migration) this.settlePrograms();
    if (this.traceObj) return;
    const nextDir = XdpDatapath.nextMapPinDir(this.options.pinRoot);
    const dir = existsSync(nextDir) ? nextDir : XdpDatapath.mapPinDir(this.options.pinRoot);
    this.startTrace(this.capacity, dir, this.log.child({ component: 'dataplane' }));
  }

  /**
   * Load bpf/xdpctl-trace.bpf.c next to the object and attach its tracepoint
   * programs (xdp:xdp_redirect_err, xdp:xdp_devmap_xmit, napi:napi_poll), sharing the pinned
   * maps: they move frames the kernel dropped after a redirect out of
   * "redirected" into "redirect_errors". Their links are pinned under
   * <pinRoot>/links, so counting goes on while the daemon is down; a new
   * daemon replaces them. A failure here is not fatal: the datapath works,
   * and traceWarning says that failed redirects are not counted.
   */
  private startTrace(capacity: Capacity, mapDir: string, log: Logger): void {
    const path = this.options.traceObjectPath ?? join(dirname(this.options.objectPath), 'xdpctl-trace.bpf.o');
    const linkDir = join(this.options.pinRoot, 'links');
    const lines: string[] = [];
    const stop = captureLibbpfLog((level, line) => {
      if (level !== LIBBPF_DEBUG) lines.push(line);
    });
    try {
      if (!existsSync(path)) throw new KernelError(`open ${path}`, 2, [], 'no such file (run npm run build:bpf)');
      clearErrno();
      const obj = lib.bpf_object__open_file(path, {
        sz: sizeOf(ObjectOpenOpts),
        object_name: null,
        relaxed_maps: false,
        pin_root_path: mapDir,
      });
      if (!obj) throw nullError(`open ${path}`, lines);
      this.traceObj = obj;
      const sizes: Record<string, number> = {
        xc_stats: capacity.links,
        rule_stats: capacity.statsIds,
        backend_stats: capacity.backends,
      };
      for (const [name, n] of Object.entries(sizes)) {
        const m = lib.bpf_object__find_map_by_name(obj, name);
        if (m) check(`size map ${name}`, lib.bpf_map__set_max_entries(m, n) as number);
      }
      check(`load ${path}`, lib.bpf_object__load(obj) as number, lines);
      const cfg = lib.bpf_object__find_map_by_name(obj, 'trace_cfg');
      const cfgFd = check('open map trace_cfg', lib.bpf_map__fd(cfg) as number);
      // struct xdpctl_trace_cfg: what tells our redirects from other datapaths' (bpf/xdpctl-trace.bpf.c).
      const value = Buffer.alloc(12);
      value.writeUInt32LE(this.progId, 0);
      value.writeUInt32LE(statSync('/proc/self/ns/net').ino, 4);
      value.writeUInt32LE(this.xcLinksIdIn(mapDir), 8);
      check('write trace_cfg', lib.bpf_map_update_elem(cfgFd, u32.encode(0), value, 0) as number);
      mkdirSync(linkDir, { recursive: true });
      for (const name of TRACE_PROGRAMS) {
        const prog = lib.bpf_object__find_program_by_name(obj, name);
        if (!prog) throw new KernelError(`find program ${name}`, 2, lines, 'not in the object');
        clearErrno();
        const link = lib.bpf_program__attach(prog);
        if (!link) throw nullError(`attach ${name}`, lines);
        this.traceLinks.push(link);
        // Replace the previous daemon's link: unpinning it detaches it.
        const pin = join(linkDir, name);
        this.traceLinkPins.push(pin);
        if (existsSync(pin)) unlinkSync(pin);
        check(`pin link ${name} at ${pin}`, lib.bpf_link__pin(link, pin) as number);
      }
      XdpDatapath.resetRedirectMirror(mapDir);
    } catch (e) {
      this.traceWarning = `failed redirects are not counted: ${(e as Error).message}`;
      log.warn({ err: (e as Error).message, libbpf: lines.slice(-5) }, 'tracepoint programs not attached');
    } finally {
      stop();
    }
  }

  /**
   * Start the redirect mirror (redir_last, redir_track: bpf/xdpctl.h) over, once our tracepoint programs
   * are attached: what a previous daemon, a test run or a time without tracepoint programs left there is
   * no redirect of ours still pending. A program redirecting meanwhile can find an entry half cleared: the
   * tracepoints then see it out of step with the kernel's queue and count those drops as unattributed.
   */
  static resetRedirectMirror(mapDir: string): void {
    for (const name of ['redir_last', 'redir_track']) {
      const fd = check(`open map ${name}`, lib.bpf_obj_get(join(mapDir, name)) as number);
      try {
        const info = mapInfo(fd, name);
        const zero = Buffer.alloc(possibleCpus() * ((info.valueSize + 7) & ~7));
        for (let k = 0; k < info.maxEntries; k++) {
          check(`clear ${name}[${k}]`, lib.bpf_map_update_elem(fd, u32.encode(k), zero, 0) as number);
        }
      } finally {
        closeFd(fd);
      }
    }
  }

  /** The kernel id of the cross-connect devmap pinned in mapDir (the one the program uses), else ours. */
  private xcLinksIdIn(mapDir: string): number {
    const fd = lib.bpf_obj_get(join(mapDir, MAP_DEFS.xcLinks[0])) as number;
    if (fd < 0) return mapInfo(this.maps.xcLinks.fd, 'xc_links').id ?? 0;
    try {
      return mapInfo(fd, 'xc_links').id ?? 0;
    } finally {
      closeFd(fd);
    }
  }

  /** Close our handles; pins, maps and attachments stay (idempotent). */
  close(): void {
    // Closing the links' fds leaves them attached through their pins.
    for (const l of this.traceLinks) lib.bpf_link__destroy(l);
    this.traceLinks = [];
    this.traceLinkPins = [];
    if (this.traceObj) lib.bpf_object__close(this.traceObj);
    this.traceObj = null;
    for (const m of Object.values(this.maps)) (m as BpfMap<unknown, unknown>).close();
    if (this.ownProgFd >= 0) closeFd(this.ownProgFd);
    this.ownProgFd = -1;
    for (const fd of this.known.values()) closeFd(fd);
    this.known.clear();
    if (this.obj) lib.bpf_object__close(this.obj);
    this.obj = null;
    this.progFdValue = -1;
  }

  /** Remove the pins of an unfinished migration (maps_next): the maps in maps/ stay in use. */
  static removeNextMaps(pinRoot: string): void {
    const dir = XdpDatapath.nextMapPinDir(pinRoot);
    if (existsSync(dir)) removePinDir(dir);
  }

  /**
   * Put back the pins of what this daemon runs when they were removed or
   * replaced under it (`rm -rf PIN/maps`, a map pinned over ours): every map
   * of the object in maps/ and the program in progs/ must be exactly ours
   * (compared by kernel id, not by name or tag). Without this, the next start
   * finds no pins (or other ones), creates new empty maps and has to swap the
   * program; with it, the next start adopts what forwards now. Nothing to do
   * while a migration holds the pins in maps_next/ (the switch re-pins). What
   * was re-pinned, and what could not be (with the cause), is returned; the
   * caller reports it.
   */
  repairPins(): { repinned: string[]; failed: string[]; unverified: string[] } {
    const repinned: string[] = [];
    const failed: string[] = [];
    const unverified: string[] = [];
    if (this.migration || !this.obj) return { repinned, failed, unverified };
    const { pinRoot } = this.options;
    /** The id of what `path` holds; undefined: nothing, or not a map (program); null: it could not be opened. */
    const idAt = (path: string, info: (fd: number) => number | undefined): number | undefined | null => {
      if (!existsSync(path)) return undefined;
      const fd = lib.bpf_obj_get(path) as number;
      if (fd < 0) {
        if (fd === -constants.errno.ENOENT) return undefined;
        // EMFILE (the open-files limit), ENOMEM, EACCES...: what the pin holds is not known, so it is left as it is.
        unverified.push(`${path}: ${new KernelError(`open pin ${path}`, -fd).message}`);
        return null;
      }
      try {
        return info(fd);
      } catch {
        return undefined; // not a map (or not a program)
      } finally {
        closeFd(fd);
      }
    };
    const repin = (what: string, path: string, fd: number) => {
      try {
        mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
        if (existsSync(path)) unlinkSync(path); // someone else's object under our name
        check(`pin ${what} at ${path}`, lib.bpf_obj_pin(fd, path) as number);
        repinned.push(path);
      } catch (e) {
        failed.push(`${path}: ${(e as Error).message}`);
      }
    };
    const mapDir = XdpDatapath.mapPinDir(pinRoot);
    for (let m = lib.bpf_object__next_map(this.obj, null); m; m = lib.bpf_object__next_map(this.obj, m)) {
      const name = lib.bpf_map__name(m) as string;
      if (!(lib.bpf_map__is_pinned(m) as boolean) && !SELF_PINNED.includes(name)) continue; // .rodata and the like
      const fd = lib.bpf_map__fd(m) as number;
      const path = join(mapDir, name);
      const at = idAt(path, (x) => mapInfo(x, name).id);
      if (at !== null && at !== mapInfo(fd, name).id) repin(`map ${name}`, path, fd);
    }
    const progPin = XdpDatapath.progPinPath(pinRoot);
    const progAt = idAt(progPin, (x) => progInfo(x, progPin).id);
    if (progAt !== null && progAt !== this.progInfoValue.id) {
      repin(`program ${PROGRAM_NAME}`, progPin, this.progFdValue);
    }
    // The tracepoint programs' links (links/): pinned, they count failed redirects while no daemon runs;
    // unpinned, they end with this daemon and a restart's counters miss what the kernel dropped meanwhile.
    this.traceLinks.forEach((link, i) => {
      const path = this.traceLinkPins[i];
      const fd = lib.bpf_link__fd(link) as number;
      if (!path || fd < 0) return;
      const at = idAt(path, (x) => linkId(x, path));
      if (at === null || at === linkId(fd, path)) return;
      const before = failed.length;
      repin(`tracepoint link ${basename(path)}`, path, fd);
      if (failed.length > before) {
        failed[failed.length - 1] +=
          `: while no xdpctld runs, redirects the kernel drops are not counted (this link ends with this ` +
          'daemon; a restarted one counts them as redirected, not as redirect errors)';
      }
    });
    // An earlier program of ours still attached somewhere (a switch that failed): keep it pinned while it
    // runs (the reconciler replaces it), let it go once it runs nowhere.
    if (this.known.size) {
      try {
        this.settlePrograms();
      } catch (e) {
        failed.push(`${join(pinRoot, 'progs')}/${PREV_PREFIX}*: ${(e as Error).message}`);
      }
    }
    if (repinned.length) {
      // The fingerprint pin lets the next start adopt the program without verifying it again.
      try {
        pinLoaded(dirname(progPin), loadFingerprint(this.options.objectPath), this.progFdValue);
      } catch (e) {
        failed.push(`${dirname(progPin)}/${LOADED_PREFIX}*: ${(e as Error).message}`);
      }
    }
    return { repinned, failed, unverified };
  }

  /**
   * Remove every pin under pinRoot (after detaching from interfaces): the
   * kernel frees maps and program once nothing references them. Goes on past
   * what cannot be removed; returns those ("PATH: ERRNO"), empty when all went.
   */
  static unpinAll(pinRoot: string): string[] {
    const left: string[] = [];
    const failed = (p: string, e: unknown) => left.push(`${p}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    // A bpffs mount's root (its parent on another device) holds the kernel's own iterators (maps.debug,
    // progs.debug: kernel/bpf/preload) and is a mount point: both stay. A /proc/self/fd/N path (a pin root
    // hidden under a mount, reached through a held descriptor) is emptied, not removed.
    let mountRoot = pinRoot.startsWith('/proc/self/fd/');
    try {
      mountRoot ||= statSync(pinRoot).dev !== statSync(dirname(pinRoot)).dev;
    } catch {
      return left; // nothing there
    }
    const rm = (dir: string, top: boolean) => {
      if (!existsSync(dir)) return;
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (top && mountRoot && KERNEL_PRELOAD_PINS.has(e.name)) continue;
        const p = join(dir, e.name);
        try {
          if (e.isDirectory()) rm(p, false);
          else unlinkSync(p);
        } catch (err) {
          failed(p, err);
        }
      }
      if (top && mountRoot) return;
      try {
        rmdirSync(dir);
      } catch (err) {
        failed(dir, err);
      }
    };
    rm(pinRoot, true);
    return left;
  }
}
