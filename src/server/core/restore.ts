/**
 * Start-up: adopt a stored desired state with the datapath still forwarding
 * the previous process's entries, and reconcile the kernel with it (remove
 * match entries, source prefixes and links nobody wants).
 */
import { modesToKeep } from './keep-mode.js';
import { parsePrefix } from '../net/addr.js';
import { adoptStrayAttachments, releaseUnusedInterfaces, type ExecContext } from './execute.js';
import { fetchInterfaces, type Facts } from './facts.js';
import { linkKey, type LinkSpec, type RuleRecord } from './model.js';
import type { RuleOp } from './plan-rules.js';
import { failedStatus, restoringStatus, waitingStatus } from './rule-status.js';
import { matchId } from './state.js';
import {
  backendText,
  emptyBackendEntry,
  type BackendEntry,
  type MatchKey,
  type StartGenerations,
} from './dataplane.js';
import { NAMED_FIRST, nameFirst } from './name-first.js';
import type { StoredRule, StoredState } from './store.js';
import { logFindings, NAMED_IN_SUMMARY } from './log-summary.js';

/** The transactions restore and resync run (the controller's, inside its serial queue). */
export interface Transactions {
  /** `napi`: veth-peer checks the reconciler made this pass (backends failing one stay out of the table). */
  applyRuleOps(ops: RuleOp[], restoring: boolean, napi?: Facts['napi']): Promise<void>;
  /** Adopt rules in place (start-up); returns the ops that could not be adopted. */
  adoptRuleOps(ops: RuleOp[]): Promise<RuleOp[]>;
  /** `tolerant`: an interface another XDP program occupies is reported, not fatal (restore, resync). */
  applyLinkSet(next: Map<string, LinkSpec>, field: string, tolerant?: boolean): Promise<void>;
  /**
   * A start's judgements of the backends (forwarding loops the host makes with the rules and these links, static
   * MACs the host contradicts: resync.ts judgeBeforeStartWrites), recorded so that every plan after it keeps
   * those backends out. Run by restore before it writes anything.
   */
  judgeBackends(links: readonly LinkSpec[]): Promise<void>;
}

/**
 * Take over a stored desired state. Every id the kernel may still use is
 * reserved first; each rule is then written into a fresh slot and published
 * over the old one (packets move from the old complete rule to the new
 * complete rule), and finally everything nobody wants is removed. Counters
 * continue: the stored stats ids are reused.
 */
