/**
 * The reconciler's comparison of what the kernel holds for the rules with what it should hold. Our
 * pinned maps can be changed by another tool (bpftool map update/delete, another process with the pins):
 * a backend's MAC overwritten, a match entry deleted, a hash table entry pointing elsewhere. The status
 * cannot say ACTIVE from what was written once; the entries are read back, compared with the plan of
 * each rule from today's facts (the comparison a start makes when it adopts the rules in place:
 * execute.ts repairRuleEntries), and what differs is rewritten and logged once, naming the rule, the
 * entry, the field, the kernel's value and the desired one.
 *
 * Owns no state of its own beyond CoreState.kernelCheckedAt / kernelDrift; writes only through the
 * Dataplane port. Links are compared by the reconciler's link step (resync.ts).
 */
import { backendText, emptyBackendEntry, type MatchKey, type MovedEntries, type SrcKey } from './dataplane.js';
import type { EntryRepair } from './entry-owners.js';
import { matchText, pacer, repairRuleEntries, type ExecContext } from './execute.js';
import type { Facts } from './facts.js';
import type { RuleSpec } from './model.js';
import { planOne, type RulePlan } from './plan-rules.js';
import { matchId, type RuleKernel } from './state.js';

/**
 * How often the reconciler compares every rule's kernel entries: at every pass (each second) while a
 * comparison is cheap, and otherwise so that it takes at most KERNEL_CHECK_SHARE of one CPU on average
 * (the interval is the last comparison's duration divided by it). Measured on the 2-vCPU CI machine:
 * 200 rules of 2 backends ~5 ms (every pass); 10 000 rules of 2 backends 235-368 ms wall, 330-415 ms CPU
 * (mostly planning each rule and checking its 1 031-entry hash table), so every ~5-7 s there.
 */
export const KERNEL_CHECK_MIN_MS = 1000;
/**
 * How often a full comparison also reads the per-port index entries of the ports no rule uses (all 65 536:
 * ~15-30 ms), which must hold zeros: an any-destination count of one there is taken as a match entry.
 */
export const PORT_SWEEP_MS = 30_000;
/** The share of one CPU that the comparison may take on average (5%). */
export const KERNEL_CHECK_SHARE = 0.05;

/** The interval until the next comparison after one that took `lastMs`. */
export function kernelCheckInterval(lastMs: number): number {
  return Math.max(KERNEL_CHECK_MIN_MS, Math.ceil(lastMs / KERNEL_CHECK_SHARE));
}

/** Result of one comparison: what differed (and was rewritten), and how long it took (a port sweep's time aside). */
export interface KernelCheck {
  repaired: EntryRepair[];
  rules: number;
  ms: number;
}

/** The maps whose entries the slot watcher reads (Dataplane.watchSlots); the others: the full comparison's. */
export const QUICK_MAPS: ReadonlySet<string> = new Set(['rule_cfg', 'rule_ring', 'backends']);

/**
 * Rules one comparison of a quick check takes at most (then the next run, each a comparison of its own): small,
 * so that a run completes within a reconciler slice (SLICE_MS) and a pass that gives its turn to a change keeps
 * what it compared (with runs of 1 024, the 10 000 rules an ApplyRules moved were compared again from the start
 * at every turn while UpdateRule calls came one after another: UpdateRule p50 with 10 000 rules 633 ms against
 * 15.7 ms on main).
 */
const QUICK_RULES_PER_RUN = 64;

/** Result of one {@link quickCheck}. */
export interface QuickCheck extends KernelCheck {
  /** Slots and backend ids reported moved since the last pass. */
  moved: number;
  /** The watcher's reads since the last pass, and its longest recent read (ms). */
  reads?: number;
  readMs?: number;
}

/**
 * At every pass between two full comparisons: the rules whose rule entry (rule_cfg), backend table
 * (rule_ring) or backend entries (backends) the slot watcher saw move since the last pass
 * (Dataplane.watchSlots: a thread of its own reads them all every ~0.4 s plus one read, 10 000 tables of
 * 1 031 ids included, off the event loop) are compared ({@link compareKernelEntries} of those names:
 * planned, rewritten where they differ). Another tool's write there is so rewritten within about a pass plus
 * the watcher's cover, whatever the number of rules (the full comparison runs every kernelCheckInterval: ~7 s
 * with 10 000 rules). Our own writes move them too: those rules are compared once and found right. A rule
 * passed over because a change is working on it (`skip`) is compared at a later pass; one whose plan is not
 * what was written is the reconciler's rule step's. Match entries, source prefixes and the per-port index are
 * the full comparison's.
 */
