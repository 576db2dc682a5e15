/**
 * The reconciler: level-triggered, it compares the desired state with what
 * the host has now and converges, on every pass (every second, and at once
 * when rtnetlink reports a link or neighbour change). It repairs what is
 * safe to repair and reports what it cannot:
 *  - our program on every interface that needs it: re-attached when someone
 *    detached it; a foreign program is left alone and reported;
 *  - interfaces that disappear and come back (same name, new ifindex): the
 *    rules and links on them are written again;
 *  - backends that cannot receive (egress down or without carrier, MAC not
 *    resolved) are taken out of their rule's table and put back when they
 *    recover; neighbour MACs are followed (and probed while unresolved);
 *  - rules the datapath refused are tried again;
 *  - every rule's status says what was observed (rule-status.ts), and each
 *    transition is logged once.
 * Allocates nothing per rule when nothing changed beyond the facts it reads.
 */
import {
  adoptStrayAttachments,
  pacer,
  Preempted,
  releaseUnusedInterfaces,
  STRAY_LOCAL_SCAN_MS,
  type ChangeLoopsUnknown,
  type ExecContext,
} from './execute.js';
import { wallAt } from './clock.js';
import { FIGHT_WINDOW_MS, fightWindow } from './fights.js';
import {
  deletedSinceRead,
  forgetReplacedDevices,
  remadeDevices,
  remadeSinceRead,
  remadeText,
} from './device-identity.js';
import { judgedEgress, stepEgress } from './egress-watch.js';
import { stepTapDrops, TAP_DROP_WINDOW_MS, tapDropText } from './tap-drops.js';
import { backendKeys, emptyFacts, fetchAllRuleFacts, neighbourKey, peerMtu, type Facts } from './facts.js';
import {
  clearFreeMoved,
  compareKernelEntries,
  KERNEL_CHECK_MIN_MS,
  kernelCheckInterval,
  QUICK_MAPS,
  quickCheck,
  type KernelCheck,
} from './kernel-check.js';
import { entrySubject, type EntryRepair } from './entry-owners.js';
import { followMovedEgresses, followMovedInterfaces, missingText, movedEgresses } from './moved.js';
import type { Dataplane, InterfaceInfo, XdpStatus } from './dataplane.js';
import { linkKey, type LinkSpec, type RuleSpec } from './model.js';
import { visible } from '../../shared/visible.js';
import { activeLinkSources, shadowedStatus } from './shadow.js';
import {
  CONFLICT_MS,
  conflictEndText,
  conflictHold,
  conflictText,
  holdNeighbours,
  NEIGHBOUR_HOLD_MS,
  stepNeighbourHold,
  type HoldEnd,
  type NeighbourHold,
} from './neighbour-hold.js';
import { directions, forwardingLoop } from './plan-links.js';
import type { RuleOp } from './plan-rules.js';
import {
  findHostLoops,
  receiveTree,
  txReaders,
  upperReader,
  hostLoopProblem,
  LOOP_TAIL,
  loopBackendKey,
  loopBackendsText,
  loopRule,
  type HostLoops,
  type LoopRule,
} from './rule-loops.js';
import { applyEach, type Transactions } from './restore.js';
import { RuleTransitions } from './rule-transitions.js';
import { otherProgram } from './conditions.js';
import { reattachedText } from './reattach-text.js';
import { inspectTarget, isUnchecked } from './unchecked.js';
import {
  observedOf,
  sameObserved,
  type CoreState,
  type IfaceFacts,
  type RuleKernel,
  type StaticMacUnanswered,
} from './state.js';
import { linkWhat } from './counter-resets.js';
import {
  freshEntry,
  observeStaticMac,
  RESOLVES_PER_PASS,
  sameEntry,
  samePeer,
  STATIC_MAC_SWEEP_MS,
  STATIC_MAC_WAIT_MAX,
  STATIC_MAC_WAIT_STEP_MS,
  STATIC_MAC_UNANSWERED_MS,
  staticMacKey,
  stepStaticMac,
  unconfirmedYetWhy,
  UNVERIFIED_GRACE_MS,
  type NeighbourFact,
  type PeerRead,
  type StaticMacBackend,
  type StaticMacHeard,
  type StaticMacObservation,
} from './static-mac.js';
import {
  absentBackendStatus,
  backendStatus,
  egressProblem,
  ingressDownProblem,
  isMtuUnverified,
  isMtuWarning,
  largestPassing,
  missingInterfacesWarning,
  MTU_SLACK,
  countedAs,
  egressMtu,
  mtuWarnings,
  judgeRule,
  type RuleObservation,
  type UnverifiedMacs,
  handSetWhy,
  keptMacWhy,
  peerWhere,
  peerXdpNote,
  egressHooksPhrase,
  egressOwnPhrase,
  takerParts,
} from './rule-status.js';

/** What one pass found. */
export interface ResyncResult {
  /** Interfaces the desired state names that do not exist, sorted. */
  missing: string[];
  /**
   * What the pass found wrong on the host, one line each (missing
   * interfaces, foreign programs). Rules not ACTIVE are added from their
   * statuses at read time by Controller.problems(): the xdpctl.datapath
   * health service is NOT_SERVING while any is listed.
   */
  problems: string[];
  /** Rules whose observed status or ingress problems this pass found changed (their conditions are recorded). */
  changed: string[];
  /** The interfaces this pass looked up (name -> what it found; undefined: missing). */
  interfaces: ReadonlyMap<string, InterfaceInfo | undefined>;
}

const specOf = (r: { generation: number; createTime: number; updateTime: number } & RuleSpec): RuleSpec => {
  const { generation: _g, createTime: _c, updateTime: _u, ...spec } = r;
  return spec;
};

/**
 * How often the device settings an attach made for XDP are checked again on each interface running our
 * program (ms): a check forks `ip` and `ethtool` (a device setting changed in another namespace, e.g. a
 * veth peer's offloads, sends no rtnetlink event here).
 */
export const INGRESS_CHECK_MS = 2000;

/** The words of an ingress whose device settings could not be checked (checkIngressSettings). */
const UNVERIFIED_SETTINGS = 'the device settings XDP relies on cannot be verified: cannot check them';

