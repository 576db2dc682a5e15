/**
 * Another tool's writes into a rule's rule entry (rule_cfg), backend table (rule_ring) or backend entries
 * (backends), seen off the event loop: a worker thread (slot-watch-worker.ts) posts the slots and ids that moved;
 * the reconciler takes them at each pass (Dataplane watchSlots) and compares only the rules they belong to
 * (core/kernel-check.ts quickCheck), and zeroes what it finds in slots and ids no rule holds (clearFreeEntries). Our
 * own writes move them too (compared once, found right). Reading every
 * table on the event loop at each pass held it ~180-480 ms with 10 000 rules; bounded reads there took ~18 s to
 * cover them all.
 *
 * Two modes, said by `mode` and `why`: `told` when the tracepoint programs of bpf/xdpctl-watch.bpf.c
 * (slot-watch-probe.ts) attached: writes through bpf() are told by counters, every slot is read every 30 s and
 * while another process maps rule_ring writable; `reading` otherwise (the object missing, a kernel that refuses
 * the programs): every slot read every ~0.4 s (with 10 000 rules 5-9% of one CPU).
 *
 * Owns the thread, the programs (detached at close) and the duplicates of the descriptors it reads through
 * (closed once the thread has exited).
 */
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';

import { RING_SIZE } from './codec.js';
import type { DatapathMaps } from './datapath.js';
import { closeFd, lib } from './libbpf.js';
import { pauseAfter, type WatchInit, type WatchReport, type WatchRequest } from './slot-watch-print.js';
import { WatchProbe } from './slot-watch-probe.js';

/** Pause between two reads of the watcher (ms; longer after a long read: pauseAfter): a write is seen within it plus one read. */
export const WATCH_PERIOD_MS = 400;
/** With the tracepoint programs: how often the thread looks at their counters, and reads every slot anyway (ms). */
export const WATCH_POLL_MS = 100;
export const WATCH_SAFETY_MS = 30_000;
/** WATCH_SAFETY_MS, or XDPCTL_WATCH_SAFETY_MS from the environment (tests that must see no read in a while). */
export const watchSafetyMs = (): number => Number(process.env.XDPCTL_WATCH_SAFETY_MS) || WATCH_SAFETY_MS;
const F_DUPFD_CLOEXEC = 1030;

/** What moved since the last take, and how long the watcher takes to read everything once. */
export interface MovedSlots {
  slots: Set<number>;
  backends: Set<number>;
  /** Time from a write to its report at worst: the pause plus the longest recent read (ms). */
  coverMs: number;
  /** Reads completed since the last take, and the longest recent read (ms). */
  reads: number;
  readMs: number;
  /** Why the watcher stopped reading (it is not restarted: the full comparison still runs). */
  error?: string;
}

export class SlotWatch {
  private readonly worker: Worker;
  private readonly fds: number[];
  private slots = new Set<number>();
  private backends = new Set<number>();
  private readMs = 0;
  private reads = 0;
  private error?: string;
  private sent = '';
  private stopped = false;

  /** `told`: the tracepoint programs tell of writes; `reading`: every slot is read every ~0.4 s (`why`). */
  readonly mode: 'told' | 'reading';
  readonly why?: string;
  private probe?: WatchProbe;

