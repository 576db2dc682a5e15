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
 * sink and what was measured ({@link backlogText}): the reader took nothing for N ms while the event loop was free
 * to write (seen only then: a write pending that long), or lines came faster than it took them (bytes in and out
 * and their rates since something began to wait: a burst, such as a start that logs thousands of lines); once
 * everything waiting has been written, one log line says how many lines were dropped, from when to when and that
 * measure. Before, the log wrote synchronously and a reader that stopped froze the daemon (gRPC,
 * health, the reconciler, even SIGTERM) with nothing said; and then, a burst was said as a stalled reader.
 *
 * A stream that fails (EPIPE: its reader is gone) takes nothing more: every line from then on is dropped
 * and counted, said once on stderr. At exit, {@link LogSink.flush} waits a bounded time for what waits.
 *
 * A file (stdout redirected to one: `fd`) is written here with writeSync, each line's write on its own: a line the
 * file system refuses (ENOSPC: a full disk, EFBIG: the file size limit, EIO) is dropped and counted by its errno
 * (`failures`), the first refusal said once on stderr and kept for GetStatus ({@link LogSink.writeProblem}), and
 * the next line tries again; once the file takes lines again, the first one written is one log line saying how many
 * were dropped, from when to when and why (tried before each line while refused: a refused try is not counted, and
 * the refusals end only once that summary is written). Before, the first refused write failed the stream for good (nothing more was
 * written after the disk had room again), and with stderr on the same disk the daemon died of an unhandled 'error'.
 * A line cut short by the refusal (part of it written before ENOSPC or EFBIG) is taken back out of the file, so that
 * every line in it stays one JSON object: the file is truncated to where the line began (the cut bytes end it: nothing
 * was written after them) and, opened without O_APPEND, its offset set back there (`seek`). Where that cannot be done
 * (a device, no `seek`, something written after it) the cut part stays, is counted (`cut`) and said on stderr, and the
 * next line starts on a new line, so that only that part is not JSON. Before, the cut part stayed in the file, the
 * next line glued to it.
 *
 * It must not: block (no synchronous write to a pipe or socket); grow without bound; drop a line while
 * nothing waits (a single line larger than the bound is written when the stream is idle).
 */
import { constants, fstatSync, ftruncateSync, readFileSync, writeSync } from 'node:fs';
import type { Writable } from 'node:stream';
import { isatty } from 'node:tty';

import { efbigText } from './core/file-size-limit.js';

import { monotonicMs } from './core/clock.js';

import { jsonControls } from '../shared/visible.js';

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
  /** Why the lines were dropped when the stream refused them ("the disk is full (ENOSPC)"); undefined: it took no more. */
  cause?: string;
  /** What was measured when the first line was dropped because too much waited (not for a refusal). */
  backlog?: BacklogFacts;
}

/**
 * What a sink measured when it first dropped a line because more than its bound waited: whether its reader took
 * nothing for a while although the event loop was free to write (a write pending that long), and how many bytes came
 * and went since something began to wait.
 */
export interface BacklogFacts {
  /** ms since something began to wait (nothing waited before). */
  ms: number;
  /** Bytes handed to the sink in that time, the dropped line's included. */
  inBytes: number;
  /** Bytes the stream took in that time. */
  outBytes: number;
  /**
   * ms nothing was taken although the event loop ran after the last take (the daemon was free to write): set only
   * when that was seen for at least {@link STALL_SEEN_MS}. Undefined: not seen (a burst on the event loop, say).
   */
  stalledMs?: number;
}

/** How long a reader must have taken nothing, with the event loop free to write, to be said stalled (ms). */
export const STALL_SEEN_MS = 100;

/** The writes the stream refuses now (a file: ENOSPC, EFBIG, EIO; a pipe: EPIPE, for good). */
export interface WriteProblem {
  /** Its errno name, e.g. "ENOSPC". */
  code: string;
  /** What it means, e.g. "the disk is full (ENOSPC)". */
  cause: string;
  /** Since when (ms since the epoch). */
  since: number;
  /** Lines dropped since then. */
  lines: number;
}

