/**
 * Reading a file the operator names (the --config file, --auth-config, the TLS files) without ever waiting
 * on what is not a file. open() of a FIFO for reading waits for a writer (a libuv worker, or the main thread
 * for a synchronous read, blocked in the kernel for good: wchan wait_for_partner; the process cannot even
 * exit, libuv joins its workers), and a read of /dev/zero or /dev/urandom never ends. So the path is stat'ed
 * first (through its symlinks: a symlink to a regular file is fine) and anything but a regular file is
 * refused without opening it (through a symbolic link, what the link leads to is said: "X is a symbolic link
 * to /srv/x, which is a directory", and a link whose target is missing or that loops is a
 * {@link BrokenSymlink} saying so, where the stat's own error named only the path); the open itself has
 * O_NONBLOCK and O_NOCTTY (should the path be swapped for a
 * FIFO or a terminal between the stat and the open, neither waits), the descriptor is fstat'ed again, and at
 * most `maxBytes` are read (a file growing without end, or a procfs file whose size says 0, is cut there and
 * refused).
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readlinkSync,
  readSync,
  realpathSync,
  statSync,
  type BigIntStats,
  type Stats,
} from 'node:fs';
import { lstat, open, readlink, realpath, stat, type FileHandle } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';

/** At most this many bytes of a --config file are read (64 MiB): more is refused, unread. */
export const MAX_CONFIG_BYTES = 64 << 20;
/** At most this many bytes of --auth-config and of each TLS file (1 MiB). */
export const MAX_SMALL_FILE_BYTES = 1 << 20;

const OPEN_FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

/** A path that names something other than a regular file, or a file larger than allowed: refused unread. */
export class NotARegularFile extends Error {
  constructor(
    readonly path: string,
    /** What it is, in words ("a FIFO (named pipe)", "a character device (1:5)", ...). */
    readonly kind: string,
    message: string,
  ) {
    super(message);
    this.name = 'NotARegularFile';
  }
}

/** What a stat says the path is, in words; undefined for a regular file. */
export function nonRegularKind(st: Stats | BigIntStats): string | undefined {
  if (st.isFile()) return undefined;
  const dev = () => {
    const rdev = BigInt(st.rdev);
    // glibc's gnu_dev_major/minor
    const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
    const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
    return `${major}:${minor}`;
  };
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isDirectory()) return 'a directory';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return `a character device (${dev()})`;
  if (st.isBlockDevice()) return `a block device (${dev()})`;
  return 'not a regular file';
}

/**
 * A path that is a symbolic link whose target cannot be reached: it does not exist (ENOENT), the links loop or
 * are too many to follow (ELOOP), or a component on the way is no directory (ENOTDIR). `code` is the errno code
 * the stat gave; the message says what the link and the links after it lead to, e.g. "/etc/x.yaml is a symbolic
 * link to /srv/x.yaml, which does not exist".
 */
export class BrokenSymlink extends Error {
  constructor(
    readonly path: string,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'BrokenSymlink';
  }
}

/** One filesystem question of {@link linkChain}, answered by a synchronous or an asynchronous driver. */
type FsAsk = { op: 'lstat' | 'readlink' | 'realpath'; path: string };
type FsAnswer = { ok: Stats | string } | { err: NodeJS.ErrnoException };

/** The kernel's limit on the symbolic links one lookup follows (MAXSYMLINKS, path_resolution(7)). */
const MAX_LINKS = 40;

/**
 * What `path` leads to when it is a symbolic link, as words after the path: "is a symbolic link to T, which
 * does not exist" ("..., which is a symbolic link to T2, which is a directory", "...: a loop of symbolic links
 * (ELOOP)"), each target as it is written in its link, followed by the path it names when that differs
 * (relative targets are resolved against the link's directory as the kernel does: its real path). Undefined
 * when `path` is no symbolic link or what its chain ends at is a regular file (the stat that failed raced
 * with a change: its own error says it). A generator of lstat/readlink/realpath questions, so that the
 * synchronous reads and the asynchronous ones ask the same.
 */
function* linkChain(path: string): Generator<FsAsk, string | undefined, FsAnswer> {
  const hops: string[] = [];
  const seen = new Set<string>();
  let p = resolve(path);
  let end: string;
  for (;;) {
    const st = yield { op: 'lstat', path: p };
    if ('err' in st) {
      if (hops.length === 0) return undefined;
      end = st.err.code === 'ENOENT' ? ', which does not exist' : `, which cannot be reached (${st.err.code})`;
      break;
    }
    const s = st.ok as Stats;
    if (!s.isSymbolicLink()) {
      const kind = nonRegularKind(s);
      if (hops.length === 0 || kind === undefined) return undefined;
      end = `, which is ${kind}`;
      break;
    }
    if (hops.length === MAX_LINKS) {
      end = `: more than ${MAX_LINKS} symbolic links to follow (ELOOP)`;
      break;
    }
    const t = yield { op: 'readlink', path: p };
    if ('err' in t) return undefined;
    const target = t.ok as string;
    const dir = yield { op: 'realpath', path: dirname(p) };
    const next = resolve('err' in dir ? dirname(p) : (dir.ok as string), target);
    hops.push(next === target ? target : `${target} (${next})`);
    seen.add(p);
    if (seen.has(next)) {
      end = `: a loop of symbolic links (ELOOP)`;
      break;
    }
    p = next;
  }
  // At most four targets said: a long chain keeps its first two and its last.
  const said = hops.length > 4 ? [...hops.slice(0, 2), `... (${hops.length - 3} more)`, hops.at(-1)!] : hops;
  return `is a symbolic link to ${said.join(', which is a symbolic link to ')}${end}`;
}