  /** `probePath`: bpf/xdpctl-watch.bpf.o as built (undefined: none, the thread reads every slot). */
  constructor(
    readonly maps: Pick<DatapathMaps, 'ruleCfg' | 'ruleRing' | 'backends'>,
    probePath?: string,
  ) {
    const dup = (fd: number, what: string) => {
      const r = lib.fcntl(fd, F_DUPFD_CLOEXEC, 'int', 0) as number;
      if (r < 0) throw new Error(`duplicate the descriptor of map ${what}: fcntl failed`);
      return r;
    };
    this.fds = [];
    try {
      this.fds.push(
        dup(maps.ruleRing.fd, 'rule_ring'),
        dup(maps.ruleCfg.fd, 'rule_cfg'),
        dup(maps.backends.fd, 'backends'),
      );
    } catch (e) {
      for (const fd of this.fds) closeFd(fd);
      throw e;
    }
    let why = probePath === undefined ? 'no tracepoint object given' : undefined;
    if (probePath !== undefined) {
      try {
        this.probe = WatchProbe.open(probePath, maps);
        this.fds.push(dup(this.probe.seenFd, 'watch_seen'));
      } catch (e) {
        this.probe?.close();
        this.probe = undefined;
        why = (e as Error).message;
      }
    }
    this.mode = this.probe ? 'told' : 'reading';
    this.why = why;
    const init: WatchInit = {
      ring: this.fds[0],
      cfg: this.fds[1],
      backends: this.fds[2],
      ringSize: RING_SIZE,
      cfgSize: maps.ruleCfg.info.valueSize,
      backendSize: maps.backends.info.valueSize,
      periodMs: WATCH_PERIOD_MS,
      seen: this.probe && {
        fd: this.fds[3],
        entries: this.probe.entries,
        cfgSlots: maps.ruleCfg.info.maxEntries,
        pollMs: WATCH_POLL_MS,
        safetyMs: watchSafetyMs(),
      },
    };
    // The compiled .js beside this one, or the .ts under tsx (tests that load the sources).
    const self = fileURLToPath(import.meta.url);
    this.worker = new Worker(new URL(`./slot-watch-worker${extname(self)}`, import.meta.url), { workerData: init });
    this.worker.on('message', (r: WatchReport) => {
      if (r.error) this.error = r.error;
      if (r.read !== undefined) this.reads++;
      for (const s of r.slots ?? []) this.slots.add(s);
      for (const id of r.backends ?? []) this.backends.add(id);
      // The longest recent read (a slow one counts until reads are fast again for a while).
      if (r.ms !== undefined) this.readMs = Math.max(r.ms, this.readMs * 0.8);
    });
    this.worker.on('error', (e) => (this.error = `the thread failed: ${e.message}`));
    this.worker.on('exit', () => {
      this.error ??= 'the thread exited';
      this.probe?.close();
      for (const fd of this.fds.splice(0)) closeFd(fd);
    });
    this.worker.unref();
  }

  /** Whether it reads these maps (the datapath may have opened others since). */
  watches(maps: Pick<DatapathMaps, 'ruleCfg' | 'ruleRing' | 'backends'>): boolean {
    return (
      maps.ruleCfg === this.maps.ruleCfg && maps.ruleRing === this.maps.ruleRing && maps.backends === this.maps.backends
    );
  }

  /** Read slots 0..slots-1 and backend ids 0..backends-1 from the next read on. */
  range(slots: number, backends: number): void {
    const key = `${slots}/${backends}`;
    if (this.stopped || key === this.sent) return;
    this.sent = key;
    this.worker.postMessage({ op: 'range', slots, backends } satisfies WatchRequest);
  }

  /** Report these at the next read that begins after now, whatever their bytes (we rewrote them). */
  again(slots: number[], backends: number[]): void {
    if (this.stopped || (!slots.length && !backends.length)) return;
    this.worker.postMessage({ op: 'again', slots, backends } satisfies WatchRequest);
  }

  /** What moved since the last take (then forgotten). */
  take(): MovedSlots {
    const out = {
      slots: this.slots,
      backends: this.backends,
      reads: this.reads,
      readMs: this.readMs,
      coverMs: pauseAfter(this.readMs, WATCH_PERIOD_MS) + this.readMs,
      error: this.error,
    };
    this.reads = 0;
    this.slots = new Set();
    this.backends = new Set();
    return out;
  }

  /** Detach the programs and stop the thread (idempotent); its descriptors are closed once it has exited. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.probe?.close();
    this.probe = undefined;
    this.worker.postMessage({ op: 'stop' } satisfies WatchRequest);
  }
}
