/**
 * The controller owns the desired state (rules, links, managed interfaces)
 * and runs every change as a transaction, one at a time: validate, fetch the
 * facts it needs (facts.ts), compute the plan with no I/O (plan-rules.ts,
 * plan-links.ts), execute it over an undo log (execute.ts), then persist.
 * Any failure before the commit point leaves the kernel maps and this state
 * exactly as they were. Start-up lives in restore.ts, interface churn in
 * resync.ts, status texts in rule-status.ts.
 */
import { silentLogger, type Logger } from '../log.js';
import { monotonicMs } from './clock.js';
import type { BackendStats, Dataplane, HostChangeScope, InterfaceInfo, RuleStats, XdpModeName } from './dataplane.js';
import { CoreError, storeReason, type FieldViolation } from './errors.js';
import { nonUtf8Meant, nonUtf8Text } from './non-utf8.js';
import type { LinkStats } from './dataplane.js';
import {
  adoptRules,
  allocateRules,
  connectLinks,
  finishLinks,
  finishRules,
  pacer,
  Preempted,
  SLICE_MS,
  preflight,
  prepareLinks,
  prepareRules,
  releaseUnusedInterfaces,
  ruleRows,
  writeRules,
  type ExecContext,
} from './execute.js';
import { interfaceConditions, linkConditions, otherProgram, ruleConditions } from './conditions.js';
import { linkWhat, type CounterSeries } from './counter-resets.js';
import { fetchInterfaces, fetchRuleFacts, neighbourKey, type Facts } from './facts.js';
import { holdNeighbours, startHold, startHoldText } from './neighbour-hold.js';
import { formatMac } from '../net/addr.js';
import { compareKernelEntries } from './kernel-check.js';
import {
  linkKey,
  type ChangeAction,
  type Condition,
  type LinkSpec,
  type RuleRecord,
  type RuleSpec,
  type RuleState,
  type RuleStatus,
} from './model.js';
import { forgetReplacedDevices } from './device-identity.js';
import { hostLoopProblem, txReaders } from './rule-loops.js';
import { currentLinks, forwardingLoop, linkInterfaces, planLinks, type LinkDirection } from './plan-links.js';
import { matchClash, planOne, planRulesPaced, type RuleOp, type RulePlan } from './plan-rules.js';
import { missingText, movedEgresses } from './moved.js';
import { reconcileEntries, restore, type Transactions } from './restore.js';
import { activeLinkSources, linkActive, shadowedStatus, shadowWarning } from './shadow.js';
import {
  contradictedNewStaticMacs,
  judgeBeforeStartWrites,
  judgeChangeStaticMacs,
  recordChangeLoopsUnknown,
  observeLinkDirections,
  observeWrittenRules,
  resync,
} from './resync.js';
import { STATIC_MAC_WAIT_MS } from './static-mac.js';
import {
  egressHooksNote,
  egressProblem,
  failedStatus,
  ingressDownProblem,
  isMtuUnverified,
  isMtuWarning,
  keptMacWhy,
} from './rule-status.js';
import { backendKey, CoreState, observedOf, type Attachment, type RuleKernel } from './state.js';
import { storeDrift } from './store-drift.js';
import type { StatePort, StoredState, StoreTxn } from './store.js';
import { UndoLog } from './undo-log.js';
import { EgressIndex, note, type EgressNotes } from './egress-notes.js';
import { RuleProblems } from './rule-problems.js';
import { validateLink, validateRule } from './validate.js';

export interface RuleView extends RuleRecord {
  status: RuleStatus;
}

/** A rule's view with the interface names replaced in the request said among its warnings (that reply only). */
function withRenamed(v: RuleView, renamed: readonly string[]): RuleView {
  return renamed.length ? { ...v, status: { ...v.status, warnings: [...renamed, ...v.status.warnings] } } : v;
}

export interface RuleChange {
  name: string;
  action: ChangeAction;
  /** Kernel entries of an unchanged rule that differed from its desired state and were rewritten. */
  repaired?: string[];
  /** Interface names given as an alternative name of a device, and the device's name stored instead. */
  renamed?: string[];
}

export interface LinkChange {
  a: string;
  b: string;
  action: ChangeAction;
  /** As RuleChange.renamed. */
  renamed?: string[];
}

export interface ManagedInterface {
  name: string;
  ifindex: number;
  present: boolean;
  /** The attach mode asked of this interface; undefined when nothing needs the program on it (an egress only). */
  requestedMode: XdpModeName | undefined;
  effectiveMode: string;
  progId: number;
  usedBy: string[];
  warnings: string[];
  conditions: Condition[];
}

export interface ControllerOptions {
  mode: XdpModeName;
  /** Enable GRO on veth peers that need it for native redirects (else refuse). */
  fixVethPeers: boolean;
  log?: Logger;
  /**
   * Where each change is made durable before it is acknowledged (one
   * transaction per change); undefined: nothing persists (--no-state).
   */
  store?: StatePort;
  /** The wall clock, for the times shown (condition transitions, create/update times, snapshot times); tests give their own. */
  now?: () => number;
  /**
   * The monotonic clock for ages, windows and retry times (core/clock.ts). Default: `now` when a test gives
   * one (its clock drives both), else {@link monotonicMs}.
   */
  mono?: () => number;
  /**
   * How long a client's change waits for the ARP answers that confirm the static MACs it names for the first
   * time before it replies (ms; static-mac.ts STATIC_MAC_WAIT_MS, the default; resync.ts judgeChangeStaticMacs).
   */
  staticMacWaitMs?: number;
}

/** Per-call options of a mutation. */
export interface MutationOptions {
  /**
   * Aborted when the caller cancels or its deadline passes. Checked once, when
   * the change's turn comes: an aborted change is not started (CANCELLED,
   * nothing applied); a started one always completes, whatever the signal.
   */
  signal?: AbortSignal;
}

export interface DesiredState {
  rules: RuleRecord[];
  links: LinkSpec[];
}

/** Where a snapshot entry's series began, and its latest reset ({@link CounterSnapshot}). */
export interface SeriesFields {
  resetAt?: number;
  start?: number;
  fromZero?: boolean;
  /** `start` by the monotonic clock (core/clock.ts). */
  startMono?: number;
  /** What `start` is (CounterSeries.kind). */
  startKind?: CounterSeries['kind'];
}

/** The fields of a series as a snapshot entry carries them (none when unknown). */
function seriesFields(resetAt: number | undefined, s: CounterSeries | undefined): SeriesFields {
  return {
    ...(resetAt === undefined ? {} : { resetAt }),
    ...(s ? { start: s.start, fromZero: s.fromZero, startMono: s.mono, startKind: s.kind } : {}),
  };
}

export interface CounterSnapshot {
  /** When the read ended (every value was read at or before it): wall clock, the time shown to clients. */
  time: number;
  /**
   * When the read ended by the monotonic clock (core/clock.ts): what rates divide by (a wall-clock step
   * between two reads is not time that passed). Absent (fakes): `time`.
   */
  mono?: number;
  /** When the read began (every value was read at or after it; wall clock); absent: at `time`. */
  started?: number;
  /**
   * The desired state's version when the read was made ({@link Controller.desiredVersion}): the hub reuses a
   * read only while it is current. Absent: reusable by age alone.
   */
  version?: number;
  /**
   * `resetAt`: when (wall clock, ms) the object's counters were last seen to go down (reset by another tool,
   * counter-resets.ts); absent: never while this daemon ran. `start`, `fromZero`: where the object's series of
   * counters began (counter-resets.ts, CounterResets.series): when the daemon zeroed them for the object (from 0),
   * when a read first saw them go down, or this daemon's first read of them; absent: not known (not read).
   */
  rules: ({ name: string } & SeriesFields & RuleStats)[];
  backends: ({ rule: string; ip: string; interface: string } & SeriesFields & BackendStats)[];
  links: ({ from: string; to: string } & SeriesFields & LinkStats)[];
  global: bigint[];
}

export class Controller {
  private readonly state: CoreState;
  private readonly ctx: ExecContext;
  private readonly tx: Transactions;
  private queue: Promise<unknown> = Promise.resolve();
  /** A config file that owns the desired state: API mutations are refused. */
  private owner?: string;
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly mono: () => number;

  constructor(
    private readonly dp: Dataplane,
    private readonly opts: ControllerOptions,
  ) {
    this.log = (opts.log ?? silentLogger).child({ component: 'controller' });
    this.now = opts.now ?? Date.now;
    this.mono = opts.mono ?? opts.now ?? monotonicMs;
    this.lastPassEnded = this.mono();
    this.state = new CoreState(dp.capacity);
    this.state.fights.log = this.log;
    dp.setRepairSink?.(this.state.fights);
    this.egressIndex = new EgressIndex(this.state);
    this.ruleProblems = new RuleProblems(this.state);
    this.ctx = {
      dp,
      state: this.state,
      mode: opts.mode,
      fixVethPeers: opts.fixVethPeers,
      log: this.log,
      now: this.now,
      mono: this.mono,
    };
    this.tx = {
      applyRuleOps: (ops, restoring, napi) => {
        this.passWrote = true;
        return this.applyRuleOps(ops, restoring, napi);
      },
      adoptRuleOps: (ops) => {
        this.passWrote = true;
        return this.adoptRuleOps(ops);
      },
      applyLinkSet: (next, field, tolerant) => {
        this.passWrote = true;
        return this.applyLinkSet(next, field, tolerant);
      },
      judgeBackends: (links) => judgeBeforeStartWrites(this.ctx, links),
    };
  }

  /** Hand the desired state to a config file (xdpctld --config). */
  setOwner(path: string | undefined): void {
    this.owner = path;
  }

  /**
   * Why a client's change would be refused now whatever it asks, or undefined: the desired state is a config
   * file's (xdpctld --config), or the state store refuses writes (GetStatus accepts_writes).
   */
  writesRefused(): string | undefined {
    if (this.owner) return `the desired state is owned by the config file ${this.owner}: changes come from that file`;
    const store = this.stateStore();
    if (store?.problem !== undefined) return `the state store refuses writes: ${store.problem}`;
    return undefined;
  }

  private checkOwner(): void {
    if (this.owner) {
      throw new CoreError(
        'precondition',
        `the desired state is owned by the config file ${this.owner}: edit that file (xdpctld --config) instead`,
      );
    }
  }

  /**
   * Apply a whole config file (xdpctld --config) as one transaction, whole or not at all: both parts are
   * validated and planned, then every kernel precondition that can be known without changing anything is
   * checked for the whole file (execute.ts preflight: egresses able to receive native redirects, other
   * programs on an ingress, table capacity in the plans) before anything is written; then every ingress is
   * attached and every egress checked and repaired (--fix-veth-peers) for rules and links alike before
   * either is published, and rules and links go to the state store in one commit. A refusal at any step
   * (one only the kernel can make, e.g. an attach it refuses) undoes every step taken, device settings
   * included (GRO switched on, offloads turned off, and their host-changes records): the kernel, the disk,
   * the host and the generations stay as they were, and the error names what was refused.
   */
  applyConfig(cfg: { rules: RuleSpec[]; links: LinkSpec[] }): Promise<{ rules: RuleChange[]; links: LinkChange[] }> {
    return this.serial(async () => {
      const rules = await this.ruleSet(cfg.rules);
      const links = this.linkSet(cfg.links);
      await this.applyWhole(rules.ops, links.next, links.fieldOf);
      return { rules: rules.changes, links: links.changes };
    });
  }

  /**
   * What {@link applyConfig} would say of `cfg` now, changing nothing, for the config watcher to re-evaluate a
   * refused file as the host changes: `refusal`, what applyConfig would refuse before writing anything — the
   * values, the rules' names, the links' interfaces and loops, then its preflight's kernel preconditions
   * (execute.ts preflight: each egress able to take native redirects, read without repairing; a bridge port
   * under a bridge that keeps our program; native XDP where it is required), taking for an ingress not
   * attached yet the mode its attach would choose — or undefined when it passes; and `host`, what the host
   * shows of every interface the file names (ifindex, MAC, up, carrier, MTU, the XDP program on it, the devices
   * above it), which changes whenever what a refusal only the kernel makes (an attach) may depend on changes.
   * Runs between changes, as one.
   */
  checkConfig(cfg: { rules: RuleSpec[]; links: LinkSpec[] }): Promise<{ refusal?: string; host: string }> {
    return this.serial(
      async () => {
        const host = this.hostOf(cfg);
        try {
          const { ops } = await this.ruleSet(cfg.rules, false);
          const { next, fieldOf } = this.linkSet(cfg.links, false);
          const plan = await this.planRuleOps(ops);
          const facts = fetchInterfaces(this.dp, linkInterfaces(next.values()));
          const want = planLinks(this.plannable(next, facts.interfaces), facts.interfaces, 'links');
          try {
            await preflight(
              this.ctx,
              plan.plans,
              { want, field: fieldOf },
              { rules: opNames(ops), links: next },
              { predictAttach: true },
            );
          } finally {
            this.ctx.preflightTargets = undefined;
          }
          return { host };
        } catch (e) {
          return { refusal: (e as Error).message, host };
        }
      },
      undefined,
      true,
    );
  }

  /** What the host shows of every interface `cfg` names ({@link checkConfig}), as one string. */
  private hostOf(cfg: { rules: RuleSpec[]; links: LinkSpec[] }): string {
    const names = new Set<string>();
    for (const l of cfg.links) names.add(l.a).add(l.b);
    for (const r of cfg.rules) {
      for (const i of r.ingressInterfaces) names.add(i);
      for (const b of r.backends) names.add(b.interface);
    }
    return JSON.stringify(
      [...names].sort().map((n) => {
        const i = this.dp.lookupInterface(n);
        if (!i) return [n];
        const l = this.dp.linkState?.(n);
        const x = this.dp.xdpStatus(n);
        return [
          n,
          i.ifindex,
          i.mac,
          l?.up,
          l?.carrier,
          l?.mtu,
          x?.mode,
          x?.ours ? 'ours' : x?.progId,
          ...(this.dp.upperDevices?.(n) ?? []),
        ];
      }),
    );
  }