/** One pass. */
export async function resync(
  ctx: ExecContext,
  tx: Transactions,
  pace = pacer(),
  factsRead: () => void = () => {},
): Promise<ResyncResult> {
  const { dp, state } = ctx;
  const missing = new Set<string>();
  // Repairs another tool keeps undoing (fights.ts): a subject counts one repair per pass; fights that saw no
  // repair for a window end here, summaries due are said.
  state.fights.beginPass();
  state.fights.tick();
  // The facts of this pass, each read once per name (every rule names its
  // interfaces): interfaces, egress link states, neighbour MACs.

  // With 10 000 rules a pass is long: it yields to the event loop every 10 ms (checked every
  // 16 rules: a rule may have 64 backends), so reads are answered meanwhile. Writes wait: a
  // pass runs in the write queue (the controller's `pace` ends a pass that has written nothing
  // yet when a change is waiting).
  let n = 0;
  // With static-MAC backends to judge (judgeStaticMacs) the whole neighbour table is kept from the same read.
  const facts = await fetchAllRuleFacts(dp, state, undefined, pace, state.staticMacsByEgress.size > 0);
  // Devices deleted and made again with the same name and ifindex since the last pass: the kernel reported the
  // deletion after the last pass's read (device-identity.ts). Their attachments, checks and facts are the old
  // device's.
  const linkEnds: string[] = [];
  for (const l of state.links.values()) linkEnds.push(l.a, l.b);
  /** Those that cannot be told from the device read before (reports of deletions lost): why. */
  const unsure = new Map<string, string>();
  const remade = remadeDevices(
    ctx,
    [...state.interfaceUsersView().keys(), ...state.egressBackends.keys(), ...linkEnds],
    facts,
    unsure,
  );
  // Facts kept under a name that names another device now are forgotten before anything decides on them.
  forgetReplacedDevices(ctx, facts, true, remade);
  // A neighbour table that could not be read (EMFILE under an open-files limit, ...): said once and its end.
  noteNeighbourRead(ctx, facts.neighbourUnread);
  await holdChangedNeighbours(ctx, facts, pace);
  // What follows keeps its progress in the state (a turn given to a change goes on from there): the facts above
  // are read again at each turn.
  factsRead();
  const now = (name: string) => {
    if (!facts.interfaces.has(name)) facts.interfaces.set(name, dp.lookupInterface(name));
    const ifindex = facts.interfaces.get(name)?.ifindex;
    if (ifindex === undefined && !missing.has(name)) {
      missing.add(name);
      // Missing as a device name, yet the kernel resolves it: an alternative name of another device.
      const dev = dp.deviceName?.(name);
      if (dev && dev.name !== name) {
        state.altnames.set(
          name,
          `interface ${name} is an alternative name of ${dev.name} (ifindex ${dev.ifindex}), not a device's name: ` +
            `rules and links name ${dev.name} to use that device`,
        );
      } else state.altnames.delete(name);
    } else if (ifindex !== undefined) state.altnames.delete(name);
    return ifindex;
  };
  /** Log once per transition of `key` to `line`; `log` gets whether it had a state before. */
  const transition = loggedTransition(state);
  const users = state.interfaceUsersView();
  /** Devices we had attached that are not in this namespace any more (deleted, or moved to another). */
  const vanished: { name: string; ifindex: number }[] = [];
  // Attachments die with their device: forget them so they are redone. A
  // device that is still there under another name (renamed) is not ours to
  // manage any more: rules and links name interfaces, so its old name is
  // missing and our program leaves the renamed device (nothing stays
  // attached that ListInterfaces does not show). Logged once per rename.
  for (const [name, a] of state.attached) {
    if (now(name) === a.ifindex && !remade.has(name)) continue;
    // Made again in place: our program went with the old device (said where it is attached again below).
    if (remade.has(name)) ctx.dp.forgetDevice?.(name);
    state.attached.delete(name);
    // What was checked or kept on that device is not this name's any more (gone, or another device has it).
    state.ingressChecked.delete(name);
    state.ingressSettings.delete(name);
    state.logged.delete(`if-settings/${name}`);
    state.keepMode.delete(name);
    const renamed = dp.nameOf?.(a.ifindex);
    if (renamed === undefined) vanished.push({ name, ifindex: a.ifindex });
    if (renamed === undefined || renamed === name || users.has(renamed)) continue;
    try {
      // By its ifindex: a name that is not UTF-8 (shown \xNN) cannot be looked up by its text.
      dp.detach(renamed, a.ifindex);
      ctx.log.warn(
        { ifname: name, renamed, ifindex: a.ifindex },
        `${name} was renamed to ${renamed}: our XDP program is detached from it (rules and links name ${name}, which is missing now)`,
      );
    } catch (e) {
      ctx.log.error(
        { ifname: name, renamed, ifindex: a.ifindex, err: e },
        `${name} was renamed to ${renamed}; detaching our XDP program from it failed: ${(e as Error).message}`,
      );
    }
  }

  // Moved to another network namespace: our program removed from it there, or where it was left, said.
  await followMovedInterfaces(ctx, users, vanished, (name) => now(name) !== undefined);
  // Egresses (no program of ours on them) that left: found by name and MAC in another namespace.
  const egresses = new Set<string>();
  for (const i of state.egressBackends.keys()) egresses.add(i);
  for (const l of state.links.values()) if (l.direction !== 'both') egresses.add(l.b);
  followMovedEgresses(ctx, egresses, (name) => now(name) !== undefined);
  const movedTo = movedEgresses(state);

  // 1. Our program on every interface that needs it, as the kernel reports it.
  const ingressProblems = new Map<string, string>();
  /** Ingress interfaces that exist but receive nothing now (down, or without carrier). */
  const ingressDown = new Map<string, string>();
  const native = new Set<string>();
  for (const name of users.keys()) {
    const ifindex = now(name);
    if (ifindex === undefined) {
      ingressProblems.set(name, missingText(state, name));
      continue;
    }
    const down = ingressDownProblem(name, facts.links.has(name) ? facts.links.get(name) : dp.linkState?.(name));
    if (down) ingressDown.set(name, down);
    const x = dp.xdpStatus(name);
    if (!x) continue;
    if (x.mode !== 'none' && !x.ours) {
      state.foreign.set(name, x.progId);
      if (x.unidentified) state.unidentified.set(name, x.unidentified);
      else state.unidentified.delete(name);
      state.attached.delete(name);
      const why = foreignWhy(name, x);
      ingressProblems.set(name, why);
      transition(`if/${name}`, `foreign|${x.progId}`, () =>
        ctx.log.warn(
          { ifname: name, progId: x.progId, users: [...users.get(name)!] },
          x.unidentified
            ? `${why} (if it is an earlier xdpctld's, detach it: ip link set dev ${name} ${x.mode === 'generic' ? 'xdpgeneric' : 'xdp'} off)`
            : why,
        ),
      );
      continue;
    }
    state.foreign.delete(name);
    state.unidentified.delete(name);
    if (x.mode !== 'none' && x.progId !== dp.progId) {
      // An earlier program of ours (an upgrade or migration whose switch failed here): it forwards with
      // the maps it was loaded with, which may no longer be the pinned ones. Swap in the program in use
      // (REPLACE); until that works the interface is a problem, not "runs our program".
      try {
        dp.attach(name, ctx.mode);
        ctx.log.warn(
          { ifname: name, old: x.progId, progId: dp.progId },
          `${name} ran an earlier program of this datapath (id ${x.progId}): replaced by the one in use`,
        );
      } catch (e) {
        const why = `${name} runs an earlier program of this datapath (id ${x.progId}) and replacing it failed: ${(e as Error).message}`;
        ingressProblems.set(name, why);
        transition(`if/${name}`, `old|${x.progId}|${(e as Error).message}`, () => ctx.log.error({ ifname: name }, why));
        continue;
      }
    }
    if (x.mode === 'none') {
      // Someone detached it (ip link set dev X xdp off), a foreign program
      // left, or the interface is new or back: put ours there.
      const wasForeign = state.logged.get(`if/${name}`)?.startsWith('foreign|');
      // Made again in place after this pass's first read of it (the device read again now: every deletion the
      // kernel reported before the read that found no program is known then), or cannot be told.
      let since = state.attached.has(name) && !remade.has(name) ? remadeSinceRead(ctx, name, ifindex) : undefined;
      if (!since?.remade && unsure.has(name)) since = { unknown: unsure.get(name) };
      if (since?.remade) {
        remade.set(name, since.remade);
        ctx.dp.forgetDevice?.(name);
        state.attached.delete(name);
      }
      // Same ifindex as when we attached (or last saw ours there), and this daemon did not detach it (its own
      // detaches forget the attachment first): the mode ours ran in then.
      const detached = state.attached.has(name);
      const lastMode = state.attached.get(name)?.mode;
      try {
        const st = dp.attach(name, ctx.mode);
        state.attached.set(name, { ifindex, users: new Set(users.get(name)), mode: st.mode });
        state.ingressChecked.set(name, ctx.mono()); // the attach set them
        // Native from now on: its rules' backends are checked for native redirects below, as for one attached before.
        if (st.mode === 'native') native.add(name);
        if (detached && since?.unknown) {
          // Detached by another tool or a device made again in place: not told apart, so not counted as a fight.
          ctx.log.warn(
            { ifname: name, found: 'none', was: lastMode, mode: st.mode, unknown: since.unknown },
            reattachedText(name, lastMode, st.mode, since.unknown),
          );
        } else if (detached) {
          // Found detached (not by this daemon) and attached again: a repair (a fight when it keeps happening).
          state.fights.repaired({ key: `xdp|${ifindex}`, what: `our XDP program on ${name}`, interfaces: [name] }, () =>
            ctx.log.warn(
              { ifname: name, found: 'none', was: lastMode, mode: st.mode },
              reattachedText(name, lastMode, st.mode),
            ),
          );
        } else if (remade.has(name)) {
          ctx.log.warn(
            { ifname: name, ifindex, mode: st.mode, remade: remade.get(name) },
            `${remadeText(name, ifindex, remade.get(name)!)}: our XDP program went with the old one; attached to ` +
              `this one in ${st.mode} mode`,
          );
        } else {
          ctx.log.info(
            { ifname: name, ifindex, mode: st.mode },
            wasForeign
              ? `the other XDP program left ${name}: ours is attached`
              : `${name} is there (ifindex ${ifindex}): our XDP program is attached`,
          );
        }
        transition(`if/${name}`, 'ok', () => undefined);
      } catch (e) {
        const why = `our XDP program is not attached to ${name}, and attaching it failed: ${(e as Error).message}`;
        ingressProblems.set(name, why);
        transition(`if/${name}`, `detached|${(e as Error).message}`, () => ctx.log.error({ ifname: name }, why));
      }
      continue;
    }
    const a = state.attached.get(name);
    if (a?.mode && a.mode !== x.mode) {
      // Our program, attached in another mode than this daemon attached it or last saw it in (another tool's
      // `ip link set dev X xdp off; ip link set dev X xdpgeneric pinned PIN/progs/xdpctl_main`): said once, left
      // as it is (a switch back detaches it for a moment); the device settings that mode needs are checked now.
      ctx.log.warn(
        { ifname: name, was: a.mode, mode: x.mode },
        `${name}: our XDP program runs in ${x.mode} mode now; it ran in ${a.mode} mode (not changed by this ` +
          `daemon): left in ${x.mode} mode`,
      );
      state.ingressChecked.delete(name);
    }
    if (a) a.mode = x.mode;
    else state.attached.set(name, { ifindex, users: new Set(users.get(name)), mode: x.mode });
    if (!a && remade.has(name)) {
      // Made again in place, and ours already on the new device (a pass that found it missing meanwhile wrote its
      // links again, which attached ours): said here, where no attach of this pass says it.
      ctx.log.warn(
        { ifname: name, ifindex, mode: x.mode, remade: remade.get(name) },
        `${remadeText(name, ifindex, remade.get(name)!)}: our XDP program went with the old one; ours runs on ` +
          `this one in ${x.mode} mode`,
      );
    }
    if (x.mode === 'native') native.add(name);
    transition(`if/${name}`, 'ok', (before) => {
      if (before) ctx.log.info({ ifname: name }, `${name} runs our XDP program again`);
    });
    await checkIngressSettings(ctx, name, x.mode, transition);
  }
  for (const name of state.ingressChecked.keys()) {
    if (users.has(name) && state.attached.has(name)) continue;
    state.ingressChecked.delete(name);
    state.ingressSettings.delete(name);
    state.logged.delete(`if-settings/${name}`);
  }
  // 1b. The unicast MACs other than its own that each rule ingress running our program takes as this host's (a
  // macvlan's on it, a VRRP virtual MAC, its bridge's), read from the kernel at every pass (and at once on a
  // link or neighbour event): frames to them are matched; what cannot be known is said by the adapter in the
  // interface's warnings (xdpStatus).
  if (dp.syncIngressMacs) {
    const macIngresses = new Map<string, number>();
    for (const [name, a] of state.attached) if (state.ifaceRules.get(name)?.size) macIngresses.set(name, a.ifindex);
    try {
      dp.syncIngressMacs(macIngresses);
    } catch (e) {
      transition('ingress-macs', (e as Error).message, () =>
        ctx.log.error({ err: e }, `reading the MACs the ingresses take as this host's failed: ${(e as Error).message}`),
      );
    }
  }

  // 2. Rules whose interfaces moved or came back, whose backends changed
  // (able to receive, MAC), or that the datapath refused and are due again.
  // Native redirects into a veth are dropped unless its peer has NAPI: check
  // (and, with --fix-veth-peers, repair) each such egress once per pass
  // (a passed check is trusted for the adapter's TTL).
  // The rules on native-mode ingresses, until every egress is checked (the first few rules, usually: not
  // every rule at every pass).
  /**
   * Check one backend egress into the facts. One that went away during its check (deleted, renamed) is said as
   * missing, as the next pass will find it, not "could not be checked": before the rules are checked (`missing`),
   * by the interface facts; after they are planned, by its verdict (not ok, "egress X does not exist": the
   * backend stays out of the table), the facts the plan was made from being left as they were.
   */
  const inspectEgress = async (name: string, missing: boolean): Promise<void> => {
    const r = await inspectTarget(dp, state.redirectVerdicts, name, ctx.fixVethPeers, (n) => dp.lookupInterface(n));
    if (r.gone && missing) facts.interfaces.set(name, undefined);
    else facts.napi.set(name, r);
  };
  let unchecked = 0;
  for (const i of state.egressBackends.keys()) if (!facts.napi.has(i) && facts.interfaces.get(i)) unchecked++;
  for (const ingress of native) {
    if (unchecked === 0) break;
    for (const name of state.ifaceRules.get(ingress) ?? []) {
      if (unchecked === 0) break;
      if ((++n & 15) === 0) await pace();
      const r = state.rules.get(name);
      if (!r?.ingressInterfaces.includes(ingress)) continue;
      for (const b of r.backends) {
        if (facts.napi.has(b.interface) || !facts.interfaces.get(b.interface)) continue;
        unchecked--;
        await inspectEgress(b.interface, true);
      }
    }
  }
  // Egresses whose peer cannot be inspected: judged by their backends' redirect counters (egress-watch.ts).
  judgeUnverifiedEgresses(ctx, facts.napi, transition);
  // Static MACs against what the host shows (static-mac.ts): contradicted ones leave their tables.
  const unverifiedMacs = await judgeStaticMacs(ctx, facts, transition, pace);
  // Forwarding loops the host made since the rules were accepted: the backends that close them leave their tables.
  judgeHostLoops(ctx, facts, transition);
  facts.hostLoops = state.hostLoops; // the kernel check below plans with them, as the re-applies do
  facts.macConflicts = state.macConflicts; // and with the contradicted static MACs (compared as out, not skipped)
  const t = ctx.mono();
  const ops: RuleOp[] = [];
  /** Why each rule in `ops` is re-applied (the first change found), for the log. */
  const why = new Map<string, string>();
  const gone: string[] = [];
  let moved = false;
  /**
   * What the interfaces that moved or appeared are, against the rule's last write (for the log): "X appeared
   * (ifindex N; missing when the rule was last written)", "X has a new ifindex (a -> b)".
   */
  const movedWhy: string[] = [];
  const check = (idx: number, i: string) => {
    const cur = now(i);
    if (cur === undefined) gone.push(i);
    else if (cur !== idx) {
      moved = true;
      movedWhy.push(
        idx < 0
          ? `${i} appeared (ifindex ${cur}; missing when the rule was last written)`
          : `${i} has a new ifindex (${idx} -> ${cur})`,
      );
    }
  };
  /** Rules a start did not write (an interface missing then), written by this pass: what, against what the start found. */
  const sinceStart = new Map<string, string>();
  const sinceStartText = (ifindexes: ReadonlyMap<string, number>): string => {
    const missing: string[] = [];
    const same: string[] = [];
    const parts: string[] = [];
    for (const [i, idx] of ifindexes) {
      const cur = now(i);
      if (idx < 0) {
        missing.push(i);
        if (cur !== undefined) parts.push(`${i} appeared (ifindex ${cur})`);
      } else if (cur === idx) same.push(`${i} (ifindex ${idx})`);
      else if (cur === undefined) parts.push(`${i} (ifindex ${idx} at start) missing now`);
      else parts.push(`${i} has a new ifindex since the start (${idx} -> ${cur})`);
    }
    if (same.length) parts.unshift(`${same.join(', ')} as found at start`);
    const still = missing.filter((i) => now(i) === undefined);
    if (still.length) parts.push(`${still.join(', ')} still missing`);
    return (
      `waiting since the start for ${missing.join(', ')} (missing at start): written with the interfaces there ` +
      `now: ${parts.join('; ')}`
    );
  };
  const mtuOf = (i: string) => facts.links.get(i)?.mtu;
  // An egress's own MAC is the source MAC of every frame redirected to it (written into each backend
  // entry): one whose MAC changed since the last pass (ip link set dev X address ...) has its backends
  // rewritten. Logged once per change.
  const macMoved = new Map<string, string>();
  for (const [iface, info] of facts.interfaces) {
    if (!info) continue;
    const was = state.egressMacs.get(iface);
    if (was !== undefined && was.toLowerCase() !== info.mac.toLowerCase()) macMoved.set(iface, was);
  }
  // Kept in the state until the pass completes: a rule judged in a turn given to a change is recorded too.
  const changed = state.passChanged;
  /** Rules re-applied because the datapath refused them before (FAILED, retry period over): their status message then. */
  const retried = new Map<string, string>();
  // Which rules to look at: what changed since the last pass, not every rule (with 10 000 rules, every rule's
  // check and judgement at every pass was most of a pass). Every RULE_SWEEP_MS all of them, from scratch.
  if (t - state.ruleSweptAt >= RULE_SWEEP_MS || t < state.ruleSweptAt) {
    for (const name of state.ruleKernel.keys()) state.touchRule(name);
    state.ruleSweptAt = t;
  }
  touchChangedInterfaces(ctx, facts, movedTo, ingressProblems, ingressDown);
  /** Check one rule; whether it is to be re-applied. */
  const checkRule = (name: string): boolean => {
    const k = state.ruleKernel.get(name);
    const rule = state.rules.get(name);
    if (!k || !rule) return false;
    // Its backends' MACs come from a neighbour table this pass could not read: nothing is known against what
    // the datapath has, so it stays as written (judged "cannot be verified": rule-status unreadNeighbourStatus).
    if (facts.neighbourUnread !== undefined && state.maclessRules.has(name)) return false;
    const retry = state.failed.get(name);
    if (retry !== undefined) {
      if (retry <= t && [...rule.ingressInterfaces, ...rule.backends.map((b) => b.interface)].every((i) => now(i))) {
        ops.push({ name, next: specOf(rule), lenient: true });
        retried.set(name, k.status.message);
        return true;
      }
      return false;
    }
    gone.length = 0;
    moved = false;
    movedWhy.length = 0;
    k.ifindexes.forEach(check);
    const written = k.written ?? k.status;
    // Backends in the table whose egress MTU is below an ingress's (MTUs change: the interface's facts).
    const mtu = mtuWarnings(rule.ingressInterfaces, written.backends, mtuOf, (i) => facts.peers.get(i));
    const warned = written.warnings;
    if (gone.length) {
      const w = [missingInterfacesWarning(gone), ...mtu];
      if (warned.length !== w.length || warned.some((x, i) => x !== w[i])) written.warnings = w;
    } else if (mtu.length) {
      if (warned.length !== mtu.length || warned.some((w, i) => w !== mtu[i])) written.warnings = [...mtu];
    } else if (warned.length) written.warnings = [];
    if (written.warnings !== warned) state.judgeDirty.add(name); // its status is judged from them
    let changed = moved;
    if (!changed) {
      // Backends: does the table still hold exactly those that can receive, with today's MAC?
      written.backends.forEach((b, i) => {
        const spec = rule.backends[i];
        if (!spec) return;
        const keys = backendKeys(spec);
        const nkey = keys.neighbour;
        const neighbour = spec.mac === '' ? facts.neighbours.get(nkey) : undefined;
        // A missing entry (flushed with a bounced egress, expired; not failed) is no evidence against the MAC
        // the datapath forwards with: kept (said so) while the probe below resolves it (Facts.keptMacs). Only on
        // the device it forwards to: a name that names another device now has no MAC of its own yet.
        const kept =
          spec.mac === '' &&
          !neighbour &&
          b.receiving &&
          b.mac &&
          k.ifindexes.get(spec.interface) === facts.interfaces.get(spec.interface)?.ifindex &&
          dp.neighbourMissing?.(spec.ip, spec.interface)
            ? b.mac
            : undefined;
        const mac = spec.mac === '' ? (neighbour ?? kept ?? '') : b.mac;
        const resolved = mac !== '';
        if (spec.mac === '' && facts.neighbours.has(nkey)) {
          // The neighbour table is the MAC's source: resolve it while it has none, and make the
          // kernel verify it while it has one (frames we redirect never pass the stack, which would).
          if (!neighbour) dp.probeNeighbour?.(spec.ip, spec.interface);
          else if (b.receiving && dp.verifyNeighbour?.(spec.ip, spec.interface, true))
            state.reconcilerEvents.neighbour_probes++;
          if (neighbour && kept === undefined) state.logged.delete(`neigh-kept/${nkey}`); // a later kept MAC is said again
        }
        if (changed) return;
        const exists = facts.interfaces.get(spec.interface) !== undefined;
        const napi = facts.napi.get(spec.interface);
        const egressWhy =
          egressProblem(spec.interface, facts.links.get(spec.interface)) ??
          (napi?.ok === false ? napi.detail : undefined);
        const conflict =
          (spec.mac !== '' ? state.macConflicts.get(keys.staticMac) : undefined) ??
          (state.hostLoops.size ? state.hostLoops.get(loopBackendKey(name, spec)) : undefined);
        const egress = egressWhy ?? conflict;
        const receiving = resolved && exists && !egress;
        if (receiving !== b.receiving) {
          changed = true;
          // A neighbour entry that failed (its MAC stopped answering the kernel's probes) says so.
          // Not when the egress is gone, down or cannot take frames: the kernel flushed the entry with it.
          const was = spec.mac === '' && !resolved && exists && !egress ? state.neighbourMacs.get(nkey) : undefined;
          why.set(
            name,
            `backend ${spec.ip} on ${spec.interface} ${receiving ? 'can receive again' : 'cannot receive'}` +
              (was ? `: its neighbour entry (MAC ${was}) failed; resolving it again` : ''),
          );
        } else if (resolved && mac.toLowerCase() !== b.mac.toLowerCase()) {
          changed = true;
          why.set(name, `backend ${spec.ip} on ${spec.interface}: MAC ${b.mac || 'unresolved'} -> ${mac}`);
        } else if (neighbour && b.receiving && b.message === keptMacWhy(spec.ip, spec.interface, b.mac)) {
          // Kept while its entry was missing, resolved again with the same MAC: no longer "not confirmed".
          changed = true;
          why.set(name, `backend ${spec.ip} on ${spec.interface}: its neighbour entry is back (MAC ${mac})`);
        } else if (receiving && macMoved.has(spec.interface)) {
          changed = true;
          why.set(
            name,
            `egress ${spec.interface} has a new MAC (${macMoved.get(spec.interface)} -> ` +
              `${facts.interfaces.get(spec.interface)!.mac}): the source MAC of its backends' frames`,
          );
        }
        // Still out of the table, for another reason now (down -> renamed away, no carrier -> no NAPI): the
        // status says today's reason, as a plan would give it (plan-rules.ts).
        else if (!receiving) {
          const today = exists
            ? backendStatus({
                ip: spec.ip,
                interface: spec.interface,
                givenMac: spec.mac,
                mac,
                resolved,
                egress: egressWhy,
                conflict,
              })
            : absentBackendStatus(spec, movedTo.get(spec.interface));
          if (today.message !== b.message) {
            changed = true;
            why.set(name, `backend ${spec.ip} on ${spec.interface}: ${today.message}`);
          }
        }
        if (receiving && spec.mac === '' && !state.neighbourMacs.has(nkey)) state.neighbourMacs.set(nkey, mac);
      });
    }
    if (k.waitingSinceStart) {
      // Not written at start: written now, said against what the start found (not as a change of the host).
      changed = true;
      sinceStart.set(name, sinceStartText(k.ifindexes));
    } else if (changed && moved) why.set(name, `interface ${movedWhy.join(', ')}`);
    if (changed) ops.push({ name, next: specOf(rule), lenient: true });
    return changed;
  };
  // The rules the datapath refused (due for a retry or not), those touched since they were last checked (kept
  // until checked: a pass that gives its turn to a change leaves the rest to the next one; one found to be
  // re-applied stays until it is written), and those with a backend given without a MAC (its neighbour entry
  // is probed at every pass, and read from the table at every pass).
  for (const name of state.failed.keys()) {
    if ((++n & 15) === 0) await pace();
    checkRule(name);
  }
  // Those with a backend given without a MAC: once per pass (visited here or below), gone on with where an
  // earlier turn of this pass stopped (a rule found to be re-applied is kept in `reapplyDirty` until written).
  const round = (state.maclessRound ??= new Set(state.maclessRules));
  for (const name of state.reapplyDirty) {
    if ((++n & 15) === 0) await pace();
    if (state.failed.has(name) || !checkRule(name)) state.reapplyDirty.delete(name);
    round.delete(name);
  }
  for (const name of round) {
    if ((++n & 15) === 0) await pace();
    round.delete(name);
    if (state.failed.has(name) || state.reapplyDirty.has(name)) continue;
    if (checkRule(name)) state.reapplyDirty.add(name);
  }
  // A backend egress that appeared since the facts were read (recreated during this pass) is
  // checked too: the plan reads interfaces again, and an egress it finds unchecked would fail
  // the write (precondition, rule FAILED for a retry period) instead of staying out of the table.
  for (const op of ops) {
    const rule = state.rules.get(op.name)!;
    if (!rule.ingressInterfaces.some((i) => native.has(i))) continue;
    for (const b of rule.backends) {
      if (facts.napi.has(b.interface) || !dp.lookupInterface(b.interface)) continue;
      await inspectEgress(b.interface, false);
    }
  }
  for (const [iface, was] of macMoved) {
    const to = facts.interfaces.get(iface)?.mac;
    if (to === undefined) continue; // gone since (a check found it missing): said as missing, not as a new MAC
    const rules = ops.filter((o) => state.rules.get(o.name)?.backends.some((b) => b.interface === iface));
    if (rules.length) state.reconcilerEvents.egress_mac_changes++;
    ctx.log.info(
      { interface: iface, from: was, to, rules: rules.map((o) => o.name) },
      rules.length
        ? `${iface} has a new MAC, ${was} -> ${to}: the backend entries behind it are rewritten with it as the source MAC`
        : `${iface} has a new MAC, ${was} -> ${to}`,
    );
  }
  for (const [iface, info] of facts.interfaces) if (info) state.egressMacs.set(iface, info.mac);
  if (ops.length) {
    // Only what was observed: rules re-applied for a change seen on the host say which; a retry of a
    // rule the datapath refused is not a host change (its failure was logged once, by applyEach; a retry
    // that fails the same way logs nothing more, one that succeeds says so below).
    const hostChanged = ops.filter((o) => !retried.has(o.name) && !sinceStart.has(o.name));
    const fromStart = ops.filter((o) => sinceStart.has(o.name));
    if (fromStart.length) {
      ctx.log.info(
        {
          rules: fromStart.map((o) => o.name),
          changes: Object.fromEntries(fromStart.map((o) => [o.name, sinceStart.get(o.name)])),
        },
        'rules waiting since the start for missing interfaces: written with the interfaces there now',
      );
    }
    if (hostChanged.length) {
      const fields = {
        rules: hostChanged.map((o) => o.name),
        changes: Object.fromEntries(hostChanged.map((o) => [o.name, why.get(o.name)])),
      };
      // One subject per set of rules: a flapping egress re-applies the same ones at every pass.
      state.logDamper.line(
        `reapply/${fields.rules.join(',')}`,
        t,
        () => ctx.log.info(fields, 'the host changed: re-applying rules'),
        (n, ms) =>
          ctx.log.info(
            { ...fields, notLogged: n, ms },
            `the host changed: rules re-applied ${n} more times in ${Math.round(ms / 1000)} s, not logged one by ` +
              'one (flapping); the last of them is this one',
          ),
      );
    }
    if (retried.size) ctx.log.debug({ rules: [...retried.keys()] }, 'retrying rules the datapath refused before');
    await applyEach(ctx, tx, ops, facts.napi);
    const served = retried.size ? activeLinkSources(ctx.dp, state) : new Map<string, LinkSpec>();
    for (const [name, was] of retried) {
      if (state.failed.has(name) || !state.rules.has(name)) continue;
      const k = state.ruleKernel.get(name);
      // As a read serves it (a link shadowing its ingresses taken in).
      const st = k && shadowedStatus(state.rules.get(name)!, k.status, served);
      // This line is the rule's transition (the report below logs one only if the pass changes it again).
      if (st) state.logged.set(`rule/${name}`, `${st.state}|${st.message}`);
      ctx.log.info(
        { rule: name, was, state: st?.state },
        `rule ${name} applied on retry (it was FAILED: ${was}); now ${(st?.state ?? 'unknown').toUpperCase()}: ${st?.message ?? ''}`,
      );
    }
    // What was written: a backend given without MAC that now receives with another MAC than before
    // (the neighbour table changed, or its entry failed and was resolved again) is logged once.
    for (const op of ops) {
      const rule = state.rules.get(op.name);
      const k = state.ruleKernel.get(op.name);
      if (!rule || !k) continue;
      const written = (k.written ?? k.status).backends;
      rule.backends.forEach((spec, i) => {
        const b = written[i];
        if (spec.mac !== '' || !b?.receiving || !b.mac) return;
        const key = neighbourKey(spec.ip, spec.interface);
        const was = state.neighbourMacs.get(key);
        state.neighbourMacs.set(key, b.mac);
        if (was === undefined || was.toLowerCase() === b.mac.toLowerCase()) return;
        state.reconcilerEvents.neighbour_mac_changes++;
        ctx.log.info(
          { rule: op.name, backend: spec.ip, interface: spec.interface, from: was, to: b.mac },
          `backend ${spec.ip} on ${spec.interface} has a new MAC, ${was} -> ${b.mac} (neighbour table): rewritten`,
        );
      });
    }
  }

  // The rules' kernel entries as another tool may have left them (bpftool map update): compared with
  // the desired state every second, or less often when that costs more than 5% of a CPU (kernel-check.ts); what differs rewritten and logged once (kernel-check.ts).
  await checkKernel(ctx, facts, new Set(ops.map((o) => o.name)), pace, transition);

  // Link sets whose forwarding the host made into a loop since they were accepted: kept out of the devmap.
  const loopChanged = judgeLinkLoops(ctx, transition);

  // Links: every wanted direction must be in the kernel's devmap, from today's ingress ifindex to today's
  // egress ifindex, and nothing else there (the kernel drops an entry whose egress is deleted; an entry
  // keyed by a deleted ingress stays). A re-apply that failed is not retried until something changes.
  const links = [...state.links.values()];
  const kernelLinks = new Map(dp.listLinks());
  // A link whose interface is missing waits (reported as missing); the others are written without it.
  const wanted = new Map<number, number>();
  for (const l of links) {
    const dirs = directions(l).map(([from, to]) => [now(from), now(to)] as const);
    if (dirs.some(([f, t]) => f === undefined || t === undefined)) continue;
    if (state.linkLoops.has(linkKey(l))) continue; // kept out of the devmap while the host makes it loop
    for (const [f, t] of dirs) wanted.set(f!, t!);
  }
  // Entries no link holds (put there by another tool): frames from that ingress were redirected.
  const foreignDirs = [...kernelLinks].filter(([f]) => !wanted.has(f) && !state.linkDirs.has(f));
  for (const [f, to] of foreignDirs) {
    try {
      dp.disconnect(f);
      state.reconcilerEvents.kernel_repairs++;
      // No link holds it: a datapath problem only (no link's direction to warn).
      const subject = { key: `link|${f}`, what: `the link entry from ifindex ${f} (map xc_links)`, interfaces: [] };
      state.fights.repaired(subject, () =>
        ctx.log.warn(
          { ifindex: f, to },
          `kernel entries differed from the desired state (this daemon wrote no such entry): link direction from ifindex ${f} ` +
            `(map xc_links): kernel egress ifindex ${to}, desired absent (no link holds it): deleted`,
        ),
      );
    } catch (e) {
      transition(`xc-foreign/${f}`, (e as Error).message, () =>
        ctx.log.error(
          { err: e, ifindex: f },
          `the link direction from ifindex ${f} (map xc_links) is held by no link and could not be deleted`,
        ),
      );
    }
  }
  // The directions the devmap holds as wanted now: a later pass that finds one of them changed found it undone.
  for (const [f, t] of wanted) if (kernelLinks.get(f) === t) state.linkSeen.set(f, t);
  for (const f of state.linkSeen.keys()) if (!wanted.has(f)) state.linkSeen.delete(f);
  const stale =
    [...wanted].some(([f, t]) => kernelLinks.get(f) !== t || state.linkDirs.get(f) === undefined) ||
    [...state.linkDirs.keys()].some((f) => !wanted.has(f));
  const attempt = JSON.stringify([...wanted]);
  if (stale && attempt !== state.linkReapplyFailed) {
    // What the devmap holds against what the links want, by direction (another tool's change, or an
    // interface that moved): logged once per re-apply.
    const differed: string[] = [];
    for (const [f, t] of wanted) {
      const k = kernelLinks.get(f);
      if (k !== t && !(k === undefined && loopChanged.has(f)))
        differed.push(
          `link direction ${dp.nameOf?.(f) ?? f} -> ${dp.nameOf?.(t) ?? t} (map xc_links, ifindex ${f}): ` +
            `kernel ${k === undefined ? 'absent' : `egress ifindex ${k}`}, desired egress ifindex ${t}`,
        );
    }
    for (const f of state.linkDirs.keys()) {
      if (!wanted.has(f) && kernelLinks.has(f) && !loopChanged.has(f))
        differed.push(
          `link direction from ifindex ${f} (map xc_links): kernel egress ifindex ${kernelLinks.get(f)}, desired absent`,
        );
    }
    // Undone (a repair, fights.ts): a direction the devmap held as wanted at an earlier pass (same ingress and
    // egress ifindex) that it holds no more; one whose interface was made again (another ifindex) is no undo.
    // Each undone direction is a subject of its own, owned by its link direction (warned while a fight lasts).
    // Nor is one whose egress was deleted and made again in place (the same ifindex): the kernel drops the entries
    // of a deleted egress; found by this pass's first read of it or by a read after the devmap's.
    const remadeEnd = (f: number, t: number) =>
      links.some((l) =>
        directions(l).some(
          ([from, to]) =>
            now(from) === f &&
            now(to) === t &&
            [from, to].some((n) => remade.has(n) || deletedSinceRead(ctx, n, now(n)!)),
        ),
      );
    const undone = [...wanted].filter(
      ([f, t]) => kernelLinks.get(f) !== t && state.linkSeen.get(f) === t && !remadeEnd(f, t),
    );
    const line = () =>
      ctx.log.warn({ differed }, 'link entries in the kernel differ from the desired state: re-applying links');
    if (differed.length) {
      state.reconcilerEvents.kernel_repairs += differed.length;
      if (undone.length) {
        let say = false;
        for (const [f, t] of undone) {
          const from = state.linkDirs.get(f)?.from ?? dp.nameOf?.(f);
          const to = state.linkDirs.get(f)?.to ?? dp.nameOf?.(t);
          const subject = {
            key: `link|${f}`,
            what: `the link entry ${from ?? `ifindex ${f}`} -> ${to ?? `ifindex ${t}`} (map xc_links, ifindex ${f})`,
            interfaces: [],
            ...(from ? { links: [from] } : {}),
          };
          state.fights.repaired(subject, () => {
            say = true;
          });
        }
        if (say) line();
      } else line();
    } else if (!loopChanged.size) ctx.log.info({}, 'interfaces changed: re-applying links');
    try {
      await tx.applyLinkSet(new Map(state.links), 'links', true);
      state.linkReapplyFailed = undefined;
      state.linkReapplyError = undefined;
    } catch (e) {
      state.linkReapplyFailed = attempt;
      state.linkReapplyError = (e as Error).message;
      transition('links', `failed|${(e as Error).message}`, () =>
        ctx.log.error({ err: e }, `links not re-applied: ${(e as Error).message}`),
      );
    }
  } else if (!stale) {
    state.linkReapplyFailed = undefined;
    state.linkReapplyError = undefined;
  }
  checkInterfaceFlags(ctx, wanted, transition);
  watchLinkCounters(ctx, wanted);

  // Each link direction's egress must transmit what the link gives it: up, with carrier (a veth whose
  // peer is up), and, from a native-mode ingress, able to take native XDP redirects (checked, and with
  // --fix-veth-peers repaired, as a backend's egress). A direction that cannot is not "forwarding"
  // (link.proto LinkStatus.a_to_b_active), whatever the devmap holds.
  const linkEgress = new Map<string, string>();
  const linkWarnings = new Map<string, string>();
  const linkUnverified = new Map<string, string>();
  const linkWatched = new Set<string>();
  const linkPeer = new Map<string, string>();
  /** The link directions whose ends both exist now (a direction gone or missing is said by its own lines). */
  const linkDirs = new Set<string>();
  for (const l of links) {
    for (const [from, to] of directions(l)) {
      if (now(from) === undefined || now(to) === undefined) continue; // reported as missing
      // An ingress that is down or without carrier receives nothing to cross-connect.
      // So does one without our program (attaching it failed); a foreign program is reported by the listing.
      const unattached = state.foreign.has(from) ? undefined : ingressProblems.get(from);
      const loopWhy = state.linkLoops.get(linkKey(l)); // said once for the link (judgeLinkLoops), not per direction
      let why = loopWhy ?? ingressDown.get(from) ?? unattached ?? egressProblem(to, dp.linkState?.(to));
      if (!why && native.has(from)) {
        let r = facts.napi.get(to);
        if (!r) {
          r = await inspectTarget(dp, state.redirectVerdicts, to, ctx.fixVethPeers);
          facts.napi.set(to, r);
        }
        if (!r.ok) why = r.detail;
        else if (r.unverified) {
          // A veth whose peer cannot be inspected: judged by this direction's counters (egress-watch.ts).
          const dir = `${from}>${to}`;
          const fromIdx = now(from)!;
          linkWatched.add(dir);
          // The link's own counters do not see a frame dropped at the egress's flush (a devmap redirect's
          // egress is not known to the program): the veth's counters do (taken by its peer, or dropped).
          const x = await dp.xdpTransmitStats?.(to);
          const counters = x && new Map([[fromIdx, { packets: x.taken, redirectErrors: x.dropped }]]);
          const w = counters
            ? stepEgress(
                state.linkWatch.get(dir),
                r.key ?? '',
                [fromIdx],
                counters,
                t,
                to,
                false,
                `tx_dropped of ${to}`,
              )
            : state.linkWatch.get(dir);
          if (w) state.linkWatch.set(dir, w);
          if (w?.verdict === 'failing') why = w.why;
          else if (w?.verdict !== 'verified')
            linkUnverified.set(dir, `${from} -> ${to}: cannot be verified: ${r.detail}`);
          transition(`link-verify/${dir}`, w?.verdict ?? 'unknown', (before) => {
            if (w?.verdict === 'verified') {
              ctx.log.info({ from, to }, `link ${from} -> ${to}: frames are taken by the kernel: verified by traffic`);
            } else if (w?.verdict !== 'failing' && !before) {
              ctx.log.info(
                { from, to },
                isUnchecked(r)
                  ? `link ${from} -> ${to}: cannot be verified (${r!.detail}): left as it is in the datapath, not ` +
                      'verified until a check can be made or traffic shows it forwards (redirect counters)'
                  : `link ${from} -> ${to}: the veth peer of ${to} cannot be inspected and the kernel announces ` +
                      'ndo-xmit: not verified until traffic shows it forwards (redirect counters)',
              );
            }
          });
        }
      }
      const key = `link/${from}>${to}`;
      linkDirs.add(`${from}>${to}`);
      const peer = linkPeerNote(dp, from, to);
      if (peer) linkPeer.set(`${from}>${to}`, peer);
      if (why) linkEgress.set(`${from}>${to}`, why);
      else {
        const w = linkDirectionWarning(ctx, from, to);
        if (w) linkWarnings.set(`${from}>${to}`, w);
      }
      // "Forwarding again" only when it is known: a direction that cannot be verified (its egress's veth peer
      // cannot be inspected) is not said to forward when the reason it did not goes away (a peer down and up
      // again may leave it dropping every frame); that is said once traffic verifies it.
      const was = state.logged.get(key);
      const wasOut = was !== undefined && (was.startsWith('out|') || was === 'unverified|out');
      const next = why
        ? `out|${why}`
        : linkUnverified.has(`${from}>${to}`)
          ? wasOut
            ? 'unverified|out'
            : 'unverified'
          : 'ok';
      transition(key, next, () => {
        if (why !== undefined && why === loopWhy) return;
        if (!why && was?.startsWith('out|') && isLinkLoopText(was.slice(4))) return; // the loop's end is said once
        if (why) ctx.log.warn({ from, to, reason: why }, `link ${from} -> ${to} is not forwarding: ${why}`);
        else if (next === 'unverified|out' && was?.startsWith('out|')) {
          ctx.log.info(
            { from, to },
            `link ${from} -> ${to} was not forwarding (${was.slice(4)}), which no longer holds; whether it ` +
              'forwards cannot be verified until frames are taken',
          );
        } else if (next === 'ok' && wasOut) ctx.log.info({ from, to }, `link ${from} -> ${to} is forwarding again`);
      });
    }
  }
  state.linkEgress = linkEgress;
  state.linkWarnings = linkWarnings;
  state.linkUnverified = linkUnverified;
  state.linkPeer = linkPeer;
  sayLinkPeers(ctx, linkPeer, linkDirs);
  for (const dir of state.linkWatch.keys()) {
    if (!linkWatched.has(dir)) {
      state.linkWatch.delete(dir);
      state.logged.delete(`link-verify/${dir}`);
    }
  }

  // Our program where no rule or link needs it (attached by hand, or left by an earlier run): taken into the
  // attachments and said once, as a start does, then detached below.
  const tScan = ctx.mono();
  if (tScan - state.strayLocalAt >= STRAY_LOCAL_SCAN_MS || tScan < state.strayLocalAt) {
    state.strayLocalAt = tScan;
    // A scan that cannot be made (the device list unreadable: EMFILE under an open-files limit) is said once
    // and its end once; the rest of the pass goes on (it was "resync failed" every other pass).
    let scanWhy: string | undefined;
    try {
      adoptStrayAttachments(ctx);
    } catch (e) {
      scanWhy = (e as Error).message;
    }
    transition('stray-scan', scanWhy ?? 'ok', (before) => {
      if (scanWhy) {
        ctx.log.warn(
          { reason: scanWhy },
          `looking for our XDP program on interfaces no rule or link uses failed: ${scanWhy}: cannot be verified ` +
            'until the device list can be read',
        );
      } else if (before) ctx.log.info({}, 'looking for our XDP program on interfaces no rule or link uses works again');
    });
  }
  // What we attached and no one uses any more, if a detach failed before (logged once per error).
  releaseUnusedInterfaces(ctx);

  // 3. Status as observed, each transition logged once.
  const problems: string[] = [...missing].sort().map((i) => missingText(state, i));
  if (state.kernelDrift) problems.push(state.kernelDrift);
  if (state.flagsDrift) problems.push(state.flagsDrift);
  if (state.linkReapplyError) {
    problems.push(`link entries differ from the desired state and could not be rewritten: ${state.linkReapplyError}`);
  }
  for (const [dir, why] of linkEgress) problems.push(`link ${dir.replace('>', ' -> ')} is not forwarding: ${why}`);
  for (const why of linkUnverified.values()) problems.push(`link ${why}`);
  for (const why of linkPeer.values()) problems.push(`link ${why}`);
  for (const [name, why] of state.ingressSettings) problems.push(`interface ${name}: ${why}`);
  for (const f of state.fights.current()) problems.push(f.text);
  for (const l of state.hostLoopList.values()) problems.push(hostLoopProblem(l));
  for (const why of linkWarnings.values()) if (isMtuWarning(why)) problems.push(`link ${why}`);
  for (const [name, progId] of state.foreign) {
    if (users.has(name)) {
      problems.push(`interface ${name}: ${otherProgram(progId, state.unidentified.get(name))} is attached`);
    }
  }
  // Backends in a table whose egress cannot be verified (egress-watch.ts, no traffic seen yet): their rules
  // say so (DEGRADED, not ACTIVE).
  const unverified = new Map<string, string>();
  for (const [iface, r] of facts.napi) if (r.ok && r.unverified) unverified.set(iface, r.detail ?? iface);
  // Backends given without a MAC whose neighbour entry was set by hand and its MAC has not answered an ARP
  // probe of ours: not confirmed (rule-status handSetNeighbourStatus), each said once. (A held one receives
  // with the kept MAC: heldNeighbourStatus.)
  const handSet = new Map<string, string>();
  // And those whose MAC is not the kernel's entry's but what ARP requests of ours found (or why none is known).
  const via = new Map<string, string>();
  // And what the host's routes say of them (an off-link backend's MAC is its gateway's).
  const route = new Map<string, string>();
  if (dp.neighbourHandSet || dp.neighbourVia || dp.neighbourRoute) {
    for (const name of state.maclessRules) {
      if ((++n & 255) === 0) await pace();
      const r = state.rules.get(name);
      if (!r) continue;
      for (const b of r.backends) {
        if (b.mac !== '') continue;
        const key = backendKeys(b).neighbour;
        const why = dp.neighbourVia?.(b.ip, b.interface);
        if (why) via.set(key, why);
        const hop = dp.neighbourRoute?.(b.ip, b.interface);
        if (hop) route.set(key, hop);
        if (!dp.neighbourHandSet || handSet.has(key) || state.neighbourHolds.has(key)) continue;
        const states = dp.neighbourHandSet(b.ip, b.interface);
        if (states) handSet.set(key, states);
      }
    }
  }
  // Backends given without a MAC whose entry's MAC no probe of ours has had answered yet (a new or changed
  // entry; one another tool wrote as REACHABLE): not "resolved" until the host answers (probed at once).
  const unanswered = await unansweredMacs(ctx, state.maclessRules, handSet, pace);
  for (const [key, states] of handSet) {
    const mac = facts.neighbours.get(key) ?? '';
    state.loggedHandSet.add(`neigh-handset/${key}`);
    transition(`neigh-handset/${key}`, `${states}|${mac}`, () => {
      const at = key.indexOf('@');
      ctx.log.info(
        { backend: key.slice(0, at), interface: key.slice(at + 1), mac, states },
        `backend ${key.slice(0, at)} on ${key.slice(at + 1)}: ${handSetWhy(key.slice(0, at), key.slice(at + 1), mac, states)}`,
      );
    });
  }
  // (Those keys only: a walk over every logged key, one per rule, was a walk over every rule at every pass.)
  for (const key of state.loggedHandSet) {
    if ((++n & 1023) === 0) await pace();
    if (state.logged.has(key) && handSet.has(key.slice('neigh-handset/'.length))) continue;
    state.logged.delete(key);
    state.loggedHandSet.delete(key);
  }
  // Backend egresses another XDP program occupies: what the backends send passes through it first.
  // (And what each has besides a program, for its interface row: Controller.interfaceView.)
  const egressOwn = new Map<string, string>();
  const foreignEgress = foreignEgresses(dp, facts.links.keys(), egressOwn);
  // Tap backend egresses whose tx_dropped rose lately: their reader does not read (tap-drops.ts).
  const tapDrops = observeTapDrops(ctx, facts.links.keys(), transition);
  // Backend egresses whose veth peer runs an XDP program not ours: what is redirected to them passes through it.
  const peerXdp = peerXdpPrograms(dp, facts.links.keys());
  const observation: RuleObservation = {
    ingressProblems,
    ingressDown,
    unverifiedEgress: unverified,
    unverifiedMacs,
    unanswered,
    holds: state.neighbourHolds,
    handSet,
    ingressSettings: state.ingressSettings,
    fights: state.fights.byInterface(),
    ruleFights: state.fights.byRule(),
    arpUnavailable: ctx.dp.arpUnavailable?.(),
    via,
    foreignEgress,
    peerXdp,
    route,
    tapDrops,
    neighbourUnread: facts.neighbourUnread,
    loopUnknown: state.hostLoopsUnknown,
  };
  // The rules whose judgement's inputs changed since the last one are judged again (the ingress interfaces'
  // facts and the static MACs' verdicts marked them already): the per-backend observations compared with the
  // last ones (few entries: backends with something to say), and the ARP sender's availability (all rules).
  const last = state.lastObservation;
  touchChangedKeys(last.unverifiedEgress, unverified, (iface) => touchInterfaceJudged(state, iface));
  touchChangedKeys(last.unanswered, unanswered, (key) => touchBackendJudged(state, key));
  touchChangedKeys(last.handSet, handSet, (key) => touchBackendJudged(state, key));
  touchChangedKeys(last.via, via, (key) => touchBackendJudged(state, key));
  touchChangedKeys(last.foreignEgress, foreignEgress, (iface) => touchInterfaceJudged(state, iface));
  touchChangedKeys(last.peerXdp, peerXdp, (iface) => touchInterfaceJudged(state, iface));
  touchChangedKeys(last.route, route, (key) => touchBackendJudged(state, key));
  touchChangedKeys(last.tapDrops, tapDrops, (iface) => touchInterfaceJudged(state, iface));
  touchChangedKeys(last.holds, state.neighbourHolds, (key) => touchBackendJudged(state, key));
  if (last.arpUnavailable !== observation.arpUnavailable)
    for (const name of state.ruleKernel.keys()) state.judgeDirty.add(name);
  if (last.neighbourUnread !== observation.neighbourUnread)
    for (const name of state.maclessRules) state.judgeDirty.add(name);
  state.lastObservation = {
    unverifiedEgress: unverified,
    unanswered,
    handSet,
    holds: new Map(state.neighbourHolds),
    via,
    foreignEgress,
    egressOwn,
    peerXdp,
    route,
    tapDrops,
    arpUnavailable: observation.arpUnavailable,
    neighbourUnread: observation.neighbourUnread,
  };
  // What a read serves (the links that shadow an ingress taken in), read once for the transitions below.
  const shadows = activeLinkSources(ctx.dp, state);
  // Judged, each once, and forgotten from the set (a pass that gives its turn to a change leaves the rest). Their
  // transitions are said together (rule-transitions.ts): one host event seen by many rules is a few lines, not one
  // a rule; also when the pass gives its turn half-way (what was judged is said).
  const said = ruleTransitions(ctx);
  try {
    for (const name of state.judgeDirty) {
      if ((++n & 15) === 0) await pace();
      state.judgeDirty.delete(name);
      const k = state.ruleKernel.get(name);
      const rule = state.rules.get(name);
      if (!k || !rule) continue;
      const was = k.status;
      judgeKept(k, rule, observation);
      if (k.status !== was) state.markStatus(name); // what is kept from its status reads it again (egress-notes.ts)
      // What the rule's conditions are made of, as observed by this pass: a change is recorded with its time
      // (Controller.observeRules records it too: a write's conditions are recorded with the write).
      if (!sameObserved(k.observed, k.status, k.ingressProblems, k.ingressDown)) {
        k.observed = observedOf(k.status, k.ingressProblems, k.ingressDown);
        changed.add(name);
      }
      said.add(name, shadowedStatus(rule, k.status, shadows));
    }
    // A link that starts or stops shadowing an ingress changes what is served for the rules there without
    // changing their own judgement: their transitions are logged here, from the served status.
    for (const name of shadowChanges(state, shadows)) {
      const k = state.ruleKernel.get(name);
      const rule = state.rules.get(name);
      if (k && rule) said.add(name, shadowedStatus(rule, k.status, shadows));
    }
  } finally {
    said.flush();
  }
  // The same for links.
  for (const [dir, w] of linkWarnings) {
    state.loggedLinkMtu.add(`link-mtu/${dir}`);
    transition(`link-mtu/${dir}`, w, () => ctx.log.warn({ link: dir.replace('>', ' -> ') }, `link ${w}`));
  }
  for (const key of state.loggedLinkMtu) {
    if ((++n & 1023) === 0) await pace();
    if (!state.logged.has(key)) state.loggedLinkMtu.delete(key);
    else if (!linkWarnings.has(key.slice('link-mtu/'.length))) {
      const dir = key.slice('link-mtu/'.length);
      const was = state.logged.get(key)!;
      state.loggedLinkMtu.delete(key);
      state.logged.delete(key);
      // Not forwarding now (its own line says why), or gone: nothing is said of frames fitting. A warning that
      // holds again once it forwards is said again.
      if (!linkDirs.has(dir) || linkEgress.has(dir)) continue;
      const at = dir.indexOf('>');
      const from = dir.slice(0, at);
      const to = dir.slice(at + 1);
      ctx.log.info({ link: `${from} -> ${to}`, was }, linkWarningGoneText(ctx, from, to, was));
    }
  }
  // Summaries of the subjects that flapped in a window that has ended (log-damper.ts).
  state.logDamper.flush(ctx.mono());
  state.maclessRound = undefined; // the next pass visits them all again
  const observed = [...changed];
  changed.clear();
  return { missing: [...missing].sort(), problems, changed: observed, interfaces: facts.interfaces };
}

