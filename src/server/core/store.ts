/**
 * The desired state on disk: an SQLite database (better-sqlite3) in the state
 * directory (default /var/lib/xdpctl/state.db), in WAL mode with
 * synchronous=FULL, one row per rule and per link, one transaction per
 * change. The schema is versioned (PRAGMA user_version) and migrated forward
 * in a transaction; a database from a newer xdpctld is refused, never
 * rewritten. An existing state.json (the format before) is imported once and
 * renamed to state.json.imported. See docs/state-store.md.
 *
 * Every failure names the database path and says what the disk did
 * (ENOSPC -> SQLITE_FULL, read-only, I/O error, the file size limit
 * RLIMIT_FSIZE -> EFBIG -> SQLITE_IOERR_WRITE or SQLITE_FULL): {@link storeError}. When the
 * database cannot be opened for writing at start (a full or read-only disk),
 * it is read from a copy in memory and the store is not writable: reads and
 * the adopted datapath keep working, and every change is refused until the
 * disk is writable again (each change retries the open).
 *
 * This module does file I/O only; it knows nothing of the kernel or gRPC.
 */
import {
  accessSync,
  chmodSync,
  closeSync,
  constants,
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statfsSync,
  statSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Worker } from 'node:worker_threads';

import Database from 'better-sqlite3';

import { monotonicMs } from './clock.js';
import { CoreError, storeReason, type CoreErrorKind } from './errors.js';
import { efbigText, fileAtSizeLimit } from './file-size-limit.js';
import { linkKey, type LinkSpec, type RuleRecord } from './model.js';
import type { RuleRow, StoreRows } from './store-drift.js';

/** Version of the state.json format that is imported. */
export const STATE_VERSION = 1;

/** Kernel ids a rule held, kept so that a restart continues its counters. */
export interface RuleKernelIds {
  slot: number;
  statsId: number;
  /** backend identity (ip@iface) -> ids. */
  backends: Record<string, { id: number; statsId: number }>;
}

export interface StoredRule extends RuleRecord {
  kernel?: RuleKernelIds;
}

export interface StoredState {
  version: number;
  rules: StoredRule[];
  links: LinkSpec[];
  /**
   * Set at start when the pinned datapath records the store generation it was written from and this store is
   * at it or past it: what the pins hold that the store lacks is then a change never committed (a stop
   * between its kernel writes and its commit), not a later store's.
   */
  pinsLevel?: boolean;
  /**
   * Set at start when the store's generation is ahead of the one the pins record (the generation the kernel
   * reflects): each, so that restore can say that a commit landed after the kernel was last written from it.
   */
  ahead?: { store: number; pins: number };
  /**
   * Set at start, read before anything changed: the store generation the pins record (`generation`; neither field:
   * they record none; `unreadable`: why it cannot be read) and this store's generation then (`store`). Restore says
   * from them why a rule the pins hold is not in the store.
   */
  pins?: { generation?: number; unreadable?: string; store: number };
  /** Set at start under --reset-datapath over pins this store does not describe: why (what the start logged). */
  reset?: string;
}

/**
 * Schema migrations, in order: migration i brings user_version from i to
 * i + 1. Append only; never edit a released one.
 */