export async function quickCheck(
  ctx: ExecContext,
  facts: Facts,
  skip: ReadonlySet<string> = new Set(),
  pace: () => Promise<void> = pacer(),
): Promise<QuickCheck> {
  const { state, dp } = ctx;
  const started = performance.now();
  let watched = {};
  // rule_gen at every pass (another tool's flip switches every rule's match entries at once), after the last
  // pace: a pass that gives its turn to a change logs nothing, so a write before it would never be said.
  const generation = (): EntryRepair[] => {
    const gen = dp.checkGeneration?.();
    return gen ? [gen] : [];
  };
  const none = (moved: number) => ({
    repaired: generation(),
    rules: 0,
    moved,
    ...watched,
    ms: Math.round(performance.now() - started),
  });
  const m = await takeMoved(ctx, pace);
  if (!m) return none(0);
  watched = { reads: m.reads, readMs: Math.round(m.readMs) };
  const moved = state.movedSlots.size + state.movedBackends.size;
  if (!moved) return none(0);
  // Slots and ids no rule holds (not handed out by the pools, also not to a change under way): zero, or zeroed.
  const freed = await clearFreeEntries(ctx, state.movedSlots, state.movedBackends, pace);
  // Once something is zeroed the pass keeps its turn (a pass that gives it to a change logs nothing: never said).
  if (freed.length) pace = pacer();
  const names: string[] = [];
  let n = 0;
  for (const [name, k] of state.movedSlots.size || state.movedBackends.size ? state.ruleKernel : []) {
    if ((++n & 4095) === 0) await pace();
    if (state.movedSlots.has(k.slot) || [...k.backends.values()].some((b) => state.movedBackends.has(b.id)))
      names.push(name);
  }
  state.movedSlots.clear();
  state.movedBackends.clear();
  if (!names.length) {
    const r = none(moved);
    r.repaired.push(...freed);
    return r;
  }
  const repaired: EntryRepair[] = [];
  let rules = 0;
  let done = 0;
  // In runs (an ApplyRules of 10 000 moves them all): a pass that gives its turn to a change keeps what it
  // compared, and the rules not compared yet are looked at at the next pass.
  try {
    for (; done < names.length; done += QUICK_RULES_PER_RUN) {
      const run = names.slice(done, done + QUICK_RULES_PER_RUN);
      const r = await compareKernelEntries(ctx, facts, run, skip, pace, true);
      repaired.push(...r.repaired);
      rules += r.rules;
    }
  } finally {
    for (const [i, name] of names.entries()) {
      const k = state.ruleKernel.get(name);
      // Not compared yet, or passed over while a change works on it: at the next pass.
      if (k && (i >= done || skip.has(name))) state.movedSlots.add(k.slot);
    }
  }
  repaired.unshift(...generation(), ...freed);
  return { repaired, rules, moved, ...watched, ms: Math.round(performance.now() - started) };
}

/**
 * Take what the slot watcher saw move since the last take into state.movedSlots / movedBackends (the watcher told
 * to read up to the highest slot and id the rules hold); undefined without a watcher.
 */
async function takeMoved(ctx: ExecContext, pace: () => Promise<void>): Promise<MovedEntries | undefined> {
  const { state, dp } = ctx;
  if (!dp.watchSlots) return undefined;
  let slots = 0;
  let ids = 0;
  let n = 0;
  for (const k of state.ruleKernel.values()) {
    if ((++n & 4095) === 0) await pace();
    if (k.slot >= slots) slots = k.slot + 1;
    for (const { id } of k.backends.values()) if (id >= ids) ids = id + 1;
  }
  const m = dp.watchSlots(slots, ids);
  state.watchCoverMs = m.error ? undefined : m.coverMs;
  state.watchError = m.error;
  for (const s of m.slots) state.movedSlots.add(s);
  for (const id of m.backends) state.movedBackends.add(id);
  return m;
}