export async function restore(ctx: ExecContext, tx: Transactions, stored: StoredState): Promise<void> {
  const { dp, state } = ctx;
  // Before any attach: the ingresses a switch to native mode would stop forwarding keep their mode.
  for (const [name, why] of await modesToKeep(ctx, stored)) state.keepMode.set(name, why);
  // A program from an older layout may have left the port index empty:
  // count first, so the datapath sees the existing entries before any attach.
  const gens = dp.rebuildPortIndex() ?? undefined;
  const pinnedMatches = dp.listMatches();
  const referenced = new Set(pinnedMatches.map(([, slot]) => slot));
  // Source prefixes of dead slots would leak into a fresh slot: sweep them now.
  sweepSrcPrefixes(ctx, referenced);
  const known = new Set<number>();
  const cap = dp.capacity;
  // Ids a smaller capacity no longer has (a --max-rules migration): the rule gets fresh ids.
  const fits = (k: NonNullable<StoredState['rules'][number]['kernel']>) =>
    k.slot < cap.ruleSlots &&
    k.statsId < cap.statsIds &&
    Object.values(k.backends).every((b) => b.id < cap.backends && b.statsId < cap.backends);
  /** Rules whose stored kernel ids this capacity has. */
  const fitsNow = new Set<StoredRule>();
  for (const r of stored.rules) {
    const kernel = r.kernel;
    state.setRecord(r.name, recordOf(r));
    if (!kernel || !fits(kernel)) continue;
    fitsNow.add(r);
    known.add(kernel.slot);
    state.slots.take(kernel.slot);
    state.ruleStatsIds.take(kernel.statsId);
    for (const b of Object.values(kernel.backends)) {
      state.backendIds.take(b.id);
      state.backendStatsIds.take(b.statsId);
    }
    state.setKernel(r.name, {
      slot: kernel.slot,
      statsId: kernel.statsId,
      matchKeys: [],
      prefixes: r.sourcePrefixes.map((p) => {
        const x = parsePrefix(p);
        return { length: x.length, addr: x.bytes };
      }),
      backends: idsByKey(kernel.backends),
      ifindexes: new Map(),
      status: restoringStatus(),
    });
  }
  // What a pass would take out (a backend closing a forwarding loop the host made, a static MAC the host
  // contradicts) is judged before anything is written: the plans below keep it out, so that the kernel never
  // carries, even until the first pass, what the last run took out and the daemon would refuse.
  await tx.judgeBackends(stored.links);
  // Slots in use that the state does not know (a crash after a kernel
  // change and before it was saved): keep them and their backends until
  // the switch is done.
  const orphans = [...referenced].filter((s) => !known.has(s));
  const heldIds = new Set<number>();
  for (const k of state.ruleKernel.values()) for (const b of k.backends.values()) heldIds.add(b.id);
  /** The backend ids only orphans hold: emptied and freed with them (below), not left for the next start to find. */
  const orphanIds = new Set<number>();
  for (const slot of orphans) {
    state.slots.take(slot);
    for (const id of dp.readRing(slot)) {
      if (id === dp.noBackend || id === 0 || heldIds.has(id)) continue;
      state.backendIds.take(id);
      heldIds.add(id);
      orphanIds.add(id);
    }
  }
  // Slots written that no stored rule holds and no match entry of the live generation points at: cleared now, with
  // the backend entries of their tables that no stored rule or orphan holds. What each was is said from what the
  // kernel shows of it (clearUnheldSlots): the inactive generation's entries pointing there, the counters of its
  // stats ids, a stored rule's stats id in its rule entry.
  const unheld = clearUnheldSlots(ctx, known, referenced, heldIds, gens);
  // Backend entries no stored rule holds and no slot's table kept here points at: another tool's, or a killed
  // change's whose slot was cleared before. Unreachable now; a new rule taking the id writes it whole, but a start
  // leaves no foreign bytes in the three maps the slot watcher guards (rule_cfg, rule_ring, backends).
  const freeBackends = clearFreeBackends(ctx, heldIds, [...known, ...orphans]);
  // A rule is judged as a pass judges it (plan-rules.ts, lenient): an ingress missing now gets no match entry, a
  // backend whose egress is missing stays out of the table (its flows go to the others), and the rest is adopted
  // in place, forwarding as it did. Only a rule with no ingress or no backend egress there waits (reported); the
  // reconciler's pass writes it once one is back. Each interface is looked up once, however many rules name it.
  const facts = fetchInterfaces(
    dp,
    stored.links.flatMap((l) => [l.a, l.b]),
  );
  const exists = (i: string) => {
    if (!facts.interfaces.has(i)) fetchInterfaces(dp, [i], facts);
    return facts.interfaces.get(i) !== undefined;
  };
  const ready = stored.rules.filter(
    (r) => r.ingressInterfaces.some(exists) && r.backends.some((b) => exists(b.interface)),
  );
  /** Rules written without some of their interfaces (missing now): named in the restore line. */
  const partial = ready.filter(
    (r) => !r.ingressInterfaces.every(exists) || !r.backends.every((b) => exists(b.interface)),
  );
  const isReady = new Set(ready);
  for (const r of stored.rules) {
    if (isReady.has(r)) continue;
    const k = state.ruleKernel.get(r.name);
    const slot = k?.slot ?? state.slots.alloc();
    state.setKernel(r.name, {
      slot,
      statsId: k?.statsId ?? state.ruleStatsIds.alloc(),
      matchKeys: [],
      prefixes: k?.prefixes ?? [],
      backends: k?.backends ?? new Map(),
      // What this start found (-1: missing), for the pass that writes it to say what it writes against.
      ifindexes: new Map(
        [...r.ingressInterfaces, ...r.backends.map((b) => b.interface)].map(
          (i) => [i, exists(i) ? facts.interfaces.get(i)!.ifindex : -1] as const,
        ),
      ),
      waitingSinceStart: true,
      status: waitingStatus(),
    });
  }
  // The record restore set above is the spec (the rest of a record is not read by a plan; a rewrite copies it).
  // Lenient, as a pass's re-apply: a missing interface takes out its own part, not the rule.
  const opOf = (r: StoredRule): RuleOp => ({ name: r.name, next: state.rules.get(r.name)!, lenient: true });
  // Rules whose stored slot the kernel may still hold are adopted in place:
  // every entry compared with the desired state, only differences written.
  const inPlace = ready.filter((r) => fitsNow.has(r) && known.has(r.kernel!.slot));
  const isInPlace = new Set(inPlace);
  const ops = [...(await tx.adoptRuleOps(inPlace.map(opOf))), ...ready.filter((r) => !isInPlace.has(r)).map(opOf)];
  // Each rule is written into a fresh slot while its old slot still holds its
  // source prefixes and backends: rewrite in groups that fit next to what is
  // in the tables, so that a state that fits the tables always restores.
  for (const group of fitting(ctx, ops)) await applyEach(ctx, tx, group);
  // Every link whose interfaces exist is written; one whose interface is missing waits (reported; resync
  // writes it when the interface appears) and never takes the others down.
  let linksFailed = false;
  try {
    await tx.applyLinkSet(new Map(stored.links.map((l) => [linkKey(l), l])), 'links', true);
  } catch (e) {
    // The cross-connects the datapath has keep forwarding; resync tries again.
    linksFailed = true;
    ctx.log.error({ err: e }, 'links not restored: the datapath keeps the directions it has');
  }
  if (linksFailed) for (const l of stored.links) state.links.set(linkKey(l), l);
  reconcileEntries(ctx, linksFailed);
  // Those removed are said in one line at error level, with the count and the first few named with what the kernel
  // shows they forwarded (each of the others at debug: a reset over 3 000 rules wrote 3 000 error lines, ~1.9 MB in
  // 200 ms, and a third of them were dropped), and why the store lacks them, from what the start read of the pins'
  // store generation (orphanCause).
  const ifnames = new Map<number, string | undefined>();
  for (const [name, info] of facts.interfaces) if (info) ifnames.set(info.ifindex, name);
  // An ingress no stored rule names (a reset with an empty store) is named by the kernel, once per ifindex.
  const ifname = (i: number) => {
    if (!ifnames.has(i)) ifnames.set(i, dp.nameOf?.(i));
    return ifnames.get(i);
  };
  const cause = orphanCause(stored);
  orphans.sort((a, b) => a - b); // named in slot order
  const bySlot = new Map<number, string[]>(orphans.map((slot) => [slot, []]));
  for (const [k, slot] of pinnedMatches) bySlot.get(slot)?.push(describeMatch(k, ifname(k.ifindex)));
  const orphanEntries = (slot: number) => bySlot.get(slot)!;
  logFindings(ctx.log, 'error', orphans, {
    name: (slot) => `slot ${slot}: ${orphanEntries(slot).join(', ')}`,
    text: (n, named) =>
      `restore removed ${n === 1 ? 'a rule' : `${n} rules`} the state store does not know, which the pinned ` +
      `datapath forwarded: ${named}. ${cause}`,
    fields: { slots: orphans.slice(0, NAMED_IN_SUMMARY) },
    detail: (slot) => [
      { slot, matchEntries: orphanEntries(slot) },
      `restore removed a rule the state store does not know, which the pinned datapath forwarded: slot ${slot}, ` +
        `${orphanEntries(slot).join('; ')} (one of ${orphans.length}: see the error line above for why)`,
    ],
  });
  for (const slot of orphans) {
    // Its backend entries go with it (before, they stayed written and the next start said them as unheld).
    const ids = dp.readRing(slot).filter((id) => orphanIds.delete(id));
    dp.clearRuleSlot(slot, [], ids);
    for (const id of ids) state.backendIds.release(id);
    state.slots.release(slot);
  }
  sweepSrcPrefixes(ctx, new Set([...state.ruleKernel.values()].map((k) => k.slot)));
  adoptStrayAttachments(ctx);
  releaseUnusedInterfaces(ctx);
  // No second recount of the port index: it was made exact before anything else, and every match entry
  // written or removed since went through putMatch/deleteMatch with the index moved with it (the adoption's
  // repairs too: execute.ts writeRepairs), which keep it exact.
  const seen = observedRestore(
    ctx,
    stored,
    facts,
    new Set(stored.rules.filter((r) => !isReady.has(r)).map((r) => r.name)),
    new Map(
      partial.map((r) => [
        r.name,
        [...new Set([...r.ingressInterfaces, ...r.backends.map((b) => b.interface)])].filter((i) => !exists(i)),
      ]),
    ),
  );
  ctx.log.info(
    { ...seen.counts, orphans: orphans.length + unheld, unheldSlots: unheld, freeBackends },
    `restored: ${seen.text}`,
  );
}

