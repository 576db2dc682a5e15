/**
 * Execute step: apply a plan to the datapath over an undo log. Rules are
 * written into fresh slots (unpublished), published by repointing match
 * entries, and only then are the slots they replace cleared. Any failure
 * before the commit point undoes every step already taken, newest first, so
 * the kernel maps and the core state stay exactly as they were.
 */
import { judgedEgress } from './egress-watch.js';
import type { EntryRepair } from './entry-owners.js';
import { formatIp, parseIp, parseMac } from '../net/addr.js';
import {
  changeLoopText,
  LOOP_TAIL,
  loopBackendKey,
  loopRule,
  loopUnknownText,
  RuleLoops,
  txReaders,
  upperReader,
  type LoopRule,
} from './rule-loops.js';
import type { Logger } from '../log.js';
import {
  emptyBackendEntry,
  type BackendEntry,
  type Dataplane,
  type MatchKey,
  type RedirectTarget,
  type RuleSlotState,
  type SrcKey,
  type XdpModeName,
} from './dataplane.js';
import { otherProgram } from './conditions.js';
import { CoreError, PortError } from './errors.js';
import type { LinkSpec, RuleRecord, RuleSpec } from './model.js';
import { directions, type LinkDirection } from './plan-links.js';
import type { RuleOp, RulePlan, RulesPlan } from './plan-rules.js';
import { fillRing, idRingHolds, oneIdOf } from './ring.js';
import { backendStatus, messageHead, writtenRuleStatus } from './rule-status.js';
import { matchId, type CoreState, type RuleKernel } from './state.js';
import type { StoredRule } from './store.js';
import { reattachedText } from './reattach-text.js';
import { remadeSinceRead, remadeText } from './device-identity.js';
import type { UndoLog } from './undo-log.js';
import { handSetNeighbourStatus, lowerForMissingIngress, lowerForMtu, unverifiedRuleStatus } from './rule-status.js';
import { inspectTarget } from './unchecked.js';

const AF_INET = 2;

/** What execution works with. */
export interface ExecContext {
  dp: Dataplane;
  state: CoreState;
  mode: XdpModeName;
  fixVethPeers: boolean;
  log: Logger;
  /** The wall clock (ms since the epoch): for the times shown (condition transitions, create/update times). */
  now: () => number;
  /** The monotonic clock (ms, core/clock.ts): for every age, window, interval and retry time. */
  mono: () => number;
  /**
   * The egress checks {@link preflight} made in the running transaction (dry runs), reused by its later
   * checks; dropped when the transaction detaches a program (a native program gave a local veth peer NAPI).
   */
  preflightTargets?: Map<string, RedirectTarget>;
}

/** Kernel ids and records a rules transaction takes, before anything is written. */
export interface RuleAllocation {
  /** Per planned rule: its new kernel record (ids, keys, status). */
  kernel: Map<string, RuleKernel>;
  /** Stats ids allocated fresh (their counters are zeroed before use). */
  freshRuleStats: Set<number>;
  freshBackendStats: Set<number>;
  /** The rule records after the change (deleted rules absent). */
  records: Map<string, RuleRecord>;
  /** Egresses the write accepted without being able to verify them (writeRules): name -> why. */
  unverified?: ReadonlyMap<string, string>;
}

/**
 * Phase 1 (memory only): take the ids a plan needs from the pools and
 * compute the records the change leaves (generation +1, times), each take
 * undone by `undo`. `restoring` keeps each rule's generation and update time
 * (a restart or resync rewrites, it does not change the rule).
 */
export async function allocateRules(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  { plans }: RulesPlan,
  restoring: boolean,
  undo: UndoLog,
  pace: () => Promise<void> = async () => {},
): Promise<RuleAllocation> {
  const { state } = ctx;
  const kernel = new Map<string, RuleKernel>();
  const freshRuleStats = new Set<number>();
  const freshBackendStats = new Set<number>();
  for (const p of plans) {
    const old = state.ruleKernel.get(p.name);
    const slot = state.slots.alloc();
    undo.push(() => state.slots.release(slot));
    let statsId = old?.statsId;
    if (statsId === undefined) {
      const id = state.ruleStatsIds.alloc();
      statsId = id;
      freshRuleStats.add(id);
      undo.push(() => state.ruleStatsIds.release(id));
    }
    const backends = new Map<string, { id: number; statsId: number }>();
    for (const b of p.backends) {
      const id = state.backendIds.alloc();
      undo.push(() => state.backendIds.release(id));
      let bStats = old?.backends.get(b.key)?.statsId;
      if (bStats === undefined) {
        const sid = state.backendStatsIds.alloc();
        bStats = sid;
        freshBackendStats.add(sid);
        undo.push(() => state.backendStatsIds.release(sid));
      }
      backends.set(b.key, { id, statsId: bStats });
    }
    kernel.set(p.name, {
      slot,
      statsId,
      matchKeys: p.matchKeys,
      prefixes: p.prefixes,
      backends,
      ifindexes: p.ifindexes,
      status: plannedStatus(p),
    });
    await pace();
  }
  // An ingress missing now (a lenient plan of restore or the reconciler gives it no match entry): the status
  // says so from the write on, as the reconciler's pass will, not ACTIVE until that pass ends.
  // So does an egress MTU below an ingress's (DEGRADED: its larger datagrams are dropped).
  for (const p of plans) {
    const k = kernel.get(p.name);
    if (!k) continue;
    lowerForMissingIngress(k, p.spec.ingressInterfaces);
    lowerForMtu(k);
  }
  const t = ctx.now();
  const records = new Map<string, RuleRecord>();
  for (const op of ops) {
    if (!op.next) continue;
    const cur = state.rules.get(op.name);
    records.set(op.name, {
      ...copySpec(op.next),
      generation: restoring && cur ? cur.generation : (cur?.generation ?? 0) + 1,
      createTime: cur?.createTime ?? t,
      updateTime: restoring && cur ? cur.updateTime : t,
    });
    await pace();
  }
  return { kernel, freshRuleStats, freshBackendStats, records };
}

/**
 * A rule spec the record owns (the caller's object may change after the
 * call): its arrays and objects copied, as structuredClone did at several
 * times the cost (an UpdateRule copies one, an ApplyRules of 10 000 as many).
 */
export function copySpec(s: RuleSpec): RuleSpec {
  return {
    ...s,
    sourcePrefixes: [...s.sourcePrefixes],
    ingressInterfaces: [...s.ingressInterfaces],
    backends: s.backends.map((b) => ({ ...b })),
    labels: { ...s.labels },
  };
}

/**
 * The rows a rules transaction writes, one at a time (a caller writing 10 000
 * yields between them: building them all at once held the event loop ~45 ms):
 * each changed rule with its kernel ids, or the name of a deleted one.
 */
export function* ruleRows(ops: readonly RuleOp[], alloc: RuleAllocation): Generator<StoredRule | string> {
  for (const op of ops) {
    const rec = alloc.records.get(op.name);
    const k = alloc.kernel.get(op.name);
    if (!rec || !k) yield op.name;
    else yield { ...rec, kernel: { slot: k.slot, statsId: k.statsId, backends: Object.fromEntries(k.backends) } };
  }
}

/**
 * Steps 1 and 2 of writing rules (also run when a start adopts them):
 * our program on every ingress interface the plans need, and the
 * precondition of native redirects into their backends (veth peer NAPI, a
 * device with ndo_xdp_xmit). A client's change is refused naming the first
 * backend that fails it; with `restoring` (start, reconciler) that backend is
 * taken out of the table with the reason instead (its plan is changed in
 * place) and the rule written with the others. A client's change also judges
 * the egresses of its backends out of the table already, for their statuses
 * (judgeOutEgresses). Returns the names of the plans so changed.
 */
async function prepareIngress(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  plans: readonly RulePlan[],
  undo: UndoLog,
  restoring: boolean,
  pace: () => Promise<void> = async () => {},
  unverified?: Map<string, string>,
): Promise<Set<string>> {
  attachIngress(ctx, ops, plans, undo, restoring);
  return checkRedirectTargets(ctx, plans, pace, restoring, unverified);
}

/**
 * Steps 1 and 2 of {@link writeRules} for a client's change, run apart (then writeRules with `prepared`):
 * attach and check before anything of the change is published.
 */
export async function prepareRules(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  { plans }: RulesPlan,
  undo: UndoLog,
  pace: () => Promise<void> = async () => {},
): Promise<PreparedRules> {
  const unverified = new Map<string, string>();
  const changed = await prepareIngress(ctx, ops, plans, undo, false, pace, unverified);
  return { unverified, changed };
}

/** What {@link prepareRules} found, for {@link writeRules}. */
export interface PreparedRules {
  /** The egresses it accepted unverified: egress name -> why. */
  unverified: Map<string, string>;
  /** The plans whose backends' statuses it changed (an egress out of the table judged: judgeOutEgresses). */
  changed: Set<string>;
}

/** Step 1 of {@link prepareIngress}: our program on every ingress interface the plans need. */
function attachIngress(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  plans: readonly Pick<RulePlan, 'name' | 'field' | 'ingress'>[],
  undo: UndoLog,
  restoring: boolean,
): void {
  const { dp, state } = ctx;
  // The program on every ingress interface the new set needs (its users are set when the change is recorded).
  const changing = new Set(ops.map((o) => o.name));
  const planned = new Set(plans.flatMap((p) => p.ingress.map((i) => i.name)));
  /** Whether an interface still needs our program after this change. */
  const usedAfter = (name: string) =>
    planned.has(name) ||
    [...(state.usersOf(name) ?? [])].some((u) => !u.startsWith('rule/') || !changing.has(u.slice(5)));
  const verified = new Set<string>();
  for (const p of plans) {
    for (const i of p.ingress) {
      if (state.attached.has(i.name)) {
        // What the kernel has, not what we attached last: someone may have detached ours (`ip link set dev X
        // xdp off`) or put another program there since the last reconciler pass. One netlink query per
        // interface and change; a start (restoring) has just looked.
        if (restoring || verified.has(i.name)) continue;
        verified.add(i.name);
        const x = dp.xdpStatus(i.name);
        if (!x || (x.mode !== 'none' && x.ours)) continue;
        const a = state.attached.get(i.name)!;
        state.attached.delete(i.name);
        undo.push(() => void state.attached.set(i.name, a));
        if (x.mode !== 'none') {
          // Another program: left alone, as the reconciler does (its pass logs it, once per transition).
          state.foreign.set(i.name, x.progId);
          continue;
        }
        // Made again in place since the last pass read it (the device read again now, after the read that found
        // no program), or cannot be told: not said as a detach.
        const since = remadeSinceRead(ctx, i.name, i.ifindex);
        if (since?.remade) dp.forgetDevice?.(i.name);
        vacateAdjacentDevices(ctx, undo, i.name, usedAfter, `${p.field}.ingress_interfaces`);
        attachOne(ctx, undo, i.name, i.ifindex, a.users, restoring, `${p.field}.ingress_interfaces`);
        const mode = state.attached.get(i.name)?.mode ?? 'none';
        if (since?.remade) {
          ctx.log.warn(
            { ifname: i.name, ifindex: i.ifindex, mode, remade: since.remade },
            `${remadeText(i.name, i.ifindex, since.remade)}: our XDP program went with the old one; attached to ` +
              `this one in ${mode} mode`,
          );
        } else {
          ctx.log.warn(
            { ifname: i.name, found: 'none', was: a.mode, mode, ...(since?.unknown ? { unknown: since.unknown } : {}) },
            reattachedText(i.name, a.mode, mode, since?.unknown),
          );
        }
        continue;
      }
      vacateAdjacentDevices(ctx, undo, i.name, usedAfter, `${p.field}.ingress_interfaces`);
      attachOne(ctx, undo, i.name, i.ifindex, new Set([`rule/${p.name}`]), restoring, `${p.field}.ingress_interfaces`);
    }
  }
}