export const MIGRATIONS: readonly string[] = [
  `CREATE TABLE rules (
     name        TEXT PRIMARY KEY,
     -- the RuleSpec as JSON (protocol, port, destination, sourcePrefixes,
     -- ingressInterfaces, backends, udpChecksum, labels)
     spec        TEXT NOT NULL CHECK (json_valid(spec)),
     generation  INTEGER NOT NULL,
     create_time INTEGER NOT NULL, -- ms since the epoch
     update_time INTEGER NOT NULL,
     -- kernel ids kept across restarts: {"slot","statsId","backends":{"ip@iface":{"id","statsId"}}}
     kernel      TEXT CHECK (kernel IS NULL OR json_valid(kernel))
   ) STRICT;
   CREATE TABLE links (
     key       TEXT PRIMARY KEY, -- the unordered pair "a|b"
     a         TEXT NOT NULL,
     b         TEXT NOT NULL,
     direction TEXT NOT NULL CHECK (direction IN ('both', 'a-to-b'))
   ) STRICT;
   CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** The database file in a state directory. */
export const stateDbPath = (dir: string) => join(dir, 'state.db');
/** The JSON file of earlier versions, imported once. */
export const legacyJsonPath = (dir: string) => join(dir, 'state.json');

/** One change's writes; nothing is durable until {@link StoreTxn.commit}. */
export interface StoreTxn {
  putRule(rule: StoredRule): void;
  deleteRule(name: string): void;
  putLink(link: LinkSpec): void;
  deleteLink(key: string): void;
  /**
   * Make the change durable (fsync'd WAL); throws a CoreError naming the path when the disk refuses, or when
   * it does not complete the write within {@link STORE_WRITE_TIMEOUT_MS} (UNAVAILABLE: the disk is not
   * answering). Every change commits on the store's worker thread: a promise, settled once SQLite has
   * committed (or refused and rolled back) there, or once the bound has passed.
   */
  commit(): void | Promise<void>;
  /** Forget the change (idempotent; a no-op after commit); a promise when the change ran on the worker thread. */
  rollback(): void | Promise<void>;
}

/**
 * Every write of the running daemon runs on the store's worker thread (its own connection to the same
 * database): a change's rows are sent there as they are made, and the INSERTs, the COMMIT with its fsync of
 * the WAL and the checkpoint SQLite runs when the WAL passes 1 000 pages happen off the event loop. A disk
 * that stops completing writes (a frozen file system, a hung NFS or iSCSI volume) then holds that thread,
 * never the event loop: reads, health, metrics and signals are answered on (docs/state-store.md). Only the
 * open at start (migrations, the import of a state.json, the meta the start records) writes on the event
 * loop, before anything is served. The rows go to the thread 256 at a time.
 */
export const WORKER_ROWS = 256;

/**
 * How long a write on the worker thread may take before the store says the disk is not answering (ms): a
 * change whose BEGIN or COMMIT has not completed by then is refused UNAVAILABLE (and undone in the kernel),
 * and every change is refused at once while that write is still pending; GetStatus and health say so.
 */
export const STORE_WRITE_TIMEOUT_MS = 5000;

/**
 * Whether the state directory's disk completes writes, observed off the event loop (a tiny write and fsync each
 * reconciler pass, by the daemon's one probe process: dataplane/disk-probe.ts), so that a disk that stopped completing writes (a
 * frozen file system) is said before a change hits it, and a store is said writable only on a recent answer.
 */
export interface DiskAnswers {
  /** Send a probe unless one waits for the disk (never waits). */
  probe(): void;
  /** The probe waiting for the disk: sent at `at` (ms since the epoch), `ageMs` ago; undefined while none waits. */
  waitingSince(): { at: number; ageMs: number } | undefined;
  /** When the disk last answered a probe (completed or refused it); undefined before the first answer. */
  lastAnswer(): { at: number; ageMs: number } | undefined;
}

/**
 * How old the disk's last answer to a write may be for the store to be said writable (ms): the probe is sent
 * every reconciler pass (~1 s) and answered in milliseconds; older than this (and none waiting past
 * {@link STORE_WRITE_TIMEOUT_MS}), whether the store takes writes cannot be told.
 */
export const STORE_OBSERVED_RECENT_MS = 3000;

/** What the core needs to persist changes (a fake in unit tests). */
export interface StatePort {
  /** The database path, for messages. */
  readonly path: string;
  /**
   * Start a change: BEGIN IMMEDIATE (on the worker thread: a promise). Throws (rejects) a CoreError when the
   * store cannot persist, or when the disk does not answer within {@link STORE_WRITE_TIMEOUT_MS}.
   */
  begin(rows?: number): StoreTxn | Promise<StoreTxn>;
  /** Why the store cannot take writes now, as last observed, and since when (ms); undefined while it can. */
  /**
   * Why the store cannot take writes now, as last observed, and since when (ms); undefined while it can. `key`: what
   * stays the same while the refusal does (its message may carry what changes, the bytes free): a transition is a new key.
   */
  refusal?(): { error: CoreError; since: number; key?: string } | undefined;
  /** When the disk last answered a write, and why writability cannot be told now: {@link StateStore.observed}. */
  observed?(): { lastAnswer: number; unknown?: string };
  /** Make the stored state exactly `state`, in one transaction (a store written back to the desired state). */
  replaceAll?(state: StoredState): Promise<void>;
  /** The store's rows when another writer has changed them since the last look (or `force`): {@link StateStore.readIfChanged}. */
  readIfChanged?(force?: boolean): Promise<StoreRows | undefined>;
}

/** How long a write waits for another process's write lock before it is refused (SQLITE_BUSY), ms. */
const BUSY_TIMEOUT_MS = 100;

export { storeReason } from './errors.js';

const SQLITE_DETAIL: [RegExp, CoreErrorKind, string][] = [
  [/^SQLITE_FULL/, 'exhausted', 'the disk is full (ENOSPC)'],
  [/^SQLITE_IOERR_SHMSIZE/, 'exhausted', 'cannot grow the WAL index: the disk is full (ENOSPC)'],
  [/^SQLITE_READONLY/, 'precondition', 'the database or its directory is read-only (EROFS)'],
  [/^SQLITE_IOERR/, 'unavailable', 'the disk reported an I/O error (EIO)'],
  [/^SQLITE_CANTOPEN/, 'unavailable', 'cannot open the database file'],
  [/^SQLITE_BUSY/, 'busy', 'another process holds the write lock'],
  [/^SQLITE_(CORRUPT|NOTADB)/, 'precondition', 'the database is corrupt'],
];

const ERRNO_DETAIL: Record<string, [CoreErrorKind, string]> = {
  ENOSPC: ['exhausted', 'the disk is full (ENOSPC)'],
  EDQUOT: ['exhausted', 'the disk quota is exhausted (EDQUOT)'],
  EROFS: ['precondition', 'the file system is read-only (EROFS)'],
  EACCES: ['precondition', 'permission denied (EACCES)'],
  EPERM: ['precondition', 'operation not permitted (EPERM)'],
  EIO: ['unavailable', 'the disk reported an I/O error (EIO)'],
};

/**
 * A store failure as a CoreError that names the path: a full disk is
 * RESOURCE_EXHAUSTED, a read-only one FAILED_PRECONDITION, an I/O error
 * UNAVAILABLE (docs/state-store.md). `what` says what was attempted.
 */
export function storeError(e: unknown, path: string, what: string): CoreError {
  if (e instanceof CoreError) return e;
  const code = (e as { code?: string }).code ?? '';
  const sqlite = SQLITE_DETAIL.find(([re]) => re.test(code));
  let [kind, detail] = sqlite ? [sqlite[1], sqlite[2]] : (ERRNO_DETAIL[code] ?? ['unavailable', 'unexpected error']);
  // A write past the file size limit (RLIMIT_FSIZE: Node ignores SIGXFSZ) fails with EFBIG, which SQLite reports
  // as an I/O error (SQLITE_IOERR_WRITE), or is cut short at the limit, which it reports as a full disk
  // (SQLITE_FULL): better-sqlite3 does not tell the errno SQLite saw, so the limit is compared with the files'
  // sizes. One within a write of it is the file the write was refused on.
  const atLimit = /^(SQLITE_(FULL|IOERR|CANTOPEN)|EFBIG)/.test(code)
    ? fileAtSizeLimit([`${path}-wal`, path, `${path}-journal`], largestWrite(path))
    : undefined;
  if (atLimit) {
    [kind, detail] = [
      'exhausted',
      `the file size limit (RLIMIT_FSIZE ${atLimit.limit} bytes) is reached writing ${atLimit.path} (EFBIG)`,
    ];
  } else if (code === 'EFBIG') {
    [kind, detail] = ['exhausted', efbigText()];
  } else if (/^SQLITE_(CANTOPEN|IOERR)/.test(code)) {
    // SQLite reports a read-only or full file system it cannot open a file on
    // as CANTOPEN or an I/O error: ask the file system what it is.
    const fs = diskState(dirname(path));
    if (fs) [kind, detail] = fs;
  }
  return new CoreError(kind, `${what}: state store ${path}: ${detail} [${code || (e as Error).message}]`, [], {
    cause: e,
  });
}

/**
 * The largest single write SQLite makes to the database at `path`: a page (its size from the file's header,
 * bytes 16-17; 1 means 65536) and a WAL frame's 24-byte header; a 64 KiB page when the header cannot be read.
 */
function largestWrite(path: string): number {
  let page = 65536;
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const b = Buffer.alloc(2);
    if (readSync(fd, b, 0, 2, 16) === 2) {
      const n = b.readUInt16BE(0);
      page = n === 1 ? 65536 : n >= 512 ? n : page;
    }
  } catch {
    /* not there or unreadable: the largest page */
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return page + 24;
}

/** What the file system holding `dir` says: read-only, or full; undefined when neither. */
function diskState(dir: string): [CoreErrorKind, string] | undefined {
  try {
    accessSync(dir, constants.W_OK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EROFS') return ERRNO_DETAIL.EROFS;
  }
  try {
    if (statfsSync(dir).bavail === 0) return ERRNO_DETAIL.ENOSPC;
  } catch {
    /* unknown */
  }
  return undefined;
}

/** The file system holding `dir`, as statvfs says: bytes free to this process (bavail) and its size; undefined when it cannot tell. */
function diskSpace(dir: string): { free: number; size: number } | undefined {
  try {
    const f = statfsSync(dir);
    return { free: f.bavail * f.bsize, size: f.blocks * f.bsize };
  } catch {
    return undefined;
  }
}

/** Whether a store error is the disk being full (ENOSPC, EDQUOT; not the file size limit, which names itself). */
function isDiskFull(e: CoreError): boolean {
  return e.kind === 'exhausted' && /\((ENOSPC|EDQUOT)\)/.test(e.message);
}

/** HH:MM:SS UTC of `ms` (since the epoch). */
const clockTime = (ms: number) => `${new Date(ms).toISOString().slice(11, 19)} UTC`;

/**
 * Codes of a store that refuses writes for now (as opposed to a database that is wrong): a disk that refuses
 * them, or another process holding the write lock (SQLITE_BUSY past the busy timeout: a backup, an operator's
 * sqlite3 session). Each is reported as the store's refusal until a write works again.
 */
const DISK_REFUSES = /^(SQLITE_(FULL|READONLY|IOERR|CANTOPEN|BUSY)|ENOSPC|EDQUOT|EFBIG|EROFS|EIO|EACCES|EPERM)/;

/**
 * Who else holds a POSIX lock on `files` (the database and its WAL index, where SQLite takes its write lock:
 * sqlite.org/walformat.html), from /proc/locks: " (pid N, COMMAND)" or "" when it does not tell.
 */
function lockHolder(files: string[]): string {
  const inodes = new Set<string>();
  for (const f of files) {
    try {
      const st = statSync(f);
      inodes.add(`${st.ino}`);
    } catch {
      /* not there */
    }
  }
  let text = '';
  try {
    text = readFileSync('/proc/locks', 'utf8');
  } catch {
    return '';
  }
  for (const line of text.split('\n')) {
    // "1: POSIX  ADVISORY  WRITE 24824 fe:00:4278608 120 120" (proc_locks(5)); "->" lines are waiters.
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'POSIX' || f[3] !== 'WRITE') continue;
    const pid = Number(f[4]);
    if (pid === process.pid || !inodes.has(f[5]?.split(':')[2] ?? '')) continue;
    let comm = '';
    try {
      comm = `, ${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}`;
    } catch {
      /* gone */
    }
    return ` (pid ${pid}${comm})`;
  }
  return '';
}

/**
 * A read-only database in memory from a database file's bytes. The header's
 * file-format bytes (offsets 18 and 19: 2 = WAL) are set to 1 (rollback
 * journal): an in-memory database has no WAL to open.
 */
function inMemory(bytes: Buffer): Database.Database {
  const b = Buffer.from(bytes);
  if (b.length >= 20 && b[18] === 2) {
    b[18] = 1;
    b[19] = 1;
  }
  return new Database(b, { readonly: true });
}

/** The files SQLite keeps beside a database in WAL mode (and a rollback journal, had one been left). */
const SIDE_FILES = ['-wal', '-shm', '-journal'];

/**
 * The database and the files beside it are private (0600), like the daemon's other state: a new database
 * file is created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the database file's
 * mode), and group or other bits on existing ones (0644, as earlier versions created them) are removed.
 */
function makePrivate(path: string): boolean {
  let created = false;
  try {
    closeSync(openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600));
    created = true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  for (const f of [path, ...SIDE_FILES.map((x) => path + x)]) {
    let mode: number;
    try {
      mode = lstatSync(f).mode;
    } catch {
      continue; // not there
    }
    try {
      if (mode & 0o077) chmodSync(f, mode & 0o700);
    } catch {
      // A read-only disk or another owner: the open that follows says what the disk refuses.
    }
  }
  return created;
}

/**
 * Open the database; a file this call created is removed again when SQLite cannot open it (e.g. the
 * better-sqlite3 addon built for another Node ABI): a refused start leaves no empty state.db behind.
 */
function openDb(path: string, readonly: boolean): Database.Database {
  const created = !readonly && makePrivate(path);
  let db: Database.Database | undefined;
  try {
    db = new Database(path, { readonly, fileMustExist: readonly, timeout: BUSY_TIMEOUT_MS });
    if (!readonly) {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
    }
    return db;
  } catch (e) {
    db?.close();
    if (created) for (const f of [path, ...SIDE_FILES.map((x) => path + x)]) rmSync(f, { force: true });
    throw e;
  }
}

/** A file's identity (st_dev:st_ino), or undefined when it does not exist. */
function fileIdentity(path: string): string | undefined {
  try {
    const s = statSync(path);
    return `${s.dev}:${s.ino}`;
  } catch {
    return undefined;
  }
}

/** Whether `e` (or what it wraps) is a disk that refuses writes (full, read-only, I/O error), not a wrong database. */
function diskRefuses(e: unknown): boolean {
  for (let x = e as { code?: string; cause?: unknown } | undefined; x; x = x.cause as typeof x) {
    if (DISK_REFUSES.test(x.code ?? '')) return true;
  }
  return false;
}

/**
 * While a change refused for a full disk stands, a probe of its size is tried at least this often (ms) even when
 * statvfs shows less free than its size: statvfs does not count space SQLite reuses or a root writer's reserved
 * blocks.
 */
const FULL_PROBE_RETRY_MS = 30_000;

export class StateStore implements StatePort {
  readonly path: string;
  private db!: Database.Database;
  private stmts!: ReturnType<StateStore['prepare']>;
  /** Why the store cannot persist now (undefined: it can). */
  problem?: CoreError;
  /** The database file this store writes (st_dev:st_ino when opened): one removed or replaced is told apart. */
  private identity?: string;
  /** The last write (a change, or {@link probe}) the disk refused; cleared by a write that works. */
  private writeFailure?: CoreError;
  /**
   * The last write the disk refused because it is full (with {@link writeFailure}): how many bytes it wrote (~: the
   * rows' values; SQLite adds its pages' overhead), when, and what it was. A smaller write that works (a 1-byte probe
   * into space the WAL already holds) does not clear it: only a change that commits, or a probe write of at least
   * `bytes` (tried once statvfs says that much is free), does.
   */
  private full?: { bytes: number; at: number; what: 'the last change' | 'a write probe' };
  /** When the last probe of a refused size was sent (Date.now()). */
  private fullProbedAt = 0;
  /** Since when the store refuses writes (ms since the epoch); undefined while it takes them. */
  private refusingSince?: number;
  /** Since when (ms) the database file was seen removed or replaced under the running daemon. */
  private goneSince?: number;
  /** Why no fresh store could be written in its place (the daemon's last attempt), if one failed. */
  private renewFailure?: Error;
  /**
   * How many changes this store has committed (meta `generation`, written in each change's own transaction;
   * 0 for a store that records none). The daemon writes it into the pinned datapath after each commit
   * ({@link onCommitted}): a start compares the two, and refuses a store behind the pins.
   */
  generation = 0;
  /** Told the generation of each change once committed (the daemon writes it into the pins). */
  onCommitted?: (generation: number) => void;
  /** The state directory's disk, probed each reconciler pass (the daemon sets it: dataplane/disk-probe.ts). */
  disk?: DiskAnswers;
  /** When the store was opened (ms, monotonic and wall clock): the open's writes are the first observation. */
  private readonly openedAt = { at: Date.now(), mono: monotonicMs() };

  private constructor(readonly dir: string) {
    this.path = stateDbPath(dir);
  }

  /** Whether a state store (the database, or a state.json to import) exists in `dir`. */
  static exists(dir: string): boolean {
    return existsSync(stateDbPath(dir)) || existsSync(legacyJsonPath(dir));
  }

  /**
   * Open (creating, migrating and importing state.json as needed). On a disk
   * that refuses writes, opens a read-only copy in memory and sets `problem`.
   * A corrupt database, one from a newer xdpctld, or a corrupt state.json
   * stops the start: nothing is discarded or overwritten.
   */
  static open(dir: string): StateStore {
    const s = new StateStore(dir);
    let fresh = false;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      s.db = openDb(s.path, false);
      s.identity = fileIdentity(s.path);
      fresh = (s.db.pragma('user_version', { simple: true }) as number) === 0;
      s.migrate();
    } catch (e) {
      s.db?.close();
      const err = storeError(e, s.path, 'open for writing');
      // The disk refuses writes: read what is there. Anything else (corrupt, newer) stops the start.
      if (DISK_REFUSES.test((e as { code?: string }).code ?? '') && existsSync(s.path)) {
        s.openReadOnly(err);
        return s;
      }
      throw err;
    }
    s.stmts = s.prepare();
    if (fresh) s.importJson();
    s.generation = s.storedGeneration();
    return s;
  }

  /** The generation meta value as stored (0 when absent or not a number). */
  private storedGeneration(): number {
    const g = Number(this.meta('generation') ?? 0);
    return Number.isSafeInteger(g) && g > 0 ? g : 0;
  }

  /**
   * Set the generation (a start that takes this store as the truth over pins of a later generation,
   * --reset-datapath: it continues above them, so that the store the pins were written from is behind
   * them now). False when the store cannot persist.
   */
  setGeneration(generation: number): boolean {
    if (!this.setMeta('generation', String(generation))) return false;
    this.generation = generation;
    return true;
  }

  /**
   * Continue the count of a store this one replaces (a fresh store written after the file was removed
   * under the running daemon): its changes count on from there.
   */
  continueFrom(generation: number): void {
    if (generation > this.generation) this.generation = generation;
  }

  /** A change committed as generation `g`: counted and told ({@link onCommitted}). */
  private committed(g: number): void {
    if (g > this.generation) this.generation = g;
    try {
      this.onCommitted?.(g);
    } catch {
      /* the change is committed: what the hook could not write, it reports itself */
    }
  }

  /** The database as it is on disk, read into memory (no -shm or -wal needs creating). */
  private openReadOnly(problem: CoreError): void {
    const wal = `${this.path}-wal`;
    if (existsSync(wal) && statSync(wal).size > 0) {
      // Committed changes may still be in the WAL only, and SQLite cannot open
      // it here (no room for its index): replay a copy of both elsewhere.
      const tmp = mkdtempSync(join(tmpdir(), 'xdpctl-state-'));
      try {
        copyFileSync(this.path, join(tmp, 'state.db'));
        copyFileSync(wal, join(tmp, 'state.db-wal'));
        const copy = new Database(join(tmp, 'state.db'));
        copy.pragma('wal_checkpoint(TRUNCATE)');
        this.db = inMemory(copy.serialize());
        copy.close();
      } catch (e) {
        throw storeError(e, this.path, `read a copy (the disk refuses writes: ${problem.message})`);
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    } else {
      this.db = inMemory(readFileSync(this.path));
    }
    const v = this.db.pragma('user_version', { simple: true }) as number;
    if (v !== SCHEMA_VERSION) {
      throw new CoreError(
        'precondition',
        `state store ${this.path} is at schema ${v} (this xdpctld: ${SCHEMA_VERSION}) and the disk refuses writes (${problem.message})`,
      );
    }
    this.problem = problem;
    this.refusingSince = Date.now();
    this.identity = fileIdentity(this.path);
    this.stmts = this.prepare();
    this.generation = this.storedGeneration();
  }

  private migrate(): void {
    const v = this.db.pragma('user_version', { simple: true }) as number;
    if (v > SCHEMA_VERSION) {
      throw new CoreError(
        'precondition',
        `state store ${this.path} is at schema version ${v}, newer than this xdpctld (${SCHEMA_VERSION}): ` +
          'run the newer xdpctld, or move the file aside',
      );
    }
    if (v === SCHEMA_VERSION) return;
    this.db.transaction(() => {
      for (let i = v; i < SCHEMA_VERSION; i++) this.db.exec(MIGRATIONS[i]);
      this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    })();
  }

  private prepare() {
    return {
      rules: this.db.prepare<[], RuleRow>(
        'SELECT name, spec, generation, create_time, update_time, kernel FROM rules ORDER BY name',
      ),
      links: this.db.prepare<[], { a: string; b: string; direction: LinkSpec['direction'] }>(
        'SELECT a, b, direction FROM links ORDER BY key',
      ),
      putRule: this.db.prepare(SQL.putRule),
      deleteRule: this.db.prepare(SQL.deleteRule),
      putLink: this.db.prepare(SQL.putLink),
      deleteLink: this.db.prepare(SQL.deleteLink),
      meta: this.db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?'),
      putMeta: this.db.prepare(SQL.putMeta),
    };
  }

  /**
   * The one-time import of state.json into a new database (then renamed
   * state.json.imported). A corrupt file stops the start and is left as it
   * is, and so is the new, empty database: the next start imports again.
   */
  private importJson(): void {
    const json = legacyJsonPath(this.dir);
    if (!existsSync(json)) return;
    let state: StoredState;
    try {
      state = readLegacyJson(json);
    } catch (e) {
      this.db.close();
      rmSync(this.path, { force: true });
      rmSync(`${this.path}-wal`, { force: true });
      rmSync(`${this.path}-shm`, { force: true });
      throw e;
    }
    this.db.transaction(() => {
      for (const r of state.rules) this.writeRule(r);
      for (const l of state.links) this.stmts.putLink.run(linkKey(l), l.a, l.b, l.direction);
      this.stmts.putMeta.run('imported_from', json);
    })();
    renameSync(json, `${json}.imported`);
  }

  private writeRule(r: StoredRule): void {
    this.stmts.putRule.run(...ruleRow(r));
  }

  /** The stored state (rules by name, links by key). */
  /**
   * A value of the store's meta table (e.g. `pin_root`: the pin root of the datapath this store
   * describes, recorded at each start), or undefined.
   */
  meta(key: string): string | undefined {
    try {
      return (this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
    } catch {
      return undefined;
    }
  }

  /** Set a meta value; false when the store cannot persist (a full or read-only disk: nothing written). */
  setMeta(key: string, value: string): boolean {
    if (this.problem) return false;
    try {
      this.db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)').run(key, value);
      return true;
    } catch {
      return false;
    }
  }

  load(): StoredState {
    const rules = this.stmts.rules.all().map((row): StoredRule => {
      // The parsed spec object becomes the rule (a start reads 10 000 rows: no second copy of each).
      const r = JSON.parse(row.spec) as StoredRule;
      r.name = row.name;
      r.generation = row.generation;
      r.createTime = row.create_time;
      r.updateTime = row.update_time;
      if (row.kernel) r.kernel = JSON.parse(row.kernel) as RuleKernelIds;
      return r;
    });
    const links = this.stmts.links.all().map((l) => ({ a: l.a, b: l.b, direction: l.direction }));
    return { version: STATE_VERSION, rules, links };
  }

  /** Try to become writable again after a start on a disk that refused writes. */
  private reopen(): void {
    try {
      const db = openDb(this.path, false);
      this.db.close();
      this.db = db;
      this.identity = fileIdentity(this.path);
      this.migrate();
      this.stmts = this.prepare();
      this.problem = undefined;
      this.noteWritten();
    } catch (e) {
      this.problem = storeError(e, this.path, 'open for writing');
    }
  }

  /**
   * Whether the database file at {@link path} is still the one this store writes: undefined when it is,
   * else what happened to it ("was removed", "was replaced by another file"): an `rm state.db` under the
   * running daemon leaves its connection writing to a file no directory holds.
   */
  fileChanged(): string | undefined {
    if (this.identity === undefined) return undefined;
    const now = fileIdentity(this.path);
    if (now === this.identity) return undefined;
    return now === undefined ? 'was removed' : 'was replaced by another file';
  }

  /** A CoreError when the database file is no longer the one this store writes (nothing written then). */
  private assertSameFile(): void {
    const changed = this.fileChanged();
    if (!changed) return;
    throw new CoreError(
      'unavailable',
      `state store ${this.path} ${changed} under the running daemon: the change is not made (no disk would ` +
        'hold it); the daemon writes its whole desired state into a fresh store at its next reconciler pass ' +
        '(within a second): retry then',
    );
  }

  /** Record a write the disk refused (full, read-only, I/O error): {@link refusal} reports it until one works. */
  private noteFailure(e: CoreError, wrote?: { bytes: number; what: 'the last change' | 'a write probe' }): CoreError {
    if (diskRefuses(e)) {
      this.writeFailure = e;
      this.refusingSince ??= Date.now();
      if (wrote && isDiskFull(e)) this.full = { ...wrote, at: Date.now() };
      else if (!isDiskFull(e)) this.full = undefined;
    }
    return e;
  }

  /** The disk takes writes again (a change committed, or a write probe of the refused size did): nothing refused. */
  private noteWritten(): void {
    this.writeFailure = undefined;
    this.full = undefined;
    if (!this.problem) this.refusingSince = undefined;
  }

  /**
   * Why the store cannot take writes now, as last observed (the open at start, the last change, or the
   * last {@link probe}): undefined while it takes them. `since`: ms since the epoch.
   */
  refusal(): { error: CoreError; since: number; key?: string } | undefined {
    // No store holds the desired state while its file is removed or replaced: every change is refused
    // (begin), whatever the connection to the removed file could still write.
    const changed = this.fileChanged();
    if (changed) {
      this.goneSince ??= Date.now();
      const why = this.renewFailure
        ? `a fresh store could not be written in its place: ${storeReason(this.renewFailure)}`
        : 'a fresh store is written in its place at the next reconciler pass';
      return {
        error: new CoreError(
          'unavailable',
          `state store ${this.path}: the database file ${changed} under the running daemon: no store holds the desired state ` +
            `(${why}); changes are refused until one does`,
          [],
          { cause: this.renewFailure },
        ),
        since: this.goneSince,
      };
    }
    const pending = this.notAnswering();
    if (pending !== undefined) {
      return {
        error: new CoreError(
          'unavailable',
          `write: state store ${this.path}: the disk has not completed a write sent to it at ` +
            `${new Date(pending).toISOString()} (not answering for more than ${STORE_WRITE_TIMEOUT_MS / 1000} s)`,
        ),
        since: pending,
      };
    }
    const probe = this.diskNotAnswering();
    if (probe !== undefined) {
      return {
        error: new CoreError(
          'unavailable',
          `write: state store ${this.path}: the disk has not completed a write sent to it at ` +
            `${new Date(probe.at).toISOString()} (not answering for more than ${STORE_WRITE_TIMEOUT_MS / 1000} s: ` +
            `ETIMEDOUT, a write and fsync of ${this.dir}/.write-probe pending ${Math.floor(probe.ageMs / 1000)} s)`,
        ),
        since: probe.at,
      };
    }
    if (!this.problem && this.writeFailure && this.full) {
      // What was observed: the refused write and its size, and what statvfs says now (a few bytes free cannot hold it).
      const f = this.full;
      const space = diskSpace(this.dir);
      const code = /\[([A-Z_]+)\]$/.exec(this.writeFailure.message)?.[1];
      return {
        error: new CoreError(
          'exhausted',
          `write: state store ${this.path}: the disk is full (ENOSPC): ` +
            (space ? `${space.free} bytes free of ${space.size} (statvfs), ` : 'statvfs cannot tell what is free, ') +
            `${f.what} (of ~${f.bytes} bytes) refused at ${clockTime(f.at)}${code ? ` [${code}]` : ''}`,
          [],
          { cause: this.writeFailure.cause },
        ),
        since: this.refusingSince ?? f.at,
        key: storeReason(this.writeFailure),
      };
    }
    const error = this.problem ?? this.writeFailure;
    return error ? { error, since: this.refusingSince ?? Date.now() } : undefined;
  }

  /** The disk probe's write waiting past {@link STORE_WRITE_TIMEOUT_MS} (a frozen disk), if one is. */
  private diskNotAnswering(): { at: number; ageMs: number } | undefined {
    const w = this.disk?.waitingSince();
    return w && w.ageMs >= STORE_WRITE_TIMEOUT_MS ? w : undefined;
  }

  /**
   * When the disk last answered a write of this store's directory (the disk probe, or the open at start before
   * its first answer), and, when that is older than {@link STORE_OBSERVED_RECENT_MS} while no {@link refusal}
   * holds, why whether it takes writes cannot be told now (a probe waits for the disk, not yet past the bound;
   * or none was answered since). Without a disk probe (unit tests): the open only, never "cannot be told".
   */
  observed(): { lastAnswer: number; unknown?: string } {
    const last = this.disk?.lastAnswer() ?? { at: this.openedAt.at, ageMs: monotonicMs() - this.openedAt.mono };
    if (!this.disk || last.ageMs < STORE_OBSERVED_RECENT_MS || this.refusal()) return { lastAnswer: last.at };
    const w = this.disk.waitingSince();
    const since = new Date(last.at).toISOString();
    return {
      lastAnswer: last.at,
      unknown:
        `cannot be told: the disk last answered a write at ${since} (${Math.floor(last.ageMs / 1000)} s ago)` +
        (w
          ? `; the write sent at ${new Date(w.at).toISOString()} is not answered yet (${Math.floor(w.ageMs / 1000)} s, ` +
            `not answering once past ${STORE_WRITE_TIMEOUT_MS / 1000} s)`
          : '; no write of it has been answered since'),
    };
  }

  /** The daemon could not write a fresh store after this one's file was removed: {@link refusal} says why. */
  noteNotRenewed(e: Error): void {
    this.renewFailure = e;
  }

  /**
   * A cheap write probe, for a reconciler pass, on the worker thread (its answer is what {@link refusal} says
   * from then on): while the store refuses writes (or the file system says it is read-only or full), one
   * small transaction (meta `write_probe`), so that a disk that takes writes again clears {@link refusal}
   * without waiting for a change, and a disk that stopped taking them is reported before a change fails;
   * otherwise the write lock taken for an instant (another process holding it is said). Nothing is sent
   * while a change holds the thread or a request there has waited past the bound (a disk not answering: said
   * by {@link refusal} from its age). Settles once answered, or after a second.
   */
  probe(): Promise<void> {
    if (this.closed || this.workerTxn || this.fileChanged()) return Promise.resolve();
    if (this.problem) {
      this.reopen();
      return Promise.resolve();
    }
    const t = this.thread();
    if (this.notAnswering() !== undefined || this.diskNotAnswering()) return Promise.resolve();
    const write = !!this.writeFailure || !!diskState(dirname(this.path));
    // A full disk refused a write of `full.bytes`: a smaller write that works says nothing about it (it may go to
    // space the WAL already holds), so the probe writes as much, and only once statvfs says that much is free.
    // statvfs may say less than the disk takes (SQLite reuses space the WAL already holds; root writes into the
    // reserved blocks; statvfs itself may fail): then the probe is still tried every FULL_PROBE_RETRY_MS, so that
    // the refusal never outlives a disk that takes the change.
    const full = this.writeFailure ? this.full : undefined;
    if (full && (diskSpace(this.dir)?.free ?? 0) < full.bytes && Date.now() - this.fullProbedAt < FULL_PROBE_RETRY_MS)
      return Promise.resolve();
    if (full) this.fullProbedAt = Date.now();
    const pad = full?.bytes ?? 0;
    const answered = (r: WorkerReply) => {
      if (r.err) {
        const e = Object.assign(new Error(r.err.message), { code: r.err.code });
        const err = this.withLockHolder(e, storeError(e, this.path, r.err.what));
        // A probe of the refused change's size refused again: that change's fact stands (its size, its time).
        if (full && isDiskFull(err)) this.writeFailure = err;
        else this.noteFailure(err, { bytes: largestWrite(this.path), what: 'a write probe' });
      } else if (write) {
        this.noteWritten();
      }
    };
    // Awaited for a second at most (the pass then reports it); an answer that comes later is taken then.
    return this.ask(t, { op: 'probe', path: this.path, write, pad }, 1000, answered).then((r) => {
      if (r !== TIMED_OUT) answered(r);
    });
  }

  /** `err` with the holder of the write lock named when `e` is SQLITE_BUSY and /proc/locks tells who. */
  private withLockHolder(e: unknown, err: CoreError): CoreError {
    if (!(e as { code?: string }).code?.startsWith('SQLITE_BUSY')) return err;
    const who = lockHolder([this.path, `${this.path}-shm`, `${this.path}-wal`]);
    return who ? new CoreError(err.kind, `${err.message}${who}`, [], { cause: e }) : err;
  }

  /**
   * Since when (ms) a write sent to the worker thread has waited for the disk longer than
   * {@link STORE_WRITE_TIMEOUT_MS} (a frozen or hung file system); undefined while every write sent there is
   * answered in time.
   */
  private notAnswering(): number | undefined {
    const first = this.worker?.waiting[0];
    return first && monotonicMs() - first.mono >= STORE_WRITE_TIMEOUT_MS ? first.at : undefined;
  }

  /** The refusal of a change while a write is still pending on a disk that does not answer. */
  private notAnsweringError(what: string, outcome: string, since = this.notAnswering()): CoreError {
    const when = since === undefined ? '' : ` (pending since ${new Date(since).toISOString()})`;
    return new CoreError(
      'unavailable',
      `${what}: state store ${this.path}: the disk did not complete a write in ${STORE_WRITE_TIMEOUT_MS / 1000} s ` +
        `(not answering)${when}: ${outcome}`,
    );
  }

  /**
   * Start a change on the worker thread (BEGIN IMMEDIATE there, answered before anything else of the change
   * is done). Refused at once while the store's file is gone, the disk refuses writes, or a write sent to
   * the thread before has not been answered within {@link STORE_WRITE_TIMEOUT_MS}; refused when this BEGIN
   * is not answered within it.
   */
  begin(_rows?: number): Promise<StoreTxn> {
    return this.beginTxn();
  }

  private async beginTxn(): Promise<StoreTxn & { clear(): void }> {
    // Before a reopen: one would make a new, empty database where the removed one was.
    this.assertSameFile();
    if (this.problem) this.reopen();
    if (this.problem) {
      // The cause is the SQLite error itself: a logged error's message lists its causes' once each.
      throw new CoreError(this.problem.kind, `cannot persist: ${this.problem.message}`, [], {
        cause: this.problem.cause,
      });
    }
    const pending = this.notAnswering();
    if (pending !== undefined) {
      throw this.notAnsweringError('begin a change', 'the change is not made; every change is refused until it does');
    }
    // The disk probe's write not completed in the bound (a frozen disk seen before a change hit it): refused at
    // once, not sent to the worker thread (a thread inside a write to a frozen file system holds the exit).
    const probe = this.diskNotAnswering();
    if (probe !== undefined) {
      throw this.notAnsweringError(
        'begin a change',
        'the change is not made; every change is refused until it does',
        probe.at,
      );
    }
    if (this.closed)
      throw new CoreError('unavailable', `begin a change: state store ${this.path}: closed (the daemon stops)`);
    const t = this.thread();
    const w = t.w;
    const path = this.path;
    const generation = this.generation + 1;
    this.workerTxn = true;
    w.ref(); // while a change is open there, its answer keeps the process alive
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      this.workerTxn = false;
      w.unref();
    };
    let bytes = 0; // what the change writes (its rows' values), said when a full disk refuses it
    const fail = (r: WorkerReply) => {
      const e = Object.assign(new Error(r.err!.message), { code: r.err!.code });
      return this.noteFailure(this.withLockHolder(e, storeError(e, path, r.err!.what)), {
        bytes,
        what: 'the last change',
      });
    };
    const begun = await this.ask(t, { op: 'begin', path, generation }, STORE_WRITE_TIMEOUT_MS);
    if (begun === TIMED_OUT) {
      void this.ask(t, { op: 'rollback' }); // a BEGIN that completes once the disk answers is rolled back there
      release();
      throw this.notAnsweringError('begin a change', 'the change is not made');
    }
    if (begun.err) {
      release();
      throw fail(begun);
    }
    let rows: WorkerRow[] = [];
    const flush = () => {
      if (rows.length === 0) return;
      w.postMessage({ op: 'rows', rows });
      rows = [];
    };
    const add = (r: WorkerRow) => {
      for (const v of r) bytes += typeof v === 'string' ? Buffer.byteLength(v) : 8;
      rows.push(r);
      if (rows.length >= WORKER_ROWS) flush();
    };
    let open = true;
    return {
      putRule: (r) => add(['r', ...ruleRow(r)]),
      deleteRule: (name) => add(['d', name]),
      putLink: (l) => add(['l', linkKey(l), l.a, l.b, l.direction]),
      deleteLink: (key) => add(['x', key]),
      clear: () => add(['c']),
      commit: async () => {
        if (!open) return;
        open = false;
        try {
          // Removed or replaced since BEGIN: acknowledged only once a disk holds it, so not at all.
          this.assertSameFile();
        } catch (e) {
          void this.ask(t, { op: 'rollback' });
          release();
          throw e;
        }
        flush();
        const r = await this.ask(t, { op: 'commit' }, STORE_WRITE_TIMEOUT_MS, (late) => {
          // The disk answered after the change was refused: committed after all, or not.
          if (late.err) fail(late);
          else this.lateCommits.push(generation);
        });
        release();
        if (r === TIMED_OUT) {
          throw this.notAnsweringError(
            'commit',
            'the change is not applied (what it wrote in the kernel is undone); its commit is still pending on ' +
              'the disk and may complete when the disk answers: if the daemon is still running then, it writes ' +
              'its desired state back over it in the store (logged); if the daemon stops before, the next start ' +
              'applies whatever the store then holds, this change included if its commit completed (logged)',
          );
        }
        if (r.err) throw fail(r);
        this.noteWritten();
        this.committed(generation);
      },
      rollback: async () => {
        if (!open) return;
        open = false;
        rows = [];
        await this.ask(t, { op: 'rollback' }, STORE_WRITE_TIMEOUT_MS); // never waits past the bound
        release();
      },
    };
  }

  /**
   * The store's rows, read on the worker thread, when another connection (another process: the sqlite3 CLI, a
   * script) has committed to the database since the last look (PRAGMA data_version of the thread's connection,
   * which that connection's own commits leave as it is: one cheap read per reconciler pass), or when `force`.
   * undefined when nothing changed since the thread's connection was opened (at the first write or look) or
   * last looked, while a change holds the thread or a request there has waited past the bound, and when it
   * does not answer within a second.
   */
  async readIfChanged(force = false): Promise<StoreRows | undefined> {
    if (this.closed || this.problem || this.workerTxn || this.fileChanged()) return undefined;
    // Nothing sent to the thread while the disk probe's write waits (a frozen disk): a read there may write its
    // read mark into state.db-shm and block in that page fault (docs/state-store.md).
    if ((this.disk?.waitingSince()?.ageMs ?? 0) >= 1000) return undefined;
    const t = this.thread();
    if (this.notAnswering() !== undefined) return undefined;
    const r = await this.ask(t, { op: 'read', path: this.path, force }, 1000);
    if (r === TIMED_OUT || r.err || !r.rows) return undefined;
    return r.rows;
  }

  /**
   * Generations of changes refused because their commit did not complete in time that the disk then
   * committed after all ({@link takeLateCommits}): the store holds a change the daemon did not accept.
   */
  private lateCommits: number[] = [];

  /** The generations committed after their change was refused (see {@link lateCommits}), once each. */
  takeLateCommits(): number[] {
    const g = this.lateCommits.splice(0);
    for (const x of g) if (x > this.generation) this.generation = x;
    return g;
  }

  /**
   * Make the stored state exactly `state`, in one transaction (a state directory removed under the running
   * daemon gets its desired state back at once). Throws a CoreError naming the path when the disk refuses.
   */
  async replaceAll(state: StoredState): Promise<void> {
    const txn = await this.beginTxn();
    try {
      txn.clear();
      for (const r of state.rules) txn.putRule(r);
      for (const l of state.links) txn.putLink(l);
      await txn.commit();
    } finally {
      await txn.rollback(); // a no-op after commit
    }
  }

  /** PRAGMA synchronous of the connection (2 = FULL). */
  synchronous(): number {
    return this.db.pragma('synchronous', { simple: true }) as number;
  }

  /**
   * The worker thread (started at the first write), and its answers' waiters, in order: `at` when the
   * request was sent, `late` told an answer that came after its waiter stopped waiting.
   */
  private worker?: {
    w: Worker;
    gone?: string;
    /** Settles when the thread has ended (its 'exit'). */
    exited: Promise<void>;
    /** `at`: when it was sent, by the wall clock (said); `mono`: by the monotonic clock (its age, core/clock.ts). */
    waiting: {
      answer: (r: WorkerReply) => void;
      /** What was asked (`begin`, `commit`, `read`, ...). */
      op?: string;
      at: number;
      mono: number;
      late?: (r: WorkerReply) => void;
      done: boolean;
    }[];
  };
  /** Closed ({@link close}): no write is sent anywhere any more. */
  private closed = false;
  /** A change runs on the worker thread (it holds the write lock): nothing else is sent there meanwhile. */
  private workerTxn = false;

  private thread(): NonNullable<StateStore['worker']> {
    if (this.worker && !this.worker.gone) return this.worker;
    const w = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { sqlite: createRequire(import.meta.url).resolve('better-sqlite3'), sql: SQL },
    });
    const t: NonNullable<StateStore['worker']> = {
      w,
      waiting: [],
      exited: new Promise((resolve) => w.once('exit', () => resolve())),
    };
    const answer = (r: WorkerReply) => {
      const e = t.waiting.shift();
      if (!e) return;
      if (e.done) e.late?.(r);
      else e.answer(r);
    };
    const gone = (why: string) => {
      t.gone ??= `the store's worker thread ${why}`;
      while (t.waiting.length) answer({ err: { code: '', message: t.gone, what: 'write' } });
    };
    w.on('message', answer);
    w.on('error', (e) => gone(`failed: ${e.message}`));
    w.on('exit', (code) => gone(`exited (${code})`));
    // After its listeners: adding a 'message' listener refs the thread again. What keeps the process alive
    // is an open change (begin) or a request awaited within its bound (ask), never the idle thread.
    w.unref();
    this.worker = t;
    return t;
  }

  /**
   * Send `msg` to the worker thread; its answer, or {@link TIMED_OUT} once `timeoutMs` has passed without
   * one (the request stays pending there: `late` is told its answer when it comes). The bound's timer keeps
   * the process alive until the promise settles: the worker thread does not (unref'd), so a request awaited
   * with nothing else left (a stop that waits for a reconciler pass's probe, its listeners closed) would
   * otherwise let the event loop run empty and Node exit 0 half-way through the stop (start-refused: pins
   * left by --cleanup-on-exit).
   */
  private ask(
    t: NonNullable<StateStore['worker']>,
    msg: object,
    timeoutMs?: number,
    late?: (r: WorkerReply) => void,
  ): Promise<WorkerReply | typeof TIMED_OUT> {
    if (t.gone) return Promise.resolve({ err: { code: '', message: t.gone, what: 'write' } });
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const entry = {
        at: Date.now(),
        mono: monotonicMs(),
        op: (msg as { op?: string }).op,
        late,
        done: false,
        answer: (r: WorkerReply) => {
          entry.done = true;
          if (timer) clearTimeout(timer);
          resolve(r);
        },
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          entry.done = true;
          resolve(TIMED_OUT);
        }, timeoutMs);
      }
      t.waiting.push(entry);
      t.w.postMessage(msg);
    });
  }

  /** The close under way ({@link close}). */
  private closing?: Promise<void>;

  /**
   * Close the database (idempotent; nothing is sent to the worker thread from the call on). The worker
   * thread's connection is closed first, after what was sent there before (answered in order), then the one
   * here: the last connection to close checkpoints the WAL into the database file and removes it, so a
   * stopped daemon leaves one self-contained state.db (before, with a request still pending there, a pass's
   * probe, the connection here was left open and the thread terminated: the process exited with the WAL
   * beside the file, and a state.db damaged by hand then opened from the WAL's pages, a corrupt store not
   * refused at the next start). Waits for the thread at most {@link STORE_WRITE_TIMEOUT_MS} (`boundMs` when less: a
   * stop's share of its bound on the state directory's writes), and not at all
   * while a write is pending past it: a disk that does not answer leaves both connections to the process's
   * exit (closing could checkpoint on that disk). `diskAnswers` false (a stop found another write to the state
   * directory not completed within its bound: a frozen disk): the daemon's own connection is left open too
   * (the last connection's close checkpoints the WAL, a write that would hold the event loop and the exit
   * until the disk answers); the WAL stays beside state.db and SQLite replays it at the next open.
   */
  close(opts: { diskAnswers?: boolean; boundMs?: number } = {}): Promise<void> {
    this.closed = true;
    this.closing ??= (async () => {
      const t = this.worker;
      // A write already pending past the bound: not waited for again.
      let answered = this.notAnswering() === undefined;
      this.worker = undefined;
      if (t && !t.gone && answered) {
        const bound = Math.min(opts.boundMs ?? STORE_WRITE_TIMEOUT_MS, STORE_WRITE_TIMEOUT_MS);
        answered = (await this.ask(t, { op: 'close' }, bound)) !== TIMED_OUT;
      }
      // A request still unanswered there holds the thread in SQLite (in a write, or a page fault on state.db-shm,
      // the disk has not completed): terminating it takes effect only once that returns.
      const left = t && !t.gone ? t.waiting[0] : undefined;
      if (t && left) this.held = { op: left.op ?? 'request', at: left.at, exited: t.exited };
      void t?.w.terminate();
      if (this.db?.open && answered && opts.diskAnswers !== false) this.db.close();
    })();
    return this.closing;
  }

  /** Set by {@link close}: the request its worker thread still held, and when that thread has ended. */
  private held?: { op: string; at: number; exited: Promise<void> };

  /**
   * After {@link close}: the request the worker thread was still held in (sent at `at`, wall clock), whose end
   * `exited` settles on. The kernel does not interrupt a write to a file system that does not complete it (a
   * frozen one), and a process does not exit before all its threads have: the daemon's exit waits for it.
   */
  heldAtClose(): { op: string; at: number; exited: Promise<void> } | undefined {
    return this.held;
  }
}