/**
 * Why the state store lacks rules the pins hold, from what the start read (StoredState `reset`, `ahead`, `pinsLevel`,
 * `pins`): a --reset-datapath that took the store as the truth, a commit that landed after the kernel was last
 * written, a change written into the kernel and never committed, a store older than the pins (both generations), or,
 * only when the pins record no store generation (or it cannot be read), either of the last two. Before, a reset
 * with a new, empty store over pins that record generation 13 was said as "the pins record no store generation".
 */
export function orphanCause(stored: StoredState): string {
  const p = stored.pins;
  const gens =
    p?.generation !== undefined
      ? `the pins record store generation ${p.generation}; this store was at generation ${p.store}` +
        (p.store === 0 ? ' (new)' : '')
      : undefined;
  if (stored.reset !== undefined) {
    return (
      `This start ran with --reset-datapath, which takes the state store as the truth and removes what the ` +
      `datapath holds that it lacks (why: its warning "--reset-datapath: clearing them" above)${gens ? `; ${gens}` : ''}`
    );
  }
  if (stored.ahead) {
    return (
      `The store is at generation ${stored.ahead.store}, ahead of the generation ${stored.ahead.pins} the ` +
      'pins record (the one the kernel reflects): the store lacks this rule because a commit landed after ' +
      'the kernel was last written from the store: either a change that was acknowledged and whose daemon ' +
      'stopped before it cleared what the change replaced and wrote the pins, or one the daemon had undone in the kernel and refused (the client was told the ' +
      'change was not applied) whose commit completed on the disk after the daemon stopped; the store ' +
      'holds that change, so this start applies it (the kernel keeps no rule names)'
    );
  }
  if (stored.pinsLevel) {
    return (
      `The pins record this store's generation${p?.generation !== undefined ? ` (${p.generation})` : ''}: it is a ` +
      'change the daemon wrote into the kernel and stopped before committing (it was never acknowledged)'
    );
  }
  if (p?.generation !== undefined && p.generation > p.store) {
    return (
      `This state store is older than the datapath: ${gens} (a previous --state-dir, a restored copy): then put ` +
      'that rule back, or restart on the store this datapath was written from'
    );
  }
  const why =
    p === undefined
      ? ''
      : p.unreadable !== undefined
        ? ` (the pins' store generation cannot be read: ${p.unreadable})`
        : ' (the pins record no store generation to tell)';
  return (
    'Either a change was not saved before the daemon stopped (it was never acknowledged), or this ' +
    `state store is older than the datapath (a previous --state-dir, a restored copy)${why}: then put that rule ` +
    'back, or restart on the store this datapath was written from'
  );
}

