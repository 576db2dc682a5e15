/**
 * Writing the datapath's tables in an order that keeps every packet
 * consistent. A rule lives in a "slot" (rule_cfg entry + its ring + its
 * source prefixes + the backends its ring points to); match entries point at
 * slots. A change is written into a free slot first (nothing points at it,
 * so nothing sees it half-written), then published by repointing the match
 * entries (one atomic hash update each), and only then is the old slot
 * cleared. A change of many match entries is one kernel transaction: its
 * entries are written as the generation the datapath does not look up
 * (stageGeneration), switched to with one rule_gen update (switchGeneration),
 * and the old generation is deleted after (dropGeneration). The transaction
 * logic (which slot, rollback) lives in core/.
 */
import { BPF_ANY } from './bpf-map.js';
import {
  IF_F_GENERIC,
  IF_F_LINK,
  IF_F_XCONNECT,
  IF_LINK_SHIFT,
  RING_SIZE,
  RULE_F_ACTIVE,
  RULE_F_ONE_BACKEND,
  RULE_F_SRC_FILTER,
  type BackendStats,
  type LinkStats,
  FOLD_SLOT_BITS,
  type GenMatchKey,
  type MatchKey,
  PORTS_PER_GEN,
  type PortUse,
  portUse,
  type RuleStats,
  type SrcKey,
  sumCounters,
} from './codec.js';
import {
  emptyBackendEntry,
  zeroBackendStats,
  zeroLinkStats,
  zeroRuleStats,
  type RuleSlotWrite,
} from '../core/dataplane.js';
import type { EntryRepair } from '../core/entry-owners.js';
import type { DatapathMaps } from './datapath.js';
import { KernelError } from './errors.js';

/**
 * Write a complete rule into an unpublished slot: backends, ring, prefixes,
 * then the rule entry marked active last (with RULE_F_ONE_BACKEND when the
 * ring holds one backend id throughout). Every byte of the slot is written:
 * each backend entry whole, all RING_SIZE table entries, the whole rule entry
 * (flags and stats id), so whatever another tool left in a free slot or id
 * never goes live with the rule that takes it (test/integration/
 * slot-watch-free). Its source prefixes are exactly the rule's: the entries
 * keyed to the slot that are not (`foreignSrc`, read by the caller) are
 * deleted first (test/integration/src-allow-takeover).
 */
export function writeRuleSlot(maps: DatapathMaps, c: RuleSlotWrite): void {
  if (c.ring.length !== RING_SIZE) throw new RangeError(`ring has ${c.ring.length} slots, not ${RING_SIZE}`);
  maps.backends.putMany(c.backends);
  const base = c.slot * RING_SIZE;
  maps.ruleRing.putRangeU32(base, c.ring);
  for (const k of c.foreignSrc ?? []) if (k.slot === c.slot) maps.srcAllow.delete(k);
  for (const p of c.srcPrefixes) maps.srcAllow.put({ slot: c.slot, length: p.length, addr: p.addr }, 1);
  putRuleCfg(maps, c.slot, c.flags, c.statsId, c.srcPrefixes.length > 0, oneId(c.ring, 1));
}

/** Whether a ring (entry `s` at `ring[s * stride]`) holds one backend id in all RING_SIZE entries. */
export function oneId(ring: ArrayLike<number>, stride: number): boolean {
  const first = ring[0];
  for (let s = 1; s < RING_SIZE; s++) if (ring[s * stride] !== first) return false;
  return true;
}

function putRuleCfg(
  maps: DatapathMaps,
  slot: number,
  flags: number,
  statsId: number,
  srcFilter: boolean,
  one: boolean,
): void {
  const f = (flags & ~RULE_F_ONE_BACKEND) | RULE_F_ACTIVE | (srcFilter ? RULE_F_SRC_FILTER : 0);
  maps.ruleCfg.put(slot, { flags: f | (one ? RULE_F_ONE_BACKEND : 0), statsId });
}

/**
 * A slot's rule entry, marked active (RULE_F_SRC_FILTER when it has source prefixes; RULE_F_ONE_BACKEND
 * when the slot's ring, as the map holds it now, has one backend id throughout).
 */
export function writeRuleCfg(
  maps: DatapathMaps,
  slot: number,
  flags: number,
  statsId: number,
  srcFilter: boolean,
): void {
  putRuleCfg(maps, slot, flags, statsId, srcFilter, oneId(maps.ruleRing.getRangeU32(slot * RING_SIZE, RING_SIZE), 1));
}

/**
 * Rewrite entries start..start+ids.length-1 of a slot's ring in place (a repair of a published slot). A rule
 * entry saying RULE_F_ONE_BACKEND loses it before the ring changes (a packet meanwhile hashes, and finds
 * the old or the new id), and the flag is set again once the whole ring holds one id.
 */
export function writeRingPart(maps: DatapathMaps, slot: number, start: number, ids: ArrayLike<number>): void {
  if (start < 0 || start + ids.length > RING_SIZE)
    throw new RangeError(`ring slots ${start}+${ids.length} of ${RING_SIZE}`);
  const base = slot * RING_SIZE;
  const cfg = maps.ruleCfg.get(slot);
  if (cfg && cfg.flags & RULE_F_ONE_BACKEND) maps.ruleCfg.put(slot, { ...cfg, flags: cfg.flags & ~RULE_F_ONE_BACKEND });
  maps.ruleRing.putRangeU32(base + start, ids);
  if (cfg && cfg.flags & RULE_F_ACTIVE && oneId(maps.ruleRing.getRangeU32(base, RING_SIZE), 1))
    maps.ruleCfg.put(slot, { ...cfg, flags: cfg.flags | RULE_F_ONE_BACKEND });
}

