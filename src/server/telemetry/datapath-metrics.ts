/**
 * The datapath's counters as OpenTelemetry observable counters, per rule, per
 * backend, per link direction and per XDP verdict, plus the CounterHub's own
 * read count. Every collection takes ONE snapshot from the CounterHub (the
 * same shared kernel read the WatchCounters streams use: while a watch runs,
 * a collection reuses its latest read instead of reading the kernel again),
 * and feeds every instrument from it in one batch callback.
 *
 * Must not read the kernel itself, nor keep per-rule state: names come and go
 * with the snapshot.
 */
import type { BatchObservableResult, Meter } from '@opentelemetry/api';

import type { CounterHub } from '../core/counter-hub.js';

/** Metric names (OpenTelemetry; Prometheus shows dots as underscores, counters with `_total`). */
export const DATAPATH_METRICS = {
  rulePackets: 'xdpctl.rule.packets',
  ruleBytes: 'xdpctl.rule.bytes',
  backendPackets: 'xdpctl.backend.packets',
  backendBytes: 'xdpctl.backend.bytes',
  linkPackets: 'xdpctl.link.packets',
  linkBytes: 'xdpctl.link.bytes',
  verdictPackets: 'xdpctl.datapath.packets',
  hubReads: 'xdpctl.counter_hub.reads',
  hubWatchers: 'xdpctl.counter_hub.watchers',
} as const;

/** Attribute names on those metrics. */
export const DATAPATH_ATTRS = {
  rule: 'xdpctl.rule',
  /** matched | redirected | filtered | no_backend (packets); matched | redirected (bytes). */
  outcome: 'xdpctl.outcome',
  backendIp: 'xdpctl.backend.ip',
  backendInterface: 'xdpctl.backend.interface',
  linkFrom: 'xdpctl.link.from',
  linkTo: 'xdpctl.link.to',
  /** aborted | drop | pass | tx | redirect. */
  verdict: 'xdpctl.verdict',
} as const;

/** XDP actions in the order of the global counters (XDP_ABORTED = 0 ... XDP_REDIRECT = 4). */
const VERDICTS = ['aborted', 'drop', 'pass', 'tx', 'redirect'];

/**
 * How old a hub snapshot a collection may reuse. Exports run every 15-60 s;
 * a read younger than this is as good as a new one.
 */
export const MAX_SNAPSHOT_AGE_MS = 1000;

/** Register the instruments; returns a function that unregisters them (daemon stop). */
export function registerDatapathMetrics(meter: Meter, hub: CounterHub): () => void {
  const counter = (name: string, description: string, unit: string) =>
    meter.createObservableCounter(name, { description, unit });
  const rulePackets = counter(
    DATAPATH_METRICS.rulePackets,
    'Packets seen by a rule, by outcome: matched, redirected, filtered (source not allowed), no_backend (dropped)',
    '{packet}',
  );
  const ruleBytes = counter(DATAPATH_METRICS.ruleBytes, 'Bytes matched and redirected by a rule', 'By');
  const backendPackets = counter(DATAPATH_METRICS.backendPackets, 'Packets redirected to a backend', '{packet}');
  const backendBytes = counter(DATAPATH_METRICS.backendBytes, 'Bytes redirected to a backend', 'By');
  const linkPackets = counter(DATAPATH_METRICS.linkPackets, 'Packets forwarded by a link direction', '{packet}');
  const linkBytes = counter(DATAPATH_METRICS.linkBytes, 'Bytes forwarded by a link direction', 'By');
  const verdictPackets = counter(
    DATAPATH_METRICS.verdictPackets,
    'Packets the XDP program handled, by verdict',
    '{packet}',
  );
  const hubReads = counter(
    DATAPATH_METRICS.hubReads,
    'Kernel counter reads made by the counter hub (shared by every watch stream and metric export)',
    '{read}',
  );
  const hubWatchers = meter.createObservableGauge(DATAPATH_METRICS.hubWatchers, {
    description: 'WatchCounters streams currently open',
    unit: '{stream}',
  });

  const A = DATAPATH_ATTRS;
  const callback = (r: BatchObservableResult) => {
    // Reads first: a read this collection triggers is counted in it.
    let snap;
    try {
      snap = hub.isClosed ? undefined : hub.recent(MAX_SNAPSHOT_AGE_MS);
    } catch {
      snap = undefined; // a failed kernel read leaves the datapath counters out of this export
    }
    r.observe(hubReads, hub.reads);
    r.observe(hubWatchers, hub.watcherCount);
    if (!snap) return;
    for (const x of snap.rules) {
      const rule = { [A.rule]: x.name };
      r.observe(rulePackets, Number(x.matched), { ...rule, [A.outcome]: 'matched' });
      r.observe(rulePackets, Number(x.redirected), { ...rule, [A.outcome]: 'redirected' });
      r.observe(rulePackets, Number(x.filtered), { ...rule, [A.outcome]: 'filtered' });
      r.observe(rulePackets, Number(x.noBackend), { ...rule, [A.outcome]: 'no_backend' });
      r.observe(ruleBytes, Number(x.matchedBytes), { ...rule, [A.outcome]: 'matched' });
      r.observe(ruleBytes, Number(x.redirectedBytes), { ...rule, [A.outcome]: 'redirected' });
    }
    for (const b of snap.backends) {
      const attrs = { [A.rule]: b.rule, [A.backendIp]: b.ip, [A.backendInterface]: b.interface };
      r.observe(backendPackets, Number(b.packets), attrs);
      r.observe(backendBytes, Number(b.bytes), attrs);
    }
    for (const l of snap.links) {
      const attrs = { [A.linkFrom]: l.from, [A.linkTo]: l.to };
      r.observe(linkPackets, Number(l.packets), attrs);
      r.observe(linkBytes, Number(l.bytes), attrs);
    }
    VERDICTS.forEach((verdict, i) => r.observe(verdictPackets, Number(snap.global[i] ?? 0n), { [A.verdict]: verdict }));
  };
  const observables = [
    rulePackets,
    ruleBytes,
    backendPackets,
    backendBytes,
    linkPackets,
    linkBytes,
    verdictPackets,
    hubReads,
    hubWatchers,
  ];
  meter.addBatchObservableCallback(callback, observables);
  return () => meter.removeBatchObservableCallback(callback, observables);
}
