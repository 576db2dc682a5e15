/**
 * The datapath's counters as metrics, per rule, per backend, per link
 * direction, per XDP verdict and per datapath error (redirect errors included),
 * plus the CounterHub's own read count.
 *
 * The per-object counters are NOT SDK instruments: they are a MetricProducer
 * ({@link datapathMetrics}) that every metric reader the daemon makes is given
 * (telemetry/sdk.ts). Each collection takes ONE snapshot from the CounterHub
 * (the same shared kernel read the WatchCounters streams use: while a watch
 * runs, a collection reuses its latest read instead of reading the kernel
 * again, unless a rule or link was created, updated or deleted since that read:
 * then it reads again) and reports exactly the objects in it. Observable instruments of the
 * JavaScript SDK (3.x) did not: a deleted rule's series was exported with its
 * last value for as long as the daemon ran (the specification says an SDK
 * SHOULD NOT report an attribute set its callback no longer observed), and past
 * the SDK's default cardinality limit of 2 000 series per instrument (a rule
 * has 4 packet series: 500 rules) further rules and backends were folded into
 * one `otel_metric_overflow` series holding one rule's value. Collecting 10 000
 * rules x 4 backends through the instruments also took ~650 ms of the event
 * loop (hashing 140 000 attribute sets); building the points directly, a small
 * fraction of that (test/unit/telemetry.test.ts; BENCHMARKS.md).
 *
 * Must not read the kernel itself. The only state kept per series is its start
 * time (when this daemon first reported it, or when its counters were last seen
 * reset by another tool: the start of a cumulative sum), pruned to the series
 * of the latest collection.
 */
import { ValueType, type HrTime, type Meter } from '@opentelemetry/api';
import type {
  CollectionResult,
  DataPoint,
  MetricData,
  MetricProducer,
  ResourceMetrics,
} from '@opentelemetry/sdk-metrics';

import type { CounterSnapshot } from '../core/controller.js';
import type { CounterHub } from '../core/counter-hub.js';
import { GlobalStat } from '../core/dataplane.js';

/** Metric names (OpenTelemetry; Prometheus shows dots as underscores, counters with `_total`). */
export const DATAPATH_METRICS = {
  rulePackets: 'xdpctl.rule.packets',
  ruleBytes: 'xdpctl.rule.bytes',
  backendPackets: 'xdpctl.backend.packets',
  backendBytes: 'xdpctl.backend.bytes',
  linkPackets: 'xdpctl.link.packets',
  linkBytes: 'xdpctl.link.bytes',
  ruleRedirectErrors: 'xdpctl.rule.redirect_errors',
  backendRedirectErrors: 'xdpctl.backend.redirect_errors',
  linkRedirectErrors: 'xdpctl.link.redirect_errors',
  verdictPackets: 'xdpctl.datapath.packets',
  datapathErrors: 'xdpctl.datapath.errors',
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
  /** The keys of GetCounters' GlobalCounters.errors: truncated, fragment, no_rule, ..., xmit, martian, xmit_unattributed, not_for_us. */
  error: 'xdpctl.error',
} as const;

/** XDP actions in the order of the global counters (XDP_ABORTED = 0 ... XDP_REDIRECT = 4). */
const VERDICTS = ['aborted', 'drop', 'pass', 'tx', 'redirect'];

/** The datapath's error counters (enum xdpctl_stat's ERR_*), named as GlobalCounters.errors names them. */
const ERRORS = Object.entries(GlobalStat)
  .filter(([k]) => k.startsWith('ERR_'))
  .map(([k, i]) => [k.slice(4).toLowerCase(), i] as const);

/**
 * How old a hub snapshot a collection may reuse. Exports run every 15-60 s;
 * a read younger than this is as good as a new one, as long as the desired
 * state has not changed since (CounterHub re-reads after any change).
 */
export const MAX_SNAPSHOT_AGE_MS = 1000;

/** @opentelemetry/sdk-metrics' enum values, without loading the SDK where no metrics are exported. */
const CUMULATIVE = 1; // AggregationTemporality.CUMULATIVE
const SUM = 3; // DataPointType.SUM

