/**
 * Whether the state directory's disk completes a write, observed, not assumed: a tiny write and fsync of a file
 * there (`.write-probe`: one byte rewritten and fsynced), each time the reconciler asks (every pass, ~1 s), by ONE
 * long-lived probe process (disk-probe-child.ts: this Node binary, started guarded once and kept), asked on its
 * stdin and answering on its stdout. No process is forked per probe (a fork each pass was 26 of the 46 forks a
 * daemon at rest made in 10 s). What it tells is when the disk last answered one (completed it, or refused it: a
 * full or read-only disk is an answer, said by the store's own probe), and since when one has waited for it.
 *
 * A disk that stops completing writes (a frozen file system, a hung NFS or iSCSI volume) holds that process only,
 * in its write (D state): never the event loop (the daemon never writes there itself for this), never a thread of
 * the daemon (the kernel does not end a thread inside a write to a frozen file system, so one stuck there holds
 * the process's exit until the thaw), never the exit (nothing waits for it; it dies by its pdeathsig, or at EOF,
 * once the disk lets it go). At most one write is in flight: while it waits, no other is sent and no other process
 * is started. A process that ends (killed, crashed) is abandoned, said in the log with the write it left
 * unanswered (never counted as an answer of the disk), and a new one is started at the next pass, at most one
 * start per {@link PROBE_RESTART_MS}.
 *
 * It must not: write on the event loop or a thread of the daemon; fork per probe; have two writes in flight; be
 * awaited at exit.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';

import { monotonicMs } from '../core/clock.js';
import type { DiskAnswers } from '../core/store.js';
import type { Logger } from '../log.js';
import { ownLimit, spawnGuarded } from './children.js';

/** The probe's file in the state directory (one byte, kept: created by the first probe, 0600). */
export const PROBE_FILE = '.write-probe';

/** The least time between two starts of the probe process (ms): one that keeps ending is not started each pass. */
export const PROBE_RESTART_MS = 10_000;

/** The probe process's script (compiled next to this file). */
export const PROBE_CHILD = fileURLToPath(new URL('./disk-probe-child.js', import.meta.url));

/** V8 flags of the probe process: a few MB of heap is all it needs (its memory is the daemon's cgroup's). */
const CHILD_FLAGS = ['--max-old-space-size=16', '--max-semi-space-size=1', '--disable-sigusr1'];

interface ProbeProcess {
  readonly child: ChildProcess;
  readonly pid?: number;
  /** It said `ready`: requests are sent from then on. */
  ready: boolean;
  /** Since when (monotonic) it runs. */
  readonly started: number;
}

export class DiskProbe implements DiskAnswers {
  readonly file: string;
  /** The probe process, while one runs (started at the first probe, kept). */
  private proc?: ProbeProcess;
  /** When the last process was started (monotonic): {@link PROBE_RESTART_MS} between two. */
  private lastStart?: number;
  /** A probe asked for while the process was starting: sent once it is ready. */
  private wanted = false;
  /** The probe waiting for the disk: since when (wall clock, said; monotonic, its age). */
  private pending?: { at: number; mono: number };
  private answered?: { at: number; mono: number };
  private closed = false;
  /** Starts have failed since the last process that started (said once per such streak). */
  private startFailing = false;
  /** Told each answer (the stop's {@link answers} waits for one). */
  private readonly listeners = new Set<() => void>();

  /**
   * @param dir the state directory
   * @param log where an ended probe process, and one that could not be started, are said
   * @param opts tests: the probe process's script (the TypeScript source) and the spacing of its starts
   */
  constructor(
    readonly dir: string,
    private readonly log: Logger,
    opts: { entry?: string; restartMs?: number } = {},
  ) {
    this.file = join(dir, PROBE_FILE);
    this.entry = opts.entry ?? PROBE_CHILD;
    this.restartMs = opts.restartMs ?? PROBE_RESTART_MS;
  }

  private readonly entry: string;
  private readonly restartMs: number;

