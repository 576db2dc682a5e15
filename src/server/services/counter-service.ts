/**
 * CounterService: unary reads and WatchCounters streams, both from the
 * CounterHub's shared kernel reads. Rates come from the deltas between the
 * snapshots a given stream has seen.
 */
import { ServerError, Status, type NormalizedServiceDefinition, type ServiceImplementation } from 'nice-grpc';

import type { CounterSnapshot } from '../core/controller.js';
import type { CounterHub } from '../core/counter-hub.js';
import { CoreError, type FieldViolation } from '../core/errors.js';
import { GlobalStat, type BackendStats, type LinkStats } from '../core/dataplane.js';
import {
  CounterKind,
  CounterStartKind,
  type CounterFilter,
  type Counters,
  type CounterServiceDefinition,
  type WatchCountersRequest,
  type WatchCountersResponse,
} from '../../gen/xdpctl/v1/counters.js';
import { pacer } from '../core/execute.js';
import { validateInterfaceName, validateName } from '../core/validate.js';
import { fromTsProto } from './definition.js';
import { pageToken, pageTokenKey } from './paging.js';

export const MIN_INTERVAL_MS = 100;
export const MAX_INTERVAL_MS = 60_000;
const DEFAULT_INTERVAL_MS = 1000;

const VERDICTS = ['ABORTED', 'DROP', 'PASS', 'TX', 'REDIRECT'];
const ERRORS = Object.entries(GlobalStat)
  .filter(([k]) => k.startsWith('ERR_'))
  .map(([k, v]) => [k.slice(4).toLowerCase(), v] as const);

type Rates = { pps: number; bps: number };

/** A snapshot entry's series (controller.ts SeriesFields). */
type Series = { start?: number; fromZero?: boolean; startMono?: number; startKind?: string };

/**
 * Whether an entry's series restarted between the stream's previous sample (`p`, absent: new to the stream) and
 * this one: its start time changed, or one of its counters went down (`down`: a reset not yet dated, a wrap).
 */
function restarted(cur: Series, p: Series | undefined, down: boolean): boolean {
  if (!p) return false;
  return (cur.start !== undefined && p.start !== undefined && cur.start !== p.start) || down;
}

/**
 * The rates of one pair of counters (packets, bytes) over the interval from the stream's previous sample (`prev`,
 * its entry `p`; absent: the stream's first sample) to this one (`s`), never negative (counters.proto, Rates):
 * the difference over the time that passed while the series is the same one; across a restart, counted from
 * the new start when the series began at 0 then (its object created by the daemon since the previous read),
 * else none for this interval (a reset by another tool, a wrap: as Prometheus's rate() skips a decrease it
 * cannot account for, never a negative or made-up figure).
 */
function rate(
  cur: bigint,
  curBytes: bigint,
  prevVal: bigint | undefined,
  prevBytes: bigint | undefined,
  dt: number,
  series: { cur: Series; p: Series | undefined; reset: boolean; s: CounterSnapshot; prev?: CounterSnapshot },
): Rates | undefined {
  if (!series.prev || dt <= 0) return undefined;
  const { cur: c, p, reset, s, prev } = series;
  const same = p !== undefined && !reset;
  if (same && prevVal !== undefined && prevBytes !== undefined) {
    return { pps: Number(cur - prevVal) / dt, bps: (Number(curBytes - prevBytes) * 8) / dt };
  }
  // A series that began at 0 since the previous read began (re-created, or new to the stream): from its start to
  // the read's end, by the monotonic clock (a wall-clock step is not time that passed; fakes: the wall clock).
  if (c.fromZero && c.start !== undefined && (reset || !p)) {
    const began = c.startMono ?? c.start;
    const prevBegan = (prev.mono ?? prev.time) - (prev.time - (prev.started ?? prev.time));
    const since = ((s.mono ?? s.time) - began) / 1000;
    if (began >= prevBegan && since > 0) return { pps: Number(cur) / since, bps: (Number(curBytes) * 8) / since };
  }
  return undefined;
}

/** Entries (rules, backends, links) a sample is built or compared over between two calls of its pacer. */
const SAMPLE_SLICE = 1024;