export interface LogSinkOptions {
  /** The stream (process.stdout): a pipe or socket (net.Socket), a file (SyncWriteStream) or a TTY. */
  out: Writable;
  /**
   * The stream is a file (or a character device that is no terminal) on this descriptor: lines are written to it
   * with writeSync, not through `out`, so that a refused write drops that line only.
   */
  fd?: number;
  /**
   * Set `fd`'s file offset (lseek SEEK_SET; dataplane/fd-seek.ts): a line cut short in a file opened without O_APPEND
   * is taken back out with it. Without it, such a line's cut part stays (counted).
   */
  seek?: (fd: number, pos: number) => void;
  /** Its name in what is said ("stdout"). */
  name: string;
  /** Bytes that may wait to be written; a line beyond is dropped and counted. */
  maxBytes: number;
  /** What the notice of a stall asks ("is its reader stalled?", the default); asked only when a stall was seen. */
  stallQuestion?: string;
  /**
   * Since when (monotonic ms) a line handed on has been pending beyond the stream (log-relay.ts: lines the writer
   * process has not handled), or undefined when none is: used instead of the stream's own takes to see a stall.
   */
  pendingSince?: () => number | undefined;
  /** Say something where an operator sees it when the sink is stuck (stderr): one line, no newline. */
  notice(text: string): void;
  /** Everything waiting was written after lines had been dropped: say so in the log (through this sink). */
  recovered(episode: DropEpisode): void;
  /** The wall clock, for the times said (when lines were dropped; tests). */
  now?: () => number;
  /** The monotonic clock, for how long a flush waits (core/clock.ts). Default: `now` when a test gives one, else monotonic. */
  mono?: () => number;
}

/** A bounded, non-blocking destination for pino (anything with write(line)). */
export class LogSink {
  /** Lines dropped since the start, by kind. */
  readonly dropped: Record<LogLineKind, number> = { log: 0, audit: 0 };
  /** Lines dropped since the start because a write was refused, by its errno name (ENOSPC, EFBIG, EIO, EPIPE). */
  readonly failures: Record<string, number> = {};
  /** Lines cut short by a refused write whose written part stays in the file (it could not be taken back out). */
  cut = 0;
  private episode: DropEpisode | undefined;
  /** The writes to the file refused now: since when and why (`fd` only). */
  private refusing: WriteProblem | undefined;
  /** Part of a line is in the file without its newline (a write cut short, left there): the next line starts a new one. */
  private torn = false;
  /** The drop summary is being written (LogSinkOptions.recovered, from writeFile): not asked for again from within. */
  private summing = false;
  /** A line reached writeFile while `summing`: the summary is logged at this level (it may still be refused). */
  private summaryTried = false;
  /** Lines handed to the stream whose write has not completed, by kind. */
  private readonly pending: Record<LogLineKind, number> = { log: 0, audit: 0 };
  /** The stream failed (its error's code): nothing more is written. */
  private failed: string | undefined;
  private readonly now: () => number;
  private readonly mono: () => number;
  /** Bytes handed to the stream since the start (stream mode). */
  private handed = 0;
  /** Since something waits: when it began (monotonic), bytes handed and taken by then. */
  private backlog: { at: number; handed: number } | undefined;
  /** When the stream last took a line (monotonic), or the backlog began. */
  private lastTaken = 0;
  /** When the event loop last ran a tick while something waited (monotonic): it was free to write then. */
  private loopAt = -Infinity;
  private ticking = false;
  private readonly tick = () => {
    this.loopAt = this.mono();
    if (this.o.out.writableLength > 0 && this.failed === undefined) setTimeout(this.tick, 50).unref();
    else this.ticking = false;
  };
  private readonly onLog = (err?: Error | null) => this.written('log', err);
  private readonly onAudit = (err?: Error | null) => this.written('audit', err);

  constructor(private readonly o: LogSinkOptions) {
    this.now = o.now ?? Date.now;
    this.mono = o.mono ?? o.now ?? monotonicMs;
    // An EPIPE is an 'error' event as well as the write's callback: without a listener it would end the process.
    // A file is not written through the stream: an error there (a stray write of another module) fails nothing.
    o.out.on('error', (err: NodeJS.ErrnoException) => {
      if (this.o.fd === undefined) this.fail(err);
    });
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
    // pino escapes C0 in its JSON but writes DEL and C1 (an interface name the host gave) raw.
    line = jsonControls(line);
    if (this.failed !== undefined) {
      this.failures[this.failed] = (this.failures[this.failed] ?? 0) + 1;
      this.refusing!.lines++;
      this.drop(line, kind);
      return;
    }
    if (this.o.fd !== undefined) {
      this.writeFile(this.o.fd, line, kind);
      return;
    }
    const waiting = this.o.out.writableLength;
    const bytes = Buffer.byteLength(line);
    if (waiting > 0 && waiting + bytes > this.o.maxBytes) {
      this.drop(line, kind);
      return;
    }
    this.pending[kind]++;
    try {
      this.o.out.write(line, kind === 'audit' ? this.onAudit : this.onLog);
      this.handed += bytes;
      if (waiting === 0 && this.o.out.writableLength > 0) this.backlogBegins(this.handed - bytes);
    } catch (err) {
      // A file stream's synchronous write can throw (EIO, ENOSPC): that line is lost; the next one tries again.
      this.pending[kind]--;
      this.drop(line, kind);
      this.o.notice(`cannot write a log line to ${this.o.name}: ${(err as Error).message}`);
    }
  }

