/**
 * Counter streaming without per-watcher kernel reads: one timer ticks every
 * `baseMs`, by the clock (a late tick does not delay the next); on a tick
 * where at least one watcher is due, the kernel is read once and every due
 * watcher gets that same snapshot. A watcher gets its first snapshot at once
 * and then one every interval (the first gap may be up to a tenth shorter):
 * watchers of one interval fall on at most ten phases of it, so 1000 watchers
 * at 1 s cost at most ten reads per second. A slow client skips snapshots
 * instead of queueing them: a watcher that is not waiting when it is due (its
 * stream is blocked on flow control) is only marked due, and gets the latest
 * snapshot when it asks again. No read is made, and nothing is kept, for
 * watchers that cannot take it: reading on every tick for blocked watchers
 * turned each tick's snapshot into old-space garbage (V8 pretenures these
 * allocations), ~1-2 MB/s of RSS until the next full GC.
 *
 * A read is shared only while the desired state is what it was when the read
 * was made (`version`): after a rule or link is created, updated or deleted,
 * the next unary read or metric export reads the kernel again, so a deleted
 * rule is gone from it and a new one is in it (docs/deployment.md).
 *
 * A read may take several turns of the event loop (Controller.readCounters
 * reads 10 000 rules in slices): everyone who asks while one is under way,
 * with the desired state as it was when it began, gets that read when it
 * ends (one read per tick and per scrape, however many ask); a tick whose
 * watchers are due while a read is under way hands them that read.
 */
import { monotonicMs, type Clock } from './clock.js';
import type { CounterSnapshot } from './controller.js';
import { pacer } from './execute.js';

interface Watcher {
  every: number; // in ticks
  /** The next tick on which it is due; then every `every` ticks. */
  nextDue: number;
  /** Set while the watcher waits for its next snapshot. */
  wake?: () => void;
  /** Handed over with wake(). */
  pending?: CounterSnapshot;
  /** Was due while not waiting: takes the latest snapshot when it asks next. */
  missed?: boolean;
}

export class CounterHub {
  /** Kernel reads done so far (for tests and metrics). */
  reads = 0;
  private readonly watchers = new Set<Watcher>();
  private timer?: NodeJS.Timeout;
  private tick = 0;
  /** When tick 0 was, by the clock: tick n is due at t0 + n * baseMs. */
  private t0 = 0;
  private latest?: CounterSnapshot;
  /** When {@link latest}'s read began and ended, by the hub's clock (its age: a wall-clock step is no age). */
  private latestAt?: { began: number; ended: number };
  /** The read under way, the desired state's version and the clock when it began. */
  private inFlight?: { version?: number; began: number; done: Promise<CounterSnapshot> };
  /** When each snapshot's read ended, by the hub's clock (what a watcher must not be given twice: readAfter). */
  private readonly endedAt = new WeakMap<CounterSnapshot, number>();
  private closed = false;

  /**
   * @param baseMs the tick: intervals are whole ticks, so it bounds the error of an interval (WatchCounters
   *   promises the requested interval within 10 %: 10 ms ticks keep 100 ms, the shortest, exact, and any
   *   longer one within 5 %; 100 ms ticks made 0.25 s come every 0.3 s)
   * @param shareMs how old a snapshot unary reads may share (GetCounters, metric exports)
   * @param version the desired state's version now (Controller.desiredVersion): a snapshot whose `version`
   *   differs is not shared. Absent: snapshots are shared by age alone.
   * @param clock what ages and ticks are measured by: the monotonic clock (core/clock.ts); tests give their own
   */
  constructor(
    private readonly read: () => CounterSnapshot | Promise<CounterSnapshot>,
    readonly baseMs = 10,
    readonly shareMs = 100,
    private readonly version?: () => number,
    private readonly clock: Clock = monotonicMs,
  ) {}

  /** Whether `s` may be shared: read at most `maxAgeMs` ago, of the desired state as it is now. */
  private current(s: CounterSnapshot | undefined, maxAgeMs: number, inclusive: boolean): s is CounterSnapshot {
    if (!s || !this.latestAt) return false;
    const age = this.clock() - this.latestAt.ended;
    if (inclusive ? age > maxAgeMs : age >= maxAgeMs) return false;
    return s.version === undefined || this.version === undefined || s.version === this.version();
  }

  /** Closed for shutdown: watches have ended. */
  get isClosed(): boolean {
    return this.closed;
  }

  get watcherCount(): number {
    return this.watchers.size;
  }

  /** A fresh snapshot for unary reads (shares a read made in the last tick, of the desired state as it is). */
  snapshot(): Promise<CounterSnapshot> {
    if (this.current(this.latest, this.shareMs, false)) return Promise.resolve(this.latest);
    return this.readNow();
  }

  /**
   * The latest snapshot if it is at most `maxAgeMs` old and the desired state
   * has not changed since it was read, else a fresh read (for metric exports:
   * while watches run, exports reuse their reads).
   */
  recent(maxAgeMs: number): Promise<CounterSnapshot> {
    if (this.current(this.latest, maxAgeMs, true)) return Promise.resolve(this.latest);
    return this.readNow();
  }

  /**
   * A read that began after `s`'s had ended (the one under way if it did, else a new one): for a watcher that was
   * given `s`, so that no watcher gets one read twice (two samples with one time: a slow consumer, or a read longer
   * than the interval, found the last read still "recent" or still in flight when its next sample was due).
   */
  private readAfter(s: CounterSnapshot): Promise<CounterSnapshot> {
    return this.readNow(this.endedAt.get(s) ?? this.clock());
  }