  /**
   * Whether the disk answers a probe within `boundMs` (one sent now, or the one already waiting): for a stop,
   * before it writes there on the event loop (the store's last close checkpoints the WAL).
   */
  answers(boundMs: number): Promise<boolean> {
    this.probe();
    // No probe process could be started (EMFILE, EAGAIN; or one ended less than PROBE_RESTART_MS ago): nothing
    // observed, and nothing to wait for (as before there was a probe).
    if (!this.pending && !this.proc) return Promise.resolve(true);
    return new Promise((resolve) => {
      const heard = () => {
        clearTimeout(timer);
        this.listeners.delete(heard);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.listeners.delete(heard);
        resolve(false);
      }, boundMs);
      this.listeners.add(heard);
    });
  }

  /** Send a probe unless one is waiting for the disk (never waits; starts the probe process when none runs). */
  probe(): void {
    if (this.pending || this.closed) return;
    const p = this.proc ?? this.start();
    if (!p) return;
    if (!p.ready) {
      this.wanted = true;
      return;
    }
    this.pending = { at: Date.now(), mono: monotonicMs() };
    (p.child.stdin as Writable).write('p\n');
  }

  /** The probe process's id, while one runs (tests). */
  get pid(): number | undefined {
    return this.proc?.pid;
  }

  private start(): ProbeProcess | undefined {
    const now = monotonicMs();
    if (this.lastStart !== undefined && now - this.lastStart < this.restartMs) return undefined;
    this.lastStart = now;
    let child: ChildProcess;
    try {
      child = spawnGuarded(process.execPath, [...CHILD_FLAGS, this.entry, this.file], {
        stdio: ['pipe', 'pipe', 'ignore'],
      });
    } catch (e) {
      this.notStarted(e);
      return undefined;
    }
    const p: ProbeProcess = { child, pid: child.pid, ready: false, started: now };
    this.proc = p;
    let rest = '';
    const out = child.stdout as Readable;
    out.setEncoding('utf8');
    out.on('data', (chunk: string) => {
      const lines = (rest + chunk).split('\n');
      rest = lines.pop()!;
      for (const l of lines) this.heard(p, l);
    });
    child.once('error', (e) => (p.pid === undefined ? this.notStarted(e, p) : this.ended(p, undefined, undefined, e)));
    child.once('exit', (code, signal) => this.ended(p, code, signal));
    (child.stdin as Writable).on('error', () => {}); // EPIPE: said by its exit
    // What keeps the daemon alive is never the probe process.
    child.unref();
    (out as Readable & { unref?: () => void }).unref?.();
    (child.stdin as Writable & { unref?: () => void }).unref?.();
    return p;
  }

  /** A line from the probe process: `ready`, or the answer to the write in flight (`ok` or an error code). */
  private heard(p: ProbeProcess, line: string): void {
    if (this.proc !== p) return;
    if (line === 'ready') {
      p.ready = true;
      if (this.startFailing) {
        this.startFailing = false;
        this.log.info({ pid: p.pid, file: this.file }, `disk probe: its process started (pid ${p.pid})`);
      }
      if (this.wanted) {
        this.wanted = false;
        this.probe();
      }
      return;
    }
    if (!this.pending) return;
    this.pending = undefined;
    this.answered = { at: Date.now(), mono: monotonicMs() };
    for (const l of [...this.listeners]) l();
  }

  private notStarted(e: unknown, p?: ProbeProcess): void {
    if (p && this.proc === p) this.proc = undefined;
    if (this.closed || this.startFailing) return;
    this.startFailing = true;
    const limit = ownLimit(e);
    this.log.warn(
      { err: e, file: this.file },
      `disk probe: its process could not be started (${(e as Error).message ?? String(e)}` +
        `${limit ? `: ${limit}` : ''}): whether the state disk completes writes cannot be told until one is; ` +
        `tried again at each pass at least ${this.restartMs / 1000} s after the last try (said again once one has started)`,
    );
  }

  /** The probe process ended (or failed): abandoned, its write in flight (if any) not counted as an answer. */
  private ended(p: ProbeProcess, code: number | null | undefined, signal: string | null | undefined, e?: Error): void {
    if (this.proc !== p) return;
    this.proc = undefined;
    this.wanted = false;
    const left = this.pending;
    this.pending = undefined;
    if (this.closed) return;
    const how = e ? `failed: ${e.message}` : signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const write = left
      ? `with the write and fsync of ${this.file} sent at ${new Date(left.at).toISOString()} not answered ` +
        `(${Math.floor((monotonicMs() - left.mono) / 1000)} s): abandoned, not counted as an answer of the disk`
      : 'with no write in flight';
    this.log.warn(
      { pid: p.pid, code, signal, file: this.file },
      `disk probe: its process (pid ${p.pid}) ${how}, ${write}; a new one is started at a pass at least ` +
        `${this.restartMs / 1000} s after the last start`,
    );
  }

  /**
   * At the daemon's stop: no probe sent any more; the process is told to end (EOF on its stdin) and not waited for
   * (one held in a write on a frozen disk ends once the disk lets it go, or by its pdeathsig when the daemon exits).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.wanted = false;
    (this.proc?.child.stdin as Writable | undefined)?.end();
  }

  waitingSince(): { at: number; ageMs: number } | undefined {
    const p = this.pending;
    return p && { at: p.at, ageMs: monotonicMs() - p.mono };
  }

  lastAnswer(): { at: number; ageMs: number } | undefined {
    const a = this.answered;
    return a && { at: a.at, ageMs: monotonicMs() - a.mono };
  }
}