  /** {@link applyConfig}'s transaction: rules and links prepared together, then written, then one commit. */
  private async applyWhole(
    ops: RuleOp[],
    next: Map<string, LinkSpec>,
    fieldOf: (from: string) => string,
  ): Promise<void> {
    const pace = pacer();
    const plan = await this.planRuleOps(ops, undefined, pace);
    const facts = fetchInterfaces(this.dp, linkInterfaces(next.values()));
    const want = planLinks(this.plannable(next, facts.interfaces), facts.interfaces, 'links');
    const cur = currentLinks(this.state.linkDirs, new Map(this.dp.listLinks()));
    const checked = await preflight(
      this.ctx,
      plan.plans,
      { want, field: fieldOf },
      { rules: opNames(ops), links: next },
    );
    const { alloc, unverified } = await this.transact(async (undo, t) => {
      const alloc = await allocateRules(this.ctx, ops, plan, false, undo, pace);
      const b = this.begin(false, ops.length);
      const txn = (t.txn = b instanceof Promise ? await b : b);
      if (txn) {
        for (const row of ruleRows(ops, alloc)) {
          if (typeof row === 'string') txn.deleteRule(row);
          else txn.putRule(row);
          await pace();
        }
        for (const [key, l] of next) if (this.state.links.get(key) !== l) txn.putLink(l);
        for (const key of this.state.links.keys()) if (!next.has(key)) txn.deleteLink(key);
      }
      const ruleUnverified = await prepareRules(this.ctx, ops, plan, undo, pace);
      const unverified = await prepareLinks(this.ctx, next, want, 'links', undo, false, fieldOf);
      await writeRules(this.ctx, ops, plan, alloc, undo, pace, false, ruleUnverified);
      connectLinks(this.ctx, want, cur, undo);
      await this.commit(txn, false);
      return { alloc, unverified };
    });
    // Its rules judged as a pass judges them before they are recorded (what a read says, the reply too).
    await finishRules(this.ctx, ops, alloc, pace, false, async (pending) => {
      await this.judgeStaticMacs(
        [...pending.values()].map((p) => p.rule),
        pace,
      );
      recordChangeLoopsUnknown(this.state, checked.loopsUnknown); // its reply says what cannot be told
      await observeWrittenRules(this.ctx, pending.keys(), alloc.unverified, pace, true, pending);
    });
    recordChangeLoopsUnknown(this.state, checked.loopsUnknown); // a change that only deletes rules
    finishLinks(this.ctx, next, want, unverified, false);
    releaseUnusedInterfaces(this.ctx);
    // Judged as a pass judges them (link directions), so that what it reports is what a read says.
    observeLinkDirections(this.ctx, want);
    // The write observed: every rule it changed, every link and interface, with its time.
    await this.observed(async (at) => {
      await this.observeLinksAndInterfaces(at);
      await this.observeRules(opNames(ops), at);
    });
  }

  /**
   * The static MACs of `rules` no judgement has seen yet (those a client's change names for the first time),
   * judged as a pass judges them before the rules are judged for a reply or a read, waiting up to `waitMs`
   * for the answers to the ARP requests it sends (resync.ts judgeChangeStaticMacs). Never fails the change
   * (committed by now) or the start: what it could not judge, the next pass does.
   */
  private async judgeStaticMacs(
    rules: Iterable<Pick<RuleSpec, 'backends'>>,
    pace: () => Promise<void>,
    waitMs = this.opts.staticMacWaitMs ?? STATIC_MAC_WAIT_MS,
  ): Promise<void> {
    try {
      await judgeChangeStaticMacs(this.ctx, rules, waitMs, pace);
    } catch (err) {
      this.log.warn({ err }, 'static MACs could not be judged: the next reconciler pass judges them');
    }
  }

  /**
   * One transaction's writes, `write` (its rows in the store transaction it sets as `t.txn`, its kernel steps over
   * `undo`, COMMIT), made all or nothing: when it throws, the rows are rolled back (on the store's worker thread
   * for a large change, while the kernel is undone here), `undo` is undone in reverse order and the device
   * settings the change made are put back ({@link undoHostChanges}), then its error is thrown. Either way the
   * scope that tracked those settings is closed and the preflight's targets forgotten.
   */
  private async transact<T>(write: (undo: UndoLog, t: { txn?: StoreTxn }) => Promise<T>): Promise<T> {
    const undo = new UndoLog();
    const host = this.dp.trackHostChanges?.();
    this.hostScope = host;
    const t: { txn?: StoreTxn } = {};
    try {
      return await write(undo, t);
    } catch (e) {
      const rolled = t.txn?.rollback(); // settled after the kernel is undone
      undo.rollback(this.log);
      await rolled;
      await this.undoHostChanges(host, e);
      throw e;
    } finally {
      host?.close();
      if (this.hostScope === host) this.hostScope = undefined;
      this.ctx.preflightTargets = undefined;
    }
  }

  /**
   * After a failed transaction: put back the device settings it changed (dataplane trackHostChanges), say so,
   * and when some could not be put back, say that on the error the client gets too.
   */
  private async undoHostChanges(host: HostChangeScope | undefined, err: unknown): Promise<void> {
    if (!host) return;
    const { reverted, failed } = await host.revert();
    if (reverted.length) this.log.info({ reverted }, 'the change failed: the device settings it changed were put back');
    if (failed.length) {
      this.log.error(
        { failed },
        'the change failed, and device settings it changed could not be put back (recorded for --cleanup-on-exit)',
      );
      if (err instanceof Error) {
        err.message += `; device settings it changed could not all be put back: ${failed.join('; ')}`;
      }
    }
  }

  /**
   * Run one change at a time. A change whose caller has gone (signal
   * aborted) by the time its turn comes is not started.
   */
  private serial<T>(fn: () => Promise<T>, signal?: AbortSignal, background = false): Promise<T> {
    if (!background) this.changesWaiting++;
    const go = () => {
      if (!background) this.changesWaiting--;
      if (signal?.aborted) {
        return Promise.reject(
          new CoreError(
            'cancelled',
            'the caller cancelled, or its deadline passed, before the change started: nothing was applied',
          ),
        );
      }
      return fn();
    };
    const run = this.queue.then(go, go);
    this.queue = run.catch(() => undefined);
    return run;
  }

  // ---- reads ------------------------------------------------------------

  /** Whether a rule of this name exists (in the desired state). */
  hasRule(name: string): boolean {
    return this.state.rules.has(name);
  }

  /**
   * A rule with its status and conditions. `at`: when what it shows was observed (a read: now; a write or a
   * reconciler pass that records the conditions: its time); a condition that changed takes it as its
   * lastTransitionTime.
   */
  getRule(name: string, shadows = this.activeLinkSources(), at = this.now()): RuleView {
    const r = this.state.rules.get(name);
    if (!r) throw new CoreError('not-found', `rule "${name}" does not exist`);
    // A rule with no kernel record is FAILED, never a read that fails for every rule (ListRules).
    const k = this.state.ruleKernel.get(name);
    let status = shadowedStatus(
      r,
      k?.status ?? failedStatus('the daemon holds no datapath entries for this rule (not in the datapath)', false),
      shadows,
    );
    const resets = this.resetWarnings(k);
    if (resets.length) status = { ...status, warnings: [...status.warnings, ...resets] };
    const key = `rule/${name}`;
    const conditions = this.state.conditions.set(
      key,
      ruleConditions(
        status,
        r.backends.map((b) => b.weight),
        k?.ingressProblems ?? [],
        k?.ingressDown ?? [],
      ),
      this.stamp(key, at),
    );
    return { ...r, status: { ...status, conditions } };
  }

  /** The counter resets of a rule and its backends seen in the last hour (counter-resets.ts), as warnings. */
  private resetWarnings(k: RuleKernel | undefined): string[] {
    if (!k) return [];
    const mono = this.mono();
    const out: string[] = [];
    const r = this.state.counterResets.warning('rule', k.statsId, mono);
    if (r) out.push(r);
    for (const b of k.backends.values()) {
      const w = this.state.counterResets.warning('backend', b.statsId, mono);
      if (w) out.push(w);
    }
    return out;
  }

  // ---- conditions: recorded when observed ----------------------------------

  /**
   * The objects a restore took over, until the first reconciler pass after it has observed them: their
   * conditions held since before this start for a time the daemon cannot know (lastTransitionTime unset),
   * not since the restart.
   */
  private restoredKeys?: Set<string>;

  /** The transition time for a condition of `key` observed at `at`: undefined while it is one restored. */
  private stamp(key: string, at: number): number | undefined {
    return this.restoredKeys?.has(key) ? undefined : at;
  }

  /**
   * Record the conditions of these rules as observed at `at` (the write or the reconciler pass that observed
   * them), so that a transition carries that time, not the time of the next read. Yields every 256 rules.
   */
  private async observeRules(names: Iterable<string>, at: number): Promise<void> {
    const shadows = this.activeLinkSources();
    let n = 0;
    for (const name of names) {
      const k = this.state.ruleKernel.get(name);
      if (!k || !this.state.rules.has(name)) continue;
      this.getRule(name, shadows, at);
      k.observed = observedOf(k.status, k.ingressProblems, k.ingressDown); // a pass compares with it
      if ((++n & 255) === 0) await new Promise((r) => setImmediate(r));
    }
  }

  /**
   * Record conditions as observed now (`record` gets the time). Never fails the change or pass that
   * observed them: what it cannot read now, the next read or pass records (logged).
   */
  private async observed(record: (at: number) => Promise<void>): Promise<void> {
    try {
      await record(this.now());
    } catch (err) {
      this.log.warn({ err }, 'recording the conditions observed failed: the next read or reconciler pass does');
    }
  }

  /** Whether ListInterfaces lists `name`: a rule or link names it, our program is on it, or it moved away. */
  private isManaged(name: string): boolean {
    if (this.state.ifaceRules.has(name) || this.state.attached.has(name) || this.state.moved.has(name)) return true;
    for (const l of this.state.links.values()) if (l.a === name || l.b === name) return true;
    return false;
  }

  /**
   * Record the conditions of every link and managed interface as observed at `at` (a write or a pass);
   * `lookup`: the interfaces the pass looked up (others are looked up here).
   */
  private async observeLinksAndInterfaces(
    at: number,
    looked?: ReadonlyMap<string, InterfaceInfo | undefined>,
  ): Promise<void> {
    // The rules' egress facts made in slices first (a walk over every rule); then what follows is one turn.
    await this.makeEgressFactsPaced(pacer());
    const lookup = (n: string) => (looked?.has(n) ? looked.get(n) : this.dp.lookupInterface(n));
    if (this.state.links.size) this.listLinks(at, false, lookup);
    const egress = this.egressUses();
    const names = new Set([
      ...this.state.ifaceRules.keys(),
      ...egress.names,
      ...this.state.attached.keys(),
      ...this.state.moved.keys(),
    ]);
    for (const l of this.state.links.values()) names.add(l.a).add(l.b);
    for (const name of names) this.interfaceView(name, this.state.isUsed(name), at, lookup, egress.of(name));
    // Interfaces and links no longer managed are forgotten (rules are when deleted: CoreState.deleteRule).
    const keep = new Set([...names].map((n) => `if/${n}`));
    for (const l of this.state.links.values()) keep.add(`link/${linkKey(l)}`);
    this.state.conditions.retain(keep, ['if/', 'link/']);
  }

  listRules(): RuleView[] {
    const shadows = this.activeLinkSources();
    return [...this.state.rules.keys()].sort().map((n) => this.getRule(n, shadows));
  }