/** Objects (rules, backends, links) turned into points per turn of the event loop. */
const BUILD_SLICE = 1024;

const hrTime = (ms: number): HrTime => [Math.floor(ms / 1000), (ms % 1000) * 1e6];

/** The per-object datapath counters, as a MetricProducer for the daemon's metric readers. */
export class DatapathMetricProducer implements MetricProducer {
  private hub?: CounterHub;
  private scope = { name: 'xdpctld' as string, version: undefined as string | undefined };
  private attachedAt: HrTime = hrTime(Date.now());
  /** Series key -> when it was first reported (start of its cumulative sum). */
  private starts = new Map<string, HrTime>();

  /** Report this hub's snapshots (the daemon's start); the scope is the daemon's instrumentation scope. */
  attach(hub: CounterHub, scope: { name: string; version?: string }): void {
    this.hub = hub;
    this.scope = { name: scope.name, version: scope.version };
    this.attachedAt = hrTime(Date.now());
    this.starts = new Map();
  }

  /** Stop reporting (the daemon's stop): collections are empty. */
  detach(hub: CounterHub): void {
    if (this.hub !== hub) return;
    this.hub = undefined;
    this.starts = new Map();
  }

  async collect(): Promise<CollectionResult> {
    const resourceMetrics = {
      resource: undefined, // MetricReader.collect keeps the SDK's resource and ignores a producer's
      scopeMetrics: [{ scope: this.scope, metrics: await this.build() }],
    } as unknown as ResourceMetrics;
    return { resourceMetrics, errors: [] };
  }