/** The shadowing link of each ingress as the last pass saw it (ingress -> link key). */
const lastShadows = new WeakMap<CoreState, Map<string, string>>();

/** The rules on ingresses whose shadowing link changed since the last pass (one started or stopped). */
function shadowChanges(state: CoreState, shadows: ReadonlyMap<string, LinkSpec>): Set<string> {
  const before = lastShadows.get(state) ?? new Map<string, string>();
  const now = new Map([...shadows].map(([i, l]) => [i, linkKey(l)]));
  const rules = new Set<string>();
  const touch = (i: string) => state.ifaceRules.get(i)?.forEach((n) => rules.add(n));
  for (const [i, k] of now) if (before.get(i) !== k) touch(i);
  for (const i of before.keys()) if (!now.has(i)) touch(i);
  lastShadows.set(state, now);
  return rules;
}

/**
 * Rule transitions of one pass or one client's write that judged them (so that a state the host changes again
 * before the next pass is still said once), as a read serves them: each status given is the judged one with the
 * links that shadow its ingresses taken in (shadow.ts), never the judgement alone. Said at flush().
 */
function ruleTransitions(ctx: ExecContext): RuleTransitions {
  return new RuleTransitions({
    logged: ctx.state.logged,
    damper: ctx.state.logDamper,
    log: ctx.log,
    now: () => ctx.mono(),
  });
}

