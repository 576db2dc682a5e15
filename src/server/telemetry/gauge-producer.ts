/**
 * Gauges whose attribute sets come and go (a refusal's reason, a configuration's hash) as a MetricProducer
 * (the interface datapath-metrics.ts uses), not SDK instruments: the SDK's observable gauges go on exporting
 * an attribute set with its last value after the callback stopped observing it, so a reason that no longer
 * holds would still be exported next to the current one. Each collection reports exactly what the source
 * says at that moment; no state is kept here. Subclasses say which gauges a source's value makes.
 */
import { ValueType, type HrTime } from '@opentelemetry/api';
import type { CollectionResult, MetricData, MetricProducer, ResourceMetrics } from '@opentelemetry/sdk-metrics';

const GAUGE = 2; // @opentelemetry/sdk-metrics DataPointType.GAUGE, without loading the SDK

const hrTime = (ms: number): HrTime => [Math.floor(ms / 1000), (ms % 1000) * 1e6];

/** One gauge of a collection: its points now (none: the gauge is exported without a point). */
export interface GaugeNow {
  name: string;
  description: string;
  unit: string;
  points: { attributes: Record<string, string>; value: number }[];
}

export abstract class GaugeProducer<S> implements MetricProducer {
  private source?: () => S | undefined;
  private scope = { name: 'xdpctld' as string, version: undefined as string | undefined };

  attach(source: () => S | undefined, scope: { name: string; version?: string }): void {
    this.source = source;
    this.scope = { name: scope.name, version: scope.version };
  }

  detach(source: () => S | undefined): void {
    if (this.source === source) this.source = undefined;
  }

  collect(): Promise<CollectionResult> {
    const resourceMetrics = {
      resource: undefined, // MetricReader.collect keeps the SDK's resource and ignores a producer's
      scopeMetrics: [{ scope: this.scope, metrics: this.build() }],
    } as unknown as ResourceMetrics;
    return Promise.resolve({ resourceMetrics, errors: [] });
  }

  /** The gauges of the source's value now (none while it has none). */
  build(): MetricData[] {
    const s = this.source?.();
    if (s === undefined) return [];
    const now = hrTime(Date.now());
    return this.gauges(s).map((g) => ({
      descriptor: { name: g.name, description: g.description, unit: g.unit, valueType: ValueType.INT },
      dataPointType: GAUGE,
      dataPoints: g.points.map((p) => ({ startTime: now, endTime: now, attributes: p.attributes, value: p.value })),
    })) as unknown as MetricData[];
  }

  /** The gauges `s` makes. */
  protected abstract gauges(s: S): GaugeNow[];
}

/** Report `source` through `producer`; returns a function that stops it (daemon stop). */
export function registerGauges<S>(
  producer: GaugeProducer<S>,
  source: () => S | undefined,
  scope: { name: string; version?: string } = { name: 'xdpctld' },
): () => void {
  producer.attach(source, scope);
  return () => producer.detach(source);
}