/** Run a stepwise computation to its end at once. */
function runAll<T>(g: Generator<void, T>): T {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
  }
}

/** Run a stepwise computation, awaiting `pace` at each step (the pacer yields to the event loop when due). */
async function runPaced<T>(g: Generator<void, T>, pace: () => Promise<void>): Promise<T> {
  for (;;) {
    const r = g.next();
    if (r.done) return r.value;
    await pace();
  }
}

/** `xs` mapped to a Map by `key`, a step every {@link SAMPLE_SLICE} entries. */
function* mapBy<T>(xs: readonly T[], key: (x: T) => string): Generator<void, Map<string, T>> {
  const m = new Map<string, T>();
  for (let i = 0; i < xs.length; i++) {
    if ((i + 1) % SAMPLE_SLICE === 0) yield;
    m.set(key(xs[i]), xs[i]);
  }
  return m;
}

/** Whether one of a backend's or link direction's counters is lower than in `p`. */
const pairDown = (x: BackendStats, p: BackendStats) =>
  x.packets < p.packets || x.bytes < p.bytes || x.redirectErrors < p.redirectErrors;

/** A series' start time as the message carries it (unset: not known). */
const startTime = (x: Series) => (x.start === undefined ? undefined : new Date(x.start));

const START_KINDS: Record<string, CounterStartKind> = {
  zeroed: CounterStartKind.COUNTER_START_KIND_ZEROED,
  found: CounterStartKind.COUNTER_START_KIND_FOUND,
  lowered: CounterStartKind.COUNTER_START_KIND_LOWERED,
};
/** What a series' start time is, as the message carries it (counters.proto CounterStartKind). */
const startKind = (x: Series) =>
  (x.start !== undefined && x.startKind && START_KINDS[x.startKind]) || CounterStartKind.COUNTER_START_KIND_UNSPECIFIED;

/** Build the Counters message, filtered, with rates against `prev`. */
export function toCounters(s: CounterSnapshot, filter: CounterFilter | undefined, prev?: CounterSnapshot): Counters {
  return runAll(buildCounters(s, filter, prev));
}

/**
 * {@link toCounters} a step every {@link SAMPLE_SLICE} entries: with 10 000 rules of 4 backends, building
 * the sample (and the previous one's maps for its rates) in one piece held the event loop for tens of ms.
 */
