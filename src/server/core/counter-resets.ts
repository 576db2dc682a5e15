/**
 * One detector for every counter the daemon serves (rules, backends, link directions): they only go up while
 * their object exists (counters.proto), so a counter seen lower than it was last seen was reset by something
 * else: another tool wrote its kernel entry (`bpftool map update pinned PIN/maps/rule_stats ...`). Nothing can
 * put back what it held. The daemon's own zeroing of an entry (a stats id given to a new object, a link
 * direction written anew) is no reset: the caller forgets the entry first ({@link CounterResets.forget}).
 *
 * A reset is:
 *  - logged (a warning naming the object and each counter that went down, before -> after), at most once per
 *    object per {@link RESET_LOG_MS} (a tool zeroing an entry in a loop makes one line per 10 s, the next one
 *    saying how many more there were);
 *  - counted, by kind (`xdpctl.counter_resets`, Prometheus `xdpctl_counter_resets_total{xdpctl_counter_kind}`;
 *    their sum also under `xdpctl.reconciler.events{xdpctl.event="counter_resets"}`);
 *  - among the object's warnings (GetRule / ListRules, ListLinks) for {@link RESET_WARNING_MS}, with its time;
 *  - the start of a new cumulative series: the object's series gets a new start time ({@link CounterResets.series}),
 *    which the OpenTelemetry export and every counters reply (RuleCounters.start_time, ...) carry, and from which
 *    WatchCounters computes rates and says `reset` (a decrease under the same start time would say the sum lost
 *    counts: the OTLP data model's cumulative sums, whose start time changes on a reset).
 *
 * Each series' start ({@link CounterResets.series}): when the daemon zeroed the entry for its object (its creation,
 * a re-creation under the same name included, and a link direction written anew, e.g. after an end was deleted and
 * made again: {@link CounterResets.forget}; the counts are from 0 then), when a
 * read first saw it go down (a reset: the counts are from the value that read saw), or, for an entry this daemon
 * found counting (kept in the pinned maps across a restart), its first read (the counts include what was counted
 * before, which this daemon cannot date).
 *
 * Reads are observed from every served read (Controller.readCounters) and from the reconciler's pass (link
 * directions, resync.ts), so that a reset is said even when nobody reads the counters.
 */
import type { Logger } from '../log.js';

export type CounterObjectKind = 'rule' | 'backend' | 'link';
export const COUNTER_OBJECT_KINDS: readonly CounterObjectKind[] = ['rule', 'backend', 'link'];

/** How long a reset stays among its object's warnings (ms). */
export const RESET_WARNING_MS = 3_600_000;
/** At most one log line per object in this long (ms); further resets in it are counted into the next line. */
export const RESET_LOG_MS = 10_000;

interface Reset {
  /** Wall clock (ms) of the latest reset. */
  at: number;
  /** Monotonic (ms) of the latest reset: the warning's age. */
  mono: number;
  /** The latest reset said. */
  text: string;
  /** Monotonic (ms) of the last log line for this object. */
  loggedAt: number;
  /** Resets since that line, not logged. */
  unsaid: number;
}

/** Where a series of counters began ({@link CounterResets.series}). */
export interface CounterSeries {
  /** Wall clock (ms). */
  start: number;
  /** The counters were 0 at `start` (the daemon zeroed them): counts since `start` are the values themselves. */
  fromZero: boolean;
  /** `start` by the monotonic clock (what a rate divides by). */
  mono: number;
  /**
   * What `start` is (counters.proto CounterStartKind): the daemon zeroed them then ('zeroed'), its first read of
   * counters it found counting, which include what was counted before ('found'), a read that saw them go down
   * ('lowered'); 'unknown' for a read that began before the entry was zeroed (maybe the previous object's values).
   */
  kind: 'zeroed' | 'found' | 'lowered' | 'unknown';
}

export class CounterResets {
  /** Resets seen since the start, by kind. */
  readonly counts: Record<CounterObjectKind, number> = { rule: 0, backend: 0, link: 0 };
  private readonly seen = new Map<string, Record<string, bigint>>();
  private readonly starts = new Map<string, CounterSeries>();
  private readonly resets = new Map<string, Reset>();
  /** Bumped at every forget: a read that began before an entry was forgotten does not set what it saw. */
  private epoch = 0;
  private readonly forgottenAt = new Map<string, number>();

  /** The epoch now: pass it to {@link observe} for values read after this call. */
  begin(): number {
    return this.epoch;
  }

