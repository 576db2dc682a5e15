/**
 * Where xdpctld's log lines (and its audit records) go: stdout, without ever holding the event loop.
 *
 * A line is handed to the stream (process.stdout) at once. While its reader keeps up, that is the whole
 * story: a pipe or socket with room takes the line before write() returns (Node writes a pipe at once when
 * nothing waits), a file is written synchronously (a SyncWriteStream), so lines keep their order and nothing
 * is lost if the process dies right after. When the reader stops reading (a stalled log driver, a stuck
 * sidecar: the pipe's 64 KiB fill), the stream keeps what it could not write and Node writes it when the pipe
 * has room again (epoll); the event loop goes on. What waits is bounded: a line that would make more than
 * `maxBytes` wait is dropped and counted, and the first drop of a stall is said on stderr once, naming the
 * sink; once everything waiting has been written, one log line says how many lines were dropped and from
 * when to when. Before, the log wrote synchronously and a reader that stopped froze the daemon (gRPC,
 * health, the reconciler, even SIGTERM) with nothing said.
 *
 * A stream that fails (EPIPE: its reader is gone) takes nothing more: every line from then on is dropped
 * and counted, said once on stderr. At exit, {@link LogSink.flush} waits a bounded time for what waits.
 *
 * It must not: block (no synchronous write to a pipe or socket); grow without bound; drop a line while
 * nothing waits (a single line larger than the bound is written when the stream is idle).
 */
import type { Writable } from 'node:stream';

/** What a line is, for the counts: an ordinary log line or an audit record. */
export type LogLineKind = 'log' | 'audit';

/** The lines dropped during one stall of the sink. */
export interface DropEpisode {
  /** When the first and the last line were dropped (ms since the epoch). */
  from: number;
  to: number;
  /** Lines dropped, and how many of them were audit records. */
  lines: number;
  audit: number;
  bytes: number;
}

export interface LogSinkOptions {
  /** The stream (process.stdout): a pipe or socket (net.Socket), a file (SyncWriteStream) or a TTY. */
  out: Writable;
  /** Its name in what is said ("stdout"). */
  name: string;
  /** Bytes that may wait to be written; a line beyond is dropped and counted. */
  maxBytes: number;
  /** Say something where an operator sees it when the sink is stuck (stderr): one line, no newline. */
  notice(text: string): void;
  /** Everything waiting was written after lines had been dropped: say so in the log (through this sink). */
  recovered(episode: DropEpisode): void;
  /** The clock (tests). */
  now?: () => number;
}

/** A bounded, non-blocking destination for pino (anything with write(line)). */
export class LogSink {
  /** Lines dropped since the start, by kind. */
  readonly dropped: Record<LogLineKind, number> = { log: 0, audit: 0 };
  private episode: DropEpisode | undefined;
  /** Lines handed to the stream whose write has not completed, by kind. */
  private readonly pending: Record<LogLineKind, number> = { log: 0, audit: 0 };
  /** The stream failed (its error's code): nothing more is written. */
  private failed: string | undefined;
  private readonly now: () => number;
  private readonly onLog = (err?: Error | null) => this.written('log', err);
  private readonly onAudit = (err?: Error | null) => this.written('audit', err);

  constructor(private readonly o: LogSinkOptions) {
    this.now = o.now ?? Date.now;
    // An EPIPE is an 'error' event as well as the write's callback: without a listener it would end the process.
    o.out.on('error', (err: NodeJS.ErrnoException) => this.fail(err));
  }

  /** The pino destination for ordinary log lines. */
  readonly log = { write: (line: string) => this.write(line, 'log') };
  /** The pino destination for audit records. */
  readonly audit = { write: (line: string) => this.write(line, 'audit') };

  /** Bytes handed to the stream and not written yet. */
  waitingBytes(): number {
    return this.o.out.writableLength;
  }