function* buildCounters(
  s: CounterSnapshot,
  filter: CounterFilter | undefined,
  prev?: CounterSnapshot,
): Generator<void, Counters> {
  const kinds = new Set(filter?.kinds ?? []);
  const want = (k: CounterKind) => kinds.size === 0 || kinds.has(k);
  const ruleOk = (name: string) => !filter?.rules.length || filter.rules.includes(name);
  const ifOk = (a: string, b: string) =>
    !filter?.interfaces.length || filter.interfaces.includes(a) || filter.interfaces.includes(b);
  // The time between the reads by the monotonic clock: a wall-clock step between them is not time that passed.
  const dt = prev ? ((s.mono ?? s.time) - (prev.mono ?? prev.time)) / 1000 : 0;
  const out: Counters = {
    time: new Date(s.time),
    rules: [],
    backends: [],
    links: [],
    global: want(CounterKind.COUNTER_KIND_GLOBAL)
      ? {
          verdicts: Object.fromEntries(VERDICTS.map((v, i) => [v.toLowerCase(), s.global[i] ?? 0n])),
          errors: Object.fromEntries(ERRORS.map(([k, i]) => [k, s.global[i] ?? 0n])),
        }
      : undefined,
  };
  if (want(CounterKind.COUNTER_KIND_RULES)) {
    const prevRules = prev ? yield* mapBy(prev.rules, (r) => r.name) : new Map<string, RuleEntry>();
    let i = 0;
    for (const r of s.rules) {
      if (++i % SAMPLE_SLICE === 0) yield;
      if (!ruleOk(r.name)) continue;
      const p = prevRules.get(r.name);
      const reset = restarted(
        r,
        p,
        p !== undefined &&
          (r.matched < p.matched ||
            r.matchedBytes < p.matchedBytes ||
            r.redirected < p.redirected ||
            r.redirectedBytes < p.redirectedBytes ||
            r.filtered < p.filtered ||
            r.noBackend < p.noBackend ||
            r.redirectErrors < p.redirectErrors),
      );
      const series = { cur: r, p, reset, s, prev };
      out.rules.push({
        rule: r.name,
        matchedPackets: r.matched,
        matchedBytes: r.matchedBytes,
        redirectedPackets: r.redirected,
        redirectedBytes: r.redirectedBytes,
        filteredPackets: r.filtered,
        noBackendPackets: r.noBackend,
        redirectErrorPackets: r.redirectErrors,
        matchedRates: rate(r.matched, r.matchedBytes, p?.matched, p?.matchedBytes, dt, series),
        redirectedRates: rate(r.redirected, r.redirectedBytes, p?.redirected, p?.redirectedBytes, dt, series),
        startTime: startTime(r),
        startKind: startKind(r),
        reset,
      });
    }
  }
  if (want(CounterKind.COUNTER_KIND_BACKENDS)) {
    const prevBackends = prev ? yield* mapBy(prev.backends, backendKey) : new Map<string, BackendEntry>();
    let i = 0;
    for (const b of s.backends) {
      if (++i % SAMPLE_SLICE === 0) yield;
      if (!ruleOk(b.rule)) continue;
      const p = prevBackends.get(backendKey(b));
      const reset = restarted(b, p, p !== undefined && pairDown(b, p));
      out.backends.push({
        rule: b.rule,
        ip: b.ip,
        interface: b.interface,
        packets: b.packets,
        bytes: b.bytes,
        rates: rate(b.packets, b.bytes, p?.packets, p?.bytes, dt, { cur: b, p, reset, s, prev }),
        redirectErrorPackets: b.redirectErrors,
        startTime: startTime(b),
        startKind: startKind(b),
        reset,
      });
    }
  }
  if (want(CounterKind.COUNTER_KIND_LINKS)) {
    // By direction (from, to), as a client keys them: a direction repointed to another interface is another entry.
    const prevLinks = new Map(prev?.links.map((l) => [linkKey(l), l]));
    for (const l of s.links) {
      if (!ifOk(l.from, l.to)) continue;
      const p = prevLinks.get(linkKey(l));
      const reset = restarted(l, p, p !== undefined && pairDown(l, p));
      out.links.push({
        fromInterface: l.from,
        toInterface: l.to,
        packets: l.packets,
        bytes: l.bytes,
        rates: rate(l.packets, l.bytes, p?.packets, p?.bytes, dt, { cur: l, p, reset, s, prev }),
        redirectErrorPackets: l.redirectErrors,
        startTime: startTime(l),
        startKind: startKind(l),
        reset,
      });
    }
  }
  return out;
}

function filterViolations(f: CounterFilter | undefined, field: string, out: FieldViolation[]): void {
  for (const [i, k] of (f?.kinds ?? []).entries()) {
    if (!Object.values(CounterKind).includes(k) || k === CounterKind.UNRECOGNIZED || k === 0) {
      out.push({ field: `${field}.kinds[${i}]`, description: `unknown counter kind ${k}` });
    }
  }
  // The names rules and interfaces are created with (validate.ts): any other name can never match.
  for (const [i, name] of (f?.rules ?? []).entries()) validateName(name, `${field}.rules[${i}]`, out);
  for (const [i, name] of (f?.interfaces ?? []).entries()) {
    validateInterfaceName(name, `${field}.interfaces[${i}]`, out);
  }
}

/**
 * GetCounters names the rules of its filter that do not exist (NOT_FOUND, each as a field violation): a
 * one-off read that answered them with no counters would look like rules that saw no traffic.
 */
function requireRules(f: CounterFilter | undefined, field: string, ruleExists: (name: string) => boolean): void {
  const missing: FieldViolation[] = [];
  for (const [i, name] of (f?.rules ?? []).entries()) {
    if (!ruleExists(name))
      missing.push({ field: `${field}.rules[${i}]`, description: `rule "${name}" does not exist` });
  }
  if (missing.length) {
    throw new CoreError('not-found', missing.map((v) => `${v.field}: ${v.description}`).join('; '), missing);
  }
}

function validateFilter(f: CounterFilter | undefined, field: string): void {
  const v: FieldViolation[] = [];
  filterViolations(f, field, v);
  if (v.length) throw CoreError.invalid(v);
}