/**
 * Step 2 of {@link prepareIngress}: native redirects into veths need NAPI on
 * the peer. Each backend interface is checked once per transaction and all
 * at once (a check queries netlink, and runs ethtool for a peer's GRO); throws naming
 * the first backend that fails it, except when `restoring` (a start or the
 * reconciler): such a backend is kept out of the table (its plan's
 * `receiving` and status change) and its rule named in the returned set.
 * Writes nothing to the maps.
 */
async function checkRedirectTargets(
  ctx: ExecContext,
  plans: readonly RulePlan[],
  pace: () => Promise<void>,
  restoring: boolean,
  unverified?: Map<string, string>,
): Promise<Set<string>> {
  const native = nativeIngress(ctx);
  const isNative = (p: RulePlan) => p.ingress.some((i) => native(i.name));
  // The backend interfaces to check, each checked once and all at once (a check may run ethtool).
  const need = new Set<string>();
  let n = 0;
  for (const p of plans) {
    if ((++n & 255) === 0) await pace();
    if (isNative(p)) for (const b of p.backends) if (b.receiving) need.add(b.spec.interface);
  }
  const names = [...need];
  const peers = await checkTargets(ctx, names, restoring);
  // Egresses accepted on the kernel's flag alone, not yet verified by traffic (egress-watch.ts): the caller's
  // statuses say so from the write on, as the reconciler's next pass will.
  if (unverified) {
    for (const [name, r] of peers) if (r.ok && r.unverified) unverified.set(name, r.detail ?? name);
  }
  const demoted = new Set<string>();
  for (const p of plans) if (keepOutFailedEgresses(p, native, peers, restoring)) demoted.add(p.name);
  if (!restoring) for (const name of await judgeOutEgresses(ctx, plans, isNative, peers)) demoted.add(name);
  return demoted;
}

/**
 * A client's change, once its checks passed: the egresses of its backends that are out of the table already (a
 * static MAC the host contradicts, a loop) and that no check has judged, checked as the reconciler's pass checks
 * every backend egress of a rule on a native-mode ingress (resync.ts; `--fix-veth-peers` repairs as there), for
 * their statuses alone: nothing is redirected into them, so none refuses the change. One that fails its check
 * says so in its backend's status (the egress first, as plan-rules.ts and the pass say it): before, the reply said
 * "static MAC contradicted" and a read after the next pass that the egress's peer cannot take redirects (a
 * review finding). Returns the plans whose statuses changed.
 */
async function judgeOutEgresses(
  ctx: ExecContext,
  plans: readonly RulePlan[],
  isNative: (p: RulePlan) => boolean,
  checked: ReadonlyMap<string, RedirectTarget>,
): Promise<Set<string>> {
  const names = new Set<string>();
  for (const p of plans) {
    if (!isNative(p)) continue;
    for (const b of p.backends) {
      // Out for its egress already (down, no carrier): said as the pass says it, nothing more to check.
      if (b.receiving || b.status.egress || checked.has(b.spec.interface)) continue;
      names.add(b.spec.interface);
    }
  }
  const changed = new Set<string>();
  const peers = names.size ? await checkTargets(ctx, [...names], true) : new Map<string, RedirectTarget>();
  for (const p of plans) {
    if (!isNative(p)) continue;
    for (const b of p.backends) {
      const r = peers.get(b.spec.interface) ?? checked.get(b.spec.interface);
      if (b.receiving || b.status.egress || !r || r.ok) continue;
      b.status = backendStatus({
        ip: b.spec.ip,
        interface: b.spec.interface,
        givenMac: b.spec.mac,
        mac: b.mac,
        resolved: b.resolved,
        egress: r.detail ?? 'cannot take native XDP redirects',
      });
      changed.add(p.name);
    }
  }
  return changed;
}

/**
 * Whether an ingress runs our program in native mode: the mode seen at the attach or the reconciler's last
 * pass; netlink only for an unknown one (each interface asked once).
 */
function nativeIngress(ctx: ExecContext): (name: string) => boolean {
  const { dp, state } = ctx;
  const native = new Map<string, boolean>();
  return (name) => {
    let v = native.get(name);
    if (v === undefined) {
      v = (state.attached.get(name)?.mode ?? dp.xdpStatus(name)?.mode) === 'native';
      native.set(name, v);
    }
    return v;
  };
}

/**
 * The checks' verdicts applied to one plan whose ingress runs in native mode: with `restoring` (a start or
 * the reconciler rewriting a rule) a receiving backend whose egress failed its check is taken out of the
 * table with the reason, as the first write's plan does for one whose check the reconciler made (resync.ts
 * passes it), and the other backends keep forwarding; a client's change is refused instead, naming the
 * backend. Returns whether the plan changed.
 */
function keepOutFailedEgresses(
  p: RulePlan,
  native: (name: string) => boolean,
  peers: ReadonlyMap<string, RedirectTarget>,
  restoring: boolean,
): boolean {
  if (!p.ingress.some((i) => native(i.name))) return false;
  let demoted = false;
  for (let bi = 0; bi < p.backends.length; bi++) {
    const b = p.backends[bi];
    if (!b.receiving) continue; // out of the table: nothing is redirected into it
    const r = peers.get(b.spec.interface)!;
    if (!r.ok && restoring) {
      b.receiving = false;
      b.status = backendStatus({
        ip: b.spec.ip,
        interface: b.spec.interface,
        givenMac: b.spec.mac,
        mac: b.mac,
        resolved: b.resolved,
        egress: r.detail ?? 'cannot take native XDP redirects',
      });
      demoted = true;
      continue;
    }
    if (!r.ok) {
      throw new CoreError('precondition', `${p.field}.backends[${bi}].interface: ${r.detail}`, [
        { field: `${p.field}.backends[${bi}].interface`, description: r.detail ?? 'precondition not met' },
      ]);
    }
  }
  return demoted;
}

/**
 * Check each egress for native redirects, first without changing the host (a dry run: `fix` off); only
 * when none is refused (or when `tolerant`: restore and resync keep going past one) are the ones that
 * --fix-veth-peers can repair checked again with `fix` (GRO switched on on the peer). So a change that is
 * refused switches nothing on. An egress whose peer cannot be inspected is as the reconciler last judged
 * it by traffic (egress-watch.ts).
 */
async function checkTargets(
  ctx: ExecContext,
  names: readonly string[],
  tolerant: boolean,
): Promise<Map<string, RedirectTarget>> {
  const { dp, state } = ctx;
  // A check that cannot be made (a child not started or not answering, a failed read) is "cannot be
  // verified" (core/unchecked.ts), never "cannot receive": what forwards is not taken out for it.
  const check = (name: string, fix: boolean): Promise<RedirectTarget> =>
    inspectTarget(dp, state.redirectVerdicts, name, fix).then((r) => ({
      ...judgedEgress(r, state.egressWatch.get(name)),
      ...(r.fixable ? { fixable: true } : {}),
      ...(r.waitsForPeer ? { waitsForPeer: true } : {}),
    }));
  const repairable = (r: RedirectTarget) => !r.ok && !!r.fixable && ctx.fixVethPeers;
  const first = await Promise.all(names.map((name) => ctx.preflightTargets?.get(name) ?? check(name, false)));
  const refused = first.some((r) => !r.ok && !repairable(r) && !r.waitsForPeer);
  let checked = first;
  if (refused && !tolerant) {
    // Refused whatever is repaired: the refusal names an egress that no repair helps, and nothing is repaired.
    checked = first.map((r) => (repairable(r) ? { ok: true, detail: r.detail } : r));
  } else if (first.some(repairable)) {
    checked = await Promise.all(names.map((name, i) => (repairable(first[i]) ? check(name, true) : first[i])));
  }
  return new Map(names.map((name, i) => [name, checked[i]]));
}

/**
 * A rule's backend whose egress is the ingress of a link direction: every frame arriving on that interface,
 * the backend's ARP replies and its answers to clients included, is redirected into the link by our program
 * before anything else sees it (the link runs before rules are matched), so the backend is cut off from this
 * host while the link forwards. Refused both ways, naming the rule, the backend and the link: a link from a
 * backend's egress (Connect, ApplyLinks, a config file), and a backend on an interface a link forwards from
 * (CreateRule, UpdateRule, ApplyRules). `links.want` is the link set after the change when the change is one
 * of links (`scope.links` given); for a change of rules only, the links are those in force.
 */
function backendsBehindLinks(
  state: CoreState,
  plans: readonly RulePlan[],
  links: { want: ReadonlyMap<string, LinkDirection>; field: (from: string) => string },
  scope: { rules: ReadonlySet<string>; links?: ReadonlyMap<string, LinkSpec> },
  fail: (field: string, detail: string) => never,
): void {
  const inForce = new Map<string, string>(); // ingress of a direction in force -> its egress
  for (const l of state.links.values()) for (const [from, to] of directions(l)) inForce.set(from, to);
  const linkFrom = new Map<string, string>(); // ... after the change
  if (scope.links) for (const [from, d] of links.want) linkFrom.set(from, d.toName);
  else for (const [from, to] of inForce) linkFrom.set(from, to);
  if (!linkFrom.size) return;
  const cut = (rule: string, b: { ip: string; interface: string }) =>
    `${b.interface} is the egress of rule ${rule}'s backend ${b.ip} and the ingress of a link to ` +
    `${linkFrom.get(b.interface)}: every frame arriving on it, the backend's ARP replies and answers included, ` +
    `would be redirected to ${linkFrom.get(b.interface)}, none to this host`;
  for (const p of plans) {
    p.spec.backends.forEach((b, i) => {
      if (linkFrom.has(b.interface)) fail(`${p.field}.backends[${i}].interface`, cut(p.name, b));
    });
  }
  if (!scope.links) return;
  const changed = new Set(plans.map((p) => p.name));
  for (const r of state.rules.values()) {
    if (changed.has(r.name) || scope.rules.has(r.name)) continue; // replaced or deleted by this change
    for (const b of r.backends) {
      // A direction this change makes (one already in force was accepted before, e.g. by an earlier version).
      const to = linkFrom.get(b.interface);
      if (to !== undefined && inForce.get(b.interface) !== to) fail(links.field(b.interface), cut(r.name, b));
    }
  }
}