  /**
   * The Prometheus text of one hub snapshot's metrics, written straight from the snapshot: the same families,
   * series and values as the exporter's serializer writes for {@link build}'s points (each family one group:
   * `# HELP`, `# UNIT`, `# TYPE`, then its series; the scope as `otel_scope_name`/`otel_scope_version`), without
   * a data point and an attribute object per series (with 10 000 rules x 4 backends, 190 000 of them at every
   * scrape, then their text made a slice at a time: the garbage and the serializer held the event loop 50-90 ms
   * in turns). `send` takes each piece (at most {@link PROMETHEUS_SLICE} objects' lines) and `pace` is awaited
   * after each. Nothing is written when detached or when the read fails (as {@link build} reports nothing).
   */
  async writePrometheus(send: (text: string) => Promise<void>, pace: () => Promise<void>): Promise<void> {
    const hub = this.hub;
    let snap;
    try {
      snap = hub && !hub.isClosed ? await hub.recent(MAX_SNAPSHOT_AGE_MS) : undefined;
    } catch {
      snap = undefined;
    }
    if (!snap) return;
    let scope = `otel_scope_name="${labelValue(this.scope.name)}"`;
    if (this.scope.version) scope += `,otel_scope_version="${labelValue(this.scope.version)}"`;
    const A = Object.fromEntries(Object.entries(DATAPATH_ATTRS).map(([k, v]) => [k, promName(v)])) as Record<
      keyof typeof DATAPATH_ATTRS,
      string
    >;
    const family = async <T>(
      k: keyof typeof DESCRIPTIONS,
      of: readonly T[],
      lines: (x: T, name: string) => string,
    ): Promise<void> => {
      const name = `${promName(DATAPATH_METRICS[k])}_total`;
      const d = DESCRIPTIONS[k];
      let text = `# HELP ${name} ${metaText(d.description)}\n# UNIT ${name} ${metaText(d.unit)}\n# TYPE ${name} counter\n`;
      for (let i = 0; i < of.length; i++) {
        text += lines(of[i], name);
        if ((i + 1) % PROMETHEUS_SLICE === 0 && i + 1 < of.length) {
          await send(text);
          text = '';
          await pace();
        }
      }
      await send(text);
      await pace();
    };
    const v = (x: bigint) => String(Number(x)); // as the exporter writes a point's value (a number)
    const rule = (outcome: string) => (x: { name: string }, name: string, value: bigint) =>
      `${name}{${A.rule}="${labelValue(x.name)}",${A.outcome}="${outcome}",${scope}} ${v(value)}\n`;
    const [matched, redirected, filtered, noBackend] = ['matched', 'redirected', 'filtered', 'no_backend'].map(rule);
    const backend = (b: CounterSnapshot['backends'][number]) =>
      `{${A.rule}="${labelValue(b.rule)}",${A.backendIp}="${labelValue(b.ip)}",${A.backendInterface}="${labelValue(b.interface)}",${scope}} `;
    const link = (l: CounterSnapshot['links'][number]) =>
      `{${A.linkFrom}="${labelValue(l.from)}",${A.linkTo}="${labelValue(l.to)}",${scope}} `;
    // In build()'s order of the metrics.
    await family('rulePackets', snap.rules, (x, n) =>
      [
        matched(x, n, x.matched),
        redirected(x, n, x.redirected),
        filtered(x, n, x.filtered),
        noBackend(x, n, x.noBackend),
      ].join(''),
    );
    await family(
      'ruleBytes',
      snap.rules,
      (x, n) => matched(x, n, x.matchedBytes) + redirected(x, n, x.redirectedBytes),
    );
    await family('backendPackets', snap.backends, (b, n) => `${n}${backend(b)}${v(b.packets)}\n`);
    await family('backendBytes', snap.backends, (b, n) => `${n}${backend(b)}${v(b.bytes)}\n`);
    await family('linkPackets', snap.links, (l, n) => `${n}${link(l)}${v(l.packets)}\n`);
    await family('linkBytes', snap.links, (l, n) => `${n}${link(l)}${v(l.bytes)}\n`);
    await family(
      'ruleRedirectErrors',
      snap.rules,
      (x, n) => `${n}{${A.rule}="${labelValue(x.name)}",${scope}} ${v(x.redirectErrors)}\n`,
    );
    await family('backendRedirectErrors', snap.backends, (b, n) => `${n}${backend(b)}${v(b.redirectErrors)}\n`);
    await family('linkRedirectErrors', snap.links, (l, n) => `${n}${link(l)}${v(l.redirectErrors)}\n`);
    const global = snap.global;
    await family(
      'verdictPackets',
      VERDICTS,
      (verdict, n) => `${n}{${A.verdict}="${verdict}",${scope}} ${v(global[VERDICTS.indexOf(verdict)] ?? 0n)}\n`,
    );
    await family(
      'datapathErrors',
      ERRORS,
      ([error, i], n) => `${n}{${A.error}="${error}",${scope}} ${v(global[i] ?? 0n)}\n`,
    );
  }