/** The flags word {@link writeRuleCfg} writes for these (`one`: the slot's table holds one id throughout). */
const ruleWord = (flags: number, srcFilter: boolean, one: boolean): number =>
  (flags & ~RULE_F_ONE_BACKEND) | RULE_F_ACTIVE | (srcFilter ? RULE_F_SRC_FILTER : 0) | (one ? RULE_F_ONE_BACKEND : 0);

/** Read slots' rule entries and backend tables (one mapping of rule_ring for all of them). */
export function readRuleSlots(
  maps: DatapathMaps,
  slots: readonly number[],
  visit: (
    slot: number,
    s: {
      flags: number;
      active: boolean;
      srcFilter: boolean;
      statsId: number;
      ring: Uint32Array;
      ringStride: number;
      word: number;
      wordOf: (flags: number, srcFilter: boolean, oneId: boolean) => number;
    },
  ) => void,
): void {
  if (slots.length === 0) return;
  let lo = Infinity;
  let hi = 0;
  for (const s of slots) {
    lo = Math.min(lo, s);
    hi = Math.max(hi, s);
  }
  const cfg = maps.ruleCfg.getRange(lo, hi - lo + 1);
  maps.ruleRing.visitRangesU32(
    slots.map((s) => [s * RING_SIZE, RING_SIZE] as [number, number]),
    (i, ring, ringStride) => {
      const e = cfg[slots[i] - lo] ?? { flags: 0, statsId: 0 };
      // RULE_F_ONE_BACKEND is the writer's, not the plan's: shown only where it is wrong (the ring holds
      // several ids), which the caller sees as a flag the kernel has and the plan has not.
      const wrongOne = e.flags & RULE_F_ONE_BACKEND && !oneId(ring, ringStride ?? 1) ? RULE_F_ONE_BACKEND : 0;
      visit(slots[i], {
        flags: (e.flags & ~(RULE_F_ACTIVE | RULE_F_SRC_FILTER | RULE_F_ONE_BACKEND)) | wrongOne,
        active: (e.flags & RULE_F_ACTIVE) !== 0,
        srcFilter: (e.flags & RULE_F_SRC_FILTER) !== 0,
        statsId: e.statsId,
        ring,
        ringStride,
        word: e.flags,
        wordOf: ruleWord,
      });
    },
    true, // read in place: 10 000 tables of 1 031 ids are not copied at a start
  );
}

/**
 * Clear a slot no match entry points at any more: the rule entry first (so
 * a packet still in flight with the old slot sees "no rule", never a
 * half-cleared one), then ring, prefixes and backends.
 */
export function clearRuleSlot(
  maps: DatapathMaps,
  slot: number,
  srcPrefixes: { length: number; addr: Uint8Array }[],
  backendIds: number[],
): void {
  maps.ruleCfg.put(slot, { flags: 0, statsId: 0 });
  const base = slot * RING_SIZE;
  // Back to the bytes of a never-used slot (zero: backend id 0 is never
  // allocated and its entry stays empty, so the datapath drops as "no
  // backend", as for NO_BACKEND): an undone change leaves every map exactly
  // as it was (test/unit/rollback-property.test.ts).
  maps.ruleRing.putRangeU32(base, new Uint32Array(RING_SIZE));
  for (const p of srcPrefixes) maps.srcAllow.delete({ slot, length: p.length, addr: p.addr } satisfies SrcKey);
  const empty = emptyBackendEntry();
  maps.backends.putMany(backendIds.map((id) => [id, empty] as const));
}

const anyDest = (k: MatchKey) => k.daddr.every((b) => b === 0);

/** A rule_ports value with one entry (k at slot) added (+1) or taken out (-1); XOR is its own inverse. */
function withEntry(p: PortUse, k: MatchKey, slot: number, delta: 1 | -1): PortUse {
  if (!anyDest(k)) return { ...p, dst: Math.max(0, p.dst + delta) };
  return {
    any: Math.max(0, p.any + delta),
    dst: p.dst,
    xorIfindex: ((p.xorIfindex ?? 0) ^ k.ifindex) >>> 0,
    xorSlot: ((p.xorSlot ?? 0) ^ slot) & 0xffffff,
  };
}

/** rule_ports' index of a port in a generation. */
const portAt = (gen: number, port: number): number => gen * PORTS_PER_GEN + port;

const portOf = (maps: DatapathMaps, gen: number, port: number): PortUse =>
  maps.rulePorts.get(portAt(gen, port)) ?? { any: 0, dst: 0 };

const genOf = (k: GenMatchKey): number => k.gen ?? 0;

function checkSlot(slot: number): void {
  if (slot >= 2 ** FOLD_SLOT_BITS) throw new RangeError(`rule slot ${slot} does not fit rule_ports' any_fold`);
}