/**
 * A rule's backend whose redirected datagrams come back to the rule, around a cycle of rules of any length
 * (rule-loops.ts, the one implementation of that check). Loops of links are refused (plan-links.ts
 * forwardingLoop); this is the same refusal for rules, naming the backend of a changed rule that closes the
 * cycle and the other rules in it. A change of links alone (`scope.links`, no rules) is refused when a cycle
 * goes through a direction it makes, naming the link. A loop the host makes after the write (a veth renamed,
 * made again or moved, a macvlan stacked on a peer) is the reconciler's to find (resync.ts judgeHostLoops): it
 * keeps those backends out. What the walk cannot follow (an upper device whose receive path is not known, a
 * veth peer in another namespace that leads on there) does not refuse a change: it is returned for each backend
 * of a changed rule on no cycle found (rule-loops.ts loopBackendKey -> loopUnknownText, as the reconciler's
 * judgeHostLoops says it), so that the change's reply says it in the rule's warnings as a read after it does.
 */
export function backendsLoopingBack(
  dp: Pick<Dataplane, 'vethPeer' | 'masterLink' | 'upperLinks' | 'bridgePorts' | 'txLink' | 'vethPeerAway'>,
  state: CoreState,
  plans: readonly RulePlan[],
  links: { want: ReadonlyMap<string, LinkDirection>; field: (from: string) => string },
  scope: { rules: ReadonlySet<string>; links?: ReadonlyMap<string, LinkSpec> },
  fail: (field: string, detail: string) => never,
): Map<string, string> {
  const untold = new Map<string, string>();
  if (!dp.vethPeer || (!plans.length && !scope.links)) return untold;
  const inForce = new Map<string, string>(); // ingress of a direction in force -> its egress
  for (const l of state.links.values()) for (const [from, to] of directions(l)) inForce.set(from, to);
  const linkTo = new Map<string, string>(); // ... after the change
  if (scope.links) for (const [from, d] of links.want) linkTo.set(from, d.toName);
  else for (const [from, to] of inForce) linkTo.set(from, to);
  const peers = new Map<string, string | undefined>();
  const peerOf = (name: string) => {
    if (!peers.has(name)) peers.set(name, dp.vethPeer!(name));
    return peers.get(name);
  };
  // The rules after the change by the datapath's match keys (ingress, port, destination): the planned rules',
  // then those the change leaves alone, by who claims the key now (state.claims), each made a LoopRule when the
  // walk reaches it. Not a map of every rule built at every change (10 000 rules: a third of an UpdateRule).
  const planned = new Map<string, LoopRule>();
  const plannedKeys = new Map<string, LoopRule>();
  for (const p of plans) {
    const r = loopRule(p.name, p.spec);
    planned.set(p.name, r);
    for (const i of r.spec.ingressInterfaces) plannedKeys.set(`${i}|${r.spec.port}|${r.spec.destination}`, r);
  }
  const kept = new Map<string, LoopRule | undefined>();
  const keptRule = (name: string): LoopRule | undefined => {
    if (!kept.has(name)) {
      const r = scope.rules.has(name) ? undefined : state.rules.get(name); // replaced or deleted by this change
      kept.set(name, r && loopRule(name, r));
    }
    return kept.get(name);
  };
  const ruleAt = (key: string): LoopRule | undefined => {
    const p = plannedKeys.get(key);
    if (p) return p;
    const name = state.claims.get(key);
    return name === undefined ? undefined : keptRule(name);
  };
  if (!plannedKeys.size && !state.claims.size) return untold;
  const uppersOf = upperReader(dp);
  const ports = new Map<string, readonly string[]>();
  const portsOf = dp.bridgePorts
    ? (name: string) => {
        if (!ports.has(name)) ports.set(name, dp.bridgePorts!(name));
        return ports.get(name)!;
      }
    : undefined;
  const loops = new RuleLoops({
    peerOf,
    uppersOf,
    portsOf,
    ...txReaders(dp),
    linkTo,
    inForce,
    ruleAt,
  });
  for (const p of plans) {
    const start = planned.get(p.name)!;
    p.spec.backends.forEach((b, i) => {
      const { cycle: c, unknown } = loops.explore(start, b);
      if (c) fail(`${p.field}.backends[${i}].interface`, `${changeLoopText(c.steps, p.name)}: ${LOOP_TAIL}`);
      if (unknown.size) untold.set(loopBackendKey(p.name, b), loopUnknownText(b, [...unknown]));
    });
  }
  if (!scope.links) return untold;
  // A change of links: a cycle through a direction it makes, among rules it does not change.
  for (const name of state.rules.keys()) {
    const r = keptRule(name);
    if (!r) continue;
    for (const b of r.spec.backends) {
      const c = loops.cycleFrom(r, b);
      if (c?.newLink !== undefined) {
        fail(
          links.field(c.newLink),
          `closes a loop of rule ${r.name}'s backend ${b.ip}: ${changeLoopText(c.steps, r.name)}: ${LOOP_TAIL}`,
        );
      }
    }
  }
  return untold;
}

/**
 * The kernel preconditions of a change that can be known without changing anything, checked before the
 * transaction writes anything (config-file mode checks a whole file with it, rules and links together):
 * room for every link direction (RESOURCE_EXHAUSTED; the rules' tables are counted by the plan), no new
 * ingress below a device that keeps our program (a bridge port), native XDP on every new ingress with --xdp-mode native (the
 * device's xdp-features), and every egress a native-mode ingress redirects into able to
 * receive native redirects
 * (--fix-veth-peers counted: what it would repair passes; a veth whose peer is down is waited for, not
 * refused: RedirectTarget.waitsForPeer). An ingress whose mode only the attach will tell
 * ('auto' on a device not yet attached) is checked after the attach, in the transaction, unless
 * `predictAttach` (a re-evaluation: Controller.checkConfig) takes the mode the attach would choose from the
 * device's xdp-features. `occupied` (a dry run: validate_only) refuses an ingress another XDP program holds,
 * which the change itself learns from the attach. Throws FAILED_PRECONDITION naming the field and what was
 * observed. Passed: `loopsUnknown`, what the loop check could not follow from the backends of the rules it changes
 * (not at a restore), for the change to record before its rules are judged ({@link ChangeLoopsUnknown}).
 */
export async function preflight(
  ctx: ExecContext,
  plans: readonly RulePlan[],
  links: { want: ReadonlyMap<string, LinkDirection>; field: (from: string) => string },
  scope: { rules: ReadonlySet<string>; links?: ReadonlyMap<string, LinkSpec> } = { rules: new Set() },
  opts: { predictAttach?: boolean; restoring?: boolean; occupied?: boolean } = {},
): Promise<{ loopsUnknown?: ChangeLoopsUnknown }> {
  const { dp, state } = ctx;
  // Bridge and port: the kernel refuses a program on a device while a device above it has one (EEXIST), so a
  // new ingress below a device that keeps ours after the change is refused here, as vacateAdjacentDevices would.
  const planned = new Set(plans.flatMap((p) => p.ingress.map((i) => i.name)));
  const usedAfter = (name: string) =>
    planned.has(name) ||
    links.want.has(name) ||
    [...(state.usersOf(name, scope.links ?? state.links) ?? [])].some(
      (u) => !u.startsWith('rule/') || !scope.rules.has(u.slice(5)),
    );
  const adjacent = (name: string, field: string) => {
    if (state.attached.has(name)) return;
    for (const upper of dp.upperDevices?.(name) ?? []) {
      if (!state.attached.has(upper) || !usedAfter(upper)) continue;
      fail(
        field,
        `${name} is a port of ${upper}, which still needs our XDP program; the kernel refuses a program on a ` +
          `device while a device above it has one (EEXIST): move every rule and link off ${upper} first`,
      );
    }
  };
  const fail = (field: string, detail: string): never => {
    throw new CoreError('precondition', `${field}: ${detail}`, [{ field, description: detail }]);
  };
  if (links.want.size > dp.capacity.links) {
    const field = 'links';
    const detail = `${links.want.size} link directions, but the datapath holds at most ${dp.capacity.links} (xc_links)`;
    throw new CoreError('exhausted', `${field}: ${detail}`, [{ field, description: detail }]);
  }
  for (const p of plans) for (const i of p.ingress) adjacent(i.name, `${p.field}.ingress_interfaces`);
  for (const from of links.want.keys()) adjacent(from, links.field(from));
  if (opts.occupied) {
    // A dry run: an ingress that another XDP program occupies refuses our attach (EBUSY) in the change
    // itself; said here in the same words, so that a dry run that passes is a change that would.
    const occupied = (name: string, field: string) => {
      if (state.attached.has(name)) return;
      const x = dp.xdpStatus(name);
      if (x && x.mode !== 'none' && !x.ours) {
        fail(
          field,
          `attach xdp to ${name}: ${otherProgram(x.progId, x.unidentified, x.mode, x.otherDaemon)} is attached; ` +
            'it is left alone (the change would be refused: EBUSY)',
        );
      }
    };
    for (const p of plans) for (const i of p.ingress) occupied(i.name, `${p.field}.ingress_interfaces`);
    for (const from of links.want.keys()) occupied(from, links.field(from));
  }
  // Not at a restore: what an earlier daemon accepted is put back as it was (the statuses say what it does).
  if (!opts.restoring) backendsBehindLinks(state, plans, links, scope, fail);
  const untold = opts.restoring ? undefined : backendsLoopingBack(dp, state, plans, links, scope, fail);
  const modes = new Map<string, 'native' | 'generic' | 'unknown'>();
  const modeOf = (name: string, field: string) => {
    let m = modes.get(name);
    if (m) return m;
    // Another program there: the attach refuses it, in its own words (undone whole, as any refusal).
    // The kernel is asked only about an interface we have not attached (the attach step checks ours).
    let attached: string | undefined = state.attached.get(name)?.mode;
    if (attached === undefined) {
      const x = dp.xdpStatus(name);
      if (x?.ours && x.mode !== 'none') attached = x.mode;
    }
    if (attached === 'native' || attached === 'generic') m = attached;
    else m = ctx.mode === 'native' ? 'native' : ctx.mode === 'generic' ? 'generic' : 'unknown';
    // A re-evaluation (config watcher) says what the attach would tell: '--xdp-mode auto' attaches in native
    // mode where the kernel's xdp-features say the device takes a native program (a veth does).
    if (m === 'unknown' && opts.predictAttach && dp.nativeXdp?.(name)?.supported) m = 'native';
    if (m === 'native' && !attached) {
      // --xdp-mode native on a device whose driver takes no XDP program: the kernel would refuse the attach.
      const n = dp.nativeXdp?.(name);
      if (n && !n.supported) {
        fail(
          field,
          `${name} cannot run a native-mode XDP program (the kernel reports xdp-features: ${n.features}, no ` +
            `basic), and this daemon attaches in native mode only (--xdp-mode native); use --xdp-mode auto or generic`,
        );
      }
    }
    modes.set(name, m);
    return m;
  };
  const need = new Map<string, string>(); // egress -> the field of the first use
  for (const p of plans) {
    let native = false;
    for (const i of p.ingress) if (modeOf(i.name, `${p.field}.ingress_interfaces`) === 'native') native = true;
    if (!native) continue;
    p.backends.forEach((b, bi) => {
      if (b.receiving && !need.has(b.spec.interface))
        need.set(b.spec.interface, `${p.field}.backends[${bi}].interface`);
    });
  }
  for (const [from, d] of links.want) {
    if (modeOf(from, links.field(from)) === 'native' && !need.has(d.toName)) need.set(d.toName, links.field(from));
  }
  const names = [...need.keys()];
  const checked = await Promise.all(
    names.map((name) =>
      inspectTarget(dp, state.redirectVerdicts, name, false).then((r): RedirectTarget => ({
        ...judgedEgress(r, state.egressWatch.get(name)),
        ...(r.fixable ? { fixable: true } : {}),
        ...(r.waitsForPeer ? { waitsForPeer: true } : {}),
      })),
    ),
  );
  names.forEach((name, i) => {
    const r = checked[i];
    // A veth whose peer is down (boot order, a container restarting) transmits nothing now, whatever its peer
    // will be: a wait, not a refusal. The direction is written and marked not forwarding (no carrier), and the
    // reconciler checks (and repairs) the egress once the peer is up, as for a backend behind it (not
    // receiving, out of the table) and for a running link whose peer goes down.
    if (r.ok || (r.fixable && ctx.fixVethPeers) || r.waitsForPeer) return;
    fail(need.get(name)!, r.detail ?? `${name} cannot take native XDP redirects`);
  });
  // Passed: the transaction's later checks reuse these (the controller drops them when it ends).
  ctx.preflightTargets = new Map(names.map((name, i) => [name, checked[i]]));
  // The rules it changes (deleted ones too), with what cannot be told of their backends' way back.
  const rules = new Set([...scope.rules, ...plans.map((p) => p.name)]);
  return untold && rules.size ? { loopsUnknown: { rules, unknown: untold } } : {};
}

