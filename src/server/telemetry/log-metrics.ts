/**
 * The log sink's own state as OpenTelemetry instruments (log-sink.ts): a log reader that stops reading is seen
 * here before anyone reads the log.
 *  - `xdpctl.log.lines.dropped` (Prometheus `xdpctl_log_lines_dropped_total`): lines the sink dropped since the
 *    start because its stream took no more (more than --log-buffer-bytes waited) or refused their write (a file on
 *    a full disk or past the file size limit; a pipe whose reader is gone), by `xdpctl.log.kind`: `log` (ordinary
 *    lines) or `audit` (audit records); both reported, 0 included;
 *  - `xdpctl.log.write_errors` (Prometheus `xdpctl_log_write_errors_total`): of those, the lines dropped because the
 *    stream refused their write, by `xdpctl.log.error`, its errno name (ENOSPC: a full disk, EFBIG: the file size
 *    limit, EIO, EPIPE); a series appears with the first such line;
 *  - `xdpctl.log.lines.cut` (Prometheus `xdpctl_log_lines_cut_total`): lines a refused write cut short whose written
 *    part stays in the file, not JSON (it could not be taken back out: a device, something written after it); 0 reported;
 *  - `xdpctl.log.bytes_waiting` (gauge): bytes handed to stdout and not written yet (0 while its reader keeps up).
 */
import type { Meter } from '@opentelemetry/api';

import type { LogLineKind, WriteProblem } from '../log-sink.js';

export const LOG_METRICS = {
  dropped: 'xdpctl.log.lines.dropped',
  cut: 'xdpctl.log.lines.cut',
  waiting: 'xdpctl.log.bytes_waiting',
  writeErrors: 'xdpctl.log.write_errors',
} as const;

/** The attribute naming the errno of a refused write. */
export const LOG_ERROR_ATTR = 'xdpctl.log.error';

/** The attribute naming the kind of a dropped line. */
export const LOG_KIND_ATTR = 'xdpctl.log.kind';

/** What the instruments read (the LogSink). */
export interface LogSinkState {
  readonly dropped: Readonly<Record<LogLineKind, number>>;
  /** Lines dropped because a write was refused, by errno name. */
  readonly failures?: Readonly<Record<string, number>>;
  /** Lines cut short by a refused write whose written part stays in the file. */
  readonly cut?: number;
  /** The writes refused now (GetStatus log_write_problem); undefined while lines are written. */
  writeProblem?(): WriteProblem | undefined;
  waitingBytes(): number;
}

/** Register the instruments; returns a function that unregisters them. */
export function registerLogMetrics(meter: Meter, sink: LogSinkState): () => void {
  const dropped = meter.createObservableCounter(LOG_METRICS.dropped, {
    description:
      'Log lines dropped since the start because stdout took no more (more than --log-buffer-bytes waited for its reader) or refused their write (ENOSPC, EFBIG, EIO, EPIPE), by xdpctl.log.kind: log, audit',
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
  const writeErrors = meter.createObservableCounter(LOG_METRICS.writeErrors, {
    description:
      'Log lines dropped since the start because stdout refused their write, by xdpctl.log.error: the errno (ENOSPC: the disk is full, EFBIG: the file size limit, EIO, EPIPE: its reader is gone)',
    unit: '{line}',
  });
  const observeErrors = (r: { observe(v: number, a?: Record<string, string>): void }) => {
    for (const [code, n] of Object.entries(sink.failures ?? {})) r.observe(n, { [LOG_ERROR_ATTR]: code });
  };
  const cut = meter.createObservableCounter(LOG_METRICS.cut, {
    description:
      'Log lines a refused write (ENOSPC, EFBIG) cut short whose written part stays in the file, not JSON: it could not be taken back out (a device, something written after it)',
    unit: '{line}',
  });
  const observeCut = (r: { observe(v: number): void }) => r.observe(sink.cut ?? 0);
  dropped.addCallback(observeDropped);
  cut.addCallback(observeCut);
  waiting.addCallback(observeWaiting);
  writeErrors.addCallback(observeErrors);
  return () => {
    dropped.removeCallback(observeDropped);
    cut.removeCallback(observeCut);
    waiting.removeCallback(observeWaiting);
    writeErrors.removeCallback(observeErrors);
  };
}