/**
 * Before a full comparison: what the watcher saw move is taken, and the slots and ids no rule holds among it are
 * zeroed where written ({@link clearFreeEntries}); the rules' are left for the next quick check (the full comparison
 * that follows may pass some over). Without this, a pass of few rules (every pass a full comparison) would never
 * look at a free slot another tool wrote.
 */
export async function clearFreeMoved(ctx: ExecContext, pace: () => Promise<void> = pacer()): Promise<EntryRepair[]> {
  if (!(await takeMoved(ctx, pace))) return [];
  return clearFreeEntries(ctx, ctx.state.movedSlots, ctx.state.movedBackends, pace);
}

/** Free slots or ids read and zeroed per turn at most (each slot's table: 1 031 ids). */
const FREE_PER_TURN = 256;

/**
 * Of the slots and ids the watcher saw move, those no rule holds (neither pool has handed them out: a change under
 * way holds the ones it writes) are read, and each that holds any byte is zeroed back: rule entry and backend table
 * of a slot (rule_cfg, rule_ring), or backend entry of an id (backends). Such a write is another tool's (bpftool
 * map update, libbpf): no match entry points there and no table of a rule names the id, so no packet used it; a
 * rule that takes it later writes every byte of it (dataplane/tables.ts writeRuleSlot: the whole rule entry, the
 * whole table, each backend entry of its table whole), so it would not go live either, but the daemon leaves no
 * foreign bytes in the maps it guards. Our own writes into them (a slot cleared once its rule moved) read zero:
 * nothing said. The slots and ids looked at are taken out of `slots` and `ids`. One repair (warning, counted,
 * fights) per entry zeroed, owned by no object; the writer is not known (the tracepoint programs count writes per
 * slot, not who made them).
 */
export async function clearFreeEntries(
  ctx: ExecContext,
  slots: Set<number>,
  ids: Set<number>,
  pace: () => Promise<void>,
): Promise<EntryRepair[]> {
  const { state, dp } = ctx;
  const out: EntryRepair[] = [];
  const why = 'no rule holds it: another tool wrote it (writer not known)';
  const freeSlots = [...slots].filter((s) => !state.slots.has(s) && s < dp.capacity.ruleSlots);
  for (const s of freeSlots) slots.delete(s);
  // From the first entry zeroed on, only the event loop is given turns (see compareKernelEntries `kept`): a pass that
  // gives its turn to a change logs nothing, so what was zeroed would never be said.
  const kept = pacer();
  const turn = () => (out.length ? kept() : pace());
  for (let at = 0; at < freeSlots.length; at += FREE_PER_TURN) {
    if (at) await turn();
    // Judged again after the pause, and read, zeroed and said in one turn: a change that took a slot meanwhile owns it.
    const part = freeSlots.slice(at, at + FREE_PER_TURN).filter((s) => !state.slots.has(s));
    const found: { slot: number; word: number; statsId: number; set: number; ids: number[] }[] = [];
    dp.readRuleSlots(part, (slot, st) => {
      const stride = st.ringStride ?? 1;
      let set = 0;
      const named = new Set<number>();
      for (let i = 0; i * stride < st.ring.length; i++) {
        const id = st.ring[i * stride];
        if (id === 0) continue;
        set++;
        if (named.size < 8) named.add(id);
      }
      const word = st.word ?? (st.active ? 1 : 0) | st.flags;
      if (set || word || st.statsId) found.push({ slot, word, statsId: st.statsId, set, ids: [...named] });
    });
    for (const f of found) {
      dp.clearRuleSlot(f.slot, [], []);
      const entry = `rule slot ${f.slot} of no rule (maps rule_cfg, rule_ring)`;
      out.push({
        line:
          `${entry}: kernel flags word 0x${f.word.toString(16)}, stats id ${f.statsId}, ${f.set} of ` +
          `${dp.ringSize} table entries set${f.ids.length ? ` (ids ${f.ids.join(', ')}${f.set > f.ids.length ? ', …' : ''})` : ''}, ` +
          `desired zero (${why}): zeroed`,
        map: 'rule_cfg',
        key: String(f.slot),
        entry,
        owner: { kind: 'none' },
      });
    }
  }
  const freeIds = [...ids].filter((id) => !state.backendIds.has(id) && id < dp.capacity.backends);
  for (const id of freeIds) ids.delete(id);
  for (let at = 0; at < freeIds.length; at += FREE_PER_TURN) {
    if (at) await turn();
    const part = freeIds.slice(at, at + FREE_PER_TURN).filter((id) => !state.backendIds.has(id));
    if (!part.length) continue;
    const written = dp.differingBackends(part.map((id) => [id, emptyBackendEntry()]));
    if (!written.length) continue;
    const held = dp.readBackends?.(written) ?? new Map();
    dp.writeBackends(written.map((id) => [id, emptyBackendEntry()]));
    for (const id of written) {
      const entry = `backend entry ${id} of no rule (map backends)`;
      out.push({
        line: `${entry}: kernel ${backendText(held.get(id))}, desired empty (${why}): zeroed`,
        map: 'backends',
        key: String(id),
        entry,
        owner: { kind: 'none' },
      });
    }
  }
  return out;
}

