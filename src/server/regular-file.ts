/**
 * Reading a file the operator names (the --config file, --auth-config, the TLS files) without ever waiting
 * on what is not a file. open() of a FIFO for reading waits for a writer (a libuv worker, or the main thread
 * for a synchronous read, blocked in the kernel for good: wchan wait_for_partner; the process cannot even
 * exit, libuv joins its workers), and a read of /dev/zero or /dev/urandom never ends. So the path is stat'ed
 * first (through its symlinks: a symlink to a regular file is fine) and anything but a regular file is
 * refused without opening it; the open itself has O_NONBLOCK and O_NOCTTY (should the path be swapped for a
 * FIFO or a terminal between the stat and the open, neither waits), the descriptor is fstat'ed again, and at
 * most `maxBytes` are read (a file growing without end, or a procfs file whose size says 0, is cut there and
 * refused).
 */
import { closeSync, constants, fstatSync, openSync, readSync, statSync, type BigIntStats, type Stats } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';

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

function refusal(path: string, kind: string, opened: boolean): NotARegularFile {
  const why = kind.startsWith('a FIFO')
    ? ': opening it would wait for a writer'
    : kind.startsWith('a character device') || kind.startsWith('a block device')
      ? ': a read of a device may never end'
      : '';
  return new NotARegularFile(
    path,
    kind,
    `${path} is ${kind}, not a regular file${why}; refused${opened ? '' : ' without opening it'}`,
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
  const st = await stat(path, { bigint: true });
  const kind = nonRegularKind(st);
  if (kind) throw refusal(path, kind, false);
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
  const st = statSync(path);
  const kind = nonRegularKind(st);
  if (kind) throw refusal(path, kind, false);
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
