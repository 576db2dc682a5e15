/**
 * The log writer process (log-relay.ts): xdpctld's lines for a stdout that is a file, written to that file (its fd 1,
 * inherited) here, never on the daemon's event loop. Each line comes on stdin behind one character, its kind ('l' log,
 * 'a' audit), and is written as the daemon wrote it before (log-sink.ts, a LogSink on fd 1: a refused write dropped
 * and counted, a line cut short taken back out, a summary once the file takes lines again). After each chunk it
 * reports to the daemon (IPC) how many lines it handled and its counts. A disk that stops completing writes (a
 * frozen file system) holds this process only; at EOF on stdin (the daemon stopped or is gone) it writes what is
 * left and exits. Signals that stop the daemon's group (SIGTERM, SIGINT, SIGHUP) do not stop it before that.
 *
 * argv: the log level (for the summary line), --log-buffer-bytes.
 */
import { pino } from 'pino';

import { seekFd } from './dataplane/fd-seek.js';
import { LogSink, logDropSummary, stderrNotice, type LogLineKind } from './log-sink.js';
import { visible } from '../shared/visible.js';

const [level = 'info', bufferArg = '1048576'] = process.argv.slice(2);
const maxBytes = Number(bufferArg);
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => {});

const stderrLine = stderrNotice();
const sink: LogSink = new LogSink({
  out: process.stdout,
  fd: 1,
  seek: seekFd,
  name: 'stdout',
  maxBytes,
  notice: (text) => stderrLine(visible(text, true)),
  recovered: (e) => logDropSummary(log, e, maxBytes),
});
const log = pino({ base: { service: 'xdpctld' }, level }, sink.log);

/** What the daemon is told (log-relay.ts WriterReport). */
const report = (done?: () => void) => {
  const r = {
    handled,
    dropped: sink.dropped,
    failures: sink.failures,
    cut: sink.cut,
    problem: sink.writeProblem(),
  };
  if (process.connected) process.send!(r, undefined, {}, () => done?.());
  else done?.();
};

let handled = 0;
let rest = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk: string) => {
  const parts = (rest + chunk).split('\n');
  rest = parts.pop()!;
  for (const p of parts) {
    if (p === '') continue;
    sink.write(`${p.slice(1)}\n`, (p[0] === 'a' ? 'audit' : 'log') satisfies LogLineKind);
    handled++;
  }
  report();
});
process.stdin.on('end', () => {
  if (rest.length > 1) {
    sink.write(`${rest.slice(1)}\n`, rest[0] === 'a' ? 'audit' : 'log');
    handled++;
  }
  report(() => process.exit(0));
});
// The daemon gone: what it sent is still read (to EOF), and no report is asked for.
process.on('disconnect', () => {});