/** The active rule generation (rule_gen's one entry: 0 or 1; bpf/xdpctl.h XDPCTL_MATCH_GEN). */
export function activeGeneration(maps: DatapathMaps): number {
  return (maps.ruleGen.get(0) ?? 0) & 1;
}

/**
 * Point match keys at a slot (publish) in generation `gen`. A new key is counted (and folded) in
 * rule_ports first, so the datapath looks it up as soon as it exists; a key
 * that moves to another slot is refolded after the move. Each key is one
 * all-or-nothing step for the caller's undo log. `index` false: rule_match only, rule_ports untouched (the
 * reconciler's repair of an entry another tool changed: the index was not changed with it, so the +1/-1 and
 * refold of the old value would make it wrong; checkPortUse recounts it from rule_match right after).
 */
export function publishMatches(maps: DatapathMaps, keys: MatchKey[], slot: number, gen = 0, index = true): void {
  checkSlot(slot);
  for (const key of keys) {
    const k: GenMatchKey = { ...key, gen };
    const old = maps.ruleMatch.get(k);
    if (old === slot) continue;
    if (!index) {
      maps.ruleMatch.put(k, slot, BPF_ANY);
      continue;
    }
    const at = portAt(gen, k.dport);
    const before = portOf(maps, gen, k.dport);
    if (old === undefined) {
      maps.rulePorts.put(at, withEntry(before, k, slot, +1));
      try {
        maps.ruleMatch.put(k, slot, BPF_ANY);
      } catch (e) {
        maps.rulePorts.put(at, before);
        throw e;
      }
    } else {
      maps.ruleMatch.put(k, slot, BPF_ANY);
      if (!anyDest(k)) continue;
      try {
        maps.rulePorts.put(at, withEntry(withEntry(before, k, old, -1), k, slot, +1));
      } catch (e) {
        maps.ruleMatch.put(k, old, BPF_ANY);
        throw e;
      }
    }
  }
}

/**
 * Remove match keys of generation `gen` (unpublish); the port count and fold drop after the entry is gone
 * (`index` false: not, as {@link publishMatches}).
 */
export function removeMatches(maps: DatapathMaps, keys: MatchKey[], gen = 0, index = true): void {
  for (const key of keys) {
    const k: GenMatchKey = { ...key, gen };
    const slot = maps.ruleMatch.get(k);
    if (slot === undefined || !maps.ruleMatch.delete(k) || !index) continue;
    try {
      maps.rulePorts.put(portAt(gen, k.dport), withEntry(portOf(maps, gen, k.dport), k, slot, -1));
    } catch (e) {
      // The count could not follow: put the entry back, so the step is all or nothing.
      maps.ruleMatch.put(k, slot, BPF_ANY);
      throw e;
    }
  }
}

/** A match key without its generation (what core/ names). */
export function plainKey(k: GenMatchKey): MatchKey {
  if (k.gen === undefined) return k;
  const { gen: _gen, ...rest } = k;
  return rest;
}

/** The match entries of the active generation (keys without their generation). */
export function activeMatches(maps: DatapathMaps, gen: number): [MatchKey, number][] {
  const out: [MatchKey, number][] = [];
  for (const [k, slot] of maps.ruleMatch.entriesBatch()) if (genOf(k) === gen) out.push([plainKey(k), slot]);
  return out;
}

/**
 * A many-rule change as one kernel transaction ({@link stageGeneration}): the active generation's match
 * entries copied into the other one, the change's writes made there, then one update of rule_gen.
 */
export interface GenerationTxn {
  /** The active generation while the change is written (what packets see). */
  readonly active: number;
  /** The generation written (switched to at commit). */
  readonly next: number;
  /** The active generation's entries when the transaction began (deleted after the switch). */
  readonly before: GenMatchKey[];
  /** Ports the transaction's entries use, in either generation. */
  readonly ports: Set<number>;
  /**
   * What staging found in the inactive generation and deleted or zeroed (match entries, non-zero port index
   * entries), one line each naming the map, key and value read: the caller says it.
   */
  readonly found: string[];
}

/**
 * Begin a transaction: delete what is in the inactive generation (match entries) and zero its port index
 * entries (the whole range read: nothing there is trusted, another tool may have written it, and a count there
 * would be looked up after the switch), then copy the active generation's match entries and port index
 * entries into it. Nothing a packet looks up changes. What was found there is returned (`found`).
 */
export function stageGeneration(maps: DatapathMaps, active: number, open?: (t: GenerationTxn) => void): GenerationTxn {
  const next = active ^ 1;
  const before: GenMatchKey[] = [];
  const copies: [GenMatchKey, number][] = [];
  const stale: GenMatchKey[] = [];
  const found: string[] = [];
  const counts = new Map<number, PortUse>();
  for (const [k, slot] of maps.ruleMatch.entriesBatch()) {
    if (genOf(k) !== active) {
      stale.push(k);
      found.push(`${genMatchText(k)}: kernel rule slot ${slot}, deleted (inactive generation ${genOf(k)})`);
      continue;
    }
    before.push(k);
    copies.push([{ ...k, gen: next }, slot]);
    counts.set(k.dport, withEntry(counts.get(k.dport) ?? { any: 0, dst: 0 }, k, slot, +1));
  }
  const t: GenerationTxn = { active, next, before, ports: new Set(counts.keys()), found };
  // Known to the caller before the first write: a write that fails part-way leaves a partial copy, which the
  // caller's abort ({@link dropGeneration} of the inactive generation) must delete.
  open?.(t);
  maps.ruleMatch.deleteMany(stale);
  found.push(...zeroPortRange(maps, next, counts));
  maps.rulePorts.putMany([...counts].map(([port, use]) => [portAt(next, port), use] as [number, PortUse]));
  maps.ruleMatch.putMany(copies);
  return t;
}