/**
 * Clear the rule slots below the capacity that hold something (rule entry, backend table) while no stored rule
 * (`known`) holds them and no match entry of the live generation (`referenced`) points at them, and the backend
 * entries of their tables not in `heldIds`. Says each at error level (slot, rule entry word, ids) with what the
 * kernel shows of it ({@link unheldWhy}). Returns how many.
 */
function clearUnheldSlots(
  ctx: ExecContext,
  known: ReadonlySet<number>,
  referenced: ReadonlySet<number>,
  heldIds: ReadonlySet<number>,
  gens: StartGenerations | undefined,
): number {
  const { dp } = ctx;
  const slots: number[] = [];
  for (let s = 0; s < dp.capacity.ruleSlots; s++) if (!known.has(s) && !referenced.has(s)) slots.push(s);
  const found: UnheldSlot[] = [];
  dp.readRuleSlots(slots, (slot, st) => {
    const ids = new Set<number>();
    const stride = st.ringStride ?? 1;
    for (let i = 0; i * stride < st.ring.length; i++) {
      const id = st.ring[i * stride];
      if (id !== 0 && id !== dp.noBackend) ids.add(id);
    }
    const word = st.word ?? (st.active ? 1 : 0) | st.flags;
    // Every byte: a table of NO_BACKEND ids (no backend id among them) is written too.
    let table = ids.size > 0;
    for (let i = 0; !table && i * stride < st.ring.length; i++) table = st.ring[i * stride] !== 0;
    if (!table && !st.active && !word && !st.statsId) return;
    found.push({ slot, word, statsId: st.statsId, ids: [...ids], inactive: 0, sent: [] });
  });
  if (found.length) observeUnheld(ctx, found, gens);
  let emptied = 0;
  const said = new Map<number, number>();
  for (const f of found) {
    const free = f.ids.filter((id) => !heldIds.has(id));
    dp.clearRuleSlot(f.slot, [], free);
    said.set(f.slot, free.length);
    emptied += free.length;
  }
  const live = gens?.live;
  const kinds = { sent: 0, inactiveGeneration: 0, otherVersion: 0, noRule: 0 };
  for (const f of found) kinds[unheldKind(f)]++;
  // The first NAMED_FIRST each at error level, the rest in one line with their count (each at debug level): a
  // kill in the middle of a 3 000-rule change leaves 3 000.
  nameFirst(
    found,
    (f) => f.slot,
    (f, named) =>
      ctx.log[named ? 'error' : 'debug'](
        { slot: f.slot, backendIds: f.ids, kind: unheldKind(f) },
        `restore cleared rule slot ${f.slot} (map rule_cfg: kernel flags word 0x${f.word.toString(16)}, stats id ` +
          `${f.statsId}; map rule_ring: ${f.ids.length} backend ids; map backends: ${said.get(f.slot)} entries ` +
          `emptied): ${unheldWhy(f, live)}`,
      ),
    (left, ranges) => {
      const ids = left.reduce((n, f) => n + f.ids.length, 0);
      const empties = left.reduce((n, f) => n + said.get(f.slot)!, 0);
      const rest = { sent: 0, inactiveGeneration: 0, otherVersion: 0, noRule: 0 };
      for (const f of left) rest[unheldKind(f)]++;
      ctx.log.error(
        { count: left.length, total: found.length, slots: ranges, backendEntriesEmptied: emptied, kinds: rest },
        `restore cleared ${left.length} more rule slots (${found.length} in all; ${NAMED_FIRST} named above; each ` +
          `at debug level with what the kernel showed of it): rule slots ${ranges} (map rule_cfg: their entries; ` +
          `map rule_ring: ${ids} backend ids in their tables; map backends: ${empties} entries emptied). No stored ` +
          `rule holds them and no match entry of the live generation points at them: ${kindsText(rest)}`,
      );
    },
  );
  return found.length;
}

