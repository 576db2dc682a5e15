/**
 * The core's in-memory state: the desired state users asked for (rules,
 * links) and the kernel resources it holds (rule slots, counter ids, backend
 * ids, attachments, link directions). Plain data and id pools, no I/O; the
 * execute step is the only writer during a transaction.
 */
import type { EgressWatch } from './egress-watch.js';
import { type PeerRead, type StaticMacBackend, type StaticMacEntry, type StaticMacState } from './static-mac.js';
import type { NeighbourHold } from './neighbour-hold.js';
import type { HostLoop } from './rule-loops.js';
import type { TapDropWatch } from './tap-drops.js';
import type { Dataplane, MatchKey, RedirectTarget, XdpStatus } from './dataplane.js';
import { ConditionStore } from './conditions.js';
import { CounterResets } from './counter-resets.js';
import { backendKeys } from './facts.js';
import { RepairFights } from './fights.js';
import { IdPool } from './ids.js';
import { LogDamper } from './log-damper.js';
import type { LinkSpec, RuleRecord, RuleStatus } from './model.js';
import { STATE_VERSION, type StoredState } from './store.js';

/** A source prefix as the datapath stores it. */
export interface PrefixBytes {
  length: number;
  addr: Uint8Array;
}

/** Kernel resources held by one rule. */
export interface RuleKernel {
  slot: number;
  statsId: number;
  matchKeys: MatchKey[];
  prefixes: PrefixBytes[];
  /** backend identity (ip@iface) -> kernel ids. */
  backends: Map<string, { id: number; statsId: number }>;
  /** ifindex of every interface the rule was written with (ingress and egress); -1 while missing. */
  ifindexes: Map<string, number>;
  /**
   * Set by a start (restore.ts) for a rule it did not write because an interface was missing: `ifindexes` then
   * holds what the start found (-1: missing), and the reconciler's next pass writes it with what is there,
   * saying so against what the start found (not as a change of the host). Gone once written.
   */
  waitingSinceStart?: true;
  /**
   * What the rule's conditions were last recorded from (status, ingress problems; {@link observedOf}): a pass
   * that judges the rule and finds it different records the rule's conditions with the pass's time
   * (Controller.observeRules).
   */
  observed?: ObservedRule;
  /** As written by the last transaction; `status` is this lowered by what resync observes since. */
  status: RuleStatus;
  /** The written status while `status` shows an observed problem (set by resync). */
  written?: RuleStatus;
  /** Problems of its ingress interfaces the last resync pass saw (missing, foreign program). */
  ingressProblems?: string[];
  /** Its ingress interfaces that exist but receive nothing (down, no carrier), as the last pass saw them. */
  ingressDown?: string[];
}

/** What a rule's conditions are made of (its status and ingress problems), kept to compare with (RuleKernel.observed). */
export interface ObservedRule {
  state: string;
  message: string;
  warnings: readonly string[];
  ingressProblems: readonly string[];
  ingressDown: readonly string[];
  backends: readonly { receiving: boolean; unverified: boolean; message: string }[];
}