  /**
   * One page of rules in name order (code units): at most `limit` rules whose
   * names sort after `after` ('' or undefined: from the first), and whether
   * more follow. Costs the page's size, not the number of rules.
   */
  rulePage(after: string | undefined, limit: number): { rules: RuleView[]; more: boolean } {
    const names = this.state.ruleNames();
    let lo = 0;
    if (after) {
      // First name > after (binary search).
      let hi = names.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (names[mid] <= after) lo = mid + 1;
        else hi = mid;
      }
    }
    const end = Math.min(names.length, lo + Math.max(0, limit));
    const shadows = this.activeLinkSources();
    const rules: RuleView[] = [];
    for (let i = lo; i < end; i++) rules.push(this.getRule(names[i], shadows));
    return { rules, more: end < names.length };
  }

  /**
   * Links with what the kernel has: a direction is active when it is in the
   * datapath and our program runs on its ingress side (not a foreign one).
   */
  listLinks(
    at = this.now(),
    shadowing = true,
    lookup = (name: string) => this.dp.lookupInterface(name),
  ): (LinkSpec & { active: [boolean, boolean]; warnings: string[]; conditions: Condition[] })[] {
    const kernel = new Map(this.dp.listLinks());
    return [...this.state.links.values()]
      .sort((x, y) => linkKey(x).localeCompare(linkKey(y)))
      .map((l) => {
        const ia = lookup(l.a);
        const ib = lookup(l.b);
        const problems: string[] = [];
        for (const [name, info] of [
          [l.a, ia],
          [l.b, ib],
        ] as const) {
          if (!info) problems.push(missingText(this.state, name));
          else if (this.state.foreign.has(name) && (name === l.a || l.direction === 'both')) {
            problems.push(
              `${otherProgram(this.state.foreign.get(name)!, this.state.unidentified.get(name))} is attached to ${name}`,
            );
          }
        }
        const foreign = (n: string) => this.state.foreign.has(n);
        const inKernel: [boolean, boolean] = [
          !!ia && !!ib && kernel.get(ia.ifindex) === ib.ifindex && !foreign(l.a),
          l.direction === 'both' && !!ia && !!ib && kernel.get(ib.ifindex) === ia.ifindex && !foreign(l.b),
        ];
        // Not in the devmap because a re-apply failed (a map another tool froze): the direction says why.
        const refused = this.state.linkReapplyError;
        if (refused && ia && ib && !foreign(l.a) && !inKernel[0])
          problems.push(`${l.a} -> ${l.b}: not in the datapath, could not be written: ${refused}`);
        if (refused && ia && ib && l.direction === 'both' && !foreign(l.b) && !inKernel[1])
          problems.push(`${l.b} -> ${l.a}: not in the datapath, could not be written: ${refused}`);
        // In the devmap and its egress can transmit (the reconciler's last pass): forwarding.
        const egress = [this.state.linkEgress.get(`${l.a}>${l.b}`), this.state.linkEgress.get(`${l.b}>${l.a}`)];
        if (egress[0]) problems.push(`${l.a} -> ${l.b}: ${egress[0]}`);
        if (l.direction === 'both' && egress[1]) problems.push(`${l.b} -> ${l.a}: ${egress[1]}`);
        const active: [boolean, boolean] = [inKernel[0] && !egress[0], inKernel[1] && !egress[1]];
        // Forwarding as far as the kernel says, but its egress cannot be verified (egress-watch.ts).
        const unverified = [this.state.linkUnverified.get(`${l.a}>${l.b}`)];
        if (l.direction === 'both') unverified.push(this.state.linkUnverified.get(`${l.b}>${l.a}`));
        const unknown = unverified.filter((w): w is string => w !== undefined);
        // What its egress's veth peer runs that may drop what is redirected into it (another tool's XDP program,
        // tc filters or tcx programs): forwarded into the veth, delivered past the peer or not (Active Unknown).
        const peer = [this.state.linkPeer.get(`${l.a}>${l.b}`)];
        if (l.direction === 'both') peer.push(this.state.linkPeer.get(`${l.b}>${l.a}`));
        const peers = peer.filter((w): w is string => w !== undefined);
        const mtu = [this.state.linkWarnings.get(`${l.a}>${l.b}`)];
        if (l.direction === 'both') mtu.push(this.state.linkWarnings.get(`${l.b}>${l.a}`));
        const linkWarnings = mtu.filter((w): w is string => w !== undefined);
        // FramesFit from the MTU warnings among them (too small, or a veth peer's MTU that cannot be read).
        const frames = linkWarnings.filter((w) => isMtuWarning(w) || isMtuUnverified(w));
        const key = `link/${linkKey(l)}`;
        const conditions = this.state.conditions.set(
          key,
          linkConditions(l.direction === 'both' ? active : [active[0]], problems, unknown, frames, peers),
          this.stamp(key, at),
        );
        // The datapath cross-connects a frame before it looks for a rule: a rule whose ingress is an
        // active source of this link never sees a frame there.
        const sources = [...(inKernel[0] ? [l.a] : []), ...(inKernel[1] ? [l.b] : [])];
        const shadows: string[] = [];
        // (`shadowing` false: only the conditions are wanted, a reconciler pass records them.)
        if (shadowing && sources.length)
          for (const r of [...this.state.rules.values()].sort((x, y) => (x.name < y.name ? -1 : 1))) {
            for (const i of r.ingressInterfaces) if (sources.includes(i)) shadows.push(shadowWarning(r.name, i, l));
          }
        // Named one by one up to a bound, so that a link's message stays small however many rules it shadows.
        if (shadows.length > MAX_SHADOW_WARNINGS) {
          const more = shadows.length - MAX_SHADOW_WARNINGS;
          shadows.length = MAX_SHADOW_WARNINGS;
          shadows.push(
            `${more} more rule ingress(es) are shadowed by link ${l.a}:${l.b} (each rule's status names it)`,
          );
        }
        // Counters that went down while the link existed (written by another tool): said for an hour (counter-resets.ts).
        const resets = [ia, l.direction === 'both' ? ib : undefined].flatMap((i) =>
          i ? [this.state.counterResets.warning('link', i.ifindex, this.mono()) ?? []].flat() : [],
        );
        const untold = this.state.linkLoopsUnknown.get(linkKey(l));
        const warnings = [
          ...problems,
          ...unknown,
          ...peers,
          ...(untold ? [untold] : []),
          ...linkWarnings,
          ...resets,
          ...shadows,
        ];
        return { ...l, active, warnings, conditions };
      });
  }

  /** Whether each direction of a link is in the kernel's devmap now (a -> b, b -> a). */
  private linkActive(l: LinkSpec, kernel: Map<number, number>): [boolean, boolean] {
    return linkActive(this.dp, this.state, l, kernel);
  }

  /** Interfaces that a link forwards from in the kernel now, with their link (shadow.ts). */
  private activeLinkSources(): Map<string, LinkSpec> {
    return activeLinkSources(this.dp, this.state);
  }

  desiredState(): DesiredState {
    return { rules: [...this.state.rules.values()], links: [...this.state.links.values()] };
  }

  /** The desired state with the kernel ids that keep counters across restarts. */
  storedState(): StoredState {
    return this.state.stored();
  }

  /** A repair of the state store that failed: compared again at the next pass, said once. */
  private storeRecheck = '';

  /**
   * The state store observed as the kernel is, between two changes (a reconciler pass): when another writer
   * has changed it (StateStore.readIfChanged: PRAGMA data_version), its rows are compared with the desired
   * state this daemon accepted (store-drift.ts), and rows removed or changed are written back and rows added
   * removed, in one transaction, said in one warning naming each ("rule X was removed from the state store by
   * another writer; row restored"): a restart then has what the daemon holds and the kernel forwards. A
   * repair the store refuses is said once and tried again each pass.
   */
  checkStore(): Promise<void> {
    return this.serial(
      async () => {
        const store = this.opts.store;
        if (!store?.readIfChanged) return;
        const have = await store.readIfChanged(!!this.storeRecheck);
        if (!have) return;
        const d = storeDrift(this.state.stored(), have);
        if (!d.said.length) {
          this.storeRecheck = '';
          return;
        }
        let txn: StoreTxn | undefined;
        try {
          txn = await store.begin(d.putRules.length + d.deleteRules.length + d.putLinks.length + d.deleteLinks.length);
          for (const r of d.putRules) txn.putRule(r);
          for (const n of d.deleteRules) txn.deleteRule(n);
          for (const l of d.putLinks) txn.putLink(l);
          for (const k of d.deleteLinks) txn.deleteLink(k);
          await txn.commit();
        } catch (e) {
          await txn?.rollback();
          const line =
            `state store ${store.path} was changed by another writer (${d.said.join('; ').replaceAll('; row ', ': row to be ')}) ` +
            `and could not be written back yet: ${(e as Error).message}; a restart now would not start with the ` +
            'desired state this daemon holds; tried again at every pass';
          if (line !== this.storeRecheck) this.log.error({ err: e, path: store.path, changed: d.said }, line);
          this.storeRecheck = line;
          return;
        }
        this.storeRecheck = '';
        this.log.warn({ path: store.path, changed: d.said }, d.said.join('; '));
      },
      undefined,
      true,
    );
  }

  /**
   * Write the whole desired state back into the state store, between two changes (one transaction): the
   * store was found holding what the daemon did not accept (a change refused because its commit did not
   * complete in time, committed once the disk answered). Throws what the store refused.
   */
  rewriteStore(): Promise<void> {
    return this.serial(
      async () => {
        await this.opts.store?.replaceAll?.(this.state.stored());
      },
      undefined,
      true,
    );
  }

  /**
   * Put another state store in place of this one, between two changes (the state directory was removed
   * under the running daemon): `open` gets the whole desired state to write into the new store before any
   * later change; if it throws, the store in use stays. Resolves with the store replaced.
   */
  replaceStore(open: (state: StoredState) => StatePort | Promise<StatePort>): Promise<StatePort | undefined> {
    return this.serial(
      async () => {
        const old = this.opts.store;
        this.opts.store = await open(this.state.stored());
        return old;
      },
      undefined,
      true,
    );
  }

  /**
   * Every interface a rule or link names: the ones that need the program
   * (ingress, link sources) and the ones used as an egress (a backend's
   * interface, the far end of a link, either end of a two-way link), as the
   * InterfaceService contract says. Egress uses are listed as "<user>/egress".
   */
  /**
   * What the host has under a name the daemon does not manage: a device (`device`), an alternative name of one
   * (`altname`, with the device's name) or nothing (`none`), for GetInterface to say which.
   */
  unmanagedInterface(name: string): { kind: 'device' } | { kind: 'altname'; device: string } | { kind: 'none' } {
    if (this.dp.lookupInterface(name)) return { kind: 'device' };
    const dev = this.dp.deviceName?.(name);
    return dev && dev.name !== name ? { kind: 'altname', device: dev.name } : { kind: 'none' };
  }

  listInterfaces(at = this.now()): ManagedInterface[] {
    const programUsers = this.state.interfaceUsers(); // what needs the program on an interface
    const egress = this.egressUses();
    // Also what we attached and could not detach yet: nothing attached stays unlisted.
    // And interfaces moved to another namespace with our program still there (core/moved.ts).
    const names = new Set([
      ...programUsers.keys(),
      ...egress.names,
      ...this.state.attached.keys(),
      ...this.state.moved.keys(),
    ]);
    return [...names].sort().map((name) => {
      const uses = egress.of(name);
      const { x, info, warnings, conditions } = this.interfaceView(name, programUsers.has(name), at, undefined, uses);
      return {
        name,
        ifindex: info?.ifindex ?? 0,
        present: !!info,
        // An interface only used as an egress has no program requested on it: no mode (was the daemon's mode).
        requestedMode: programUsers.has(name) ? this.opts.mode : undefined,
        effectiveMode: x?.mode ?? 'none',
        progId: x?.progId ?? 0,
        usedBy: [...new Set([...(programUsers.get(name) ?? []), ...uses.for])].sort(),
        warnings,
        conditions,
      };
    });
  }

  /**
   * The interfaces used as an egress (a backend's interface, the far end of a link, either end of a two-way
   * link), each with its egress uses ("rule/X/egress", "link/a:b/egress", sorted) and why it cannot transmit for them
   * (down or without carrier, or a link direction into it that cannot): the inputs of its EgressReady
   * condition. Every caller of interfaceView passes them, so that a pass records EgressReady with the
   * pass's time, as a read does.
   */
  /** The rules' egress users and notes per egress, kept up to date from what changed (egress-notes.ts). */
  private readonly egressIndex: EgressIndex;

  /**
   * {@link EgressIndex.update} a slice at a time, awaiting `pace` between slices (a write or a pass): what
   * changed since the last update (one rule after a change; every rule after a large one or a sweep).
   */
  private async makeEgressFactsPaced(pace: () => Promise<void>): Promise<void> {
    if (this.egressIndex.current()) return;
    const it = this.egressIndex.update();
    while (!it.next().done) await pace();
  }

  private egressUses(): {
    names: Iterable<string>;
    of: (name: string) => EgressFacts;
  } {
    // What changed since the last update read in one piece (a read right after a change: that change's rules);
    // a write or pass reads it in slices first.
    if (!this.egressIndex.current()) {
      const it = this.egressIndex.update();
      while (!it.next().done);
    }
    const ruleUses = this.egressIndex.users;
    // A link sends frames out of its far end, and a two-way link out of either end: each is its egress, with
    // the conditions a backend's egress has (EgressReady, FramesFit), from its directions' judgements.
    const linkUses = new Map<string, Set<string>>();
    const addLink = (name: string, user: string) => {
      if (!linkUses.has(name)) linkUses.set(name, new Set());
      linkUses.get(name)!.add(user);
    };
    for (const l of this.state.links.values()) {
      addLink(l.b, `link/${l.a}:${l.b}/egress`);
      if (l.direction === 'both') addLink(l.a, `link/${l.a}:${l.b}/egress`);
    }
    // The rules' notes with the links' (a few) added, in a copy: the kept notes stay the rules' own (an
    // egress's texts are copied before a link's note goes in).
    const kept = this.egressIndex.notes;
    const facts: EgressNotes = {
      problems: new Map(kept.problems),
      unverified: new Map(kept.unverified),
      frames: new Map(kept.frames),
    };
    const own = new Set<Map<string, string[]>>();
    const linkNote = (kind: Map<string, Map<string, string[]>>, name: string, text: string, user: string) => {
      const m = kind.get(name);
      if (m && !own.has(m)) {
        const copy = new Map([...m].map(([t, users]) => [t, [...users]] as [string, string[]]));
        own.add(copy);
        kind.set(name, copy);
      }
      note(kind, name, text, user);
    };
    const linkEgress = new Map<string, string[]>();
    for (const [dir, why] of this.state.linkEgress) {
      const to = dir.slice(dir.indexOf('>') + 1);
      // Only what is about the egress (not an ingress that is down or without our program).
      if (!why.includes(to) || why.startsWith('ingress ')) continue;
      linkEgress.set(to, [...(linkEgress.get(to) ?? []), `link ${dir.replace('>', ' -> ')}: ${why}`]);
    }
    for (const [dir, why] of this.state.linkUnverified) {
      linkNote(facts.unverified, dir.slice(dir.indexOf('>') + 1), `link ${why}`, `link/${dir.replace('>', ':')}`);
    }
    for (const [dir, w] of this.state.linkWarnings) {
      if (isMtuWarning(w) || isMtuUnverified(w))
        linkNote(facts.frames, dir.slice(dir.indexOf('>') + 1), `link ${w}`, `link/${dir.replace('>', ':')}`);
    }
    const texts = (kind: Map<string, Map<string, string[]>>, name: string) =>
      [...(kind.get(name) ?? [])].map(([text, users]) => `${text} (${namesOf(users)})`);
    const names = new Set(ruleUses.keys());
    for (const name of linkUses.keys()) names.add(name);
    return {
      names,
      of: (name) => {
        const own = egressProblem(name, this.dp.linkState?.(name));
        const rules = ruleUses.get(name) ?? [];
        const links = linkUses.get(name);
        return {
          // ("link/…" sorts before "rule/…"); the rules' own array when no link uses it (the same object from
          // pass to pass: its conditions' texts are made once, conditions.ts).
          for: links ? [...[...links].sort(), ...rules] : rules,
          // Down or without carrier says it all (the rules say the same); else every other reason seen.
          problems: own ? [own] : [...(linkEgress.get(name) ?? []), ...texts(facts.problems, name)],
          unverified: texts(facts.unverified, name),
          frames: texts(facts.frames, name),
        };
      },
    };
  }

  /**
   * One interface as observed now: its XDP status, warnings and conditions (recorded with `at`). `used`:
   * something needs our program on it (egress-only interfaces need none).
   */
  private interfaceView(
    name: string,
    used: boolean,
    at: number,
    lookup: ((n: string) => InterfaceInfo | undefined) | undefined,
    /** Its "…/egress" users and what is known against it (egressUses): its EgressReady and FramesFit conditions. */
    egress: EgressFacts,
  ) {
    lookup ??= (n: string) => this.dp.lookupInterface(n);
    const x = this.dp.xdpStatus(name);
    const info = lookup(name);
    const warnings: string[] = [];
    if (!info) warnings.push(missingText(this.state, name));
    else if (x && x.mode !== 'none' && !x.ours) {
      warnings.push(
        x.unidentified
          ? `${otherProgram(x.progId, x.unidentified)} is attached`
          : `a foreign XDP program (id ${x.progId}${x.otherDaemon ? `: ${x.otherDaemon}` : ''}) is attached`,
      );
    }
    // As a backend egress, what else it has on its receive path (tc, nftables, a passthru device on it), as the
    // last pass read it for its rules and in their words (rule-status.ts egressHooksNote).
    const own =
      info && egress?.for.some((u) => u.startsWith('rule/')) && this.state.lastObservation.egressOwn.get(name);
    if (own) warnings.push(egressHooksNote(name, own));
    if (info && used) {
      const down = ingressDownProblem(name, this.dp.linkState?.(name));
      if (down) warnings.push(down);
    }
    const detachError = this.state.attached.get(name)?.detachError;
    if (detachError) warnings.push(`no longer used, but detaching failed (retried): ${detachError}`);
    const key = `if/${name}`;
    const conditions = this.state.conditions.set(
      key,
      interfaceConditions({
        name,
        present: !!info,
        absent: info ? undefined : this.state.moved.get(name)?.text,
        effectiveMode: x?.mode ?? 'none',
        ours: !!x?.ours,
        otherDaemon: x?.otherDaemon,
        progId: x?.progId ?? 0,
        unidentified: x?.unidentified,
        current: this.dp.progId,
        detachError,
        used,
        egressFor: egress?.for,
        egressProblems: egress?.problems,
        egressUnverified: egress?.unverified,
        egressFrames: egress?.frames,
        modeWarning:
          x?.ours && x.mode !== this.opts.mode
            ? x.warnings?.find((w) => / refused |keeps running in generic mode/.test(w))
            : undefined,
      }),
      this.stamp(key, at),
    );
    if (x?.ours && x.mode !== 'none' && x.progId !== this.dp.progId) {
      warnings.push(`an earlier program of this datapath (id ${x.progId}) runs here, not the one in use`);
    }
    if (x?.warnings) warnings.push(...x.warnings);
    // What is known against it as an egress: the messages of its EgressReady and FramesFit conditions.
    if (info) {
      for (const c of conditions) {
        if ((c.type === 'EgressReady' || c.type === 'FramesFit') && c.status !== 'True') warnings.push(c.message);
      }
    }
    return { x, info, warnings, conditions };
  }

  // ---- rule mutations ---------------------------------------------------

  createRule(spec: RuleSpec, opts: MutationOptions = {}): Promise<RuleView> {
    return this.serial(async () => {
      this.checkOwner();
      throwIfInvalid(validateRule(spec, 'rule'));
      if (this.state.rules.has(spec.name)) throw new CoreError('exists', `rule "${spec.name}" already exists`);
      const named = this.ruleByDeviceName(spec);
      await this.applyRuleOps([{ name: spec.name, next: named.spec, field: 'rule' }]);
      return withRenamed(this.getRule(spec.name), named.renamed);
    }, opts.signal);
  }

  /**
   * Update a rule. With the specification it already has nothing is stored, but its kernel entries are
   * compared with the desired state and what differs is rewritten: `repaired` says what (empty: the
   * kernel held it as desired).
   */
  updateRule(
    spec: RuleSpec,
    expectedGeneration: number,
    opts: MutationOptions = {},
  ): Promise<RuleView & { repaired: string[]; changed: boolean }> {
    return this.serial(async () => {
      this.checkOwner();
      throwIfInvalid(validateRule(spec, 'rule'));
      const cur = this.state.rules.get(spec.name);
      if (!cur) throw new CoreError('not-found', `rule "${spec.name}" does not exist`);
      checkGeneration(cur, expectedGeneration);
      const named = this.ruleByDeviceName(spec);
      let repaired: string[] = [];
      const changed = !sameSpec(cur, named.spec);
      if (changed) await this.applyRuleOps([{ name: spec.name, next: named.spec, field: 'rule' }]);
      else repaired = (await this.repairKernel([spec.name])).get(spec.name) ?? [];
      return { ...withRenamed(this.getRule(spec.name), named.renamed), repaired, changed };
    }, opts.signal);
  }

  /**
   * Compare the kernel entries of these rules with their desired state and rewrite what differs
   * (kernel-check.ts); logged once. What was rewritten, by rule (lines about shared entries, such as
   * the per-port index, go to every rule named).
   */
  private async repairKernel(names: string[]): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    if (names.length === 0) return out;
    const facts = await fetchRuleFacts(
      this.dp,
      names.flatMap((n) => this.state.rules.get(n) ?? []),
    );
    holdNeighbours(facts.neighbours, this.state.neighbourHolds); // confirmed MACs kept (neighbour-hold.ts)
    facts.hostLoops = this.state.hostLoops; // backends kept out for a loop the host made: compared as written
    facts.macConflicts = this.state.macConflicts; // and those whose static MAC the host contradicts
    const r = await compareKernelEntries(this.ctx, facts, names);
    if (r.repaired.length === 0) return out;
    this.state.reconcilerEvents.kernel_repairs += r.repaired.length;
    this.log.warn(
      { repaired: r.repaired.slice(0, 100).map((x) => x.line), count: r.repaired.length },
      'kernel entries differed from the desired state: rewritten',
    );
    const set = new Set(names);
    for (const { line, owner } of r.repaired) {
      // A rule's own entry goes to that rule, without the "rule NAME: " its line opens with; the others to all.
      const own = owner.kind === 'rule' && set.has(owner.rule) ? owner.rule : undefined;
      const prefix = own === undefined ? '' : `rule ${own}: `;
      for (const n of own === undefined ? names : [own]) {
        if (!out.has(n)) out.set(n, []);
        out.get(n)!.push(line.startsWith(prefix) ? line.slice(prefix.length) : line);
      }
    }
    return out;
  }

  deleteRule(name: string, expectedGeneration: number, opts: MutationOptions = {}): Promise<void> {
    return this.serial(async () => {
      this.checkOwner();
      const cur = this.state.rules.get(name);
      if (!cur) throw new CoreError('not-found', `rule "${name}" does not exist`);
      checkGeneration(cur, expectedGeneration);
      await this.applyRuleOps([{ name }]);
    }, opts.signal);
  }

  /** Replace the whole rule set atomically (or only report the changes). */
  applyRules(specs: RuleSpec[], validateOnly: boolean, opts: MutationOptions = {}): Promise<RuleChange[]> {
    return this.serial(async () => {
      if (!validateOnly) this.checkOwner();
      const { changes, ops } = await this.ruleSet(specs);
      if (validateOnly) {
        await this.dryRun((await this.planRuleOps(ops)).plans, new Map(), () => 'links', { rules: opNames(ops) });
      } else {
        await this.applyRuleOps(ops);
        // Unchanged rules: the kernel may hold them otherwise (another tool): compared, repaired, said.
        const same = changes.filter((c) => c.action === 'unchanged').map((c) => c.name);
        const repaired = await this.repairKernel(same);
        for (const c of changes) {
          const r = repaired.get(c.name);
          if (r && c.action === 'unchanged') {
            c.action = 'repaired';
            c.repaired = r;
          }
        }
      }
      return changes;
    }, opts.signal);
  }

  /** A whole rule set checked (INVALID_ARGUMENT naming the field) and compared with the current one. */
  private async ruleSet(specs: RuleSpec[], say = true): Promise<{ changes: RuleChange[]; ops: RuleOp[] }> {
    // A 10 000-rule set takes long to check and compare: yield to the event loop every 10 ms of it.
    const pace = pacer();
    const violations: FieldViolation[] = [];
    const seen = new Map<string, number>();
    for (const [i, s] of specs.entries()) {
      validateRule(s, `rules[${i}]`, violations);
      if (seen.has(s.name)) {
        violations.push({ field: `rules[${i}].name`, description: `duplicates rules[${seen.get(s.name)}].name` });
      }
      seen.set(s.name, i);
      await pace();
    }
    throwIfInvalid(violations);
    const changes: RuleChange[] = [];
    const ops: RuleOp[] = [];
    // Two rules of the set with the same match on one ingress: bad input, the request's own (matchClash).
    const claimedBy = new Map<string, number>();
    const named: RuleSpec[] = [];
    for (const [i, given] of specs.entries()) {
      const { spec: s, renamed } = this.ruleByDeviceName(given, `rules[${i}]`, say);
      named.push(s);
      const clash = matchClash(named, i, claimedBy);
      if (clash) violations.push(clash);
      const cur = this.state.rules.get(s.name);
      const action: ChangeAction = !cur ? 'create' : sameSpec(cur, s) ? 'unchanged' : 'update';
      changes.push({ name: s.name, action, ...(renamed.length ? { renamed } : {}) });
      if (action !== 'unchanged') ops.push({ name: s.name, next: s, field: `rules[${i}]` });
      await pace();
    }
    throwIfInvalid(violations);
    for (const name of this.state.rules.keys()) {
      if (!seen.has(name)) {
        changes.push({ name, action: 'delete' });
        ops.push({ name });
      }
    }
    changes.sort((x, y) => x.name.localeCompare(y.name));
    return { changes, ops };
  }

  /** Fetch the facts and compute the plan (no kernel change). */
  private async planRuleOps(ops: RuleOp[], napi?: Facts['napi'], pace = pacer(), reapply = false) {
    const facts = await fetchRuleFacts(
      this.dp,
      ops.flatMap((o) => (o.next ? [o.next] : [])),
      undefined,
      pace,
    );
    if (napi) for (const [k, v] of napi) facts.napi.set(k, v);
    // What was kept under a name that names another device now is not carried over (device-identity.ts).
    forgetReplacedDevices(this.ctx, facts);
    holdNeighbours(facts.neighbours, this.state.neighbourHolds); // confirmed MACs kept (neighbour-hold.ts)
    // A backend the datapath forwards to whose neighbour entry is missing (not failed) keeps its MAC, on the
    // device the datapath forwards to it through (the rule was written with that ifindex), never on another.
    facts.keptMacs = this.keptMacs(ops, facts, (name, key) => {
      const k = this.state.ruleKernel.get(name);
      const b = k?.status.backends.find((x) => `${x.ip}@${x.interface}` === key);
      if (!b?.receiving || !b.mac) return undefined;
      return k!.ifindexes.get(b.interface) === facts.interfaces.get(b.interface)?.ifindex ? b.mac : undefined;
    });
    // Static MACs the host contradicts (static-mac.ts): those judged, and those the change names for the first
    // time that the host contradicts already (a veth peer or our ARP answers with another MAC), kept out of the
    // table as a pass's re-apply would: the reply says what a read right after it says.
    const fresh = await contradictedNewStaticMacs(
      this.ctx,
      ops.flatMap((o) => (o.next ? [o.next] : [])),
    );
    facts.macConflicts = fresh.size ? new Map([...this.state.macConflicts, ...fresh]) : this.state.macConflicts;
    facts.movedEgresses = movedEgresses(this.state); // egresses moved to another namespace (moved.ts)
    // A re-apply (the reconciler's, a start's) keeps out the backends that close a forwarding loop the host made
    // (resync.ts judgeHostLoops). A client's change is checked for loops on the host as it is now (preflight):
    // refused if it would make one, else none of its backends closes one.
    if (reapply) facts.hostLoops = this.state.hostLoops;
    return planRulesPaced(
      {
        rules: this.state.rules,
        ops,
        facts,
        free: {
          slots: this.state.slots.available,
          ruleStatsIds: this.state.ruleStatsIds.available,
          backendIds: this.state.backendIds.available,
        },
        claims: this.state.claims,
        inUse: { matchIds: this.state.matchHolders, srcPrefixes: this.state.srcPrefixes },
        capacity: this.dp.capacity,
      },
      pace,
    );
  }

  /**
   * Facts.keptMacs for these operations: each backend given without a MAC whose neighbour entry is missing
   * (Dataplane.neighbourMissing: none, or being resolved; never a failed one) and to which the datapath
   * forwards with a MAC (`forwarding(rule, "ip@iface")`: that MAC, or undefined) keeps that MAC; its entry is
   * probed (a broadcast ARP request), so that the next pass finds it resolved or failed. Logged once each.
   */
  private keptMacs(
    ops: readonly RuleOp[],
    facts: Facts,
    forwarding: (rule: string, key: string) => string | undefined,
  ): Map<string, string> | undefined {
    if (!this.dp.neighbourMissing) return undefined;
    let out: Map<string, string> | undefined;
    for (const op of ops) {
      for (const b of op.next?.backends ?? []) {
        const key = neighbourKey(b.ip, b.interface);
        if (b.mac !== '' || facts.neighbours.get(key) || out?.has(key)) continue;
        if (!facts.interfaces.get(b.interface) || !this.dp.neighbourMissing(b.ip, b.interface)) continue;
        const mac = forwarding(op.name, key);
        if (!mac) continue;
        (out ??= new Map()).set(key, mac);
        this.dp.probeNeighbour?.(b.ip, b.interface);
        if (this.state.logged.get(`neigh-kept/${key}`) !== mac) {
          this.state.logged.set(`neigh-kept/${key}`, mac);
          this.log.info(
            { rule: op.name, backend: b.ip, interface: b.interface, mac },
            `backend ${b.ip} on ${b.interface}: ${keptMacWhy(b.ip, b.interface, mac)}`,
          );
        }
      }
    }
    return out;
  }

  /**
   * The MAC each backend given without a MAC received traffic with when this daemon started (its backend
   * entry, where its rule's table held it): "ip@iface" -> MAC. What a start writes instead is a MAC change,
   * logged as one ({@link logStartMacChanges}).
   */
  private startMacs = new Map<string, string>();

  /**
   * Start-up, before the rules are adopted or rewritten: each backend given without a MAC that the datapath
   * forwards to (`forwarding(rule, "ip@iface")`: the MAC in its backend entry) whose neighbour entry holds
   * another MAC that no probe of ours has answered (one set by hand too, unless no ARP request of ours can be
   * sent), keeps the datapath's MAC (neighbour-hold.ts startHold: `state.neighbourHolds`, unconfirmed), and
   * the entry is probed at once; the
   * reconciler's passes then end the hold as they end any (written once a MAC answers, at most
   * NEIGHBOUR_HOLD_MS). An unanswered entry is no more evidence than a missing one (Facts.keptMacs): one
   * written while the daemon was stopped lost 162 of 600 datagrams when it was written at start.
   */
  private holdAtStart(
    ops: readonly RuleOp[],
    facts: Facts,
    forwarding: (rule: string, key: string) => string | undefined,
  ): void {
    for (const op of ops) {
      for (const b of op.next?.backends ?? []) {
        const key = neighbourKey(b.ip, b.interface);
        if (b.mac !== '' || !facts.interfaces.get(b.interface)) continue;
        const mac = this.startMacs.has(key) ? this.startMacs.get(key) : forwarding(op.name, key);
        if (!mac) continue;
        this.startMacs.set(key, mac);
        const entry = facts.neighbours.get(key);
        if (!entry || this.state.neighbourHolds.has(key) || !this.dp.neighbourAnswered) continue;
        const h = startHold({
          entry,
          answered: this.dp.neighbourAnswered(b.ip, b.interface)?.toLowerCase() === entry.toLowerCase(),
          // Set by hand: asked like any other, unless no ARP request of ours can be sent (then followed).
          handSet: this.dp.neighbourHandSet?.(b.ip, b.interface) !== undefined && !!this.dp.arpUnavailable?.(),
          forwarding: mac,
          now: this.mono(),
        });
        if (!h) continue;
        this.state.neighbourHolds.set(key, h);
        this.state.neighbourMacs.set(key, mac);
        this.state.reconcilerEvents.neighbour_changes_held++;
        if (this.dp.verifyNeighbour?.(b.ip, b.interface, true)) this.state.reconcilerEvents.neighbour_probes++;
        if (this.dp.askNeighbour?.(b.ip, b.interface, mac)) this.state.reconcilerEvents.neighbour_probes++;
        this.log.info(
          { rule: op.name, backend: b.ip, interface: b.interface, kept: h.kept, entry: h.candidate },
          startHoldText(b.ip, b.interface, h),
        );
      }
    }
  }

  /**
   * After a start wrote its rules: each backend given without a MAC now in its table with another MAC than
   * the one it received traffic with when the daemon started ({@link startMacs}) had its MAC changed by the
   * start (an entry set by hand, followed at once; one that answered a probe of ours): logged as the
   * reconciler logs a MAC change. Every such backend's MAC is what later changes are compared with.
   */
  private logStartMacChanges(): void {
    for (const [name, k] of this.state.ruleKernel) {
      const rule = this.state.rules.get(name);
      if (!rule || this.state.failed.has(name)) continue;
      const written = (k.written ?? k.status).backends;
      rule.backends.forEach((spec, i) => {
        const b = written[i];
        if (spec.mac !== '' || !b?.receiving || !b.mac) return;
        const key = neighbourKey(spec.ip, spec.interface);
        const was = this.startMacs.get(key);
        if (!this.state.neighbourMacs.has(key)) this.state.neighbourMacs.set(key, b.mac);
        if (was === undefined || was.toLowerCase() === b.mac.toLowerCase()) return;
        this.startMacs.set(key, b.mac); // said once, however many rules share the backend
        this.state.neighbourMacs.set(key, b.mac);
        this.state.reconcilerEvents.neighbour_mac_changes++;
        this.log.info(
          { rule: name, backend: spec.ip, interface: spec.interface, from: was, to: b.mac },
          `backend ${spec.ip} on ${spec.interface} has a new MAC, ${was} -> ${b.mac} (neighbour table): rewritten at start`,
        );
      });
    }
    this.startMacs = new Map();
  }

  /**
   * One rules transaction, in this order: fetch the facts, plan (no I/O);
   * take ids (memory); BEGIN and write the rows; write the kernel over an
   * undo log; COMMIT; only then clear what the change replaced. A failure
   * anywhere before COMMIT returns (or the failed COMMIT) undoes the kernel
   * steps and rolls the rows back, so the kernel, the disk and this state
   * stay as they were, and the error says which (store errors name the
   * path). `restoring` (start-up, resync) rewrites rules without changing
   * them: there a store that cannot persist is logged, not fatal, since what
   * the clients were told is unchanged.
   */
  private async applyRuleOps(ops: RuleOp[], restoring = false, napi?: Facts['napi']): Promise<void> {
    if (ops.length === 0) return;
    const attachedBefore = new Map<string, Attachment | undefined>();
    for (const op of ops) {
      for (const r of [this.state.rules.get(op.name), op.next]) {
        for (const i of r?.ingressInterfaces ?? []) attachedBefore.set(i, this.state.attached.get(i));
      }
    }
    // A client's change is observed from here on (a restored rule's unchanged conditions stay of unknown time).
    if (!restoring) for (const op of ops) this.restoredKeys?.delete(`rule/${op.name}`);
    // Large changes yield to the event loop every 10 ms of work: reads are answered meanwhile (from the state before the change).
    const pace = pacer();
    const plan = await this.planRuleOps(ops, napi, pace, restoring);
    // A client's change: what can be known without changing anything is checked before anything is written.
    let checked: Awaited<ReturnType<typeof preflight>> = {};
    if (!restoring) {
      checked = await preflight(
        this.ctx,
        plan.plans,
        { want: new Map(), field: () => 'links' },
        { rules: opNames(ops) },
        { restoring },
      );
    }
    const alloc = await this.transact(async (undo, t) => {
      const alloc = await allocateRules(this.ctx, ops, plan, restoring, undo, pace);
      const b = this.begin(restoring, ops.length);
      const txn = (t.txn = b instanceof Promise ? await b : b);
      if (txn) {
        for (const row of ruleRows(ops, alloc)) {
          if (typeof row === 'string') txn.deleteRule(row);
          else txn.putRule(row);
          await pace();
        }
      }
      await writeRules(this.ctx, ops, plan, alloc, undo, pace, restoring);
      await this.commit(txn, restoring);
      return alloc;
    });
    // Durable and in the kernel: from here nothing undoes the change. Its rules are judged as a pass judges
    // them before they are recorded, so that no read (nor the reply) sees a status as planned: one said "MAC
    // resolved" for a MAC no probe of ours had answered while a re-apply's pass went on. A client's change logs
    // their transitions; restore's and the reconciler's re-applies leave that to the pass that follows or runs
    // them, which judges them again.
    await finishRules(this.ctx, ops, alloc, pace, true, async (pending) => {
      if (!restoring)
        await this.judgeStaticMacs(
          [...pending.values()].map((p) => p.rule),
          pace,
        );
      // What the loop check could not follow from its backends: its reply says it, as a read after it does.
      recordChangeLoopsUnknown(this.state, checked.loopsUnknown);
      await observeWrittenRules(this.ctx, pending.keys(), alloc.unverified, pace, !restoring, pending);
    });
    recordChangeLoopsUnknown(this.state, checked.loopsUnknown); // a change that only deletes rules
    // The write observed: its rules' (and their interfaces') conditions carry its time.
    await this.observed(async (at) => {
      // The ingresses it attached our program to or detached it from (as the plan found them: no lookup).
      const known = new Map<string, InterfaceInfo>();
      for (const p of plan.plans)
        for (const i of p.ingress) known.set(i.name, { name: i.name, ifindex: i.ifindex, mac: '' });
      const lookup = (n: string) => (known.has(n) ? known.get(n) : this.dp.lookupInterface(n));
      let egress: ReturnType<Controller['egressUses']> | undefined;
      for (const [name, a] of attachedBefore) {
        if (this.state.attached.get(name) !== a && this.isManaged(name)) {
          egress ??= this.egressUses();
          this.interfaceView(name, this.state.isUsed(name), at, lookup, egress.of(name));
        }
      }
      await this.observeRules(opNames(ops), at);
    });
  }

  /**
   * Start-up: adopt rules whose stored kernel ids restore reserved, in place
   * (execute.ts adoptRules: compare every entry with the desired state, write
   * only the differences). Nothing is stored: ids and records are unchanged.
   * Returns the operations that could not be adopted (a plan refused, a
   * backend without stored ids, a failed attach or peer check), for the
   * rewrite path.
   */
  private async adoptRuleOps(ops: RuleOp[]): Promise<RuleOp[]> {
    if (ops.length === 0) return [];
    const facts = await fetchRuleFacts(
      this.dp,
      ops.flatMap((o) => (o.next ? [o.next] : [])),
    );
    // The devices what the start decides below is observed on (a later pass forgets it if a name moves).
    forgetReplacedDevices(this.ctx, facts);
    // A start never takes out a backend the datapath was forwarding to because its neighbour entry went
    // while the daemon was stopped (flushed with a bounced egress, garbage-collected): the MAC in its
    // backend entry is kept, marked, and probed; it leaves the table only if the probe fails.
    const rings = new Map<number, Set<number>>();
    const forwarding = (name: string, key: string): string | undefined => {
      const k = this.state.ruleKernel.get(name);
      const id = k?.backends.get(key)?.id;
      if (!k || id === undefined || !this.dp.readBackends) return undefined;
      let ring = rings.get(k.slot);
      if (!ring) {
        try {
          rings.set(k.slot, (ring = new Set(this.dp.readRing(k.slot))));
        } catch {
          return undefined;
        }
      }
      if (!ring.has(id)) return undefined; // not forwarded to: nothing to keep
      const e = this.dp.readBackends([id]).get(id);
      if (!e || e.dmac.every((x) => x === 0)) return undefined;
      // Forwarded through another device than the one the name has now (renamed while the daemon was stopped):
      // that MAC was the other device's host's, nothing to keep here.
      if (e.ifindex !== facts.interfaces.get(key.slice(key.indexOf('@') + 1))?.ifindex) return undefined;
      return formatMac(e.dmac);
    };
    facts.keptMacs = this.keptMacs(ops, facts, forwarding);
    // Nor because its entry holds another MAC that no probe of ours has answered (written while the daemon was
    // stopped): the MAC in its backend entry is kept, the entry's probed, and written only once it answers.
    this.holdAtStart(ops, facts, forwarding);
    holdNeighbours(facts.neighbours, this.state.neighbourHolds);
    // What the start judged before writing (restore.ts: static MACs the host contradicts, backends closing a
    // forwarding loop the host made) is kept out of the plans, as a pass's re-apply keeps it out: a backend the
    // last run took out is compared as out, not written back (and said "differed ... rewritten").
    facts.macConflicts = this.state.macConflicts;
    facts.hostLoops = this.state.hostLoops;
    // A rule is adopted when it plans (a refused one is for the rewrite path, which reports it) and every backend
    // it plans has stored ids. Planned again chunk by chunk (adoptRules): the same facts give the same plan.
    const planOf = (op: RuleOp): RulePlan | undefined => {
      const k = this.state.ruleKernel.get(op.name);
      let p: RulePlan | undefined;
      try {
        p = op.next && planOne(op, facts);
      } catch {
        return undefined;
      }
      return !p || !k || p.backends.some((b) => !k.backends.has(b.key)) ? undefined : p;
    };
    // Whether the kernel's tables held any rule entry before: none means new maps (a --max-rules or layout
    // migration, or pins removed), where every entry is written, not found to differ.
    const before = this.dp.listMatches().length;
    const undo = new UndoLog();
    let r: Awaited<ReturnType<typeof adoptRules>>;
    try {
      r = await adoptRules(this.ctx, ops, planOf, undo);
    } catch (e) {
      undo.rollback(this.log);
      this.log.warn({ err: e }, 'adopting the rules in place failed: rewriting them');
      return ops;
    }
    for (const [name, k] of r.kernel) {
      this.state.setKernel(name, k);
      this.state.failed.delete(name);
    }
    releaseUnusedInterfaces(this.ctx);
    // Said from what the comparison found and what the kernel then holds (read back), not from the plan.
    const slots = new Set([...r.kernel.values()].map((k) => k.slot));
    const inKernel = this.dp.listMatches().filter(([, slot]) => slots.has(slot)).length;
    if (r.repaired.length && before === 0) {
      this.log.info(
        { written: r.repaired.slice(0, 100).map((x) => x.line), count: r.repaired.length },
        `adopted rules written into empty tables (no rule entry in them at start): ${r.repaired.length} entries written`,
      );
    } else if (r.repaired.length) {
      // Entries written to take out a backend that cannot receive now (its egress missing, down, ...: what the host
      // shows, as a pass takes it out) are said as such; only the others differed from what was last written.
      const out = r.repaired.filter((x) => x.takenOut);
      const differed = out.length ? r.repaired.filter((x) => !x.takenOut) : r.repaired;
      if (out.length) {
        const why = [...new Set(out.flatMap((x) => x.takenOut!.split('; ')))];
        this.log.info(
          { written: out.slice(0, 100).map((x) => x.line), count: out.length, backends: why.slice(0, 100) },
          `adopted rules: ${out.length} kernel entries written to take out backends that cannot receive now, as a ` +
            `pass takes them out (${why.slice(0, 5).join('; ')}${why.length > 5 ? `; ${why.length - 5} more` : ''})`,
        );
      }
      if (differed.length) {
        this.log.warn(
          { repaired: differed.slice(0, 100).map((x) => x.line), count: differed.length },
          `adopted rules: ${differed.length} kernel entries differed from the stored state (compared one by one) and were rewritten`,
        );
      }
    }
    this.log.info(
      { adopted: r.kernel.size, written: r.repaired.length, inKernel },
      `rules adopted in place: ${r.kernel.size}, ${r.repaired.length} entries written, ${inKernel} match entries read back from the kernel`,
    );
    return r.rest;
  }

  /**
   * BEGIN a store transaction (restoring: a store that cannot persist is logged and skipped). A promise only
   * when the store answers on its worker thread: without a store (or with a synchronous one) a change takes
   * no extra turn of the event loop here.
   */
  private begin(restoring: boolean, rows?: number): StoreTxn | undefined | Promise<StoreTxn | undefined> {
    if (!this.opts.store) return undefined;
    const refused = (e: unknown) => {
      if (!restoring) throw e;
      this.log.error(
        { err: e },
        'the state store cannot persist: the kernel ids of rewritten rules were not saved (the desired state is unchanged)',
      );
      return undefined;
    };
    try {
      const t = this.opts.store.begin(rows);
      return t instanceof Promise ? t.catch(refused) : t;
    } catch (e) {
      return refused(e);
    }
  }

  /** The device settings the change under way has changed ({@link transact}). */
  private hostScope?: HostChangeScope;

  /**
   * COMMIT a change: first the host-changes record of what it did to the host (its writes settled within
   * their bound: a disk that did not complete one refuses the change, as a COMMIT that did not complete does),
   * then the store, so that the host, the record and the store never disagree about an acknowledged change.
   */
  private async commit(txn: StoreTxn | undefined, restoring: boolean): Promise<void> {
    try {
      await this.hostScope?.settle?.();
    } catch (e) {
      // A start or a pass: what it did to the host stays (said: not recorded; GetStatus warnings), its rows commit.
      if (!restoring) throw e;
    }
    try {
      await txn?.commit();
    } catch (e) {
      if (!restoring) throw e;
      this.log.error(
        { err: e },
        'the state store cannot persist: the kernel ids of rewritten rules were not saved (the desired state is unchanged)',
      );
    }
  }

  /**
   * An interface name given as an alternative name of a device (`ip link property add dev X altname Y`,
   * which the kernel resolves to X too) replaced by the device's name: a device is managed, listed and
   * counted once, under its name, whichever of its names a rule or link gave (managed as two interfaces,
   * deleting the rule on the altname detached our program from the device under the other rules). The
   * same object back when nothing was replaced; `renamed` says what was, for the reply, and is logged.
   */
  private deviceNameOf(given: string, field: string, renamed: string[]): string {
    const dev = this.dp.deviceName?.(given);
    if (!dev) {
      // No device has that name; a device whose name is not UTF-8 may be what it means (core/non-utf8.ts).
      const meant = this.dp.deviceName && nonUtf8Meant(given, this.dp.nonUtf8Interfaces?.() ?? []);
      if (meant) {
        const description = nonUtf8Text(given, meant);
        throw new CoreError('precondition', `${field ? `${field}: ` : ''}${description}`, [{ field, description }]);
      }
    }
    if (!dev || dev.name === given) return given;
    const line = `${field ? `${field}: ` : ''}interface ${given} is an alternative name of ${dev.name} (ifindex ${dev.ifindex}): ${dev.name} is stored`;
    if (!renamed.includes(line)) renamed.push(line);
    return dev.name;
  }

  private ruleByDeviceName(spec: RuleSpec, field = 'rule', say = true): { spec: RuleSpec; renamed: string[] } {
    const renamed: string[] = [];
    const ingress = spec.ingressInterfaces.map((n, i) =>
      this.deviceNameOf(n, `${field}.ingress_interfaces[${i}]`, renamed),
    );
    const backends = spec.backends.map((b, i) => {
      const iface = this.deviceNameOf(b.interface, `${field}.backends[${i}].interface`, renamed);
      return iface === b.interface ? b : { ...b, interface: iface };
    });
    if (!renamed.length) return { spec, renamed };
    if (say) this.log.info({ rule: spec.name, renamed }, `rule ${spec.name}: ${renamed.join('; ')}`);
    return { spec: { ...spec, ingressInterfaces: ingress, backends }, renamed };
  }

  private linkByDeviceName(spec: LinkSpec, field: string): { spec: LinkSpec; renamed: string[] } {
    const renamed: string[] = [];
    const a = this.deviceNameOf(spec.a, field ? `${field}.a` : '', renamed);
    const b = this.deviceNameOf(spec.b, field ? `${field}.b` : '', renamed);
    // Two names of one device (one an alternative name of the other): a link of the device to itself.
    if (field && a === b && spec.a !== spec.b) {
      const description = `must differ from ${field}.a: ${spec.a} and ${spec.b} name one device (${a})`;
      throw CoreError.invalid([{ field: `${field}.b`, description }]);
    }
    if (!renamed.length) return { spec, renamed };
    if (field) this.log.info({ link: `${a}-${b}`, renamed }, `link ${a}-${b}: ${renamed.join('; ')}`);
    return { spec: { ...spec, a, b }, renamed };
  }

  // ---- links ------------------------------------------------------------

  connect(link: LinkSpec, opts: MutationOptions = {}): Promise<LinkSpec & { renamed?: string[] }> {
    return this.serial(async () => {
      this.checkOwner();
      throwIfInvalid(validateLink(link, 'link'));
      const named = this.linkByDeviceName(link, 'link');
      link = named.spec;
      this.requireInterfaces([[link, 'link']]);
      const existing = this.state.links.get(linkKey(link));
      if (existing) {
        throw new CoreError(
          'exists',
          `${existing.a} and ${existing.b} are already linked (use ApplyLinks, or disconnect first, to change it)`,
        );
      }
      const next = new Map(this.state.links);
      next.set(linkKey(link), link);
      this.refuseLoops(next, () => 'link');
      await this.applyLinkSet(next, 'link');
      return named.renamed.length ? { ...link, renamed: named.renamed } : link;
    }, opts.signal);
  }

  disconnect(a: string, b: string, opts: MutationOptions = {}): Promise<void> {
    return this.serial(async () => {
      this.checkOwner();
      let key = linkKey({ a, b });
      // Given by an alternative name of a device: the link names the device.
      if (!this.state.links.has(key)) key = linkKey(this.linkByDeviceName({ a, b, direction: 'both' }, '').spec);
      if (!this.state.links.has(key)) throw new CoreError('not-found', `no link between ${a} and ${b}`);
      const next = new Map(this.state.links);
      next.delete(key);
      await this.applyLinkSet(next, 'link');
    }, opts.signal);
  }

  applyLinks(specs: LinkSpec[], validateOnly: boolean, opts: MutationOptions = {}): Promise<LinkChange[]> {
    return this.serial(async () => {
      if (!validateOnly) this.checkOwner();
      const { changes, next, fieldOf } = this.linkSet(specs);
      if (validateOnly) {
        const { interfaces } = fetchInterfaces(this.dp, linkInterfaces(next.values()));
        const want = planLinks(this.plannable(next, interfaces), interfaces, 'links');
        await this.dryRun([], want, fieldOf, { rules: new Set(), links: next });
      } else await this.applyLinkSet(next, 'links', false, fieldOf);
      return changes;
    }, opts.signal);
  }

  /**
   * A whole link set checked (INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION naming `links[i]`) and
   * compared with the current one; `fieldOf` names the link an ingress belongs to.
   */
  private linkSet(
    specs: LinkSpec[],
    say = true,
  ): {
    changes: LinkChange[];
    next: Map<string, LinkSpec>;
    fieldOf: (from: string) => string;
  } {
    const violations: FieldViolation[] = [];
    const next = new Map<string, LinkSpec>();
    const usedIngress = new Map<string, number>();
    const renamedOf = new Map<string, string[]>();
    specs = specs.map((given, i) => {
      const before = violations.length;
      validateLink(given, `links[${i}]`, violations);
      if (violations.length > before) return given;
      const named = this.linkByDeviceName(given, say ? `links[${i}]` : '');
      if (named.renamed.length) renamedOf.set(linkKey(named.spec), named.renamed);
      // The same two-way link given with its ends the other way round is the stored one as it is stored:
      // kept so (was: "unchanged" said while the ends were written swapped, A→B and B→A flipped in the list).
      const cur = this.state.links.get(linkKey(named.spec));
      return cur && sameLink(cur, named.spec) ? { a: cur.a, b: cur.b, direction: cur.direction } : named.spec;
    });
    specs.forEach((l, i) => {
      const key = linkKey(l);
      if (next.has(key)) violations.push({ field: `links[${i}]`, description: `${l.a}-${l.b} is listed twice` });
      next.set(key, l);
      // One ingress per link of an interface to itself (refused by validateLink; kept for a stored one).
      for (const from of new Set(l.direction === 'both' ? [l.a, l.b] : [l.a])) {
        if (usedIngress.has(from)) {
          violations.push({
            field: `links[${i}]`,
            description: `${from} already forwards to another interface (links[${usedIngress.get(from)}])`,
          });
        }
        usedIngress.set(from, i);
      }
    });
    throwIfInvalid(violations);
    // A link already in the desired state as it is (unchanged) does not need its interfaces now: one whose
    // end is missing waits for it, marked by the reconciler, as it does while the daemon runs and at a
    // restore. So the same file on the same host is judged the same whether its link's end disappeared
    // before or after a restart (was: in force before, refused InterfaceMissing after). New and changed
    // links need both ends.
    this.requireInterfaces(
      specs.flatMap((l, i): [LinkSpec, string][] => (this.inForce(l) ? [] : [[l, `links[${i}]`]])),
    );
    this.refuseLoops(next, (l) => `links[${specs.indexOf(l)}]`);
    const changes: LinkChange[] = [];
    for (const [key, l] of next) {
      const cur = this.state.links.get(key);
      const renamed = renamedOf.get(key);
      changes.push({
        a: l.a,
        b: l.b,
        action: !cur ? 'create' : sameLink(cur, l) ? 'unchanged' : 'update',
        ...(renamed ? { renamed } : {}),
      });
    }
    for (const [key, l] of this.state.links) {
      if (!next.has(key)) changes.push({ a: l.a, b: l.b, action: 'delete' });
    }
    const fieldOf = (from: string) => {
      const i = usedIngress.get(from);
      return i === undefined ? 'links' : `links[${i}]`;
    };
    return { changes, next, fieldOf };
  }

  /**
   * The links of `next` to write now: all but those in force unchanged whose end is missing (they wait for
   * it, marked by the reconciler: linkSet), or with `tolerant` (restore, resync) all whose end is missing.
   * A new or changed link with a missing end stays, for planLinks to refuse it (NOT_FOUND).
   */
  private plannable(
    next: Map<string, LinkSpec>,
    interfaces: ReadonlyMap<string, InterfaceInfo | undefined>,
    tolerant = false,
  ): Map<string, LinkSpec> {
    // So does a link the host made into a forwarding loop after it was accepted (resync.ts judgeLinkLoops): out
    // of the devmap until the host no longer makes the loop.
    const waits = (l: LinkSpec) =>
      (!interfaces.get(l.a) || !interfaces.get(l.b) || this.state.linkLoops.has(linkKey(l))) &&
      (tolerant || this.inForce(l));
    return [...next.values()].some(waits) ? new Map([...next].filter(([, l]) => !waits(l))) : next;
  }

  /** Whether a link is in the desired state exactly as given (a file's link that is unchanged). */
  private inForce(l: LinkSpec): boolean {
    const cur = this.state.links.get(linkKey(l));
    return !!cur && sameLink(cur, l);
  }

  /**
   * validate_only: the kernel preconditions a check can know without changing anything (execute.ts
   * preflight), so that a dry run refuses what the change would be refused for there.
   */
  private async dryRun(
    plans: RulePlan[],
    want: Map<string, LinkDirection>,
    fieldOf: (from: string) => string,
    scope: { rules: ReadonlySet<string>; links?: ReadonlyMap<string, LinkSpec> },
  ) {
    try {
      await preflight(this.ctx, plans, { want, field: fieldOf }, scope, { occupied: true });
    } finally {
      this.ctx.preflightTargets = undefined;
    }
  }

  /** FAILED_PRECONDITION naming a link of a set that would forward frames in a loop (plan-links.ts forwardingLoop). */
  private refuseLoops(next: Map<string, LinkSpec>, fieldOf: (l: LinkSpec) => string): void {
    const peerOf = this.dp.vethPeer?.bind(this.dp);
    const dp = this.dp;
    const uppersOf = dp.upperLinks
      ? (n: string) => dp.upperLinks!(n)
      : (n: string) => {
          const m = dp.masterLink?.(n);
          return m ? [{ name: m.name, via: 'master' as const, ...(m.kind !== undefined ? { kind: m.kind } : {}) }] : [];
        };
    const portsOf = dp.bridgePorts?.bind(dp);
    const loop =
      peerOf && forwardingLoop(next, peerOf, { uppersOf, ...(portsOf ? { portsOf } : {}), ...txReaders(dp) });
    if (!loop) return;
    const field = fieldOf(loop.link);
    const description = `these links would forward frames in a loop forever: ${loop.path}`;
    throw new CoreError('precondition', `${field}: ${description}`, [{ field, description }]);
  }

  /**
   * NOT_FOUND naming each end (`link.a`, `links[2].b`) that is not an
   * interface of this namespace, before anything about the other end (its
   * links, its state) is considered; then INVALID_ARGUMENT naming each end
   * without an Ethernet address.
   */
  private requireInterfaces(links: [LinkSpec, string][]): void {
    const facts = fetchInterfaces(
      this.dp,
      links.flatMap(([l]) => [l.a, l.b]),
    );
    const missing: FieldViolation[] = [];
    for (const [l, field] of links) {
      for (const end of ['a', 'b'] as const) {
        if (!facts.interfaces.get(l[end])) {
          missing.push({ field: `${field}.${end}`, description: `interface "${l[end]}" does not exist` });
        }
      }
    }
    if (missing.length) {
      throw new CoreError('not-found', missing.map((v) => `${v.field}: ${v.description}`).join('; '), missing);
    }
    // A link moves Ethernet frames as they are: an end without an Ethernet address (lo, a tun or
    // WireGuard device: all zeros) cannot take them, as a backend's egress cannot (plan-rules.ts).
    const noEthernet: FieldViolation[] = [];
    for (const [l, field] of links) {
      for (const end of ['a', 'b'] as const) {
        const mac = facts.interfaces.get(l[end])!.mac;
        if (/^(00:){5}00$/.test(mac)) {
          noEthernet.push({
            field: `${field}.${end}`,
            description: `interface "${l[end]}" has no Ethernet address (its MAC is ${mac}): it cannot send or receive the Ethernet frames a link forwards`,
          });
        }
      }
    }
    if (noEthernet.length) {
      throw new CoreError('invalid', noEthernet.map((v) => `${v.field}: ${v.description}`).join('; '), noEthernet);
    }
  }

  /** One links transaction, ordered as {@link applyRuleOps}: rows, kernel over an undo log, COMMIT, finish. `tolerant` (restore, resync): a foreign program is recorded, not fatal, and a store that cannot persist is logged. */
  private async applyLinkSet(
    next: Map<string, LinkSpec>,
    field: string,
    tolerant = false,
    fieldOf?: (from: string) => string,
  ): Promise<void> {
    const sourcesBefore = this.activeLinkSources();
    const ends = new Set<string>();
    for (const l of [...this.state.links.values(), ...next.values()]) ends.add(l.a).add(l.b);
    const facts = fetchInterfaces(this.dp, linkInterfaces(next.values()));
    // Restore and resync: a link whose interface is missing waits (desired and stored, reported by the
    // reconciler) while every other link is written; so does, for a change, a link it leaves as it is; a
    // change names the missing interface of a link it makes or changes (NOT_FOUND).
    const want = planLinks(this.plannable(next, facts.interfaces, tolerant), facts.interfaces, field);
    fetchInterfaces(
      this.dp,
      [...this.state.linkDirs.values()].map((d) => d.to),
      facts,
    );
    const cur = currentLinks(this.state.linkDirs, new Map(this.dp.listLinks()));
    // A client's change: what can be known without changing anything is checked before anything is written.
    if (!tolerant)
      await preflight(this.ctx, [], { want, field: fieldOf ?? (() => field) }, { rules: new Set(), links: next });
    const unverified = await this.transact(async (undo, t) => {
      const b = this.begin(tolerant);
      const txn = (t.txn = b instanceof Promise ? await b : b);
      if (txn) {
        for (const [key, l] of next) if (this.state.links.get(key) !== l) txn.putLink(l);
        for (const key of this.state.links.keys()) if (!next.has(key)) txn.deleteLink(key);
      }
      const unverified = await prepareLinks(this.ctx, next, want, field, undo, tolerant, fieldOf);
      connectLinks(this.ctx, want, cur, undo);
      await this.commit(txn, tolerant);
      return unverified;
    });
    finishLinks(this.ctx, next, want, unverified);
    if (!tolerant) observeLinkDirections(this.ctx, want);
    // The write observed: the links, their interfaces, and the rules on an ingress a link now shadows or
    // no longer shadows, with its time.
    await this.observed(async (at) => {
      const sources = this.activeLinkSources();
      const flipped = [...sourcesBefore.keys()].filter((i) => !sources.has(i));
      for (const i of sources.keys()) if (!sourcesBefore.has(i)) flipped.push(i);
      const lookup = (n: string) => (facts.interfaces.has(n) ? facts.interfaces.get(n) : this.dp.lookupInterface(n));
      if (this.state.links.size) this.listLinks(at, false, lookup);
      const egress = this.egressUses();
      for (const name of ends) {
        if (this.isManaged(name)) this.interfaceView(name, this.state.isUsed(name), at, lookup, egress.of(name));
      }
      await this.observeRules(
        flipped.flatMap((i) => [...(this.state.ifaceRules.get(i) ?? [])]),
        at,
      );
    });
  }

  // ---- start-up and interface churn -------------------------------------

  /** Take over a stored desired state on start (restore.ts). */
  restore(stored: StoredState): Promise<void> {
    // What it takes over has held since before this start, for a time the daemon cannot know: its
    // conditions carry no transition time until they change after the first reconciler pass has seen them.
    const keys = new Set<string>();
    for (const r of stored.rules) {
      keys.add(`rule/${r.name}`);
      for (const i of r.ingressInterfaces) keys.add(`if/${i}`);
      for (const b of r.backends) keys.add(`if/${b.interface}`);
    }
    for (const l of stored.links)
      keys
        .add(`link/${linkKey(l)}`)
        .add(`if/${l.a}`)
        .add(`if/${l.b}`);
    this.restoredKeys = keys;
    return this.serial(
      async () => {
        // Static MACs and forwarding loops the host made are judged inside, before anything is written.
        await restore(this.ctx, this.tx, stored);
        this.logStartMacChanges();
        // Judged as a pass judges them (unconfirmed MACs, static MACs not confirmed yet, ingresses down, ...),
        // so that a read before the first pass says no more than was observed; their transitions are the first
        // pass's to log, and it asks what is to be asked (nothing is waited for here).
        await observeWrittenRules(
          this.ctx,
          [...this.state.ruleKernel.keys()].filter((n) => !this.state.failed.has(n)),
          undefined,
          pacer(),
          false,
        );
      },
      undefined,
      true,
    );
  }

  /**
   * One pass of the reconciler (resync.ts): repair what drifted, re-apply
   * what the host changed, and report. Returns the names of missing
   * interfaces; {@link problems} has what it found wrong, with the rules not ACTIVE.
   */
  async resync(): Promise<string[]> {
    this.passBegan = this.mono();
    try {
      return await this.resyncPass();
    } finally {
      this.passBegan = undefined;
      this.lastPassEnded = this.mono();
      this.overdue = undefined;
    }
  }

  /** When the reconciler's pass under way began (undefined: none is), and when its last one ended (ms, monotonic). */
  private passBegan?: number;
  private lastPassEnded: number;
  /** What {@link passOverdue} last found (undefined: no pass overdue). */
  private overdue?: string;

  /** Seconds since the reconciler's last pass ended (0 while none has run for long: see {@link passOverdue}). */
  lastPassAge(now = this.mono()): number {
    return Math.max(0, Math.round((now - this.lastPassEnded) / 1000));
  }

  /**
   * Whether the pass under way has run longer than `limitMs` (a child that does not answer, each killed at its
   * deadline; a wedged read): then the words that say so, kept for {@link problems} and GetStatus until the
   * pass ends. Undefined when no pass is overdue.
   */
  passOverdue(limitMs: number, now = this.mono()): string | undefined {
    if (this.passBegan === undefined || now - this.passBegan < limitMs) {
      this.overdue = undefined;
      return undefined;
    }
    this.overdue =
      `the reconciler's pass has not ended for ${Math.round((now - this.passBegan) / 1000)} s (its last pass ended ` +
      `${this.lastPassAge(now)} s ago): statuses may be stale, host changes since are not taken in yet`;
    return this.overdue;
  }

  /** The repairs another tool keeps undoing now (core/fights.ts), one text each. */
  repairFights(): string[] {
    return this.state.fights.current().map((f) => f.text);
  }

  /** The forwarding loops the host made that the reconciler keeps backends out for (rule-loops.ts), one text each. */
  forwardingLoops(): string[] {
    return [...this.state.hostLoopList.values()].map(hostLoopProblem);
  }

  /**
   * The rule backends and links on no forwarding loop found whose way back cannot be told (a veth peer in another
   * namespace that leads on there, a device whose receive or transmit the loop walk does not follow: rule-loops.ts),
   * one text each, at most `limit` then how many more: what the daemon cannot observe, not a problem.
   */
  loopsUntold(limit: number): string[] {
    const out = [
      ...[...this.state.hostLoopsUnknown].map(([key, why]) => `rule ${key.slice(0, key.indexOf('|'))}: ${why}`),
      ...[...this.state.linkLoopsUnknown].map(([key, why]) => {
        const l = this.state.links.get(key);
        return `link ${l ? `${l.a} <-> ${l.b}` : key}: ${why}`;
      }),
    ];
    if (out.length <= limit) return out;
    return [...out.slice(0, limit), `${out.length - limit} more (each rule's and link's status says its own)`];
  }

  /** The overdue pass's words ({@link passOverdue}), while it is overdue. */
  reconcilerOverdue(): string | undefined {
    return this.overdue;
  }

  private async resyncPass(): Promise<string[]> {
    // A pass holds the write queue. Until it has written something it gives its
    // turn to a change that is waiting (ends and queues again behind it), every
    // time, once it has read the host's facts and then done a slice of its own
    // work in this turn: what it checked and judged is kept in the state (the
    // rules and static MACs still to check and judge, the rules with MAC-less
    // backends still to visit), so the next turn goes on from there and passes
    // complete under a steady stream of changes too. The slice grows with each
    // turn given in a row, up to PASS_SLICES slices.
    for (let preempted = 0; ; preempted++) {
      try {
        const r = await this.serial(
          () => {
            this.passWrote = false;
            const pace = pacer();
            const slice = SLICE_MS * Math.min(1 + preempted, PASS_SLICES);
            let own = 0;
            let resumed: number | undefined; // counted once the pass has read its facts
            return resync(
              this.ctx,
              this.tx,
              async () => {
                if (resumed !== undefined) {
                  own += performance.now() - resumed;
                  if (!this.passWrote && this.changesWaiting > 0 && own >= slice) throw new Preempted();
                }
                await pace();
                if (resumed !== undefined) resumed = performance.now();
              },
              () => (resumed = performance.now()),
            );
          },
          undefined,
          true,
        );
        this.lastProblems = r.problems;
        // What the pass observed, with its time: rules whose status changed, every link and interface.
        await this.observed(async (at) => {
          await this.observeLinksAndInterfaces(at, r.interfaces);
          await this.observeRules(r.changed, at);
        });
        this.restoredKeys = undefined; // seen by a pass: a change from here on is observed
        return r.missing;
      } catch (e) {
        if (!(e instanceof Preempted)) throw e;
      }
    }
  }

  /**
   * What is wrong now (empty: the datapath does what was asked): what the last reconciler pass found
   * on the host (missing interfaces, foreign programs), then every rule that is not ACTIVE, from the
   * same statuses as {@link ruleStates} at the moment of the call, so that health, metrics and the API
   * never disagree about a rule (a status written between two passes counts at once).
   */
  /**
   * The state store: its path and, while it refuses writes (as last observed: StateStore.refusal), why (as
   * the disk said) and since when (ms); when the disk last answered a write (`lastAnswer`, ms: the disk probe
   * each pass) and, when that is not recent and nothing refuses, why writability `unknown` (cannot be told);
   * `key`: what stays the same while the refusal does (StateStore.refusal). undefined without a store (--no-state).
   */
  stateStore():
    | { path: string; problem?: string; key?: string; since?: number; unknown?: string; lastAnswer?: number }
    | undefined {
    const s = this.opts.store;
    if (!s) return undefined;
    const r = s.refusal?.();
    const o = s.observed?.();
    const seen = o ? { lastAnswer: o.lastAnswer, ...(o.unknown ? { unknown: o.unknown } : {}) } : {};
    if (!r) return { path: s.path, ...seen };
    const problem = storeReason(r.error);
    // key: the same while the refusal is (a full disk's problem says its bytes free, which move).
    return { path: s.path, problem, key: r.key ?? problem, since: r.since, ...seen };
  }

  problems(): string[] {
    return [...this.hostProblems(), ...this.ruleProblems.lines(this.activeLinkSources())];
  }

  /**
   * The one judgement of the datapath that every reader says: the health service `xdpctl.datapath` is NOT_SERVING
   * exactly while it is non-empty, GetStatus `datapath.warnings` lists it, the `xdpctl.datapath.problems` gauge
   * counts it. The first `limit` problems ({@link problems}' order: the host's first, then the rules not ACTIVE),
   * and when there are more, a last line saying how many are not listed (each rule's status says its own).
   */
  problemReport(limit: number): { listed: string[]; count: number } {
    const all = this.problems();
    if (all.length <= limit) return { listed: all, count: all.length };
    const rest = all.length - limit;
    return {
      listed: [
        ...all.slice(0, limit),
        `${rest} more problem(s) not listed here (rules not ACTIVE: each rule's status says why, xdpctl rules list)`,
      ],
      count: all.length,
    };
  }

  /**
   * The problems that are not one rule's: the overdue pass, what the daemon owns outside the maps, what the last
   * pass found on the host (missing interfaces, foreign programs, links, repair fights, loops), the config file.
   * Shared by {@link problems}, {@link problemCount} and {@link problemsPaced} so that they cannot disagree.
   */
  private hostProblems(): string[] {
    const out = [...(this.overdue ? [this.overdue] : []), ...this.ownFileProblems, ...this.lastProblems];
    if (this.configProblem) out.push(this.configProblem);
    return out;
  }

  /** How many {@link problems} there are, without their texts (the `xdpctl.datapath.problems` gauge, per scrape). */
  problemCount(): number {
    const s = this.ruleStates();
    const rules = Object.entries(s).reduce((n, [state, count]) => (state === 'active' ? n : n + count), 0);
    return this.hostProblems().length + rules;
  }

  /**
   * {@link problems}, awaiting `pace` every {@link COUNTER_SLICE} rules (the reconciler's report after each
   * pass: with 10 000 rules not ACTIVE, every rule's line built at once, then compared as one JSON text, held
   * the event loop after every pass). The rules are those the desired state held when it began, each with its
   * status as it is when its slice runs.
   */
  async problemsPaced(pace: () => Promise<void>): Promise<readonly string[]> {
    const head = this.hostProblems();
    const it = this.ruleProblems.update(this.activeLinkSources());
    let r = it.next();
    while (!r.done) {
      await pace();
      r = it.next();
    }
    const lines = r.value;
    // The same array as last time when nothing in it changed (the report compares it as one object then).
    const last = this.problemsOut;
    if (last && last.lines === lines && sameStrings(last.head, head)) return last.out;
    const out = head.length ? [...head, ...lines] : lines;
    this.problemsOut = { head, lines, out };
    return out;
  }

  /** What {@link problemsPaced} last gave, with what it was made of. */
  private problemsOut?: { head: string[]; lines: readonly string[]; out: readonly string[] };
  /** The rules' problem lines, kept from what changed (rule-problems.ts). */
  private readonly ruleProblems: RuleProblems;

  /**
   * Config-file mode: why the file is not in force while no configuration runs at all (set by the config
   * watcher; undefined once a file is applied). A datapath problem: the operator's desired state is the
   * file, and nothing of it, nor any earlier configuration, runs.
   */
  private configProblem?: string;

  /**
   * Problems with what the daemon owns outside the maps (pin root, state directory and store, sockets), as
   * its reconciler pass observed them: part of {@link problems}, so that the xdpctl.datapath.problems metric
   * counts what keeps the health service NOT_SERVING.
   */
  private ownFileProblems: string[] = [];

  setOwnFileProblems(problems: string[]): void {
    this.ownFileProblems = problems;
  }

  setConfigProblem(problem: string | undefined): void {
    this.configProblem = problem;
  }

  /** How many rules and links the desired state has. */
  desiredCounts(): { rules: number; links: number } {
    return { rules: this.state.rules.size, links: this.state.links.size };
  }

  /** Whether the desired state is empty (no rule, no link). */
  get desiredEmpty(): boolean {
    return this.state.rules.size === 0 && this.state.links.size === 0;
  }

  /** What the reconciler did since the start, by kind (state.ts reconcilerEvents). */
  reconcilerEvents(): Readonly<Record<string, number>> {
    return { ...this.state.reconcilerEvents, counter_resets: this.state.counterResets.total };
  }

  /** Counter resets seen since the start (counters gone down: written by another tool), by object kind. */
  counterResets(): Readonly<Record<string, number>> {
    return this.state.counterResets.counts;
  }

  /** How many rules are in each state now (their status as last written or observed). */
  ruleStates(): Record<RuleState, number> {
    const out: Record<RuleState, number> = { active: 0, degraded: 0, inactive: 0, failed: 0 };
    this.forEachRuleStatus((_, s) => out[s.state]++);
    return out;
  }

  /** Each rule's status as the API shows it (a link on an ingress shadows the rule). */
  private forEachRuleStatus(fn: (name: string, s: RuleStatus) => void): void {
    const shadows = this.activeLinkSources();
    for (const [name, k] of this.state.ruleKernel) {
      const r = this.state.rules.get(name);
      fn(name, r && shadows.size ? shadowedStatus(r, k.status, shadows) : k.status);
    }
  }

  private lastProblems: string[] = [];
  /** Changes (API calls, config) queued and not yet started. */
  private changesWaiting = 0;
  /** Whether the running restore or reconciler pass has started a transaction. */
  private passWrote = false;

  /**
   * Make the kernel match the (empty or restored) desired state: remove
   * match entries and links nobody asked for.
   */
  reconcile(): void {
    reconcileEntries(this.ctx);
    this.dp.rebuildPortIndex();
  }

  // ---- counters -----------------------------------------------------------

  /**
   * Changes of the desired state so far (rules and links created, updated or deleted by any path): a counter
   * read made at an older version shows objects that are gone or misses new ones (CounterHub re-reads).
   */
  get desiredVersion(): number {
    return this.state.desiredVersion;
  }

  /**
   * One read of every counter the desired state has, in slices: it awaits `pace` after every `slice`
   * ({@link COUNTER_SLICE}) rules, backends or ids (the daemon's pacer yields to the event loop once 4 ms of a
   * turn has passed), so that with 10 000 rules of 4 backends no turn of the event loop reads, sums and
   * builds them all (one turn of 150-290 ms before). What the result means, slices being read at different
   * instants (docs/deployment.md, "Counters read in slices"):
   * - the rules are those the desired state held when the read began, in name order, with the backends
   *   their specs named then; one deleted before its counters were read is left out, one created after the
   *   read began is in the next read;
   * - each counter is the kernel's value at one instant between `started` and `time`, of the object it is
   *   reported under at that instant: a rule or backend whose counter id changed meanwhile (it was replaced)
   *   is read at its new id, never another object's counter at its old one;
   * - different objects' counters (a rule's and its backends', two rules') may be read up to `time -
   *   started` apart: a rule's redirected packets and the sum of its backends' need not agree to the packet
   *   while traffic flows, as they need not between two separate reads; each series only grows from one
   *   read to the next (reads of one object never go back in time);
   * - `version` is the desired state's version when the read began: a read during which a change landed is
   *   not shared with reads asked for after it (CounterHub), they read again.
   */
  async readCounters(
    pace: () => Promise<void> = async () => undefined,
    slice = COUNTER_SLICE,
  ): Promise<CounterSnapshot> {
    const started = this.now();
    const version = this.state.desiredVersion;
    const readEpoch = this.state.counterResets.begin();
    const { ruleKernel, rules: specs } = this.state;
    // 1. Who is read: names in order (kept by the state between changes), each rule's kernel record as now.
    const names = this.state.ruleNames();
    const ruleName: string[] = [];
    const ruleId: number[] = [];
    /** Per rule, the index of its first backend in the b* arrays, and how many. */
    const firstBackend: number[] = [];
    const bRule: number[] = [];
    const bKey: string[] = [];
    const bIp: string[] = [];
    const bIface: string[] = [];
    const bId: number[] = [];
    let n = 0; // rules and backends since the last pace
    for (const name of names) {
      if (n >= slice) {
        await pace();
        n = 0;
      }
      n++;
      const k = ruleKernel.get(name);
      const spec = specs.get(name);
      if (!k || !spec) continue;
      const r = ruleName.length;
      ruleName.push(name);
      ruleId.push(k.statsId);
      firstBackend.push(bRule.length);
      for (const b of spec.backends) {
        const key = backendKey(b);
        bRule.push(r);
        bKey.push(key);
        bIp.push(b.ip);
        bIface.push(b.interface);
        bId.push(k.backends.get(key)?.statsId ?? -1);
        n++;
      }
    }
    // 2. The kernel's counters, a range of ids at a time. In the turn a range is read, each id in it is
    //    checked against the object's kernel record as it is then: unchanged, the value read is the object's;
    //    moved to another id, that id is read in the same turn; gone, the object is left out.
    const ruleVals: (RuleStats | undefined)[] = new Array(ruleName.length);
    const ruleGone = new Uint8Array(ruleName.length);
    const bVals: (BackendStats | undefined)[] = new Array(bRule.length);
    const bGone = new Uint8Array(bRule.length);
    /** The stats id each value was read at (the kernel entry a reset is said of). */
    const ruleAt: number[] = new Array(ruleName.length);
    const bAt: number[] = new Array(bRule.length);
    const byId = (ids: number[]) => {
      let top = -1;
      for (const id of ids) if (id > top) top = id;
      const owner = new Int32Array(top + 1).fill(-1);
      ids.forEach((id, i) => id >= 0 && (owner[id] = i));
      return owner;
    };
    const ruleOwner = byId(ruleId);
    for (let lo = 0; lo < ruleOwner.length; lo += slice) {
      await pace();
      const want: number[] = [];
      const moved: [number, number][] = [];
      for (let id = lo; id < Math.min(lo + slice, ruleOwner.length); id++) {
        const r = ruleOwner[id];
        if (r < 0) continue;
        const now = ruleKernel.get(ruleName[r])?.statsId;
        if (now === id) want.push(id);
        else if (now === undefined) ruleGone[r] = 1;
        else moved.push([r, now]);
      }
      const read = this.dp.readCounters(want, [], []).rules;
      for (const id of want) {
        ruleVals[ruleOwner[id]] = read.get(id);
        ruleAt[ruleOwner[id]] = id;
      }
      if (moved.length) {
        const again = this.dp.readCounters(
          moved.map(([, id]) => id),
          [],
          [],
        ).rules;
        for (const [r, id] of moved) {
          ruleVals[r] = again.get(id);
          ruleAt[r] = id;
        }
      }
    }
    const bOwner = byId(bId);
    for (let lo = 0; lo < bOwner.length; lo += slice) {
      await pace();
      const want: number[] = [];
      const moved: [number, number][] = [];
      for (let id = lo; id < Math.min(lo + slice, bOwner.length); id++) {
        const b = bOwner[id];
        if (b < 0) continue;
        const now = ruleKernel.get(ruleName[bRule[b]])?.backends.get(bKey[b])?.statsId;
        if (now === id) want.push(id);
        else if (now === undefined) bGone[b] = 1;
        else moved.push([b, now]);
      }
      const read = this.dp.readCounters([], want, []).backends;
      for (const id of want) {
        bVals[bOwner[id]] = read.get(id);
        bAt[bOwner[id]] = id;
      }
      if (moved.length) {
        const again = this.dp.readCounters(
          [],
          moved.map(([, id]) => id),
          [],
        ).backends;
        for (const [b, id] of moved) {
          bVals[b] = again.get(id);
          bAt[b] = id;
        }
      }
    }
    // Objects no range covered (a backend its rule had no kernel id for when the read began, an id two
    // objects held): read one by one at their ids as they are now (none, normally).
    await pace();
    for (let r = 0; r < ruleName.length; r++) {
      if (ruleVals[r] || ruleGone[r]) continue;
      const id = ruleKernel.get(ruleName[r])?.statsId;
      if (id === undefined) ruleGone[r] = 1;
      else {
        ruleVals[r] = this.dp.readCounters([id], [], []).rules.get(id);
        ruleAt[r] = id;
      }
    }
    for (let b = 0; b < bRule.length; b++) {
      if (bVals[b] || bGone[b]) continue;
      const id = ruleKernel.get(ruleName[bRule[b]])?.backends.get(bKey[b])?.statsId;
      if (id !== undefined) {
        bVals[b] = this.dp.readCounters([], [id], []).backends.get(id);
        bAt[b] = id;
      }
    }
    // 3. The snapshot, in name order; links and the global counters (a few entries) in the last turn.
    const rules: CounterSnapshot['rules'] = [];
    const backends: CounterSnapshot['backends'] = [];
    // Every value read is compared with the one seen last: one that went down is a reset (counter-resets.ts).
    const resets = this.state.counterResets;
    const env = { log: this.log, now: this.now(), mono: this.mono(), readEpoch };
    let made = 0; // rules and backends since the last pace
    for (let r = 0; r < ruleName.length; r++) {
      const end = r + 1 < ruleName.length ? firstBackend[r + 1] : bRule.length;
      made += 1 + end - firstBackend[r];
      if (made > slice) {
        await pace();
        made = 1 + end - firstBackend[r];
      }
      if (ruleGone[r]) continue;
      const c = ruleVals[r];
      const name = ruleName[r];
      const entry = {
        name,
        matched: c?.matched ?? 0n,
        matchedBytes: c?.matchedBytes ?? 0n,
        redirected: c?.redirected ?? 0n,
        redirectedBytes: c?.redirectedBytes ?? 0n,
        filtered: c?.filtered ?? 0n,
        noBackend: c?.noBackend ?? 0n,
        redirectErrors: c?.redirectErrors ?? 0n,
      };
      if (c && ruleAt[r] !== undefined) {
        const { name: _, ...values } = entry;
        resets.observe('rule', ruleAt[r], `rule "${name}"`, `map rule_stats, key ${ruleAt[r]}`, values, env);
      }
      const rAt = ruleAt[r] !== undefined ? resets.resetAt('rule', ruleAt[r]) : undefined;
      const rSeries = ruleAt[r] !== undefined ? resets.series('rule', ruleAt[r], readEpoch) : undefined;
      rules.push({ ...entry, ...seriesFields(rAt, rSeries) });
      for (let b = firstBackend[r]; b < end; b++) {
        if (bGone[b]) continue;
        const v = bVals[b];
        const values = { packets: v?.packets ?? 0n, bytes: v?.bytes ?? 0n, redirectErrors: v?.redirectErrors ?? 0n };
        if (v && bAt[b] !== undefined) {
          const what = `backend ${bIp[b]} on ${bIface[b]} of rule "${name}"`;
          resets.observe('backend', bAt[b], what, `map backend_stats, key ${bAt[b]}`, values, env);
        }
        const bReset = bAt[b] !== undefined ? resets.resetAt('backend', bAt[b]) : undefined;
        const bSeries = bAt[b] !== undefined ? resets.series('backend', bAt[b], readEpoch) : undefined;
        backends.push({
          rule: name,
          ip: bIp[b],
          interface: bIface[b],
          ...values,
          ...seriesFields(bReset, bSeries),
        });
      }
    }
    await pace();
    const linkRead = this.dp.readCounters([], [], [...this.state.linkDirs.keys()]);
    const links = [...this.state.linkDirs.entries()].map(([ifindex, d]) => {
      const c = linkRead.links.get(ifindex);
      if (c) {
        const values = { packets: c.packets, bytes: c.bytes };
        resets.observe('link', ifindex, linkWhat(d), 'map xc_stats', values, { ...env, now: this.now() });
      }
      const lReset = resets.resetAt('link', ifindex);
      return {
        from: d.from,
        to: d.to,
        packets: c?.packets ?? 0n,
        bytes: c?.bytes ?? 0n,
        redirectErrors: c?.redirectErrors ?? 0n,
        ...seriesFields(lReset, resets.series('link', ifindex, readEpoch)),
      };
    });
    links.sort((x, y) => x.from.localeCompare(y.from));
    return { started, time: this.now(), mono: this.mono(), version, rules, backends, links, global: linkRead.global };
  }

  /**
   * Detach from every interface and forget (for --cleanup-on-exit). A device
   * whose upper device still has our program refuses (EEXIST): such ones are
   * retried after the others, so uppers go first.
   */
  detachAll(): string[] {
    const detached: string[] = [];
    const left = new Map([...this.state.attached.keys()].map((n) => [n, undefined as unknown]));
    for (let progress = true; left.size && progress;) {
      progress = false;
      for (const name of left.keys()) {
        try {
          this.dp.detach(name);
          left.delete(name);
          detached.push(name);
          progress = true;
        } catch (e) {
          left.set(name, e);
        }
      }
    }
    for (const [name, err] of left) this.log.warn({ err, ifname: name }, 'detach failed');
    this.state.attached.clear();
    return detached;
  }
}

