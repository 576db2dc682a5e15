/**
 * What the reconciler observed, as OpenTelemetry gauges (docs/architecture.md, promise 2: health,
 * metrics and logs carry the same facts):
 *  - `xdpctl.rules`: rules by state (`xdpctl.rule.state`: active, degraded,
 *    inactive, failed; every state is reported, 0 included, so that an alert
 *    on `degraded > 0` sees the fall back to 0);
 *  - `xdpctl.datapath.problems`: the problems that keep the `xdpctl.datapath`
 *    health service NOT_SERVING (missing interfaces, foreign programs, rules
 *    not ACTIVE, the daemon's own files: pin root, state store, sockets), as
 *    of the reconciler's last pass; 0 when it serves;
 *  - `xdpctl.state_store.writable`: 1 while the state store takes writes, 0 while it refuses them (a full or
 *    read-only disk, an I/O error: as last observed by a change or the reconciler's write probe), with
 *    `xdpctl.state_store.reason` saying why (the disk's words, e.g. "the disk is full (ENOSPC) [SQLITE_FULL]")
 *    and `xdpctl.state_store.path`; one point per collection (a reason is exported only while it holds: a
 *    MetricProducer, gauge-producer.ts, {@link storeMetrics}); not reported without a store (--no-state);
 *  - `xdpctl.reconciler.events`: what the reconciler did to keep the datapath
 *    true, by `xdpctl.event` (neighbour_probes, neighbour_mac_changes, neighbour_changes_held, neighbour_conflicts, egress_mac_changes, kernel_repairs, counter_resets,
 *    egress_ejections), counted since the start;
 *  - `xdpctl.counter_resets` (Prometheus `xdpctl_counter_resets_total{xdpctl_counter_kind}`): served counters
 *    seen to go down, by `xdpctl.counter.kind` (rule, backend, link): their kernel entry written by another
 *    tool (core/counter-resets.ts), counted since the start;
 *  - `xdpctl.reconciler.last_pass_age`: seconds since the reconciler's last pass ended (a pass runs each
 *    second: a value that keeps growing is a pass that does not end, its statuses stale).
 * Both are read from the core at collection time: no per-rule state here.
 */
import type { Meter } from '@opentelemetry/api';

import type { RuleState } from '../core/model.js';
import { GaugeProducer, type GaugeNow } from './gauge-producer.js';

export const STATE_METRICS = {
  rules: 'xdpctl.rules',
  problems: 'xdpctl.datapath.problems',
  events: 'xdpctl.reconciler.events',
  storeWritable: 'xdpctl.state_store.writable',
  lastPassAge: 'xdpctl.reconciler.last_pass_age',
  counterResets: 'xdpctl.counter_resets',
} as const;

/** The attribute naming the kind of object on `xdpctl.counter_resets`: rule, backend, link. */
export const COUNTER_KIND_ATTR = 'xdpctl.counter.kind';

/** The attributes of `xdpctl.state_store.writable`: the database path, and why it refuses writes (0 only). */
export const STORE_PATH_ATTR = 'xdpctl.state_store.path';
export const STORE_REASON_ATTR = 'xdpctl.state_store.reason';

/** The attribute naming the kind of a reconciler event on `xdpctl.reconciler.events`. */
export const EVENT_ATTR = 'xdpctl.event';

/** The attribute naming a rule state on `xdpctl.rules`. */
export const RULE_STATE_ATTR = 'xdpctl.rule.state';

/** Every state a rule can be in (model.ts RuleState; the proto's RuleStatus.State). */
export const RULE_STATES: readonly RuleState[] = ['active', 'degraded', 'inactive', 'failed'];

/** Where the gauges read from (the controller). */
export interface StateSource {
  /** Rules per state now. */
  ruleStates(): Record<RuleState, number>;
  /** The reconciler's last list of problems (empty: the datapath is as desired). */
  problems(): readonly string[];
  /** How many problems(): counted without making their texts (one per rule not ACTIVE). */
  problemCount?(): number;
  /** What the reconciler did since the start, by kind. */
  reconcilerEvents(): Readonly<Record<string, number>>;
  /** Seconds since the reconciler's last pass ended. */
  lastPassAge?(): number;
  /** Counters seen to go down (reset by another tool) since the start, by object kind. */
  counterResets?(): Readonly<Record<string, number>>;
}

/** The state store as observed: its path, and why it refuses writes while it does. */
export interface StoreReport {
  path: string;
  problem?: string;
}

/**
 * `xdpctl.state_store.writable` (see above): exactly one point, 1 while the store takes writes, 0 with the
 * reason while it refuses them; the daemon attaches the controller's stateStore().
 */