/** What a rule's conditions are made of now, copied (statuses are replaced, not changed in place; copied all the same). */
export function observedOf(
  s: RuleStatus,
  ingressProblems: readonly string[] = [],
  ingressDown: readonly string[] = [],
): ObservedRule {
  return {
    state: s.state,
    message: s.message,
    warnings: [...(s.warnings ?? [])],
    ingressProblems: [...ingressProblems],
    ingressDown: [...ingressDown],
    backends: s.backends.map((b) => ({ receiving: !!b.receiving, unverified: !!b.unverified, message: b.message })),
  };
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** Whether `o` is what a rule's conditions are made of now ({@link observedOf} of the same arguments); allocates nothing. */
export function sameObserved(
  o: ObservedRule | undefined,
  s: RuleStatus,
  ingressProblems: readonly string[] = [],
  ingressDown: readonly string[] = [],
): boolean {
  if (!o || o.state !== s.state || o.message !== s.message) return false;
  if (!sameList(o.warnings, s.warnings ?? []) || !sameList(o.ingressProblems, ingressProblems)) return false;
  if (!sameList(o.ingressDown, ingressDown) || o.backends.length !== s.backends.length) return false;
  for (let i = 0; i < s.backends.length; i++) {
    const a = o.backends[i];
    const b = s.backends[i];
    if (a.receiving !== !!b.receiving || a.unverified !== !!b.unverified || a.message !== b.message) return false;
  }
  return true;
}

/**
 * What a reconciler pass read of an interface (CoreState.ifaceFacts), as far as a rule's re-apply check and
 * status judgement use it: a pass revisits the rules naming an interface only when one of these changed.
 */
export interface IfaceFacts {
  ifindex?: number;
  mac?: string;
  up?: boolean;
  carrier?: boolean;
  mtu?: number;
  peer?: string;
  napi?: string;
  movedTo?: string;
  ingressProblem?: string;
  ingressDown?: string;
  ingressSettings?: string;
  /** A repair fight on it (core/fights.ts), as the status text says it. */
  fight?: string;
}

/** An interface the program is attached to by us, with who needs it. */
export interface Attachment {
  ifindex: number;
  /** Who needed the program when it was attached (listings compute users from the desired state). */
  users: Set<string>;
  /** Why the last detach (no users left) failed; the attachment stays listed and is retried. */
  detachError?: string;
  /**
   * The XDP mode the kernel reported at the attach or at the reconciler's
   * last pass (which runs on every rtnetlink link event and every second):
   * a change reads it here instead of querying netlink.
   */
  mode?: XdpStatus['mode'];
}

/** The identity of a backend within a rule: its address and egress interface. */
export const backendKey = (b: { ip: string; interface: string }) => `${b.ip}@${b.interface}`;

/** A match key as a string (map key for "who holds this entry"). */
export function matchId(k: MatchKey): string {
  const d = k.daddr;
  // IPv4 without an intermediate array (a start computes 10 000s of these); the same text as the general form.
  if (d.length === 4) return `${k.ifindex}|${k.dport}|${k.proto}|${d[0]}.${d[1]}.${d[2]}.${d[3]}`;
  return `${k.ifindex}|${k.dport}|${k.proto}|${Array.from(d).join('.')}`;
}

/** Every interface a rule names (ingress and backends), once each. */
function recordInterfaces(rec: RuleRecord): Set<string> {
  return new Set([...rec.ingressInterfaces, ...rec.backends.map((b) => b.interface)]);
}

/** The key two rules must not share: (ingress interface, UDP port, destination). */
export const claimKey = (iface: string, port: number, destination: string) => `${iface}|${port}|${destination}`;

/** Add a static-MAC backend to indices by egress and by neighbour entry ("ip@iface"), or take it out. */
function indexStaticMac(
  byEgress: Map<string, Set<string>>,
  byNeighbour: Map<string, string | string[]>,
  key: string,
  b: StaticMacBackend,
  add: boolean,
): void {
  let keys = byEgress.get(b.iface);
  const at = byNeighbour.get(b.neighbour);
  if (add) {
    if (!keys) byEgress.set(b.iface, (keys = new Set()));
    keys.add(key);
    if (at === undefined) byNeighbour.set(b.neighbour, key);
    else if (typeof at === 'string') byNeighbour.set(b.neighbour, [at, key]);
    else at.push(key);
    return;
  }
  keys?.delete(key);
  if (keys?.size === 0) byEgress.delete(b.iface);
  if (at === key) byNeighbour.delete(b.neighbour);
  else if (Array.isArray(at)) {
    const rest = at.filter((k) => k !== key);
    byNeighbour.set(b.neighbour, rest.length === 1 ? rest[0] : rest);
  }
}

/** Add a rule's "rule/NAME/egress" to the users of each of its backends' egresses, or take it out; `changed` gets the egresses. */
function indexEgressRules(
  by: Map<string, Set<string>>,
  changed: Set<string> | undefined,
  name: string,
  rec: RuleRecord,
  add: boolean,
  /** Taking out: the record that takes its place (its egresses are kept). */
  next?: RuleRecord,
): void {
  if (rec.backends.length === 0) return;
  const user = `rule/${name}/egress`;
  for (const b of rec.backends) {
    if (next?.backends.some((x) => x.interface === b.interface)) continue;
    let u = by.get(b.interface);
    if (add) {
      if (!u) by.set(b.interface, (u = new Set()));
      if (u.has(user)) continue;
      u.add(user);
    } else {
      if (!u?.delete(user)) continue;
      if (u.size === 0) by.delete(b.interface);
    }
    changed?.add(b.interface);
  }
}

/** Add a rule's name to an index entry (one name, or several), or take it out. */
function indexName(m: Map<string, string | string[]>, key: string, name: string, add: boolean): void {
  const at = m.get(key);
  if (add) {
    if (at === undefined) m.set(key, name);
    else if (typeof at === 'string') {
      if (at !== name) m.set(key, [at, name]);
    } else if (!at.includes(name)) at.push(name);
    return;
  }
  if (at === name) m.delete(key);
  else if (Array.isArray(at)) {
    const rest = at.filter((n) => n !== name);
    if (rest.length === at.length) return;
    m.set(key, rest.length === 1 ? rest[0] : rest);
  }
}

/**
 * Index a rule's backends by neighbour entry ("ip@iface") into `byBackend`, count them by egress into `egresses`,
 * and whether it has one given without a MAC.
 */
function indexBackends(
  byBackend: Map<string, string | string[]>,
  egresses: Map<string, number>,
  macless: Set<string>,
  name: string,
  rec: RuleRecord,
  add: boolean,
): void {
  let none = true;
  for (const b of rec.backends) {
    indexName(byBackend, `${b.ip}@${b.interface}`, name, add);
    const c = (egresses.get(b.interface) ?? 0) + (add ? 1 : -1);
    if (c > 0) egresses.set(b.interface, c);
    else egresses.delete(b.interface);
    if (b.mac === '') none = false;
  }
  if (add && !none) macless.add(name);
  else macless.delete(name);
}

/**
 * The core's state, with indices kept up to date on every change so that a
 * change costs the same with 10 or 100 000 rules: who claims each
 * (ingress, port, destination), which slot holds each match key, how many
 * source prefixes are in the kernel, which rules use each interface. Rules
 * are only added, replaced and removed through {@link setRecord},
 * {@link setKernel} and {@link deleteRule}.
 */
export class CoreState {
  /**
   * Changes of the desired state made so far (rules and links created, updated or deleted by any path:
   * RPC, config file, restore, the reconciler's rewrites). A counter read made at another version is not
   * reused (CounterHub): it may show objects that are gone, or miss new ones.
   */
  desiredVersion = 0;
  /** Read-only outside this class: use setRecord / setKernel / deleteRule. */
  // The rule maps and their indices are replaced whole by replaceMany (never assign them elsewhere).
  rules: ReadonlyMap<string, RuleRecord> = new Map<string, RuleRecord>();
  ruleKernel: ReadonlyMap<string, RuleKernel> = new Map<string, RuleKernel>();
  readonly links = new Map<string, LinkSpec>();
  readonly slots: IdPool;
  readonly ruleStatsIds: IdPool;
  readonly backendIds: IdPool;
  readonly backendStatsIds: IdPool;
  /** Interfaces we attached, with who uses them. */
  readonly attached = new Map<string, Attachment>();
  /** Interfaces we need that another XDP program occupies (name -> its program id): left alone, reported. */
  readonly foreign = new Map<string, number>();
  /** Of those, the ones the daemon cannot identify (it cannot tell whether they are ours): why. */
  readonly unidentified = new Map<string, string>();
  /**
   * Interfaces the desired state names that were moved to another network namespace (core/moved.ts): what
   * the reconciler says about each (where, and whether our program is still attached there), until the
   * name is in this namespace again. `key` names the device there (nsid/ifindex/program id).
   */
  readonly moved = new Map<string, { text: string; left: boolean; key: string }>();
  /**
   * Names the desired state holds that are now an alternative name of a device (stored before names were
   * resolved to their device, or an altname given to a device after): not managed as an interface (one device,
   * one name), and said so instead of "does not exist" (resync.ts).
   */
  readonly altnames = new Map<string, string>();
  /**
   * Egresses missing from this namespace, looked for elsewhere (core/moved.ts followMovedEgresses): `text`
   * says where one was moved ('' when no namespace holds it; `where` the namespace), `age` counts the passes since the last look.
   */
  readonly egressMoved = new Map<string, { text: string; where?: string; age: number }>();
  /**
   * Ingress interfaces that keep generic mode although native was asked for (core/keep-mode.ts): a switch
   * at this start would have dropped what they forward. Name -> why (their status says it).
   */
  readonly keepMode = new Map<string, string>();
  /** When removing our program from each such device was last tried (by key, ms, monotonic). */
  readonly strayTried = new Map<string, number>();
  /** Reconciler passes since the last look for our program in other namespaces. */
  strayScanAge = 0;
  /** When the reconciler last looked for our program on interfaces of this namespace nothing uses (ctx.mono() ms). */
  strayLocalAt = -Infinity;
  /** Last status logged per rule or interface ("state|message"), so each transition is logged once. */
  readonly logged = new Map<string, string>();
  /** The keys of {@link logged} a pass sets for entries set by hand ("neigh-handset/…"): forgotten when gone. */
  readonly loggedHandSet = new Set<string>();
  /** The same for link MTU warnings ("link-mtu/…"). */
  readonly loggedLinkMtu = new Set<string>();
  /** Transition lines of a subject that flaps, summarised instead of logged one by one (log-damper.ts). */
  readonly logDamper = new LogDamper();
  /**
   * What the reconciler did to keep the datapath true, counted since the start (the
   * `xdpctl.reconciler.events` metric): neighbour entries it had the kernel verify (NUD_PROBE), backends
   * rewritten with a new neighbour MAC, neighbour entries changed to a MAC no probe of ours had answered
   * (the answered MAC kept until it does), address conflicts (two MACs answering ARP for one backend address),
   * egresses taken out for dropping every frame redirected to them, kernel entries rewritten, link counters seen
   * to go down (their kernel entry written by another tool).
   */
  readonly reconcilerEvents = {
    neighbour_probes: 0,
    neighbour_mac_changes: 0,
    neighbour_changes_held: 0,
    neighbour_conflicts: 0,
    egress_ejections: 0,
    egress_mac_changes: 0,
    kernel_repairs: 0,
    /** Unused: the sum of counterResets.counts is shown under this name (Controller.reconcilerEvents). */
    counter_resets: 0,
  };
  /**
   * Every served counter (rules, backends, link directions) as last read, to see one go down: a reset by
   * another tool, said once (counter-resets.ts). Its sum is `counter_resets` among the reconciler's events.
   */
  readonly counterResets = new CounterResets();
  /** When the reconciler last compared every rule's kernel entries with the desired state (ctx.mono() ms). */
  kernelCheckedAt = -Infinity;
  /** How long the last comparison took (ms): the next one waits kernelCheckInterval(it). */
  kernelCheckMs = 0;
  /** Why the kernel's entries could not be compared or rewritten at the last check (undefined: they were). */
  kernelDrift?: string;
  /**
   * Rule slots and backend ids whose kernel entries (rule_cfg, rule_ring, backends) the slot watcher saw move
   * (Dataplane.watchSlots) and no comparison has looked at since: the rules holding them are compared at the
   * next pass (kernel-check.ts quickCheck).
   */
  readonly movedSlots = new Set<number>();
  readonly movedBackends = new Set<number>();
  /** How long after a write the slot watcher reports it at worst (ms; undefined: no watcher, or it stopped). */
  watchCoverMs?: number;
  /** Why the slot watcher stopped (said once; the full comparison still runs). */
  watchError?: string;
  /** When a kernel comparison last read the per-port index entries of every port (kernel-check.ts PORT_SWEEP_MS). */
  portsSweptAt = -Infinity;
  /** Why the interface flags (if_flags) could not be compared or rewritten at the last pass (undefined: they were). */
  flagsDrift?: string;
  /** Link directions (`from>to`) whose egress's peer cannot be inspected, judged by the direction's counters. */
  readonly linkWatch = new Map<string, EgressWatch>();
  /**
   * Link directions in the devmap whose egress cannot be verified (its peer cannot be inspected and no
   * traffic has shown it yet), with why, as the reconciler's last pass found them.
   */
  linkUnverified = new Map<string, string>();
  /** Backend egresses whose peer cannot be inspected, judged by their backends' redirect counters. */
  readonly egressWatch = new Map<string, EgressWatch>();
  /** Tap backend egresses: their tx_dropped as the passes read it (core/tap-drops.ts). */
  readonly tapDrops = new Map<string, TapDropWatch>();
  /**
   * Egress name -> the last verdict a check of it made (core/unchecked.ts): what a check that cannot be made
   * keeps, instead of a verdict from nothing.
   */
  readonly redirectVerdicts = new Map<string, RedirectTarget>();
  /**
   * Interface name -> the device (ifindex) the facts kept under that name were observed on (core/device-identity.ts):
   * a name found on another device has them forgotten, not inherited.
   */
  readonly devices = new Map<string, number>();
  /**
   * Interface name -> its device as the last pass read it (Dataplane.deviceCounters: ifindex, and what only grows
   * over its life), and how many deletions had been reported before that read ({@link deletions}): a deletion of
   * that ifindex reported since, or (where reports were lost since) a lower count on it, is a device made again
   * in its place (core/device-identity.ts remadeDevices). Kept while the name is missing.
   */
  readonly deviceCounters = new Map<
    string,
    { ifindex: number; packets: bigint; carrierChanges: number; deletions: number }
  >();
  /**
   * Ifindex -> its last deletion the kernel reported (RTM_DELLINK: Dataplane.linkDeletions): the device's name,
   * when it was taken in (monotonic ms) and its number in {@link deletions}. A device found on that ifindex by a
   * later read is another one (core/device-identity.ts remadeDevices). At most 1024 of them, none older than 10
   * minutes.
   */
  readonly linkDeletions = new Map<number, { name: string; at: number; seq: number }>();
  /** How many deletions were reported (the last one's seq), reports found lost counted as one. */
  deletions = 0;
  /**
   * The seq ({@link deletions}) at which reports of deletions were last found lost, or the last one forgotten
   * (0: never): a read recorded before it may have missed one.
   */
  linkReportsLostAt = 0;

  /** The kernel reported ifindex `ifindex` (named `name`) deleted; taken in at `at` (monotonic ms). */
  linkDeleted(ifindex: number, name: string, at: number): void {
    this.linkDeletions.delete(ifindex);
    this.linkDeletions.set(ifindex, { name, at, seq: ++this.deletions });
    for (const [i, d] of this.linkDeletions) {
      if (this.linkDeletions.size <= 1024 && at - d.at <= 600_000) break;
      this.linkDeletions.delete(i);
      // A read before it can no longer be shown to come after every deletion of its ifindex: as if lost.
      this.linkReportsLostAt = Math.max(this.linkReportsLostAt, d.seq);
    }
  }

  /** Reports of deleted devices were lost (or none could be received) up to now. */
  linkReportsLost(): void {
    this.linkReportsLostAt = ++this.deletions;
  }
  /** "ip@iface" -> the MAC a backend given without MAC last received traffic with (the neighbour table's). */
  readonly neighbourMacs = new Map<string, string>();
  /**
   * "ip@iface" -> the entry's last MAC that answered an ARP probe of ours, as a reconciler pass saw it
   * (Dataplane.neighbourAnswered); forgotten when the entry fails or goes away outside a hold.
   */
  readonly neighbourConfirmed = new Map<string, string>();
  /**
   * "ip@iface" -> a confirmed MAC kept in the datapath while the entry holds a new MAC that has not answered a
   * probe of ours yet (core/neighbour-hold.ts): what every plan and kernel comparison writes for that entry.
   */
  readonly neighbourHolds = new Map<string, NeighbourHold>();
  /**
   * Interface name -> its own MAC as the reconciler's last pass read it: a backend entry's source MAC is
   * its egress's, so a change means the entries behind that egress are rewritten (resync.ts).
   */
  readonly egressMacs = new Map<string, string>();
  /** Interface name -> when the reconciler last checked the device settings XDP relies on there (ms, monotonic). */
  readonly ingressChecked = new Map<string, number>();
  /**
   * Interface name -> the settings XDP relies on there that someone changed and the reconciler could not put
   * back (an offload found on again that cannot be turned off), as its last check found them.
   */
  readonly ingressSettings = new Map<string, string>();
  /**
   * Repairs another tool keeps undoing (core/fights.ts): each repair kind records its repairs here; a fight
   * makes the rules and links on its interfaces DEGRADED / warned and is a datapath problem while it lasts.
   */
  readonly fights = new RepairFights();
  /** Per static-MAC backend ("ip@iface|mac", static-mac.ts): the reconciler's kept verdict. */
  readonly staticMacs = new Map<string, StaticMacState>();
  /** The static-MAC backends contradicted now ("ip@iface|mac" -> why): out of every table until they agree. */
  readonly macConflicts = new Map<string, string>();
  /**
   * Backends that close a forwarding loop the host made after their rules were accepted (a veth renamed, made
   * again or moved; rule-loops.ts, resync.ts judgeHostLoops): "rule|ip@iface" -> why; out of their tables
   * until the host changes back.
   */
  hostLoops: ReadonlyMap<string, string> = new Map();
  /**
   * Backends whose way back cannot be told (an upper device of a kind, or in a mode, whose receive path the loop
   * check does not know, above their veth peer: rule-loops.ts cannotTell): "rule|ip@iface" -> what was met, said
   * in their rules' warnings; they stay in their tables.
   */
  hostLoopsUnknown: ReadonlyMap<string, string> = new Map();
  /** The loops those backends close, each once (rule-loops.ts HostLoops.loops). */
  hostLoopList: ReadonlyMap<string, HostLoop> = new Map();
  /** What the last loop check was made from (resync.ts judgeHostLoops): it runs again only when that changed. */
  hostLoopInput?: string;
  /**
   * Links whose forwarding closes a loop the host made after they were accepted (both veth peers of a link enslaved
   * to one bridge, ...; plan-links.ts forwardingLoop, resync.ts judgeHostLoops): link key -> why; their directions
   * are kept out of the kernel's devmap (map xc_links) until the host no longer makes the loop.
   */
  linkLoops: ReadonlyMap<string, string> = new Map();
  /**
   * Link (linkKey) on no loop found -> whether its frames come back cannot be told, in words (a veth peer in another
   * namespace that leads on there, a device whose transmit is not followed: rule-loops.ts receiveTree): said in its
   * warnings and GetStatus's, never taken as no loop (resync.ts judgeLinkLoops).
   */
  linkLoopsUnknown: ReadonlyMap<string, string> = new Map();
  /**
   * The static-MAC backends the rules name ("ip@iface|mac"), with how many rules name each: kept by
   * {@link setRecord}, {@link deleteRule} and {@link replaceMany}, so that the reconciler does not collect them
   * from every rule at every pass (resync.ts judgeStaticMacs).
   */
  staticMacBackends = new Map<string, StaticMacBackend>();
  /** Keys no rule names any more since the reconciler's last pass: their verdicts are forgotten by it. */
  staticMacGone = new Set<string>();
  /** Keys a rule names since the reconciler's last pass: judged by it. */
  staticMacAdded = new Set<string>();
  /**
   * Keys the reconciler found to judge again and has not judged yet (a pass that gives its turn to a change
   * and ends keeps them for the next one).
   */
  staticMacDirty = new Set<string>();
  /** The static-MAC backends' keys by egress: what a pass judges again when the egress or its veth peer changed. */
  staticMacsByEgress = new Map<string, Set<string>>();
  /** The same by neighbour entry ("ip@iface"; one key, or several MACs): judged again when the entry changed. */
  staticMacsByNeighbour = new Map<string, string | string[]>();
  /** Per egress of a static-MAC backend: whether it existed and its veth peer, as the last pass read them. */
  readonly staticMacEgresses = new Map<string, { exists: boolean; peer?: PeerRead }>();
  /** Per neighbour entry a static-MAC backend uses: what the last pass read of it (static-mac.ts StaticMacEntry). */
  readonly staticMacEntries = new Map<string, StaticMacEntry>();
  /** The static MACs whose last judgement asked for a re-probe of their entry (asked at every pass). */
  readonly staticMacReprobe = new Set<string>();
  /** The same for a resolve (at most RESOLVES_PER_PASS asked per pass, the first ones in this set). */
  readonly staticMacResolve = new Set<string>();
  /**
   * The static MACs another MAC answers for (static-mac.ts StaticMacObservation.askMacs) -> the MACs asked by an
   * ARP request of ours at every pass (once a second: the static one, and in an address conflict every MAC of
   * it); judged again at every pass.
   */
  readonly staticMacAsk = new Map<string, string[]>();
  /**
   * The static MACs whose definitive verdict is kept while nothing definitive is observed (static-mac.ts
   * StaticMacState.heldSince): judged again at every pass, so that it ends when its hold does.
   */
  readonly staticMacHeld = new Set<string>();
  /** The static MACs whose kept verdict is "cannot be verified", past UNVERIFIED_GRACE_MS: key -> why. */
  readonly staticMacUnverified = new Map<string, string>();
  /** The same within UNVERIFIED_GRACE_MS of their first judgement: key -> since (ms, monotonic). */
  readonly staticMacGrace = new Map<string, number>();
  /**
   * Addresses ("ip@iface") a client's change asked about and waited the whole STATIC_MAC_WAIT_MS for, unanswered:
   * when (ms, monotonic). A change naming one within STATIC_MAC_UNANSWERED_MS does not wait again (resync.ts
   * judgeChangeStaticMacs), as for an entry the kernel marked FAILED: the kernel forgets those under table
   * pressure (10 000 rules of 4 unanswered static MACs), and then every change waited the whole time.
   */
  readonly staticMacUnanswered = new Map<string, StaticMacUnanswered>();
  /**
   * Static MACs ("ip@iface|mac") a client's change named but did not wait for, since their address is in
   * {@link staticMacUnanswered} or their neighbour entry FAILED: what their status adds to "not confirmed yet"
   * (resync.ts notWaitedNote), so that the reply and the reads after it say the wait was not made, and what (and
   * when) it rests on. Dropped with the grace (UNVERIFIED_GRACE_MS: then "cannot be verified", the passes' own
   * asking) or a definitive verdict.
   */
  readonly staticMacNotWaited = new Map<string, string>();
  /** When the reconciler last judged every static MAC from scratch (ms, monotonic). */
  staticMacSweptAt = -Infinity;
  /** Rules the datapath refused at start or resync: when to try again (ms, monotonic). */
  readonly failed = new Map<string, number>();
  /** Conditions of rules, links and interfaces with their transition times. */
  readonly conditions = new ConditionStore();
  /** Link directions in the kernel: ingress ifindex -> names. */
  readonly linkDirs = new Map<number, { from: string; to: string }>();
  /**
   * Link directions (ingress ifindex -> egress ifindex) a reconciler pass found in the devmap as wanted: one
   * found changed later was undone by another tool (a repair, core/fights.ts), not made again for a new device.
   */
  readonly linkSeen = new Map<number, number>();
  /**
   * Link directions (`from>to`) whose egress cannot transmit what the link gives it, with why (down,
   * no carrier, no native XDP redirects), as the reconciler's last pass found them.
   */
  linkEgress = new Map<string, string>();
  /** The wanted link directions (ingress ifindex -> egress ifindex) whose re-apply last failed; not retried until they change. */
  linkReapplyFailed?: string;
  /**
   * Why that re-apply failed (the kernel's error: a map another tool froze refuses every write), while the
   * devmap still differs from the links: a datapath problem, and each link direction not in the devmap
   * says it.
   */
  linkReapplyError?: string;
  /** Link directions (`from>to`) that forward, with a warning (an egress MTU below the ingress's). */
  linkWarnings = new Map<string, string>();
  /**
   * Link directions (`from>to`) whose egress is a veth whose peer runs what may drop every frame redirected into
   * it, none of it ours (an XDP program, tc filters or tcx programs on its ingress: Dataplane.vethPeerXdp), with
   * what is said ("a -> b: veth peer eth0 in netns n runs XDP program id 42 (...): delivery past it cannot be
   * verified"), as the reconciler's last pass (or a links write right after it) found them.
   */
  linkPeer = new Map<string, string>();
  /** What the log last said of each link direction's egress's veth peer ({@link linkPeer}): one line as it appears, one as it goes. */
  readonly linkPeerSaid = new Map<string, string>();
  /** claimKey -> the rule that claims it. */
  claims = new Map<string, string>();
  /** matchId -> the slot the kernel's match entry points at. */
  matchHolders = new Map<string, number>();
  /** Source-prefix entries the rules hold in the kernel. */
  srcPrefixes = 0;
  /** Interface -> "rule/NAME" users (links are added on demand: they are few). */
  private ruleUsers = new Map<string, Set<string>>();
  /** Interface -> names of the rules that name it (ingress or backend): what resync revisits when it changes. */
  ifaceRules = new Map<string, Set<string>>();
  /** Backend "ip@iface" -> the rules that name it (one name, or several): what a pass revisits when its facts change. */
  backendRules = new Map<string, string | string[]>();
  /** The rules with a backend given without a MAC (their neighbour entries are probed at every pass). */
  maclessRules = new Set<string>();
  /** Of {@link maclessRules}, those the current pass has still to visit (undefined: no pass under way). */
  maclessRound?: Set<string>;
  /** Backend egress -> how many backends of the rules use it. */
  egressBackends = new Map<string, number>();
  /** Backend egress -> "rule/NAME/egress" of every rule with a backend on it (egress-notes.ts). */
  egressRules = new Map<string, Set<string>>();
  /** Egresses whose {@link egressRules} changed since the controller's egress facts last read them. */
  readonly egressRulesChanged = new Set<string>();
  /**
   * Rules whose record, kernel record, status or place in {@link rules} may have changed since the controller's
   * egress facts last read them (egress-notes.ts): marked with every {@link touchRule}, deletion, and status
   * judgement that gives a new status object.
   */
  readonly egressNotesDirty = new Set<string>();
  /** The same for the rules' problem lines (rule-problems.ts). */
  readonly problemsDirty = new Set<string>();
  /** Each rule's place in the order of {@link rules} (a Map's insertion order), as a number that grows. */
  readonly ruleOrder = new Map<string, number>();
  /** The same for {@link ruleKernel}. */
  readonly kernelOrder = new Map<string, number>();
  private ruleOrderNext = 0;

  /**
   * A rule whose status (or record, kernel record, or place) may have changed: what is kept from the rules'
   * statuses reads it again ({@link egressNotesDirty}, {@link problemsDirty}).
   */
  markStatus(name: string): void {
    this.egressNotesDirty.add(name);
    this.problemsDirty.add(name);
  }
  /**
   * Rules the reconciler must check again for a re-apply (their interfaces, backends' facts or written status
   * changed since it last did: resync.ts), kept until checked: a pass that gives its turn to a change leaves the
   * rest to the next one.
   */
  reapplyDirty = new Set<string>();
  /** The same for the judgement of their status (rule-status judgeRule). */
  judgeDirty = new Set<string>();
  /** Rules whose conditions' inputs the pass under way found changed (ResyncResult.changed), kept across its turns. */
  readonly passChanged = new Set<string>();
  /** When the reconciler last put every rule in both sets (its periodic full sweep; ms, monotonic). */
  ruleSweptAt = -Infinity;
  /** What the last pass read of each interface the rules name ({@link IfaceFacts}). */
  readonly ifaceFacts = new Map<string, IfaceFacts>();
  /** Per-backend observations of the last judgement ("ip@iface" keyed), to find the ones that changed (resync.ts). */
  lastObservation: {
    unverifiedEgress: ReadonlyMap<string, string>;
    unanswered: ReadonlyMap<string, string>;
    handSet: ReadonlyMap<string, string>;
    holds: ReadonlyMap<string, NeighbourHold>;
    via: ReadonlyMap<string, string>;
    foreignEgress: ReadonlyMap<string, string>;
    /**
     * Backend egress -> what it has on its receive path besides an XDP program (rule-status.ts egressOwnPhrase), read
     * with foreignEgress: what its interface row says (Controller.interfaceView).
     */
    egressOwn: ReadonlyMap<string, string>;
    peerXdp: ReadonlyMap<string, string>;
    route: ReadonlyMap<string, string>;
    tapDrops: ReadonlyMap<string, string>;
    arpUnavailable?: string;
    neighbourUnread?: string;
  } = {
    unverifiedEgress: new Map(),
    unanswered: new Map(),
    handSet: new Map(),
    holds: new Map(),
    via: new Map(),
    foreignEgress: new Map(),
    egressOwn: new Map(),
    peerXdp: new Map(),
    route: new Map(),
    tapDrops: new Map(),
  };

  /** A rule to check and judge again at the next pass (its record, kernel record or status changed). */
  touchRule(name: string): void {
    this.reapplyDirty.add(name);
    this.judgeDirty.add(name);
    this.markStatus(name);
  }

  /** Every rule that names this interface ({@link touchRule}). */
  touchInterface(iface: string): void {
    const names = this.ifaceRules.get(iface);
    if (names) for (const n of names) this.touchRule(n);
  }

  /** Every rule that names this backend ("ip@iface"; {@link touchRule}). */
  touchBackend(key: string): void {
    const at = this.backendRules.get(key);
    if (at === undefined) return;
    if (typeof at === 'string') this.touchRule(at);
    else for (const n of at) this.touchRule(n);
  }

  /**
   * Forget what the reconciler judged and asked about the static-MAC backend `key` ("ip@iface|mac"): its verdict,
   * its contradiction and the line logged for it, its "cannot be verified" and grace, the probes it asked for and
   * its held verdict. What else that calls for (touching its rules, judging it again) is the caller's.
   */
  forgetStaticMacVerdict(key: string): void {
    this.staticMacs.delete(key);
    this.macConflicts.delete(key);
    this.logged.delete(`mac/${key}`);
    this.staticMacUnverified.delete(key);
    this.staticMacGrace.delete(key);
    this.staticMacReprobe.delete(key);
    this.staticMacResolve.delete(key);
    this.staticMacAsk.delete(key);
    this.staticMacHeld.delete(key);
    this.staticMacNotWaited.delete(key);
  }

  constructor(capacity: Dataplane['capacity']) {
    this.slots = new IdPool(1, capacity.ruleSlots);
    this.ruleStatsIds = new IdPool(1, capacity.statsIds);
    this.backendIds = new IdPool(1, capacity.backends);
    this.backendStatsIds = new IdPool(1, capacity.backends);
  }

  /** Rule names in code-unit order, kept until the set of names changes (see {@link ruleNames}). */
  private sortedNames?: string[];

  /**
   * Every rule's name in code-unit order (what page tokens compare), sorted
   * once per change of the set of names: a page of ListRules costs its size,
   * not the rule count.
   */
  ruleNames(): readonly string[] {
    return (this.sortedNames ??= [...this.rules.keys()].sort());
  }

  /** Record what a rule is (its spec, generation, times), updating the claim and user indices. */
  setRecord(name: string, rec: RuleRecord): void {
    if (!this.rules.has(name)) this.sortedNames = undefined;
    this.desiredVersion++;
    const before = this.rules.get(name);
    this.dropRecord(name, true);
    (this.rules as Map<string, RuleRecord>).set(name, rec);
    this.ruleOrder.set(name, ++this.ruleOrderNext); // (set again: at the end of the map's order)
    this.countStaticMacs(this.staticMacBackends, rec, 1);
    // The egresses' users change only where its egresses do (an update on the same egresses changes none).
    if (before) indexEgressRules(this.egressRules, this.egressRulesChanged, name, before, false, rec);
    indexEgressRules(this.egressRules, this.egressRulesChanged, name, rec, true);
    indexBackends(this.backendRules, this.egressBackends, this.maclessRules, name, rec, true);
    this.touchRule(name);
    for (const i of recordInterfaces(rec)) {
      let r = this.ifaceRules.get(i);
      if (!r) this.ifaceRules.set(i, (r = new Set()));
      r.add(name);
    }
    for (const i of rec.ingressInterfaces) {
      this.claims.set(claimKey(i, rec.port, rec.destination), name);
      let u = this.ruleUsers.get(i);
      if (!u) this.ruleUsers.set(i, (u = new Set()));
      u.add(`rule/${name}`);
    }
  }

  /** Record the kernel resources a rule holds, updating the match and prefix indices. */
  setKernel(name: string, k: RuleKernel): void {
    this.desiredVersion++;
    this.dropKernel(name);
    (this.ruleKernel as Map<string, RuleKernel>).set(name, k);
    this.kernelOrder.set(name, ++this.ruleOrderNext); // (at the end of the map's order)
    this.touchRule(name);
    for (const m of k.matchKeys) this.matchHolders.set(matchId(m), k.slot);
    this.srcPrefixes += k.prefixes.length;
  }

  /**
   * Many rule changes at once (a large ApplyRules): `set` records and kernel
   * records to set, `del` names to forget. The new maps and every index are
   * built beside the current ones, awaiting `pace` (a pacer) as they go, and
   * swapped in at once: readers in between see the state before the change,
   * whole. O(all rules), where {@link setRecord} and {@link setKernel} per
   * rule cost O(changed rules) but held the event loop for 130-290 ms with
   * 10 000 changes (their index updates allocate per rule).
   */
  async replaceMany(
    set: readonly [string, RuleRecord, RuleKernel][],
    del: readonly string[],
    pace: () => Promise<void>,
  ): Promise<void> {
    const rules = new Map(this.rules);
    const ruleKernel = new Map(this.ruleKernel);
    // The sorted names stay when the set of names does (10 000 rules replaced under their names: the
    // first read after the swap would sort them again, ~10 ms on the event loop).
    let sameNames = true;
    for (const n of del) {
      if (rules.delete(n)) sameNames = false;
      ruleKernel.delete(n);
      this.conditions.forget(`rule/${n}`);
    }
    let i = 0;
    for (const [n, rec, k] of set) {
      if (sameNames && !rules.has(n)) sameNames = false;
      rules.set(n, rec);
      ruleKernel.set(n, k);
      if ((++i & 255) === 0) await pace();
    }
    const backendRules = new Map<string, string | string[]>();
    const egressBackends = new Map<string, number>();
    const maclessRules = new Set<string>();
    const claims = new Map<string, string>();
    const ruleUsers = new Map<string, Set<string>>();
    const ifaceRules = new Map<string, Set<string>>();
    const staticMacs = new Map<string, StaticMacBackend>();
    const egressRules = new Map<string, Set<string>>();
    for (const [name, rec] of rules) {
      this.countStaticMacs(staticMacs, rec, 1);
      indexEgressRules(egressRules, undefined, name, rec, true);
      indexBackends(backendRules, egressBackends, maclessRules, name, rec, true);
      for (const iface of recordInterfaces(rec)) {
        let r = ifaceRules.get(iface);
        if (!r) ifaceRules.set(iface, (r = new Set()));
        r.add(name);
      }
      for (const iface of rec.ingressInterfaces) {
        claims.set(claimKey(iface, rec.port, rec.destination), name);
        let u = ruleUsers.get(iface);
        if (!u) ruleUsers.set(iface, (u = new Set()));
        u.add(`rule/${name}`);
      }
      if ((++i & 255) === 0) await pace();
    }
    const matchHolders = new Map<string, number>();
    let srcPrefixes = 0;
    for (const k of ruleKernel.values()) {
      for (const m of k.matchKeys) matchHolders.set(matchId(m), k.slot);
      srcPrefixes += k.prefixes.length;
      if ((++i & 255) === 0) await pace();
    }
    // The static-MAC indices of the new set, and what the reconciler must judge or forget, built here too.
    const macIndex = {
      byEgress: new Map<string, Set<string>>(),
      byNeighbour: new Map<string, string | string[]>(),
      added: new Set<string>(),
      gone: new Set<string>(),
    };
    for (const [key, b] of staticMacs) {
      indexStaticMac(macIndex.byEgress, macIndex.byNeighbour, key, b, true);
      if (!this.staticMacBackends.has(key) || this.staticMacAdded.has(key)) macIndex.added.add(key);
      if ((++i & 1023) === 0) await pace();
    }
    for (const key of this.staticMacGone) if (!staticMacs.has(key)) macIndex.gone.add(key);
    for (const key of this.staticMacBackends.keys()) {
      if (!staticMacs.has(key)) macIndex.gone.add(key);
      if ((++i & 1023) === 0) await pace();
    }
    this.rules = rules;
    this.ruleKernel = ruleKernel;
    // The rules' places as the new map has them: the deleted gone, the new ones last in the order set.
    for (const n of del) {
      this.ruleOrder.delete(n);
      this.kernelOrder.delete(n);
      this.markStatus(n);
    }
    for (const [n] of set) {
      if (!this.ruleOrder.has(n)) this.ruleOrder.set(n, ++this.ruleOrderNext);
      if (!this.kernelOrder.has(n)) this.kernelOrder.set(n, ++this.ruleOrderNext);
    }
    for (const e of this.egressRules.keys()) if (!egressRules.has(e)) this.egressRulesChanged.add(e);
    for (const e of egressRules.keys()) this.egressRulesChanged.add(e);
    this.egressRules = egressRules;
    this.backendRules = backendRules;
    this.egressBackends = egressBackends;
    this.maclessRules = maclessRules;
    for (const [n] of set) this.touchRule(n);
    this.staticMacBackends = staticMacs;
    this.staticMacsByEgress = macIndex.byEgress;
    this.staticMacsByNeighbour = macIndex.byNeighbour;
    this.staticMacAdded = macIndex.added;
    this.staticMacGone = macIndex.gone;
    this.claims = claims;
    this.ruleUsers = ruleUsers;
    this.ifaceRules = ifaceRules;
    this.matchHolders = matchHolders;
    this.srcPrefixes = srcPrefixes;
    this.desiredVersion++;
    if (!sameNames) this.sortedNames = undefined;
  }

  /** Forget a rule. */
  deleteRule(name: string): void {
    this.desiredVersion++;
    this.conditions.forget(`rule/${name}`);
    this.dropRecord(name);
    this.dropKernel(name);
  }

  /** Count the static-MAC backends of `rec` into `into` (`by` 1) or out of it (-1). */
  private countStaticMacs(into: Map<string, StaticMacBackend>, rec: RuleRecord, by: 1 | -1): void {
    const live = into === this.staticMacBackends;
    for (const b of rec.backends) {
      if (b.mac === '') continue;
      const keys = backendKeys(b); // flat strings, made once per backend spec and shared (flat.ts)
      const key = keys.staticMac;
      const e = into.get(key);
      if (by > 0) {
        if (e) {
          e.rules++;
          e.mac = b.mac; // the last rule's spelling, as a pass that collects them in rule order
        } else {
          const n = { ip: b.ip, iface: b.interface, mac: b.mac, neighbour: keys.neighbour, rules: 1 };
          into.set(key, n);
          if (live) this.indexStaticMac(key, n, true);
        }
      } else if (e && --e.rules <= 0) {
        into.delete(key);
        if (live) this.indexStaticMac(key, e, false);
      }
    }
  }

  /** Add a static-MAC backend to the indices by egress and by neighbour entry, or take it out. */
  private indexStaticMac(key: string, b: StaticMacBackend, add: boolean): void {
    if (add) {
      this.staticMacGone.delete(key);
      this.staticMacAdded.add(key);
    } else {
      this.staticMacAdded.delete(key);
      this.staticMacGone.add(key);
    }
    indexStaticMac(this.staticMacsByEgress, this.staticMacsByNeighbour, key, b, add);
  }

  /** `replacing`: setRecord puts it back at once (it updates the egresses' users itself). */
  private dropRecord(name: string, replacing = false): void {
    const rec = this.rules.get(name);
    if (!rec) return;
    (this.rules as Map<string, RuleRecord>).delete(name);
    this.ruleOrder.delete(name);
    this.markStatus(name);
    this.countStaticMacs(this.staticMacBackends, rec, -1);
    if (!replacing) indexEgressRules(this.egressRules, this.egressRulesChanged, name, rec, false);
    indexBackends(this.backendRules, this.egressBackends, this.maclessRules, name, rec, false);
    this.sortedNames = undefined;
    for (const i of recordInterfaces(rec)) {
      const r = this.ifaceRules.get(i);
      r?.delete(name);
      if (r?.size === 0) this.ifaceRules.delete(i);
    }
    for (const i of rec.ingressInterfaces) {
      const k = claimKey(i, rec.port, rec.destination);
      if (this.claims.get(k) === name) this.claims.delete(k);
      const u = this.ruleUsers.get(i);
      u?.delete(`rule/${name}`);
      if (u?.size === 0) this.ruleUsers.delete(i);
    }
  }

  private dropKernel(name: string): void {
    const k = this.ruleKernel.get(name);
    if (!k) return;
    (this.ruleKernel as Map<string, RuleKernel>).delete(name);
    this.kernelOrder.delete(name);
    this.markStatus(name);
    for (const m of k.matchKeys) {
      const id = matchId(m);
      if (this.matchHolders.get(id) === k.slot) this.matchHolders.delete(id);
    }
    this.srcPrefixes -= k.prefixes.length;
  }

  /**
   * Who uses an interface now ("rule/web", "link/a:b"), or undefined: from
   * the rule index and the (few) links.
   */
  usersOf(iface: string, links: ReadonlyMap<string, LinkSpec> = this.links): Set<string> | undefined {
    const out = new Set(this.ruleUsers.get(iface));
    for (const l of links.values()) {
      if (l.a === iface || (l.direction === 'both' && l.b === iface)) out.add(`link/${l.a}:${l.b}`);
    }
    return out.size ? out : undefined;
  }

  /**
   * Whether anything uses an interface now ({@link usersOf} without building
   * the set: 10 000 rules on one ingress made every change copy 10 000 names).
   */
  isUsed(iface: string, links: ReadonlyMap<string, LinkSpec> = this.links): boolean {
    if ((this.ruleUsers.get(iface)?.size ?? 0) > 0) return true;
    for (const l of links.values()) if (l.a === iface || (l.direction === 'both' && l.b === iface)) return true;
    return false;
  }

  /**
   * {@link interfaceUsers} without copying the rules' users (10 000 rules on one ingress: a 10 000-name copy at
   * every reconciler pass): the sets are the index's own, copied only where links add to them. Read them, copy
   * what you keep.
   */
  interfaceUsersView(): Map<string, ReadonlySet<string>> {
    const out = new Map<string, ReadonlySet<string>>(this.ruleUsers);
    for (const l of this.links.values()) {
      for (const i of l.direction === 'both' ? [l.a, l.b] : [l.a]) {
        const u = new Set(out.get(i));
        u.add(`link/${l.a}:${l.b}`);
        out.set(i, u);
      }
    }
    return out;
  }

  /** Every interface the desired state needs the program on, with its users. */
  interfaceUsers(): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    for (const [i, u] of this.ruleUsers) out.set(i, new Set(u));
    for (const l of this.links.values()) {
      for (const i of l.direction === 'both' ? [l.a, l.b] : [l.a]) {
        if (!out.has(i)) out.set(i, new Set());
        out.get(i)!.add(`link/${l.a}:${l.b}`);
      }
    }
    return out;
  }

  /** The desired state with the kernel ids that keep counters across restarts. */
  stored(): StoredState {
    return {
      version: STATE_VERSION,
      rules: [...this.rules.values()].map((r) => {
        const k = this.ruleKernel.get(r.name);
        return {
          ...r,
          kernel: k && {
            slot: k.slot,
            statsId: k.statsId,
            backends: Object.fromEntries(k.backends),
          },
        };
      }),
      links: [...this.links.values()],
    };
  }
}

/** An address a client's change waited for in vain (CoreState.staticMacUnanswered). */
export interface StaticMacUnanswered {
  /** When the wait ended (ms, monotonic). */
  at: number;
  /** The same by the wall clock (ms since the epoch): said in the status of a change that did not wait. */
  wall: number;
  /** How long it waited (ms). */
  waited: number;
}