/** What {@link StateStore}'s ask resolves with when the worker thread did not answer in time. */
const TIMED_OUT = Symbol('timed out');

/** The statements that write a change (here and on the worker thread). */
const SQL = {
  // An update in place (upsert), not INSERT OR REPLACE: that deleted the row and inserted it under a new
  // rowid, so every changed rule rewrote two table pages and its index page into the WAL (3 frames to
  // fsync per UpdateRule instead of 1). The rows read are the same.
  putRule:
    'INSERT INTO rules (name, spec, generation, create_time, update_time, kernel) VALUES (?, ?, ?, ?, ?, ?) ' +
    'ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, generation = excluded.generation, ' +
    'create_time = excluded.create_time, update_time = excluded.update_time, kernel = excluded.kernel',
  deleteRule: 'DELETE FROM rules WHERE name = ?',
  putLink: 'INSERT OR REPLACE INTO links (key, a, b, direction) VALUES (?, ?, ?, ?)',
  deleteLink: 'DELETE FROM links WHERE key = ?',
  putMeta: 'INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)',
};

/** A rule's row: the values of SQL.putRule. */
function ruleRow(r: StoredRule): [string, string, number, number, number, string | null] {
  const { name, generation, createTime, updateTime, kernel, ...spec } = r;
  return [name, JSON.stringify(spec), generation, createTime, updateTime, kernel ? JSON.stringify(kernel) : null];
}