/**
 * One read of the tx_dropped of every tap among the backend egresses `names` (each once; Dataplane.tapTxDropped),
 * stepped into state.tapDrops (core/tap-drops.ts): egress name -> what was counted, for those whose count rose
 * within TAP_DROP_WINDOW_MS. Each start and end of such a spell is logged once. Taps no rule names any more are
 * forgotten.
 */
function observeTapDrops(
  ctx: ExecContext,
  names: Iterable<string>,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
): Map<string, string> {
  const { dp, state } = ctx;
  const out = new Map<string, string>();
  if (!dp.tapTxDropped) return out;
  const t = ctx.mono();
  const seen = new Set<string>();
  for (const name of names) {
    if (seen.has(name)) continue;
    seen.add(name);
    const dropped = dp.tapTxDropped(name);
    if (dropped === undefined) {
      state.tapDrops.delete(name);
      continue;
    }
    const w = stepTapDrops(state.tapDrops.get(name), dropped, t);
    state.tapDrops.set(name, w);
    const why = tapDropText(name, w, t);
    if (why) out.set(name, why);
    transition(`tap-drops/${name}`, why ? 'dropping' : 'ok', (before) => {
      if (why) ctx.log.warn({ egress: name, txDropped: String(dropped) }, `backend egress ${why}`);
      else if (before) {
        ctx.log.info(
          { egress: name, txDropped: String(dropped) },
          `backend egress tap ${name}: no frame dropped for ${TAP_DROP_WINDOW_MS / 1000} s: its reader reads again`,
        );
      }
    });
  }
  for (const name of state.tapDrops.keys()) {
    if (!seen.has(name)) {
      state.tapDrops.delete(name);
      state.logged.delete(`tap-drops/${name}`);
    }
  }
  return out;
}

/**
 * Backend egresses (of `names`, each once) with an XDP program not ours attached, tc filters, tcx programs or
 * nftables chains that may drop a frame on their ingress (Dataplane.ingressHooks), or a device stacked on them that
 * takes every frame arriving on them (a passthru macvlan: Dataplane.upperLinks, rule-status.ts takerParts): name ->
 * what, said (rule-status.ts egressHooksPhrase; the program as conditions.ts otherProgram says it). `own`, when
 * given, gets what the egress itself has besides the program (rule-status.ts egressOwnPhrase): what its interface
 * row says, from this same read.
 */
function foreignEgresses(
  dp: ExecContext['dp'],
  names: Iterable<string>,
  own?: Map<string, string>,
): Map<string, string> {
  const out = new Map<string, string>();
  const seen = new Set<string>();
  for (const name of names) {
    if (seen.has(name)) continue;
    seen.add(name);
    const x = dp.xdpStatus(name);
    const program =
      x && x.mode !== 'none' && !x.ours
        ? otherProgram(x.progId, x.unidentified, x.mode, x.otherDaemon, x.name)
        : undefined;
    const hooks = dp.ingressHooks?.(name);
    const takers = dp.upperLinks ? takerParts(dp.upperLinks(name)) : [];
    const phrase = egressHooksPhrase(name, program, hooks, takers);
    if (phrase) out.set(name, phrase);
    const has = own && egressOwnPhrase(name, hooks, takers);
    if (has) own!.set(name, has);
  }
  return out;
}

/** The egresses among `names` whose veth peer runs an XDP program not ours (Dataplane.vethPeerXdp): what to say. */
function peerXdpPrograms(dp: Pick<Dataplane, 'vethPeerXdp'>, names: Iterable<string>): Map<string, string> {
  const out = new Map<string, string>();
  if (!dp.vethPeerXdp) return out;
  for (const name of new Set(names)) {
    const p = dp.vethPeerXdp(name);
    if (p) out.set(name, peerXdpNote(p));
  }
  return out;
}

/**
 * What a link direction's egress `to`, a veth, has on its peer that may drop every frame the link redirects into it,
 * none of it ours (Dataplane.vethPeerXdp, read as for a backend's egress: another tool's XDP program, tc filters or
 * tcx programs on the peer's ingress): "from -> to: veth peer eth0 in netns n runs XDP program id 42 (name, native
 * mode): delivery past it cannot be verified" (rule-status.ts peerXdpNote); undefined when none is seen. The link's
 * counters count such a frame as forwarded: the kernel took it into the veth. Whether it gets past the peer is not
 * known here, so the direction is not said to forward for sure (link.proto LinkStatus: Active Unknown).
 *
 * The ingress `from`'s own veth peer is not read: what runs there sees a frame before it is sent into `from`, on
 * the sender's side of the veth; a frame it drops never reaches the link, and what the link counts and forwards is
 * exactly what arrived (its counters say so). That is the sender's business, not the link's.
 */
export function linkPeerNote(dp: Pick<Dataplane, 'vethPeerXdp'>, from: string, to: string): string | undefined {
  const note = peerXdpPrograms(dp, [to]).get(to);
  return note && `${from} -> ${to}: ${note}`;
}

/**
 * The log of what {@link linkPeerNote} found, each direction once as it appears (or changes) and once as it goes
 * while the direction is still there (a link removed, or an end missing, is said by its own lines).
 */
function sayLinkPeers(ctx: ExecContext, now: ReadonlyMap<string, string>, dirs: ReadonlySet<string>): void {
  const said = ctx.state.linkPeerSaid;
  for (const [dir, note] of now) {
    if (said.get(dir) === note) continue;
    said.set(dir, note);
    const at = dir.indexOf('>');
    ctx.log.warn({ from: dir.slice(0, at), to: dir.slice(at + 1), peer: note }, `link ${note}`);
  }
  for (const [dir, was] of said) {
    if (now.has(dir)) continue;
    said.delete(dir);
    if (!dirs.has(dir)) continue;
    const at = dir.indexOf('>');
    const from = dir.slice(0, at);
    const to = dir.slice(at + 1);
    ctx.log.info(
      { from, to, was },
      `link ${from} -> ${to}: nothing that may drop what the link redirects is seen on ${to}'s veth peer any more ` +
        `(it was: ${was.slice(`${from} -> ${to}: `.length)})`,
    );
  }
}

/** Why an ingress that another XDP program occupies receives nothing through ours (its problem line). */
function foreignWhy(name: string, x: XdpStatus): string {
  return `${otherProgram(x.progId, x.unidentified, x.mode, x.otherDaemon)} is attached to ${name}; it is left alone`;
}

/**
 * What a client's write observes right after it, for its rules' statuses ({@link judgeRule}, the judgement a
 * pass makes): their ingress interfaces as the host has them now (missing, occupied by another program,
 * without ours, down or without carrier), the egresses the write accepted unverified (`unverifiedEgress`),
 * the neighbour entries their MAC-less backends use (set by hand; a MAC no probe of ours had answered), the
 * static MACs and device settings as the last pass judged them (also a start's, before its first pass, with
 * `log` false: the pass logs the transitions). Reads only; repairs nothing (the next pass
 * does, and judges again). `pending`: records written but not published yet (execute.ts finishRules judges
 * them before any read can see them), looked up before the state's.
 */
export async function observeWrittenRules(
  ctx: ExecContext,
  names: Iterable<string>,
  unverifiedEgress: ReadonlyMap<string, string> = new Map(),
  pace: () => Promise<void> = async () => {},
  log = true,
  pending?: PendingRules,
): Promise<void> {
  const { dp, state } = ctx;
  const ruleOf = (name: string) => pending?.get(name)?.rule ?? state.rules.get(name);
  const kernelOf = (name: string) => pending?.get(name)?.k ?? state.ruleKernel.get(name);
  const ingressProblems = new Map<string, string>();
  const ingressDown = new Map<string, string>();
  const handSet = new Map<string, string>();
  const via = new Map<string, string>();
  const route = new Map<string, string>();
  const seen = new Set<string>();
  const rules: string[] = [];
  let n = 0;
  for (const name of names) {
    if ((++n & 63) === 0) await pace();
    const rule = ruleOf(name);
    const k = kernelOf(name);
    if (!rule || !k) continue;
    rules.push(name);
    for (const i of rule.ingressInterfaces) {
      if (seen.has(i)) continue;
      seen.add(i);
      // As the write found it (-1: missing; a client's write refuses a missing ingress, a lenient one not).
      if ((k.ifindexes.get(i) ?? -1) < 0) {
        ingressProblems.set(i, missingText(state, i));
        continue;
      }
      const x = dp.xdpStatus(i);
      if (x && x.mode !== 'none' && !x.ours) ingressProblems.set(i, foreignWhy(i, x));
      else if (x && x.mode === 'none') ingressProblems.set(i, `our XDP program is not attached to ${i}`);
      const down = ingressDownProblem(i, dp.linkState?.(i));
      if (down) ingressDown.set(i, down);
    }
    for (const b of rule.backends) {
      const key = neighbourKey(b.ip, b.interface);
      if (b.mac !== '') continue;
      const why = dp.neighbourVia?.(b.ip, b.interface);
      if (why) via.set(key, why);
      const hop = dp.neighbourRoute?.(b.ip, b.interface);
      if (hop) route.set(key, hop);
      if (handSet.has(key) || state.neighbourHolds.has(key)) continue;
      const states = dp.neighbourHandSet?.(b.ip, b.interface);
      if (states) handSet.set(key, states);
    }
  }
  const unanswered = await unansweredMacs(ctx, rules, handSet, pace, ruleOf, kernelOf);
  // The static MACs of these rules the last pass judged unverified, past their grace period now: looked up for
  // their own backends only, over the kept verdicts (the whole grace list was walked, and the 40 000 verdicts of
  // 10 000 rules copied, at every write made while one of them was past its grace: ~6 ms a change).
  const unverifiedMacs = pastGrace(state, rules, ruleOf, ctx.mono());
  const o: RuleObservation = {
    ingressProblems,
    ingressDown,
    unverifiedEgress,
    unverifiedMacs,
    unanswered,
    holds: state.neighbourHolds,
    handSet,
    ingressSettings: state.ingressSettings,
    fights: state.fights.byInterface(),
    ruleFights: state.fights.byRule(),
    arpUnavailable: ctx.dp.arpUnavailable?.(),
    via,
    foreignEgress: foreignEgresses(
      dp,
      rules.flatMap((name) => (ruleOf(name)?.backends ?? []).map((b) => b.interface)),
    ),
    peerXdp: peerXdpPrograms(
      dp,
      rules.flatMap((name) => (ruleOf(name)?.backends ?? []).map((b) => b.interface)),
    ),
    route,
    // As the last pass read them (a write reads no counters).
    tapDrops: state.lastObservation.tapDrops,
    neighbourUnread: state.lastObservation.neighbourUnread,
    loopUnknown: state.hostLoopsUnknown,
  };
  // What a read serves (the links that shadow an ingress taken in). A client's change is committed by now: a
  // read that fails here never fails it; its rules are judged and logged by the next pass instead.
  let shadows: Map<string, LinkSpec> | undefined;
  if (log) {
    try {
      shadows = activeLinkSources(dp, state);
    } catch (err) {
      ctx.log.warn({ err }, 'the link devmap could not be read after a change: the next pass logs its rules');
    }
  }
  const said = ruleTransitions(ctx);
  try {
    for (const name of rules) {
      if ((++n & 63) === 0) await pace();
      const k = kernelOf(name)!;
      const rule = ruleOf(name)!;
      judgeRule(k, rule, o);
      state.markStatus(name); // (egress-notes.ts, rule-problems.ts)
      if (shadows) said.add(name, shadowedStatus(rule, k.status, shadows));
      else if (log) state.judgeDirty.add(name);
    }
  } finally {
    said.flush();
  }
}

/**
 * What {@link staticMacStatus} judges the static MACs of `rules` from: the kept verdicts
 * (`state.staticMacUnverified`), with each of their static MACs still "not confirmed yet" there whose grace
 * (UNVERIFIED_GRACE_MS) is over said as "cannot be verified", as the next pass records it. Looks up only these
 * rules' backends (O(their backends), whatever the rule count): nothing is copied or walked beyond them.
 */
export function pastGrace(
  state: Pick<CoreState, 'staticMacUnverified' | 'staticMacGrace' | 'staticMacs'>,
  rules: Iterable<string>,
  ruleOf: (name: string) => Pick<RuleSpec, 'backends'> | undefined,
  t: number,
): UnverifiedMacs {
  const base = state.staticMacUnverified;
  if (state.staticMacGrace.size === 0) return base;
  let over: Map<string, string> | undefined;
  for (const name of rules) {
    for (const b of ruleOf(name)?.backends ?? []) {
      if (b.mac === '') continue;
      const key = staticMacKey(b.ip, b.interface, b.mac);
      const since = state.staticMacGrace.get(key);
      if (since === undefined || t - since < UNVERIFIED_GRACE_MS) continue;
      const m = state.staticMacs.get(key);
      if (m?.verdict === 'unverified') (over ??= new Map()).set(key, m.why);
    }
  }
  if (!over) return base;
  const o = over;
  return { size: base.size + o.size, get: (key) => o.get(key) ?? base.get(key) };
}

/** Rule records written but not published yet, by name: judged before a read can see them (execute.ts finishRules). */
export type PendingRules = ReadonlyMap<string, { rule: RuleSpec; k: RuleKernel }>;

/**
 * The backends given without a MAC of these rules that their table holds with a MAC no probe of ours has had
 * answered (Dataplane.neighbourAnswered): "ip@iface" -> that MAC ({@link unansweredNeighbourStatus}). Judged
 * from what the rule's table holds (its written status), not from an entry read earlier: a pass that re-applied
 * a rule wrote what its plan read, and a reply judges what the write wrote. Not the ones said otherwise: an
 * entry set by hand (`handSet`), a held entry (its kept MAC: heldNeighbourStatus), a MAC kept while its entry
 * is missing (unverified already).
 * A MAC written that did answer is recorded as confirmed (state.neighbourConfirmed) by the same judgement that
 * lets its status say "resolved": a reply read off the wire after this pass's holds were decided (or between
 * passes, judged by a client's write) is what the next decision goes by too. Before, only the holds' own look
 * recorded it, and an entry that changed to a newcomer's MAC in between (a duplicate host's gratuitous ARP)
 * was followed at once, the MAC the status called resolved not asked (core/neighbour-hold.ts).
 */
async function unansweredMacs(
  ctx: ExecContext,
  names: Iterable<string>,
  handSet: ReadonlyMap<string, string>,
  pace: () => Promise<void>,
  ruleOf: (name: string) => RuleSpec | undefined = (name) => ctx.state.rules.get(name),
  kernelOf: (name: string) => RuleKernel | undefined = (name) => ctx.state.ruleKernel.get(name),
): Promise<Map<string, string>> {
  const { dp, state } = ctx;
  const out = new Map<string, string>();
  if (!dp.neighbourAnswered) return out;
  let n = 0;
  for (const name of names) {
    if ((++n & 255) === 0) await pace();
    const rule = ruleOf(name);
    const k = kernelOf(name);
    if (!rule || !k || k.status.state === 'failed') continue;
    const written = (k.written ?? k.status).backends;
    rule.backends.forEach((b, idx) => {
      if (b.mac !== '') return;
      const key = backendKeys(b).neighbour;
      if (out.has(key) || handSet.has(key) || state.neighbourHolds.has(key)) return;
      const w = written[idx];
      if (!w?.receiving || !w.mac || w.unverified) return;
      if (dp.neighbourAnswered!(b.ip, b.interface)?.toLowerCase() !== w.mac.toLowerCase()) out.set(key, w.mac);
      else if (state.neighbourConfirmed.get(key) !== w.mac) state.neighbourConfirmed.set(key, w.mac);
    });
  }
  return out;
}

/**
 * The warning of a link direction that forwards (the pass's, and a write's right after it): its ingress's
 * device settings that differ from the datapath's (GRO, `state.ingressSettings`), else frames larger than its
 * egress's MTU (or its veth peer's, wherever that lives), which the kernel drops, or a peer whose MTU cannot
 * be read (FramesFit Unknown); undefined: none.
 */
