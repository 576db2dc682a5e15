/**
 * Config-file mode (xdpctld --config) as metrics: whether the file on disk is in force, and while it is
 * not, since when and why (daemon.proto ConfigFileStatus; the `xdpctl.config` health service says the
 * same). Without --config nothing is reported.
 *  - `xdpctl.config.in_force`: 1 while the text on disk is applied, 0 while it is refused (the datapath then
 *    runs the last good configuration), with `xdpctl.config.path`;
 *  - `xdpctl.config.refused`: while refused, since when the file on disk is not in force (seconds since the
 *    epoch), with the path, `xdpctl.config.reason` (InvalidYaml, InvalidValue, InterfaceMissing, ...) and
 *    `xdpctl.config.field` (the first refused field's path in the file); no point while in force;
 *  - `xdpctl.config.applied`: when this daemon last applied the file (seconds since the epoch), with the path
 *    and `xdpctl.config.sha256` of the text applied (the last good configuration); no point before it applied
 *    one.
 * A MetricProducer, as datapath-metrics.ts is, not SDK instruments: the SDK's observable gauges go on
 * exporting an attribute set (a refusal's reason and field) with its last value after the callback stopped
 * observing it, so a refusal would still be exported after a good file is in force. Each collection
 * reports exactly what the watcher says at that moment; no state is kept here.
 */
import { ValueType, type HrTime } from '@opentelemetry/api';
import type { CollectionResult, MetricData, MetricProducer, ResourceMetrics } from '@opentelemetry/sdk-metrics';

import type { ConfigReport } from '../config-watcher.js';

export const CONFIG_METRICS = {
  inForce: 'xdpctl.config.in_force',
  refused: 'xdpctl.config.refused',
  applied: 'xdpctl.config.applied',
} as const;

export const CONFIG_ATTRS = {
  path: 'xdpctl.config.path',
  reason: 'xdpctl.config.reason',
  field: 'xdpctl.config.field',
  sha256: 'xdpctl.config.sha256',
} as const;

const GAUGE = 2; // @opentelemetry/sdk-metrics DataPointType.GAUGE, without loading the SDK

const DESCRIPTIONS = {
  inForce: {
    description:
      'Whether the config file on disk (xdpctld --config) is in force: 1 applied, 0 refused (the datapath runs the last good configuration)',
    unit: '',
  },
  refused: {
    description:
      'While the config file on disk is refused: since when it is not in force (seconds since the epoch), with the reason and the first refused field',
    unit: 's',
  },
  applied: {
    description:
      'When this daemon last applied the config file (seconds since the epoch), with the SHA-256 of the text applied: the last good configuration',
    unit: 's',
  },
};

const hrTime = (ms: number): HrTime => [Math.floor(ms / 1000), (ms % 1000) * 1e6];

/** The config watcher's report as gauges, for the daemon's metric readers (telemetry/sdk.ts, prometheus.ts). */
export class ConfigMetricProducer implements MetricProducer {
  private source?: () => ConfigReport | undefined;
  private scope = { name: 'xdpctld' as string, version: undefined as string | undefined };

  attach(source: () => ConfigReport | undefined, scope: { name: string; version?: string }): void {
    this.source = source;
    this.scope = { name: scope.name, version: scope.version };
  }

  detach(source: () => ConfigReport | undefined): void {
    if (this.source === source) this.source = undefined;
  }

  collect(): Promise<CollectionResult> {
    const resourceMetrics = {
      resource: undefined, // MetricReader.collect keeps the SDK's resource and ignores a producer's
      scopeMetrics: [{ scope: this.scope, metrics: this.build() }],
    } as unknown as ResourceMetrics;
    return Promise.resolve({ resourceMetrics, errors: [] });
  }

  /** The gauges of the watcher's report now (none without --config). */
  build(): MetricData[] {
    const r = this.source?.();
    if (!r) return [];
    const now = hrTime(Date.now());
    const A = CONFIG_ATTRS;
    const point = (attributes: Record<string, string>, value: number) => ({
      startTime: now,
      endTime: now,
      attributes,
      value,
    });
    const gauges = {
      inForce: [point({ [A.path]: r.path }, r.inForce ? 1 : 0)],
      refused: r.inForce
        ? []
        : [
            point(
              { [A.path]: r.path, [A.reason]: r.reason, [A.field]: r.problems[0]?.field ?? '' },
              Math.floor(r.since / 1000),
            ),
          ],
      applied:
        r.appliedAt !== undefined && r.appliedSha256
          ? [point({ [A.path]: r.path, [A.sha256]: r.appliedSha256 }, Math.floor(r.appliedAt / 1000))]
          : [],
    };
    return (Object.keys(gauges) as (keyof typeof gauges)[]).map((k) => ({
      descriptor: { name: CONFIG_METRICS[k], ...DESCRIPTIONS[k], valueType: ValueType.INT },
      dataPointType: GAUGE,
      dataPoints: gauges[k],
    })) as unknown as MetricData[];
  }
}

/** The process's producer (one per process, like datapathMetrics); the daemon attaches its watcher's report. */
export const configMetrics = new ConfigMetricProducer();

/** Report `source` through {@link configMetrics}; returns a function that stops it (daemon stop). */
export function registerConfigMetrics(
  source: () => ConfigReport | undefined,
  scope: { name: string; version?: string } = { name: 'xdpctld' },
  producer: ConfigMetricProducer = configMetrics,
): () => void {
  producer.attach(source, scope);
  return () => producer.detach(source);
}