/**
 * Of a change's rules (`rules`, those it deletes included), the backends whose way back cannot be told
 * (`unknown`: rule-loops.ts loopBackendKey -> loopUnknownText), as its preflight found them.
 */
export interface ChangeLoopsUnknown {
  rules: ReadonlySet<string>;
  unknown: ReadonlyMap<string, string>;
}

/** A planned rule's status as written: its backends' statuses, those in the table, the plan's warnings. */
function plannedStatus(p: RulePlan): RuleKernel['status'] {
  const live = p.backends.filter((b) => b.receiving && b.spec.weight > 0).length;
  return {
    ...writtenRuleStatus(
      p.backends.map((b) => b.status),
      live,
      p.backends.map((b) => b.spec.weight),
    ),
    warnings: [...p.warnings],
  };
}

/**
 * Phase 2 (kernel, undoable): attach where needed, check native-redirect
 * targets, write each rule into its fresh slot (unpublished), then publish by
 * repointing match entries. Every step pushes its undo before or as it runs,
 * so a write that fails half-way (a full LPM trie after some prefixes went
 * in) is cleared too.
 */
export async function writeRules(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  { plans }: RulesPlan,
  alloc: RuleAllocation,
  undo: UndoLog,
  pace: () => Promise<void> = async () => {},
  restoring = false,
  prepared?: PreparedRules,
): Promise<void> {
  // `prepared`: the caller ran prepareRules itself (config-file mode prepares rules and links before either is
  // written), which gave the egresses it accepted unverified and the plans whose statuses it changed.
  const unverified = prepared?.unverified ?? new Map<string, string>();
  const demoted = prepared
    ? prepared.changed
    : await prepareIngress(ctx, ops, plans, undo, restoring, pace, unverified);
  alloc.unverified = unverified;
  const { dp, state } = ctx;
  for (const p of plans) {
    if (!demoted.has(p.name)) continue;
    const k = alloc.kernel.get(p.name)!;
    k.written = undefined;
    k.status = plannedStatus(p);
    lowerForMissingIngress(k, p.spec.ingressInterfaces);
    lowerForMtu(k);
  }
  if (unverified.size) {
    for (const p of plans) {
      const k = alloc.kernel.get(p.name)!;
      const lowered = unverifiedRuleStatus(k.status, unverified);
      if (lowered === k.status) continue;
      k.written ??= k.status;
      k.status = lowered;
    }
  }
  // Backends given without a MAC whose neighbour entry was set by hand, its MAC not answered yet: unverified
  // from the reply on (the reconciler's passes say the same, rule-status handSetNeighbourStatus).
  if (dp.neighbourHandSet) {
    for (const p of plans) {
      const handSet = new Map<string, string>();
      for (const b of p.spec.backends) {
        // (A held entry's backend receives with the kept MAC: heldNeighbourStatus says so.)
        if (b.mac !== '' || state.neighbourHolds.has(`${b.ip}@${b.interface}`)) continue;
        const states = dp.neighbourHandSet(b.ip, b.interface);
        if (states) handSet.set(`${b.ip}@${b.interface}`, states);
      }
      const k = alloc.kernel.get(p.name)!;
      const lowered = handSetNeighbourStatus(k.status, p.spec, handSet);
      if (lowered === k.status) continue;
      k.written ??= k.status;
      k.status = lowered;
    }
  }
  // 3. Write each new or changed rule into its fresh slot (unpublished).
  // A rule with source prefixes owns exactly its own in src_allow at its slot: entries keyed to the slot that are
  // not (another tool's write into a free slot) would widen its filter. Read once per change that writes a filter.
  const srcBySlot = new Map<number, SrcKey[]>();
  if (plans.some((p) => p.prefixes.length > 0)) {
    for (const key of dp.listSrcPrefixes()) {
      const at = srcBySlot.get(key.slot);
      if (at) at.push(key);
      else srcBySlot.set(key.slot, [key]);
    }
  }
  for (const p of plans) {
    const k = alloc.kernel.get(p.name)!;
    const foreignSrc = (srcBySlot.get(k.slot) ?? []).filter(
      (key) => !p.prefixes.some((q) => q.length === key.length && Buffer.compare(q.addr, key.addr) === 0),
    );
    if (foreignSrc.length) {
      ctx.log.warn(
        { rule: p.name, slot: k.slot, entries: foreignSrc.length },
        `rule ${p.name} takes rule slot ${k.slot}: map src_allow held ${foreignSrc.length} source prefixes keyed to ` +
          `it that are not the rule's (${foreignSrc.map(srcText).join(', ')}; no rule held the slot: another ` +
          "tool's write): deleted, " +
          (p.prefixes.length ? 'so that they do not widen its filter' : 'the rule having no source filter there'),
      );
    }
    if (alloc.freshRuleStats.has(k.statsId)) {
      dp.resetRuleStats(k.statsId);
      ctx.state.counterResets.forget('rule', k.statsId, ctx.now(), ctx.mono()); // zeroed by us for this rule: no reset
    }
    const entries: [number, BackendEntry][] = [];
    const members: { key: string; weight: number; value: number }[] = [];
    for (const b of p.backends) {
      const ids = k.backends.get(b.key)!;
      if (alloc.freshBackendStats.has(ids.statsId)) {
        dp.resetBackendStats(ids.statsId);
        ctx.state.counterResets.forget('backend', ids.statsId, ctx.now(), ctx.mono());
      }
      if (!b.receiving) continue; // out of the table: its flows go to the others
      entries.push([ids.id, backendOf(b, ids.statsId)]);
      members.push({ key: b.key, weight: b.spec.weight, value: ids.id });
    }
    // Start from the rule's current table, so that only the slots of
    // backends that left (or whose share shrank) change hands. (One member takes every slot: not read.)
    const old = ctx.state.ruleKernel.get(p.name);
    let previous: (string | undefined)[] | undefined;
    if (old && members.filter((m) => m.weight > 0).length > 1) {
      const keyOf = new Map([...old.backends].map(([key, v]) => [v.id, key]));
      previous = dp.readRing(old.slot).map((id) => keyOf.get(id));
    }
    const ring = fillRing(members, dp.ringSize, dp.noBackend, previous);
    // Before the write: a write that fails part-way leaves nothing behind.
    undo.push(() =>
      dp.clearRuleSlot(
        k.slot,
        p.prefixes,
        entries.map(([id]) => id),
      ),
    );
    try {
      dp.writeRuleSlot({
        slot: k.slot,
        statsId: k.statsId,
        flags: p.flags,
        srcPrefixes: p.prefixes,
        ring,
        backends: entries,
        foreignSrc,
      });
    } catch (e) {
      throw whatFillsMap(ctx, e, alloc);
    }
    await pace();
  }
  // 4. Publish: repoint match entries; remove the ones no longer wanted.
  // A key may move between rules in one change (ApplyRules: "dns" takes
  // the port "web" leaves): whoever held it before is what an undo
  // restores, and a key another rule now claims is never removed.
  const claimed = new Set<string>();
  for (const k of alloc.kernel.values()) for (const m of k.matchKeys) claimed.add(matchId(m));
  const holder = state.matchHolders;
  // Match entries of more than one rule to switch: one kernel transaction (a staged generation of the match
  // entries, switched to with one map update), so that packets see every rule of the change old or every rule
  // new, also when the daemon dies while it writes. One rule's entries switch in place: each entry is one update
  // to a slot written whole before, so a packet sees that rule old or new whatever its ingress; the staging copy
  // (every active entry) is not paid by a one-rule UpdateRule at 10 000 rules, even on several ingresses.
  let rulesWriting = 0;
  for (const op of ops) {
    const puts = alloc.kernel.get(op.name)?.matchKeys.length ?? 0;
    const dels = (state.ruleKernel.get(op.name)?.matchKeys ?? []).filter((k) => !claimed.has(matchId(k))).length;
    if (puts + dels > 0) rulesWriting++;
  }
  const txn = rulesWriting > 1 && dp.beginMatches !== undefined;
  let switched = false;
  if (txn) {
    // Undo: before the switch, the staged generation is deleted (the entries' own undos below wrote only
    // there); after it, the undos run in a transaction of their own (opened by the step pushed after the
    // switch, which runs first) and this switches back to the entries as they were, at once.
    undo.push(() => (switched ? dp.commitMatches?.() : dp.abortMatches?.()));
    try {
      dp.beginMatches!();
    } catch (e) {
      throw whatFillsMap(ctx, e, alloc);
    }
  }
  for (const op of ops) {
    await pace(); // packets see the old entries until the switch below (or this one entry's update); reads see the state before
    const old = state.ruleKernel.get(op.name);
    const next = alloc.kernel.get(op.name);
    for (const k of next?.matchKeys ?? []) {
      const prev = holder.get(matchId(k));
      undo.push(() => (prev !== undefined ? dp.putMatch(k, prev) : dp.deleteMatch(k)));
      try {
        dp.putMatch(k, next!.slot);
      } catch (e) {
        throw whatFillsMap(ctx, e, alloc);
      }
    }
    for (const k of old?.matchKeys ?? []) {
      if (claimed.has(matchId(k))) continue;
      undo.push(() => dp.putMatch(k, old!.slot));
      dp.deleteMatch(k);
    }
    await pace(); // 10 000 rules publish in ~60 ms of syscalls
  }
  if (txn) {
    dp.commitMatches?.(); // the commit point in the kernel: one update of the active generation
    switched = true;
    undo.push(() => dp.beginMatches?.());
  }
}

