/**
 * Config-file mode (the xdp-xconnect workflow): the daemon applies a YAML
 * file and re-applies it warmly whenever it changes. The directory is
 * watched, not the file, so editors that save by rename are seen. Changes
 * are debounced, and a file that does not parse is read again once shortly
 * after (a half-written file is not an error yet); if it is still invalid,
 * or names an unknown interface, the problem is logged and the last good
 * configuration keeps running. So does an empty file (only blanks or
 * comments: what an editor may leave for a moment); `links: {}` clears. Each
 * applied configuration is logged whole, with what changed.
 *
 * A file reached through symlinks (a Kubernetes ConfigMap volume:
 * `cfg.yaml -> ..data/cfg.yaml`, `..data -> ..2026_…`, swapped by renaming a
 * new `..data` over the old) changes without an event naming it: every entry
 * on the way (each symlink, and the file it resolves to, in whatever
 * directory) is watched, and so is every directory on the way to it (a release directory swapped
 * under the path: `current -> rel2` renamed over, `mv conf conf.old; mv conf2 conf`, or a directory that
 * does not exist yet at start), and the text decides whether anything changed. Events are a means, not the
 * evidence: every {@link VERIFY_MS} the path is stat'ed (through its symlinks) and, when what it names
 * (device, inode, size, modification and change times) differs from the last look, read again, so that a
 * change no watch reported (a filesystem without inotify, a directory that could not be watched) is seen
 * within that time, and "the file on disk is applied" is never older than that. A file
 * that was refused is tried again when it is written or touched, and one refused
 * because an interface it names does not exist (yet: a tap that appears after
 * the file is written) also every {@link MISSING_RETRY_MS} until it applies; one refused for what the host is
 * (a link loop, a device in use, an egress that cannot take native redirects) is checked again as often with
 * the checks the apply runs before writing anything, and loaded again when their verdict, or what the host
 * shows of an interface the file names, changes (see {@link ConfigWatcher.watchRefusal}).
 *
 * A file still being written is neither applied nor refused: before each apply the daemon asks whether a
 * process holds the file open for writing (dataplane/file-writers.ts: the kernel, through a read lease; else
 * /proc), and while one does the status says BeingWritten (who, seen since when, the text's SHA-256), the last
 * good configuration keeps running, and the file is looked at every {@link WRITER_POLL_MS} (a close raises no
 * event here) until no process holds it; after {@link WRITER_WAIT_MS} its text is applied as it is, with a
 * warning that a writer still held it. Events only say that something changed; whether the text is whole is
 * asked of the kernel (a writer that pauses longer than any debounce is still seen).
 *
 * A file without a `links:` (or `rules:`) section is not applied while the
 * configuration in force has links (rules): a file cut short by a writer that
 * does not replace it atomically, or an edit that dropped the section, is not
 * an instruction to remove them all; `links: {}` (`rules: []`) is. A file with
 * only `links:` (the xdp-xconnect format) applies as long as no rules run.
 */
import { createHash } from 'node:crypto';
import { watch, type FSWatcher } from 'node:fs';
import { readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, resolve } from 'node:path';

import { ConfigError, isEmptyConfig, parseConfig, type FieldViolation } from '../shared/config-file.js';
import { monotonicMs } from './core/clock.js';
import type { Controller } from './core/controller.js';
import { CoreError } from './core/errors.js';
import { writersOf, type WritersSeen } from './dataplane/file-writers.js';
import type { Logger } from './log.js';
import { BrokenSymlink, MAX_CONFIG_BYTES, NotARegularFile, openRegular, readBounded } from './regular-file.js';

const DEBOUNCE_MS = 150;
/** How often the path is stat'ed to see a change no watch reported (ms). */
export const VERIFY_MS = 2000;
const RETRY_MS = 400;
/** How often a file refused for a missing interface is tried again (the reconciler follows interfaces within 1 s). */
export const MISSING_RETRY_MS = 1000;
/**
 * How long a text is kept from being applied while a process holds the file open for writing (ms): after
 * that it is applied as it is, and the log says that a writer still held the file open.
 */