/** The watch interval in ms; every bad field of the request is reported together. */
function watchInterval(req: WatchCountersRequest): number {
  const v: FieldViolation[] = [];
  filterViolations(req.filter, 'filter', v);
  const d = req.interval;
  // A Duration's nanos are within +-999,999,999 and have the sign of its seconds.
  const wellFormed =
    !d || (Math.abs(d.nanos) <= 999_999_999 && !(d.seconds > 0n && d.nanos < 0) && !(d.seconds < 0n && d.nanos > 0));
  const ms = d ? Number(d.seconds) * 1000 + d.nanos / 1e6 : DEFAULT_INTERVAL_MS;
  if (!wellFormed || !(ms >= MIN_INTERVAL_MS && ms <= MAX_INTERVAL_MS)) {
    v.push({ field: 'interval', description: `must be between ${MIN_INTERVAL_MS} ms and ${MAX_INTERVAL_MS / 1000} s` });
  }
  if (v.length) throw CoreError.invalid(v);
  return ms;
}

/**
 * Watch responses shared between streams: every stream with the same filter
 * that sees the same snapshot after the same previous one gets the same
 * message object (the hub hands one snapshot object to all watchers of a
 * tick), so a thousand identical watchers build it once, and
 * {@link sharedEncoding} encodes it once.
 */
const responses = new WeakMap<CounterSnapshot, Map<string, Promise<WatchCountersResponse[]>>>();

function watchResponse(
  snap: CounterSnapshot,
  filter: CounterFilter | undefined,
  filterKey: string,
  prev: CounterSnapshot | undefined,
): Promise<WatchCountersResponse[]> {
  let byKey = responses.get(snap);
  if (!byKey) responses.set(snap, (byKey = new Map()));
  const key = `${prev ? snapshotIds.get(prev) : '-'}|${filterKey}`;
  let r = byKey.get(key);
  if (!r) {
    // The promise is kept, so that streams asking while it is built share it.
    r = runPaced(buildCounters(snap, filter, prev), pacer()).then((c) => {
      const parts = splitCounters(c);
      return parts.map((counters, i) => ({ counters, continued: i < parts.length - 1, changesOnly: false }));
    });
    byKey.set(key, r);
  }
  return r;
}

/** What identifies a rule, backend or link entry across samples. */
const backendKey = (b: { rule: string; ip: string; interface: string }) => `${b.rule}|${b.ip}|${b.interface}`;
const linkKey = (l: { from: string; to: string }) => `${l.from}|${l.to}`;

/**
 * The entries a snapshot holds, as a number (once per snapshot object): equal
 * numbers, equal sets. The set is written out as one string per snapshot and
 * compared with the few sets seen last, so that a thousand streams compare
 * two numbers each, not two strings of ~60 KB (1 000 rules of 4 backends).
 */
const shapes = new WeakMap<CounterSnapshot, number>();
const recentShapes: { text: string; id: number }[] = [];
let nextShapeId = 0;
function* shapeOf(s: CounterSnapshot): Generator<void, number> {
  let id = shapes.get(s);
  if (id === undefined) {
    const parts: string[] = [];
    const add = function* <T>(xs: readonly T[], key: (x: T) => string) {
      for (let i = 0; i < xs.length; i++) {
        if ((i + 1) % SAMPLE_SLICE === 0) yield;
        parts.push(key(xs[i]));
      }
      parts.push('\0');
    };
    yield* add(s.rules, (r) => r.name);
    yield* add(s.backends, backendKey);
    yield* add(s.links, linkKey);
    const text = parts.join('\n');
    id = shapes.get(s) ?? recentShapes.find((x) => x.text === text)?.id;
    if (id === undefined) {
      id = ++nextShapeId;
      recentShapes.unshift({ text, id });
      recentShapes.length = Math.min(recentShapes.length, 4);
    }
    shapes.set(s, id);
  }
  return id;
}

