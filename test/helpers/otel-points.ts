/**
 * The OpenTelemetry view of a counter snapshot the test changes: a CounterHub reading `read()` (a new version each
 * `next()`, so that the hub reads again rather than sharing its last read) with a DatapathMetricProducer attached.
 * `rulePoint()` exports once and returns the first rule's `xdpctl.rule.packets` data point: its start time (ms since
 * the epoch) and value. `close()` stops the hub.
 */
import type { CounterSnapshot } from '../../src/server/core/controller.js';
import { CounterHub } from '../../src/server/core/counter-hub.js';
import { DatapathMetricProducer } from '../../src/server/telemetry/datapath-metrics.js';

export function otelRulePoints(read: () => CounterSnapshot): {
  next: () => void;
  rulePoint: () => Promise<{ start: number; value: unknown }>;
  close: () => void;
} {
  let version = 0;
  const hub = new CounterHub(
    () => ({ ...read(), version }),
    20,
    0,
    () => version,
  );
  const producer = new DatapathMetricProducer();
  producer.attach(hub, { name: 'xdpctld' });
  return {
    next: () => void version++,
    rulePoint: async () => {
      const m = (await producer.build()).find((x) => x.descriptor.name === 'xdpctl.rule.packets')!;
      const p = m.dataPoints[0];
      return { start: p.startTime[0] * 1000 + p.startTime[1] / 1e6, value: p.value };
    },
    close: () => hub.close(),
  };
}