/**
 * A map-full refusal (ENOSPC) of map src_allow or rule_match during a change, with what fills the map when
 * entries no rule holds take part of it (another tool's, written through the pins; the reconciler deletes them
 * at its next full comparison: kernel-check.ts): "…: the map holds 65 536 entries: 6 of them this daemon's
 * rules', 65 530 of no rule". A map our rules fill alone: the refusal as it was (the change's plan checked the
 * room for our own entries, plan-rules.ts).
 */
function whatFillsMap(ctx: ExecContext, e: unknown, alloc: RuleAllocation): unknown {
  if (!(e instanceof PortError) || e.kind !== 'exhausted') return e;
  const map = /\bmap (src_allow|rule_match)\b/.exec(e.op)?.[1];
  if (!map) return e;
  const { dp, state } = ctx;
  const records = [...state.ruleKernel.values(), ...alloc.kernel.values()];
  let total = 0;
  let ours = 0;
  if (map === 'src_allow') {
    const held = new Set(records.map((k) => k.slot));
    for (const k of dp.listSrcPrefixes()) {
      total++;
      if (held.has(k.slot)) ours++;
    }
  } else {
    const held = new Set(records.flatMap((k) => k.matchKeys.map(matchId)));
    for (const [k] of dp.listMatches()) {
      total++;
      if (held.has(matchId(k))) ours++;
    }
  }
  if (total === ours) return e;
  return new CoreError(
    'exhausted',
    `${e.message}: the map holds ${total} entries: ${ours} of them this daemon's rules', ${total - ours} of no ` +
      `rule (another tool's, through the pins; the reconciler deletes them at its next full comparison of the ` +
      `kernel entries)`,
    [],
    { cause: e },
  );
}

/**
 * Phase 3, after the change is durable: clear the replaced slots, release
 * their ids, and record the new state. Nothing here can make the change
 * not have happened; a failed clear leaves an unreferenced slot that the
 * next start sweeps.
 * `judge` judges the new records' statuses before they are recorded (resync.ts observeWrittenRules: the
 * judgement a pass makes): a status as planned says what the plan read, e.g. "MAC resolved from the
 * neighbour table" for a MAC no ARP probe of ours has had answered, and a read that came while the change or
 * the pass that made it yielded (the clears below, the rest of a pass) was answered with it.
 */
export async function finishRules(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  alloc: RuleAllocation,
  pace: () => Promise<void> = async () => {},
  release = true,
  judge?: (pending: Map<string, { rule: RuleSpec; k: RuleKernel }>) => Promise<void>,
): Promise<void> {
  const { dp, state } = ctx;
  // The new state first, at once: reads between the clears below see it whole.
  const replaced: [RuleKernel, RuleKernel | undefined][] = [];
  const set: [string, RuleRecord, RuleKernel][] = [];
  const del: string[] = [];
  for (const op of ops) {
    const old = state.ruleKernel.get(op.name);
    const next = alloc.kernel.get(op.name);
    if (old) replaced.push([old, next]);
    const rec = alloc.records.get(op.name);
    if (next && rec) set.push([op.name, rec, next]);
    else del.push(op.name);
  }
  // Judged before anything is recorded: reads meanwhile see the state before the change, never a status
  // nobody judged.
  if (judge && set.length) await judge(new Map(set.map(([name, rule, k]) => [name, { rule, k }])));
  if (ops.length >= BULK_SWAP) {
    await state.replaceMany(set, del, pace); // built beside, swapped at once
  } else {
    for (const [name, rec, next] of set) {
      state.setRecord(name, rec);
      state.setKernel(name, next);
    }
    for (const name of del) state.deleteRule(name);
  }
  // `release` false: the caller releases once the links of the same change are recorded too (config-file mode).
  if (release) releaseUnusedInterfaces(ctx);
  for (const [old, next] of replaced) {
    let cleared = true;
    try {
      dp.clearRuleSlot(
        old.slot,
        old.prefixes,
        [...old.backends.values()].map((b) => b.id),
      );
    } catch (e) {
      // Nothing points at the slot any more, but it may still hold source
      // prefixes: never hand it (or its backend ids) to another rule, whose
      // filter those prefixes would widen. The next start sweeps it.
      cleared = false;
      ctx.log.warn({ err: e, slot: old.slot }, 'clearing a replaced rule slot failed: slot kept out of use');
    }
    if (cleared) state.slots.release(old.slot);
    for (const [key, b] of old.backends) {
      if (cleared) state.backendIds.release(b.id);
      if (!next?.backends.has(key)) state.backendStatsIds.release(b.statsId);
    }
    if (!next) state.ruleStatsIds.release(old.statsId);
    await pace();
  }
}

/** When the current turn of the event loop began, as far as pacers saw it. */
let turnStart = 0;
let turnOpen = false;

/**
 * Milliseconds of synchronous work in this turn of the event loop, counted
 * from the first pacer call in it: a setImmediate marks the turn's end, and
 * promise chains (microtasks) never let it run, so transactions awaited one
 * after the other share one turn.
 */
function turnElapsed(): number {
  const now = performance.now();
  if (!turnOpen) {
    turnOpen = true;
    turnStart = now;
    setImmediate(() => {
      turnOpen = false;
    });
  }
  return now - turnStart;
}

/** From how many changed rules a transaction rebuilds the state beside and swaps it (CoreState.replaceMany). */
const BULK_SWAP = 1024;

/**
 * The slice of synchronous work a long transaction or pass does before it yields (ms): a read that arrives
 * meanwhile waits about this long or two (plus its own turn). With 10 ms, GetRule/ListRules during an
 * ApplyRules of 10 000 waited 21.7 ms at the median and 67-88 ms at p99; with 4 ms, 12-13 ms and 42-46 ms
 * (BENCHMARKS.md, section 5, three rounds each), the ApplyRules itself as long (3.7-4.4 s against 3.7 s).
 */
export const SLICE_MS = 4;

/**
 * Thrown by a reconciler pass's pacer when the pass gives its turn to a waiting change (controller.ts,
 * resync()). It ends the pass, which queues again behind the change: it is no failure of what the pass
 * was doing, so a step of the pass that catches errors to report them must let it through.
 */
export class Preempted extends Error {}

/**
 * A pacer for long transactions: awaiting it yields to the event loop (so
 * that reads are answered) once `budgetMs` of work has passed in this turn
 * of the event loop; otherwise it returns at once. The budget is counted per
 * turn, not per pacer: a reconciler pass that applies 1000 rules one by one
 * (1000 transactions of a few ms, each with its own pacer, chained by
 * awaits that never yield) held the event loop for 6 s when each pacer
 * counted only its own time.
 */
export function pacer(budgetMs = SLICE_MS): () => Promise<void> {
  return async () => {
    if (turnElapsed() < budgetMs) return;
    await new Promise((r) => setImmediate(r));
  };
}

/**
 * Links, phase 1 (kernel, undoable), the first half: our program on every ingress of the link set, and (a
 * client's change) every egress of a native-mode ingress checked for native redirects; connects nothing
 * ({@link connectLinks} does). A client's change whose egress cannot take native redirects is refused
 * (FAILED_PRECONDITION naming `fieldOf(ingress)`, else `field`); with `tolerant` (restore, resync) every
 * direction is written and the reconciler reports the ones that cannot forward, so that one link never
 * keeps the others out of the datapath.
 */
export async function prepareLinks(
  ctx: ExecContext,
  next: ReadonlyMap<string, LinkSpec>,
  want: ReadonlyMap<string, LinkDirection>,
  field: string,
  undo: UndoLog,
  tolerant = false,
  fieldOf?: (from: string) => string,
): Promise<Map<string, string>> {
  const { dp, state } = ctx;
  /** Directions ("from>to") whose egress cannot be verified (a veth peer xdpctld cannot inspect): why. */
  const unverified = new Map<string, string>();
  const usedAfter = (name: string) => state.usersOf(name, next) !== undefined;
  for (const [from, info] of want) {
    if (state.attached.has(from)) continue;
    vacateAdjacentDevices(ctx, undo, from, usedAfter, field);
    try {
      attachOne(ctx, undo, from, info.from, state.usersOf(from, next) ?? new Set(), tolerant, fieldOf?.(from) ?? field);
    } catch (e) {
      // Restore and resync: an end that cannot take our program (a bridge asked for native mode) is reported
      // by the reconciler (its directions not forwarding, with the reason); the other links are written.
      if (!tolerant) throw e;
    }
  }
  // Restore and resync write every direction: one whose egress cannot take native redirects is reported by
  // the reconciler (not forwarding, with the reason) and must not keep the other links from being written.
  if (tolerant) return unverified;
  const native = [...want].filter(([from]) => dp.xdpStatus(from)?.mode === 'native');
  const names = [...new Set(native.map(([, d]) => d.toName))];
  const checked = await checkTargets(ctx, names, false);
  for (const [from, d] of native) {
    const r = checked.get(d.toName)!;
    if (r.waitsForPeer) continue; // a veth whose peer is down: a wait (preflight), checked by the reconciler
    if (!r.ok) {
      const f = fieldOf?.(from) ?? field;
      throw new CoreError('precondition', `${f}: ${r.detail}`, [
        { field: f, description: r.detail ?? 'precondition not met' },
      ]);
    }
    // Accepted on the kernel's ndo-xmit flag alone: not verified until traffic shows it (egress-watch.ts), so
    // the reply and every read before the reconciler's next pass say so, as that pass will.
    const dir = `${from}>${d.toName}`;
    const w = state.linkWatch.get(dir);
    if (r.unverified && !(w?.verdict === 'verified' && w.key === r.key)) {
      unverified.set(dir, `${from} -> ${d.toName}: cannot be verified: ${r.detail}`);
    }
  }
  return unverified;
}

