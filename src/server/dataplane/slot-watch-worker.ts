/**
 * The thread of slot-watch.ts: reads the rule entries (rule_cfg, one batch), backend tables (rule_ring,
 * through a read-only mapping of its pages) and backend entries (backends, one batch) of the slots and ids
 * in use, over and over, keeps one print per slot and per backend id, and posts the slots and ids whose print
 * moved since its last read. It decides nothing and writes nothing: the main thread compares the rules they
 * belong to (core/kernel-check.ts quickCheck). Reading 10 000 tables of 1 031 ids here keeps that work off
 * the daemon's event loop (on it, UpdateRule p50 went from 14 ms to 546 ms with 10 000 rules).
 *
 * Owns the descriptors it is given (duplicates: closed by the main thread once this thread has exited) and
 * the mapping it makes (unmapped on `stop`).
 */
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

/** One read of every slot and id in use; what moved is posted. */
function scan(): void {
  const started = performance.now();
  const n = slots;
  const nb = backends;
  const cfg = n ? readArray(init.cfg, n, init.cfgSize) : Buffer.alloc(0);
  const ring = n ? ringWords() : new Uint32Array(0);
  const moved: number[] = [];
  if (slotPrints.length < n) slotPrints = grow(slotPrints, n);
  for (let s = 0; s < n; s++) {
    const h = printRing(printBytes(cfg, s * init.cfgSize, init.cfgSize), ring, s * init.ringSize * 2, init.ringSize);
    if (s >= knownSlots || slotPrints[s] !== h || againSlots.has(s)) moved.push(s);
    slotPrints[s] = h;
  }
  knownSlots = n;
  const raw = nb ? readArray(init.backends, nb, init.backendSize) : Buffer.alloc(0);
  const movedIds: number[] = [];
  if (backendPrints.length < nb) backendPrints = grow(backendPrints, nb);
  for (let id = 0; id < nb; id++) {
    const h = printBytes(raw, id * init.backendSize, init.backendSize);
    if (id >= knownBackends || backendPrints[id] !== h || againBackends.has(id)) movedIds.push(id);
    backendPrints[id] = h;
  }
  knownBackends = nb;
  againSlots.clear();
  againBackends.clear();
  const report: WatchReport = { slots: moved, backends: movedIds, read: n, ms: performance.now() - started };
  parentPort!.postMessage(report);
}

function grow(a: Uint32Array, n: number): Uint32Array<ArrayBuffer> {
  const b = new Uint32Array(Math.max(n, a.length * 2));
  b.set(a);
  return b;
}

function loop(): void {
  if (stopping) return;
  const t0 = performance.now();
  try {
    scan();
  } catch (e) {
    parentPort!.postMessage({ error: (e as Error).message } satisfies WatchReport);
    return; // said: the main thread's full comparison goes on without it
  }
  setTimeout(loop, pauseAfter(performance.now() - t0, init.periodMs));
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
    parentPort!.close();
  }
});
setTimeout(loop, 0);
