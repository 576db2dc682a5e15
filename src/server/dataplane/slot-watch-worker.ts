/**
 * The thread of slot-watch.ts. With the tracepoint programs of bpf/xdpctl-watch.bpf.c (init.seen), it looks at
 * their counters through a read-only mapping every `pollMs` and posts the slots and ids whose counter moved (a
 * write through bpf(): bpftool map update, libbpf, ours), and reads every slot only at its first look, every
 * `safetyMs`, after writes the programs could not name, when slots or ids come in use, and every `periodMs` while
 * another process that mapped rule_ring writable lives (a store through a mapping cannot be told: only the mapping can). Without them it reads
 * every slot every `periodMs`. A read: the rule entries (rule_cfg, one batch), backend tables (rule_ring, through
 * a read-only mapping of its pages) and backend entries (backends, one batch) of the slots and ids in use; it
 * keeps one print per slot and per backend id and posts those whose print moved since its last read (slots and ids
 * below the highest in use, held or free; with the programs, a counter that moved is posted for any slot or id).
 * It decides nothing and writes nothing: the main thread compares the rules they belong to, and zeroes what was
 * written into a slot or id no rule holds (core/kernel-check.ts quickCheck, clearFreeEntries). Reading 10 000 tables of 1 031 ids here keeps that work off the daemon's event loop (on it,
 * UpdateRule p50 went from 14 ms to 546 ms with 10 000 rules); reading them every 0.4 s cost ~9% of one CPU.
 *
 * Owns the descriptors it is given (duplicates: closed by the main thread once this thread has exited) and
 * the mappings it makes (unmapped on `stop`).
 */
import { existsSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';

import koffi from 'koffi';

import { lib, MapBatchOpts, PAGE_SIZE, sizeOf } from './libbpf.js';
import {
  pauseAfter,
  printBytes,
  printRing,
  type WatchInit,
  type WatchReport,
  type WatchRequest,
  WATCH_GEN,
  WATCH_MMAP_GEN,
  WATCH_MMAP_TGID,
  WATCH_MMAP_TGIDS,
  WATCH_OVERFLOW,
  WATCH_SLOT0,
} from './slot-watch-print.js';

const init = workerData as WatchInit;
const ENOENT = 2;
const batchOpts = { sz: sizeOf(MapBatchOpts), elem_flags: 0n, flags: 0n };

/** What to read: slots 0..slots-1, backend ids 0..backends-1 (the main thread's high-water marks). */
let slots = 0;
let backends = 0;
let stopping = false;
/** Prints of the last read, of the first `knownSlots` slots and `knownBackends` ids (the others: new, reported). */
let slotPrints: Uint32Array = new Uint32Array(0);
let backendPrints: Uint32Array = new Uint32Array(0);
let knownSlots = 0;
let knownBackends = 0;
/** The longest recent read (ms), as the main thread keeps it. */
let readMs = 0;
/**
 * Reported at the next read whatever their print: the main thread rewrote them (a repair). Another tool that
 * writes its bytes back before that read leaves the print the last read saw: without this, a table that another
 * tool and a repair set in turn (a fight) would look unmoved at every read after the first.
 */
const againSlots = new Set<number>();
const againBackends = new Set<number>();
let mapping: { addr: unknown; len: number; u32: Uint32Array } | undefined;

/** Buffers kept from one read to the next (by descriptor): a read makes no garbage but its small arguments. */
const kept = new Map<number, { out: Buffer; keys: Buffer }>();
const inKey = Buffer.alloc(4);
const outKey = Buffer.alloc(4);

/** Values 0..count-1 of an array map, packed at `size` bytes (BPF_MAP_LOOKUP_BATCH; the kernel's copy). */
function readArray(fd: number, count: number, size: number): Buffer {
  let k = kept.get(fd);
  if (!k || k.out.length < count * size) {
    k = { out: Buffer.alloc(count * size * 2), keys: Buffer.alloc(count * 4 * 2) };
    kept.set(fd, k);
  }
  const { out, keys } = k;
  let done = 0;
  let inBatch: Buffer | null = null;
  while (done < count) {
    const n = [count - done];
    const outBatch: Buffer = inBatch === outKey ? inKey : outKey;
    const r = lib.bpf_map_lookup_batch(
      fd,
      inBatch,
      outBatch,
      keys.subarray(done * 4),
      out.subarray(done * size),
      n,
      batchOpts,
    ) as number;
    if (r < 0 && r !== -ENOENT) throw new Error(`read map in batches: errno ${r === -1 ? koffi.errno() : -r}`);
    done += n[0];
    if (r === -ENOENT || n[0] === 0) break;
    inBatch = outBatch;
  }
  return out.subarray(0, count * size);
}

/** The ring's pages of slots 0..slots-1, mapped read-only (kept until the range grows or a stop). */
function ringWords(): Uint32Array {
  const len = Math.ceil((slots * init.ringSize * 8) / PAGE_SIZE) * PAGE_SIZE;
  if (mapping && mapping.len >= len) return mapping.u32;
  unmap();
  const addr: unknown = lib.mmap(null, len, 1 /* PROT_READ */, 1 /* MAP_SHARED */, init.ring, 0);
  if (addr === null || koffi.address(addr) === 0xffffffffffffffffn)
    throw new Error(`map rule_ring into memory: errno ${koffi.errno()}`);
  mapping = { addr, len, u32: new Uint32Array(koffi.view(addr, len)) };
  return mapping.u32;
}

function unmap(): void {
  if (mapping) lib.munmap(mapping.addr, mapping.len);
  mapping = undefined;
}

/** One read of every slot and id in use; what moved is posted, with `alsoSlots` and `alsoIds` (told moved). */
function scan(alsoSlots: number[] = [], alsoIds: number[] = []): void {
  const started = performance.now();
  const n = slots;
  const nb = backends;
  const cfg = n ? readArray(init.cfg, n, init.cfgSize) : Buffer.alloc(0);
  const ring = n ? ringWords() : new Uint32Array(0);
  const moved = new Set(alsoSlots);
  if (slotPrints.length < n) slotPrints = grow(slotPrints, n);
  for (let s = 0; s < n; s++) {
    const h = printRing(printBytes(cfg, s * init.cfgSize, init.cfgSize), ring, s * init.ringSize * 2, init.ringSize);
    if (s >= knownSlots || slotPrints[s] !== h || againSlots.has(s)) moved.add(s);
    slotPrints[s] = h;
  }
  knownSlots = n;
  const raw = nb ? readArray(init.backends, nb, init.backendSize) : Buffer.alloc(0);
  const movedIds = new Set(alsoIds);
  if (backendPrints.length < nb) backendPrints = grow(backendPrints, nb);
  for (let id = 0; id < nb; id++) {
    const h = printBytes(raw, id * init.backendSize, init.backendSize);
    if (id >= knownBackends || backendPrints[id] !== h || againBackends.has(id)) movedIds.add(id);
    backendPrints[id] = h;
  }
  knownBackends = nb;
  againSlots.clear();
  againBackends.clear();
  const ms = performance.now() - started;
  readMs = Math.max(ms, readMs * 0.8);
  const report: WatchReport = { slots: [...moved], backends: [...movedIds], read: n, ms };
  parentPort!.postMessage(report);
}

function grow(a: Uint32Array, n: number): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}