/** Links, phase 1, the second half (after {@link prepareLinks}): connect, repoint and disconnect directions (undoable). */
export function connectLinks(
  ctx: ExecContext,
  want: ReadonlyMap<string, LinkDirection>,
  cur: ReadonlyMap<string, { from: number; to: number }>,
  undo: UndoLog,
): void {
  const { dp } = ctx;
  for (const [from, d] of want) {
    const c = cur.get(from);
    if (c && c.from === d.from && c.to === d.to) continue;
    let created = false;
    undo.push(() => {
      if (c && c.from === d.from) return void dp.connect(c.from, c.to);
      dp.disconnect(d.from);
      // Only the counters entry this connect created: one left from before
      // (a release that failed after an earlier change) stays as it was.
      if (created) dp.resetLinkStats(d.from);
    });
    created = dp.connect(d.from, d.to);
    // Its counters entry was given out, zeroed, now: its series starts at 0 now (ZEROED), not at its first read as
    // found counting (FOUND, which says they include what was counted before). One kept (a peer swap, an entry
    // found in the pins at a start) goes on as it was.
    if (created) ctx.state.counterResets.forget('link', d.from, ctx.now(), ctx.mono());
    if (c && c.from !== d.from) {
      // The ingress was recreated (new ifindex): the entry under its old ifindex goes, or a device that
      // gets that ifindex later would be cross-connected.
      undo.push(() => void dp.connect(c.from, c.to));
      dp.disconnect(c.from);
    }
  }
  for (const [from, c] of cur) {
    if (want.has(from)) continue;
    undo.push(() => void dp.connect(c.from, c.to));
    dp.disconnect(c.from);
  }
}

/**
 * Links, phase 2, after the change is durable: record the new set, release
 * the counters of directions that are gone (their xc_stats indexes, so that
 * a table of 1 024 ingress interfaces never fills with dead links), detach
 * from interfaces nobody uses, and mark the directions `prepareLinks` found
 * unverified (listed as such from the reply on, until a pass judges them).
 */
export function finishLinks(
  ctx: ExecContext,
  next: ReadonlyMap<string, LinkSpec>,
  want: ReadonlyMap<string, LinkDirection>,
  unverified: ReadonlyMap<string, string> = new Map(),
  release = true,
): void {
  const { dp, state } = ctx;
  for (const [dir, why] of unverified) state.linkUnverified.set(dir, why);
  const kept = new Set([...want.values()].map((d) => d.from));
  for (const from of state.linkDirs.keys()) {
    if (kept.has(from)) continue;
    // A direction gone takes its reset warning and its series with it (not a series "zeroed" now: the next
    // direction on this ingress gets its own when its entry is given out).
    state.counterResets.drop('link', from);
    try {
      dp.resetLinkStats(from);
    } catch (e) {
      ctx.log.warn({ err: e, ifindex: from }, 'releasing link counters failed');
    }
  }
  state.links.clear();
  for (const [k, l] of next) state.links.set(k, l);
  state.linkDirs.clear();
  for (const [from, d] of want) state.linkDirs.set(d.from, { from, to: d.toName });
  // A direction written anew starts from 0: the next read sees the counters afresh (counter-resets.ts).
  state.counterResets.forgetSeen('link');
  state.desiredVersion++; // a counter read made before shows the old links (CounterHub)
  if (release) releaseUnusedInterfaces(ctx);
}

/**
 * Attach our program to one interface within a transaction. The undo step
 * detaches only what this attach put there: a program that was ours already
 * (a restart adopting the datapath) stays, so a failed start never takes
 * down a datapath that was forwarding. With `tolerant` (restore, resync),
 * an interface that another XDP program occupies is recorded, not fatal:
 * the rest is served and the status says why that interface is not.
 */
function attachOne(
  ctx: ExecContext,
  undo: UndoLog,
  name: string,
  ifindex: number,
  users: Set<string>,
  tolerant: boolean,
  field?: string,
): void {
  const { dp, state } = ctx;
  const before = dp.xdpStatus(name);
  if (before && before.mode !== 'none' && !before.ours && tolerant) {
    state.foreign.set(name, before.progId);
    if (before.unidentified) state.unidentified.set(name, before.unidentified);
    else state.unidentified.delete(name);
    return;
  }
  // A mode switch at start that would stop what it forwards is not made (core/keep-mode.ts).
  const keep = state.keepMode.get(name);
  let st: ReturnType<Dataplane['attach']>;
  try {
    st =
      keep && before?.ours && before.mode === 'generic' && dp.keepMode
        ? dp.keepMode(name, keep, ctx.mode)
        : dp.attach(name, ctx.mode);
  } catch (e) {
    // A client's change: the refusal names the request field that needs the program there, with the kernel's
    // answer ("links[1]: attach xdp to br0: ... (EOPNOTSUPP)"), under the kernel error's kind.
    if (!field || !(e instanceof PortError)) throw e;
    throw new CoreError(e.kind, `${field}: ${e.message}`, [{ field, description: e.message }], { cause: e });
  }
  state.foreign.delete(name);
  state.unidentified.delete(name);
  state.attached.set(name, { ifindex, users, mode: st.mode });
  const wasOurs = !!before && before.mode !== 'none' && before.ours;
  undo.push(() => {
    state.attached.delete(name);
    if (!wasOurs) dp.detach(name);
  });
  // The dataplane logs the attach itself ("attached", with the ifindex, the mode asked and the one the kernel
  // took), once, and only when the kernel changed: a second line here would log the same transition twice.
}

/**
 * Before attaching to `name`: detach ours from the devices directly below it (a rule's ingress moving from a
 * bridge port to the bridge) and above it (back from the bridge to the port) that the new state no longer
 * needs. The kernel refuses any XDP change on a device while a device above it has a program (EEXIST), so
 * the order matters both ways; undone (re-attached) if the transaction fails. A device above `name` that
 * still needs our program makes the change impossible: FAILED_PRECONDITION naming `field` and both devices,
 * nothing changed.
 */
function vacateAdjacentDevices(
  ctx: ExecContext,
  undo: UndoLog,
  name: string,
  usedAfter: (name: string) => boolean,
  field: string,
): void {
  const { dp, state } = ctx;
  const vacate = (other: string, relation: 'lower' | 'upper') => {
    const a = state.attached.get(other);
    if (!a) return;
    if (usedAfter(other)) {
      if (relation === 'lower') return; // a program below may stay: the kernel only refuses one above
      const detail =
        `${name} is a port of ${other}, which still needs our XDP program; the kernel refuses a program on a ` +
        `device while a device above it has one (EEXIST): move every rule and link off ${other} first`;
      throw new CoreError('precondition', `${field}: ${detail}`, [{ field, description: detail }]);
    }
    dp.detach(other);
    state.attached.delete(other);
    ctx.preflightTargets = undefined; // a native program gone may take NAPI from a local veth peer
    ctx.log.info(
      relation === 'lower' ? { ifname: other, upper: name } : { ifname: other, lower: name },
      relation === 'lower'
        ? 'detached from a lower device before attaching to its upper device'
        : 'detached from an upper device before attaching to its lower device',
    );
    undo.push(() => {
      dp.attach(other, ctx.mode);
      state.attached.set(other, a);
    });
  };
  for (const upper of dp.upperDevices?.(name) ?? []) vacate(upper, 'upper');
  for (const lower of dp.lowerDevices?.(name) ?? []) vacate(lower, 'lower');
}

/**
 * This datapath's program (or an earlier one of it) on an interface that no rule or link names: left by
 * an earlier run (a rule deleted while the program could not be detached, an older xdpctld's failed
 * switch), or attached by hand (`ip link set dev X xdp pinned PIN/progs/xdpctl_main`). It is taken into
 * the attachments, so that it is listed, and logged once; {@link releaseUnusedInterfaces} then detaches it
 * like any interface no longer used (a failed detach stays listed with the reason and is retried): nothing
 * stays attached that ListInterfaces does not show. At a start (restore.ts) and by the reconciler's passes
 * (resync.ts, every {@link STRAY_LOCAL_SCAN_MS}). Returns how many it took.
 */
export function adoptStrayAttachments(ctx: ExecContext): number {
  const { dp, state } = ctx;
  let n = 0;
  for (const [name, a] of dp.ownAttachments?.() ?? []) {
    if (state.attached.has(name) || state.isUsed(name)) continue;
    state.attached.set(name, { ifindex: a.ifindex, users: new Set(), mode: a.mode });
    n++;
    ctx.log.warn(
      { ifname: name, ifindex: a.ifindex, mode: a.mode },
      `${name} runs this datapath's XDP program, but no rule or link uses it: detaching it`,
    );
  }
  return n;
}

/** How often the reconciler looks for {@link adoptStrayAttachments} (ms): one look reads every device's XDP state. */
export const STRAY_LOCAL_SCAN_MS = 2000;

/**
 * Detach from interfaces no rule or link uses any more. A detach that fails
 * keeps the attachment (listed by ListInterfaces with the reason, retried
 * on the next pass, logged once per distinct error): nothing stays attached
 * that the daemon does not show.
 */
export function releaseUnusedInterfaces(ctx: ExecContext): void {
  for (const [name, a] of ctx.state.attached) {
    if (ctx.state.isUsed(name)) {
      a.detachError = undefined;
      continue;
    }
    a.users = new Set();
    try {
      ctx.dp.detach(name);
    } catch (e) {
      const msg = (e as Error).message;
      if (a.detachError !== msg) ctx.log.warn({ err: e, ifname: name }, 'detach failed; retried on the next pass');
      a.detachError = msg;
      continue;
    }
    ctx.state.attached.delete(name);
  }
}

/**
 * A start adopting rules the datapath already holds, in place: the slots,
 * counters and backend ids stored with each rule (restore reserved them) are
 * kept, every entry the rule needs is read back from the kernel (rule entry,
 * backend table, backend entries, source prefixes, match entries) and
 * compared with what writing the rule would put there, and only the entries
 * that differ are written — each write moves one entry to its desired value,
 * so a packet sees either what the kernel had or the repaired entry. A
 * table whose shares still hold is kept slot for slot ({@link ringHolds});
 * one that does not is refilled from itself ({@link fillRing}, minimal
 * disruption) and only the span of slots that changed is written.
 *
 * `planOf` plans one rule (undefined: it cannot be adopted; it is returned
 * in `rest`, for the rewrite path). The rules are planned twice, never all
 * held at once: first to know where our program must be attached and which
 * egresses the veth-peer checks must see (all attached, then all checked,
 * before anything is compared), then chunk by chunk to compare, each chunk's
 * plans dropped once compared (10 000 plans held together lived long enough
 * to be promoted, then were collected again by full collections). Nothing is
 * written to the maps before every rule is compared.
 *
 * Returns each rule's kernel record and what was repaired (an EntryRepair
 * each: its line, map, key and rule). Attachments are undone through `undo` on failure; repairs
 * are not (they only move entries towards the desired state).
 */