export function linkDirectionWarning(ctx: ExecContext, from: string, to: string): string | undefined {
  const { dp, state } = ctx;
  const drift = state.ingressSettings.get(from);
  if (drift) return `${from} -> ${to}: ${drift}`;
  if (state.fights.fighting(from) || state.fights.fighting(to) || state.fights.linkFighting(from)) {
    const f = state.fights.byInterface();
    const own = state.fights.byLink().get(from);
    const texts = [...new Set([own, f.get(from), f.get(to)].filter((x) => x))];
    return `${from} -> ${to}: ${texts.join('; ')}`;
  }
  const mIn = dp.linkState?.(from)?.mtu;
  const e = egressMtu(to, dp.linkState?.(to)?.mtu, peerMtu(dp, to));
  if (e && 'unverified' in e) {
    return (
      `${from} -> ${to}: egress ${to}'s veth peer MTU cannot be verified (${e.unverified}): frames larger ` +
      'than that MTU would be dropped unseen by this check'
    );
  }
  if (mIn !== undefined && e && e.mtu < mIn) {
    return (
      `${from} -> ${to}: ${e.where} has MTU ${e.mtu}, ${from} ${mIn}: frames whose IP packet exceeds ${e.mtu + MTU_SLACK} ` +
      `bytes are dropped (XDP redirects do not fragment; ${countedAs(e.where, to)}); ${largestPassing(e.mtu)}`
    );
  }
  return undefined;
}

/**
 * What is observed of a link direction whose warning (`was`, {@link linkDirectionWarning}) no longer holds: for an
 * MTU warning, the MTUs now, naming the device the warning was about ("link a -> b: no MTU warning any more: b has
 * MTU 1500 now, matching a's 1500"; "... b's veth peer eth0 in netns n has MTU 1500 now (b itself 1500), matching
 * a's 1500"); for another, that it is gone, naming it.
 */
export function linkWarningGoneText(ctx: Pick<ExecContext, 'dp'>, from: string, to: string, was: string): string {
  const { dp } = ctx;
  const pre = `${from} -> ${to}: `;
  const what = was.startsWith(pre) ? was.slice(pre.length) : was;
  if (!isMtuWarning(was) && !isMtuUnverified(was)) return `link ${pre}no longer so: ${what}`;
  const mIn = dp.linkState?.(from)?.mtu;
  const own = dp.linkState?.(to)?.mtu;
  const peer = peerMtu(dp, to);
  const e = egressMtu(to, own, peer);
  if (mIn === undefined || !e || 'unverified' in e) return `link ${pre}no MTU warning any more (it was: ${what})`;
  const above = e.mtu === mIn ? 'matching' : 'above';
  // The device the warning was about is the one said to have its MTU now: a warning about the veth peer's MTU
  // ends when the peer's MTU changes, which "B has MTU 1500 now" said of B (whose MTU had not changed).
  if (peer && 'mtu' in peer && was.includes(`${to}'s veth peer `)) {
    const itself = own === undefined ? '' : ` (${to} itself ${own})`;
    const bound = own !== undefined && own !== peer.mtu ? `the smaller, ${e.mtu}, ` : '';
    return (
      `link ${pre}no MTU warning any more: ${to}'s veth peer ${peerWhere(peer)} has MTU ${peer.mtu} now${itself}, ` +
      `${bound}${above} ${from}'s ${mIn}`
    );
  }
  const both = peer && 'mtu' in peer && e.where === to ? ` (its veth peer ${peerWhere(peer)} ${peer.mtu})` : '';
  return `link ${pre}no MTU warning any more: ${e.where} has MTU ${e.mtu} now${both}, ${above} ${from}'s ${mIn}`;
}

/**
 * What a client's links write observes right after it, for each direction it wrote, judged as the pass
 * judges it and with its words: an ingress or an egress that is down or without carrier makes it not
 * forwarding (`state.linkEgress`); a forwarding one has the pass's warning ({@link linkDirectionWarning}:
 * an egress MTU, or its veth peer's, below the ingress's; `state.linkWarnings`). So the reply, and a read
 * before the next pass, say what that pass will; so does what runs on each egress's veth peer that may drop what
 * it is given ({@link linkPeerNote}; the pass logs it). What only a pass can judge (native redirect targets, the
 * egress watch) it leaves to the pass. Directions the write removed are forgotten (a read no longer lists
 * them, and their egress interfaces no longer carry their texts).
 */
export function observeLinkDirections(ctx: ExecContext, want: ReadonlyMap<string, { toName: string }>): void {
  const { dp, state } = ctx;
  const dirs = new Set([...want].map(([from, d]) => `${from}>${d.toName}`));
  for (const m of [state.linkEgress, state.linkWarnings, state.linkUnverified, state.linkPeer]) {
    for (const dir of m.keys()) if (!dirs.has(dir)) m.delete(dir);
  }
  // A direction removed is not said to lose what ran on its egress's peer; one made again is said anew.
  for (const dir of state.linkPeerSaid.keys()) if (!dirs.has(dir)) state.linkPeerSaid.delete(dir);
  for (const [from, d] of want) {
    const dir = `${from}>${d.toName}`;
    // What runs on its egress's veth peer, read as the pass reads it (the pass logs it).
    const peer = linkPeerNote(dp, from, d.toName);
    if (peer) state.linkPeer.set(dir, peer);
    else state.linkPeer.delete(dir);
    const why = ingressDownProblem(from, dp.linkState?.(from)) ?? egressProblem(d.toName, dp.linkState?.(d.toName));
    if (why) state.linkEgress.set(dir, why);
    else if (isDownText(state.linkEgress.get(dir), from, d.toName)) state.linkEgress.delete(dir); // up again
    if (state.linkEgress.has(dir)) state.linkWarnings.delete(dir);
    else {
      const w = linkDirectionWarning(ctx, from, d.toName);
      if (w) state.linkWarnings.set(dir, w);
      else state.linkWarnings.delete(dir);
    }
  }
}

/** Whether a direction's "not forwarding" text is one {@link observeLinkDirections} judges again (down, no carrier). */
function isDownText(why: string | undefined, from: string, to: string): boolean {
  return (
    why !== undefined &&
    (why === ingressDownProblem(from, { up: false, carrier: false, mtu: 0 }) ||
      why === ingressDownProblem(from, { up: true, carrier: false, mtu: 0 }) ||
      why === egressProblem(to, { up: false, carrier: false, mtu: 0 }) ||
      why === egressProblem(to, { up: true, carrier: false, mtu: 0 }))
  );
}

/**
 * One step of the egress watch (egress-watch.ts) for every checked egress whose peer cannot be inspected:
 * the counters of the backends behind it are read (one read for all), its verdict updated, and its entry
 * in `napi` replaced by the judged one (failing: not ok, so its backends leave their tables). Each verdict
 * change is logged once. Egresses no longer watched are forgotten.
 */
function judgeUnverifiedEgresses(
  ctx: ExecContext,
  napi: Facts['napi'],
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
): void {
  const { dp, state } = ctx;
  for (const name of state.egressWatch.keys()) {
    if (!napi.get(name)?.unverified) {
      state.egressWatch.delete(name);
      state.logged.delete(`egress/${name}`);
    }
  }
  const watched = [...napi].filter(([, r]) => r.unverified);
  if (!watched.length) return;
  const ids = new Map<string, number[]>();
  for (const k of state.ruleKernel.values()) {
    for (const [key, b] of k.backends) {
      const iface = key.slice(key.indexOf('@') + 1);
      if (!napi.get(iface)?.unverified) continue;
      const list = ids.get(iface);
      if (list) list.push(b.statsId);
      else ids.set(iface, [b.statsId]);
    }
  }
  let counters: ReturnType<Dataplane['readCounters']>['backends'];
  try {
    counters = dp.readCounters([], [...ids.values()].flat(), []).backends;
  } catch (e) {
    ctx.log.error({ err: e }, `cannot read the backend counters to judge ${watched.map(([i]) => i).join(', ')}`);
    return; // nothing observed: verdicts unchanged
  }
  const now = ctx.mono();
  for (const [iface, r] of watched) {
    const w = stepEgress(
      state.egressWatch.get(iface),
      r.key ?? '',
      ids.get(iface) ?? [],
      counters,
      now,
      iface,
      true,
      undefined,
      smallPeerMtu(ctx, iface),
    );
    state.egressWatch.set(iface, w);
    napi.set(iface, judgedEgress(r, w));
    transition(`egress/${iface}`, `${w.verdict}|${w.since}`, (before) => {
      if (w.verdict === 'failing') {
        state.reconcilerEvents.egress_ejections++;
        ctx.log.warn(
          { egress: iface, reason: w.why, retryAt: new Date(wallAt(w.retryAt!, ctx.mono, ctx.now())).toISOString() },
          `backend egress ${iface}: ${w.why}; its backends are out of their tables until then`,
        );
      } else if (w.verdict === 'verified') {
        ctx.log.info(
          { egress: iface },
          `backend egress ${iface}: frames redirected to it are taken by the kernel: verified by traffic ` +
            (isUnchecked(r) ? `(it cannot be checked: ${r.detail})` : '(its veth peer cannot be inspected)'),
        );
      } else if (before && w.ejections > 0) {
        ctx.log.info(
          { egress: iface, failedTrials: w.ejections },
          `backend egress ${iface}: its backends are put back on trial (${w.ejections} failed so far); ` +
            'not verified until traffic shows it receives',
        );
      } else if (isUnchecked(r)) {
        // Said once per verdict (a check that fails again and again is not logged each pass).
        ctx.log.warn(
          { egress: iface, reason: r.detail },
          `backend egress ${iface}: cannot be verified (${r.detail}): its backends are kept in their tables ` +
            'as they are, not verified until a check can be made or traffic shows it receives (redirect counters)',
        );
      } else {
        ctx.log.info(
          { egress: iface },
          `backend egress ${iface}: its veth peer cannot be inspected and the kernel announces ndo-xmit: ` +
            'not verified until traffic shows it receives (redirect counters)',
        );
      }
    });
  }
}

/**
 * The veth peer of a backend egress when its MTU is below the largest MTU of the ingress interfaces of the
 * rules that use that egress ("the MTU of its veth peer P in netns N (1000, ingress X 1500)"), or when its MTU
 * cannot be read ("the MTU of its veth peer (peer MTU unknown: why)"): frames the peer drops for their size
 * look like a peer without NAPI in the counters, so a peer MTU that is not known to be large enough is named
 * as a possible cause. Empty otherwise.
 */
export function smallPeerMtu(ctx: Pick<ExecContext, 'dp' | 'state'>, iface: string): string {
  const p = peerMtu(ctx.dp, iface);
  if (!p) return '';
  if ('unreadable' in p) return `the MTU of its veth peer (peer MTU unknown: ${p.unreadable})`;
  let largest = 0;
  let from = '';
  for (const rule of ctx.state.rules.values()) {
    if (!rule.backends.some((b) => b.interface === iface)) continue;
    for (const i of rule.ingressInterfaces) {
      const m = ctx.dp.linkState?.(i)?.mtu ?? 0;
      if (m > largest) [largest, from] = [m, i];
    }
  }
  return p.mtu < largest ? `the MTU of its veth peer ${peerWhere(p)} (${p.mtu}; ingress ${from} ${largest})` : '';
}

/**
 * The device settings an attach made for XDP on `name` (dataplane checkIngress: offloads turned off), checked
 * again every {@link INGRESS_CHECK_MS}: what someone turned on again is turned off again (logged once per
 * repair, recorded for --cleanup-on-exit); what cannot be put back is reported (state.ingressSettings: the
 * interface's rules DEGRADED, its link directions warned, a datapath problem), each transition logged once.
 */
async function checkIngressSettings(
  ctx: ExecContext,
  name: string,
  mode: string,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
): Promise<void> {
  const { dp, state } = ctx;
  if (!dp.checkIngress || (mode !== 'native' && mode !== 'generic')) return;
  const now = ctx.mono();
  if (now - (state.ingressChecked.get(name) ?? 0) < INGRESS_CHECK_MS) return;
  state.ingressChecked.set(name, now);
  let why: string | undefined;
  /** Why the check, or a read it needed, could not be made. */
  let failed: string | undefined;
  try {
    const r = await dp.checkIngress(name, mode === 'generic');
    // Only what this daemon had set there itself (its host-changes record) is said to have been undone; what
    // it sets for the first time (the mode changed, the device is new) is said as such.
    if (r.done.length) {
      state.fights.repaired(
        {
          key: `settings|${state.attached.get(name)?.ifindex ?? name}`,
          what: `the device settings XDP needs on ${name}`,
          interfaces: [name],
        },
        () =>
          ctx.log.warn(
            { ifname: name, done: r.done },
            `${name}: device settings this daemon had made for XDP were found undone (not by this daemon): made ` +
              `again (${r.done.join('; ')})`,
          ),
      );
    }
    if (r.set?.length) {
      ctx.log.info(
        { ifname: name, mode, set: r.set },
        `${name}: our XDP program runs in ${mode} mode, which needs these device settings: ${r.set.join('; ')}`,
      );
    }
    if (r.released?.length) {
      ctx.log.info(
        { ifname: name, released: r.released },
        `${name}: offloads no longer needed off: ${r.released.join('; ')}`,
      );
    }
    if (r.unrepaired.length)
      why = `device settings XDP needs here are not as needed and could not be made: ${r.unrepaired.join('; ')}`;
    // A read the check could not make (a child killed at its deadline, a namespace not entered): those settings
    // are not known, said as a check that failed (before, it was dropped: the ingress was said to be as needed).
    else if (r.unread?.length) failed = r.unread.join('; ');
  } catch (e) {
    failed = (e as Error).message;
  }
  if (failed !== undefined) {
    // Not checked is not "not as needed": said as cannot be verified (the interface's rules DEGRADED, nothing
    // changed in the datapath); a problem the last check found is kept, with this.
    const was = state.ingressSettings.get(name);
    const kept =
      was && !was.startsWith(UNVERIFIED_SETTINGS)
        ? `${was.replace(/ \(as last checked; .*$/, '')} (as last checked; `
        : '';
    why = kept ? `${kept}cannot check again: ${failed})` : `${UNVERIFIED_SETTINGS}: ${failed}`;
  }
  if (why) state.ingressSettings.set(name, why);
  else state.ingressSettings.delete(name);
  transition(`if-settings/${name}`, why ?? 'ok', (before) => {
    if (why) ctx.log.warn({ ifname: name, reason: why }, `${name}: ${why}`);
    else if (before) ctx.log.info({ ifname: name }, `${name}: the device settings XDP relies on are as needed again`);
  });
}

/**
 * Every static-MAC backend's MAC against what the host shows (static-mac.ts): one read of the neighbour
 * table, each egress's veth peer once. Contradicted ones go into `state.macConflicts` (their plans keep them
 * out of the table; resync re-applies their rules), each transition to and from a contradiction logged once;
 * entries that are not fresh are re-probed, missing ones resolved (at most {@link RESOLVES_PER_PASS} per
 * pass). Returns the ones that cannot be verified ("ip@iface|mac" -> why; `state.staticMacUnverified`, kept
 * from pass to pass).
 * A pass judges only what changed since the last: backends a rule change added (the index the rule changes
 * keep, `state.staticMacBackends`, not collected from every rule), those behind an egress that appeared,
 * went or whose veth peer changed, and those whose neighbour entry changed (`state.staticMacEntries`: the
 * table is compared entry by entry, its size is the host's, not the rules'). The others keep their verdicts:
 * the judgement is a pure function of those reads (with 10 000 rules of 4 static-MAC backends, judging all
 * 40 000 at every pass was a third of the daemon's CPU while changes arrived). Every
 * {@link STATIC_MAC_SWEEP_MS} all are judged from scratch. Re-probes and resolves are asked at every pass,
 * as before.
 */
async function judgeStaticMacs(
  ctx: ExecContext,
  facts: Facts,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
  pace: () => Promise<void>,
): Promise<ReadonlyMap<string, string>> {
  const { dp, state } = ctx;
  const unverified = state.staticMacUnverified;
  const grace = state.staticMacGrace;
  const forget = (key: string) => forgetStaticMac(state, key);
  // Backends no rule names any more (rules changed since the last pass).
  let n = 0;
  for (const key of state.staticMacGone) {
    if ((++n & 1023) === 0) await pace();
    if (!state.staticMacBackends.has(key)) forget(key);
    state.staticMacGone.delete(key);
  }
  if (!dp.neighbourTable) return unverified;
  let wanted = false; // a static-MAC backend whose egress exists
  for (const [iface] of state.staticMacsByEgress) {
    if (!facts.interfaces.get(iface)) continue;
    wanted = true;
    break;
  }
  if (!wanted) {
    for (const key of state.staticMacs.keys()) {
      if ((++n & 1023) === 0) await pace();
      forget(key);
    }
    state.staticMacEgresses.clear(); // all judged afresh when one is back
    state.staticMacEntries.clear();
    return unverified;
  }
  // The table this pass read with the MAC-less backends' entries (fetchRuleFacts), else a read of its own.
  const table = facts.neighbourTable ?? (await dp.neighbourTable());
  const t = ctx.mono();
  const sweep = t - state.staticMacSweptAt >= STATIC_MAC_SWEEP_MS || t < state.staticMacSweptAt;
  // What to judge again, kept in the state until judged: a pass that gives its turn to a change (Preempted,
  // thrown by `pace`) leaves the rest to the next one.
  if (state.staticMacDirty.size === 0) [state.staticMacDirty, state.staticMacAdded] = [state.staticMacAdded, new Set()];
  else {
    for (const key of state.staticMacAdded) state.staticMacDirty.add(key);
    state.staticMacAdded.clear();
  }
  const dirty = state.staticMacDirty;
  const mark = (keys: string | string[] | Set<string> | undefined) => {
    if (keys === undefined) return;
    if (typeof keys === 'string') dirty.add(keys);
    else for (const k of keys) dirty.add(k);
  };
  // Egresses: there or not, and their veth peers (each read once). An egress's backends (10 000 and more
  // behind one egress) are marked in slices, and the egress recorded once all are: a pass that gives its turn
  // to a change meanwhile marks them again at the next.
  const peers = new Map<string, PeerRead | undefined>();
  for (const [iface, keys] of state.staticMacsByEgress) {
    const exists = !!facts.interfaces.get(iface);
    const peer = exists ? dp.vethPeerMac?.(iface) : undefined;
    peers.set(iface, peer);
    const was = state.staticMacEgresses.get(iface);
    if (was && was.exists === exists && samePeer(was.peer, peer)) continue;
    for (const k of keys) {
      if ((++n & 1023) === 0) await pace();
      dirty.add(k);
    }
    state.staticMacEgresses.set(iface, { exists, peer });
  }
  for (const iface of state.staticMacEgresses.keys()) {
    if (!state.staticMacsByEgress.has(iface)) state.staticMacEgresses.delete(iface);
  }
  // Neighbour entries: those that changed, appeared or went since the last pass.
  for (const [nkey, e] of table) {
    if ((++n & 255) === 0) await pace();
    const keys = state.staticMacsByNeighbour.get(nkey);
    if (keys === undefined) continue;
    const answered = answeredOf(dp, nkey, e);
    const was = state.staticMacEntries.get(nkey);
    if (was && sameEntry(was, e, answered)) continue;
    state.staticMacEntries.set(nkey, { mac: e.mac, states: e.states, fresh: freshEntry(e), answered, via: e.via });
    mark(keys);
  }
  for (const nkey of state.staticMacEntries.keys()) {
    if ((++n & 1023) === 0) await pace();
    if (table.has(nkey) && state.staticMacsByNeighbour.has(nkey)) continue;
    state.staticMacEntries.delete(nkey);
    mark(state.staticMacsByNeighbour.get(nkey));
  }
  const judge = (key: string) => {
    const b = state.staticMacBackends.get(key);
    if (!b) return;
    judgeStaticMac(
      ctx,
      key,
      b,
      !!facts.interfaces.get(b.iface),
      peers.get(b.iface),
      table.get(b.neighbour),
      t,
      transition,
    );
  };
  // A verdict kept without evidence: judged again until evidence comes or its hold ends. One whose static MAC is
  // asked (another MAC answers for its address): judged again at every pass, from the answers to it.
  for (const key of state.staticMacHeld) {
    if ((++n & 1023) === 0) await pace();
    dirty.add(key);
  }
  for (const key of state.staticMacAsk.keys()) {
    if ((++n & 1023) === 0) await pace();
    dirty.add(key);
  }
  if (sweep) {
    // All of them, through the set: a pass that gives its turn to a change leaves the rest to the next one
    // (which goes on from there, instead of sweeping from the start again and never finishing under load).
    for (const key of state.staticMacBackends.keys()) {
      if ((++n & 1023) === 0) await pace();
      dirty.add(key);
    }
    state.staticMacSweptAt = t;
  }
  for (const key of dirty) {
    if ((++n & 63) === 0) await pace();
    judge(key);
    dirty.delete(key);
  }
  // What the judgements asked of the kernel, at every pass: entries re-probed, missing ones resolved.
  // Each in slices, like every loop of a pass over the backends (with 40 000 static-MAC backends that never
  // answer, the entries to re-probe and the grace list below are all of them: one turn each held the event loop).
  for (const key of state.staticMacReprobe) {
    if ((++n & 255) === 0) await pace();
    const b = state.staticMacBackends.get(key);
    if (b) dp.verifyNeighbour?.(b.ip, b.iface, true);
  }
  // Static MACs another MAC answers for: asked themselves (once a second: askNeighbour's rate): both answering
  // is an address conflict, the static one silent a contradiction.
  for (const [key, macs] of state.staticMacAsk) {
    if ((++n & 255) === 0) await pace();
    const b = state.staticMacBackends.get(key);
    if (b) for (const mac of macs) dp.askNeighbour?.(b.ip, b.iface, mac);
  }
  let resolves = 0;
  for (const key of state.staticMacResolve) {
    if (resolves >= RESOLVES_PER_PASS) break;
    const b = state.staticMacBackends.get(key);
    if (!b) continue;
    resolves++;
    dp.probeNeighbour?.(b.ip, b.iface);
  }
  // Said once the first answers had time to come (UNVERIFIED_GRACE_MS), not the moment after a change.
  for (const [key, since] of grace) {
    if ((++n & 1023) === 0) await pace();
    if (t - since < UNVERIFIED_GRACE_MS) continue;
    grace.delete(key);
    state.staticMacNotWaited.delete(key);
    const m = state.staticMacs.get(key);
    if (m?.verdict === 'unverified' && unverified.get(key) !== m.why) {
      unverified.set(key, m.why);
      touchStaticMac(state, key);
    }
  }
  return unverified;
}