  /** Something began to wait (nothing did before; `handed` bytes were handed, and taken, before it). */
  private backlogBegins(handed: number): void {
    this.backlog = { at: this.mono(), handed };
    this.lastTaken = this.backlog.at;
    if (!this.ticking) {
      this.ticking = true;
      setImmediate(this.tick).unref();
    }
  }

  /** What was measured when a line is first dropped because too much waits (`bytes`: that line's). */
  private backlogFacts(bytes: number): BacklogFacts {
    const t = this.mono();
    const b = this.backlog ?? { at: t, handed: this.handed };
    const facts: BacklogFacts = {
      ms: Math.max(0, Math.round(t - b.at)),
      inBytes: this.handed - b.handed + bytes,
      outBytes: Math.max(0, this.handed - this.o.out.writableLength - b.handed),
    };
    const since = this.o.pendingSince ? this.o.pendingSince() : this.lastTaken;
    if (since !== undefined && this.loopAt > since && t - since >= STALL_SEEN_MS)
      facts.stalledMs = Math.round(t - since);
    return facts;
  }

  /** The writes refused now (a file that refuses them, a pipe whose reader is gone); undefined while lines are written. */
  writeProblem(): WriteProblem | undefined {
    if (this.refusing) return { ...this.refusing };
    return undefined;
  }

  /** One line to the file, whole, or dropped and counted with the errno that refused it. */
  private writeFile(fd: number, line: string, kind: LogLineKind): void {
    // After refusals, the summary of what was dropped is the first line the file takes: tried before this one
    // (recovered() logs it through this sink, back here; written, it ends the refusals below).
    if (this.summing) this.summaryTried = true;
    else if (this.refusing && this.episode) this.summarise(this.episode);
    const lead = this.torn ? 1 : 0;
    const buf = Buffer.from(lead ? `\n${line}` : line);
    let off = 0;
    try {
      // A write cut short (the limit or the disk reached mid-line) is followed by one for the rest: it fails with the cause.
      while (off < buf.length) off += writeSync(fd, buf, off);
    } catch (err) {
      // What was written of the line is taken back out; if it cannot be, it stays (the next line starts a new one).
      if (off > 0 && !this.takeBack(fd, off)) {
        if (off > lead) {
          this.torn = true;
          this.cut++;
          this.o.notice(
            `a log line cut short in ${this.o.name} (${off - lead} of its ${buf.length - lead} bytes written) ` +
              'could not be taken back out; the next line starts on a new line',
          );
        } else this.torn = false; // only the newline that ends the line cut before
      }
      // A refused summary is no line lost: the refusals go on, and it is tried again before the next line.
      if (this.summing) return;
      this.refused(err as NodeJS.ErrnoException, line, kind);
      return;
    }
    this.torn = false;
    const e = this.episode;
    if (this.refusing && e) {
      if (this.summing) {
        // The summary is written: the refusals end.
        this.refusing = this.episode = undefined;
        this.o.notice(`${this.o.name} is written again: ${dropText(e)} (${e.cause})`);
      } else if (!this.summarise(e)) {
        // The summary is not logged at this level at all: the refusals end with this line.
        this.refusing = this.episode = undefined;
        this.o.notice(`${this.o.name} is written again: ${dropText(e)} (${e.cause})`);
      }
      // Else the summary was refused while this line fitted (where a line cut short was taken back out): the refusals
      // go on, uncounted for it, and it is tried again before the next line.
    }
  }

  /**
   * Log the summary of the refused lines through this sink (LogSinkOptions.recovered). Whether any line reached the
   * file's write for it (false: not logged at this level).
   */
  private summarise(e: DropEpisode): boolean {
    this.summing = true;
    this.summaryTried = false;
    try {
      this.o.recovered({ ...e });
    } finally {
      this.summing = false;
    }
    return this.summaryTried;
  }

