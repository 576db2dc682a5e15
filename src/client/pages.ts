/**
 * Whole collections from the paged and split responses of xdpctld.
 *
 * No response of the daemon exceeds a default gRPC client's 4 MiB receive
 * limit (grpc-js, gRPC's C core and Go all default to 4 MiB): ListRules,
 * ListInterfaces and ListLinks stop a page before 2 MiB encoded, GetCounters
 * pages at 8000 entries, WatchCounters
 * sends a larger sample as several messages marked `continued`. These helpers
 * read every page (or every part) so that a caller sees the whole collection,
 * whatever page sizes the server chooses.
 */
import type { CallOptions } from 'nice-grpc';

import type { CounterFilter, Counters, GetCountersResponse, WatchCountersResponse } from '../gen/xdpctl/v1/counters.js';
import type { Duration } from '../gen/google/protobuf/duration.js';
import type { ListInterfacesResponse, ManagedInterface } from '../gen/xdpctl/v1/interface.js';
import type { Link, ListLinksResponse } from '../gen/xdpctl/v1/link.js';
import type { ListRulesResponse, Rule } from '../gen/xdpctl/v1/rule.js';

/** The ListRules method of a RuleService client (any nice-grpc client of it). */
export interface RulePager {
  listRules(req: { pageSize?: number; pageToken?: string }, opts?: CallOptions): Promise<ListRulesResponse>;
}

/** The ListInterfaces method of an InterfaceService client. */
export interface InterfacePager {
  listInterfaces(req: { pageSize?: number; pageToken?: string }, opts?: CallOptions): Promise<ListInterfacesResponse>;
}

/** The ListLinks method of a LinkService client. */
export interface LinkPager {
  listLinks(req: { pageSize?: number; pageToken?: string }, opts?: CallOptions): Promise<ListLinksResponse>;
}

/** The GetCounters/WatchCounters methods of a CounterService client. */
export interface CounterReader {
  getCounters(
    req: { filter?: Partial<CounterFilter>; pageToken?: string },
    opts?: CallOptions,
  ): Promise<GetCountersResponse>;
  watchCounters(
    req: { filter?: Partial<CounterFilter>; interval?: Duration; changesOnly?: boolean },
    opts?: CallOptions,
  ): AsyncIterable<WatchCountersResponse>;
}

/**
 * Every rule, in name order, reading ListRules page after page until
 * next_page_token is empty. Each page is a separate call: a rule created or
 * deleted meanwhile may or may not appear (pages continue after the last name
 * returned, so none is returned twice).
 */
export async function listAllRules(client: RulePager, opts: CallOptions = {}): Promise<Rule[]> {
  const all: Rule[] = [];
  let pageToken = '';
  do {
    const page = await client.listRules({ pageSize: 1000, pageToken }, opts);
    all.push(...page.rules);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

/**
 * Every managed interface, in name order, reading ListInterfaces page after
 * page until next_page_token is empty (as {@link listAllRules}).
 */
export async function listAllInterfaces(client: InterfacePager, opts: CallOptions = {}): Promise<ManagedInterface[]> {
  const all: ManagedInterface[] = [];
  let pageToken = '';
  do {
    const page = await client.listInterfaces({ pageSize: 1000, pageToken }, opts);
    all.push(...page.interfaces);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

/**
 * Every link, in (a, b) order, reading ListLinks page after page until
 * next_page_token is empty (as {@link listAllRules}).
 */
export async function listAllLinks(client: LinkPager, opts: CallOptions = {}): Promise<Link[]> {
  const all: Link[] = [];
  let pageToken = '';
  do {
    const page = await client.listLinks({ pageSize: 1000, pageToken }, opts);
    all.push(...page.links);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

/** Two parts of one sample as one (global counters and time from the first part that has them). */
export function mergeCounters(a: Counters, b: Counters): Counters {
  return {
    time: a.time ?? b.time,
    rules: [...a.rules, ...b.rules],
    backends: [...a.backends, ...b.backends],
    links: [...a.links, ...b.links],
    global: a.global ?? b.global,
  };
}

/**
 * All counters that `filter` selects, reading GetCounters page after page.
 * Each page is read from the kernel when it is asked for, so the pages of one
 * answer may be a few milliseconds apart (`time` is the first page's).
 */
export async function getAllCounters(
  client: CounterReader,
  filter?: Partial<CounterFilter>,
  opts: CallOptions = {},
): Promise<Counters> {
  let all: Counters | undefined;
  let pageToken = '';
  do {
    const page = await client.getCounters({ filter, pageToken }, opts);
    const c = page.counters ?? { rules: [], backends: [], links: [] };
    all = all ? mergeCounters(all, c) : c;
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

const ZERO = { pps: 0, bps: 0 };

/**
 * A complete sample from the one held and a changes-only sample after it
 * (WatchCountersResponse.changes_only): entries in `changes` replace theirs,
 * every other entry keeps its counters and start time with rates of 0 and
 * `reset` false (it did not restart since the held sample), and the global
 * counters are kept unless `changes` has them.
 */
export function applyChanges(held: Counters, changes: Counters): Counters {
  const rules = new Map(changes.rules.map((r) => [r.rule, r]));
  const backends = new Map(changes.backends.map((b) => [`${b.rule}|${b.ip}|${b.interface}`, b]));
  const links = new Map(changes.links.map((l) => [`${l.fromInterface}|${l.toInterface}`, l]));
  return {
    time: changes.time,
    rules: held.rules.map(
      (r) => rules.get(r.rule) ?? { ...r, matchedRates: ZERO, redirectedRates: ZERO, reset: false },
    ),
    backends: held.backends.map(
      (b) => backends.get(`${b.rule}|${b.ip}|${b.interface}`) ?? { ...b, rates: ZERO, reset: false },
    ),
    links: held.links.map(
      (l) => links.get(`${l.fromInterface}|${l.toInterface}`) ?? { ...l, rates: ZERO, reset: false },
    ),
    global: changes.global ?? held.global,
  };
}

/**
 * WatchCounters with each sample whole: the parts of a sample sent as several
 * messages (`continued`) are joined, and with `changesOnly` each changes-only
 * sample is applied to the last complete one ({@link applyChanges}), so that
 * every sample yielded is complete. Ends when the stream ends; cancel with
 * `opts.signal`.
 */
export async function* watchCounterSamples(
  client: CounterReader,
  req: { filter?: Partial<CounterFilter>; interval?: Duration; changesOnly?: boolean },
  opts: CallOptions = {},
): AsyncGenerator<Counters> {
  let parts: Counters | undefined;
  let held: Counters | undefined;
  for await (const part of client.watchCounters(req, opts)) {
    const c = part.counters ?? { rules: [], backends: [], links: [] };
    parts = parts ? mergeCounters(parts, c) : c;
    if (part.continued) continue;
    const sample = part.changesOnly && held ? applyChanges(held, parts) : parts;
    parts = undefined;
    held = sample;
    yield sample;
  }
}
