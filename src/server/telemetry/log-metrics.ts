/**
 * The log sink's own state as OpenTelemetry instruments (log-sink.ts): a log reader that stops reading is seen
 * here before anyone reads the log.
 *  - `xdpctl.log.lines.dropped` (Prometheus `xdpctl_log_lines_dropped_total`): lines the sink dropped since the
 *    start because its stream took no more (more than --log-buffer-bytes waited) or had failed (EPIPE), by
 *    `xdpctl.log.kind`: `log` (ordinary lines) or `audit` (audit records); both reported, 0 included;
 *  - `xdpctl.log.bytes_waiting` (gauge): bytes handed to stdout and not written yet (0 while its reader keeps up).
 */
import type { Meter } from '@opentelemetry/api';

import type { LogLineKind } from '../log-sink.js';

export const LOG_METRICS = {
  dropped: 'xdpctl.log.lines.dropped',
  waiting: 'xdpctl.log.bytes_waiting',
} as const;

/** The attribute naming the kind of a dropped line. */
export const LOG_KIND_ATTR = 'xdpctl.log.kind';

/** What the instruments read (the LogSink). */
export interface LogSinkState {
  readonly dropped: Readonly<Record<LogLineKind, number>>;
  waitingBytes(): number;
}

/** Register the instruments; returns a function that unregisters them. */
export function registerLogMetrics(meter: Meter, sink: LogSinkState): () => void {
  const dropped = meter.createObservableCounter(LOG_METRICS.dropped, {
    description:
      'Log lines dropped since the start because stdout took no more (more than --log-buffer-bytes waited for its reader) or had failed (EPIPE), by xdpctl.log.kind: log, audit',
    unit: '{line}',
  });
  const waiting = meter.createObservableGauge(LOG_METRICS.waiting, {
    description: 'Bytes of log lines handed to stdout and not written yet (0 while its reader keeps up)',
    unit: 'By',
  });
  const observeDropped = (r: { observe(v: number, a?: Record<string, string>): void }) => {
    for (const k of ['log', 'audit'] as const) r.observe(sink.dropped[k], { [LOG_KIND_ATTR]: k });
  };
  const observeWaiting = (r: { observe(v: number): void }) => r.observe(sink.waitingBytes());
  dropped.addCallback(observeDropped);
  waiting.addCallback(observeWaiting);
  return () => {
    dropped.removeCallback(observeDropped);
    waiting.removeCallback(observeWaiting);
  };
}