/**
 * Rules, backends or counter ids a counter read handles between two calls of its pacer
 * ({@link Controller.readCounters}).
 */
export const COUNTER_SLICE = 512;

/** The most slices of its own work ({@link SLICE_MS} each) a reconciler pass does before it gives its turn to a waiting change. */
const PASS_SLICES = 4;

/** The names of the rules a change writes or deletes. */
function opNames(ops: readonly RuleOp[]): Set<string> {
  return new Set(ops.map((o) => o.name));
}

/** Same link: for both directions the order of a and b carries no meaning. */
function sameLink(x: LinkSpec, y: LinkSpec): boolean {
  if (x.direction !== y.direction) return false;
  return x.direction === 'both' ? linkKey(x) === linkKey(y) : x.a === y.a && x.b === y.b;
}

function throwIfInvalid(v: FieldViolation[]): void {
  if (v.length) throw CoreError.invalid(v);
}

function checkGeneration(cur: RuleRecord, expected: number): void {
  if (expected !== 0 && expected !== cur.generation) {
    throw new CoreError(
      'conflict',
      `rule "${cur.name}" is at generation ${cur.generation}, not ${expected}: it changed since you read it`,
    );
  }
}

const SPEC_KEYS: (keyof RuleSpec)[] = [
  'name',
  'protocol',
  'port',
  'destination',
  'sourcePrefixes',
  'ingressInterfaces',
  'backends',
  'udpChecksum',
  'labels',
];