export class StoreMetricProducer extends GaugeProducer<StoreReport> {
  protected gauges(s: StoreReport): GaugeNow[] {
    return [
      {
        name: STATE_METRICS.storeWritable,
        description:
          'Whether the state store takes writes: 1 yes, 0 no (every change is refused), with xdpctl.state_store.reason as the disk said (ENOSPC, EROFS, EIO, a write lock another process holds) only while 0; as last observed by a change or the write probe of the reconciler (each second)',
        unit: '{store}',
        points: [
          s.problem === undefined
            ? { attributes: { [STORE_PATH_ATTR]: s.path }, value: 1 }
            : { attributes: { [STORE_PATH_ATTR]: s.path, [STORE_REASON_ATTR]: s.problem }, value: 0 },
        ],
      },
    ];
  }
}

/** The process's producer (one per process, like configMetrics). */
export const storeMetrics = new StoreMetricProducer();

/** Register the gauges; returns a function that unregisters them (daemon stop). */
export function registerStateMetrics(meter: Meter, source: StateSource): () => void {
  const rules = meter.createObservableGauge(STATE_METRICS.rules, {
    description: 'Rules by state (active, degraded, inactive, failed) as the reconciler observed them',
    unit: '{rule}',
  });
  const problems = meter.createObservableGauge(STATE_METRICS.problems, {
    description:
      'Problems keeping the xdpctl.datapath health service NOT_SERVING (missing interfaces, foreign programs, rules not ACTIVE); 0: as desired',
    unit: '{problem}',
  });
  const events = meter.createObservableCounter(STATE_METRICS.events, {
    description:
      'What the reconciler did to keep the datapath true, by xdpctl.event: neighbour_probes (a neighbour entry a backend relies on set to NUD_PROBE, or its MAC asked by an ARP request of our own), neighbour_mac_changes (a backend rewritten with a new neighbour MAC), neighbour_changes_held (a neighbour entry that changed to a MAC no ARP probe of ours had answered: the answered MAC kept in the datapath until the new one answers), neighbour_conflicts (two MACs answering ARP for one backend address at once, an address conflict: the MAC in the datapath kept, the backend unverified while both answer), egress_ejections (backends taken out because the kernel dropped every frame redirected to their egress), egress_mac_changes (an egress whose own MAC changed: its backends rewritten with it as the source MAC), kernel_repairs (map entries that differed from the desired state, e.g. written by another tool, rewritten), counter_resets (rule, backend or link counters seen to go down while their object existed: their kernel entry written by another tool; by kind in xdpctl.counter_resets)',
    unit: '{event}',
  });
  const observeEvents = (r: { observe(v: number, a?: Record<string, string>): void }) => {
    for (const [k, v] of Object.entries(source.reconcilerEvents())) r.observe(v, { [EVENT_ATTR]: k });
  };
  const observeRules = (r: { observe(v: number, a?: Record<string, string>): void }) => {
    const counts = source.ruleStates();
    for (const s of RULE_STATES) r.observe(counts[s] ?? 0, { [RULE_STATE_ATTR]: s });
  };
  const observeProblems = (r: { observe(v: number): void }) =>
    r.observe(source.problemCount?.() ?? source.problems().length);
  const age = meter.createObservableGauge(STATE_METRICS.lastPassAge, {
    description:
      "Seconds since the reconciler's last pass ended (one runs each second; growing: a pass that does not end, statuses stale)",
    unit: 's',
  });
  const observeAge = (r: { observe(v: number): void }) => {
    const a = source.lastPassAge?.();
    if (a !== undefined) r.observe(a);
  };
  const resets = meter.createObservableCounter(STATE_METRICS.counterResets, {
    description:
      'Served counters seen to go down while their object existed, by xdpctl.counter.kind (rule, backend, link): their kernel entry was written by another tool (a reset; logged and among the object warnings for an hour; the object series continue from the new, lower value)',
    unit: '{reset}',
  });
  const observeResets = (r: { observe(v: number, a?: Record<string, string>): void }) => {
    const c = source.counterResets?.();
    if (c) for (const [k, v] of Object.entries(c)) r.observe(v, { [COUNTER_KIND_ATTR]: k });
  };
  resets.addCallback(observeResets);
  age.addCallback(observeAge);
  rules.addCallback(observeRules);
  problems.addCallback(observeProblems);
  events.addCallback(observeEvents);
  return () => {
    age.removeCallback(observeAge);
    resets.removeCallback(observeResets);
    events.removeCallback(observeEvents);
    rules.removeCallback(observeRules);
    problems.removeCallback(observeProblems);
  };
}