/** A generation's match key as a line names it (map, ingress ifindex, protocol, port, destination). */
function genMatchText(k: GenMatchKey): string {
  const proto = k.proto === 17 ? 'UDP' : k.proto === 6 ? 'TCP' : `IP protocol ${k.proto}`;
  const dst = k.daddr.every((b) => b === 0) ? 'any destination' : `destination ${[...k.daddr].join('.')}`;
  return `match entry (map rule_match, generation ${genOf(k)}: ifindex ${k.ifindex}, ${proto} port ${k.dport}, ${dst})`;
}

/**
 * Zero a generation's port index entries (read in batches, only the non-zero ones written, except the ports
 * of `keep`, which the caller writes next). Returns a line for each non-zero entry found.
 */
function zeroPortRange(maps: DatapathMaps, gen: number, keep?: Map<number, PortUse>): string[] {
  const vs = maps.rulePorts.info.valueSize;
  const raw = maps.rulePorts.getRangeRaw(portAt(gen, 0), PORTS_PER_GEN);
  const zero = Buffer.alloc(vs);
  const writes: [number, PortUse][] = [];
  const found: string[] = [];
  for (let port = 0; port < PORTS_PER_GEN; port++) {
    if (zero.compare(raw, port * vs, (port + 1) * vs) === 0) continue;
    const now = portUse.decode(Buffer.from(raw.subarray(port * vs, (port + 1) * vs)));
    found.push(
      `port index (map rule_ports, port ${port}, inactive generation ${gen}: index ${portAt(gen, port)}): ` +
        `kernel ${JSON.stringify(now)}, ${keep?.has(port) ? `overwritten with ${JSON.stringify(keep.get(port))}` : 'zeroed'}`,
    );
    if (!keep?.has(port)) writes.push([portAt(gen, port), { any: 0, dst: 0 }]);
  }
  maps.rulePorts.putMany(writes);
  return found;
}

/** The commit point: one update of rule_gen, after which packets look up the transaction's generation only. */
export function switchGeneration(maps: DatapathMaps, t: GenerationTxn): void {
  maps.ruleGen.put(0, t.next);
}

/**
 * Delete a generation no packet looks up any more: the match entries `keys` (of it) and the port index
 * entries of `ports` in it (zeroed).
 */
export function dropGeneration(
  maps: DatapathMaps,
  gen: number,
  keys: readonly GenMatchKey[],
  ports: Iterable<number>,
): void {
  maps.ruleMatch.deleteMany(keys.map((k) => ({ ...k, gen })));
  maps.rulePorts.putMany([...ports].map((port) => [portAt(gen, port), { any: 0, dst: 0 }] as [number, PortUse]));
}

/** The inactive generation's match entries (a transaction's abandoned writes, or leftovers of a crash). */
export function inactiveMatches(maps: DatapathMaps, active: number): GenMatchKey[] {
  return maps.ruleMatch.entriesBatch().flatMap(([k]) => (genOf(k) !== active ? [k] : []));
}

/**
 * Recount (and refold) rule_ports from rule_match (after a crash between the
 * two writes a count may be high; this makes it exact again), after deleting the match entries of the
 * inactive generation (a change a crash interrupted before or after its switch: what the datapath did not
 * or no longer looks up) and zeroing its port index entries,
 * and set the if_flags of every xc_links entry (pins from before if_flags
 * existed have links but no flags; a flag left by a crash only costs a lookup).
 * Returns how many inactive-generation match entries were deleted; `found` receives each of them with the slot it
 * pointed at (what a start says of the rule slots no stored rule holds: core/restore.ts).
 */
export function rebuildPortUse(maps: DatapathMaps, found?: [GenMatchKey, number][]): number {
  rebuildIfFlags(maps);
  const gen = activeGeneration(maps);
  const counts = new Map<number, PortUse>();
  const stale: GenMatchKey[] = [];
  for (const [k, slot] of maps.ruleMatch.entriesBatch()) {
    if (genOf(k) !== gen) {
      stale.push(k);
      found?.push([k, slot]);
      continue;
    }
    const at = portAt(gen, k.dport);
    counts.set(at, withEntry(counts.get(at) ?? { any: 0, dst: 0 }, k, slot, +1));
  }
  maps.ruleMatch.deleteMany(stale);
  // Read, compare, write only what differs (a start with the index right writes nothing).
  maps.rulePorts.syncArray((index) => counts.get(index));
  return stale.length;
}

/**
 * The reconciler's check of the same index, cheaper than {@link rebuildPortUse}: the rule_ports entries of
 * the ports that match entries use (one batch read of their range) must hold their count and fold, and
 * every linked ingress its if_flags word ({@link checkIfFlags}); what differs is written. With `all`, every
 * port's entry is read (65 536 of them, 1 MiB: ~15-30 ms on the 2-vCPU CI machine, so the reconciler asks
 * for it every 30 s) and a port no entry uses must hold zeros: a count there is not only a lookup, as an
 * any-destination count of one is taken as the entry itself. Returns what differed, one record each (its line:
 * index, kernel value, desired value; the port it is of).
 */
