/**
 * xdpctld's log for a stdout that is a FILE (`xdpctld > file`, systemd StandardOutput=file:), written without ever
 * holding the event loop: a disk that stops completing writes (a frozen file system, a hung NFS or iSCSI volume)
 * no longer freezes the daemon (before, each line's writeSync waited for it on the event loop: gRPC, health, the
 * reconciler and SIGTERM with it, until the thaw).
 *
 * The lines go, in order, through a pipe to a writer process (log-writer.ts: this Node binary), which writes them to
 * the file it inherited as its stdout, as the daemon did before (a refused write dropped and counted, a cut line
 * taken back out). The pipe is written as a pipe stdout is (log-sink.ts): at once while the writer keeps up; while it
 * is held in a write, what it has not read waits, up to --log-buffer-bytes beyond the pipe's own buffer, and beyond
 * that lines are dropped and counted (xdpctl_log_lines_dropped_total), said once on stderr and, once the writer reads
 * again, in one log line. A write that has not completed within the bound (5 s, the state store's) is said in
 * GetStatus (log_write_problem ETIMEDOUT: not answering) until it completes.
 *
 * Why a process, not pino's asynchronous destination (sonic-boom: writes on libuv's threadpool) nor a worker thread:
 * the kernel does not end a thread inside a write to a frozen file system, so such a thread would hold one of the
 * four threads that every file operation and DNS lookup of the daemon shares, and hold its exit (libuv joins them):
 * SIGTERM would not end the daemon until the thaw. A process held there holds itself only: the daemon exits, and the
 * writer writes what it has, and exits, once the disk answers (EOF on its stdin).
 *
 * It must not: write the file on the event loop; reorder lines; wait past its bounds at exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { monotonicMs } from './core/clock.js';
import { LogSink, type DropEpisode, type LogLineKind, type WriteProblem } from './log-sink.js';

/** How long a write may take before GetStatus says the log is not being written (ms): the state store's bound. */
export const LOG_WRITE_TIMEOUT_MS = 5000;

/**
 * Who reads the pipe, in the summary line of lines dropped by it (logDropSummary, with what was measured: that it
 * handled nothing for a while, or that lines came faster than it wrote them). Before, this named it "held in a write
 * its disk did not complete" whatever was measured: a burst of a start on a healthy disk was said as a frozen one.
 */
export const RELAY_READER = 'the log writer process';

/** What the writer reports after each chunk it handled. */
interface WriterReport {
  handled: number;
  dropped: Record<LogLineKind, number>;
  failures: Record<string, number>;
  cut: number;
  problem?: WriteProblem;
}

export interface FileLogRelayOptions {
  /** The log level (the writer's own summary line of refused writes is at warn). */
  level: string;
  maxBytes: number;
  notice(text: string): void;
  recovered(episode: DropEpisode): void;
  boundMs?: number;
}

export class FileLogRelay {
  private readonly child: ChildProcess;
  private readonly pipe: LogSink;
  private last: WriterReport = { handled: 0, dropped: { log: 0, audit: 0 }, failures: {}, cut: 0 };
  private sent = 0;
  /** Since when (monotonic, wall) lines have been sent and none was handled, and how many were dropped then. */
  private waiting?: { mono: number; at: number; dropped: number };
  private readonly boundMs: number;