  /**
   * Remove the last `n` bytes written to the file on `fd` (a line cut short): only when they end the file (its size is
   * the descriptor's offset: nothing was written after them, by anyone), the file a regular one, and its offset can be
   * set back (O_APPEND: the next write goes to the end anyway; else `seek`). Whether they were removed.
   */
  private takeBack(fd: number, n: number): boolean {
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) return false;
      const info = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
      const pos = Number(/^pos:\s+(\d+)$/m.exec(info)?.[1] ?? NaN);
      const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(info)?.[1] ?? '', 8);
      if (!Number.isSafeInteger(pos) || Number.isNaN(flags) || st.size !== pos || pos < n) return false;
      const append = (flags & constants.O_APPEND) !== 0;
      if (!append && !this.o.seek) return false;
      ftruncateSync(fd, pos - n);
      // Should this fail, the next write leaves a hole where the bytes were: the line after it starts a new one.
      if (!append) this.o.seek!(fd, pos - n);
      return true;
    } catch {
      return false;
    }
  }

  private refused(err: NodeJS.ErrnoException, line: string, kind: LogLineKind): void {
    const code = err.code ?? 'EUNKNOWN';
    this.failures[code] = (this.failures[code] ?? 0) + 1;
    const cause = writeCause(err);
    const t = this.now();
    if (!this.refusing) {
      this.refusing = { code, cause, since: t, lines: 0 };
      this.o.notice(
        `cannot write log lines to ${this.o.name}: ${cause}; they are dropped and counted ` +
          '(xdpctl_log_lines_dropped_total, xdpctl_log_write_errors_total) until it takes them again',
      );
    } else {
      // What is said now is the latest cause (a full disk that became a size limit, say).
      this.refusing.code = code;
      this.refusing.cause = cause;
    }
    this.refusing.lines++;
    this.drop(line, kind);
    this.episode!.cause = cause;
  }

  /**
   * Wait for every line handed to the stream to be written: at most `idleMs` without any progress and
   * `totalMs` in all (a stop must not hang on a reader that stopped). Returns how many lines were left
   * unwritten (0: all out); those are counted as dropped and said (notice).
   */
  async flush(idleMs = 1000, totalMs = 3000): Promise<number> {
    const start = this.mono();
    let last = this.o.out.writableLength;
    let lastProgress = start;
    while (this.failed === undefined && this.o.out.writableLength > 0) {
      const t = this.mono();
      if (t - lastProgress >= idleMs || t - start >= totalMs) break;
      await new Promise((r) => setTimeout(r, 20));
      const w = this.o.out.writableLength;
      if (w !== last) {
        last = w;
        lastProgress = this.mono();
      }
    }
    if (this.failed !== undefined || this.o.out.writableLength === 0) return 0;
    const left = this.pending.log + this.pending.audit;
    const waited = this.mono() - lastProgress;
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
      if (this.failed === undefined && this.refusing === undefined) {
        const b = this.backlogFacts(Buffer.byteLength(line));
        this.episode.backlog = b;
        const what = backlogText(this.o.name, b, this.o.stallQuestion ?? 'is its reader stalled?');
        this.o.notice(
          `${this.o.name} takes no more log lines: ${this.o.out.writableLength} bytes wait to be written ` +
            `(--log-buffer-bytes ${this.o.maxBytes}): ${what}${what.endsWith('?') ? ' ' : '. '}` +
            'Lines are dropped and counted ' +
            `(xdpctl_log_lines_dropped_total) until what waits is written`,
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
    this.lastTaken = this.mono();
    if (this.o.out.writableLength === 0) this.backlog = undefined;
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
    const lost = this.pending.log + this.pending.audit;
    this.refusing = { code: this.failed, cause: writeCause(err), since: this.now(), lines: lost };
    // What was handed to the stream and not written is lost with it.
    this.failures[this.failed] = (this.failures[this.failed] ?? 0) + lost;
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

/** What a refused write's error means: "the disk is full (ENOSPC)", "the file size limit (RLIMIT_FSIZE N bytes) is reached (EFBIG)". */
export function writeCause(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case 'ENOSPC':
      return 'the disk is full (ENOSPC)';
    case 'EDQUOT':
      return 'the disk quota is exhausted (EDQUOT)';
    case 'EFBIG':
      return efbigText();
    case 'EPIPE':
      return 'its reader is gone (EPIPE)';
    case 'EIO':
      return 'the device reported an I/O error (EIO)';
    default: {
      // "EBADF: bad file descriptor, write" -> "bad file descriptor (EBADF)"
      const m = /^([A-Z0-9]+): (.*?)(?:, write)?$/.exec(err.message);
      return m ? `${m[2]} (${m[1]})` : err.code ? `${err.message} (${err.code})` : err.message;
    }
  }
}

/** Log the one line that says what a stall or refusal of stdout dropped (LogSinkOptions.recovered), at warn. */
export function logDropSummary(
  log: { warn(obj: object, msg: string): void },
  e: DropEpisode,
  logBufferBytes: number,
  reader = 'its reader',
): void {
  const fields = {
    sink: 'stdout',
    dropped: e.lines,
    droppedAudit: e.audit,
    droppedBytes: e.bytes,
    from: new Date(e.from).toISOString(),
    to: new Date(e.to).toISOString(),
  };
  if (e.cause !== undefined)
    log.warn({ ...fields, cause: e.cause }, `${dropText(e)}: stdout refused them (${e.cause}); it takes them again`);
  else if (e.backlog)
    log.warn(
      { ...fields, backlog: e.backlog },
      `${dropText(e)}: stdout took no more (more than --log-buffer-bytes ${logBufferBytes} bytes would have ` +
        `waited for ${reader}): ${backlogText(reader, e.backlog)}; what waited is written now`,
    );
  else
    log.warn(
      fields,
      `${dropText(e)}: stdout took no more (more than --log-buffer-bytes ${logBufferBytes} bytes would have ` +
        `waited for ${reader}); what waited is written now`,
    );
}

/** 1536 -> "1.5 KiB", 1992294 -> "1.9 MiB". */
function size(n: number): string {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * What a sink's measure says, in words that claim only what it saw: "stdout has taken nothing for 2.4 s although the
 * event loop was free to write (a write pending that long); is its reader stalled?", or "lines came faster than stdout
 * took them: 1.9 MiB in 200 ms (9.5 MiB/s in), of which it took 64.0 KiB (320.0 KiB/s out)".
 */
export function backlogText(who: string, b: BacklogFacts, stallQuestion?: string): string {
  if (b.stalledMs !== undefined) {
    const s = b.stalledMs >= 1000 ? `${(b.stalledMs / 1000).toFixed(1)} s` : `${b.stalledMs} ms`;
    return (
      `${who} has taken nothing for ${s} although the event loop was free to write (a write pending that long)` +
      (stallQuestion === undefined ? '' : `; ${stallQuestion}`)
    );
  }
  const rate = (n: number, way: string) => (b.ms > 0 ? ` (${size(Math.round((n * 1000) / b.ms))}/s ${way})` : '');
  return (
    `lines came faster than ${who} took them: ${size(b.inBytes)} in ${b.ms} ms${rate(b.inBytes, 'in')}, of which ` +
    `it took ${size(b.outBytes)}${rate(b.outBytes, 'out')}`
  );
}

/** "N log lines (M audit records) were dropped from T1 to T2" */
export function dropText(e: DropEpisode): string {
  return (
    `${e.lines} log line(s)${e.audit ? ` (${e.audit} audit record(s))` : ''} were dropped from ` +
    `${new Date(e.from).toISOString()} to ${new Date(e.to).toISOString()}`
  );
}

/**
 * Whether Node writes `fd` as a file (synchronously, a SyncWriteStream, as libuv's guess says): a regular file or
 * a character device that is no terminal. Such a stream fails for good at its first refused write.
 */
export function isFileFd(fd: number): boolean {
  try {
    const st = fstatSync(fd);
    return st.isFile() || (st.isCharacterDevice() && !isatty(fd));
  } catch {
    return false;
  }
}

/** Whether `fd` is a regular file (one whose file system may stop completing writes: log-relay.ts). */
export function isRegularFd(fd: number): boolean {
  try {
    return fstatSync(fd).isFile();
  } catch {
    return false;
  }
}

/**
 * A notice writer for stderr that never takes the daemon down: a file is written with writeSync and a refused write
 * (the same full disk as stdout) is passed over; a pipe that failed (EPIPE) is written no more, and one whose reader
 * stalled gets a few lines at most (stderr may be the same stalled pipe as stdout: docker, 2>&1).
 */
export function stderrNotice(stream: Writable = process.stderr, fd = 2): (text: string) => void {
  const file = isFileFd(fd);
  let gone = false;
  // Without a listener a refused write (EPIPE, ENOSPC, EFBIG) is an unhandled 'error': the end of the process.
  stream.on('error', () => (gone = true));
  return (text: string) => {
    const line = `xdpctld: ${text}\n`;
    if (file) {
      try {
        writeSync(fd, line);
      } catch {
        /* stderr refuses too: what was to be said is in GetStatus and the metrics */
      }
    } else if (!gone && stream.writableLength < 65536) stream.write(line);
  };
}