type RuleEntry = CounterSnapshot['rules'][number];
type BackendEntry = CounterSnapshot['backends'][number];
type PairEntry = BackendStats | LinkStats;
const sameRule = (a: RuleEntry, b: RuleEntry) =>
  a.start === b.start &&
  a.matched === b.matched &&
  a.matchedBytes === b.matchedBytes &&
  a.redirected === b.redirected &&
  a.redirectedBytes === b.redirectedBytes &&
  a.filtered === b.filtered &&
  a.noBackend === b.noBackend &&
  a.redirectErrors === b.redirectErrors;
const samePair = (a: PairEntry & Series, b: PairEntry & Series) =>
  a.start === b.start && a.packets === b.packets && a.bytes === b.bytes && a.redirectErrors === b.redirectErrors;

/**
 * Keys of the entries a changes-only sample carries: those whose counters
 * changed from `prev` to `snap`, or from `before` to `prev` (their rates were
 * not 0 in the previous sample and are now). An entry left out thus has the
 * counters of the previous sample and rates of 0, as the proto documents.
 */
function* changedKeys(
  snap: CounterSnapshot,
  prev: CounterSnapshot,
  before: CounterSnapshot | undefined,
): Generator<void, { rules: Set<string>; backends: Set<string>; links: Set<string> }> {
  const changed = function* <T>(
    cur: T[],
    key: (x: T) => string,
    same: (a: T, b: T) => boolean,
    p: T[],
    b?: T[],
  ): Generator<void, Set<string>> {
    const pm = yield* mapBy(p, key);
    const bm = b ? yield* mapBy(b, key) : undefined;
    const out = new Set<string>();
    let i = 0;
    for (const x of cur) {
      if (++i % SAMPLE_SLICE === 0) yield;
      const k = key(x);
      const px = pm.get(k);
      const bx = bm?.get(k);
      if (!px || !same(x, px) || (bx && !same(px, bx))) out.add(k);
    }
    return out;
  };
  return {
    rules: yield* changed(snap.rules, (r) => r.name, sameRule, prev.rules, before?.rules),
    backends: yield* changed(snap.backends, backendKey, samePair, prev.backends, before?.backends),
    links: yield* changed(snap.links, linkKey, samePair, prev.links, before?.links),
  };
}

/**
 * A changes-only sample of `snap` after `prev` (and `before` it), shared like
 * {@link watchResponse}: the entries of {@link changedKeys}, the global
 * counters when one of them changed.
 */
function changesResponse(
  snap: CounterSnapshot,
  filter: CounterFilter | undefined,
  filterKey: string,
  prev: CounterSnapshot,
  before: CounterSnapshot | undefined,
): Promise<WatchCountersResponse[]> {
  let byKey = responses.get(snap);
  if (!byKey) responses.set(snap, (byKey = new Map()));
  const key = `${snapshotIds.get(prev)}|${before ? snapshotIds.get(before) : '-'}|changes|${filterKey}`;
  let r = byKey.get(key);
  if (!r) {
    r = (async () => {
      const pace = pacer();
      const full = await runPaced(buildCounters(snap, filter, prev), pace);
      const keys = await runPaced(changedKeys(snap, prev, before), pace);
      const globalChanged =
        snap.global.length !== prev.global.length || snap.global.some((v, i) => v !== prev.global[i]);
      const changes: Counters = {
        time: full.time,
        rules: full.rules.filter((x) => keys.rules.has(x.rule)),
        backends: full.backends.filter((x) => keys.backends.has(backendKey(x))),
        links: full.links.filter((x) => keys.links.has(linkKey({ from: x.fromInterface, to: x.toInterface }))),
        global: globalChanged ? full.global : undefined,
      };
      const parts = splitCounters(changes);
      return parts.map((counters, i) => ({ counters, continued: i < parts.length - 1, changesOnly: true }));
    })();
    byKey.set(key, r);
  }
  return r;
}

/**
 * Rule, backend and link entries per message at most. An entry encodes to
 * at most ~200 bytes (a rule of a 63-character name with seven counters at
 * 2^64 - 1, two rates, a start time and `reset`: 198; a backend with an IPv6
 * address: 192), so a message stays near 1.6 MB, well under a client's
 * default 4 MiB receive limit.
 */
export const MAX_COUNTER_ENTRIES = 8000;