/**
 * Forwarding loops the host made after the rules were accepted (rule-loops.ts, the check a change is refused
 * by): a veth renamed, made again or moved so that a backend's egress leads, through its veth peer in this
 * namespace (and links), to an ingress where its datagrams are matched again, around a cycle of rules. The
 * backends on such a cycle go into `state.hostLoops`: every re-apply (the reconciler's, a start's) keeps them
 * out of their rules' tables, as backends that cannot receive are kept out (the rules touched are checked and
 * judged again: DEGRADED, or INACTIVE with no backend left, naming the loop). Each loop is logged once when
 * found and once when the host no longer makes it (its backends come back where they can receive).
 *
 * Cheap at every pass: only a backend egress whose way on (its veth peer here and what that reaches; for an egress
 * that is no veth with a peer here, what sending out of it reaches: a macvlan's lower, a peer in another namespace
 * read by its nsid, one dump a namespace) touches an interface of a rule or a link's ingress, or meets what cannot
 * be told, can start a cycle (usually none: a backend's peer is a container's eth0, which leads nowhere there),
 * read from the peers the pass read already; the check runs over those egresses' backends, and only when what it
 * reads changed since it last ran (those peers, the links and their egresses' peers, the desired state).
 */
function judgeHostLoops(
  ctx: ExecContext,
  facts: Facts,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
  links: Iterable<LinkSpec> = ctx.state.links.values(),
): void {
  const { dp, state } = ctx;
  const inForce = new Map<string, string>(); // ingress of a link direction in force -> its egress
  for (const l of links) for (const [from, to] of directions(l)) inForce.set(from, to);
  /** A backend egress's veth peer when it is in this namespace, from what the pass read (facts.peers). */
  const peerNow = (egress: string): string | undefined => {
    const p = facts.peers.get(egress);
    if (p && 'name' in p) return p.nsid === undefined && p.netns === undefined ? p.name : undefined;
    if (p || !facts.peers.has(egress)) return dp.vethPeer?.(egress); // its MTU unreadable, or not read
    return undefined; // not a veth
  };
  // The devices a local peer's received frames go up to (its master, a macvlan or ipvlan stacked on it, and theirs),
  // read by rtnetlink (IFLA_MASTER, IFLA_LINK) in this namespace: rule-loops.ts receivingUppers judges which.
  const uppersOf = upperReader(dp);
  const portRows = new Map<string, readonly string[]>();
  const portsOf = dp.bridgePorts
    ? (name: string) => {
        if (!portRows.has(name)) portRows.set(name, dp.bridgePorts!(name));
        return portRows.get(name)!;
      }
    : undefined;
  const peers = new Map<string, string | undefined>();
  const peerOf = (name: string) => {
    if (!peers.has(name)) peers.set(name, state.egressBackends.has(name) ? peerNow(name) : dp.vethPeer?.(name));
    return peers.get(name);
  };
  const tx = txReaders(dp);
  const upperLists = new Map<string, ReturnType<typeof receiveTree>>();
  const uppers = (name: string, send = false) => {
    const key = `${send ? '>' : ''}${name}`;
    let u = upperLists.get(key);
    if (!u) {
      u = receiveTree(name, { peerOf, portsOf, ...tx, linkTo: inForce, inForce, uppersOf }, false, send);
      upperLists.set(key, u);
    }
    return u;
  };
  /** A peer and what it reaches (up, forwarded by a bridge, by a link), for the pass's input: "p>br>mv", then "?" and what cannot be told. */
  const reach = (peer: string, send = false) => {
    const u = uppers(peer, send);
    return [peer, ...u.nodes.map((n) => n.name), ...(u.unknown.length ? ['?', ...u.unknown] : [])].join('>');
  };
  const candidates: string[] = [];
  for (const egress of state.egressBackends.keys()) {
    const peer = peerNow(egress);
    if (peer === undefined) {
      // No veth with a peer here: what sending out of it reaches (a macvlan's lower and its peer, a peer in
      // another namespace that leads on there: cannot be told).
      if (!tx.deviceOf && !tx.peerAway) continue;
      const sent = uppers(egress, true);
      if (sent.nodes.some((m) => state.ifaceRules.has(m.name) || inForce.has(m.name)) || sent.unknown.length)
        candidates.push(`${egress}>!${reach(egress, true)}`);
      continue;
    }
    const up = uppers(peer);
    if (
      state.ifaceRules.has(peer) ||
      inForce.has(peer) ||
      up.nodes.some((m) => state.ifaceRules.has(m.name) || inForce.has(m.name)) ||
      up.unknown.length
    )
      candidates.push(`${egress}>${reach(peer)}`);
  }
  let input = '';
  if (candidates.length) {
    const links = [...inForce].map(([from, to]) => {
      const p = peerOf(to);
      return `${from}>${to}>${p === undefined ? `!${reach(to, true)}` : reach(p)}`;
    });
    input = `${state.desiredVersion}|${candidates.join(',')}|${links.join(',')}`;
  }
  if (input === (state.hostLoopInput ?? '')) return;
  state.hostLoopInput = input;
  let found: HostLoops = { backends: new Map(), loops: new Map(), unknown: new Map() };
  if (candidates.length) {
    const rules = new Map<string, LoopRule | undefined>();
    const ruleOf = (name: string) => {
      if (!rules.has(name)) {
        const r = state.rules.get(name);
        rules.set(name, r && loopRule(name, r));
      }
      return rules.get(name);
    };
    const starts: [LoopRule, RuleSpec['backends'][number]][] = [];
    for (const c of candidates) {
      const egress = c.slice(0, c.indexOf('>'));
      for (const user of state.egressRules.get(egress) ?? []) {
        const r = ruleOf(user.slice('rule/'.length, -'/egress'.length));
        if (r) for (const b of r.spec.backends) if (b.interface === egress) starts.push([r, b]);
      }
    }
    found = findHostLoops(
      {
        peerOf,
        uppersOf,
        portsOf,
        ...tx,
        linkTo: inForce,
        inForce,
        ruleAt: (key) => {
          const name = state.claims.get(key);
          return name === undefined ? undefined : ruleOf(name);
        },
      },
      starts,
    );
  }
  const touch = (key: string) => state.touchRule(key.slice(0, key.indexOf('|')));
  for (const [key, why] of found.backends) if (state.hostLoops.get(key) !== why) touch(key);
  for (const key of state.hostLoops.keys()) if (!found.backends.has(key)) touch(key);
  for (const [key, why] of found.unknown) if (state.hostLoopsUnknown.get(key) !== why) touch(key);
  for (const key of state.hostLoopsUnknown.keys()) if (!found.unknown.has(key)) touch(key);
  state.hostLoopsUnknown = found.unknown;
  const was = state.hostLoopList;
  state.hostLoops = found.backends;
  state.hostLoopList = found.loops;
  for (const [id, l] of found.loops) {
    transition(`loop/${id}`, 'found', () =>
      ctx.log.warn(
        { rules: l.rules, through: l.through, backends: l.backends },
        `forwarding loop made by the host: rules ${l.rules} through ${l.through}: ${LOOP_TAIL}; the backends ` +
          `that close it are kept out of their tables until the host no longer makes it: ${loopBackendsText(l)}`,
      ),
    );
  }
  for (const [id, l] of was) {
    if (found.loops.has(id) || !state.logged.delete(`loop/${id}`)) continue;
    ctx.log.info(
      { rules: l.rules, through: l.through, backends: l.backends },
      `forwarding loop of rules ${l.rules} through ${l.through} is gone (the host or the rules changed): its backends are no ` +
        `longer kept out of their tables for it (${loopBackendsText(l)})`,
    );
  }
}

/**
 * What a client's change found of its rules' backends whose way back cannot be told (execute.ts preflight: the
 * walk {@link judgeHostLoops} makes, on the host as it is now, with the rules and links after the change), put where
 * rule statuses read it (`state.hostLoopsUnknown`, the changed rules' entries replaced, a deleted rule's dropped)
 * before its rules are judged: its reply (CreateRule, UpdateRule, ApplyRules) then says it in the rule's warnings,
 * as a read after it does (before: only from the next pass on). The next pass judges every backend again from its
 * own reads. Idempotent.
 */
export function recordChangeLoopsUnknown(state: CoreState, told: ChangeLoopsUnknown | undefined): void {
  if (!told) return;
  const next = new Map<string, string>();
  for (const [key, why] of state.hostLoopsUnknown) {
    if (!told.rules.has(key.slice(0, key.indexOf('|')))) next.set(key, why);
  }
  for (const [key, why] of told.unknown) next.set(key, why);
  const was = state.hostLoopsUnknown;
  if (next.size === was.size && [...next].every(([key, why]) => was.get(key) === why)) return;
  state.hostLoopsUnknown = next;
  // Not what the last check was made from any more: the next pass runs it again (a computed input is '' or starts
  // with the desired state's version), and replaces these with what it finds.
  state.hostLoopInput = 'recorded by a change';
}

/**
 * A start's judgements, made before it writes anything (restore.ts): the forwarding loops the host makes through
 * the rules ({@link judgeHostLoops}, with the stored `links`, whose directions the pinned devmap may still forward)
 * and through the links alone ({@link judgeLinkLoops}), and the static MACs the host contradicts
 * ({@link judgeChangeStaticMacs}, without waiting for answers), recorded in `state.hostLoops`, `state.linkLoops` and
 * `state.macConflicts` as a pass records them, so that the start's plans keep those backends out of their tables
 * and those links out of the devmap: what the last run took out is not written back, even for the moment until
 * the first pass (before: adopted in place as receiving, "kernel entries differed ... rewritten", and a loop the
 * host made forwarded again until that pass). Each loop and contradiction found is logged once, as a pass logs
 * it; the first pass judges them again from its own reads. Needs the records of the stored rules
 * (state.setRecord) in place.
 */
export async function judgeBeforeStartWrites(ctx: ExecContext, links: readonly LinkSpec[]): Promise<void> {
  try {
    await judgeChangeStaticMacs(ctx, ctx.state.rules.values(), 0);
  } catch (err) {
    ctx.log.warn(
      { err },
      'static MACs could not be judged before the start writes: the first reconciler pass judges them',
    );
  }
  try {
    const transition = loggedTransition(ctx.state);
    judgeHostLoops(ctx, emptyFacts(), transition, links);
    judgeLinkLoops(ctx, transition, new Map(links.map((l) => [linkKey(l), l])));
  } catch (err) {
    ctx.log.warn(
      { err },
      'forwarding loops made by the host could not be looked for before the start writes: the first reconciler pass does',
    );
  }
}

const LINK_LOOP_TEXT = 'in a forwarding loop the host made';

/** Whether a link direction's "not forwarding" text is the loop's ({@link judgeLinkLoops}). */
function isLinkLoopText(why: string): boolean {
  return why.startsWith(LINK_LOOP_TEXT);
}

/**
 * The link check a change is refused by (plan-links.ts forwardingLoop, walking the layer-2 graph as
 * judgeHostLoops does: veth peers, a port's bridge and uppers, a bridge's other ports), made at every pass for
 * loops the host made after the links were accepted (both veth peers of a link enslaved to one bridge: every
 * broadcast frame goes round for ever). Each link that closes such a loop goes into `state.linkLoops`: the
 * reconciler's re-apply and a client's change that leaves it as it is keep its directions out of the devmap
 * (map xc_links), its directions are not forwarding, naming the loop (link status, GetStatus datapath warnings,
 * health NOT_SERVING). One warning when a loop is found, one line when the host no longer makes it (the
 * directions are written again).
 */
function judgeLinkLoops(
  ctx: ExecContext,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
  links: ReadonlyMap<string, LinkSpec> = ctx.state.links,
): Set<number> {
  const { dp, state } = ctx;
  const found = new Map<string, { link: LinkSpec; path: string }>();
  const untold = new Map<string, string>();
  const peerOf = dp.vethPeer?.bind(dp);
  if (peerOf && links.size) {
    const peers = new Map<string, string | undefined>();
    const peer = (n: string) => {
      if (!peers.has(n)) peers.set(n, peerOf(n));
      return peers.get(n);
    };
    const portRows = new Map<string, readonly string[]>();
    const portsOf = dp.bridgePorts
      ? (name: string) => {
          if (!portRows.has(name)) portRows.set(name, dp.bridgePorts!(name));
          return portRows.get(name)!;
        }
      : undefined;
    const host = { uppersOf: upperReader(dp), ...(portsOf ? { portsOf } : {}), ...txReaders(dp) };
    // Each loop's closing link out, then the rest walked again: every link on a loop is found.
    const rest = new Map(links);
    let met = new Map<string, string[]>();
    for (let loop = forwardingLoop(rest, peer, host, met); loop; loop = forwardingLoop(rest, peer, host, met)) {
      const key = linkKey(loop.link);
      found.set(key, loop);
      rest.delete(key);
      met = new Map();
    }
    // The links on no loop found whose way on cannot be told from an ingress: said, never taken as no loop.
    for (const [key, l] of rest) {
      const said = directions(l).flatMap(([from, to]) => {
        const m = met.get(from);
        return m
          ? [
              `${from} -> ${to}: whether the frames it forwards come back (a forwarding loop) cannot be told: ${m.join('; ')}`,
            ]
          : [];
      });
      if (said.length) untold.set(key, visible(said.join('; ')));
    }
  }
  state.linkLoopsUnknown = untold;
  const was = state.linkLoops;
  const next = new Map<string, string>();
  for (const [key, { link, path }] of found) {
    const why = visible(
      `${LINK_LOOP_TEXT}: ${path}: every frame it takes in would go round for ever: kept out of the datapath ` +
        '(map xc_links) until the host no longer makes the loop',
    );
    next.set(key, why);
    transition(`link-loop/${key}`, why, () =>
      ctx.log.warn(
        { a: link.a, b: link.b, loop: path },
        `forwarding loop made by the host: link ${link.a} <-> ${link.b}: ${path}: every frame it takes in would go ` +
          'round for ever: its directions are taken out of the datapath (map xc_links) until the host no longer makes it',
      ),
    );
  }
  state.linkLoops = next;
  for (const key of was.keys()) {
    if (next.has(key) || !state.logged.delete(`link-loop/${key}`)) continue;
    const l = links.get(key);
    ctx.log.info(
      { link: key },
      l
        ? `forwarding loop of link ${l.a} <-> ${l.b} is gone (the host or the links changed): its directions are written to the datapath again`
        : `forwarding loop of link ${key} is gone (the link was removed)`,
    );
  }
  // The ingress ifindexes of the links taken out or put back now: their devmap change is the loop's, said above.
  const changed = new Set<number>();
  for (const key of new Set([...was.keys(), ...next.keys()])) {
    const l = links.get(key);
    if (!l || was.has(key) === next.has(key)) continue;
    for (const [from] of directions(l)) {
      const i = dp.lookupInterface(from)?.ifindex;
      if (i !== undefined) changed.add(i);
    }
  }
  return changed;
}

/**
 * The neighbour table's read this pass (`why`: why it failed; undefined: read, or not needed): a failure said once
 * while it lasts and its end said once, both damped while it flaps (log-damper.ts), never a line per pass or per
 * backend.
 */
function noteNeighbourRead(ctx: ExecContext, why: string | undefined): void {
  const { state } = ctx;
  const key = 'neigh-read';
  const before = state.logged.get(key);
  if (why === undefined && before === undefined) return;
  const next = why ?? 'read';
  if (before === next) return;
  if (why === undefined) state.logged.delete(key);
  else state.logged.set(key, next);
  const rules = state.maclessRules.size;
  state.logDamper.line(
    key,
    ctx.mono(),
    () =>
      why === undefined
        ? ctx.log.info({ rules }, 'the neighbour table is read again: backends given without a MAC are judged from it')
        : ctx.log.warn(
            { reason: why, rules },
            `reading the neighbour table failed: ${why}: whether the backends given without a MAC receive cannot be ` +
              `verified (${rules} rule(s) left as written) until it can be read`,
          ),
    (n, ms) =>
      ctx.log.warn(
        { reason: why ?? null, rules, notLogged: n, ms },
        `reading the neighbour table failed or succeeded again ${n} more times in ${Math.round(ms / 1000)} s, not ` +
          `logged one by one; the last: ${why === undefined ? 'read' : `failed: ${why}`}`,
      ),
  );
}

/** Log once per transition of a key (`state.logged`) to `line`; `log` gets whether it had a state before. */
export function loggedTransition(
  state: CoreState,
): (key: string, line: string, log: (before: boolean) => void) => void {
  return (key, line, log) => {
    const before = state.logged.get(key);
    if (before === line) return;
    state.logged.set(key, line);
    log(before !== undefined);
  };
}

/**
 * A static-MAC verdict that changes what a rule's status or table says (contradicted, not confirmed, why)
 * touches the rules naming that backend ("ip@iface|mac"): they are checked and judged again (nothing else is,
 * for a static MAC).
 */
function touchStaticMac(state: CoreState, key: string): void {
  state.touchBackend(key.slice(0, key.lastIndexOf('|')));
}