export async function checkPortUse(
  maps: DatapathMaps,
  pace?: () => Promise<void>,
  nameOf?: (ifindex: number) => string | undefined,
  all = false,
  gen = 0,
): Promise<EntryRepair[]> {
  const base = portAt(gen, 0);
  let counts = new Map<number, PortUse>();
  let lo = Infinity;
  let hi = -1;
  const count = (entries: Iterable<[GenMatchKey, number]>) => {
    for (const [k, slot] of entries) {
      if (genOf(k) !== gen) continue; // the other generation's: not what the datapath looks up
      counts.set(k.dport, withEntry(counts.get(k.dport) ?? { any: 0, dst: 0 }, k, slot, +1));
      lo = Math.min(lo, k.dport);
      hi = Math.max(hi, k.dport);
    }
  };
  // A batch of match entries at a time, yielding between (10 000 entries read, decoded and counted at once
  // held the event loop ~46 ms of CPU in an ApplyRules of 10 000 whose unchanged rules were compared). The
  // caller runs between two changes (the write queue), so no entry is written meanwhile.
  const batches = pace ? maps.ruleMatch.batches(1024) : undefined;
  let paced = false;
  while (batches) {
    let next;
    try {
      next = batches.next();
    } catch {
      // ENOSPC (a hash bucket larger than a batch) or another refusal: counted again below, at once
      counts = new Map();
      lo = Infinity;
      hi = -1;
      break;
    }
    if (next.done) {
      paced = true;
      break;
    }
    count(next.value);
    // Outside the catch: a reconciler pass's pacer throws to give its turn to a change (core Preempted), which
    // must end the pass, not send it to the count in one piece below.
    await pace!();
  }
  if (!paced) count(maps.ruleMatch.entriesBatch()); // a bucket larger than a batch is read key by key there
  // The flags after the last pace, as every write here: a pass that gives its turn at a pace (core Preempted)
  // logs nothing, so a word written before it would be rewritten and never said.
  const differed = checkIfFlags(maps, undefined, nameOf);
  if (all) {
    lo = 0;
    hi = Math.min(PORTS_PER_GEN, maps.rulePorts.info.maxEntries) - 1;
  }
  if (hi < 0) return differed;
  const vs = maps.rulePorts.info.valueSize;
  const raw = maps.rulePorts.getRangeRaw(base + lo, hi - lo + 1);
  const want = Buffer.alloc(vs);
  const writes: [number, PortUse][] = [];
  const compare = (port: number, use: PortUse, note = '') => {
    portUse.encode(use, want);
    const at = (port - lo) * vs;
    if (want.compare(raw, at, at + vs) === 0) return;
    writes.push([base + port, use]);
    const now = portUse.decode(Buffer.from(raw.subarray(at, at + vs)));
    const entry = `port index (map rule_ports, port ${port}${gen ? `, generation ${gen}: index ${base + port}` : ''})`;
    differed.push({
      line: `${entry}: kernel ${JSON.stringify(now)}, desired ${JSON.stringify(use)}${note}`,
      map: 'rule_ports',
      key: String(base + port),
      entry,
      owner: { kind: 'port', port },
    });
  };
  for (const [port, use] of counts) compare(port, use);
  if (all) {
    // Ports no match entry uses: a count there makes the datapath look the port up, and an any-destination
    // count of one makes its fold the entry itself (no rule_match lookup): a slot another tool wrote there
    // would take that port's datagrams to the slot's backends.
    const none: PortUse = { any: 0, dst: 0 };
    const zero = Buffer.alloc(vs);
    for (let port = lo; port <= hi; port++) {
      if (counts.has(port) || zero.compare(raw, port * vs, (port + 1) * vs) === 0) continue;
      compare(port, none, ' (no match entry uses the port)');
    }
    // The other generation's entries are zero between changes (a change writes them, its switch makes them
    // the ones looked up): a count left there would be looked up after the next switch.
    const other = portAt(gen ^ 1, 0);
    if (other + PORTS_PER_GEN <= maps.rulePorts.info.maxEntries) {
      const rest = maps.rulePorts.getRangeRaw(other, PORTS_PER_GEN);
      for (let port = 0; port < PORTS_PER_GEN; port++) {
        if (zero.compare(rest, port * vs, (port + 1) * vs) === 0) continue;
        const now = portUse.decode(Buffer.from(rest.subarray(port * vs, (port + 1) * vs)));
        const entry = `port index (map rule_ports, port ${port}, inactive generation ${gen ^ 1}: index ${other + port})`;
        writes.push([other + port, none]);
        differed.push({
          line: `${entry}: kernel ${JSON.stringify(now)}, desired ${JSON.stringify(none)} (not looked up until the next many-rule change, which would start from it)`,
          map: 'rule_ports',
          key: String(other + port),
          entry,
          owner: { kind: 'port', port },
        });
      }
    }
  }
  maps.rulePorts.putMany(writes);
  return differed;
}