/** A rule slot no stored rule holds and the live generation does not look up, as a start found it. */
interface UnheldSlot {
  slot: number;
  word: number;
  statsId: number;
  ids: number[];
  /** Match entries of the inactive generation (deleted by this start) that pointed at it. */
  inactive: number;
  /** Counters of its stats ids that no stored rule holds (so only this slot's rule counted there) that are not zero. */
  sent: string[];
  /** The stored rule whose stats id its rule entry carries, and the slot that rule holds now. */
  version?: [string, number];
}

/**
 * Read what the kernel shows of each slot beyond its bytes: the inactive generation's match entries that pointed at
 * it (read by the start before it deleted them), and the counters of its stats ids (rule entry's, its backend
 * entries') that no stored rule holds: a stored rule's are shared with its slot now and tell nothing of this one.
 */
function observeUnheld(ctx: ExecContext, found: UnheldSlot[], gens: StartGenerations | undefined): void {
  const { dp, state } = ctx;
  const inactive = new Map<number, number>();
  for (const [, slot] of gens?.inactive ?? []) inactive.set(slot, (inactive.get(slot) ?? 0) + 1);
  const ruleStats = new Map<number, [string, number]>();
  const backendStats = new Set<number>();
  for (const [name, k] of state.ruleKernel) {
    ruleStats.set(k.statsId, [name, k.slot]);
    for (const b of k.backends.values()) backendStats.add(b.statsId);
  }
  const entries = dp.readBackends?.([...new Set(found.flatMap((f) => f.ids))]) ?? new Map<number, BackendEntry>();
  const ruleIds = [...new Set(found.map((f) => f.statsId).filter((id) => !ruleStats.has(id)))];
  const backendIds = [
    ...new Set(
      found.flatMap((f) =>
        f.ids.map((id) => entries.get(id)?.statsId ?? -1).filter((s) => s >= 0 && !backendStats.has(s)),
      ),
    ),
  ].filter((s) => s < dp.capacity.backends);
  const read = dp.readCounters(
    ruleIds.filter((s) => s < dp.capacity.statsIds),
    backendIds,
    [],
  );
  for (const f of found) {
    f.inactive = inactive.get(f.slot) ?? 0;
    f.version = f.word ? ruleStats.get(f.statsId) : undefined;
    const r = ruleStats.has(f.statsId) ? undefined : read.rules.get(f.statsId);
    if (r && r.matched > 0n)
      f.sent.push(`rule stats id ${f.statsId}: ${r.matched} packets matched, ${r.redirected} redirected`);
    for (const id of f.ids) {
      const s = entries.get(id)?.statsId;
      const b = s === undefined || backendStats.has(s) ? undefined : read.backends.get(s);
      if (b && b.packets > 0n) f.sent.push(`backend ${id} (stats id ${s}): ${b.packets} packets`);
    }
  }
}

type UnheldKind = 'sent' | 'inactiveGeneration' | 'otherVersion' | 'noRule';

function unheldKind(f: UnheldSlot): UnheldKind {
  if (f.sent.length) return 'sent';
  // A slot carrying a stored rule's stats id is another version of that rule, whichever generation points at it:
  // its packets were counted under that rule's id, so "no packet was sent to it" cannot be said (twenty-fifth
  // review: an updated rule's old slot, left in the inactive generation after the switch, was said never sent).
  if (f.version) return 'otherVersion';
  return f.inactive ? 'inactiveGeneration' : 'noRule';
}