/**
 * A write sent to the worker thread: r(ule), d(elete rule), l(ink), x (delete link), then SQL.*'s values;
 * c: clear both tables.
 */
type WorkerRow =
  ['r', ...ReturnType<typeof ruleRow>] | ['d', string] | ['l', string, string, string, string] | ['x', string] | ['c'];
/** The worker's answer to a begin, commit, rollback or probe: the first failure of the change, if any. */
interface WorkerReply {
  err?: { code: string; message: string; what: string };
  /** A read's rows (absent: nothing changed since the last look). */
  rows?: StoreRows;
}

/**
 * The worker thread that writes the store (CommonJS, evaluated): one connection, opened at the first
 * request and opened again whenever the file at the path is another one (st_dev:st_ino: a database
 * replaced under the daemon is never written through an old connection). It answers each begin, commit,
 * rollback, probe and read, in order.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { statSync, statfsSync } = require('node:fs');
const { dirname } = require('node:path');
const Database = require(workerData.sqlite);
const SQL = workerData.sql;
let db, dbPath, ident, st, err, seen;
const fail = (e, what) => ({ code: String((e && e.code) || ''), message: String((e && e.message) || e), what });
const idOf = (p) => { try { const s = statSync(p); return s.dev + ':' + s.ino; } catch { return undefined; } };
const end = () => { try { if (db && db.inTransaction) db.exec('ROLLBACK'); } catch {} };
const connect = (path) => {
  const now = idOf(path);
  if (db && db.open && now === ident) return;
  try { if (db) db.close(); } catch {}
  db = undefined;
  const c = new Database(path, { fileMustExist: true, timeout: 100 }); // BUSY_TIMEOUT_MS: this runs as source on the worker thread
  c.pragma('synchronous = FULL');
  st = { r: c.prepare(SQL.putRule), d: c.prepare(SQL.deleteRule), l: c.prepare(SQL.putLink), x: c.prepare(SQL.deleteLink), m: c.prepare(SQL.putMeta) };
  db = c;
  dbPath = path;
  ident = now;
  seen = c.pragma('data_version', { simple: true }); // what other connections commit from here on is seen
};
// After a commit, the WAL is checkpointed into the database and truncated once it is as large as the space its disk
// has left: else it grows (SQLite checkpoints at 1 000 pages, and a WAL file keeps its size) until it holds the disk,
// with every change in it and none in the database file, and no checkpoint can run then (the database file cannot grow):
// a 4 MB state disk was full after three 3000-rule changes, for good. So a disk needs room for the data and one change.
const trimWal = () => {
  try {
    const wal = statSync(dbPath + '-wal').size;
    const f = statfsSync(dirname(dbPath));
    if (wal > 0 && wal >= f.bavail * f.bsize) db.pragma('wal_checkpoint(TRUNCATE)');
  } catch {}
};
const WHAT = { r: 'write a rule', d: 'delete a rule', l: 'write a link', x: 'delete a link', c: 'clear the tables' };
parentPort.on('message', (m) => {
  if (m.op === 'begin') {
    end();
    err = undefined;
    try {
      connect(m.path);
      db.exec('BEGIN IMMEDIATE');
      st.m.run('generation', String(m.generation));
    } catch (e) {
      end();
      err = fail(e, 'begin a change');
    }
    const r = err;
    if (r) err = undefined;
    parentPort.postMessage({ err: r });
  } else if (m.op === 'rows') {
    if (err || !db || !db.inTransaction) return;
    for (const [k, ...v] of m.rows) {
      try {
        if (k === 'c') db.exec('DELETE FROM rules; DELETE FROM links');
        else st[k].run(...v);
      } catch (e) {
        err = fail(e, WHAT[k]);
        return;
      }
    }
  } else if (m.op === 'commit') {
    if (!err && !(db && db.inTransaction)) err = fail(new Error('no change is open'), 'commit');
    if (!err) {
      try {
        db.exec('COMMIT');
      } catch (e) {
        err = fail(e, 'commit');
      }
    }
    const r = err;
    err = undefined;
    end();
    if (!r) trimWal();
    parentPort.postMessage({ err: r });
  } else if (m.op === 'rollback') {
    end();
    err = undefined;
    parentPort.postMessage({});
  } else if (m.op === 'probe') {
    // Never waits for another process's write lock (busy timeout 0): a held one is observed and said.
    let r;
    try {
      connect(m.path);
      db.pragma('busy_timeout = 0');
      try {
        db.exec('BEGIN IMMEDIATE');
        if (m.write) {
          // pad: the size of a write a full disk refused; as many bytes are written (then overwritten by a small
          // value and the WAL truncated), so that only a disk with room for that write is said to take it.
          st.m.run('write_probe', m.pad ? 'x'.repeat(m.pad) : String(Date.now()));
          db.exec('COMMIT');
          if (m.pad) {
            db.exec('BEGIN IMMEDIATE');
            st.m.run('write_probe', String(Date.now()));
            db.exec('COMMIT');
            db.pragma('wal_checkpoint(TRUNCATE)');
          }
        }
      } finally {
        end();
        db.pragma('busy_timeout = 100');
      }
    } catch (e) {
      const f = fail(e, m.write ? 'write' : 'take the write lock');
      if (m.write || f.code.startsWith('SQLITE_BUSY')) r = f;
    }
    parentPort.postMessage({ err: r });
  } else if (m.op === 'close') {
    end();
    try { if (db) db.close(); } catch {}
    db = undefined;
    ident = undefined;
    parentPort.postMessage({});
  } else if (m.op === 'read') {
    try {
      connect(m.path);
      const v = db.pragma('data_version', { simple: true });
      const was = seen;
      seen = v;
      if (!m.force && v === was) return parentPort.postMessage({});
      const rules = db.prepare('SELECT name, spec, generation, create_time, update_time, kernel FROM rules').all();
      const links = db.prepare('SELECT key, a, b, direction FROM links').all();
      parentPort.postMessage({ rows: { rules, links } });
    } catch (e) {
      parentPort.postMessage({ err: fail(e, 'read') });
    }
  }
});
`;

/** Read a state.json of earlier versions (to import it); a corrupt one stops the start, untouched. */
export function readLegacyJson(path: string): StoredState {
  let state: StoredState;
  try {
    state = JSON.parse(readFileSync(path, 'utf8')) as StoredState;
  } catch (e) {
    throw new CoreError(
      'precondition',
      `state file ${path} is corrupt (${(e as Error).message}); it was left as it is: fix or move it aside to start empty`,
    );
  }
  if (typeof state !== 'object' || state === null || !Number.isInteger(state.version)) {
    throw new CoreError('precondition', `state file ${path} has no version: not an xdpctl state file`);
  }
  if (state.version > STATE_VERSION) {
    throw new CoreError(
      'precondition',
      `state file ${path} is version ${state.version}, newer than this xdpctld (${STATE_VERSION}): ` +
        'run the newer xdpctld, or move the file aside',
    );
  }
  if (!Array.isArray(state.rules) || !Array.isArray(state.links)) {
    throw new CoreError('precondition', `state file ${path} is corrupt (rules or links missing)`);
  }
  return state;
}