/** Reset a stats id's counters (before reusing it for a new rule or backend). */
export function resetRuleStats(maps: DatapathMaps, statsId: number): void {
  maps.ruleStats.put(statsId, zeroRuleStats());
}

export function resetBackendStats(maps: DatapathMaps, statsId: number): void {
  maps.backendStats.put(statsId, zeroBackendStats());
}

/** An interface's if_flags word: the array below its size, if_flags_big above (0: none). */
export function ifFlagsOf(maps: DatapathMaps, ifindex: number): number {
  if (ifindex < maps.ifFlags.info.maxEntries) return maps.ifFlags.get(ifindex) ?? 0;
  return maps.ifFlagsBig.get(ifindex) ?? 0;
}

/** Write an interface's if_flags word (in if_flags_big, a 0 is no entry). */
function writeIfFlags(maps: DatapathMaps, ifindex: number, flags: number): void {
  if (ifindex < maps.ifFlags.info.maxEntries) maps.ifFlags.put(ifindex, flags >>> 0);
  else if (flags) maps.ifFlagsBig.put(ifindex, flags >>> 0);
  else maps.ifFlagsBig.delete(ifindex);
}

/** Set or clear if_flags bits of an interface (the link index bits stay). */
export function setIfFlag(maps: DatapathMaps, ifindex: number, bit: number, on: boolean): void {
  const cur = ifFlagsOf(maps, ifindex);
  const next = on ? cur | bit : cur & ~bit;
  if (next === cur && ifindex >= maps.ifFlags.info.maxEntries) return;
  writeIfFlags(maps, ifindex, next);
}

/** The index of a link direction's counters in xc_stats (kept in its ingress's if_flags), if it has one. */
export function linkIndex(maps: DatapathMaps, from: number): number | undefined {
  const f = ifFlagsOf(maps, from);
  return f & IF_F_LINK ? f >>> IF_LINK_SHIFT : undefined;
}

/**
 * The xc_stats indexes in use, per set of maps, each with the ingress ifindex whose counters it holds: read
 * once from if_flags and if_flags_big (one batch read of the array), then kept up to date by the functions
 * here, the only writers of link indexes. This record, not the if_flags word another tool may rewrite, says
 * which index is whose ({@link checkIfFlags} puts a word that lost or changed its index back).
 */
const linkIndexesInUse = new WeakMap<DatapathMaps, Map<number, number>>();

function usedLinkIndexes(maps: DatapathMaps): Map<number, number> {
  let used = linkIndexesInUse.get(maps);
  if (used) return used;
  used = new Map();
  const n = maps.ifFlags.info.maxEntries;
  const raw = maps.ifFlags.getRangeRaw(0, n);
  const own = (ifindex: number, f: number) => {
    // Two ingresses naming one index (written so before this daemon started): the first keeps it.
    if (f & IF_F_LINK && !used!.has(f >>> IF_LINK_SHIFT)) used!.set(f >>> IF_LINK_SHIFT, ifindex);
  };
  for (let i = 0; i < n; i++) own(i, raw.readUInt32LE(i * 4));
  for (const [i, f] of maps.ifFlagsBig.entriesBatch()) own(i, f);
  linkIndexesInUse.set(maps, used);
  return used;
}

/** The xc_stats index recorded for an ingress's counters, if it has one. */
function recordedLinkIndex(maps: DatapathMaps, from: number): number | undefined {
  for (const [idx, owner] of usedLinkIndexes(maps)) if (owner === from) return idx;
  return undefined;
}

/** A free xc_stats index for `from`'s counters, zeroed (taken: give it back with releaseLinkIndex if unused). */
function takeLinkIndex(maps: DatapathMaps, from: number): number {
  const used = usedLinkIndexes(maps);
  const max = maps.xcStats.info.maxEntries;
  let idx = 0;
  while (idx < max && used.has(idx)) idx++;
  if (idx >= max) {
    throw new KernelError('update map xc_stats', 7, [], `all ${max} link counter entries are in use`);
  }
  maps.xcStats.put(idx, zeroLinkStats());
  used.set(idx, from);
  return idx;
}

/** Link-index bits of an if_flags word, from an index. */
const linkBits = (idx: number) => (IF_F_LINK | (idx << IF_LINK_SHIFT)) >>> 0;
/** An if_flags word without its link index. */
const withoutLink = (flags: number) => flags & 0xff & ~IF_F_LINK;

/** What an if_flags word says, for a log line: "0x105 (cross-connect, link counters at 1, generic mode)". */
export function ifFlagsText(flags: number): string {
  const parts: string[] = [];
  if (flags & IF_F_XCONNECT) parts.push('cross-connect');
  if (flags & IF_F_LINK) parts.push(`link counters at ${flags >>> IF_LINK_SHIFT}`);
  if (flags & IF_F_GENERIC) parts.push('generic mode');
  const other = flags & 0xff & ~(IF_F_XCONNECT | IF_F_LINK | IF_F_GENERIC);
  if (other) parts.push(`unknown bits 0x${other.toString(16)}`);
  if (!(flags & IF_F_LINK) && flags >>> IF_LINK_SHIFT)
    parts.push(`index bits ${flags >>> IF_LINK_SHIFT} without the link bit`);
  return `0x${(flags >>> 0).toString(16)} (${parts.length ? parts.join(', ') : 'none'})`;
}

