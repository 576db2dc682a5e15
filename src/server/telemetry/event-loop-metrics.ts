/**
 * The daemon's event-loop delay (perf_hooks.monitorEventLoopDelay), as an
 * OpenTelemetry gauge: the longest delay since the previous collection, in
 * seconds. A read that waits behind a long synchronous step (a big
 * transaction, a large message) shows here; `npm run bench` reads it during
 * ApplyRules of 10 000 rules.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';

import type { Meter } from '@opentelemetry/api';

export const EVENT_LOOP_DELAY_MAX = 'xdpctl.eventloop.delay.max';

/** Register the gauge; returns a function that stops the monitor and unregisters it. */
export function registerEventLoopMetrics(meter: Meter): () => void {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const gauge = meter.createObservableGauge(EVENT_LOOP_DELAY_MAX, {
    description: 'Longest event-loop delay since the previous collection (perf_hooks.monitorEventLoopDelay)',
    unit: 's',
  });
  const observe = (r: { observe(v: number): void }) => {
    r.observe(h.count ? h.max / 1e9 : 0);
    h.reset();
  };
  gauge.addCallback(observe);
  return () => {
    gauge.removeCallback(observe);
    h.disable();
  };
}