export const WRITER_WAIT_MS = 10_000;
/** How often the file is looked at while a writer holds it open (closing a file raises no event we get). */
const WRITER_POLL_MS = 100;
/** The same with /proc only (no lease): each look reads every process's descriptors. */
const WRITER_POLL_PROC_MS = 250;
/**
 * How long a read of the file may take (ms): a read still under way after that (a filesystem that stopped
 * answering) is refused as Unreadable, the last good configuration keeps running, and no other read is
 * started until that one returns (each would hold one of libuv's four workers); the file is read again then.
 */
export const READ_TIMEOUT_MS = 10_000;

/** A read of the file that has not returned within {@link READ_TIMEOUT_MS}. */
class ReadStalled extends Error {}

export interface ConfigStatus {
  path: string;
  /** Text of the last file applied. */
  applied?: string;
  /** SHA-256 (hex) of `applied`, computed once when it was applied. */
  appliedSha256?: string;
  appliedAt?: number;
  lastError?: string;
}

/**
 * Why the file on disk is not in force, as the status, health and metrics say it (daemon.proto
 * ConfigFileStatus documents every reason).
 */
export type RefusalReason =
  | 'InvalidYaml'
  | 'InvalidFile'
  | 'InvalidValue'
  | 'InterfaceMissing'
  | 'SectionMissing'
  | 'Empty'
  | 'Unreadable'
  | 'PreconditionFailed'
  | 'TableFull'
  | 'StateStoreRefused'
  | 'NotApplied'
  | 'BeingWritten';

/**
 * Whether the file on disk is in force, as last observed (daemon.proto ConfigFileStatus): what the
 * status reply, the `xdpctl.config` health service and the xdpctl.config.* metrics report.
 */
export interface ConfigReport {
  /** The file, absolute. */
  path: string;
  /** The text on disk is applied. */
  inForce: boolean;
  /** `Applied`, or why the text on disk was refused. */
  reason: 'Applied' | RefusalReason;
  /** The refusal as logged ('' while in force). */
  message: string;
  /** What was refused, by field path in the file (empty while in force). */
  problems: FieldViolation[];
  /** When inForce last changed (ms since the epoch). */
  since: number;
  /** The refused text's SHA-256 (hex) and when it was refused. */
  refusedSha256?: string;
  refusedAt?: number;
  /** The text this daemon last applied: SHA-256 (hex) and when. */
  appliedSha256?: string;
  appliedAt?: number;
  /** What the datapath runs, in words. */
  running: string;
}

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

/** {@link ConfigWatcher}'s re-evaluation of a refused file: Controller.checkConfig's refusal and host, as JSON. */
type Verdict = string;

/** Why a refused file is loaded again, in words (what changed between two verdicts). */
function hostChange(before: Verdict, after: Verdict): string {
  const [r0, h0, s0] = JSON.parse(before) as [string, string, string];
  const [r1, h1, s1] = JSON.parse(after) as [string, string, string];
  if (s0 !== s1) return s1 ? `the state store now refuses writes: ${s1}` : 'the state store takes writes again';
  if (r0 !== r1) return r1 ? `the checks now say: ${r1}` : 'the checks the apply runs now pass';
  return h0 !== h1 ? 'the interfaces the file names changed' : 'nothing changed';
}

/** The refusal's reason and field problems from what the parser or the controller threw. */
function refusalOf(e: unknown): { reason: RefusalReason; problems: FieldViolation[] } {
  if (e instanceof ConfigError) return { reason: e.syntax ? 'InvalidYaml' : 'InvalidFile', problems: e.problems };
  // The state store refused the change's transaction (its disk full or read-only, an I/O error, another
  // process's write lock: core/store.ts storeError names it so): not a table of the datapath.
  if (e instanceof CoreError && /(^|: )state store \S+: /.test(e.message)) {
    return { reason: 'StateStoreRefused', problems: [{ field: '', description: e.message }] };
  }
  if (e instanceof CoreError) {
    const reason: RefusalReason =
      e.kind === 'invalid'
        ? 'InvalidValue'
        : e.kind === 'not-found'
          ? 'InterfaceMissing'
          : e.kind === 'precondition' || e.kind === 'busy' || e.kind === 'conflict'
            ? 'PreconditionFailed'
            : e.kind === 'exhausted'
              ? 'TableFull'
              : 'NotApplied';
    return { reason, problems: e.violations.length ? e.violations : [leadingField(e.message)] };
  }
  return { reason: 'NotApplied', problems: [leadingField((e as Error).message ?? String(e))] };
}