  /** Hand one line (with its newline) to the stream, or drop and count it. */
  write(line: string, kind: LogLineKind = 'log'): void {
    if (this.failed !== undefined) {
      this.drop(line, kind);
      return;
    }
    const waiting = this.o.out.writableLength;
    if (waiting > 0 && waiting + Buffer.byteLength(line) > this.o.maxBytes) {
      this.drop(line, kind);
      return;
    }
    this.pending[kind]++;
    try {
      this.o.out.write(line, kind === 'audit' ? this.onAudit : this.onLog);
    } catch (err) {
      // A file stream's synchronous write can throw (EIO, ENOSPC): that line is lost; the next one tries again.
      this.pending[kind]--;
      this.drop(line, kind);
      this.o.notice(`cannot write a log line to ${this.o.name}: ${(err as Error).message}`);
    }
  }

  /**
   * Wait for every line handed to the stream to be written: at most `idleMs` without any progress and
   * `totalMs` in all (a stop must not hang on a reader that stopped). Returns how many lines were left
   * unwritten (0: all out); those are counted as dropped and said (notice).
   */
  async flush(idleMs = 1000, totalMs = 3000): Promise<number> {
    const start = this.now();
    let last = this.o.out.writableLength;
    let lastProgress = start;
    while (this.failed === undefined && this.o.out.writableLength > 0) {
      const t = this.now();
      if (t - lastProgress >= idleMs || t - start >= totalMs) break;
      await new Promise((r) => setTimeout(r, 20));
      const w = this.o.out.writableLength;
      if (w !== last) {
        last = w;
        lastProgress = this.now();
      }
    }
    if (this.failed !== undefined || this.o.out.writableLength === 0) return 0;
    const left = this.pending.log + this.pending.audit;
    const waited = this.now() - lastProgress;
    this.dropped.log += this.pending.log;
    this.dropped.audit += this.pending.audit;
    this.o.notice(
      `exiting with ${left} log line(s)${this.pending.audit ? ` (${this.pending.audit} audit record(s))` : ''} ` +
        `(${this.o.out.writableLength} bytes) not written: ${this.o.name} took nothing for ${waited} ms` +
        this.episodeText(),
    );
    return left;
  }

  private drop(line: string, kind: LogLineKind): void {
    this.dropped[kind]++;
    const t = this.now();
    if (!this.episode) {
      this.episode = { from: t, to: t, lines: 0, audit: 0, bytes: 0 };
      if (this.failed === undefined) {
        this.o.notice(
          `${this.o.name} takes no more log lines: ${this.o.out.writableLength} bytes wait to be written ` +
            `(--log-buffer-bytes ${this.o.maxBytes}); is its reader stalled? Lines are dropped and counted ` +
            `(xdpctl_log_lines_dropped_total) until it is read again`,
        );
      }
    }
    this.episode.to = t;
    this.episode.lines++;
    if (kind === 'audit') this.episode.audit++;
    this.episode.bytes += Buffer.byteLength(line);
  }

  private written(kind: LogLineKind, err?: Error | null): void {
    // After a failure every line that was pending is counted already.
    if (this.failed !== undefined) return;
    if (err) {
      this.fail(err as NodeJS.ErrnoException); // this line is still among the pending ones: counted there
      return;
    }
    this.pending[kind]--;
    if (this.episode && this.o.out.writableLength === 0) {
      const e = this.episode;
      this.episode = undefined;
      this.o.notice(`${this.o.name} is read again: ${dropText(e)}`);
      this.o.recovered(e);
    }
  }

  private fail(err: NodeJS.ErrnoException): void {
    if (this.failed !== undefined) return;
    this.failed = err.code ?? err.message;
    // What was handed to the stream and not written is lost with it.
    this.dropped.log += this.pending.log;
    this.dropped.audit += this.pending.audit;
    this.pending.log = this.pending.audit = 0;
    this.o.notice(
      `${this.o.name} cannot be written (${this.failed}): log lines are dropped and counted ` +
        '(xdpctl_log_lines_dropped_total) from now on',
    );
  }

  private episodeText(): string {
    return this.episode ? `; before that, ${dropText(this.episode)}` : '';
  }
}

/** "N log lines (M audit records) were dropped from T1 to T2" */
export function dropText(e: DropEpisode): string {
  return (
    `${e.lines} log line(s)${e.audit ? ` (${e.audit} audit record(s))` : ''} were dropped from ` +
    `${new Date(e.from).toISOString()} to ${new Date(e.to).toISOString()}`
  );
}
