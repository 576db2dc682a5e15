/**
 * Whether any process holds a file open for writing: what config-file mode asks before it applies a text
 * (../config-watcher.ts), so that a file still being written (opened, partly written, not closed yet) is never
 * applied, whatever the writer's pace.
 *
 * The kernel answers, for every process on the host whatever its PID namespace: a read lease
 * (fcntl F_SETLEASE F_RDLCK) is refused with EAGAIN while the inode is open for writing anywhere (its
 * i_writecount: write descriptors and shared writable mappings), and granted otherwise. The lease is
 * released by the next call, microseconds later; its break signal, should a writer open the file in
 * between, is SIGURG (F_SETSIG), which Node leaves at its default (ignored), and that writer's open waits
 * those microseconds. Taking a lease needs the file's owner or CAP_LEASE, a filesystem that has leases (not
 * NFS or FUSE, for instance) and fs.leases-enable; without one, /proc is read instead: each process's
 * descriptors on the same device and inode, opened O_WRONLY or O_RDWR (fdinfo flags). /proc shows only the
 * processes in this daemon's PID namespace whose descriptors it may read: the answer says what it could not
 * see. Who holds the file is read from /proc either way (pid and command), when visible.
 */
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const fcntl = libc.func('int fcntl(int fd, int cmd, ...)');

const F_SETSIG = 10;
const F_SETLEASE = 1024;
const F_RDLCK = 0;
const F_UNLCK = 2;
const SIGURG = 23;
const EAGAIN = 11;
const errnoNames: Record<number, string> = { 1: 'EPERM', 11: 'EAGAIN', 13: 'EACCES', 22: 'EINVAL', 38: 'ENOSYS' };

/** A process seen holding the file open for writing. */
export interface Writer {
  pid: number;
  command: string;
}

export interface WritersSeen {
  /** Some process holds the file open for writing (true), none does (false), or this cannot be told (undefined). */
  open: boolean | undefined;
  /** The processes seen holding it (from /proc; may be empty while `open`: a process this daemon cannot see). */
  writers: Writer[];
  /** How it was told: 'lease' (the kernel, every process) or '/proc' (only the processes visible here). */
  how: 'lease' | '/proc' | 'none';
  /** What limited the answer, in words ('' when nothing did). */
  limits: string;
}

/**
 * The kernel's answer through a read lease on `fh` (opened read-only): 'open', 'none', or why it could not
 * be asked (an errno name).
 */
export function leaseProbe(fh: FileHandle): 'open' | 'none' | string {
  fcntl(fh.fd, F_SETSIG, 'int', SIGURG);
  if (fcntl(fh.fd, F_SETLEASE, 'int', F_RDLCK) === 0) {
    fcntl(fh.fd, F_SETLEASE, 'int', F_UNLCK);
    return 'none';
  }
  const errno = koffi.errno();
  if (errno === EAGAIN) return 'open';
  return errnoNames[errno] ?? `errno ${errno}`;
}

/**
 * The processes visible in /proc that hold the inode (`dev`, `ino`) open for writing, and how many processes'
 * descriptors could not be read.
 */
export async function procWriters(dev: bigint, ino: bigint): Promise<{ writers: Writer[]; unreadable: number }> {
  const writers: Writer[] = [];
  let unreadable = 0;
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p));
  } catch {
    return { writers, unreadable: -1 };
  }
  const self = String(process.pid);
  await Promise.all(
    pids.map(async (pid) => {
      if (pid === self) return;
      let fds: string[];
      try {
        fds = await readdir(`/proc/${pid}/fd`);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') unreadable++;
        return;
      }
      let writes = false;
      for (const fd of fds) {
        try {
          // Only file descriptors naming a path can be the file (sockets, pipes and anon inodes cannot).
          if (!(await readlink(`/proc/${pid}/fd/${fd}`)).startsWith('/')) continue;
          const st = await stat(`/proc/${pid}/fd/${fd}`, { bigint: true });
          if (st.dev !== dev || st.ino !== ino) continue;
          const info = await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
          const flags = /^flags:\s*([0-7]+)/m.exec(info);
          if (flags && (parseInt(flags[1], 8) & 3) !== 0) writes = true;
        } catch {
          // closed meanwhile
        }
        if (writes) break;
      }
      if (!writes) return;
      let command = '?';
      try {
        command = (await readFile(`/proc/${pid}/comm`, 'utf8')).trim();
      } catch {
        // exited meanwhile
      }
      writers.push({ pid: Number(pid), command });
    }),
  );
  writers.sort((a, b) => a.pid - b.pid);
  return { writers, unreadable };
}

/**
 * Whether a process holds the file behind `fh` open for writing, who, and how it was told: the kernel first
 * (a lease), /proc when it refuses the lease (`leaseError` says why). `name`: read /proc for who, when the
 * kernel says one does.
 */
export async function writersOf(fh: FileHandle, name = true): Promise<WritersSeen & { leaseError?: string }> {
  const st = await fh.stat({ bigint: true });
  if (!st.isFile()) return { open: undefined, writers: [], how: 'none', limits: 'not a regular file' };
  const kernel = leaseProbe(fh);
  if (kernel === 'none') return { open: false, writers: [], how: 'lease', limits: '' };
  if (kernel === 'open') {
    if (!name) return { open: true, writers: [], how: 'lease', limits: '' };
    const { writers } = await procWriters(st.dev, st.ino);
    return {
      open: true,
      writers,
      how: 'lease',
      limits: writers.length
        ? ''
        : 'no process visible here has a descriptor to it: one in another PID namespace, or a writable shared mapping',
    };
  }
  const leaseError = kernel;
  const { writers, unreadable } = await procWriters(st.dev, st.ino);
  if (unreadable < 0) return { open: undefined, writers, how: 'none', limits: '/proc is not readable', leaseError };
  return {
    open: writers.length > 0,
    writers,
    how: '/proc',
    limits:
      (unreadable ? `the descriptors of ${unreadable} process(es) could not be read; ` : '') +
      'processes in other PID namespaces and writable shared mappings are not seen',
    leaseError,
  };
}