/**
 * Compare the kernel's entries of `names` (every rule with a kernel record when undefined) with the plans
 * from `facts`, rewrite what differs, and delete match entries no rule holds (full checks only). Rules
 * whose plan cannot be made now (an interface missing, a backend without kernel ids) are left to the
 * reconciler's other steps. `slotsOnly`: only their rule entries, backend tables and backend entries (a few
 * rules' match entries and source prefixes would cost a walk of every rule's). Throws what the kernel refused.
 */
export async function compareKernelEntries(
  ctx: ExecContext,
  facts: Facts,
  names?: readonly string[],
  skip: ReadonlySet<string> = new Set(),
  pace: () => Promise<void> = pacer(),
  slotsOnly = false,
): Promise<KernelCheck> {
  const { state, dp } = ctx;
  const started = performance.now();
  const plans: RulePlan[] = [];
  const ks: RuleKernel[] = [];
  let n = 0;
  for (const name of names ?? state.ruleKernel.keys()) {
    if ((++n & 255) === 0) await pace();
    const k = state.ruleKernel.get(name);
    const rule = state.rules.get(name);
    if (!k || !rule || skip.has(name) || state.failed.has(name)) continue;
    if ([...k.ifindexes.values()].some((i) => i < 0)) continue; // waiting for an interface
    const { generation: _g, createTime: _c, updateTime: _u, ...spec } = rule;
    let p: RulePlan;
    try {
      p = planOne({ name, next: spec as RuleSpec, lenient: true }, facts);
    } catch {
      continue; // the reconciler's rule step reports it
    }
    if (p.backends.some((b) => !k.backends.has(b.key))) continue;
    // The plan must be what was written: a rule whose facts changed since is the rule step's to re-apply.
    if (p.matchKeys.length !== k.matchKeys.length || p.prefixes.length !== k.prefixes.length) continue;
    if (p.matchKeys.some((m, i) => matchId(m) !== matchId(k.matchKeys[i]))) continue;
    const written = (k.written ?? k.status).backends;
    const same = p.backends.every((b, i) => {
      const w = written[i];
      return (
        w !== undefined && w.receiving === b.receiving && (!b.receiving || w.mac.toLowerCase() === b.mac.toLowerCase())
      );
    });
    if (!same) continue;
    plans.push(p);
    ks.push(k);
  }
  if (slotsOnly) {
    const repaired = await repairRuleEntries(ctx, plans, ks, pace, () => undefined, true);
    return { repaired, rules: plans.length, ms: Math.round(performance.now() - started) };
  }
  // Match entries that no rule holds (put there by someone else): packets to that port went to a slot.
  // Found before anything is written (the pass may still give its turn while it reads).
  const strays: [MatchKey, number][] = [];
  if (!names) {
    let m = 0;
    for (const [key, slot] of dp.listMatches()) {
      if ((++m & 1023) === 0) await pace();
      if (!state.matchHolders.has(matchId(key))) strays.push([key, slot]);
    }
  }
  let prefixes: ReadonlyMap<number, readonly SrcKey[]> = new Map();
  const repaired = await repairRuleEntries(ctx, plans, ks, pace, (p) => (prefixes = p));
  // rule_gen (after the paced reads, as every write here): the match entries read and kept are those of the
  // generation this daemon made active, never of the one another tool switched rule_gen to.
  const gen = names ? undefined : dp.checkGeneration?.();
  if (gen) repaired.unshift(gen);
  // The match entry only (the index is recounted below): the tool that wrote it did not count it in rule_ports.
  for (const [key, slot] of strays) {
    dp.deleteMatch(key, false);
    const ingress = [{ name: dp.nameOf?.(key.ifindex) ?? 'an interface', ifindex: key.ifindex }];
    const entry = matchText(key, ingress);
    repaired.push({
      line: `${entry}: kernel rule slot ${slot}, desired absent (no rule holds it): deleted`,
      map: 'rule_match',
      key: matchId(key),
      entry,
      owner: { kind: 'none' },
    });
  }
  // The per-port index and the link flags follow the match and link entries (recounted from the match entries
  // as they are now, compared with the index as read, only differences written): a match entry repaired above
  // left rule_ports as the kernel held it, so a line here is a value read, never one this daemon just wrote.
  // On a full check every PORT_SWEEP_MS, the entries of the ports no match entry uses too (they must be zero).
  // From the first entry written on, the comparison keeps the pass's turn (`kept` only yields to the event loop):
  // a reconciler pass that gives its turn to a change (controller.ts resyncPass, Preempted) logs nothing, so what
  // was written here would never be said, counted or fought (the next comparison finds nothing differing). It
  // also keeps the per-port index's recount right after the match entries written (no change writes between).
  const kept = pacer();
  const all = !names && ctx.mono() - state.portsSweptAt >= PORT_SWEEP_MS;
  const sweep = performance.now();
  repaired.push(...((await dp.checkPortIndex?.(repaired.length ? kept : pace, all)) ?? []));
  if (all) state.portsSweptAt = ctx.mono();
  // The sweep's time is not the comparison's: every 30 s, it must not stretch the interval of the next ones.
  const swept = all ? performance.now() - sweep : 0;
  if (!names) repaired.push(...(await sweepStrayPrefixes(ctx, prefixes, kept)));
  return { repaired, rules: plans.length, ms: Math.round(performance.now() - started - swept) };
}