/** watch_seen's counters (low 32 bits of each u64: a counter that differs from the last value seen moved). */
let seen: Uint32Array | undefined;
let seenMapping: { addr: unknown; len: number } | undefined;
let lastGen = 0;
let lastOverflow = 0;
let lastMmapGen = 0;
/** The counter values last seen, by slot and by backend id (every one the programs count: zeros at load). */
let slotCounts = new Uint32Array(0);
let backendCounts = new Uint32Array(0);
/**
 * Other processes that mapped rule_ring writable (process id, 0: of another pid namespace) -> until when (ms,
 * performance.now) to read every table at least: a store through a mapping calls no kernel code, so it cannot be
 * told; while one lives its tables are read every `periodMs` as without the programs.
 */
const mappers = new Map<number, number>();
/**
 * Every table is read for at least FOLLOWED_MS after a mapping (the process id read may be another mapping's when
 * two came at once), and UNFOLLOWED_MS after one by a process of another pid namespace (not followed).
 */
const FOLLOWED_MS = 2_000;
const UNFOLLOWED_MS = 30_000;
let lastFull = -Infinity;
let lastScan = -Infinity;

function mapSeen(fd: number, entries: number): Uint32Array {
  const len = Math.ceil((entries * 8) / PAGE_SIZE) * PAGE_SIZE;
  const addr: unknown = lib.mmap(null, len, 1 /* PROT_READ */, 1 /* MAP_SHARED */, fd, 0);
  if (addr === null || koffi.address(addr) === 0xffffffffffffffffn)
    throw new Error(`map watch_seen into memory: errno ${koffi.errno()}`);
  seenMapping = { addr, len };
  return new Uint32Array(koffi.view(addr, len));
}

const alive = (pid: number): boolean => pid > 0 && existsSync(`/proc/${pid}`);