/**
 * Compare the if_flags word of every interface this datapath has an entry for with what it must be, and
 * rewrite what differs; returns what differed, one record each (its line: the map, the ifindex, the kernel's
 * word and the desired one; the interface or link direction it is of). The interfaces: every ingress with a link direction (xc_links), every ingress whose
 * link counters hold an index (recorded by this module), and every interface in `generic` (where our
 * program runs, with whether it runs in generic mode, as the kernel last reported it). The word must hold:
 * - XDPCTL_IF_F_XCONNECT for an ingress with an xc_links entry (a flag left without one only costs the
 *   devmap lookup it would save: left, as a crash between the two writes leaves it);
 * - XDPCTL_IF_F_LINK and the index recorded for the ingress's counters (a word that lost it or names
 *   another index is given the recorded one back: the counters go on where they were; an ingress with a
 *   link and no recorded index is given a new one, its counters from 0), and xc_egress[index] the link's
 *   egress (compared for the directions `wantLinks` holds as xc_links does: from ingress to egress ifindex);
 * - XDPCTL_IF_F_GENERIC exactly where `generic` says our program runs in generic mode (the datapath's UDP
 *   checksum handling depends on it: a native ingress marked generic leaves offloaded senders' checksums
 *   partial, which the receiver drops); interfaces `generic` does not name keep the bit (our program does
 *   not run there, so nothing reads it; unknown when `generic` is undefined);
 * - no other bits.
 * Other interfaces' words are not read (the datapath on them reads nothing but a flag costing a lookup).
 */
export function checkIfFlags(
  maps: DatapathMaps,
  generic?: ReadonlyMap<number, boolean>,
  nameOf: (ifindex: number) => string | undefined = () => undefined,
  wantLinks?: ReadonlyMap<number, number>,
): EntryRepair[] {
  const differed: EntryRepair[] = [];
  const links = new Map(maps.xcLinks.entries());
  const used = usedLinkIndexes(maps);
  const recorded = new Map<number, number>();
  for (const [idx, owner] of used) if (!recorded.has(owner)) recorded.set(owner, idx);
  const ifindexes = new Set([...links.keys(), ...recorded.keys(), ...(generic?.keys() ?? [])]);
  for (const from of [...ifindexes].sort((x, y) => x - y)) {
    const cur = ifFlagsOf(maps, from);
    const to = links.get(from);
    let want = (cur & IF_F_XCONNECT) | (to !== undefined ? IF_F_XCONNECT : 0);
    const g = generic?.get(from);
    want |= g === undefined ? cur & IF_F_GENERIC : g ? IF_F_GENERIC : 0;
    let idx = recorded.get(from);
    let taken: number | undefined;
    if (idx === undefined && to !== undefined) idx = taken = takeLinkIndex(maps, from);
    if (idx !== undefined) want |= linkBits(idx);
    want >>>= 0;
    // The egress the redirect tracking reads: written with a new index; compared where the caller's links
    // want this very direction (an xc_links entry another tool changed is the link step's to rewrite first).
    const egressWas =
      idx === undefined || to === undefined || (taken === undefined && wantLinks?.get(from) !== to)
        ? undefined
        : taken !== undefined
          ? -1
          : (maps.xcEgress.get(idx) ?? 0);
    const map = from < maps.ifFlags.info.maxEntries ? 'if_flags' : 'if_flags_big';
    const name = nameOf(from);
    const of = name ? ` of ${name}` : '';
    try {
      if (egressWas === -1) maps.xcEgress.put(idx!, to!);
      else if (egressWas !== undefined && egressWas !== to) {
        maps.xcEgress.put(idx!, to!);
        const entry = `link counters' egress (map xc_egress, index ${idx}, link direction from${of} ifindex ${from})`;
        differed.push({
          line: `${entry}: kernel ifindex ${egressWas}, desired ifindex ${to}`,
          map: 'xc_egress',
          key: String(idx),
          entry,
          owner: { kind: 'link', ifindex: from },
        });
      }
      if (want === cur) continue;
      writeIfFlags(maps, from, want);
    } catch (e) {
      if (taken !== undefined) used.delete(taken);
      throw e;
    }
    const why: string[] = [];
    if ((cur ^ want) & IF_F_GENERIC) {
      why.push(`our program runs in ${g ? 'generic' : 'native'} mode there`);
    }
    if (taken !== undefined) why.push(`its link counters had no index: given ${taken}, from 0`);
    else if (idx !== undefined && (cur & ~0xff & ~IF_F_LINK) !== (want & ~0xff & ~IF_F_LINK))
      why.push(`its link counters are at ${idx}`);
    else if (idx !== undefined && !(cur & IF_F_LINK)) why.push(`its link counters are at ${idx}`);
    const entry = `interface flags${of} (map ${map}, ifindex ${from})`;
    differed.push({
      line:
        `${entry}: kernel ${ifFlagsText(cur)}, desired ${ifFlagsText(want)}` +
        (why.length ? `: ${why.join('; ')}` : ''),
      map,
      key: String(from),
      entry,
      owner: { kind: 'interface', ifindex: from, ...(name ? { name } : {}) },
    });
  }
  return differed;
}