/**
 * Delete the source-prefix entries (map src_allow) of rule slots no rule holds: another tool's (bpftool map
 * update through our pins), or left by a crash. No packet reaches them (no match entry points at their slot),
 * but they take room that a change of ours then misses: the change is refused ENOSPC while our rules hold a
 * fraction of the map. `prefixes`: every entry by slot, as the comparison just read them. Returns one repair
 * per slot, owned by no object ("source prefixes of no rule (map src_allow, rule slot 7: 65530 entries): kernel
 * 65530, desired absent (no rule holds that slot): deleted"), as the reconciler's other repairs. `pace` must not
 * give the pass's turn away (it is awaited between deletes: the lines are returned after the last).
 */
export async function sweepStrayPrefixes(
  ctx: ExecContext,
  prefixes: ReadonlyMap<number, readonly SrcKey[]>,
  pace: () => Promise<void>,
): Promise<EntryRepair[]> {
  const { dp, state } = ctx;
  const held = new Set<number>();
  for (const k of state.ruleKernel.values()) held.add(k.slot);
  const out: EntryRepair[] = [];
  let n = 0;
  for (const [slot, keys] of prefixes) {
    if (held.has(slot)) continue;
    for (const k of keys) {
      if ((++n & 1023) === 0) await pace();
      dp.deleteSrcPrefix(k);
    }
    const entry = `source prefixes of no rule (map src_allow, rule slot ${slot})`;
    out.push({
      line:
        `source prefixes of no rule (map src_allow, rule slot ${slot}: ${keys.length} entries): ` +
        `kernel ${keys.length}, desired absent (no rule holds that slot): deleted`,
      map: 'src_allow',
      key: String(slot),
      entry,
      owner: { kind: 'none' },
    });
  }
  return out;
}