  /**
   * The object's counters as read now (`id`: its kernel entry, e.g. the stats id; `what`: the object as a
   * reader names it; `entry`: its kernel entry as a reader finds it, e.g. `map rule_stats, key 3`). Returns whether they went down (a reset, said as above).
   */
  observe(
    kind: CounterObjectKind,
    id: string | number,
    what: string,
    entry: string,
    values: Readonly<Record<string, bigint>>,
    env: { log: Logger; now: number; mono: number; readEpoch?: number },
  ): boolean {
    const key = `${kind}|${id}`;
    if (env.readEpoch !== undefined && (this.forgottenAt.get(key) ?? -1) > env.readEpoch) return false;
    const was = this.seen.get(key);
    this.seen.set(key, { ...values });
    if (!this.starts.has(key)) this.starts.set(key, { start: env.now, fromZero: false, mono: env.mono, kind: 'found' });
    if (!was) return false;
    const down = Object.keys(values).filter((k) => was[k] !== undefined && values[k] < was[k]);
    if (!down.length) return false;
    this.starts.set(key, { start: env.now, fromZero: false, mono: env.mono, kind: 'lowered' });
    // Only what went down is the evidence; the others are shown too (before -> after), so a reader sees the base.
    const at = new Date(env.now).toISOString();
    const changes = Object.keys(values)
      .map((k) => `${k} ${was[k] ?? '?'} -> ${values[k]}`)
      .join(', ');
    const text =
      `the counters of ${what} went down at ${at} (${changes}): their kernel entry (${entry}) was written by ` +
      'another tool; they count on from there';
    this.counts[kind]++;
    const r = this.resets.get(key);
    if (r && env.mono - r.loggedAt < RESET_LOG_MS) {
      Object.assign(r, { at: env.now, mono: env.mono, text });
      r.unsaid++;
      return true;
    }
    const unsaid = r?.unsaid ?? 0;
    this.resets.set(key, { at: env.now, mono: env.mono, text, loggedAt: env.mono, unsaid: 0 });
    env.log.warn(
      {
        counterKind: kind,
        object: what,
        wentDown: down,
        before: Object.fromEntries(Object.entries(was).map(([k, v]) => [k, String(v)])),
        after: Object.fromEntries(Object.entries(values).map(([k, v]) => [k, String(v)])),
        ...(unsaid ? { moreResetsNotLogged: unsaid } : {}),
      },
      unsaid ? `${text} (${unsaid} more reset(s) of it in the last ${RESET_LOG_MS / 1000} s not logged)` : text,
    );
    return true;
  }

  /**
   * The entry was zeroed by the daemon at `now` (wall clock, ms; `mono` by the monotonic clock) or given to
   * another object: what was seen, and its reset, no longer belong to it; its series starts anew then, from 0.
   */
  forget(kind: CounterObjectKind, id: string | number, now: number, mono: number): void {
    const key = `${kind}|${id}`;
    this.seen.delete(key);
    this.resets.delete(key);
    this.starts.set(key, { start: now, fromZero: true, mono, kind: 'zeroed' });
    this.forgottenAt.set(key, ++this.epoch);
  }

  /**
   * The object is gone (a link direction removed; its entry released): what was seen, its reset and its series
   * go with it. An object made later on the same entry starts its own series: from 0 when the daemon zeroes the
   * entry for it ({@link forget}), else as found by its first read. A read that began before this sets nothing.
   */
  drop(kind: CounterObjectKind, id: string | number): void {
    const key = `${kind}|${id}`;
    this.seen.delete(key);
    this.resets.delete(key);
    this.starts.delete(key);
    this.forgottenAt.set(key, ++this.epoch);
  }

  /** What was seen of every object of `kind` (their entries written anew); their resets stay said. */
  forgetSeen(kind: CounterObjectKind): void {
    this.epoch++;
    for (const k of this.seen.keys()) {
      if (k.startsWith(`${kind}|`)) {
        this.seen.delete(k);
        this.forgottenAt.set(k, this.epoch);
      }
    }
  }

  /** The object's latest reset as a warning while it is recent ({@link RESET_WARNING_MS}). */
  warning(kind: CounterObjectKind, id: string | number, mono: number): string | undefined {
    const key = `${kind}|${id}`;
    const r = this.resets.get(key);
    if (!r) return undefined;
    if (mono - r.mono > RESET_WARNING_MS) {
      this.resets.delete(key);
      return undefined;
    }
    return r.text;
  }

  /**
   * Where the entry's series began, if this daemon has read it or zeroed it (see the module's comment). For a
   * read that began before the entry was last zeroed (`readEpoch`), `fromZero` is false: its values may be the
   * previous object's.
   */
  series(kind: CounterObjectKind, id: string | number, readEpoch?: number): CounterSeries | undefined {
    const key = `${kind}|${id}`;
    const s = this.starts.get(key);
    if (!s || !s.fromZero || readEpoch === undefined || (this.forgottenAt.get(key) ?? -1) <= readEpoch) return s;
    return { ...s, fromZero: false, kind: 'unknown' };
  }

  /** When (wall clock, ms) the object's counters were last seen reset, if they were. */
  resetAt(kind: CounterObjectKind, id: string | number): number | undefined {
    return this.resets.get(`${kind}|${id}`)?.at;
  }

  get total(): number {
    return this.counts.rule + this.counts.backend + this.counts.link;
  }
}

/** A link direction as its counter reset names it. */
export function linkWhat(d: { from: string; to: string }): string {
  return `link direction ${d.from} -> ${d.to}`;
}