/** One sample as messages of at most `max` entries; the global counters go with the first. */
export function splitCounters(c: Counters, max = MAX_COUNTER_ENTRIES, from = 0): Counters[] {
  const total = c.rules.length + c.backends.length + c.links.length;
  if (from === 0 && total <= max) return [c];
  const parts: Counters[] = [];
  for (let at = from; at < total || parts.length === 0; at += max) {
    parts.push(sliceCounters(c, at, at + max, at === 0));
  }
  return parts;
}

/** Entries [start, end) of rules ++ backends ++ links. */
function sliceCounters(c: Counters, start: number, end: number, withGlobal: boolean): Counters {
  const nr = c.rules.length;
  const nb = c.backends.length;
  const part = (xs: unknown[], offset: number) => xs.slice(Math.max(0, start - offset), Math.max(0, end - offset));
  return {
    time: c.time,
    rules: part(c.rules, 0) as Counters['rules'],
    backends: part(c.backends, nr) as Counters['backends'],
    links: part(c.links, nr + nb) as Counters['links'],
    global: withGlobal ? c.global : undefined,
  };
}

/** The entry offset a GetCounters page token continues at (paging.ts: INVALID_ARGUMENT for any other token). */
function counterPageOffset(token: string): number {
  return Number(pageTokenKey('entries', token, (n) => /^[1-9][0-9]{0,14}$/.test(n)));
}

function counterPageToken(offset: number): string {
  return pageToken('entries', String(offset));
}

/**
 * Entries of absent series a stream remembers at most: one deleted for good is remembered until this many others
 * were absent after it (then, back, it is new to the stream: no `reset`).
 */
export const ABSENT_REMEMBERED = 65_536;

/**
 * What a stream remembers of the entries absent from its latest sample: the start time each had in the last sample
 * it was in, so that one back in a later sample is compared with that (a rule deleted in one sample and re-created
 * by the next is a new series, though absent from the sample between: counters.proto `reset`).
 */
export class AbsentSeries {
  private readonly last = new Map<string, number | undefined>();

  /**
   * From the stream's previous sample `prev` to this one `snap` (with a different set of entries): the entries of
   * `snap` back from absence with another start time than their last (keys as {@link seriesKeys} gives them), and
   * those of `prev` now absent remembered.
   */
  *update(snap: CounterSnapshot, prev: CounterSnapshot): Generator<void, Set<string>> {
    const now = yield* seriesKeys(snap);
    const before = yield* seriesKeys(prev);
    const back = new Set<string>();
    let i = 0;
    for (const [k, start] of now) {
      if (++i % SAMPLE_SLICE === 0) yield;
      if (before.has(k) || !this.last.has(k)) continue;
      const was = this.last.get(k);
      this.last.delete(k);
      if (start !== undefined && was !== undefined && start !== was) back.add(k);
    }
    for (const [k, start] of before) {
      if (++i % SAMPLE_SLICE === 0) yield;
      if (now.has(k)) continue;
      this.last.delete(k); // (to the end of the insertion order: the oldest go first)
      this.last.set(k, start);
    }
    for (const k of this.last.keys()) {
      if (this.last.size <= ABSENT_REMEMBERED) break;
      this.last.delete(k);
    }
    return back;
  }
}

/** Every entry of a snapshot by its key in a stream ("r|name", "b|rule|ip|interface", "l|from|to") with its start. */
function* seriesKeys(s: CounterSnapshot): Generator<void, Map<string, number | undefined>> {
  const m = new Map<string, number | undefined>();
  let i = 0;
  for (const r of s.rules) {
    if (++i % SAMPLE_SLICE === 0) yield;
    m.set(`r|${r.name}`, r.start);
  }
  for (const b of s.backends) {
    if (++i % SAMPLE_SLICE === 0) yield;
    m.set(`b|${backendKey(b)}`, b.start);
  }
  for (const l of s.links) {
    if (++i % SAMPLE_SLICE === 0) yield;
    m.set(`l|${linkKey(l)}`, l.start);
  }
  return m;
}

/**
 * `parts` (shared between streams) with `reset` set on the entries of `back` ({@link AbsentSeries}): new part
 * objects only where one changes.
 */