  /** Throws when the writer cannot be started (the caller writes the file itself then). */
  constructor(private readonly o: FileLogRelayOptions) {
    this.boundMs = o.boundMs ?? LOG_WRITE_TIMEOUT_MS;
    const entry = fileURLToPath(new URL('./log-writer.js', import.meta.url));
    this.child = spawn(process.execPath, [entry, o.level, String(o.maxBytes)], {
      stdio: ['pipe', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('error', () => {}); // its stdin fails with it (EPIPE): the lines are dropped and counted there
    this.child.on('message', (m: WriterReport) => {
      if (m.handled !== this.last.handled) {
        this.waiting = this.sent > m.handled ? this.mark() : undefined;
      }
      this.last = m;
    });
    // Neither the writer nor its pipes keep the daemon alive; it stops with flush().
    this.child.unref();
    this.child.channel?.unref();
    (this.child.stdin as { unref?: () => void } | null)?.unref?.();
    this.pipe = new LogSink({
      out: this.child.stdin!,
      name: 'stdout',
      maxBytes: o.maxBytes,
      // Asked only when the writer was seen to handle nothing for a while (LogSink.backlogFacts).
      stallQuestion: "is stdout's disk not completing writes (the log writer process is held in one)?",
      // A stall is the writer handling none of the lines sent to it (its reports), not the pipe alone.
      pendingSince: () => (this.sent > this.last.handled ? this.waiting?.mono : undefined),
      notice: o.notice,
      // The kind's one-character prefix of each line is no byte of the log.
      recovered: (e) => o.recovered({ ...e, bytes: e.bytes - e.lines }),
    });
  }

  private mark() {
    return { mono: monotonicMs(), at: Date.now(), dropped: this.pipe.dropped.log + this.pipe.dropped.audit };
  }

  readonly log = { write: (line: string) => this.write(line, 'log') };
  readonly audit = { write: (line: string) => this.write(line, 'audit') };

  write(line: string, kind: LogLineKind = 'log'): void {
    const before = this.pipe.dropped[kind];
    this.pipe.write((kind === 'audit' ? 'a' : 'l') + line, kind);
    if (this.pipe.dropped[kind] !== before || this.pipe.writeProblem()) return;
    if (this.sent === this.last.handled) this.waiting = this.mark();
    this.sent++;
  }

  get dropped(): Record<LogLineKind, number> {
    const a = this.pipe.dropped;
    const b = this.last.dropped;
    return { log: a.log + b.log, audit: a.audit + b.audit };
  }

  get failures(): Record<string, number> {
    const f = { ...this.last.failures };
    for (const [k, n] of Object.entries(this.pipe.failures)) f[k] = (f[k] ?? 0) + n;
    return f;
  }

  get cut(): number {
    return this.last.cut;
  }

  waitingBytes(): number {
    return this.pipe.waitingBytes();
  }

  /** The file refuses writes (the writer says why), the writer is gone, or a write has not completed within the bound. */
  writeProblem(): WriteProblem | undefined {
    const p = this.last.problem ?? this.pipe.writeProblem();
    if (p) return p;
    const w = this.waiting;
    if (w && this.sent > this.last.handled && monotonicMs() - w.mono >= this.boundMs) {
      return {
        code: 'ETIMEDOUT',
        cause: `the disk did not complete a write in ${this.boundMs / 1000} s (not answering)`,
        since: w.at,
        lines: this.pipe.dropped.log + this.pipe.dropped.audit - w.dropped,
      };
    }
    return undefined;
  }

  /**
   * At exit: hand what waits to the writer (LogSink.flush's bounds), then wait up to `totalMs` for it to have written
   * everything and exited. Lines it has not written by then it writes once the disk answers (said on stderr).
   */
  async flush(idleMs = 1000, totalMs = 3000): Promise<number> {
    const left = await this.pipe.flush(idleMs, totalMs);
    const child = this.child;
    if (child.exitCode !== null || child.signalCode !== null) return left;
    const exited = new Promise<boolean>((r) => {
      child.once('exit', () => r(true));
      setTimeout(() => r(false), totalMs).unref();
    });
    child.stdin!.end();
    if (!(await exited)) {
      this.o.notice(
        `exiting with ${this.sent - this.last.handled} log line(s) not yet written: stdout's disk has not completed a ` +
          `write for ${this.waiting ? Math.round(monotonicMs() - this.waiting.mono) : 0} ms; the log writer ` +
          `(pid ${child.pid}) writes them once it does`,
      );
    }
    return left;
  }
}