function linkChainSync(path: string): string | undefined {
  const g = linkChain(path);
  for (let r = g.next(undefined as unknown as FsAnswer); ;) {
    if (r.done) return r.value;
    const { op, path: p } = r.value;
    let a: FsAnswer;
    try {
      a = { ok: op === 'lstat' ? lstatSync(p) : op === 'readlink' ? readlinkSync(p) : realpathSync(p) };
    } catch (e) {
      a = { err: e as NodeJS.ErrnoException };
    }
    r = g.next(a);
  }
}

async function linkChainAsync(path: string): Promise<string | undefined> {
  const g = linkChain(path);
  for (let r = g.next(undefined as unknown as FsAnswer); ;) {
    if (r.done) return r.value;
    const { op, path: p } = r.value;
    let a: FsAnswer;
    try {
      a = { ok: op === 'lstat' ? await lstat(p) : op === 'readlink' ? await readlink(p) : await realpath(p) };
    } catch (e) {
      a = { err: e as NodeJS.ErrnoException };
    }
    r = g.next(a);
  }
}

/** Codes of a stat through a symbolic link whose target cannot be reached. */
const UNREACHABLE = new Set(['ENOENT', 'ELOOP', 'ENOTDIR']);

/** The error of a stat of `path` that failed: a {@link BrokenSymlink} when `path` is a link that leads nowhere. */
function statError(path: string, e: unknown, chain: string | undefined): unknown {
  const code = (e as NodeJS.ErrnoException | null)?.code;
  if (!code || !UNREACHABLE.has(code) || chain === undefined) return e;
  return new BrokenSymlink(path, code, `${path} ${chain}`);
}

const unreachable = (e: unknown) => UNREACHABLE.has((e as NodeJS.ErrnoException | null)?.code ?? '');

function refusal(path: string, kind: string, opened: boolean, chain?: string): NotARegularFile {
  const why = kind.startsWith('a FIFO')
    ? ': opening it would wait for a writer'
    : kind.startsWith('a character device') || kind.startsWith('a block device')
      ? ': a read of a device may never end'
      : '';
  // Through a symbolic link: the path is the link, what it leads to is said (chain ends ", which is KIND").
  return new NotARegularFile(
    path,
    kind,
    `${path} ${chain ?? `is ${kind}`}, not a regular file${why}; refused${opened ? '' : ' without opening it'}`,
  );
}

function tooLarge(path: string, size: bigint | number, max: number, read: boolean): NotARegularFile {
  return new NotARegularFile(
    path,
    'too large',
    read
      ? `${path} holds more than ${max} bytes (read up to that: its size said ${size}); refused`
      : `${path} is ${size} bytes, more than the ${max} bytes read at most; refused without reading it`,
  );
}

/**
 * Open `path` for reading if it is a regular file (stat'ed first, through its symlinks; fstat'ed again once
 * open), never waiting for a writer or a device. Throws {@link NotARegularFile} for anything else or a file
 * of more than `maxBytes` bytes, and the errno error of stat or open otherwise (ENOENT, EACCES, ...).
 */
export async function openRegular(path: string, maxBytes: number): Promise<FileHandle> {
  let st: BigIntStats;
  try {
    st = await stat(path, { bigint: true });
  } catch (e) {
    throw statError(path, e, unreachable(e) ? await linkChainAsync(path) : undefined);
  }
  const kind = nonRegularKind(st);
  if (kind) throw refusal(path, kind, false, await linkChainAsync(path));
  if (st.size > BigInt(maxBytes)) throw tooLarge(path, st.size, maxBytes, false);
  const fh = await open(path, OPEN_FLAGS);
  try {
    const now = await fh.stat({ bigint: true });
    const k = nonRegularKind(now);
    if (k) throw refusal(path, k, true);
    if (now.size > BigInt(maxBytes)) throw tooLarge(path, now.size, maxBytes, false);
    return fh;
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** The whole text of an open regular file, read from its start, at most `maxBytes` ({@link NotARegularFile} beyond). */
export async function readBounded(fh: FileHandle, path: string, maxBytes: number): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const buf = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes + 1 - total));
    const { bytesRead } = await fh.read(buf, 0, buf.length, total);
    if (bytesRead === 0) break;
    chunks.push(buf.subarray(0, bytesRead));
    total += bytesRead;
    if (total > maxBytes) throw tooLarge(path, (await fh.stat()).size, maxBytes, true);
  }
  return Buffer.concat(chunks, total).toString('utf8');
}

/** The same, synchronously (files read at start and on SIGHUP on the main thread: --auth-config, TLS). */
export function readRegularFileSync(path: string, maxBytes = MAX_SMALL_FILE_BYTES): Buffer {
  let st: Stats;
  try {
    st = statSync(path);
  } catch (e) {
    throw statError(path, e, unreachable(e) ? linkChainSync(path) : undefined);
  }
  const kind = nonRegularKind(st);
  if (kind) throw refusal(path, kind, false, linkChainSync(path));
  if (st.size > maxBytes) throw tooLarge(path, st.size, maxBytes, false);
  const fd = openSync(path, OPEN_FLAGS);
  try {
    const now = fstatSync(fd);
    const k = nonRegularKind(now);
    if (k) throw refusal(path, k, true);
    const chunks: Buffer[] = [];
    let total = 0;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.min(1 << 20, maxBytes + 1 - total));
      const n = readSync(fd, buf, 0, buf.length, total);
      if (n === 0) break;
      chunks.push(buf.subarray(0, n));
      total += n;
      if (total > maxBytes) throw tooLarge(path, fstatSync(fd).size, maxBytes, true);
    }
    return Buffer.concat(chunks, total);
  } finally {
    closeSync(fd);
  }
}