/** A message that opens with a field path (`links[1]: attach xdp to br0: ...`) as a problem of that field. */
function leadingField(message: string): FieldViolation {
  const m = /^((?:rules|links)(?:\[\d+\]|\.[\w"]+)*(?:\[[^\]]*\])*): (.*)$/s.exec(message);
  return m ? { field: m[1], description: m[2] } : { field: '', description: message };
}

export class ConfigWatcher {
  readonly status: ConfigStatus;
  /** Watched directories, each with the entry names in it whose change can change the file's text. */
  private readonly watchers = new Map<string, { watcher: FSWatcher; names: Set<string> }>();
  private timer?: NodeJS.Timeout;
  /** The re-evaluation of a file refused for what the host is ({@link watchRefusal}). */
  private recheck?: NodeJS.Timeout;
  /** The periodic look at what the path names ({@link VERIFY_MS}), and what it saw last. */
  private verifier?: NodeJS.Timeout;
  private seen?: string;
  /** Directories whose watch failed for another reason than being missing (said once each). */
  private readonly unwatchable = new Set<string>();
  private running: Promise<void> = Promise.resolve();
  private closed = false;
  /** The text last refused, with lastError: the same refusal of the same text is said once. */
  private refusedText?: string;
  /**
   * The text last refused for what the host is, while {@link watchRefusal} re-evaluates it: read again with
   * nothing new (the periodic look, another event of the same write), it is not applied again.
   */
  private hostRefused?: string;
  /**
   * A process holds the file open for writing: since when (`since`: monotonic, for the wait; `sinceWall`: the
   * time said), who (in words), whether the wait was logged.
   */
  private writing?: { since: number; sinceWall: number; who: string; logged: boolean };
  /** A read that did not return within {@link READ_TIMEOUT_MS}: since when (no other read starts meanwhile). */
  private stalled?: { since: number };
  /** What made the writers' check less than complete (a lease refused, and why), said once each. */
  private readonly writerLimits = new Set<string>();

  /** Whether the file on disk is in force, and since when; see {@link report}. */
  private state: {
    inForce: boolean;
    reason: ConfigReport['reason'];
    message: string;
    problems: FieldViolation[];
    since: number;
    refusedSha256?: string;
    refusedAt?: number;
  };

  constructor(
    path: string,
    private readonly ctl: Controller,
    private readonly log: Logger,
    /** Called whenever the report changes (the daemon sets the `xdpctl.config` health service from it). */
    private readonly onReport: (r: ConfigReport) => void = () => undefined,
    /** {@link READ_TIMEOUT_MS} (tests give less). */
    private readonly readTimeoutMs = READ_TIMEOUT_MS,
  ) {
    this.status = { path: resolve(path) };
    this.state = { inForce: false, reason: 'NotApplied', message: 'not read yet', problems: [], since: Date.now() };
  }

  /** Whether the file on disk is in force, why not, and what the datapath runs instead. */
  report(): ConfigReport {
    const counts = this.ctl.desiredCounts();
    const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;
    const size = `${plural(counts.rules, 'rule')}, ${plural(counts.links, 'link')}`;
    const applied = this.status.appliedSha256;
    const running =
      applied !== undefined
        ? `the file as applied at ${new Date(this.status.appliedAt!).toISOString()} (sha256 ${applied.slice(0, 12)}), ${size}`
        : counts.rules + counts.links > 0
          ? `the configuration restored from the state store at start, ${size}`
          : 'no configuration';
    return {
      path: this.status.path,
      ...this.state,
      problems: [...this.state.problems],
      appliedSha256: applied,
      appliedAt: this.status.appliedAt,
      running,
    };
  }

  /** The file on disk is in force (text just applied, or unchanged). */
  private inForce(): void {
    if (!this.state.inForce) {
      this.state = { inForce: true, reason: 'Applied', message: '', problems: [], since: Date.now() };
    }
    this.onReport(this.report());
  }

  /** The text on disk was refused. */
  private refused(reason: RefusalReason, message: string, problems: FieldViolation[], text: string | undefined): void {
    const now = Date.now();
    const sha = text === undefined ? undefined : sha256(text);
    this.state = {
      inForce: false,
      reason,
      message,
      problems: problems.slice(0, 20),
      since: this.state.inForce ? now : this.state.since,
      refusedSha256: sha,
      refusedAt: this.state.refusedSha256 === sha && this.state.reason === reason ? this.state.refusedAt : now,
    };
    this.onReport(this.report());
  }

  /** Apply the file once, then follow it. */
  async start(): Promise<void> {
    this.ctl.setOwner(this.status.path);
    this.seen = await this.identity();
    await this.load(false);
    await this.follow();
    this.verifier = setInterval(() => void this.verify(), VERIFY_MS);
    this.verifier.unref?.();
  }

  /** What the path names now: device, inode, size, mtime and ctime (ns) of the file it resolves to, or the error code. */
  private async identity(): Promise<string> {
    try {
      const st = await stat(this.status.path, { bigint: true });
      return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? 'error';
    }
  }

  /** The periodic look: what the path names changed since the last one (no event needed): read it again. */
  private async verify(): Promise<void> {
    if (this.closed) return;
    const now = await this.identity();
    if (now === this.seen || this.closed) return;
    this.seen = now;
    this.schedule(DEBOUNCE_MS, false);
  }

  /**
   * Watch every directory entry the file's text depends on: the path itself, each symlink on the way to
   * the file it resolves to (a ConfigMap's `cfg.yaml -> ..data/cfg.yaml` and `..data -> ..2026_…`), and that
   * file. Re-run after each read, since a swap moves the target.
   */
  private async follow(): Promise<void> {
    if (this.closed) return;
    const want = new Map<string, Set<string>>();
    const add = (dir: string, name: string) => {
      if (!want.has(dir)) want.set(dir, new Set());
      want.get(dir)!.add(name);
    };
    add(dirname(this.status.path), basename(this.status.path));
    // Every directory on the way: renaming another one over it (or creating it, when it is missing) changes
    // what the path names without an event in the file's own directory.
    for (let d = dirname(this.status.path); dirname(d) !== d; d = dirname(d)) add(dirname(d), basename(d));
    let p = this.status.path;
    for (let hop = 0; hop < 40; hop++) {
      let target: string;
      try {
        target = await readlink(p);
      } catch {
        break; // not a symlink, or missing for a moment
      }
      // A relative target's first component is an entry of the link's directory (`..data` in
      // `..data/cfg.yaml`): renaming a new one over it changes the file.
      const first = target.split('/')[0];
      if (!isAbsolute(target) && first !== '.' && first !== '..' && first !== '') add(dirname(p), first);
      p = resolve(dirname(p), target);
      add(dirname(p), basename(p));
    }
    try {
      const real = await realpath(this.status.path);
      add(dirname(real), basename(real));
    } catch {
      // missing for a moment: the entries above are still watched
    }
    // Closed while the links were read: no watch may be made after close() (it would keep the process alive).
    if (this.closed) return;
    for (const [dir, w] of this.watchers) {
      if (!want.has(dir)) {
        w.watcher.close();
        this.watchers.delete(dir);
      }
    }
    for (const [dir, names] of want) {
      const have = this.watchers.get(dir);
      if (have) {
        have.names = names;
        continue;
      }
      try {
        const entry = { names, watcher: undefined as unknown as FSWatcher };
        entry.watcher = watch(dir, (_event, file) => {
          if (file === null || entry.names.has(file)) this.schedule(DEBOUNCE_MS, false);
        });
        this.watchers.set(dir, entry);
      } catch (e) {
        // A directory missing for now is seen by the periodic look when it appears; say any other failure once.
        if ((e as NodeJS.ErrnoException).code === 'ENOENT' || this.unwatchable.has(dir)) continue;
        this.unwatchable.add(dir);
        this.log.warn(
          { config: this.status.path, dir, err: e },
          `cannot watch ${dir}: a change there is seen by the periodic look, within ${VERIFY_MS / 1000} s`,
        );
      }
    }
  }

  private schedule(ms: number, retried: boolean): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.running = this.running.then(() => this.load(retried)).then(() => this.follow());
    }, ms);
  }

  /**
   * Read the file, and whether a process holds it open for writing before or after the read (one descriptor
   * for all: the same inode). `changed`: its size or times moved during the read (a write in between).
   */
  private async read(): Promise<{ text: string; seen: WritersSeen; changed: boolean }> {
    const path = this.status.path;
    if (this.stalled) {
      const { since } = this.stalled;
      throw new ReadStalled(
        `a read of ${path} started at ${new Date(since).toISOString()} has not returned: ` +
          'the filesystem does not answer; it is read again once that read returns',
      );
    }
    const work = this.readOnce();
    let timer: NodeJS.Timeout | undefined;
    const bound = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new ReadStalled(
              `reading ${path} took more than ${this.readTimeoutMs / 1000} s: the filesystem does not answer; it is read again once that read returns`,
            ),
          ),
        this.readTimeoutMs,
      );
      timer.unref?.();
    });
    try {
      return await Promise.race([work, bound]);
    } catch (e) {
      if (e instanceof ReadStalled && !this.stalled) {
        const stalled = { since: Date.now() - this.readTimeoutMs };
        this.stalled = stalled;
        const again = () => {
          if (this.stalled === stalled) this.stalled = undefined;
          if (!this.closed) this.schedule(DEBOUNCE_MS, false);
        };
        work.then(again, again);
      }
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  /** {@link read}, unbounded in time: a regular file only ({@link openRegular}), at most {@link MAX_CONFIG_BYTES}. */
  private async readOnce(): Promise<{ text: string; seen: WritersSeen; changed: boolean }> {
    const fh = await openRegular(this.status.path, MAX_CONFIG_BYTES);
    try {
      const ask = async (): Promise<WritersSeen> => {
        const w = await writersOf(fh, !this.writing);
        if (w.leaseError !== undefined && !this.writerLimits.has(`lease ${w.leaseError}`)) {
          this.writerLimits.add(`lease ${w.leaseError}`);
          this.log.warn(
            { config: this.status.path, lease: w.leaseError },
            `cannot ask the kernel whether a process holds ${this.status.path} open for writing (a read lease is refused: ${w.leaseError}): /proc is read instead (${w.limits}); without CAP_LEASE a lease needs the file to be the daemon's user's`,
          );
        } else if (w.open === undefined && !this.writerLimits.has(w.limits)) {
          this.writerLimits.add(w.limits);
          this.log.warn(
            { config: this.status.path },
            `cannot tell whether a process holds ${this.status.path} open for writing (${w.limits}): its text is applied as read`,
          );
        }
        return w;
      };
      const mark = async () => {
        const st = await fh.stat({ bigint: true });
        return `${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
      };
      const before = await ask();
      const m0 = await mark();
      const text = await readBounded(fh, this.status.path, MAX_CONFIG_BYTES);
      const changed = (await mark()) !== m0;
      const seen = before.open ? before : await ask();
      return { text, seen, changed };
    } finally {
      await fh.close();
    }
  }

  /**
   * A process holds the file open for writing: the text may be half-written. Within {@link WRITER_WAIT_MS}
   * of the first look that saw it, nothing of it is applied (nor refused): the status says who holds it and
   * since when, the last good configuration keeps running, and the file is looked at again every
   * {@link WRITER_POLL_MS} (a close raises no event here). `wait` while waiting; otherwise `note` says, for
   * the apply's log, that the writer is gone or (`late`) still holds the file after the bound.
   */
  private waitForWriter(seen: WritersSeen, text: string): { wait: boolean; note?: string; late?: boolean } {
    // The wait is measured on the monotonic clock (a wall-clock step neither ends it nor stretches it);
    // the times said are the wall clock's.
    const now = monotonicMs();
    const iso = (t: number) => new Date(t).toISOString();
    if (!seen.open) {
      if (!this.writing) return { wait: false };
      const note = `no process holds it open for writing any more, ${((now - this.writing.since) / 1000).toFixed(1)} s after ${this.writing.who} was seen holding it`;
      this.writing = undefined;
      return { wait: false, note };
    }
    if (!this.writing) {
      const who = seen.writers.length
        ? seen.writers.map((w) => `pid ${w.pid} (${w.command})`).join(', ')
        : `a process (${seen.limits})`;
      this.writing = { since: now, sinceWall: Date.now(), who, logged: false };
    }
    const { since: began, sinceWall: since, who } = this.writing;
    const until = since + WRITER_WAIT_MS;
    const by = seen.how === 'lease' ? 'the kernel says so: it refuses a read lease' : `seen in /proc; ${seen.limits}`;
    if (now - began >= WRITER_WAIT_MS) {
      return {
        wait: false,
        late: true,
        note: `${who} still holds it open for writing after ${WRITER_WAIT_MS / 1000} s (since ${iso(since)}; ${by}): the text is applied as it is now`,
      };
    }
    const message = `config ${this.status.path} is being written: ${who} holds it open for writing (seen since ${iso(since)}; ${by}); not applied until no process does, at most until ${iso(until)}`;
    // Not a refusal of this text: whatever it becomes is judged again once written.
    this.refusedText = undefined;
    this.refused('BeingWritten', message, [], text);
    // Nothing of any configuration runs (a first start while the file is being written): not "as desired".
    if (this.status.applied === undefined && this.ctl.desiredEmpty) {
      this.ctl.setConfigProblem(`${message}; no configuration runs`);
    }
    if (!this.writing.logged) {
      this.writing.logged = true;
      this.log.info(
        { config: this.status.path, reason: 'BeingWritten', running: this.report().running },
        `${message}; the last good configuration keeps running (${this.report().running})`,
      );
    }
    this.schedule(seen.how === 'lease' ? WRITER_POLL_MS : WRITER_POLL_PROC_MS, false);
    return { wait: true };
  }

  /** `because`: why a refused file is loaded again (the re-evaluation), said with it when it applies. */
  private async load(retried: boolean, because?: string): Promise<void> {
    let r: Awaited<ReturnType<ConfigWatcher['read']>>;
    try {
      r = await this.read();
    } catch (e) {
      // Not a regular file (a FIFO, a directory, a device, a socket) or too large, or a read that does not
      // return: refused at once, unread (nothing an editor leaves for a moment).
      const final = e instanceof NotARegularFile || e instanceof ReadStalled;
      // Between an editor's unlink and rename the file may be missing.
      if (!retried && !final) return this.schedule(RETRY_MS, true);
      // A symbolic link whose target is gone (or that loops) says so, as a missing file says ENOENT.
      const said =
        e instanceof NotARegularFile || e instanceof BrokenSymlink
          ? `config ${e.message}`
          : `read ${this.status.path}: ${(e as Error).message}`;
      return this.fail(said, undefined, 'error', '', {
        reason: 'Unreadable',
        problems: [{ field: '', description: (e as Error).message }],
      });
    }
    const text = r.text;
    // Written to while read: read again (the write's own event may have come before the read).
    if (r.changed) return this.schedule(DEBOUNCE_MS, false);
    // The text refused for what the host is, read again with nothing new: the periodic look that sees the
    // change the write's event brought already, or another event of the same write. Not applied again: each
    // try of a file refused only once its interfaces were attached changed the host for a moment (our program
    // attached, a peer's GRO switched on, offloads turned off, then all put back) with nothing said, the
    // refusal being said once. watchRefusal loads it again when the checks' verdict or the host changes,
    // SIGHUP (`because`) and another text at once.
    if (because === undefined && text === this.hostRefused && text === this.refusedText && this.status.lastError)
      return;
    // Unchanged and in force: nothing to do, whoever holds it open. After a refusal the same text is applied
    // again (the kernel holds the last good configuration, which may be this very text: re-applying it is a
    // no-op or a repair).
    if (text === this.status.applied && this.status.lastError === undefined) {
      this.writing = undefined;
      return this.inForce();
    }
    const w = this.waitForWriter(r.seen, text);
    if (w.wait) return;
    const written = w.note;
    const late = w.late === true;
    if (isEmptyConfig(text)) {
      if (!retried) return this.schedule(RETRY_MS, true);
      // A warning, not an error: what an editor leaves for a moment; nothing is wrong with what runs.
      return this.fail(
        `config ${this.status.path} is empty (write "links: {}" to remove every link, "rules: []" every rule)`,
        text,
        'warn',
        '',
        { reason: 'Empty', problems: [{ field: '', description: 'the file holds no configuration' }] },
      );
    }
    let cfg;
    try {
      cfg = parseConfig(text);
    } catch (e) {
      if (e instanceof ConfigError && e.syntax && !retried) return this.schedule(RETRY_MS, true);
      return this.fail(`invalid config ${this.status.path}: ${(e as Error).message}`, text, 'error', '', refusalOf(e));
    }
    const inForce = this.ctl.desiredCounts();
    const dropped = (['links', 'rules'] as const).filter((k) => !cfg.sections[k] && inForce[k] > 0);
    if (dropped.length) {
      const clear = (k: 'links' | 'rules') =>
        k === 'links' ? '"links: {}" removes every link' : '"rules: []" every rule';
      return this.fail(
        `config ${this.status.path} has no ${dropped.map((k) => `"${k}:"`).join(' or ')} section while the configuration in force has ${dropped
          .map(
            (k) =>
              `${inForce[k]} ${k === 'links' ? (inForce[k] === 1 ? 'link' : 'links') : inForce[k] === 1 ? 'rule' : 'rules'}`,
          )
          .join(' and ')}: not applied (${dropped.map(clear).join(', ')})`,
        text,
        'warn',
        '',
        {
          reason: 'SectionMissing',
          problems: dropped.map((k) => ({
            field: k,
            description: `is missing while ${inForce[k]} ${k === 'links' ? (inForce[k] === 1 ? 'link runs' : 'links run') : inForce[k] === 1 ? 'rule runs' : 'rules run'}`,
          })),
        },
      );
    }
    try {
      const changes = await this.ctl.applyConfig(cfg);
      this.status.applied = text;
      this.status.appliedSha256 = sha256(text);
      this.status.appliedAt = Date.now();
      this.status.lastError = undefined;
      this.refusedText = undefined;
      this.hostRefused = undefined;
      this.ctl.setConfigProblem(undefined);
      this.inForce();
      // A warning when applied past the bound while a process still holds the file open for writing.
      this.log[late ? 'warn' : 'info'](
        {
          config: this.status.path,
          ...(because ? { after: because } : {}),
          ...(written ? { written } : {}),
          // The whole configuration now in force, then what this file changed.
          configuration: {
            links: cfg.links.map((l) => `${l.a} ${l.direction === 'both' ? '<->' : '->'} ${l.b}`),
            rules: cfg.rules,
          },
          changes: {
            rules: changes.rules.filter((c) => c.action !== 'unchanged'),
            links: changes.links.filter((c) => c.action !== 'unchanged'),
          },
        },
        'config applied',
      );
    } catch (e) {
      // Nothing of the file was applied (Controller.applyConfig: one transaction, undone whole).
      const missing = e instanceof CoreError && e.kind === 'not-found';
      this.fail(
        `config ${this.status.path} not applied: ${(e as Error).message}`,
        text,
        'error',
        missing ? '; the file is tried again until the interface exists' : '',
        refusalOf(e),
      );
      this.hostRefused = undefined;
      if (missing && !this.closed) this.schedule(MISSING_RETRY_MS, false);
      // Any other refusal (the controller's, or the kernel's: an attach refused) is of what the host is now.
      else if (!this.closed) {
        this.hostRefused = text;
        await this.watchRefusal(cfg, text);
      }
    }
  }

  /**
   * A file the controller refused for what the host is (a link loop through a veth pair, a bridge, a device
   * in use, an egress that cannot take native redirects, a table full): re-evaluated as the host changes,
   * with the checks the apply runs, so that a refusal lasts only as long as its reason holds, and the status
   * never keeps a reason that no longer holds (the pair deleted: InterfaceMissing, not "loop"; the veth
   * peer's GRO switched on: applied). Every {@link MISSING_RETRY_MS} the controller says again what it would
   * refuse of the file before writing anything (Controller.checkConfig: validation, then the preflight's
   * kernel preconditions, read without repairing anything) and what the host shows of every interface the
   * file names (for what only the kernel refuses, an attach); when either differs from what it said at the
   * refusal, the file is loaded again (applied, or refused with today's reason; a refusal said before is not
   * logged again). Stops when another text is read or the file is in force.
   */
  private async watchRefusal(cfg: Parameters<Controller['checkConfig']>[0], text: string): Promise<void> {
    clearTimeout(this.recheck);
    const baseline = await this.verdict(cfg);
    const tick = () => {
      this.recheck = setTimeout(() => {
        this.running = this.running.then(async () => {
          if (this.closed || this.refusedText !== text || this.status.lastError === undefined) return;
          const now = await this.verdict(cfg);
          if (now === baseline) return tick();
          await this.load(false, `re-evaluated: ${hostChange(baseline, now)}`);
        });
      }, MISSING_RETRY_MS);
      this.recheck.unref?.();
    };
    tick();
  }

  /**
   * What Controller.checkConfig says of `cfg` now: its refusal (or none) and the host it saw; and whether the
   * state store refuses writes (as the reconciler's write probe last saw it each second): a file refused by
   * the store is applied once it takes writes again.
   */
  private async verdict(cfg: Parameters<Controller['checkConfig']>[0]): Promise<Verdict> {
    const v = await this.ctl.checkConfig(cfg);
    return JSON.stringify([v.refusal ?? '', v.host, this.ctl.stateStore()?.key ?? '']);
  }

  /** Say why the file is not in force: once per text and reason (every directory event re-reads it). */
  private fail(
    message: string,
    text: string | undefined,
    level: 'warn' | 'error',
    note: string,
    why: { reason: RefusalReason; problems: FieldViolation[] },
  ): void {
    if (this.status.lastError === message && this.refusedText === text) return;
    this.status.lastError = message;
    this.refusedText = text;
    this.refused(why.reason, message, why.problems, text);
    if (this.status.applied === undefined && this.ctl.desiredEmpty) {
      // Nothing of any configuration runs (a first start with a bad file, no stored state): not "as desired".
      const problem = `${message}; no configuration runs${note}`;
      this.ctl.setConfigProblem(problem);
      this.log[level]({ config: this.status.path, reason: why.reason, field: why.problems[0]?.field }, problem);
      return;
    }
    this.ctl.setConfigProblem(undefined);
    const r = this.report();
    this.log[level](
      { config: this.status.path, reason: r.reason, field: r.problems[0]?.field, running: r.running },
      `${message}; the last good configuration keeps running (${r.running})${note}`,
    );
  }

  /**
   * Read the file again now (SIGHUP), after any read under way, and apply it as a change seen by the
   * watches would be (no wait for a file still being written: the signal says it is ready). What is in force
   * then, for the log line.
   */
  async reload(because: string): Promise<{
    path: string;
    inForce: boolean;
    reason: string;
    appliedSha256?: string;
    message?: string;
  }> {
    if (!this.closed) {
      this.running = this.running.then(() => this.load(true, because)).then(() => this.follow());
      await this.running;
    }
    const r = this.report();
    return {
      path: r.path,
      inForce: r.inForce,
      reason: r.reason,
      ...(r.appliedSha256 ? { appliedSha256: r.appliedSha256 } : {}),
      ...(r.inForce ? {} : { message: r.message }),
    };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearTimeout(this.recheck);
    clearInterval(this.verifier);
    for (const w of this.watchers.values()) w.watcher.close();
    this.watchers.clear();
  }
}