/** Forget a static MAC's verdict and what it asked (no rule names it any more, or its egress is missing). */
function forgetStaticMac(state: CoreState, key: string): void {
  if (state.macConflicts.has(key) || state.staticMacUnverified.has(key)) touchStaticMac(state, key);
  state.forgetStaticMacVerdict(key);
}

/** Whether the MAC of the neighbour entry `e` of `nkey` ("ip@iface") answered an ARP request of ours (undefined: not known). */
function answeredOf(dp: Dataplane, nkey: string, e: { mac?: string }): boolean | undefined {
  if (!e.mac || !dp.neighbourAnswered) return undefined;
  const at = nkey.indexOf('@');
  return dp.neighbourAnswered(nkey.slice(0, at), nkey.slice(at + 1)) === e.mac;
}

/** The MACs a text names, sorted, once each. */
const macsIn = (text: string) => [...new Set(text.match(/\b[0-9a-f]{2}(?::[0-9a-f]{2}){5}\b/g) ?? [])].sort().join(',');

/**
 * What ARP requests of ours for the address of the static MAC `mac` found (static-mac.ts StaticMacHeard); undefined when
 * none can be sent (no CAP_NET_RAW, a fake without them): another MAC's answer alone decides then.
 */
function staticMacHeard(dp: Dataplane, ip: string, iface: string, mac: string): StaticMacHeard | undefined {
  if (!dp.neighbourAnswers || !dp.askNeighbour || dp.arpUnavailable?.()) return undefined;
  const h = dp.neighbourAnswers(ip, iface, mac);
  return { own: h.own ?? 'unasked', others: h.others };
}

/**
 * Judge one static-MAC backend (`key` "ip@iface|mac") from what the host shows — whether its egress exists,
 * the egress's veth peer, the backend's neighbour entry (static-mac.ts observeStaticMac) — and record the
 * verdict: kept (stepStaticMac), a contradiction in `state.macConflicts` (logged once per transition), what to
 * ask the kernel (re-probe, resolve), and what its rules' statuses say of it (`state.staticMacUnverified`):
 * "not confirmed yet" within UNVERIFIED_GRACE_MS of its first judgement, "cannot be verified" after. The one
 * judgement of a static MAC: the reconciler's pass and a client's change ({@link judgeChangeStaticMacs}) both
 * record with it, so that a change's reply says what a read says. Returns the observation (undefined: its
 * egress is missing, the verdict forgotten until it is back).
 */
function judgeStaticMac(
  ctx: ExecContext,
  key: string,
  b: StaticMacBackend,
  exists: boolean,
  peer: PeerRead | undefined,
  e: NeighbourFact | undefined,
  t: number,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
): StaticMacObservation | undefined {
  const { dp, state } = ctx;
  const unverified = state.staticMacUnverified;
  const grace = state.staticMacGrace;
  const { ip, iface, mac } = b;
  if (!exists) {
    forgetStaticMac(state, key); // its egress is missing: judged afresh when it is back
    return undefined;
  }
  const answered = e ? answeredOf(dp, b.neighbour, e) : undefined;
  const obs = observeStaticMac(ip, iface, mac, peer, e && { ...e, answered }, staticMacHeard(dp, ip, iface, mac));
  if (obs.askMacs) state.staticMacAsk.set(key, obs.askMacs);
  else state.staticMacAsk.delete(key);
  if (obs.ask === 'reprobe') state.staticMacReprobe.add(key);
  else state.staticMacReprobe.delete(key);
  if (obs.ask === 'resolve') state.staticMacResolve.add(key);
  else state.staticMacResolve.delete(key);
  const next = stepStaticMac(state.staticMacs.get(key), mac, obs, t);
  if (next.heldSince !== undefined) state.staticMacHeld.add(key);
  else state.staticMacHeld.delete(key);
  const conflictWas = state.macConflicts.get(key);
  const unverifiedWas = unverified.get(key);
  state.staticMacs.set(key, next);
  if (next.verdict === 'contradicted') state.macConflicts.set(key, next.why);
  else state.macConflicts.delete(key);
  if (next.verdict === 'conflict') {
    // In the table (frames to the static MAC reach a host that answers for the address), but which host
    // receives cannot be known: said as a MAC that cannot be verified is (rule-status.ts staticMacStatus).
    unverified.set(key, next.why);
    grace.delete(key);
  } else if (next.verdict !== 'unverified') {
    unverified.delete(key);
    grace.delete(key);
  } else if (t - (next.since ?? 0) >= UNVERIFIED_GRACE_MS) {
    unverified.set(key, next.why);
    grace.delete(key);
  } else {
    // Not confirmed yet: nothing says it receives (its rules DEGRADED), and it is too early to say it cannot
    // be verified (the first answers take a pass or two). A change that did not wait for it says so.
    unverified.set(key, notConfirmedYet(state, key, next.why));
    grace.set(key, next.since ?? 0);
  }
  if (next.verdict !== 'unverified' || !grace.has(key)) state.staticMacNotWaited.delete(key);
  // Judged (the address answered, for or against it): a change naming the address waits for its answers again.
  if (next.verdict !== 'unverified') state.staticMacUnanswered.delete(b.neighbour);
  if (state.macConflicts.get(key) !== conflictWas || unverified.get(key) !== unverifiedWas) touchStaticMac(state, key);
  // Only a contradiction or an address conflict, and the end of one, is kept in state.logged: a MAC that agrees
  // and never did not has nothing to log (40 000 entries "in" with 10 000 rules of 4 static-MAC backends, ~5 MB
  // of heap).
  const logKey = `mac/${key}`;
  const contradicted = next.verdict === 'contradicted';
  const conflict = next.verdict === 'conflict';
  const was = state.logged.get(logKey);
  if (!contradicted && !conflict && was === undefined) return obs;
  // A conflict is logged once per set of MACs in it (where each was seen may change while it lasts).
  const line = contradicted ? `out|${next.why}` : conflict ? `conflict|${macsIn(next.why)}` : 'in';
  transition(logKey, line, (before) => {
    if (contradicted) {
      ctx.log.warn(
        { backend: ip, interface: iface, mac, reason: next.why },
        `backend ${ip} on ${iface}: ${next.why}: taken out of its rules' tables until they agree`,
      );
    } else if (conflict) {
      if (!was?.startsWith('conflict|')) state.reconcilerEvents.neighbour_conflicts++;
      ctx.log.warn(
        { backend: ip, interface: iface, mac, reason: next.why },
        `backend ${ip} on ${iface}: ${next.why} (asking each once a second)`,
      );
    } else if (was?.startsWith('conflict|')) {
      ctx.log.info(
        { backend: ip, interface: iface, mac },
        `backend ${ip} on ${iface}: the address conflict over its static MAC ${mac.toLowerCase()} is over (${next.verdict}: ${next.why})`,
      );
    } else if (before) {
      ctx.log.info(
        { backend: ip, interface: iface, mac },
        `backend ${ip} on ${iface}: its static MAC ${mac.toLowerCase()} agrees with the host again (${next.why}): back in its rules' tables`,
      );
    }
  });
  if (!contradicted && !conflict) state.logged.delete(logKey);
  return obs;
}

/**
 * The static MACs of `rules` no judgement has seen yet that the host contradicts already ("ip@iface|mac" ->
 * why): a veth peer of the egress with another MAC, a neighbour entry our ARP requests found with another MAC
 * (static-mac.ts observeStaticMac, the pass's own verdict). Nothing is recorded: a change plans with them
 * (plan-rules.ts keeps a contradicted backend out of the table, as the pass's re-apply would), so that its
 * reply says what a read right after it says; the judgement after the commit records them
 * ({@link judgeChangeStaticMacs}). Empty when the dataplane cannot read the neighbour table.
 */
export async function contradictedNewStaticMacs(
  ctx: ExecContext,
  rules: Iterable<Pick<RuleSpec, 'backends'>>,
): Promise<Map<string, string>> {
  const { dp, state } = ctx;
  const out = new Map<string, string>();
  if (!dp.neighbourTable) return out;
  const fresh: { key: string; ip: string; iface: string; mac: string }[] = [];
  for (const r of rules)
    for (const b of r.backends) {
      if (b.mac === '') continue;
      const key = staticMacKey(b.ip, b.interface, b.mac);
      if (!state.staticMacs.has(key) && !state.macConflicts.has(key))
        fresh.push({ key, ip: b.ip, iface: b.interface, mac: b.mac });
    }
  if (fresh.length === 0) return out;
  const table = await dp.neighbourTable();
  const egresses = new Map<string, { exists: boolean; peer?: PeerRead }>(); // each egress looked at once
  for (const b of fresh) {
    let g = egresses.get(b.iface);
    if (!g) {
      const exists = !!dp.lookupInterface(b.iface);
      egresses.set(b.iface, (g = { exists, peer: exists ? dp.vethPeerMac?.(b.iface) : undefined }));
    }
    if (!g.exists) continue;
    const nkey = `${b.ip}@${b.iface}`;
    const e = table.get(nkey);
    const answered = e ? answeredOf(dp, nkey, e) : undefined;
    const heard = staticMacHeard(dp, b.ip, b.iface, b.mac);
    const obs = observeStaticMac(b.ip, b.iface, b.mac, g.peer, e && { ...e, answered }, heard);
    if (obs.verdict === 'contradicted') out.set(b.key, obs.why);
  }
  return out;
}

/**
 * The static MACs a client's change names that no judgement has seen yet, judged and recorded as the
 * reconciler's pass judges them ({@link judgeStaticMac}), before the change's rules are judged for its reply
 * (resync.ts observeWrittenRules): one the host confirms already (its veth peer, a freshly confirmed neighbour
 * entry) is confirmed in the reply. Those it does not confirm yet, at most {@link STATIC_MAC_WAIT_MAX}, are
 * asked as a pass asks them (a resolve, a re-probe of the entry) and judged again as the neighbour table
 * changes, for at most `waitMs`: a host that answers within it is confirmed in the reply; any other is "not
 * confirmed yet" (DEGRADED), as a read says then. One whose entry nothing asks (set by hand, an address of
 * this host's) is not waited for, nor one whose entry FAILED (the host left the kernel's last requests for the
 * address unanswered; asked all the same), nor one an earlier change waited for in vain within
 * STATIC_MAC_UNANSWERED_MS (state.staticMacUnanswered: the kernel forgets FAILED entries under table pressure; a
 * pass's definitive verdict on the address ends that), and the status of those two says so ("not waited for by the
 * change that named it: ...", {@link notWaitedNote}) while they are not confirmed yet, in the reply and the reads
 * after it. The rest of a larger change are judged without waiting (the passes ask them).
 * Nothing when the dataplane cannot read the neighbour table (fakes: static MACs are not checked).
 */
export async function judgeChangeStaticMacs(
  ctx: ExecContext,
  rules: Iterable<Pick<RuleSpec, 'backends'>>,
  waitMs: number,
  pace: () => Promise<void> = async () => {},
): Promise<void> {
  const { dp, state } = ctx;
  if (!dp.neighbourTable) return;
  const fresh = new Map<string, StaticMacBackend>();
  let n = 0;
  for (const r of rules) {
    for (const b of r.backends) {
      if (b.mac === '') continue;
      const key = staticMacKey(b.ip, b.interface, b.mac);
      if (state.staticMacs.has(key) || fresh.has(key)) continue;
      fresh.set(key, { ip: b.ip, iface: b.interface, mac: b.mac, neighbour: `${b.ip}@${b.interface}`, rules: 1 });
    }
    if ((++n & 63) === 0) await pace();
  }
  if (fresh.size === 0) return;
  const transition = loggedTransition(state);
  const egresses = new Map<string, { exists: boolean; peer?: PeerRead }>();
  const egressOf = (iface: string) => {
    let g = egresses.get(iface);
    if (!g) {
      const exists = !!dp.lookupInterface(iface);
      g = { exists, peer: exists ? dp.vethPeerMac?.(iface) : undefined };
      egresses.set(iface, g);
    }
    return g;
  };
  /** Those whose entry FAILED when first judged: the kernel's last requests for the address went unanswered. */
  const failed = new Set<string>();
  /** Judge `keys` from one read of the neighbour table; those still not confirmed that an answer may confirm. */
  const judge = async (keys: Iterable<string>): Promise<string[]> => {
    const table = await dp.neighbourTable!();
    const t = ctx.mono();
    const open: string[] = [];
    for (const key of keys) {
      if ((++n & 63) === 0) await pace();
      const b = fresh.get(key)!;
      const { exists, peer } = egressOf(b.iface);
      const e = table.get(b.neighbour);
      const obs = judgeStaticMac(ctx, key, b, exists, peer, e, t, transition);
      const asking =
        !!obs?.ask || !!obs?.askMacs || !!e?.states.some((s) => s === 'PROBE' || s === 'DELAY' || s === 'INCOMPLETE');
      if (obs?.verdict !== 'unverified' || !asking) continue;
      open.push(key);
      if (e?.states.includes('FAILED')) failed.add(key);
    }
    return open;
  };
  const asked = (await judge(fresh.keys())).slice(0, STATIC_MAC_WAIT_MAX);
  if (asked.length === 0 || waitMs <= 0) return;
  // Asked now, as a pass asks them: the answers are what the reply waits for. Not for one whose entry FAILED (asked
  // all the same): a host that left the last requests unanswered is not waited for at every change naming it.
  for (const key of asked) {
    const b = fresh.get(key)!;
    if (state.staticMacReprobe.has(key)) dp.verifyNeighbour?.(b.ip, b.iface, true);
    else if (state.staticMacResolve.has(key)) dp.probeNeighbour?.(b.ip, b.iface);
    // Another MAC answers for the address: does the static one too (an address conflict) or not (contradicted)?
    for (const mac of state.staticMacAsk.get(key) ?? []) dp.askNeighbour?.(b.ip, b.iface, mac, true);
  }
  // Nor for an address an earlier change waited for in vain lately (state.staticMacUnanswered): the kernel's
  // FAILED entry says the same, but is forgotten under table pressure, and every change then waited the whole time.
  // Its status says so (the reply and the reads after it): the wait it rests on, when, and that none was made now.
  const now = ctx.mono();
  const unanswered = state.staticMacUnanswered;
  const notWaited = (key: string) => {
    const b = fresh.get(key)!;
    let u = unanswered.get(b.neighbour);
    if (u !== undefined && (now - u.at < 0 || now - u.at >= STATIC_MAC_UNANSWERED_MS)) u = undefined;
    if (u === undefined && !failed.has(key)) return false;
    if (state.staticMacGrace.has(key)) {
      state.staticMacNotWaited.set(key, notWaitedNote(b, u, now));
      state.staticMacUnverified.set(key, notConfirmedYet(state, key, state.staticMacs.get(key)!.why));
      touchStaticMac(state, key);
    }
    return true;
  };
  let open = asked.filter((key) => !notWaited(key));
  const end = performance.now() + waitMs;
  while (open.length) {
    const left = end - performance.now();
    if (left <= 0) break;
    await new Promise((r) => setTimeout(r, Math.min(STATIC_MAC_WAIT_STEP_MS, left)));
    open = await judge(open);
  }
  // Those still unanswered are remembered (bounded: the expired ones are dropped first, then the oldest).
  if (open.length === 0) return;
  const t = ctx.mono();
  for (const [k, u] of unanswered) if (t - u.at >= STATIC_MAC_UNANSWERED_MS || t < u.at) unanswered.delete(k);
  const wall = ctx.now();
  for (const key of open) {
    const nkey = fresh.get(key)!.neighbour;
    unanswered.delete(nkey);
    unanswered.set(nkey, { at: t, wall, waited: waitMs });
  }
  while (unanswered.size > STATIC_MAC_UNANSWERED_MAX) unanswered.delete(unanswered.keys().next().value!);
}

/**
 * What the status of a static MAC says while it is "not confirmed yet" (`why`: its verdict's "cannot be verified"
 * text), with the note of a change that did not wait for it (state.staticMacNotWaited), if one did not.
 */
function notConfirmedYet(state: CoreState, key: string, why: string): string {
  const note = state.staticMacNotWaited.get(key);
  return note === undefined ? unconfirmedYetWhy(why) : `${unconfirmedYetWhy(why)}; ${note}`;
}

/**
 * The note of a change that did not wait for the answer about `b`: its address waited for in vain by an earlier
 * change (`u`; `now` on the monotonic clock), else its neighbour entry FAILED. What was not done, what it rests on
 * and when, what happens instead.
 */
function notWaitedNote(
  b: Pick<StaticMacBackend, 'ip' | 'iface'>,
  u: StaticMacUnanswered | undefined,
  now: number,
): string {
  const why = u
    ? `an earlier change waited ${u.waited} ms for ARP answers about ${b.ip} on ${b.iface}, until ` +
      `${new Date(u.wall).toISOString()} (${Math.round((now - u.at) / 1000)} s before it), and no static MAC ` +
      'for the address was confirmed'
    : `the kernel's neighbour entry for ${b.ip} on ${b.iface} is FAILED (its own ARP requests went unanswered)`;
  return `not waited for by the change that named it: ${why}; asked all the same, the reconciler's passes judge the answer`;
}

/** The addresses {@link judgeChangeStaticMacs} remembers as unanswered at most. */
const STATIC_MAC_UNANSWERED_MAX = 4096;

/**
 * The flags word (map if_flags) of every interface our program runs on, or with a link or link counters,
 * compared at every pass (a point lookup each) with what it must be and rewritten where it differs, logged
 * as every other kernel entry: its generic-mode bit follows the mode the kernel reports for our program
 * there (step 1 above; another tool may have moved it to the other mode, or written the word: a native
 * ingress marked generic leaves offloaded senders' UDP checksums partial, and the receiver drops them),
 * its link bits and link counters' egress entries the links (tables.ts checkIfFlags). Run after the link step,
 * so that a link it re-applied is compared as written.
 */
function checkInterfaceFlags(
  ctx: ExecContext,
  links: ReadonlyMap<number, number>,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
): void {
  const { dp, state } = ctx;
  if (!dp.checkInterfaceFlags) return;
  const generic = new Map<number, boolean>();
  for (const a of state.attached.values()) {
    if (a.mode === 'native' || a.mode === 'generic') generic.set(a.ifindex, a.mode === 'generic');
  }
  try {
    const repaired = dp.checkInterfaceFlags(generic, links);
    if (repaired.length) {
      state.reconcilerEvents.kernel_repairs += repaired.length;
      repairedEntries(ctx, repaired, () =>
        ctx.log.warn(
          { repaired: repaired.map((r) => r.line), count: repaired.length },
          'kernel entries differed from the desired state: rewritten',
        ),
      );
    }
    state.flagsDrift = undefined;
    transition('if-flags', 'ok', (before) => {
      if (before) ctx.log.info({}, 'interface flags compared and rewritten again');
    });
  } catch (e) {
    state.flagsDrift = `the interface flags (map if_flags) could not be compared with the desired state or rewritten: ${(e as Error).message}`;
    transition('if-flags', `failed|${(e as Error).message}`, () => ctx.log.error({ err: e }, state.flagsDrift!));
  }
}

/**
 * Link counters only go up while their link exists (counters.proto); another tool can write their kernel entry
 * (`bpftool map update pinned PIN/maps/xc_stats key I value ...`), which nothing could repair (the counts it
 * replaced are gone). Each pass reads every link direction's counters (one batch read) and hands them to the
 * one detector of every served counter (counter-resets.ts: logged, counted, among the link's warnings), so
 * that a decrease is said even when nobody reads the counters.
 */