  /**
   * The metrics of one hub snapshot: exactly the objects in it (none when detached or when the read fails).
   * Yields to the event loop every {@link BUILD_SLICE} objects.
   */
  async build(): Promise<MetricData[]> {
    const hub = this.hub;
    let snap;
    try {
      snap = hub && !hub.isClosed ? await hub.recent(MAX_SNAPSHOT_AGE_MS) : undefined;
    } catch {
      snap = undefined; // a failed kernel read leaves the datapath counters out of this export
    }
    if (!snap) return [];
    const end = hrTime(Date.now());
    const prev = this.starts;
    const next = new Map<string, HrTime>();
    // A series whose counters were seen to go down (reset by another tool, core/counter-resets.ts) starts
    // again when they did: under cumulative temporality a decrease with the same start time would say counts
    // were lost from one sum; a new start time says a new sum began (the OTLP data model's reset).
    const ms = (t: HrTime) => t[0] * 1000 + t[1] / 1e6;
    // So does one whose object was deleted and re-created between two exports (its counters zeroed by the daemon:
    // a start later than the one held).
    const startOf = (key: string, x: { resetAt?: number; start?: number }): HrTime => {
      let t = next.get(key);
      if (t) return t;
      t = prev.get(key) ?? end;
      const began = Math.max(x.resetAt ?? -Infinity, x.start ?? -Infinity);
      if (began > ms(t)) t = hrTime(began);
      next.set(key, t);
      return t;
    };
    const A = DATAPATH_ATTRS;
    const sums = {
      rulePackets: [] as DataPoint<number>[],
      ruleBytes: [] as DataPoint<number>[],
      backendPackets: [] as DataPoint<number>[],
      backendBytes: [] as DataPoint<number>[],
      linkPackets: [] as DataPoint<number>[],
      linkBytes: [] as DataPoint<number>[],
      ruleRedirectErrors: [] as DataPoint<number>[],
      backendRedirectErrors: [] as DataPoint<number>[],
      linkRedirectErrors: [] as DataPoint<number>[],
      verdictPackets: [] as DataPoint<number>[],
      datapathErrors: [] as DataPoint<number>[],
    };
    const point = (to: DataPoint<number>[], startTime: HrTime, attributes: Record<string, string>, v: bigint) =>
      to.push({ startTime, endTime: end, attributes, value: Number(v) });
    let n = 0;
    const yieldNow = () => new Promise((r) => setImmediate(r));
    for (const x of snap.rules) {
      if (++n % BUILD_SLICE === 0) await yieldNow();
      const s = startOf(`r\0${x.name}`, x);
      const out = (o: string) => ({ [A.rule]: x.name, [A.outcome]: o });
      point(sums.rulePackets, s, out('matched'), x.matched);
      point(sums.rulePackets, s, out('redirected'), x.redirected);
      point(sums.rulePackets, s, out('filtered'), x.filtered);
      point(sums.rulePackets, s, out('no_backend'), x.noBackend);
      point(sums.ruleBytes, s, out('matched'), x.matchedBytes);
      point(sums.ruleBytes, s, out('redirected'), x.redirectedBytes);
      point(sums.ruleRedirectErrors, s, { [A.rule]: x.name }, x.redirectErrors);
    }
    for (const b of snap.backends) {
      if (++n % BUILD_SLICE === 0) await yieldNow();
      const s = startOf(`b\0${b.rule}\0${b.ip}\0${b.interface}`, b);
      const attrs = { [A.rule]: b.rule, [A.backendIp]: b.ip, [A.backendInterface]: b.interface };
      point(sums.backendPackets, s, attrs, b.packets);
      point(sums.backendBytes, s, attrs, b.bytes);
      point(sums.backendRedirectErrors, s, attrs, b.redirectErrors);
    }
    for (const l of snap.links) {
      const s = startOf(`l\0${l.from}\0${l.to}`, l);
      const attrs = { [A.linkFrom]: l.from, [A.linkTo]: l.to };
      point(sums.linkPackets, s, attrs, l.packets);
      point(sums.linkBytes, s, attrs, l.bytes);
      point(sums.linkRedirectErrors, s, attrs, l.redirectErrors);
    }
    VERDICTS.forEach((verdict, i) =>
      point(sums.verdictPackets, this.attachedAt, { [A.verdict]: verdict }, snap.global[i] ?? 0n),
    );
    for (const [error, i] of ERRORS) {
      point(sums.datapathErrors, this.attachedAt, { [A.error]: error }, snap.global[i] ?? 0n);
    }
    this.starts = next;
    return (Object.keys(sums) as (keyof typeof sums)[]).map((k) => ({
      descriptor: { name: DATAPATH_METRICS[k], ...DESCRIPTIONS[k], valueType: ValueType.INT },
      aggregationTemporality: CUMULATIVE,
      dataPointType: SUM,
      isMonotonic: true,
      dataPoints: sums[k],
    })) as unknown as MetricData[];
  }
}

/** Objects (rules, backends, links) written as Prometheus text per piece ({@link DatapathMetricProducer.writePrometheus}). */
export const PROMETHEUS_SLICE = 512;