export async function adoptRules(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  planOf: (op: RuleOp) => RulePlan | undefined,
  undo: UndoLog,
  pace: () => Promise<void> = pacer(),
): Promise<{ kernel: Map<string, RuleKernel>; repaired: EntryRepair[]; rest: RuleOp[] }> {
  const { state } = ctx;
  const adoptable: RuleOp[] = [];
  const rest: RuleOp[] = [];
  // Pass 1: per ingress interface, the first rule naming it (what attachIngress attaches it for, in the
  // order the plans name them); per set of ingress interfaces, the egresses of the backends that receive.
  const attachFor = new Map<string, Pick<RulePlan, 'name' | 'field' | 'ingress'>>();
  const egressesOf = new Map<string, { ingress: string[]; egresses: Set<string> }>();
  let n = 0;
  for (const op of ops) {
    if ((++n & 255) === 0) await pace();
    const p = planOf(op);
    if (!p) {
      rest.push(op);
      continue;
    }
    adoptable.push(op);
    for (const i of p.ingress)
      if (!attachFor.has(i.name)) attachFor.set(i.name, { name: p.name, field: p.field, ingress: [i] });
    const key = p.ingress.map((i) => i.name).join('\n');
    let e = egressesOf.get(key);
    if (!e) egressesOf.set(key, (e = { ingress: p.ingress.map((i) => i.name), egresses: new Set() }));
    for (const b of p.backends) if (b.receiving) e.egresses.add(b.spec.interface);
  }
  attachIngress(ctx, adoptable, [...attachFor.values()], undo, true);
  // The veth-peer checks next: a backend whose egress fails one is kept out of the table (its plan changes),
  // which the comparison below must see.
  const native = nativeIngress(ctx);
  const need = new Set<string>();
  for (const { ingress, egresses } of egressesOf.values()) {
    if (ingress.some(native)) for (const x of egresses) need.add(x);
  }
  const peers = await checkTargets(ctx, [...need], true);
  await pace();
  // Pass 2, chunk by chunk: plan again, keep out what failed its check, compare. In the order of the rules'
  // slots, so that each chunk reads its rule entries and backend tables from one short run of slots (the
  // stored order is by name: r1, r10, r100, ... lie far apart).
  const bySlot = adoptable
    .map((op) => [state.ruleKernel.get(op.name)!.slot, op] as const)
    .sort((a, b) => a[0] - b[0])
    .map(([, op]) => op);
  const view = readKernelView(
    ctx,
    adoptable.map((op) => state.ruleKernel.get(op.name)!),
  );
  const found = newRepairs();
  const kernel = new Map<string, RuleKernel>();
  for (let c = 0; c < bySlot.length; c += ADOPT_RULES_PER_CHUNK) {
    const plans: RulePlan[] = [];
    const ks: RuleKernel[] = [];
    for (const op of bySlot.slice(c, c + ADOPT_RULES_PER_CHUNK)) {
      const p = planOf(op)!;
      keepOutFailedEgresses(p, native, peers, true);
      plans.push(p);
      ks.push(state.ruleKernel.get(p.name)!);
    }
    await compareRules(ctx, view, plans, ks, found, pace);
    for (const [i, p] of plans.entries()) {
      const k = ks[i];
      kernel.set(p.name, {
        slot: k.slot,
        statsId: k.statsId,
        matchKeys: p.matchKeys,
        prefixes: p.prefixes,
        backends: k.backends,
        ifindexes: p.ifindexes,
        status: plannedStatus(p),
      });
    }
    await pace();
  }
  // The match entries with their per-port index: the start recounted the index from the match entries as read
  // before anything was written (restore.ts), so a repaired match entry moves the index with it, as a change does.
  const repaired = writeRepairs(ctx, found, true);
  return { kernel, repaired, rest };
}

/** Rules one chunk of an adoption plans and compares (their plans are dropped before the next chunk). */
const ADOPT_RULES_PER_CHUNK = 256;

/**
 * What the kernel holds for each rule (its match entries, rule entry, backend table, backend entries,
 * source prefixes), compared with what it should hold (`plans`, at the slot and ids of `ks`), and only
 * what differs written. Used by the reconciler (another tool may have changed the maps: bpftool map
 * update/delete); a start compares the same way ({@link adoptRules}). Returns what differed, one record each:
 * its line (which rule and entry, which field, the kernel's value and the desired one), map, key and rule.
 * `seen`: given every source-prefix entry the comparison read (all slots, by slot), before anything is written.
 */
export async function repairRuleEntries(
  ctx: ExecContext,
  plans: readonly RulePlan[],
  ks: readonly RuleKernel[],
  pace: () => Promise<void> = pacer(),
  seen?: (prefixes: ReadonlyMap<number, readonly SrcKey[]>) => void,
  slotsOnly = false,
): Promise<EntryRepair[]> {
  const view = readKernelView(ctx, ks, slotsOnly);
  if (view.prefixes) seen?.(view.prefixes);
  const found = newRepairs();
  await compareRules(ctx, view, plans, ks, found, pace);
  return writeRepairs(ctx, found, false);
}

/**
 * A match entry as a log names it: the ingress interface by name (with its ifindex), the protocol, port and
 * destination; not the map key's raw fields, which read like a request field.
 */
export function matchText(m: MatchKey, ingress: readonly { name: string; ifindex: number }[]): string {
  const iface = ingress.find((i) => i.ifindex === m.ifindex)?.name ?? 'an interface';
  const proto = m.proto === 17 ? 'UDP' : m.proto === 6 ? 'TCP' : `IP protocol ${m.proto}`;
  const any = m.daddr.every((b) => b === 0);
  const dst = any ? 'any destination' : `destination ${formatIp(m.daddr)}`;
  return `match entry (map rule_match: ingress ${iface} ifindex ${m.ifindex}, ${proto} port ${m.dport}, ${dst})`;
}

/** Slots whose rule entry and backend table one readRuleSlots call reads (then the event loop may run). */
const ADOPT_SLOTS_PER_READ = 1024;

/** What the kernel holds that a comparison reads once for all the rules it compares. */
interface KernelView {
  /** Match entries: matchId -> slot (undefined: not read, not compared). */
  matches?: Map<string, number>;
  /** Source-prefix entries by slot (undefined: not read, not compared). */
  prefixes?: Map<number, SrcKey[]>;
  /** Whether the kernel holds exactly this backend entry (undefined: a dataplane without it, compared at the end). */
  same?: (id: number, e: BackendEntry) => boolean;
}

/**
 * Match entries and source prefixes (one walk each; not with `slotsOnly`: a walk of every rule's, for a few rules),
 * backend entries of the ids `ks` hold (one read).
 */
function readKernelView(ctx: ExecContext, ks: readonly RuleKernel[], slotsOnly = false): KernelView {
  const { dp } = ctx;
  let matches: Map<string, number> | undefined;
  let prefixes: Map<number, SrcKey[]> | undefined;
  if (!slotsOnly) {
    matches = new Map(dp.listMatches().map(([k, slot]) => [matchId(k), slot]));
    prefixes = new Map<number, SrcKey[]>();
    for (const k of dp.listSrcPrefixes()) {
      let l = prefixes.get(k.slot);
      if (!l) prefixes.set(k.slot, (l = []));
      l.push(k);
    }
  }
  let lo = Infinity;
  let hi = -1;
  for (const k of ks) {
    for (const { id } of k.backends.values()) {
      if (id < lo) lo = id;
      if (id > hi) hi = id;
    }
  }
  return { matches, prefixes, same: dp.backendComparer?.(lo, hi) };
}

/** What a comparison found to differ, rule by rule; {@link writeRepairs} writes it and says what it was. */
interface Repairs {
  /**
   * Backend id -> its desired entry, its rule, who it is ("rule web: backend ip@iface") and, for one out of its
   * table, why (EntryRepair.takenOut), for the ids that differ.
   */
  backends: Map<number, { want: BackendEntry; rule: string; who: string; takenOut?: string }>;
  /** Backend entries to compare at the end (a dataplane without backendComparer). */
  pending: [id: number, want: BackendEntry, rule: string, who: string, takenOut?: string][];
  addPrefixes: SrcKey[];
  delPrefixes: SrcKey[];
  ringWrites: [slot: number, start: number, ids: number[]][];
  cfgWrites: [slot: number, flags: number, statsId: number, srcFilter: boolean][];
  matchWrites: [MatchKey, number][];
  /** What each differing entry was, by kind (said in this order: backends first). */
  slotLines: EntryRepair[];
  prefixLines: EntryRepair[];
  matchLines: EntryRepair[];
}

const newRepairs = (): Repairs => ({
  backends: new Map(),
  pending: [],
  addPrefixes: [],
  delPrefixes: [],
  ringWrites: [],
  cfgWrites: [],
  matchWrites: [],
  slotLines: [],
  prefixLines: [],
  matchLines: [],
});

/** A backend out of the table is compared with (and cleared to) the empty entry: one object for all of them. */
const EMPTY_BACKEND = emptyBackendEntry();

/**
 * Compare every entry `plans` need (at the slot and ids of `ks`) with `view` and what the kernel's rule
 * entries and backend tables hold; add what differs to `found` (no write).
 */