/** What the kernel showed of an unheld slot, and what it was, in the words of a restore line. */
function unheldWhy(f: UnheldSlot, live: number | undefined): string {
  const gen = live === undefined ? 'the live generation' : `the live generation ${live}`;
  const other = live === undefined ? 'the inactive generation' : `the inactive generation ${live ^ 1}`;
  const v = f.version;
  const version = v
    ? `its rule entry carries the stats id ${f.statsId} of rule ${v[0]}, which holds slot ${v[1]} now: `
    : '';
  const was = f.inactive
    ? `${f.inactive} match entries of ${other} pointed at it (deleted by this start), none of ${gen}`
    : `no match entry of either generation points at it`;
  switch (unheldKind(f)) {
    case 'sent':
      return (
        `no stored rule holds it and ${was}; it was sent packets, counted under stats ids no stored rule holds ` +
        `(${f.sent.join('; ')}): ${version}the old rules a many-rule change replaced (its daemon stopped after its ` +
        'switch, before freeing them)'
      );
    case 'inactiveGeneration':
      return (
        `no stored rule holds it and ${was}, and its stats ids that no stored rule holds counted no packet: ` +
        `${version}the new rules of a many-rule change whose daemon stopped before its switch (never acknowledged): ` +
        'no packet was sent to it'
      );
    case 'otherVersion':
      return (
        `no stored rule holds it and ${was}; ${version}another version of that rule: the old one a many-rule ` +
        "change replaced (its daemon stopped after its switch, before freeing it: it was sent that rule's packets " +
        `until the switch, counted with its current slot's under stats id ${f.statsId}), or a new one of a change ` +
        'whose daemon stopped before publishing it (never looked up); its stats ids that no stored rule holds ' +
        'counted no packet, so the kernel does not tell which'
      );
    case 'noRule':
      return (
        `written by no rule this daemon knows (no stored rule holds it or its stats ids, and ${was}; those stats ` +
        'ids counted no packet): a rule of a many-rule change whose daemon stopped before publishing it, or ' +
        "another tool's"
      );
  }
}

/** A summary line's kinds of unheld slots, counted. */
function kindsText(k: Record<UnheldKind, number>): string {
  const parts = [
    k.sent
      ? `${k.sent} were sent packets that stats ids no stored rule holds counted (old rules a many-rule change replaced)`
      : '',
    k.inactiveGeneration
      ? `${k.inactiveGeneration} were pointed at by the inactive generation only and counted no packet (new rules staged by a change that stopped before its switch: no packet was sent to them)`
      : '',
    k.otherVersion
      ? `${k.otherVersion} carry the stats id of a stored rule held in another slot (another version of it: the old one a change replaced after its switch, or a new one never published; the kernel does not tell which)`
      : '',
    k.noRule
      ? `${k.noRule} written by no rule this daemon knows (a change's unpublished rules, or another tool's)`
      : '',
  ].filter(Boolean);
  return parts.join('; ');
}

/**
 * Empty the backend entries below the capacity that hold any byte while no id of `heldIds` (stored rules', orphan
 * slots') is theirs and no table of `slots` (the slots kept: stored rules' and orphans', as the kernel holds them)
 * points at them. Says the first NAMED_FIRST at error level (id, what the entry held), the rest in one line. Returns
 * how many.
 */
function clearFreeBackends(ctx: ExecContext, heldIds: ReadonlySet<number>, slots: readonly number[]): number {
  const { dp } = ctx;
  const hi = dp.capacity.backends - 1;
  const written =
    dp.nonEmptyBackends?.(0, hi) ??
    dp.differingBackends(
      Array.from({ length: hi + 1 }, (_, id) => [id, emptyBackendEntry()] as [number, BackendEntry]),
    );
  let free = written.filter((id) => !heldIds.has(id));
  if (!free.length) return 0; // (the usual start: the tables of the slots kept are not read)
  const pointed = new Set<number>();
  dp.readRuleSlots(slots, (_slot, st) => {
    const stride = st.ringStride ?? 1;
    for (let i = 0; i * stride < st.ring.length; i++) pointed.add(st.ring[i * stride]);
  });
  free = free.filter((id) => !pointed.has(id));
  if (!free.length) return 0;
  const held = dp.readBackends?.(free) ?? new Map<number, BackendEntry>();
  dp.writeBackends(free.map((id) => [id, emptyBackendEntry()]));
  const why =
    'no stored rule holds that backend id and no rule slot kept points at it, so no packet was sent to it: ' +
    "another tool's write, or a killed change's";
  nameFirst(
    free,
    (id) => id,
    (id, named) =>
      ctx.log[named ? 'error' : 'debug'](
        { backendId: id },
        `restore emptied backend entry ${id} (map backends: kernel ${backendText(held.get(id))}): ${why}`,
      ),
    (left, ranges) =>
      ctx.log.error(
        { count: left.length, total: free.length, backendIds: ranges },
        `restore emptied ${left.length} more backend entries (${free.length} in all; ${NAMED_FIRST} named above; ` +
          `each at debug level): backend ids ${ranges}: ${why}`,
      ),
  );
  return free.length;
}

/**
 * What a restore put in the kernel, read back from it (not what was stored or attempted): a rule counts
 * when every match entry it needs is in the kernel pointing at its slot, a link when every direction it
 * needs is in the devmap from its ingress's ifindex to its egress's. Rules and links waiting for an
 * interface, and rules marked FAILED, are counted apart.
 */