/**
 * One look at the counters (with the programs): the slots and ids whose counter moved are posted; every slot is
 * read at the first look, each `safetyMs`, after a write the programs could not name, and every `periodMs` while
 * another process may hold a writable mapping of rule_ring or slots or ids newly in use were not read yet.
 * Returns the pause until the next look.
 */
function look(opts: NonNullable<WatchInit['seen']>): number {
  const now = performance.now();
  seen ??= mapSeen(opts.fd, opts.entries);
  if (slotCounts.length === 0) {
    slotCounts = new Uint32Array(opts.cfgSlots);
    backendCounts = new Uint32Array(opts.entries - WATCH_SLOT0 - opts.cfgSlots);
  }
  let full = now - lastFull >= opts.safetyMs;
  const moved: number[] = [];
  const movedIds: number[] = [];
  const gen = seen[2 * WATCH_GEN];
  if (gen !== lastGen) {
    lastGen = gen;
    const over = seen[2 * WATCH_OVERFLOW];
    if (over !== lastOverflow) full = true;
    lastOverflow = over;
    const mg = seen[2 * WATCH_MMAP_GEN];
    for (let g = Math.max(lastMmapGen, mg - WATCH_MMAP_TGIDS); g < mg; g++) {
      const pid = seen[2 * (WATCH_MMAP_TGID + (g % WATCH_MMAP_TGIDS))];
      mappers.set(pid, Math.max(mappers.get(pid) ?? 0, now + (pid ? FOLLOWED_MS : UNFOLLOWED_MS)));
    }
    lastMmapGen = mg;
    // Every counter that moved is reported, of slots and ids beyond those in use too: the main thread zeroes
    // another tool's write into a slot or id no rule holds (core/kernel-check.ts clearFreeEntries).
    for (let s = 0; s < slotCounts.length; s++) {
      const v = seen[2 * (WATCH_SLOT0 + s)];
      if (v !== slotCounts[s]) moved.push(s);
      slotCounts[s] = v;
    }
    const base = WATCH_SLOT0 + opts.cfgSlots;
    for (let id = 0; id < backendCounts.length; id++) {
      const v = seen[2 * (base + id)];
      if (v !== backendCounts[id]) movedIds.push(id);
      backendCounts[id] = v;
    }
  }
  // Mappers gone (or past their time) are forgotten after one more read: it sees what they wrote last.
  const gone = [...mappers].filter(([pid, until]) => now >= until && !alive(pid)).map(([pid]) => pid);
  // Slots or ids newly in use are read soon (as often as without the programs): their first prints are what a
  // later read compares with, and a first read long after would take every one of them for moved.
  const grown = slots > knownSlots || backends > knownBackends;
  const due = (mappers.size > 0 || grown) && now - lastScan >= pauseAfter(readMs, init.periodMs);
  if (full || due) {
    scan(moved, movedIds);
    lastScan = performance.now();
    if (full) lastFull = lastScan;
    for (const pid of gone) mappers.delete(pid);
  } else if (moved.length || movedIds.length || againSlots.size || againBackends.size) {
    // Rewritten by us (a repair): reported whatever the programs saw; cleared only by a read, while another
    // process may be writing through a mapping (its bytes back before that read would look unmoved).
    for (const s of againSlots) moved.push(s);
    for (const id of againBackends) movedIds.push(id);
    if (!mappers.size) {
      againSlots.clear();
      againBackends.clear();
    }
    parentPort!.postMessage({ slots: moved, backends: movedIds } satisfies WatchReport);
  }
  return opts.pollMs;
}

function loop(): void {
  if (stopping) return;
  const t0 = performance.now();
  let pause: number;
  try {
    if (init.seen) pause = look(init.seen);
    else {
      scan();
      pause = pauseAfter(performance.now() - t0, init.periodMs);
    }
  } catch (e) {
    parentPort!.postMessage({ error: (e as Error).message } satisfies WatchReport);
    return; // said: the main thread's full comparison goes on without it
  }
  setTimeout(loop, pause);
}

parentPort!.on('message', (m: WatchRequest) => {
  if (m.op === 'range') {
    slots = m.slots;
    backends = m.backends;
  } else if (m.op === 'again') {
    for (const s of m.slots) againSlots.add(s);
    for (const id of m.backends) againBackends.add(id);
  } else if (m.op === 'stop') {
    stopping = true;
    unmap();
    if (seenMapping) lib.munmap(seenMapping.addr, seenMapping.len);
    seenMapping = undefined;
    seen = undefined;
    parentPort!.close();
  }
});
setTimeout(loop, 0);