export function withResets(parts: WatchCountersResponse[], back: Set<string>): WatchCountersResponse[] {
  if (!back.size) return parts;
  return parts.map((m) => {
    const c = m.counters;
    if (!c) return m;
    let changed = false;
    const mark = <T extends { reset: boolean }>(x: T, key: string): T => {
      if (x.reset || !back.has(key)) return x;
      changed = true;
      return { ...x, reset: true };
    };
    const counters: Counters = {
      ...c,
      rules: c.rules.map((r) => mark(r, `r|${r.rule}`)),
      backends: c.backends.map((b) => mark(b, `b|${backendKey(b)}`)),
      links: c.links.map((l) => mark(l, `l|${linkKey({ from: l.fromInterface, to: l.toInterface })}`)),
    };
    return changed ? { ...m, counters } : m;
  });
}

/** A stable id per snapshot object (for the cache key of the previous one). */
const snapshotIds = new WeakMap<CounterSnapshot, number>();
let nextSnapshotId = 0;
const idOf = (s: CounterSnapshot) => {
  let id = snapshotIds.get(s);
  if (id === undefined) snapshotIds.set(s, (id = ++nextSnapshotId));
  return id;
};

/**
 * The CounterService definition with WatchCounters responses encoded once per
 * message object (see {@link watchResponse}); the bytes live as long as the
 * message does.
 */
export function sharedEncoding(
  def: typeof CounterServiceDefinition,
): NormalizedServiceDefinition<typeof CounterServiceDefinition> {
  const methods = fromTsProto(def);
  const encode = methods.watchCounters.responseSerialize;
  const encoded = new WeakMap<object, Uint8Array>();
  return {
    ...methods,
    watchCounters: {
      ...methods.watchCounters,
      responseSerialize(value) {
        let bytes = encoded.get(value);
        if (!bytes) encoded.set(value, (bytes = encode(value)));
        return bytes;
      },
    },
  };
}

/**
 * @param ruleExists whether a rule of that name exists (Controller.hasRule): GetCounters answers NOT_FOUND for a
 *   filter naming one that does not. Absent (tests): not checked.
 */
export function counterService(
  hub: CounterHub,
  ruleExists?: (name: string) => boolean,
): ServiceImplementation<typeof CounterServiceDefinition> {
  return {
    async getCounters(req) {
      validateFilter(req.filter, 'filter');
      if (ruleExists) requireRules(req.filter, 'filter', ruleExists);
      const from = req.pageToken ? counterPageOffset(req.pageToken) : 0;
      const all = await runPaced(buildCounters(await hub.snapshot(), req.filter), pacer());
      const total = all.rules.length + all.backends.length + all.links.length;
      const counters =
        from === 0 && total <= MAX_COUNTER_ENTRIES ? all : splitCounters(all, MAX_COUNTER_ENTRIES, from)[0];
      const next = from + MAX_COUNTER_ENTRIES;
      return { counters, nextPageToken: next < total ? counterPageToken(next) : '' };
    },
    async *watchCounters(req, context) {
      const ms = watchInterval(req);
      const filterKey = JSON.stringify(req.filter ?? null);
      let prev: CounterSnapshot | undefined;
      let before: CounterSnapshot | undefined;
      const absent = new AbsentSeries();
      for await (const snap of hub.watch(ms, context.signal)) {
        idOf(snap);
        // Changes only when asked for, after a first complete sample, and while the set of entries stays.
        const pace = pacer();
        const sameShape = prev && (await runPaced(shapeOf(prev), pace)) === (await runPaced(shapeOf(snap), pace));
        // Entries that came and went: one back with another start time than its last is a new series (reset).
        const back = prev && !sameShape ? await runPaced(absent.update(snap, prev), pace) : undefined;
        const parts =
          req.changesOnly && sameShape && prev
            ? await changesResponse(snap, req.filter, filterKey, prev, before)
            : withResets(await watchResponse(snap, req.filter, filterKey, prev), back ?? new Set());
        for (const part of parts) yield part;
        before = prev;
        prev = snap;
      }
      // Ended by the daemon, not the client: say so, so that clients reconnect.
      if (hub.isClosed && !context.signal.aborted) {
        throw new ServerError(Status.UNAVAILABLE, 'xdpctld is shutting down; reconnect to watch again');
      }
    },
  };
}