export function observedRestore(
  ctx: ExecContext,
  stored: StoredState,
  facts: Facts,
  waitingRules: ReadonlySet<string>,
  /** Rules written without some of their interfaces (missing now) -> those interfaces. */
  partialRules: ReadonlyMap<string, readonly string[]> = new Map(),
): {
  counts: {
    rules: { stored: number; inKernel: number; waiting: number; failed: number; partial: number };
    links: { stored: number; inKernel: number; waiting: number; failed: number };
  };
  text: string;
} {
  const { dp, state } = ctx;
  const matches = new Map(dp.listMatches().map(([k, slot]) => [matchId(k), slot]));
  let rulesIn = 0;
  for (const r of stored.rules) {
    const k = state.ruleKernel.get(r.name);
    if (k && k.matchKeys.length > 0 && k.matchKeys.every((m) => matches.get(matchId(m)) === k.slot)) rulesIn++;
  }
  const ruleFailed = stored.rules.filter((r) => state.failed.has(r.name)).length;
  const devmap = new Map(dp.listLinks());
  const ifindex = (name: string) => {
    if (!facts.interfaces.has(name)) fetchInterfaces(dp, [name], facts);
    return facts.interfaces.get(name)?.ifindex;
  };
  let linksIn = 0;
  let linksWaiting = 0;
  for (const l of stored.links) {
    const a = ifindex(l.a);
    const b = ifindex(l.b);
    if (a === undefined || b === undefined) {
      linksWaiting++;
      continue;
    }
    if (devmap.get(a) === b && (l.direction !== 'both' || devmap.get(b) === a)) linksIn++;
  }
  const counts = {
    rules: {
      stored: stored.rules.length,
      inKernel: rulesIn,
      waiting: waitingRules.size,
      failed: ruleFailed,
      partial: partialRules.size,
    },
    links: {
      stored: stored.links.length,
      inKernel: linksIn,
      waiting: linksWaiting,
      failed: stored.links.length - linksIn - linksWaiting,
    },
  };
  const n = (x: number, what: string) => `${x} ${what}${x === 1 ? '' : 's'}`;
  const verb = (x: number) => (x === 1 ? 'waits for its' : 'wait for their');
  // Named up to 5 (a start with 1 500 rules behind one missing egress names the first few).
  const partialNames = [...partialRules].slice(0, 5).map(([r, is]) => `${r}: ${is.join(', ')} missing`);
  if (partialRules.size > partialNames.length) partialNames.push(`${partialRules.size - partialNames.length} more`);
  const notes = [
    counts.rules.partial
      ? `${n(counts.rules.partial, 'rule')} written without ${counts.rules.partial === 1 ? 'its' : 'their'} ` +
        `missing interfaces (${partialNames.join('; ')})`
      : '',
    counts.rules.waiting ? `${n(counts.rules.waiting, 'rule')} ${verb(counts.rules.waiting)} interfaces` : '',
    counts.rules.failed ? `${n(counts.rules.failed, 'rule')} FAILED` : '',
    counts.links.waiting ? `${n(counts.links.waiting, 'link')} ${verb(counts.links.waiting)} interfaces` : '',
    counts.links.failed ? `${n(counts.links.failed, 'link')} not in the kernel` : '',
  ].filter(Boolean);
  const text =
    `${rulesIn} of ${n(stored.rules.length, 'rule')} and ${linksIn} of ${n(stored.links.length, 'link')} in the kernel (read back)` +
    (notes.length ? `; ${notes.join(', ')}` : '');
  return { counts, text };
}

/**
 * A stored rule's record without its kernel ids. Every field is named (a
 * field RuleRecord gains, even an optional one, fails the type check here):
 * 10 000 rows copied this way cost a fraction of a rest destructuring.
 */
function recordOf(r: StoredRule): RuleRecord {
  const rec: Required<RuleRecord> = {
    name: r.name,
    protocol: r.protocol,
    port: r.port,
    destination: r.destination,
    sourcePrefixes: r.sourcePrefixes,
    ingressInterfaces: r.ingressInterfaces,
    backends: r.backends,
    udpChecksum: r.udpChecksum,
    labels: r.labels,
    generation: r.generation,
    createTime: r.createTime,
    updateTime: r.updateTime,
  };
  return rec;
}

/** A stored rule's backend ids by backend key, without an [key, ids] pair per backend (a start reads 40 000). */
function idsByKey<T>(o: Record<string, T>): Map<string, T> {
  const m = new Map<string, T>();
  for (const key in o) m.set(key, o[key]);
  return m;
}