/** A Prometheus label value as @opentelemetry/exporter-prometheus escapes it (backslash, newline, quote). */
const labelValue = (v: string) =>
  /[\\\n"]/.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v;
/** A HELP or UNIT text as the exporter escapes it (backslash, newline). */
const metaText = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
/** An OpenTelemetry name as a Prometheus one (the exporter's sanitizePrometheusMetricName). */
const promName = (v: string) => v.replace(/[^a-z0-9_]/gi, '_').replace(/_{2,}/g, '_');

const DESCRIPTIONS = {
  rulePackets: {
    description:
      'Packets seen by a rule, by outcome: matched, redirected, filtered (source not allowed), no_backend (dropped)',
    unit: '{packet}',
  },
  ruleBytes: { description: 'Bytes matched and redirected by a rule', unit: 'By' },
  backendPackets: { description: 'Packets redirected to a backend', unit: '{packet}' },
  backendBytes: { description: 'Bytes redirected to a backend', unit: 'By' },
  linkPackets: { description: 'Packets forwarded by a link direction', unit: '{packet}' },
  linkBytes: { description: 'Bytes forwarded by a link direction', unit: 'By' },
  ruleRedirectErrors: {
    description:
      'Packets a rule redirected that the kernel then dropped (xdp:xdp_redirect_err and xdp:xdp_devmap_xmit ' +
      'tracepoints; GetCounters redirect_error_packets); not in the redirected outcome',
    unit: '{packet}',
  },
  backendRedirectErrors: {
    description:
      'Packets redirected to a backend that the kernel then dropped (xdp:xdp_redirect_err and ' +
      'xdp:xdp_devmap_xmit tracepoints; GetCounters redirect_error_packets); not in xdpctl.backend.packets',
    unit: '{packet}',
  },
  linkRedirectErrors: {
    description:
      'Frames a link direction redirected that the kernel refused (xdp:xdp_redirect_err; GetCounters ' +
      'redirect_error_packets); not in xdpctl.link.packets',
    unit: '{packet}',
  },
  verdictPackets: { description: 'Packets the XDP program handled, by verdict', unit: '{packet}' },
  datapathErrors: {
    description:
      'Packets by datapath error, over every interface (GetCounters GlobalCounters.errors; xmit: redirects the ' +
      'kernel dropped, from the xdp:xdp_redirect_err and xdp:xdp_devmap_xmit tracepoints; xmit_unattributed: ' +
      'those of them charged to no rule, backend or link, since they could not be proven to be their frames; ' +
      "not_for_us: matched packets in frames whose destination MAC is not one the ingress takes as this host's, passed)",
    unit: '{packet}',
  },
};

/**
 * The process's producer: telemetry/sdk.ts gives it to every metric reader it makes (like the API's global
 * MeterProvider, one per process); the daemon attaches its hub to it.
 */
export const datapathMetrics = new DatapathMetricProducer();

/**
 * Report the hub's snapshots through {@link datapathMetrics} and register the hub's own instruments (reads,
 * open watches) on `meter`; returns a function that undoes both (daemon stop).
 */
export function registerDatapathMetrics(
  meter: Meter,
  hub: CounterHub,
  scope: { name: string; version?: string } = { name: 'xdpctld' },
  producer: DatapathMetricProducer = datapathMetrics,
): () => void {
  producer.attach(hub, scope);
  const hubReads = meter.createObservableCounter(DATAPATH_METRICS.hubReads, {
    description: 'Kernel counter reads made by the counter hub (shared by every watch stream and metric export)',
    unit: '{read}',
  });
  const hubWatchers = meter.createObservableGauge(DATAPATH_METRICS.hubWatchers, {
    description: 'WatchCounters streams currently open',
    unit: '{stream}',
  });
  const readsCb = async (r: { observe(v: number): void }) => {
    // The read this collection's datapath counters use (the producer reuses it, or shares it while it is
    // under way), counted in it.
    try {
      if (!hub.isClosed) await hub.recent(MAX_SNAPSHOT_AGE_MS);
    } catch {
      // the producer leaves the datapath counters out of this export
    }
    r.observe(hub.reads);
  };
  const watchersCb = (r: { observe(v: number): void }) => r.observe(hub.watcherCount);
  hubReads.addCallback(readsCb);
  hubWatchers.addCallback(watchersCb);
  return () => {
    hubReads.removeCallback(readsCb);
    hubWatchers.removeCallback(watchersCb);
    producer.detach(hub);
  };
}
