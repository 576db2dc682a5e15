/**
 * Writes one small file of the state directory (the host-changes record) without ever holding the event loop,
 * and bounded as the state store's writes are (core/store.ts STORE_WRITE_TIMEOUT_MS).
 *
 * Each write runs in a short child process (this Node binary, guarded: children.ts), which writes a temporary
 * file `FILE.tmp` (mode 0600), fsyncs it, renames it over the file (or removes the file) and fsyncs the
 * directory, so that a write confirmed is on disk whole. A `FILE.tmp` found later is a write never confirmed (its
 * daemon gone before the disk completed it): the record may not be current (adapter.ts says so at start). A disk that stops completing
 * writes (a frozen file system, a hung NFS or iSCSI volume) then holds that child, never the daemon: not its
 * event loop (before, writeFileSync and renameSync on the event loop left gRPC, health, /metrics and SIGTERM
 * unanswered until the thaw), and not its exit either (the kernel does not end a thread inside a write to a
 * frozen file system, so a worker thread stuck there holds the process's exit until the thaw; a child is
 * another process, killed by its pdeathsig once it leaves the write).
 *
 * One write runs at a time, in the order asked; writes asked while one runs are coalesced (the record is
 * always written whole: the last content asked is what counts), so that what reaches the disk last is what
 * was asked last, even when a write completes long after it was asked. A write that has not completed within
 * the bound fails its callers with {@link RecordNotAnswering} (it goes on: its content, or a newer one, reaches
 * the disk once the disk answers); while one has been pending past the bound, every write asked fails at once
 * (and is still written once the disk answers).
 *
 * It must not: write on the event loop; run two writes of the file at once; wait past the bound.
 */
import type { ChildProcess } from 'node:child_process';

import { monotonicMs } from '../core/clock.js';
import { spawnGuarded } from './children.js';

/** How long a write may take before its callers are told the disk is not answering (ms): the store's bound. */
export const RECORD_WRITE_TIMEOUT_MS = 5000;

/** A write of `file` that the disk has not completed within the bound (pending since `since`, ms since the epoch). */
export class RecordNotAnswering extends Error {
  readonly code = 'ETIMEDOUT';
  constructor(
    readonly file: string,
    readonly since: number,
    readonly boundMs: number,
  ) {
    super(
      `${file}: the disk did not complete a write in ${boundMs / 1000} s (not answering) ` +
        `(pending since ${new Date(since).toISOString()})`,
    );
  }
}

/** The child's program (CommonJS, `node -e`): argv file, op (write | rm), content. */
const CHILD = `
const fs = require('node:fs');
const [, file, op, data] = process.argv;
const tmp = file + '.tmp';
try {
  if (op === 'rm') fs.rmSync(file, { force: true });
  else {
    const fd = fs.openSync(tmp, 'w', 0o600);
    try { fs.writeFileSync(fd, data); fs.fsyncSync(fd); } finally { fs.closeSync(fd); }
    fs.renameSync(tmp, file);
  }
  // The rename (or removal) itself on disk: the directory's entry fsynced.
  const dfd = fs.openSync(require('node:path').dirname(file), 'r');
  try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
} catch (e) {
  try { fs.rmSync(tmp, { force: true }); } catch {}
  process.stderr.write(JSON.stringify({ code: e.code, message: e.message }));
  process.exitCode = 1;
}`;

type Outcome = { err?: Error };

/** Run one write in a child: its outcome (the file system's error, with its code, when it refused). */
function runWrite(file: string, content: string | null): Promise<Outcome> {
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = spawnGuarded(process.execPath, ['-e', CHILD, file, content === null ? 'rm' : 'write', content ?? ''], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    } catch (e) {
      resolve({ err: e as Error });
      return;
    }
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => (stderr += d));
    child.once('error', (e) => resolve({ err: e }));
    child.once('close', (code, signal) => {
      if (code === 0) return resolve({});
      try {
        const e = JSON.parse(stderr) as { code?: string; message: string };
        resolve({ err: Object.assign(new Error(e.message), { code: e.code }) });
      } catch {
        resolve({ err: new Error(`write ${file}: the writer exited (${signal ?? code}) ${stderr.trim()}`.trim()) });
      }
    });
    // What keeps the process alive is a caller waiting within its bound (its timer), never the child.
    child.unref();
    (child.stderr as { unref?: () => void } | null)?.unref?.();
  });
}

interface Job {
  content: string | null;
  waiters: ((o: Outcome) => void)[];
}

export class RecordWriter {
  private running?: { mono: number; at: number };
  private next?: Job;

  constructor(
    readonly file: string,
    private readonly boundMs = RECORD_WRITE_TIMEOUT_MS,
  ) {}

  /** Since when (ms since the epoch) a write has been pending past the bound; undefined while none is. */
  notAnswering(): number | undefined {
    const r = this.running;
    return r && monotonicMs() - r.mono >= this.boundMs ? r.at : undefined;
  }

  /** A write runs or waits to run. */
  busy(): boolean {
    return !!this.running || !!this.next;
  }

  /**
   * Write `content` as the whole file (null: remove it). Resolves once it (or a newer content) is on disk;
   * rejects with the file system's error, or with {@link RecordNotAnswering} after `boundMs` (at once while a
   * write has been pending past the bound): the content is written all the same once the disk answers, unless
   * a newer one replaced it.
   */
  write(content: string | null, boundMs = this.boundMs): Promise<void> {
    return new Promise((resolve, reject) => {
      let done = false;
      const wait: { timer?: NodeJS.Timeout } = {};
      const finish = (o: Outcome) => {
        if (done) return;
        done = true;
        clearTimeout(wait.timer);
        if (o.err) reject(o.err);
        else resolve();
      };
      const since = this.notAnswering();
      if (this.running) {
        this.next ??= { content, waiters: [] };
        this.next.content = content;
        this.next.waiters.push(finish);
      } else this.start({ content, waiters: [finish] });
      if (since !== undefined) {
        finish({ err: new RecordNotAnswering(this.file, since, this.boundMs) });
        return;
      }
      wait.timer = setTimeout(
        () => finish({ err: new RecordNotAnswering(this.file, this.running?.at ?? Date.now(), boundMs) }),
        boundMs,
      );
    });
  }

  /** The content the disk last confirmed (null: the file removed); undefined before the first confirmed write. */
  confirmed?: string | null;

  private start(job: Job): void {
    this.running = { mono: monotonicMs(), at: Date.now() };
    void runWrite(this.file, job.content).then((o) => {
      this.running = undefined;
      if (!o.err) this.confirmed = job.content;
      for (const w of job.waiters) w(o);
      const n = this.next;
      this.next = undefined;
      if (n) this.start(n);
    });
  }
}