/** Split ops into consecutive groups whose new entries fit beside the old ones (at least one op per group). */
function* fitting(ctx: ExecContext, ops: RuleOp[]): Generator<RuleOp[]> {
  const cap = ctx.dp.capacity;
  let group: RuleOp[] = [];
  let prefixes = 0;
  let backends = 0;
  for (const op of ops) {
    const p = op.next?.sourcePrefixes.length ?? 0;
    const b = op.next?.backends.length ?? 0;
    const freePrefixes = cap.srcPrefixes - ctx.state.srcPrefixes;
    const freeBackends = ctx.state.backendIds.available;
    const freeSlots = ctx.state.slots.available;
    if (group.length && (prefixes + p > freePrefixes || backends + b > freeBackends || group.length + 1 > freeSlots)) {
      yield group;
      group = [];
      prefixes = 0;
      backends = 0;
    }
    group.push(op);
    prefixes += p;
    backends += b;
  }
  if (group.length) yield group;
}

/** Delete source-prefix entries of slots no rule holds. */
export function sweepSrcPrefixes(ctx: ExecContext, live: Set<number>): void {
  for (const k of ctx.dp.listSrcPrefixes()) if (!live.has(k.slot)) ctx.dp.deleteSrcPrefix(k);
}

/** Remove match entries and link directions the core does not hold (links: unless `keepLinks`). */
export function reconcileEntries(ctx: ExecContext, keepLinks = false): void {
  const wanted = new Set<string>();
  for (const k of ctx.state.ruleKernel.values()) for (const m of k.matchKeys) wanted.add(matchId(m));
  for (const [k] of ctx.dp.listMatches()) if (!wanted.has(matchId(k))) ctx.dp.deleteMatch(k);
  if (keepLinks) return;
  for (const [from] of ctx.dp.listLinks()) if (!ctx.state.linkDirs.has(from)) ctx.dp.disconnect(from);
}

/** How long a refused rule waits before resync tries it again. */
export const FAILED_RETRY_MS = 10_000;

/**
 * Apply rule operations at start or resync so that one rule that cannot be
 * applied never takes the others down: all together first (one
 * transaction), and if that fails, one by one. A rule that still fails is
 * marked FAILED with the reason and keeps the entries the datapath already
 * had for it (its old slot stays published), so a start never removes a
 * datapath that was forwarding; resync tries it again later.
 */
export async function applyEach(
  ctx: ExecContext,
  tx: Transactions,
  ops: RuleOp[],
  napi?: Facts['napi'],
): Promise<void> {
  if (ops.length === 0) return;
  if (ops.length > 1) {
    try {
      await tx.applyRuleOps(ops, true, napi);
      for (const op of ops) ctx.state.failed.delete(op.name);
      return;
    } catch (e) {
      ctx.log.warn({ err: e }, 'applying the rules together failed: applying them one by one');
    }
  }
  for (const op of ops) {
    try {
      await tx.applyRuleOps([op], true, napi);
      ctx.state.failed.delete(op.name);
    } catch (e) {
      markFailed(ctx, op.name, (e as Error).message);
    }
  }
}

function markFailed(ctx: ExecContext, name: string, reason: string): void {
  const { dp, state } = ctx;
  const k = state.ruleKernel.get(name);
  if (!k) return;
  // Keep what the datapath has for it: the match entries that point at its slot.
  if (k.matchKeys.length === 0) k.matchKeys = dp.listMatches().flatMap(([m, slot]) => (slot === k.slot ? [m] : []));
  k.status = failedStatus(reason, k.matchKeys.length > 0);
  k.written = undefined;
  state.touchRule(name);
  state.failed.set(name, ctx.mono() + FAILED_RETRY_MS);
  // The same key and line as resync's report of a rule's state (resync.ts `transition`): one line per
  // transition, whichever of the two sees it first (was: both, alternately, at every retry).
  const key = `rule/${name}`;
  const line = `${k.status.state}|${k.status.message}`;
  if (state.logged.get(key) !== line) ctx.log.error({ rule: name, reason }, `rule ${name} FAILED: ${k.status.message}`);
  state.logged.set(key, line);
}

/** A pinned match entry as an operator reads it: "udp port 7999 on veth1 (ifindex 12), any destination". */
export function describeMatch(k: MatchKey, ifname: string | undefined): string {
  const proto = k.proto === 17 ? 'udp' : k.proto === 6 ? 'tcp' : `protocol ${k.proto}`;
  const any = k.daddr.every((b) => b === 0);
  const dst = any
    ? 'any destination'
    : k.daddr.length === 4
      ? `destination ${[...k.daddr].join('.')}`
      : `destination ${Buffer.from(k.daddr).toString('hex')}`;
  return `${proto} port ${k.dport} on ${ifname ?? 'an interface'} (ifindex ${k.ifindex}), ${dst}`;
}
