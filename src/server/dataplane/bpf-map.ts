/**
 * A typed view of one BPF map through its file descriptor: get, put, delete,
 * iterate, batch operations where the map type has them, and per-CPU values
 * read with the buffer size the kernel expects (possible CPUs x value size
 * rounded up to 8; a smaller buffer corrupts memory).
 */
import { readFileSync } from 'node:fs';

import { dataplaneSpan, DP_ATTR } from '../telemetry/span.js';
import type { Codec } from './codec.js';
import { KernelError } from './errors.js';
import {
  check,
  clearErrno,
  closeFd,
  lib,
  mapPages,
  MapBatchOpts,
  PAGE_SIZE,
  possibleCpus,
  sizeOf,
  unmapPages,
  withMappedMap,
  type Mapping,
} from './libbpf.js';

/**
 * Whether the map behind `fd` is frozen (BPF_MAP_FREEZE, `bpftool map freeze`: every write from user space
 * refused with EPERM until the map is replaced), as the kernel shows it in the fd's fdinfo ("frozen:\t1",
 * kernel/bpf/syscall.c bpf_map_show_fdinfo); undefined when that cannot be read.
 */
export function mapFrozen(fd: number): boolean | undefined {
  try {
    const m = /^frozen:\s*(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    return m ? m[1] !== '0' : undefined;
  } catch {
    return undefined;
  }
}

/**
 * {@link check} for a write to map `name` (update or delete): a write refused with EPERM on a map the daemon
 * holds read-write is what a freeze by another tool does; the error says so, from the fd's fdinfo when it
 * can be read ("map xc_links is frozen"), else as a question.
 */
export function checkWrite(op: string, fd: number, name: string, ret: number): number {
  try {
    return check(op, ret);
  } catch (e) {
    if (!(e instanceof KernelError) || e.code !== 'EPERM') throw e;
    const frozen = mapFrozen(fd);
    throw new KernelError(
      op,
      e.errno,
      [],
      frozen
        ? `map ${name} refuses writes: it is frozen (fdinfo frozen: 1; another tool ran bpftool map freeze), until the map is replaced`
        : frozen === false
          ? 'operation not permitted'
          : `map ${name} refused writes (EPERM): frozen by another tool?`,
      frozen === true, // the freeze read from fdinfo: the cause, not a missing capability
    );
  }
}

/** Bytes of an mmapable array kept mapped per window, and how many windows stay mapped (LRU). */
const WINDOW = 16 * PAGE_SIZE;
const WINDOWS = 16;

/** BPF map types we use (enum bpf_map_type). */
export const MapType = {
  HASH: 1,
  ARRAY: 2,
  PERCPU_HASH: 5,
  PERCPU_ARRAY: 6,
  LPM_TRIE: 11,
  DEVMAP: 14,
  DEVMAP_HASH: 25,
} as const;

/** Update flags. */
export const BPF_ANY = 0;
export const BPF_NOEXIST = 1;
export const BPF_EXIST = 2;

/** Map flag: an array whose values user space can mmap (include/uapi/linux/bpf.h). */
export const BPF_F_MMAPABLE = 1 << 10;

const ENOENT = 2;
const EPERM = 1;
const ENOSPC = 28;

const PERCPU = new Set<number>([MapType.PERCPU_HASH, MapType.PERCPU_ARRAY]);
const ARRAYS = new Set<number>([MapType.ARRAY, MapType.PERCPU_ARRAY]);
// The kernel's batch operations exist for hash and array maps only: LPM
// tries and devmaps answer ENOTSUPP (524), so we loop for them.
const BATCH_UPDATE = new Set<number>([MapType.HASH, MapType.PERCPU_HASH, MapType.ARRAY, MapType.PERCPU_ARRAY]);
const BATCH_DELETE = new Set<number>([MapType.HASH, MapType.PERCPU_HASH]);

const batchOpts = { sz: sizeOf(MapBatchOpts), elem_flags: 0n, flags: 0n };

/** What a map is, as the kernel reports it. */
export interface MapInfo {
  name: string;
  /** The kernel's id of the map. */
  id?: number;
  type: number;
  keySize: number;
  valueSize: number;
  maxEntries: number;
  /** map_flags (BPF_F_*). */
  flags?: number;
}

/** A typed BPF map. */
export class BpfMap<K, V> {
  readonly perCpu: boolean;
  private readonly stride: number;
  private readonly cpus: number;
  private readonly keyBuf: Buffer;
  private readonly valBuf: Buffer;
  private fdOrClosed: number;

  constructor(
    readonly info: MapInfo,
    fd: number,
    readonly key: Codec<K>,
    readonly value: Codec<V>,
    private readonly ownsFd = true,
  ) {
    if (info.keySize !== key.layout.size || info.valueSize !== value.layout.size) {
      throw new KernelError(
        `open map ${info.name}`,
        22,
        [],
        `layout mismatch: kernel key/value ${info.keySize}/${info.valueSize} bytes, ` +
          `codec ${key.layout.cName}/${value.layout.cName} ${key.layout.size}/${value.layout.size}`,
      );
    }
    this.fdOrClosed = fd;
    this.perCpu = PERCPU.has(info.type);
    this.cpus = this.perCpu ? possibleCpus() : 1;
    this.stride = this.perCpu ? (info.valueSize + 7) & ~7 : info.valueSize;
    this.keyBuf = Buffer.alloc(info.keySize);
    this.valBuf = Buffer.alloc(this.stride * this.cpus);
  }

  get name(): string {
    return this.info.name;
  }

  /** The map's file descriptor (throws once closed). */
  get fd(): number {
    if (this.fdOrClosed < 0) throw new KernelError(`use map ${this.name}`, 9, [], 'map is closed');
    return this.fdOrClosed;
  }

  /** Look a key up; undefined when absent. For per-CPU maps, the sum is not taken: use getPerCpu. */
  get(k: K): V | undefined {
    const per = this.lookupRaw(k);
    return per === undefined ? undefined : this.value.decode(per.subarray(0, this.info.valueSize));
  }

  /** A per-CPU map's values, one per possible CPU. */
  getPerCpu(k: K): V[] | undefined {
    const raw = this.lookupRaw(k);
    if (raw === undefined) return undefined;
    return this.splitCpus(raw);
  }

  /**
   * The per-CPU values of the given indexes of a per-CPU array, one entry per
   * index (an index at or past max_entries is left out). The smallest to the
   * largest index asked for are read with BPF_MAP_LOOKUP_BATCH, `chunk` at a time
   * (one syscall per chunk instead of one per index: 5 000 counter entries
   * took 5 000 lookups, each through koffi), and only the asked-for ones are
   * decoded. When the indexes are sparse (fewer than a quarter of the range),
   * they are looked up one by one instead. (A counter read in slices asks for
   * one range of ids at a time: Controller.readCounters.)
   */
  getManyPerCpu(this: BpfMap<number, V>, indexes: readonly number[], chunk = 4096): Map<number, V[]> {
    if (this.info.type !== MapType.PERCPU_ARRAY) {
      throw new KernelError(`read map ${this.name}`, 22, [], 'not a per-CPU array');
    }
    const out = new Map<number, V[]>();
    let top = -1;
    let low = Infinity;
    for (const i of indexes) {
      if (i >= this.info.maxEntries) continue;
      if (i > top) top = i;
      if (i < low) low = i;
    }
    if (top < 0) return out;
    if (indexes.length * 4 < top + 1 - low) {
      for (const i of indexes) {
        const v = i < this.info.maxEntries ? this.getPerCpu(i) : undefined;
        if (v) out.set(i, v);
      }
      return out;
    }
    const wanted = new Uint8Array(top + 1);
    for (const i of indexes) if (i <= top) wanted[i] = 1;
    const n = Math.min(chunk, top + 1 - low);
    const keys = Buffer.alloc(n * 4);
    const vals = Buffer.alloc(n * this.stride * this.cpus);
    // The batch starts after the key in in_batch (an array's next key is index + 1): low - 1, or the first.
    let inBatch: Buffer | null = null;
    if (low > 0) {
      inBatch = Buffer.alloc(4);
      inBatch.writeUInt32LE(low - 1);
    }
    let outBatch = Buffer.alloc(4);
    for (let read = low; read <= top;) {
      const count = [Math.min(n, top + 1 - read)];
      const r = lib.bpf_map_lookup_batch(this.fd, inBatch, outBatch, keys, vals, count, batchOpts) as number;
      if (r < 0 && r !== -ENOENT) check(`read map ${this.name} in batches`, r);
      for (let j = 0; j < count[0]; j++) {
        const k = keys.readUInt32LE(j * 4);
        if (k <= top && wanted[k]) out.set(k, this.splitCpus(vals, j * this.stride * this.cpus));
      }
      read += count[0];
      if (r === -ENOENT || count[0] === 0) break;
      inBatch = outBatch;
      outBatch = Buffer.alloc(4);
    }
    return out;
  }

  /**
   * Whether the map holds exactly key `k` (an LPM trie's lookup answers its longest matching prefix, so its
   * keys are walked and compared byte for byte). True when that cannot be read: a refusal is then reported.
   */
  private holdsExactly(k: K): boolean {
    try {
      if (this.info.type !== MapType.LPM_TRIE) return this.lookupRaw(k) !== undefined;
      const want = Buffer.alloc(this.info.keySize);
      this.key.encode(k, want);
      let prev: Buffer | null = null;
      for (;;) {
        const next = Buffer.alloc(this.info.keySize);
        const r = lib.bpf_map_get_next_key(this.fd, prev, next) as number;
        if (r === -ENOENT) return false;
        if (r < 0) return true;
        if (next.equals(want)) return true;
        prev = next;
      }
    } catch {
      return true;
    }
  }

  private lookupRaw(k: K): Buffer | undefined {
    this.key.encode(k, this.keyBuf);
    const r = lib.bpf_map_lookup_elem(this.fd, this.keyBuf, this.valBuf) as number;
    if (r === -ENOENT) return undefined;
    check(`look up in map ${this.name}`, r);
    return this.valBuf;
  }

  private splitCpus(raw: Buffer, base = 0): V[] {
    const out: V[] = [];
    for (let c = 0; c < this.cpus; c++) {
      const off = base + c * this.stride;
      out.push(this.value.decode(raw.subarray(off, off + this.info.valueSize)));
    }
    return out;
  }

  /** Insert or replace (flags BPF_ANY/NOEXIST/EXIST). Per-CPU maps get the value on every CPU. */
  put(k: K, v: V, flags = BPF_ANY): void {
    dataplaneSpan(
      'bpf.map.update',
      () => this.spanAttrs('update', 1),
      () => this.putOne(k, v, flags),
    );
  }

  /** Attributes of a dataplane span on this map (see telemetry/span.ts). */
  private spanAttrs(op: string, entries: number) {
    return { [DP_ATTR.mapName]: this.name, [DP_ATTR.mapOp]: op, [DP_ATTR.entries]: entries };
  }

  private putOne(k: K, v: V, flags: number): void {
    this.key.encode(k, this.keyBuf);
    this.encodeValue(v, this.valBuf, 0);
    checkWrite(
      `update map ${this.name}`,
      this.fd,
      this.name,
      lib.bpf_map_update_elem(this.fd, this.keyBuf, this.valBuf, flags) as number,
    );
  }

  /**
   * Set a per-CPU map's values one by one (values[c] on possible CPU c; CPUs
   * beyond the list get zeros). For tests and tools that need a sum no single
   * value gives, such as a counter spread over CPUs.
   */
  putPerCpu(k: K, values: readonly V[], flags = BPF_ANY): void {
    if (!this.perCpu) throw new KernelError(`update map ${this.name}`, 22, [], 'not a per-CPU map');
    if (values.length > this.cpus) {
      throw new KernelError(`update map ${this.name}`, 22, [], `${values.length} values for ${this.cpus} CPUs`);
    }
    this.key.encode(k, this.keyBuf);
    this.valBuf.fill(0);
    values.forEach((v, c) => this.value.encode(v).copy(this.valBuf, c * this.stride));
    checkWrite(
      `update map ${this.name}`,
      this.fd,
      this.name,
      lib.bpf_map_update_elem(this.fd, this.keyBuf, this.valBuf, flags) as number,
    );
  }

  private encodeValue(v: V, out: Buffer, base: number): void {
    const one = this.value.encode(v);
    for (let c = 0; c < this.cpus; c++) {
      out.fill(0, base + c * this.stride, base + (c + 1) * this.stride);
      one.copy(out, base + c * this.stride);
    }
  }

  /** Delete a key; false when it was absent. Arrays cannot delete (EINVAL): use put. */
  delete(k: K): boolean {
    return dataplaneSpan(
      'bpf.map.delete',
      () => this.spanAttrs('delete', 1),
      () => this.deleteOne(k),
    );
  }

  private deleteOne(k: K): boolean {
    this.key.encode(k, this.keyBuf);
    const r = lib.bpf_map_delete_elem(this.fd, this.keyBuf) as number;
    if (r === -ENOENT) return false;
    // A frozen map refuses every delete with EPERM, also of a key it does not hold (an undo of a write that
    // was refused): nothing was there to delete, so nothing failed.
    if (r === -EPERM) {
      if (!this.holdsExactly(k)) return false;
      clearErrno(); // the walk's last errno is not the delete's: check() reads -1 as EPERM again
    }
    checkWrite(`delete from map ${this.name}`, this.fd, this.name, r);
    return true;
  }

  /** Every key, in the kernel's order. Safe against deletion of the current key. */
  *keys(): Generator<K> {
    if (ARRAYS.has(this.info.type)) {
      for (let i = 0; i < this.info.maxEntries; i++) yield this.key.decode(Buffer.from(Uint32Array.of(i).buffer));
      return;
    }
    let prev: Buffer | null = null;
    const next = Buffer.alloc(this.info.keySize);
    for (;;) {
      const r = lib.bpf_map_get_next_key(this.fd, prev, next) as number;
      if (r === -ENOENT) return;
      check(`iterate map ${this.name}`, r);
      prev = Buffer.from(next);
      yield this.key.decode(prev);
    }
  }

  /** Every entry (a snapshot read key by key; for per-CPU maps use entriesPerCpu). */
  *entries(): Generator<[K, V]> {
    for (const k of this.keys()) {
      const v = this.get(k);
      if (v !== undefined) yield [k, v];
    }
  }

  /**
   * Every entry of a hash map (not per-CPU) read with BPF_MAP_LOOKUP_BATCH:
   * one syscall per chunk instead of two per key (10 000 match entries: ~5 ms
   * instead of ~40). Other map types: {@link entries}.
   */
  entriesBatch(chunk = 4096): [K, V][] {
    if (this.info.type !== MapType.HASH) return [...this.entries()];
    const out: [K, V][] = [];
    try {
      for (const batch of this.hashBatches(chunk)) for (const e of batch) out.push(e);
    } catch (e) {
      // ENOSPC: one hash bucket holds more entries than a chunk: walk key by key instead.
      if (e instanceof KernelError && e.errno === ENOSPC) return [...this.entries()];
      throw e;
    }
    return out;
  }

  /**
   * {@link entriesBatch} one batch at a time (one BPF_MAP_LOOKUP_BATCH each), so that a caller may yield to
   * the event loop between batches; undefined (nothing given) when the map is not a hash map, and a
   * {@link KernelError} ENOSPC when a bucket holds more entries than a chunk: read with entriesBatch then.
   */
  batches(chunk = 4096): Generator<[K, V][]> | undefined {
    return this.info.type === MapType.HASH ? this.hashBatches(chunk) : undefined;
  }

  private *hashBatches(chunk: number): Generator<[K, V][]> {
    const ks = this.info.keySize;
    const vs = this.info.valueSize;
    const n = Math.min(chunk, this.info.maxEntries);
    const keys = Buffer.alloc(n * ks);
    const vals = Buffer.alloc(n * vs);
    let inBatch: Buffer | null = null;
    for (;;) {
      const outBatch = Buffer.alloc(Math.max(ks, 4));
      const count = [n];
      const r = lib.bpf_map_lookup_batch(this.fd, inBatch, outBatch, keys, vals, count, batchOpts) as number;
      if (r < 0 && r !== -ENOENT) check(`read map ${this.name} in batches`, r);
      // Decoded from the batch buffers in place: a codec copies what it keeps (codec.ts), so no copy of each
      // entry's bytes first (a start reads the 10 000 match entries several times).
      const out: [K, V][] = [];
      for (let i = 0; i < count[0]; i++) {
        out.push([
          this.key.decode(keys.subarray(i * ks, (i + 1) * ks)),
          this.value.decode(vals.subarray(i * vs, (i + 1) * vs)),
        ]);
      }
      if (out.length) yield out;
      if (r === -ENOENT) return;
      inBatch = outBatch;
    }
  }

  /**
   * Every entry with its per-CPU values, read with BPF_MAP_LOOKUP_BATCH when
   * the map type has it (one syscall per chunk instead of two per key).
   */
  entriesPerCpu(chunk = 4096): [K, V[]][] {
    if (!this.perCpu) throw new KernelError(`read map ${this.name}`, 22, [], 'not a per-CPU map');
    const out: [K, V[]][] = [];
    const n = Math.min(chunk, this.info.maxEntries);
    const keys = Buffer.alloc(n * this.info.keySize);
    const vals = Buffer.alloc(n * this.stride * this.cpus);
    const cursorSize = Math.max(this.info.keySize, 4);
    let inBatch: Buffer | null = null;
    let outBatch = Buffer.alloc(cursorSize);
    for (;;) {
      const count = [n];
      const r = lib.bpf_map_lookup_batch(this.fd, inBatch, outBatch, keys, vals, count, batchOpts) as number;
      if (r < 0 && r !== -ENOENT) check(`read map ${this.name} in batches`, r);
      for (let i = 0; i < count[0]; i++) {
        const k = this.key.decode(keys.subarray(i * this.info.keySize, (i + 1) * this.info.keySize));
        out.push([k, this.splitCpus(vals, i * this.stride * this.cpus)]);
      }
      if (r === -ENOENT) return out;
      inBatch = outBatch;
      outBatch = Buffer.alloc(cursorSize);
    }
  }

  /**
   * Make a (not per-CPU) array map hold `want(i)` at every index i, where `want` returns undefined
   * for "the zero value": the values are read with BPF_MAP_LOOKUP_BATCH, compared byte for byte, and
   * only the entries that differ are written (a batch). Returns how many were written. Observes
   * before it writes, so a start that finds the map right costs one read of it, not a rewrite.
   */
  syncArray(want: (index: number) => V | undefined, chunk = 16384): number {
    if (this.info.type !== MapType.ARRAY) throw new KernelError(`sync map ${this.name}`, 22, [], 'not an array map');
    const vs = this.info.valueSize;
    const n = Math.min(chunk, this.info.maxEntries);
    const keys = Buffer.alloc(n * 4);
    const vals = Buffer.alloc(n * vs);
    const zero = Buffer.alloc(vs);
    const wanted = Buffer.alloc(vs);
    // A Buffer.alloc this large is not pooled: offset 0, 4-byte aligned.
    const words =
      vs % 4 === 0 && vals.byteOffset % 4 === 0
        ? new Uint32Array(vals.buffer, vals.byteOffset, vals.length / 4)
        : undefined;
    const changed: [K, V][] = [];
    let inBatch: Buffer | null = null;
    let outBatch = Buffer.alloc(4);
    for (;;) {
      const count = [n];
      const r = lib.bpf_map_lookup_batch(this.fd, inBatch, outBatch, keys, vals, count, batchOpts) as number;
      if (r < 0 && r !== -ENOENT) check(`read map ${this.name} in batches`, r);
      for (let i = 0; i < count[0]; i++) {
        const v = want(keys.readUInt32LE(i * 4));
        // The common case at a start (65 536 ports, few used): "zero wanted, zero found", checked
        // word by word without a call into the Buffer API per entry.
        if (v === undefined && words && isZero(words, (i * vs) / 4, vs / 4)) continue;
        const expect = v === undefined ? zero : (this.value.encode(v, wanted), wanted);
        if (expect.compare(vals, i * vs, (i + 1) * vs) !== 0) {
          changed.push([this.key.decode(keys.subarray(i * 4, i * 4 + 4)), v ?? this.value.decode(zero)]);
        }
      }
      if (r === -ENOENT) break;
      inBatch = outBatch;
      outBatch = Buffer.alloc(4);
    }
    this.putMany(changed);
    return changed.length;
  }

  /**
   * Put many entries: one BPF_MAP_UPDATE_BATCH call per chunk where the map
   * type supports it, otherwise one update each. Not atomic: on failure,
   * entries before the failing one are written; the error says how many.
   */
  putMany(entries: readonly (readonly [K, V])[], flags = BPF_ANY): void {
    if (entries.length === 0) return;
    dataplaneSpan(
      'bpf.map.batch_update',
      () => this.spanAttrs('batch_update', entries.length),
      () => this.putManyRaw(entries, flags),
    );
  }

  private putManyRaw(entries: readonly (readonly [K, V])[], flags: number): void {
    if (!BATCH_UPDATE.has(this.info.type)) {
      for (const [k, v] of entries) this.putOne(k, v, flags);
      return;
    }
    const ks = this.info.keySize;
    const vs = this.stride * this.cpus;
    const chunk = Math.min(entries.length, 8192);
    const keys = Buffer.alloc(chunk * ks);
    const vals = Buffer.alloc(chunk * vs);
    for (let start = 0; start < entries.length; start += chunk) {
      const part = entries.slice(start, start + chunk);
      part.forEach(([k, v], i) => {
        this.key.encode(k, keys.subarray(i * ks, (i + 1) * ks));
        this.encodeValue(v, vals, i * vs);
      });
      const count = [part.length];
      const opts = { ...batchOpts, elem_flags: BigInt(flags) };
      const r = lib.bpf_map_update_batch(this.fd, keys, vals, count, opts) as number;
      if (r < 0)
        checkWrite(
          `update map ${this.name} in batch (${start + count[0]} of ${entries.length} written)`,
          this.fd,
          this.name,
          r,
        );
    }
  }

  /** Delete many keys (batch where supported); absent keys are ignored. */
  deleteMany(keys: readonly K[]): void {
    if (keys.length === 0) return;
    dataplaneSpan(
      'bpf.map.batch_delete',
      () => this.spanAttrs('batch_delete', keys.length),
      () => this.deleteManyRaw(keys),
    );
  }

  private deleteManyRaw(keys: readonly K[]): void {
    if (!BATCH_DELETE.has(this.info.type)) {
      for (const k of keys) this.deleteOne(k);
      return;
    }
    const ks = this.info.keySize;
    const buf = Buffer.alloc(keys.length * ks);
    keys.forEach((k, i) => this.key.encode(k, buf.subarray(i * ks, (i + 1) * ks)));
    const count = [keys.length];
    const r = lib.bpf_map_delete_batch(this.fd, buf, count, batchOpts) as number;
    // The batch stops at the first absent key (ENOENT): finish one by one.
    if (r === -ENOENT) {
      for (const k of keys.slice(count[0])) this.deleteOne(k);
      return;
    }
    checkWrite(`delete from map ${this.name} in batch`, this.fd, this.name, r);
  }

  /**
   * Whether the values are reachable through memory: a BPF_F_MMAPABLE array,
   * whose value i the kernel keeps at byte i * round_up(value size, 8).
   */
  get mmapable(): boolean {
    return this.info.type === MapType.ARRAY && ((this.info.flags ?? 0) & BPF_F_MMAPABLE) !== 0;
  }

  /** Map the pages that hold values start..start+count-1 and run fn with each value's byte offset. */
  private mapped<T>(start: number, count: number, fn: (mem: Buffer, at: (i: number) => number) => T): T {
    const elem = (this.info.valueSize + 7) & ~7;
    const from = Math.floor((start * elem) / PAGE_SIZE) * PAGE_SIZE;
    const to = Math.ceil(((start + count) * elem) / PAGE_SIZE) * PAGE_SIZE;
    const delta = start * elem - from;
    return withMappedMap(this.fd, from, to - from, (ab) => fn(Buffer.from(ab), (i) => delta + i * elem), this.name);
  }

  /**
   * {@link mapped} for arrays of u32: `u32[at + i * 2]` is value start + i
   * (each value takes 8 bytes; host byte order, as the kernel stores it).
   */
  private mappedU32<T>(start: number, count: number, fn: (u32: Uint32Array, at: number) => T): T {
    // A range inside one window (a rule's table: 8 KiB) uses a mapping kept from before: an mmap and
    // munmap per change cost ~50 us each time (the munmap flushes the TLBs of Node's other threads).
    const win = Math.floor((start * 8) / WINDOW) * WINDOW;
    const mapLen = Math.ceil((this.info.maxEntries * 8) / PAGE_SIZE) * PAGE_SIZE;
    const len = Math.min(WINDOW, mapLen - win);
    if ((start + count) * 8 <= win + len) {
      let w = this.windows.get(win);
      if (w)
        this.windows.delete(win); // most recent last
      else w = { m: mapPages(this.fd, win, len, this.name), u32: undefined as unknown as Uint32Array };
      w.u32 ??= new Uint32Array(w.m.mem);
      this.windows.set(win, w);
      if (this.windows.size > WINDOWS) {
        const [oldest, o] = this.windows.entries().next().value!;
        this.windows.delete(oldest);
        unmapPages(o.m);
      }
      return fn(w.u32, (start * 8 - win) / 4);
    }
    const from = Math.floor((start * 8) / PAGE_SIZE) * PAGE_SIZE;
    const to = Math.ceil(((start + count) * 8) / PAGE_SIZE) * PAGE_SIZE;
    return withMappedMap(this.fd, from, to - from, (ab) => fn(new Uint32Array(ab), (start * 8 - from) / 4), this.name);
  }

  /** Windows of an mmapable array kept mapped (byte offset -> mapping), oldest first. */
  private readonly windows = new Map<number, { m: Mapping; u32: Uint32Array }>();

  private checkRange(start: number, count: number, op: string): void {
    if (this.info.type !== MapType.ARRAY || start < 0 || start + count > this.info.maxEntries) {
      throw new KernelError(
        `${op} map ${this.name}`,
        7,
        [],
        `keys ${start}..${start + count - 1} of an array of ${this.info.maxEntries}`,
      );
    }
  }

  /**
   * The raw values of keys start..start+count-1 of an array (not per-CPU),
   * packed at the value size: copied from memory when the map is mmapable
   * (80 MB of rings in ~50 ms), otherwise read with BPF_MAP_LOOKUP_BATCH
   * (~0.5 µs a value on kernel 6.18, still far below a lookup each).
   */
  getRangeRaw(start: number, count: number): Buffer {
    this.checkRange(start, count, 'read');
    const vs = this.info.valueSize;
    const out = Buffer.alloc(count * vs);
    if (count === 0) return out;
    if (this.perCpu) throw new KernelError(`read map ${this.name}`, 22, [], 'a per-CPU map');
    if (this.mmapable) {
      this.mapped(start, count, (mem, at) => {
        for (let i = 0; i < count; i++) mem.copy(out, i * vs, at(i), at(i) + vs);
      });
      return out;
    }
    const keys = Buffer.alloc(count * 4);
    let done = 0;
    // in_batch is the key before the first one wanted (a walk from key 0 when start is 0).
    let inBatch: Buffer | null = start > 0 ? Buffer.from(Uint32Array.of(start - 1).buffer) : null;
    while (done < count) {
      const n = [count - done];
      const outBatch = Buffer.alloc(4);
      const r = lib.bpf_map_lookup_batch(
        this.fd,
        inBatch,
        outBatch,
        keys.subarray(done * 4),
        out.subarray(done * vs),
        n,
        batchOpts,
      ) as number;
      if (r < 0 && r !== -ENOENT) check(`read map ${this.name} in batches`, r);
      done += n[0];
      if (r === -ENOENT || n[0] === 0) break;
      inBatch = outBatch;
    }
    return out;
  }

  /** The values of keys start..start+count-1 of an array, decoded (see {@link getRangeRaw}). */
  getRange(start: number, count: number): V[] {
    const raw = this.getRangeRaw(start, count);
    const vs = this.info.valueSize;
    return Array.from({ length: count }, (_, i) => this.value.decode(raw.subarray(i * vs, (i + 1) * vs)));
  }

  /** The u32 values of keys start..start+count-1 of an array of u32 (see {@link getRangeRaw}). */
  getRangeU32(start: number, count: number): Uint32Array {
    if (this.info.valueSize !== 4) throw new KernelError(`read map ${this.name}`, 22, [], 'values are not u32');
    if (this.mmapable && count > 0) {
      this.checkRange(start, count, 'read');
      const out = new Uint32Array(count);
      this.mappedU32(start, count, (u32, at) => {
        for (let i = 0; i < count; i++) out[i] = u32[at + 2 * i];
      });
      return out;
    }
    const raw = this.getRangeRaw(start, count);
    const out = new Uint32Array(count);
    for (let i = 0; i < count; i++) out[i] = raw.readUInt32LE(i * 4);
    return out;
  }

  /**
   * Visit the u32 values of many ranges of an array of u32 with one mapping
   * of the pages from the first to the last (mmapable maps; otherwise one
   * batch read per range). `visit` gets a scratch array that is overwritten
   * for the next range: copy what must outlive the call. `inPlace`: an
   * mmapable map's values are not copied out: `visit` gets the mapped words
   * themselves, value j at `values[j * stride]` (stride 2: array values are
   * 8 bytes apart), valid only during the call.
   */
  visitRangesU32(
    ranges: readonly [start: number, count: number][],
    visit: (i: number, values: Uint32Array, stride: number) => void,
    inPlace = false,
  ): void {
    if (ranges.length === 0) return;
    if (this.info.valueSize !== 4) throw new KernelError(`read map ${this.name}`, 22, [], 'values are not u32');
    if (!this.mmapable) {
      ranges.forEach(([start, count], i) => visit(i, this.getRangeU32(start, count), 1));
      return;
    }
    let lo = Infinity;
    let hi = 0;
    for (const [start, count] of ranges) {
      this.checkRange(start, count, 'read');
      lo = Math.min(lo, start);
      hi = Math.max(hi, start + count);
    }
    const scratch = new Uint32Array(inPlace ? 0 : Math.max(...ranges.map(([, c]) => c)));
    this.mappedU32(lo, hi - lo, (u32, at) => {
      ranges.forEach(([start, count], i) => {
        const base = at + 2 * (start - lo);
        if (inPlace) return visit(i, u32.subarray(base, base + 2 * count), 2);
        const view = scratch.subarray(0, count);
        for (let j = 0; j < count; j++) view[j] = u32[base + 2 * j];
        visit(i, view, 1);
      });
    });
  }

  /**
   * Write u32 values at keys start..start+values.length-1 of an array of
   * u32: aligned 4-byte stores into the mapped pages when the map is mmapable
   * (each one atomic for the XDP program, as an update is), otherwise one
   * BPF_MAP_UPDATE_BATCH.
   */
  putRangeU32(start: number, values: ArrayLike<number>): void {
    const count = values.length;
    this.checkRange(start, count, 'update');
    if (count === 0) return;
    if (this.info.valueSize !== 4) throw new KernelError(`update map ${this.name}`, 22, [], 'values are not u32');
    if (!this.mmapable) {
      this.putMany(Array.from({ length: count }, (_, i) => [start + i, values[i]] as unknown as [K, V]));
      return;
    }
    dataplaneSpan(
      'bpf.map.mmap_update',
      () => this.spanAttrs('mmap_update', count),
      () =>
        this.mappedU32(start, count, (u32, at) => {
          for (let i = 0; i < count; i++) u32[at + 2 * i] = values[i];
        }),
    );
  }

  /** Close the descriptor (idempotent). Pinned maps stay in the kernel. */
  close(): void {
    for (const w of this.windows.values()) unmapPages(w.m);
    this.windows.clear();
    if (this.fdOrClosed >= 0 && this.ownsFd) closeFd(this.fdOrClosed);
    this.fdOrClosed = -1;
  }
}

const MAP_INFO_SIZE = 88; // struct bpf_map_info up to map_extra

/** Ask the kernel what map a descriptor is. */
export function mapInfo(fd: number, what: string): MapInfo {
  const buf = Buffer.alloc(MAP_INFO_SIZE);
  const len = [MAP_INFO_SIZE];
  check(`get info of map ${what}`, lib.bpf_obj_get_info_by_fd(fd, buf, len) as number);
  const nameEnd = buf.indexOf(0, 24);
  return {
    type: buf.readUInt32LE(0),
    id: buf.readUInt32LE(4),
    keySize: buf.readUInt32LE(8),
    valueSize: buf.readUInt32LE(12),
    maxEntries: buf.readUInt32LE(16),
    flags: buf.readUInt32LE(20),
    name: buf.subarray(24, nameEnd < 0 || nameEnd > 40 ? 40 : nameEnd).toString(),
  };
}

/** Open a pinned map by its bpffs path (the caller closes it). Throws if its layout is not the codecs'. */
export function openPinnedMap<K, V>(path: string, key: Codec<K>, value: Codec<V>): BpfMap<K, V> {
  const fd = check(`open pinned map ${path}`, lib.bpf_obj_get(path) as number);
  try {
    return new BpfMap(mapInfo(fd, path), fd, key, value);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
}

/**
 * How many keys the (hash-type) map pinned at `path` holds, whatever its key layout (an older object's
 * maps included): walked with BPF_MAP_GET_NEXT_KEY, nothing read or written. undefined when nothing is
 * pinned there.
 */
export function countPinnedKeys(path: string): number | undefined {
  const fd = lib.bpf_obj_get(path) as number;
  if (fd === -ENOENT) return undefined;
  check(`open pinned map ${path}`, fd);
  try {
    const info = mapInfo(fd, path);
    if (ARRAYS.has(info.type)) throw new KernelError(`count keys of ${path}`, 22, [], 'an array map has every key');
    let prev: Buffer | null = null;
    let next = Buffer.alloc(info.keySize);
    let n = 0;
    for (;;) {
      const r = lib.bpf_map_get_next_key(fd, prev, next) as number;
      if (r === -ENOENT) return n;
      check(`iterate map ${path}`, r);
      n++;
      prev = next;
      next = Buffer.alloc(info.keySize);
    }
  } finally {
    closeFd(fd);
  }
}

/** Whether `n` words of `words` from `at` are all zero. */
function isZero(words: Uint32Array, at: number, n: number): boolean {
  for (let j = 0; j < n; j++) if (words[at + j] !== 0) return false;
  return true;
}