/**
 * The link entries' flags and counter indexes ({@link checkIfFlags} without judging the generic-mode bit):
 * pins from before if_flags existed have links but no flags, and a link whose ingress has no counter index
 * gets one (its counters start at 0). Only those words are touched (a full rewrite of the 65 536-entry array
 * costs 30-45 ms, on every restore).
 */
export function rebuildIfFlags(maps: DatapathMaps): EntryRepair[] {
  return checkIfFlags(maps);
}

/**
 * Connect one direction: frames arriving on `from` leave on `to`. The link's
 * counters get an index in xc_stats first (zeroed only if it has none, so
 * counters continue across a peer swap) and xc_egress[index] the egress, then
 * the interface's flags name the index and make the datapath look, then the
 * devmap entry makes it live.
 * Returns whether it gave the counters their index (an undo releases only
 * what it created).
 */
export function connectDirection(maps: DatapathMaps, from: number, to: number): boolean {
  const cur = ifFlagsOf(maps, from);
  let taken: number | undefined;
  // The index recorded for this ingress's counters (the word may have lost it to another tool), else a new one.
  const idxNow = recordedLinkIndex(maps, from) ?? (taken = takeLinkIndex(maps, from));
  const want = (withoutLink(cur | IF_F_XCONNECT) | linkBits(idxNow)) >>> 0;
  const idx = want >>> IF_LINK_SHIFT;
  const egressWas = maps.xcEgress.get(idx) ?? 0;
  let wrote = 0;
  try {
    // The egress the redirect tracking mirrors (bpf/xdpctl.bpf.c, xc_egress), before the link uses it.
    maps.xcEgress.put(idx, to);
    wrote = 1;
    writeIfFlags(maps, from, want);
    wrote = 2;
    maps.xcLinks.put(from, to);
  } catch (e) {
    // All or nothing: what this call wrote goes back (the caller's undo only
    // knows about the counters once this returned).
    try {
      if (wrote >= 2) writeIfFlags(maps, from, cur);
      if (wrote >= 1) maps.xcEgress.put(idx, egressWas);
    } finally {
      if (taken !== undefined) usedLinkIndexes(maps).delete(taken);
    }
    throw e;
  }
  return taken !== undefined;
}

/** Disconnect one direction (the counters stay until resetLinkStats); the flag goes after the entry. */
export function disconnectDirection(maps: DatapathMaps, from: number): boolean {
  const had = maps.xcLinks.delete(from);
  setIfFlag(maps, from, IF_F_XCONNECT, false);
  return had;
}

/**
 * Release a link direction's counters: its egress entry is cleared, its
 * ingress's flags stop naming the index (the datapath stops counting into
 * it), then the index is free for another direction (zeroed when given out).
 */
export function resetLinkStats(maps: DatapathMaps, from: number): void {
  const cur = ifFlagsOf(maps, from);
  const idx = recordedLinkIndex(maps, from);
  if (idx === undefined && !(cur & IF_F_LINK)) return;
  if (idx !== undefined) maps.xcEgress.put(idx, 0);
  if (cur & IF_F_LINK) writeIfFlags(maps, from, withoutLink(cur));
  if (idx !== undefined) usedLinkIndexes(maps).delete(idx);
}

/**
 * Record the XDP mode our program runs in on an ingress interface: in generic
 * mode the datapath keeps a partial (offloaded) UDP checksum partial, in
 * native mode it completes it (see update_udp_csum in bpf/xdpctl.bpf.c).
 */
export function setGenericMode(maps: DatapathMaps, ifindex: number, generic: boolean): void {
  setIfFlag(maps, ifindex, IF_F_GENERIC, generic);
}

/** Summed counters of one rule stats id. */
export function ruleCounters(maps: DatapathMaps, statsId: number): RuleStats {
  return sumCounters(maps.ruleStats.getPerCpu(statsId) ?? []);
}

/** Summed counters of one backend stats id. */
export function backendCounters(maps: DatapathMaps, statsId: number): BackendStats {
  return sumCounters(maps.backendStats.getPerCpu(statsId) ?? []);
}

/** Summed counters of one link direction (by ingress ifindex), if it has counters. */
export function linkCounters(maps: DatapathMaps, from: number): LinkStats | undefined {
  const idx = linkIndex(maps, from);
  const per = idx === undefined ? undefined : maps.xcStats.getPerCpu(idx);
  return per && sumCounters(per);
}

/** Summed counters of link directions (by ingress ifindex; zeros for one without counters), in one batch read. */
export function linkCountersMany(maps: DatapathMaps, froms: readonly number[]): Map<number, LinkStats> {
  const idx = new Map<number, number>();
  for (const from of froms) {
    const i = linkIndex(maps, from);
    if (i !== undefined) idx.set(from, i);
  }
  const read = maps.xcStats.getManyPerCpu([...idx.values()]);
  return new Map(froms.map((from) => [from, sumCounters(read.get(idx.get(from) ?? -1) ?? [zeroLinkStats()])]));
}

/** Global verdict/error counters, summed over CPUs modulo 2^64 (see sumCounters), indexed by enum xdpctl_stat. */
export function globalCounters(maps: DatapathMaps): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < maps.globalStats.info.maxEntries; i++) {
    out.push((maps.globalStats.getPerCpu(i) ?? []).reduce((a, b) => BigInt.asUintN(64, a + b), 0n));
  }
  return out;
}