async function compareRules(
  ctx: ExecContext,
  view: KernelView,
  plans: readonly RulePlan[],
  ks: readonly RuleKernel[],
  found: Repairs,
  pace: () => Promise<void>,
): Promise<void> {
  const { dp } = ctx;
  const macs = new Map<string, Uint8Array>(); // 10 000 rules name a few egress interfaces (and often few MACs)
  let n = 0;
  // Backend entries: each desired entry built, compared with the kernel's bytes and dropped unless it differs.
  for (const [i, p] of plans.entries()) {
    if ((++n & 255) === 0) await pace();
    for (const b of p.backends) {
      const ids = ks[i].backends.get(b.key)!;
      const want = b.receiving ? backendOf(b, ids.statsId, macs) : EMPTY_BACKEND;
      const takenOut = b.receiving ? undefined : `backend ${b.key}: ${messageHead(b.status.message)}`;
      if (view.same) {
        // The backend's identity (ip@interface): what a log names, not the id.
        if (!view.same(ids.id, want))
          found.backends.set(ids.id, { want, rule: p.name, who: `rule ${p.name}: backend ${b.key}`, takenOut });
      } else found.pending.push([ids.id, want, p.name, `rule ${p.name}: backend ${b.key}`, takenOut]);
    }
  }
  await pace();
  // Rule entries and backend tables: every slot read once, in runs of slots in order.
  const bySlot = new Map(ks.map((k, i) => [k.slot, i]));
  const slots = [...bySlot.keys()].sort((a, b) => a - b);
  const visit = (slot: number, now: RuleSlotState) => {
    const i = bySlot.get(slot)!;
    const p = plans[i];
    const k = ks[i];
    const owner = { kind: 'rule', rule: p.name } as const;
    const members: { key: string; weight: number; value: number }[] = [];
    /** Backends out of the table (id -> why) that the kernel's table may still hold. */
    let out: Map<number, string> | undefined;
    for (const b of p.backends) {
      const id = k.backends.get(b.key)!.id;
      if (b.receiving) members.push({ key: b.key, weight: b.spec.weight, value: id });
      else (out ??= new Map()).set(id, `backend ${b.key}: ${messageHead(b.status.message)}`);
    }
    const stride = now.ringStride ?? 1;
    let one = oneIdOf(now.ring, dp.ringSize, stride);
    if (!idRingHolds(members, dp.ringSize, dp.noBackend, now.ring, stride)) {
      const ring = Array.from({ length: dp.ringSize }, (_, s) => now.ring[s * stride]);
      const keyOf = new Map([...k.backends].map(([key, v]) => [v.id, key]));
      const want = fillRing(
        members,
        dp.ringSize,
        dp.noBackend,
        ring.map((id) => keyOf.get(id)),
      );
      one = oneIdOf(Uint32Array.from(want), want.length, 1);
      let lo = -1;
      let hi = -1;
      for (let s = 0; s < want.length; s++) {
        if (want[s] === ring[s]) continue;
        if (lo < 0) lo = s;
        hi = s;
      }
      if (lo >= 0) {
        found.ringWrites.push([slot, lo, want.slice(lo, hi + 1)]);
        const at = lo === hi ? `position ${lo}` : `positions ${lo}-${hi}`;
        // The kernel's table holds backends now out of it: the write follows the host (said as such).
        const held = out && [...new Set(ring)].flatMap((id) => (out.has(id) ? [out.get(id)!] : []));
        found.slotLines.push({
          line: `rule ${p.name}: backend table (map rule_ring, rule slot ${slot}, ${at} of ${dp.ringSize})`,
          map: 'rule_ring',
          key: String(slot),
          entry: `rule ${p.name}: backend table (map rule_ring, rule slot ${slot})`,
          owner,
          ...(held?.length ? { takenOut: held.join('; ') } : {}),
        });
      }
    }
    const srcFilter = p.prefixes.length > 0;
    // The flags as read are judged against the ring as it will be: a ring another tool rewrote (repaired above)
    // makes the one-backend bit look wrong while the word is what this daemon would write (kernel 0x9, desired
    // 0x9 was said, and a loop of ring rewrites a fight over rule_cfg, which nobody wrote).
    const wordRight = now.word !== undefined && now.wordOf?.(p.flags, srcFilter, one) === now.word;
    const flagsDiffer = now.flags !== p.flags && !wordRight;
    if (!now.active || flagsDiffer || now.statsId !== k.statsId || now.srcFilter !== srcFilter) {
      found.cfgWrites.push([slot, p.flags, k.statsId, srcFilter]);
      const d: string[] = [];
      if (!now.active) d.push('active: kernel false, desired true');
      if (flagsDiffer) {
        // The word as read and as it would be written (every bit), not the bits the comparison looks at.
        const kernel = now.word ?? now.flags;
        const desired = now.wordOf?.(p.flags, srcFilter, one) ?? p.flags;
        d.push(`flags: kernel 0x${kernel.toString(16)}, desired 0x${desired.toString(16)}`);
      }
      if (now.statsId !== k.statsId) d.push(`stats id: kernel ${now.statsId}, desired ${k.statsId}`);
      if (now.srcFilter !== srcFilter) d.push(`source filter: kernel ${now.srcFilter}, desired ${srcFilter}`);
      const entry = `rule ${p.name}: rule entry (map rule_cfg, rule slot ${slot})`;
      found.slotLines.push({ line: `${entry}: ${d.join('; ')}`, map: 'rule_cfg', key: String(slot), entry, owner });
    }
  };
  for (let i = 0; i < slots.length; i += ADOPT_SLOTS_PER_READ) {
    dp.readRuleSlots(slots.slice(i, i + ADOPT_SLOTS_PER_READ), visit);
    await pace();
  }
  // Source prefixes: add the missing ones before the entry says "filter", remove extra ones after.
  const prefixId = (x: { length: number; addr: Uint8Array }) => `${x.length}/${Array.from(x.addr).join('.')}`;
  for (const [i, p] of view.prefixes ? plans.entries() : []) {
    if ((++n & 255) === 0) await pace();
    const slot = ks[i].slot;
    const now = view.prefixes!.get(slot) ?? [];
    if (now.length === 0 && p.prefixes.length === 0) continue; // most rules filter no source
    const nowIds = new Set(now.map(prefixId));
    const wantIds = new Set(p.prefixes.map(prefixId));
    const add = p.prefixes.filter((x) => !nowIds.has(prefixId(x))).map((x) => ({ slot, ...x }));
    const del = now.filter((x) => !wantIds.has(prefixId(x)));
    found.addPrefixes.push(...add);
    found.delPrefixes.push(...del);
    if (add.length + del.length)
      found.prefixLines.push({
        line: `rule ${p.name}: source prefixes (map src_allow, rule slot ${slot}: ${add.length} added, ${del.length} removed)`,
        map: 'src_allow',
        key: String(slot),
        entry: `rule ${p.name}: source prefixes (map src_allow, rule slot ${slot})`,
        owner: { kind: 'rule', rule: p.name },
      });
  }
  // Match entries: published last, each pointing at its rule's slot.
  for (const [i, p] of view.matches ? plans.entries() : []) {
    if ((++n & 255) === 0) await pace();
    const slot = ks[i].slot;
    for (const m of p.matchKeys) {
      const now = view.matches!.get(matchId(m));
      if (now === slot) continue;
      found.matchWrites.push([m, slot]);
      const entry = `rule ${p.name}: ${matchText(m, p.ingress)}`;
      found.matchLines.push({
        line: `${entry}: kernel ${now === undefined ? 'absent' : `rule slot ${now}`}, desired rule slot ${slot}`,
        map: 'rule_match',
        key: matchId(m),
        entry,
        owner: { kind: 'rule', rule: p.name },
      });
    }
  }
}

/**
 * Write what {@link compareRules} found to differ: what packets will be sent to first, then the tables, the
 * entries, and last what is published. Returns what differed, one record each (backends first, then rule
 * entries and tables, source prefixes, match entries).
 *
 * `index`: whether a match entry written moves the per-port index (rule_ports) with it. True only where the
 * index was just recounted from the match entries as read (a start: restore.ts recounts it before anything
 * is written), so it counts the kernel's match entries and a +1 or refold keeps it exact. False for the
 * reconciler: another tool that changed a match entry did not change the index with it, so a +1 (or refold)
 * would make it wrong, and the recount that follows (kernel-check.ts) would report the daemon's own write as
 * the kernel's value; the index is the caller's to recount from the match entries.
 */
function writeRepairs(ctx: ExecContext, found: Repairs, index: boolean): EntryRepair[] {
  const { dp } = ctx;
  if (found.pending.length) {
    const differ = new Set(
      dp.differingBackends(found.pending.map(([id, want]) => [id, want] as [number, BackendEntry])),
    );
    for (const [id, want, rule, who, takenOut] of found.pending)
      if (differ.has(id)) found.backends.set(id, { want, rule, who, takenOut });
  }
  const repaired: EntryRepair[] = [];
  const backendWrites: [number, BackendEntry][] = [];
  const backendClears: [number, BackendEntry][] = [];
  for (const [id, { want }] of found.backends)
    (want === EMPTY_BACKEND ? backendClears : backendWrites).push([id, want]);
  if (found.backends.size) {
    // How each differs (read back only for the ids that differ: usually none).
    const ids = [...found.backends.keys()].slice(0, 100);
    const now = dp.readBackends?.(ids);
    for (const [id, { want, rule, who, takenOut }] of found.backends) {
      const fields = now && ids.includes(id) ? backendFieldDiff(now.get(id), want) : '';
      const entry = `${who} (map backends, entry ${id})`;
      repaired.push({
        line: `${entry}${fields}`,
        map: 'backends',
        key: String(id),
        entry,
        owner: { kind: 'rule', rule },
        ...(takenOut ? { takenOut } : {}),
      });
    }
  }
  repaired.push(...found.slotLines, ...found.prefixLines, ...found.matchLines);
  dp.writeBackends(backendWrites);
  for (const x of found.addPrefixes) dp.putSrcPrefix(x);
  for (const [slot, start, ids] of found.ringWrites) dp.writeRing(slot, start, ids);
  for (const [slot, flags, statsId, srcFilter] of found.cfgWrites) dp.writeRuleCfg(slot, flags, statsId, srcFilter);
  for (const x of found.delPrefixes) dp.deleteSrcPrefix(x);
  dp.writeBackends(backendClears);
  for (const [m, slot] of found.matchWrites) dp.putMatch(m, slot, index);
  return repaired;
}

/** How a backend entry the kernel holds differs from the desired one: "; dmac: kernel X, desired Y" per field. */
function backendFieldDiff(now: BackendEntry | undefined, want: BackendEntry): string {
  if (!now) return ': absent in the kernel';
  const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
  const ip = (b: Uint8Array) => Array.from(b.subarray(0, 4)).join('.');
  const out: string[] = [];
  const cmp = (field: string, a: string, b: string) => {
    if (a !== b) out.push(`${field}: kernel ${a}, desired ${b}`);
  };
  cmp('destination MAC', hex(now.dmac), hex(want.dmac));
  cmp('source MAC', hex(now.smac), hex(want.smac));
  cmp('egress ifindex', String(now.ifindex), String(want.ifindex));
  cmp('stats id', String(now.statsId), String(want.statsId));
  cmp('address family', String(now.family), String(want.family));
  cmp('destination IP', ip(now.addr), ip(want.addr));
  return out.length ? `: ${out.join('; ')}` : '';
}

/** A planned backend as the datapath stores it (`macs`: parsed MACs by text, shared: never written to). */
function backendOf(b: RulePlan['backends'][number], statsId: number, macs?: Map<string, Uint8Array>): BackendEntry {
  const mac = (text: string): Uint8Array => {
    const known = macs?.get(text);
    if (known) return known;
    const m = parseMac(text);
    macs?.set(text, m);
    return m;
  };
  return {
    dmac: mac(b.mac),
    smac: mac(b.smac),
    ifindex: b.ifindex,
    statsId,
    family: AF_INET,
    addr: parseIp(b.spec.ip).bytes,
  };
}

/** A src_allow key as a line names it: "10.9.0.0/16" (IPv4) or the address's hex and length. */
function srcText(k: SrcKey): string {
  const a = k.addr.length === 4 ? [...k.addr].join('.') : Buffer.from(k.addr).toString('hex');
  return `${a}/${k.length}`;
}
