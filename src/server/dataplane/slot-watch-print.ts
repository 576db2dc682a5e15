/**
 * What slot-watch.ts and its thread (slot-watch-worker.ts) share: the messages between them and the prints of
 * a rule slot (its rule entry's bytes and its table's ids) and of a backend entry. Pure: no kernel, no thread.
 */

/** The thread's start (workerData): descriptors of the maps (its own duplicates) and their shapes. */
export interface WatchInit {
  ring: number;
  cfg: number;
  backends: number;
  /** Ids a slot's table holds (RING_SIZE). */
  ringSize: number;
  cfgSize: number;
  backendSize: number;
  /** Pause between two reads (ms). */
  periodMs: number;
  /**
   * The counters of bpf/xdpctl-watch.bpf.c (watch_seen: a descriptor of the thread's own, `entries` u64 values;
   * slot counters from WATCH_SLOT0, then `cfgSlots` on, backend counters): the thread reads those instead of every
   * slot, and every slot only each `safetyMs` and while another process maps rule_ring writable. Absent: it reads
   * every slot every `periodMs`.
   */
  seen?: { fd: number; entries: number; cfgSlots: number; pollMs: number; safetyMs: number };
}

/** watch_seen's counters (bpf/xdpctl-watch.bpf.c): the generation, bumped after any of the others. */
export const WATCH_GEN = 0;
/** Writes the programs could not name (a batch of too many keys): read everything. */
export const WATCH_OVERFLOW = 1;
/** Other processes' writable mappings of rule_ring seen, and the process ids of the last WATCH_MMAP_TGIDS. */
export const WATCH_MMAP_GEN = 2;
export const WATCH_MMAP_TGID = 3;
export const WATCH_MMAP_TGIDS = 16;
/** The first slot's counter. */
export const WATCH_SLOT0 = WATCH_MMAP_TGID + WATCH_MMAP_TGIDS;

/**
 * Main thread -> watcher: what to read (slots 0..slots-1, ids 0..backends-1); slots and ids to report at the next
 * read whatever their print (`again`: the main thread rewrote them); or stop.
 */
export type WatchRequest =
  | { op: 'range'; slots: number; backends: number }
  | { op: 'again'; slots: number[]; backends: number[] }
  | { op: 'stop' };

/** Watcher -> main thread, after each read: what moved since the read before, or why it could not read. */
export interface WatchReport {
  slots?: number[];
  backends?: number[];
  /** Slots read. */
  read?: number;
  /** How long the read took (ms). */
  ms?: number;
  error?: string;
}

/**
 * The watcher's pause after a read that took `readMs`: `periodMs`, or twice the read when that is longer, so that
 * it takes at most a third of a CPU (a read of 10 000 tables took 50-600 ms on the loaded 2-vCPU CI machine).
 */
export const pauseAfter = (readMs: number, periodMs: number): number => Math.max(periodMs, 2 * readMs);

const SEED = 0x811c9dc5;

/** Fold one 32-bit word into a print (a multiply-rotate mix: a changed word changes the print). */
const mix = (h: number, w: number): number => {
  h = Math.imul(h ^ w, 0x9e3779b1);
  return ((h << 13) | (h >>> 19)) >>> 0;
};

/** The print of bytes at..at+len-1 of `b` (whole 32-bit words, then the rest byte by byte). */
export function printBytes(b: Uint8Array, at: number, len: number): number {
  let h = mix(SEED, len);
  let i = at;
  const end = at + len;
  for (; i + 4 <= end; i += 4) h = mix(h, b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24));
  for (; i < end; i++) h = mix(h, b[i]);
  return h;
}

/** `h` followed by `count` u32 ids of `u32` from `at`, 2 words apart (an mmapable array's values are 8 bytes apart). */
export function printRing(h: number, u32: Uint32Array, at: number, count: number): number {
  for (let j = 0; j < count; j++) h = mix(h, u32[at + 2 * j]);
  return h;
}
