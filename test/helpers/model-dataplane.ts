/**
 * A model of the datapath's maps for unit tests: the real adapter
 * (KernelDataplane) and the real table writers (dataplane/tables.ts) run over
 * in-memory maps that hold the kernel's bytes (keys and values encoded by
 * dataplane/codec.ts), with each map's type semantics — arrays always hold
 * every index (zeroed), hashes and the LPM trie hold at most max_entries and
 * answer ENOSPC when full, deleting a missing key is ENOENT, a batch update
 * writes the entries before the failing one. Only interfaces, attachments
 * and neighbour lookups are modelled above the maps.
 *
 * Faults: `failAt = N` fails the N-th map write from now (an update or
 * delete of one entry, batches counted per entry) with the given errno;
 * `crashAt = N` throws {@link Crash} instead and refuses every later call,
 * as a process killed at that point would (the maps keep what was written).
 * This is the crash failpoint the daemon used to carry in production code.
 *
 * `snapshot()` is every map's content as hex, for byte-for-byte comparison;
 * the integration test test/integration/rollback-kernel.test.ts checks the
 * same property against the kernel once.
 */
import { BPF_EXIST, BPF_NOEXIST } from '../../src/server/dataplane/bpf-map.js';
import { KernelDataplane } from '../../src/server/dataplane/adapter.js';
import {
  backendEntry,
  backendStats,
  linkStats,
  matchKey,
  portUse,
  ruleEntry,
  ruleStats,
  srcKey,
  macKey,
  u32,
  u64,
  u8,
  PORTS_PER_GEN,
  RING_SIZE,
  type Codec,
} from '../../src/server/dataplane/codec.js';
import type { AttachResult, Capacity, DatapathMaps, XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { KernelError } from '../../src/server/dataplane/errors.js';
import { GlobalStat, type InterfaceInfo, type XdpModeName, type XdpStatus } from '../../src/server/core/dataplane.js';
import type { PeerRead } from '../../src/server/core/static-mac.js';

const ENOENT = 2;
const EINVAL = 22;
const EEXIST = 17;
const E2BIG = 7;
const ENOSPC = 28;

/** Thrown at the crash point; every later call on the model throws it too. */
export class Crash extends Error {
  override readonly name = 'Crash';
}

/** Fault injection shared by every map of one model. */
export interface Faults {
  /** Map writes so far. */
  writes: number;
  /** Fail the write with this number (0: never), with `errno`. */
  failAt: number;
  errno: number;
  /** Crash at the write with this number (0: never). */
  crashAt: number;
  crashed: boolean;
}

type Kind = 'array' | 'hash' | 'lpm';

/** One map: bytes in, bytes out, with its type's rules. */
export class ModelMap<K, V> {
  readonly entries_ = new Map<string, Buffer>();
  readonly info: { name: string; maxEntries: number; valueSize: number };
  readonly perCpu: boolean;

  constructor(
    name: string,
    private readonly kind: Kind,
    maxEntries: number,
    readonly key: Codec<K>,
    readonly value: Codec<V>,
    private readonly faults: Faults,
    perCpu = false,
  ) {
    this.info = { name, maxEntries, valueSize: value.layout.size };
    this.perCpu = perCpu;
  }

  get name(): string {
    return this.info.name;
  }

  private live(): void {
    if (this.faults.crashed) throw new Crash('the process is dead');
  }

  private write(op: string): void {
    this.live();
    const n = ++this.faults.writes;
    if (n === this.faults.crashAt) {
      this.faults.crashed = true;
      throw new Crash(`killed at write ${n} (${op} ${this.name})`);
    }
    if (n === this.faults.failAt) throw new KernelError(`${op} map ${this.name}`, this.faults.errno);
  }

  private hex(k: K): string {
    const b = this.key.encode(k);
    if (this.kind === 'array') {
      const i = b.readUInt32LE(0);
      if (i >= this.info.maxEntries) throw new KernelError(`access map ${this.name}`, E2BIG);
    }
    return b.toString('hex');
  }

  private zeroBuf?: Buffer;
  private zero(): Buffer {
    return (this.zeroBuf ??= Buffer.alloc(this.value.layout.size));
  }

  get(k: K): V | undefined {
    this.live();
    const h = this.hex(k);
    const v = this.entries_.get(h) ?? (this.kind === 'array' ? Buffer.from(this.zero()) : undefined);
    return v && this.value.decode(v);
  }

  getPerCpu(k: K): V[] | undefined {
    const v = this.get(k);
    return v === undefined ? undefined : [v];
  }

  /** BpfMap.getManyPerCpu: the entries at these indexes (one CPU), those within the map. */
  getManyPerCpu(this: ModelMap<number, V>, indexes: readonly number[]): Map<number, V[]> {
    const out = new Map<number, V[]>();
    for (const i of indexes) {
      const v = i < this.info.maxEntries ? this.getPerCpu(i) : undefined;
      if (v) out.set(i, v);
    }
    return out;
  }

  put(k: K, v: V, flags = 0): void {
    this.write('update');
    const h = this.hex(k);
    const exists = this.kind === 'array' || this.entries_.has(h);
    if (flags === BPF_NOEXIST && exists) throw new KernelError(`update map ${this.name}`, EEXIST);
    if (flags === BPF_EXIST && !exists) throw new KernelError(`update map ${this.name}`, ENOENT);
    if (!exists && this.entries_.size >= this.info.maxEntries) {
      throw new KernelError(`update map ${this.name}`, ENOSPC);
    }
    const bytes = this.value.encode(v);
    if (this.kind === 'array' && bytes.equals(this.zero())) this.entries_.delete(h);
    else this.entries_.set(h, Buffer.from(bytes));
  }

  delete(k: K): boolean {
    if (this.kind === 'array') throw new KernelError(`delete from map ${this.name}`, EINVAL);
    this.write('delete');
    return this.entries_.delete(this.hex(k));
  }

  putMany(entries: readonly (readonly [K, V])[], flags = 0): void {
    for (const [k, v] of entries) this.put(k, v, flags);
  }

  deleteMany(keys: readonly K[]): void {
    for (const k of keys) this.delete(k);
  }

  /** As BpfMap.syncArray: read everything, write (as one batch, write by write) only what differs. */
  syncArray(want: (index: number) => V | undefined): number {
    if (this.kind !== 'array') throw new KernelError(`sync map ${this.name}`, EINVAL);
    this.live();
    const changed: [K, V][] = [];
    for (let i = 0; i < this.info.maxEntries; i++) {
      const k = this.key.decode(u32.encode(i));
      const v = want(i);
      const expect = v === undefined ? this.zero() : this.value.encode(v);
      const have = this.entries_.get(this.hex(k)) ?? this.zero();
      if (!have.equals(expect)) changed.push([k, v ?? this.value.decode(this.zero())]);
    }
    this.putMany(changed);
    return changed.length;
  }

  *keys(): Generator<K> {
    this.live();
    if (this.kind === 'array') {
      for (let i = 0; i < this.info.maxEntries; i++) yield this.key.decode(u32.encode(i));
      return;
    }
    for (const h of [...this.entries_.keys()]) yield this.key.decode(Buffer.from(h, 'hex'));
  }

  *entries(): Generator<[K, V]> {
    for (const k of this.keys()) {
      const v = this.get(k);
      if (v !== undefined) yield [k, v];
    }
  }

  /** Not modelled as mapped memory: the range calls below go entry by entry (each write counted). */
  readonly mmapable = false;

  getRangeU32(start: number, count: number): Uint32Array {
    return Uint32Array.from({ length: count }, (_, i) => this.get((start + i) as K) as number);
  }

  getRangeRaw(start: number, count: number): Buffer {
    this.hex((start + count - 1) as K); // the range check
    const vs = this.value.layout.size;
    const out = Buffer.alloc(count * vs); // what is not an entry is zero
    for (const [h, v] of this.entries_) {
      const i = Buffer.from(h, 'hex').readUInt32LE(0) - start;
      if (i >= 0 && i < count) v.copy(out, i * vs);
    }
    return out;
  }

  getRange(start: number, count: number): V[] {
    return Array.from({ length: count }, (_, i) => this.get((start + i) as K) as V);
  }

  visitRangesU32(ranges: readonly [number, number][], visit: (i: number, values: Uint32Array) => void): void {
    ranges.forEach(([start, count], i) => visit(i, this.getRangeU32(start, count)));
  }

  putRangeU32(start: number, values: ArrayLike<number>): void {
    for (let i = 0; i < values.length; i++) this.put((start + i) as K, values[i] as V);
  }

  entriesBatch(): [K, V][] {
    return [...this.entries()];
  }

  /** As BpfMap.batches: the entries `chunk` at a time for a hash map, undefined for an array map. */
  batches(chunk = 4096): Generator<[K, V][]> | undefined {
    if (this.kind === 'array') return undefined;
    const all = this.entriesBatch();
    return (function* () {
      for (let i = 0; i < all.length; i += chunk) yield all.slice(i, i + chunk);
    })();
  }

  entriesPerCpu(): [K, V[]][] {
    return [...this.entries()].map(([k, v]) => [k, [v]]);
  }

  close(): void {}

  /** Non-zero content, sorted, as "key=value" hex. */
  dump(): string[] {
    return [...this.entries_.entries()].map(([k, v]) => `${k}=${v.toString('hex')}`).sort();
  }
}

export const MODEL_CAPACITY: Capacity = {
  links: 16,
  ruleSlots: 33,
  statsIds: 17,
  matches: 64,
  srcPrefixes: 64,
  backends: 129,
};

/**
 * Just enough of XdpDatapath for the adapter: maps, capacity, attachments.
 * Typed against XdpDatapath (the adapter receives it through a cast), so a
 * change of the real datapath's shape fails the type check here instead of
 * surfacing as an undefined field at run time.
 */
class ModelDatapath implements Pick<
  XdpDatapath,
  'maps' | 'progId' | 'capacity' | 'attach' | 'detach' | 'state' | 'ownAttachments' | 'ownElsewhere' | 'traceWarning'
> {
  readonly maps: DatapathMaps;
  readonly progId = 42;
  readonly options = { pinRoot: '/model' };
  readonly attached = new Map<string, 'native' | 'generic'>();
  /** The tracepoint programs are modelled as attached: nothing unobserved. */
  readonly traceWarning: string | undefined = undefined;

  constructor(
    readonly capacity: Capacity,
    readonly faults: Faults,
    private readonly ifs: Map<string, InterfaceInfo>,
  ) {
    const m = <K, V>(name: string, kind: Kind, max: number, k: Codec<K>, v: Codec<V>, perCpu = false) =>
      new ModelMap(name, kind, max, k, v, faults, perCpu);
    this.maps = {
      ifFlags: m('if_flags', 'array', 65536, u32, u32),
      ifFlagsBig: m('if_flags_big', 'hash', 4096, u32, u32),
      xcLinks: m('xc_links', 'hash', capacity.links, u32, u32),
      xcStats: m('xc_stats', 'array', capacity.links, u32, linkStats, true),
      xcEgress: m('xc_egress', 'array', capacity.links, u32, u32),
      ruleGen: m('rule_gen', 'array', 1, u32, u32),
      // Room for two generations of match entries and port index entries, as the object sizes them.
      ruleMatch: m('rule_match', 'hash', 2 * capacity.matches, matchKey, u32),
      rulePorts: m('rule_ports', 'array', 2 * PORTS_PER_GEN, u32, portUse),
      ruleCfg: m('rule_cfg', 'array', capacity.ruleSlots, u32, ruleEntry),
      ruleRing: m('rule_ring', 'array', capacity.ruleSlots * RING_SIZE, u32, u32),
      srcAllow: m('src_allow', 'lpm', capacity.srcPrefixes, srcKey, u8),
      ingressMacs: m('ingress_macs', 'hash', 4096, macKey, u8),
      backends: m('backends', 'array', capacity.backends, u32, backendEntry),
      ruleStats: m('rule_stats', 'array', capacity.statsIds, u32, ruleStats, true),
      backendStats: m('backend_stats', 'array', capacity.backends, u32, backendStats, true),
      globalStats: m('global_stats', 'array', Math.max(...Object.values(GlobalStat)) + 1, u32, u64, true),
    } as unknown as DatapathMaps;
  }

  attach(ifname: string, mode: XdpModeName): AttachResult {
    if (this.faults.crashed) throw new Crash('the process is dead');
    const info = this.ifs.get(ifname);
    if (!info) throw new KernelError(`attach xdp to ${ifname}`, 19);
    const eff = mode === 'generic' ? 'generic' : 'native';
    const replaced = false;
    this.attached.set(ifname, eff);
    return { mode: eff, progId: this.progId, ifindex: info.ifindex, requested: mode, replaced, warnings: [] };
  }

  detach(ifname: string): void {
    this.attached.delete(ifname);
  }

  ownAttachments(): ReturnType<XdpDatapath['ownAttachments']> {
    const out: ReturnType<XdpDatapath['ownAttachments']> = new Map();
    for (const [ifname, mode] of this.attached) {
      const info = this.ifs.get(ifname);
      if (info) out.set(ifname, { ifindex: info.ifindex, mode });
    }
    return out;
  }

  /** The model has one network namespace: nothing is ever moved out of it. */
  ownElsewhere(): ReturnType<XdpDatapath['ownElsewhere']> {
    return [];
  }

  state(ifname: string): ReturnType<XdpDatapath['state']> {
    const info = this.ifs.get(ifname);
    if (!info) throw new KernelError(`query xdp on ${ifname}`, 19);
    const mode = this.attached.get(ifname);
    return { mode: mode ?? 'none', progId: mode ? this.progId : 0, ifindex: info.ifindex, ours: !!mode };
  }
}

/** The adapter over modelled maps; interfaces and neighbours are plain tables. */
export class ModelDataplane extends KernelDataplane {
  readonly faults: Faults;
  readonly ifs = new Map<string, InterfaceInfo>();
  readonly neighbours = new Map<string, string>();
  /**
   * Modelled veth peers, by egress name (what vethPeerMac answers for it): a static MAC its peer has is
   * confirmed (core/static-mac.ts); one nothing confirms makes its rule DEGRADED. `{ unreadable }`: a peer in
   * a namespace that cannot be read.
   */
  readonly vethPeers = new Map<string, PeerRead>();
  readonly model: ModelDatapath;

  constructor(capacity: Capacity = MODEL_CAPACITY, interfaces: string[] = ['in0', 'in1', 'b0', 'b1', 'b2']) {
    const faults: Faults = { writes: 0, failAt: 0, errno: 5, crashAt: 0, crashed: false };
    const ifs = new Map<string, InterfaceInfo>();
    interfaces.forEach((n, i) =>
      ifs.set(n, { name: n, ifindex: i + 2, mac: `02:00:00:00:00:${(i + 2).toString(16).padStart(2, '0')}` }),
    );
    const model = new ModelDatapath(capacity, faults, ifs);
    super(model as unknown as XdpDatapath);
    this.faults = faults;
    this.model = model;
    for (const [k, v] of ifs) this.ifs.set(k, v);
  }

  /** The same maps (bytes and all), seen by a new process (`next`, a fresh one by default): for restart tests. */
  static adopt<T extends ModelDataplane = ModelDataplane>(prev: ModelDataplane, into?: T): T {
    const next = into ?? (new ModelDataplane(prev.capacity) as T);
    for (const [name, m] of Object.entries(prev.model.maps)) {
      const dst = (next.model.maps as unknown as Record<string, ModelMap<unknown, unknown>>)[name];
      for (const [k, v] of (m as ModelMap<unknown, unknown>).entries_) dst.entries_.set(k, Buffer.from(v));
    }
    for (const [k, v] of prev.model.attached) next.model.attached.set(k, v);
    for (const [k, v] of prev.neighbours) next.neighbours.set(k, v);
    for (const [k, v] of prev.vethPeers) next.vethPeers.set(k, v); // the same host's
    return next;
  }

  override lookupInterface(name: string): InterfaceInfo | undefined {
    if (this.faults.crashed) throw new Crash('the process is dead');
    return this.ifs.get(name);
  }

  override async neighbourMac(ip: string, iface: string): Promise<string | undefined> {
    return this.neighbours.get(`${ip}@${iface}`);
  }

  /** One read of the modelled table: each entry as neighbourMac (a subclass's too) answers it; an egress not modelled is gone. */
  override async neighbourMacs(
    wanted: readonly { ip: string; iface: string }[],
  ): Promise<{ macs: Map<string, string | undefined>; gone: Set<string> }> {
    const macs = new Map<string, string | undefined>();
    const gone = new Set<string>();
    for (const { ip, iface } of wanted) {
      if (!this.ifs.has(iface)) gone.add(iface);
      else macs.set(`${ip}@${iface}`, await this.neighbourMac(ip, iface));
    }
    return { macs, gone };
  }

  override vethPeerMac(ifname: string): PeerRead | undefined {
    return this.vethPeers.get(ifname) ?? super.vethPeerMac(ifname);
  }

  override xdpStatus(ifname: string): XdpStatus | undefined {
    return this.ifs.has(ifname) ? super.xdpStatus(ifname) : undefined;
  }

  override async redirectTarget(): Promise<{ ok: boolean; detail?: string }> {
    return { ok: true };
  }

  /** The modelled interfaces have no device settings (offloads) to check: nothing found on, nothing to put back. */
  /** The modelled interfaces take no MAC but their own (no fdb to read): nothing written. */
  override syncIngressMacs(): Map<string, string[]> {
    return new Map();
  }

  override async checkIngress(): Promise<{ done: string[]; unrepaired: string[] }> {
    return { done: [], unrepaired: [] };
  }

  /** Every map's non-zero content, as hex. */
  snapshot(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const [name, m] of Object.entries(this.model.maps)) out[name] = (m as ModelMap<unknown, unknown>).dump();
    return out;
  }
}