  /** snapshot(), or undefined when the read fails (the next tick retries). */
  private async tryLatest(): Promise<CounterSnapshot | undefined> {
    try {
      return await this.snapshot();
    } catch {
      return undefined;
    }
  }

  /**
   * A read: the one under way if it began at the desired state's current version (and, given `after`, at or after
   * that time by the hub's clock), else a new one.
   */
  private readNow(after?: number): Promise<CounterSnapshot> {
    const version = this.version?.();
    const f = this.inFlight;
    if (f && f.version === version && (after === undefined || f.began >= after)) return f.done;
    this.reads++;
    const began = this.clock();
    const flight = {
      version,
      began,
      done: (async () => {
        const snap = await this.read();
        this.endedAt.set(snap, this.clock());
        // A read that began after the kept one (reads overlap only across a change) replaces it.
        if (!this.latestAt || this.latestAt.began <= began) {
          this.latest = snap;
          this.latestAt = { began, ended: this.clock() };
        }
        return snap;
      })(),
    };
    this.inFlight = flight;
    const clear = () => {
      if (this.inFlight === flight) this.inFlight = undefined;
    };
    flight.done.then(clear, clear);
    return flight.done;
  }

  /**
   * The next tick at its time by the clock, not `baseMs` after the last one
   * ran: a timer that fires late (a busy event loop) must not make every
   * later sample late too (1 000 streams once got 980 samples a second).
   */
  private schedule(): void {
    const at = this.t0 + (this.tick + 1) * this.baseMs;
    this.timer = setTimeout(() => this.onTick(), Math.max(0, at - this.clock()));
  }

  private onTick(): void {
    // The tick the clock is at; a tick more than a whole period late is skipped (its watchers are due now).
    this.tick = Math.max(this.tick + 1, Math.floor((this.clock() - this.t0) / this.baseMs));
    if (this.watchers.size > 0) this.schedule();
    else this.timer = undefined;
    const due: Watcher[] = [];
    for (const w of this.watchers) {
      if (w.nextDue > this.tick) continue;
      while (w.nextDue <= this.tick) w.nextDue += w.every;
      if (w.wake) due.push(w);
      else w.missed = true; // still busy with (or blocked on) the previous one
    }
    if (due.length === 0) return;
    this.readNow().then(
      (snap) => {
        for (const w of due) {
          w.pending = snap;
          w.wake?.();
        }
      },
      () => undefined, // a failed read skips this tick; the next one retries
    );
  }

  /**
   * Snapshots every `intervalMs` (rounded to the tick), the first at once,
   * until `signal` aborts or the hub closes.
   */
  async *watch(intervalMs: number, signal: AbortSignal): AsyncGenerator<CounterSnapshot> {
    const every = Math.max(1, Math.round(intervalMs / this.baseMs));
    // The second snapshot comes one interval after the first (at once), within 10 %: the first due
    // tick is start + every, rounded down to a multiple of a tenth of the interval, so that watchers
    // of one interval fall on at most ten phases and still share their reads.
    const q = Math.max(1, Math.floor(every / 10));
    if (!this.timer) {
      this.t0 = this.clock() - this.tick * this.baseMs; // the ticks go on from now
      this.schedule();
    }
    const first = this.tick + every;
    const w: Watcher = { every, nextDue: first - (first % q) };
    this.watchers.add(w);
    const onAbort = () => w.wake?.();
    signal.addEventListener('abort', onAbort);
    // The last snapshot given: never given again (a sample is a read of its own, with a time of its own).
    let last: CounterSnapshot | undefined;
    const newer = async (s: CounterSnapshot | undefined) => {
      if (!s || s !== last) return s;
      try {
        return await this.readAfter(s);
      } catch {
        return undefined; // a failed read skips this tick; the next one retries
      }
    };
    try {
      yield (last = await this.snapshot());
      while (!signal.aborted && !this.closed) {
        if (w.missed) {
          // Due while its consumer was not reading: the latest snapshot now, no backlog.
          w.missed = false;
          const latest = await newer(await this.tryLatest());
          if (latest) {
            yield (last = latest);
            continue;
          }
        }
        await new Promise<void>((resolve) => (w.wake = resolve));
        w.wake = undefined;
        const pending = w.pending;
        w.pending = undefined;
        const snap = pending && (await newer(pending));
        if (snap && !signal.aborted && !this.closed) yield (last = snap);
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.watchers.delete(w);
      if (this.watchers.size === 0 && this.timer) {
        clearTimeout(this.timer);
        this.timer = undefined;
      }
    }
  }

  /** End every watch (shutdown). */
  close(): void {
    this.closed = true;
    for (const w of this.watchers) w.wake?.();
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** What the daemon's hub reads: the controller (Controller.readCounters, Controller.desiredVersion). */
export interface CounterSource {
  readCounters(pace: () => Promise<void>): Promise<CounterSnapshot>;
  readonly desiredVersion: number;
}

/**
 * The daemon's hub over the controller: every read in slices, with a pacer made per read (`makePace`; by
 * default core/execute.ts's, which yields to the event loop once 4 ms of a turn has passed: with 10 000
 * rules, one read in one turn held the event loop 150-290 ms, at every scrape, GetCounters and
 * WatchCounters tick), and shared while the desired state stays as it was.
 */
export function controllerHub(src: CounterSource, makePace: () => () => Promise<void> = () => pacer()): CounterHub {
  return new CounterHub(
    () => src.readCounters(makePace()),
    undefined,
    undefined,
    () => src.desiredVersion,
  );
}