function watchLinkCounters(ctx: ExecContext, wanted: ReadonlyMap<number, number>): void {
  const { dp, state } = ctx;
  const froms = [...wanted.keys()].filter((f) => state.linkDirs.has(f));
  if (!froms.length) return;
  const readEpoch = state.counterResets.begin();
  let read: ReadonlyMap<number, { packets: bigint; bytes: bigint }>;
  try {
    read = dp.readCounters([], [], froms).links;
  } catch {
    return; // read again at the next pass; the counter service reports a read that fails
  }
  const env = { log: ctx.log, now: ctx.now(), mono: ctx.mono(), readEpoch };
  for (const from of froms) {
    const now = read.get(from);
    const d = state.linkDirs.get(from);
    if (!now || !d) continue;
    state.counterResets.observe(
      'link',
      from,
      linkWhat(d),
      'map xc_stats',
      { packets: now.packets, bytes: now.bytes },
      env,
    );
  }
}

/**
 * Kernel entries rewritten (`repaired`: each with its line, map, key and owner): a repair of each entry (fights.ts;
 * the entry is the subject, so that different entries changed in a row are no fight), `line` logged once when
 * any of them is not in a fight.
 */
function repairedEntries(
  ctx: ExecContext,
  repaired: readonly EntryRepair[],
  line: () => void,
  windowOf: (r: EntryRepair) => number = () => FIGHT_WINDOW_MS,
): void {
  let say = false;
  for (const r of repaired) {
    // Its owners (entry-owners.ts): the rules and link directions a fight over it makes DEGRADED / warned.
    ctx.state.fights.repaired(
      entrySubject(r, ctx.state),
      () => {
        say = true;
      },
      windowOf(r),
    );
  }
  if (say) line();
}

/** One kernel comparison when due (kernelCheckInterval); a failure is a problem until a later one succeeds. */
async function checkKernel(
  ctx: ExecContext,
  facts: Facts,
  skip: ReadonlySet<string>,
  pace: () => Promise<void>,
  transition: (key: string, line: string, log: (before: boolean) => void) => void,
): Promise<void> {
  const { state } = ctx;
  const t = ctx.mono();
  const interval = kernelCheckInterval(state.kernelCheckMs);
  const full = t - state.kernelCheckedAt >= interval;
  if (full) state.kernelCheckedAt = t;
  try {
    // Between two full comparisons, the rules whose entries, tables or backends the slot watcher saw move.
    let r: KernelCheck;
    if (full) {
      const freed = await clearFreeMoved(ctx, pace);
      // Once something is zeroed the pass keeps its turn (given to a change, it would log nothing: never said).
      r = await compareKernelEntries(ctx, facts, undefined, skip, freed.length ? pacer() : pace);
      r.repaired.unshift(...freed);
      state.kernelCheckMs = r.ms;
      ctx.log.debug(
        { rules: r.rules, ms: r.ms, differed: r.repaired.length },
        'kernel entries compared with the desired state',
      );
    } else {
      const was = state.watchError;
      const q = await quickCheck(ctx, facts, skip, pace);
      r = q;
      if (state.watchError && state.watchError !== was)
        ctx.log.warn(
          { err: state.watchError },
          `the watcher of rule entries, backend tables and backend entries stopped (${state.watchError}): another ` +
            "tool's write there is found by the full comparison only, every " +
            `${(interval / 1000).toFixed(1)} s`,
        );
      if (q.moved)
        ctx.log.debug(
          { moved: q.moved, reads: q.reads, readMs: q.readMs, rules: q.rules, ms: q.ms, differed: q.repaired.length },
          'kernel entries seen to move compared with the desired state',
        );
    }
    if (r.repaired.length) {
      state.reconcilerEvents.kernel_repairs += r.repaired.length;
      // What was rewritten is looked at again after the watcher's next read (Dataplane.rewatch).
      const again = { slots: [] as number[], backends: [] as number[] };
      for (const x of r.repaired) {
        if (x.map === 'rule_ring' || x.map === 'rule_cfg') again.slots.push(Number(x.key));
        else if (x.map === 'backends') again.backends.push(Number(x.key));
      }
      ctx.dp.rewatch?.(again.slots, again.backends);
      repairedEntries(
        ctx,
        r.repaired,
        () =>
          ctx.log.warn(
            { repaired: r.repaired.slice(0, 100).map((x) => x.line), count: r.repaired.length },
            'kernel entries differed from the desired state: rewritten',
          ),
        // What only the full comparison sees (match entries, source prefixes, the port index) is found undone once
        // per its interval: the window of a fight over it scales with that interval. What the slot watcher reads
        // (quickCheck) is found undone within a pass and the watcher's cover: the usual window unless that is long.
        (x) =>
          state.watchCoverMs !== undefined && QUICK_MAPS.has(x.map)
            ? fightWindow(KERNEL_CHECK_MIN_MS + state.watchCoverMs)
            : fightWindow(interval),
      );
    }
    // A failure is a problem until a full comparison succeeds (a quick one does not look at every map).
    if (!full) return;
    state.kernelDrift = undefined;
    transition('kernel-check', 'ok', (before) => {
      if (before) ctx.log.info({}, 'kernel entries compared and rewritten again');
    });
  } catch (e) {
    // The pass gave its turn to a change (nothing written, nothing observed): no failure. What the last
    // comparison found stands; the next is due after the interval, as after a complete one (due again at once,
    // a comparison longer than a turn would be given away again and again: the pass would never complete).
    if (e instanceof Preempted) throw e;
    state.kernelDrift = `kernel entries of the rules could not be compared with the desired state or rewritten: ${(e as Error).message}`;
    transition('kernel-check', `failed|${(e as Error).message}`, () => ctx.log.error({ err: e }, state.kernelDrift!));
  }
}

/**
 * The neighbour entries MAC-less backends use (`facts.neighbours`), each against what a probe of ours confirmed
 * (core/neighbour-hold.ts): an entry that changed from the confirmed MAC in the datapath to one no probe of
 * ours has had answered is probed at once and the confirmed MAC kept (`state.neighbourHolds`, and in `facts`
 * for this pass's plans and comparisons) until a MAC answers, the entry is set by hand, or
 * NEIGHBOUR_HOLD_MS passed. Each start and end is logged once, with what was observed.
 */
async function holdChangedNeighbours(ctx: ExecContext, facts: Facts, pace: () => Promise<void>): Promise<void> {
  const { dp, state } = ctx;
  if (!dp.neighbourAnswered) return;
  const t = ctx.mono();
  // Without ARP requests of our own nothing can ask an entry set by hand: followed at once, as the operator's.
  const canAsk = !dp.arpUnavailable?.();
  let n = 0;
  for (const [key, entry] of facts.neighbours) {
    if ((++n & 1023) === 0) await pace();
    let hold = state.neighbourHolds.get(key);
    const at = key.indexOf('@');
    const ip = key.slice(0, at);
    const iface = key.slice(at + 1);
    // Two MACs answering for the address at once (an address conflict): the MAC in the datapath kept, both asked.
    const conflict = dp.neighbourConflict?.(ip, iface);
    if (conflict) {
      // The MAC in the datapath is kept when it is one of them or still answers (not one found silent since).
      const w = state.neighbourMacs.get(key);
      const keep =
        w && (conflict.includes(w.toLowerCase()) || dp.neighbourAnswerAge?.(ip, iface, w) !== undefined)
          ? w
          : undefined;
      const next = conflictHold({ hold, macs: conflict, entry, written: keep, now: t });
      state.neighbourHolds.set(key, next);
      if (!hold?.conflict) {
        state.reconcilerEvents.neighbour_conflicts++;
        ctx.log.warn(
          { backend: ip, interface: iface, kept: next.kept, macs: next.conflict!.macs, entry: entry ?? null },
          conflictText(ip, iface, next),
        );
      }
      for (const mac of next.conflict!.macs) {
        if (dp.askNeighbour?.(ip, iface, mac)) state.reconcilerEvents.neighbour_probes++;
      }
      continue;
    }
    if (hold?.conflict) {
      // Over: only one MAC answered for CONFLICT_MS. The hold goes on as any (the kept MAC asked at once).
      const answering = hold.conflict.macs.find((m) => dp.neighbourAnswerAge?.(ip, iface, m) !== undefined);
      ctx.log.info(
        { backend: ip, interface: iface, kept: hold.kept, answering: answering ?? null, macs: hold.conflict.macs },
        conflictEndText(ip, iface, hold, answering, CONFLICT_MS, t),
      );
      const { conflict: _, ...rest } = hold;
      hold = { ...rest, since: t, candidate: entry ?? rest.candidate };
      state.neighbourHolds.set(key, hold);
    }
    // The usual pass: the entry holds the MAC written and confirmed; nothing to decide (nothing allocated).
    if (!hold && entry && entry === state.neighbourConfirmed.get(key) && entry === state.neighbourMacs.get(key))
      continue;
    const answered = !!entry && dp.neighbourAnswered(ip, iface)?.toLowerCase() === entry.toLowerCase();
    if (answered) state.neighbourConfirmed.set(key, entry);
    const keptMac = hold?.kept ?? state.neighbourMacs.get(key);
    const keptAge = keptMac && dp.neighbourAnswerAge?.(ip, iface, keptMac);
    const handSet = dp.neighbourHandSet?.(ip, iface);
    const step = stepNeighbourHold({
      entry,
      answered,
      ...(typeof keptAge === 'number' ? { keptAnswered: t - keptAge } : {}),
      handSet: handSet !== undefined && !canAsk,
      written: state.neighbourMacs.get(key),
      confirmed: state.neighbourConfirmed.get(key),
      hold,
      now: t,
    });
    if (step.hold) {
      if (handSet && step.hold.handSet !== handSet) step.hold = { ...step.hold, handSet };
      else if (!handSet && step.hold.handSet) {
        const { handSet: _, ...rest } = step.hold;
        step.hold = rest;
      }
    }
    if (step.ended) logHoldEnd(ctx, ip, iface, step.ended.hold, step.ended.why, entry, t);
    if (step.hold) state.neighbourHolds.set(key, step.hold);
    else if (hold) state.neighbourHolds.delete(key);
    // The confirmed MAC's own entry failed or went away (no new MAC was being waited for): not confirmed now.
    if (!entry && !step.hold) state.neighbourConfirmed.delete(key);
    if (step.started) {
      const h = step.hold!;
      state.reconcilerEvents.neighbour_changes_held++;
      ctx.log.info(
        { backend: ip, interface: iface, kept: h.kept, entry: h.candidate },
        `backend ${ip} on ${iface}: its neighbour entry changed from ${h.kept} to ${h.candidate}, which no ARP ` +
          `probe of ours has had answered: ${h.kept} (answered before) kept in the datapath until ` +
          `${h.candidate} answers (asking both; kept at most ${NEIGHBOUR_HOLD_MS} ms after ${h.kept} last answered)`,
      );
    } else if (step.hold && hold && step.hold.entry !== hold.entry) {
      // What the entry holds now, as observed: failed (the MAC probed did not answer), or another MAC.
      ctx.log.info(
        { backend: ip, interface: iface, kept: hold.kept, entry: step.hold.entry ?? null },
        step.hold.entry
          ? `backend ${ip} on ${iface}: its neighbour entry now holds ${step.hold.entry}, not answered yet either: ` +
              `${hold.kept} still kept, probing ${step.hold.entry}`
          : `backend ${ip} on ${iface}: ${hold.candidate} did not answer (its neighbour entry ` +
              `failed); ${hold.kept} still kept, resolving the entry again`,
      );
    }
    if (hold?.unconfirmed && step.hold && !step.hold.unconfirmed) {
      // A start's hold: the MAC kept from the datapath answered a request of ours (confirmed from now on).
      ctx.log.info(
        { backend: ip, interface: iface, kept: hold.kept, entry: step.hold.entry ?? null },
        `backend ${ip} on ${iface}: ${hold.kept} (kept from the datapath) answered an ARP request of ours: ` +
          `confirmed, still kept until ${step.hold.candidate} answers`,
      );
    }
    if (step.ask === 'probe') {
      if (dp.verifyNeighbour?.(ip, iface, true)) state.reconcilerEvents.neighbour_probes++;
    } else if (step.ask === 'resolve') dp.probeNeighbour?.(ip, iface);
    // The kept MAC asked too: kept while it answers (at most NEIGHBOUR_HOLD_MS after its last answer); at once
    // when a hold starts or another MAC answered (does it still answer? both: an address conflict).
    if (step.hold && dp.askNeighbour?.(ip, iface, step.hold.kept, step.askKeptNow))
      state.reconcilerEvents.neighbour_probes++;
  }
  // Holds on entries no backend uses any more (rule deleted, egress gone): ended.
  for (const [key, h] of state.neighbourHolds) {
    if (facts.neighbours.has(key)) continue;
    state.neighbourHolds.delete(key);
    const at = key.indexOf('@');
    logHoldEnd(ctx, key.slice(0, at), key.slice(at + 1), h, 'gone', undefined, t);
  }
  holdNeighbours(facts.neighbours, state.neighbourHolds);
}

/** The end of a hold, as observed (logged once: a hold ends once). */
function logHoldEnd(
  ctx: ExecContext,
  ip: string,
  iface: string,
  h: NeighbourHold,
  why: HoldEnd,
  entry: string | undefined,
  t: number,
): void {
  const ms = Math.round(t - h.since);
  const text = {
    answered: `${entry} answered an ARP probe of ours after ${ms} ms: written instead of ${h.kept}`,
    kept:
      `${h.kept} answered an ARP probe of ours${h.unconfirmed ? '' : ' again'} after ${ms} ms (${h.candidate} ` +
      `did not): kept, ${h.candidate} never written`,
    expired:
      `no MAC answered within ${NEIGHBOUR_HOLD_MS} ms (${h.candidate} probed, then the entry resolved again): ` +
      `following the neighbour entry (${entry ?? 'failed'}) instead of keeping ${h.kept}`,
    handset: `its neighbour entry was set by hand (${entry ?? 'no MAC'}): followed, ${h.kept} no longer kept`,
    back: `its neighbour entry holds ${h.kept} again (not answered yet, probing it): nothing to rewrite`,
    gone: `no backend uses its neighbour entry any more: ${h.kept} no longer kept`,
  }[why];
  const log = why === 'expired' ? ctx.log.warn : ctx.log.info;
  log.call(
    ctx.log,
    { backend: ip, interface: iface, kept: h.kept, entry: entry ?? null, why, ms },
    `backend ${ip} on ${iface}: ${text}`,
  );
}

/** How often every rule is checked and judged from scratch, whatever changed (ms): the safety net of the change-only passes. */
export const RULE_SWEEP_MS = 30_000;

/** The rules naming `iface` judged again (not checked for a re-apply: what changed is judged only). */
function touchInterfaceJudged(state: CoreState, iface: string): void {
  const names = state.ifaceRules.get(iface);
  if (names) for (const n of names) state.judgeDirty.add(n);
}

/** The rules naming backend `key` ("ip@iface") judged again. */
function touchBackendJudged(state: CoreState, key: string): void {
  const at = state.backendRules.get(key);
  if (at === undefined) return;
  if (typeof at === 'string') state.judgeDirty.add(at);
  else for (const n of at) state.judgeDirty.add(n);
}

/** Call `touch` with every key whose value differs between two maps (added, gone, or another value). */
function touchChangedKeys<V>(
  was: ReadonlyMap<string, V>,
  now: ReadonlyMap<string, V>,
  touch: (key: string) => void,
): void {
  if (was === now) return;
  for (const [key, v] of now) if (was.get(key) !== v || !was.has(key)) touch(key);
  for (const key of was.keys()) if (!now.has(key)) touch(key);
}

/**
 * Each interface's facts as this pass read them against the last pass's ({@link IfaceFacts}): the rules naming
 * one that changed are checked and judged again (CoreState.touchInterface). Allocates for the interfaces that
 * changed only (and a few strings per interface: a handful of interfaces, whatever the rule count).
 */
function touchChangedInterfaces(
  ctx: ExecContext,
  facts: Facts,
  movedTo: ReadonlyMap<string, string>,
  ingressProblems: ReadonlyMap<string, string>,
  ingressDown: ReadonlyMap<string, string>,
): void {
  const { state } = ctx;
  const fights = state.fights.byInterface();
  // Interfaces whose fight began or ended (their rules judged again even when no other fact changed).
  for (const iface of state.fights.takeChanged()) state.touchInterface(iface);
  for (const name of state.fights.takeChangedRules()) if (state.rules.has(name)) state.touchRule(name);
  for (const [iface, info] of facts.interfaces) {
    const link = facts.links.get(iface);
    const p = facts.peers.get(iface);
    const r = facts.napi.get(iface);
    const f: IfaceFacts = {
      ifindex: info?.ifindex,
      mac: info?.mac.toLowerCase(),
      up: link?.up,
      carrier: link?.carrier,
      mtu: link?.mtu,
      peer:
        p && ('unreadable' in p ? `unreadable|${p.unreadable}` : `${p.name}|${p.mtu}|${p.netns ?? ''}|${p.nsid ?? ''}`),
      napi: r && `${r.ok}|${r.unverified ?? ''}|${r.detail ?? ''}|${r.key ?? ''}`,
      movedTo: movedTo.get(iface),
      ingressProblem: ingressProblems.get(iface),
      ingressDown: ingressDown.get(iface),
      ingressSettings: state.ingressSettings.get(iface),
      fight: fights.get(iface),
    };
    const was = state.ifaceFacts.get(iface);
    if (was && sameFacts(was, f)) continue;
    state.ifaceFacts.set(iface, f);
    state.touchInterface(iface);
  }
  for (const iface of state.ifaceFacts.keys()) if (!facts.interfaces.has(iface)) state.ifaceFacts.delete(iface);
}

function sameFacts(a: IfaceFacts, b: IfaceFacts): boolean {
  return (
    a.ifindex === b.ifindex &&
    a.mac === b.mac &&
    a.up === b.up &&
    a.carrier === b.carrier &&
    a.mtu === b.mtu &&
    a.peer === b.peer &&
    a.napi === b.napi &&
    a.movedTo === b.movedTo &&
    a.ingressProblem === b.ingressProblem &&
    a.ingressDown === b.ingressDown &&
    a.ingressSettings === b.ingressSettings &&
    a.fight === b.fight
  );
}

/**
 * {@link judgeRule}, keeping the rule's status objects and texts when the judgement gives the same content (a
 * sweep judges every rule: nothing new is kept for a rule whose status did not change).
 */
function judgeKept(k: RuleKernel, rule: RuleSpec, o: RuleObservation): void {
  const status = k.status;
  const written = k.written;
  const ip = k.ingressProblems;
  const id = k.ingressDown;
  judgeRule(k, rule, o);
  if (ip && sameStrings(ip, k.ingressProblems!)) k.ingressProblems = ip;
  if (id && sameStrings(id, k.ingressDown!)) k.ingressDown = id;
  if (k.status === status || !sameStatus(status, k.status)) return;
  // Same base (k.written ?? k.status before), same content: the objects as they were.
  k.status = status;
  k.written = written;
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Two statuses with the same content (state, message, warnings, every backend's every field). */
function sameStatus(a: RuleKernel['status'], b: RuleKernel['status']): boolean {
  if (a.state !== b.state || a.message !== b.message || !sameStrings(a.warnings ?? [], b.warnings ?? [])) return false;
  if (a.backends.length !== b.backends.length) return false;
  for (let i = 0; i < a.backends.length; i++) {
    const x = a.backends[i] as unknown as Record<string, unknown>;
    const y = b.backends[i] as unknown as Record<string, unknown>;
    if (x === y) continue;
    const keys = Object.keys(x);
    if (keys.length !== Object.keys(y).length) return false;
    for (const key of keys) if (x[key] !== y[key]) return false;
  }
  return true;
}