function sameSpec(a: RuleSpec, b: RuleSpec): boolean {
  return SPEC_KEYS.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

/** Shadowed rules a link's warnings name one by one (link.proto LinkStatus.warnings); one more counts the rest. */
const MAX_SHADOW_WARNINGS = 16;

/**
 * An egress interface's uses and what is known against it (Controller.egressUses): the inputs of its
 * EgressReady and FramesFit conditions. Each text ends with the users it is for.
 */
interface EgressFacts {
  /** Its "…/egress" users, sorted. */
  for: readonly string[];
  /** Why it cannot transmit for them (down, no carrier, no native redirects, redirected frames dropped). */
  problems: readonly string[];
  /** Why it cannot be verified that it takes what is redirected to it (its veth peer cannot be inspected). */
  unverified: readonly string[];
  /** Its MTU (or its veth peer's) below an ingress's, or a peer MTU that cannot be read. */
  frames: readonly string[];
}

/** Objects named in a message: up to 5, then how many more. */
/** What the users of each egress say against it, by kind: egress -> text -> its users (in the order noted). */
function namesOf(users: readonly string[]): string {
  return users.length <= 5 ? users.join(', ') : `${users.slice(0, 5).join(', ')} and ${users.length - 5} more`;
}

const sameStrings = (a: readonly string[], b: readonly string[]) =>
  a.length === b.length && a.every((x, i) => x === b[i]);
