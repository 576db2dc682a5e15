/**
 * One daemon per datapath: exclusive flock(2) locks on what a daemon owns —
 * its bpffs pin root (the directory itself: bpffs holds no regular files),
 * its state directory and each Unix socket path (a lock file beside each).
 * The kernel drops a lock when its holder exits, however it exits, so a lock
 * is never stale. A daemon that cannot take one refuses to start and names
 * the holder: its pid and command line from /proc/locks and /proc (what the
 * kernel says), and the start time and addresses it wrote into the lock file.
 *
 * Also the pin root's own checks (pins that only xdpctld controls): created
 * 0700, on bpffs, owned by us, writable by nobody else.
 *
 * libc's flock through koffi (Node has no flock); this module touches no map.
 */
import {
  type Dirent,
  accessSync,
  closeSync,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmdirSync,
  statfsSync,
  statSync,
  unlinkSync,
  writeSync,
  ftruncateSync,
  constants as fsc,
} from 'node:fs';
import { connect } from 'node:net';
import { dirname, join, resolve } from 'node:path';

import koffi from 'koffi';

/**
 * mkdir -p `path` with `mode`, recording in `created` (outermost first) each directory this call made,
 * so that a start that is refused afterwards can remove exactly those (see {@link removeCreatedDirs}).
 */
export function makeDirs(path: string, mode: number, created?: string[]): void {
  const first = mkdirSync(path, { recursive: true, mode });
  if (first === undefined || !created) return;
  const made: string[] = [];
  for (let d = path; ; d = dirname(d)) {
    made.unshift(d);
    if (d === first || d === dirname(d)) break;
  }
  created.push(...made);
}

/**
 * Remove the directories a refused start made (as {@link makeDirs} recorded them), innermost first, each
 * only if it is empty: what others put there since stays, and so does every directory above it.
 */
export function removeCreatedDirs(created: string[]): void {
  for (const d of [...created].reverse()) {
    try {
      rmdirSync(d);
    } catch {
      // removed already, or not empty: left as it is
    }
  }
  created.length = 0;
}

const libc = koffi.load('libc.so.6');
const flockFn = libc.func('int flock(int fd, int op)');

const LOCK_EX = 2;
const LOCK_NB = 4;
const EWOULDBLOCK = 11;
const EINTR = 4;

/** statfs f_type of bpffs (include/uapi/linux/magic.h BPF_FS_MAGIC). */
export const BPF_FS_MAGIC = 0xcafe4a11;

/** What a lock holder wrote about itself into a lock file (JSON, one line). */
export interface HolderInfo {
  pid: number;
  /** ISO 8601 start time of the holder. */
  startedAt: string;
  pinRoot?: string;
  stateDir?: string;
  listen?: string[];
}

/** A lock that another process holds; `message` names that process. */
export class LockHeldError extends Error {
  override readonly name = 'LockHeldError';
  constructor(
    readonly what: string,
    readonly path: string,
    readonly holder: { pid?: number; command?: string; info?: HolderInfo },
  ) {
    const who = [
      holder.pid !== undefined ? `pid ${holder.pid}` : undefined,
      holder.command ? `"${holder.command}"` : undefined,
      holder.info?.startedAt ? `started ${holder.info.startedAt}` : undefined,
      holder.info?.listen?.length ? `listening on ${holder.info.listen.join(', ')}` : undefined,
    ].filter(Boolean);
    super(
      `${what} ${path} is in use by another xdpctld (${who.length ? who.join(', ') : 'holder unknown'}); ` +
        'one daemon per datapath: stop that one, or give this one its own --pin-root, --state-dir and --listen',
    );
  }
}

/** A held lock; release() is idempotent. */
export interface HeldLock {
  readonly path: string;
  release(): void;
}

/**
 * Kernel view: every FLOCK in /proc/locks, in its order, as ["major:minor:ino", pid] ("1: FLOCK  ADVISORY  WRITE
 * 10919 00:28:227839 0 EOF": major:minor in hex there, decimal here; the pid as written). Empty when unreadable.
 */
function allFlocks(): [string, number][] {
  let text: string;
  try {
    text = readFileSync('/proc/locks', 'utf8');
  } catch {
    return [];
  }
  const out: [string, number][] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK' || f.length < 6) continue;
    const [ma, mi, ino] = f[5].split(':');
    out.push([`${parseInt(ma, 16)}:${parseInt(mi, 16)}:${Number(ino)}`, Number(f[4])]);
  }
  return out;
}

/** Kernel view: the pid holding a FLOCK on (dev, ino), from /proc/locks (the first listed). */
function flockHolderPid(dev: number, ino: number): number | undefined {
  const key = `${devPair(dev)}:${ino}`;
  const pid = allFlocks().find(([k]) => k === key)?.[1];
  return pid !== undefined && Number.isInteger(pid) && pid > 0 ? pid : undefined;
}

function commandOf(pid: number): string | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
    const s = argv.join(' ');
    return s.length > 200 ? `${s.slice(0, 200)}…` : s;
  } catch {
    return undefined;
  }
}

function tryFlock(fd: number): boolean {
  for (;;) {
    if (flockFn(fd, LOCK_EX | LOCK_NB) === 0) return true;
    const errno = koffi.errno();
    if (errno === EINTR) continue;
    if (errno === EWOULDBLOCK) return false;
    throw new Error(`flock fd ${fd}: errno ${errno}`);
  }
}

function holderOf(path: string, fd: number, what: string, readInfo: boolean, shown = path): LockHeldError {
  const st = fstatSync(fd);
  const pid = flockHolderPid(st.dev, st.ino);
  let info: HolderInfo | undefined;
  if (readInfo) {
    try {
      info = JSON.parse(readFileSync(path, 'utf8')) as HolderInfo;
    } catch {
      info = undefined; // written a moment later, or not by xdpctld
    }
  }
  return new LockHeldError(what, shown, { pid: pid ?? info?.pid, command: pid ? commandOf(pid) : undefined, info });
}

/**
 * Kernel view: a live process (not this one) that holds a flock on a file that was at `path` and has been
 * removed since (`rm -rf STATE_DIR` under a running daemon). A flock survives the removal of its file, so a
 * new file at the path can be locked by anyone: the lock is then held on an inode that no path names. The
 * holder's descriptor still names it (readlink /proc/PID/fd/N says "PATH (deleted)"); its pid comes from
 * /proc/locks, and what it wrote into the file is read through that descriptor.
 */
function removedFileHolder(path: string): { pid: number; fd: string } | undefined {
  const locked = new Map<number, Set<string>>(); // pid -> "major:minor:ino" of the FLOCKs it created
  for (const [key, pid] of otherFlocksAll()) {
    if (!locked.has(pid)) locked.set(pid, new Set());
    locked.get(pid)!.add(key);
  }
  const want = `${path} (deleted)`;
  for (const [pid, inodes] of locked) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) !== want) continue;
        const st = statSync(`/proc/${pid}/fd/${fd}`);
        if (inodes.has(`${devPair(st.dev)}:${st.ino}`)) return { pid, fd: `/proc/${pid}/fd/${fd}` };
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

/** The LockHeldError for a lock that `holder` keeps on the removed file that was at `path`. */
function removedHolderError(path: string, what: string, shown: string, holder: { pid: number; fd: string }) {
  let info: HolderInfo | undefined;
  try {
    info = JSON.parse(readFileSync(holder.fd, 'utf8')) as HolderInfo;
  } catch {
    info = undefined;
  }
  return new LockHeldError(what, shown, { pid: holder.pid, command: commandOf(holder.pid), info });
}

/** Whether the open file `fd` is still the one at `path`: the same inode on the same device, not removed. */
function stillAt(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = lstatSync(path);
    return a.ino === b.ino && a.dev === b.dev && a.nlink > 0;
  } catch {
    return false; // removed
  }
}

/** major:minor of a stat dev number, as /proc/locks writes it (in hex there). */
function devPair(dev: number | bigint): string {
  const d = BigInt(dev);
  const major = Number((d >> 8n) & 0xfffn) | Number((d >> 32n) & ~0xfffn);
  const minor = Number(d & 0xffn) | Number((d >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

/** Kernel view: every FLOCK of another process, "major:minor:ino" -> pid (the last listed), from /proc/locks. */
function otherFlocks(): Map<string, number> {
  return new Map(otherFlocksAll());
}

/** A live xdpctld that holds some of the given BPF objects open (see {@link liveDatapathOwners}). */
export interface DatapathOwner {
  pid: number;
  command?: string;
  /** The bpffs directories it holds a flock on (its pin root, and any it kept after a rename), as named now. */
  pinRoots: string[];
  /** Which of the asked map and program ids it holds open. */
  maps: number[];
  progs: number[];
}

/**
 * Kernel view: the other live xdpctld processes that use any of these maps or programs (by kernel id,
 * whatever path they are pinned at, or none). An xdpctld is known by what the kernel shows of it: it
 * holds a flock on a directory on bpffs (its pin root: /proc/locks and its descriptors) and descriptors of
 * BPF maps and programs (anon_inode:bpf-map / bpf-prog / bpf-link, whose /proc/PID/fdinfo gives map_id and
 * prog_id). Only processes holding a flock are looked at; a tool that merely opened a map (bpftool) is not
 * an owner. An exited daemon holds nothing: its datapath, attached and pinned, has no live owner.
 */
export function liveDatapathOwners(maps: ReadonlySet<number>, progs: ReadonlySet<number>): DatapathOwner[] {
  if (maps.size === 0 && progs.size === 0) return [];
  const byPid = new Map<number, Set<string>>();
  for (const [key, pid] of otherFlocksAll()) {
    if (!byPid.has(pid)) byPid.set(pid, new Set());
    byPid.get(pid)!.add(key);
  }
  const out: DatapathOwner[] = [];
  for (const [pid, locked] of byPid) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    const owner: DatapathOwner = { pid, pinRoots: [], maps: [], progs: [] };
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue; // closed meanwhile
      }
      if (target.startsWith('anon_inode:bpf-')) {
        let info: string;
        try {
          info = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
        } catch {
          continue;
        }
        const map = /^map_id:\s*(\d+)/m.exec(info);
        if (map && maps.has(Number(map[1])) && !owner.maps.includes(Number(map[1]))) owner.maps.push(Number(map[1]));
        const prog = /^prog_id:\s*(\d+)/m.exec(info);
        if (prog && progs.has(Number(prog[1])) && !owner.progs.includes(Number(prog[1])))
          owner.progs.push(Number(prog[1]));
      } else if (target.startsWith('/')) {
        try {
          const st = statSync(`/proc/${pid}/fd/${fd}`);
          if (st.isDirectory() && locked.has(`${devPair(st.dev)}:${st.ino}`) && isBpffs(`/proc/${pid}/fd/${fd}`)) {
            owner.pinRoots.push(target.replace(/ \(deleted\)$/, ''));
          }
        } catch {
          // closed meanwhile
        }
      }
    }
    if (owner.pinRoots.length && (owner.maps.length || owner.progs.length)) {
      owner.command = commandOf(pid);
      owner.maps.sort((a, b) => a - b);
      owner.progs.sort((a, b) => a - b);
      out.push(owner);
    }
  }
  return out;
}

/** Kernel view: every FLOCK of another process as ["major:minor:ino", pid] (one inode may have several). */
function otherFlocksAll(): [string, number][] {
  return allFlocks().filter(([, pid]) => Number.isInteger(pid) && pid > 0 && pid !== process.pid);
}

/** The refusal of a start whose pinned datapath a live xdpctld uses (see {@link liveDatapathOwners}). */
export class DatapathInUseError extends Error {
  override readonly name = 'DatapathInUseError';
  constructor(
    readonly pinRoot: string,
    readonly owners: DatapathOwner[],
  ) {
    const who = owners
      .map(
        (o) =>
          `pid ${o.pid}${o.command ? ` "${o.command}"` : ''}, pin root ${o.pinRoots.join(' and ')}, holding ` +
          [
            o.maps.length ? `map id${o.maps.length === 1 ? '' : 's'} ${o.maps.join(', ')}` : '',
            o.progs.length ? `program id${o.progs.length === 1 ? '' : 's'} ${o.progs.join(', ')}` : '',
          ]
            .filter(Boolean)
            .join(' and '),
      )
      .join('; ');
    super(
      `the datapath pinned under ${pinRoot} is in use by another xdpctld (${who}): its maps and program are ` +
        'the same kernel objects, whatever path they are pinned at. One daemon per datapath, and ' +
        "--reset-datapath never takes a live daemon's datapath: stop that daemon first, or give this one " +
        'its own --pin-root',
    );
  }
}

/** How deep and how many directories {@link refuseNestedPinRoot} looks under a pin root. */
const NESTED_MAX_DEPTH = 8;
const NESTED_MAX_DIRS = 4096;

/**
 * One daemon per datapath, also across nested paths: a pin root inside another running daemon's pin
 * root (e.g. `--pin-root FIRST/maps`), or one that holds another's inside it, is refused, naming that
 * daemon. Each daemon holds a flock on its pin root directory (the kernel lists it in /proc/locks): the
 * directories above this pin root on the same bpffs and those below it (at most NESTED_MAX_DEPTH levels
 * and NESTED_MAX_DIRS directories: pins are files) are looked up there.
 */
export function refuseNestedPinRoot(pinRoot: string): void {
  const locks = otherFlocks();
  if (locks.size === 0) return;
  const holder = (dir: string): number | undefined => {
    try {
      const st = lstatSync(dir);
      return st.isDirectory() ? locks.get(`${devPair(st.dev)}:${st.ino}`) : undefined;
    } catch {
      return undefined;
    }
  };
  const refuse = (dir: string, pid: number, inside: boolean): never => {
    const cmd = commandOf(pid);
    throw new PinRootError(
      `pin root ${pinRoot} is ${inside ? 'inside' : 'above'} the pin root ${dir} of another xdpctld ` +
        `(pid ${pid}${cmd ? `, "${cmd}"` : ''}): one daemon per datapath, and pin roots must not nest ` +
        '(each daemon owns everything under its own); choose a --pin-root outside it',
    );
  };
  const root = resolve(pinRoot);
  for (let d = dirname(root); d !== dirname(d); d = dirname(d)) {
    try {
      if (Number(statfsSync(d).type) !== BPF_FS_MAGIC) break;
    } catch {
      break;
    }
    const pid = holder(d);
    if (pid !== undefined) refuse(d, pid, true);
  }
  const queue: [string, number][] = [[root, 0]];
  let seen = 0;
  while (queue.length && seen < NESTED_MAX_DIRS) {
    const [dir, depth] = queue.shift()!;
    let entries: Dirent[];
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const sub = join(dir, e.name);
      seen++;
      const pid = holder(sub);
      if (pid !== undefined) refuse(sub, pid, false);
      if (depth + 1 < NESTED_MAX_DEPTH) queue.push([sub, depth + 1]);
    }
  }
}

/** A lock on a directory, which can tell whether that directory is still the one at its path. */
export interface DirectoryLock extends HeldLock {
  /** Whether the locked directory is still at its path (not removed, nor replaced by another one). */
  current(): boolean;
  /**
   * Where the locked directory is now, as the kernel names it (readlink of the held descriptor: a
   * rename is followed), or undefined when it was removed (no link left) or the lock was released.
   */
  whereNow(): string | undefined;
  /**
   * When another filesystem was mounted over the locked directory's path (or an ancestor's) while the
   * directory itself is still there, hidden under it: that mount as text ("bpf mounted at /sys/fs/bpf/x,
   * mount id 123"); else undefined (held, removed, renamed, or released).
   */
  coveredBy(): string | undefined;
  /** A path that reaches the locked directory even when hidden or renamed (/proc/self/fd/N), while held. */
  procPath(): string | undefined;
}

/**
 * The mount that covers `path` now: the last mount in /proc/self/mountinfo whose mount point is `path` or
 * its nearest ancestor (mountinfo lists a mount after the one it covers), as "TYPE mounted at POINT, mount id N".
 */
export function coveringMount(path: string): string | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  let best: { point: string; id: string; type: string } | undefined;
  for (const line of text.split('\n')) {
    // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw" (proc(5)); octal escapes in paths.
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (f.length < 5 || dash < 0) continue;
    const point = f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    const within = point === '/' || path === point || path.startsWith(point + '/');
    if (within && (!best || point.length >= best.point.length)) best = { point, id: f[0], type: f[dash + 1] };
  }
  return best && `${best.type} mounted at ${best.point}, mount id ${best.id}`;
}

/**
 * Take an exclusive lock on an existing directory (the pin root), or throw
 * LockHeldError naming the holder. Nothing is created or removed.
 */
export function lockDirectory(path: string, what: string): DirectoryLock {
  const fd = openSync(path, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    if (!tryFlock(fd)) throw holderOf(path, fd, what, false);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  let open = true;
  return {
    path,
    current() {
      return open && stillAt(fd, path);
    },
    whereNow() {
      if (!open) return undefined;
      try {
        if (fstatSync(fd).nlink === 0) return undefined; // removed (rmdir leaves no link)
        const at = readlinkSync(`/proc/self/fd/${fd}`);
        return at.endsWith(' (deleted)') ? undefined : at;
      } catch {
        return undefined;
      }
    },
    coveredBy() {
      if (!open) return undefined;
      try {
        const a = fstatSync(fd);
        if (a.nlink === 0 || readlinkSync(`/proc/self/fd/${fd}`) !== path) return undefined; // removed, renamed
        const b = lstatSync(path);
        if (a.ino === b.ino && a.dev === b.dev) return undefined; // still the directory at its path
        return coveringMount(path);
      } catch {
        return undefined;
      }
    },
    procPath() {
      return open ? `/proc/self/fd/${fd}` : undefined;
    },
    release() {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

/**
 * Take an exclusive lock on a lock file (created 0600 with its directory),
 * write `info` into it, or throw LockHeldError naming the holder. release()
 * removes the file while still holding the lock, and only while the path
 * still names the locked file (one put there since, by hand or by another
 * daemon, is not ours to remove); a taker that locked the removed file finds
 * the path gone or another inode and tries again. A taker that locked a new
 * file at the path is refused while a live process still holds a lock on the
 * removed one that was there ({@link removedFileHolder}): the directory was
 * removed under a running daemon, which takes its lock again at once.
 */
/** A lock on a lock file, which can tell whether that file is still the one at its path. */
export interface FileLock extends HeldLock {
  /** Release the lock; `leaveFile`: without removing its file (its disk does not answer). */
  release(leaveFile?: boolean): void;
  /** Whether the locked file is still at its path (not removed, nor replaced by another file). */
  current(): boolean;
}

export function lockFile(path: string, what: string, info: HolderInfo, shown = path, created?: string[]): FileLock {
  makeDirs(dirname(path), 0o755, created);
  for (let attempt = 0; ; attempt++) {
    let fd: number;
    try {
      fd = openSync(path, fsc.O_RDWR | fsc.O_CREAT | fsc.O_NOFOLLOW, 0o600);
    } catch (e) {
      // A read-only file system (the state directory remounted ro): lock the
      // directory itself, so that the daemon can still start and serve reads.
      if ((e as NodeJS.ErrnoException).code !== 'EROFS') throw e;
      const dfd = openSync(dirname(path), fsc.O_RDONLY | fsc.O_DIRECTORY);
      if (!tryFlock(dfd)) {
        closeSync(dfd);
        throw new Error(`${what} ${shown} is locked by another xdpctld (read-only file system: holder not recorded)`);
      }
      let held = true;
      return {
        path,
        current: () => held,
        release() {
          if (held) closeSync(dfd);
          held = false;
        },
      };
    }
    try {
      if (!tryFlock(fd)) throw holderOf(path, fd, what, true, shown);
      let same = false;
      try {
        const a = fstatSync(fd);
        const b = statSync(path);
        same = a.ino === b.ino && a.dev === b.dev;
      } catch {
        same = false;
      }
      if (!same) {
        if (attempt >= 10) throw new Error(`lock ${path}: the file keeps being replaced`);
        closeSync(fd);
        continue;
      }
      const removedHolder = removedFileHolder(path);
      if (removedHolder) {
        // Not ours to keep: removed while we hold its lock (as release() does).
        try {
          unlinkSync(path);
        } catch {
          // removed meanwhile
        }
        throw removedHolderError(path, what, shown, removedHolder);
      }
      try {
        ftruncateSync(fd, 0);
        writeSync(fd, `${JSON.stringify(info)}\n`, 0);
      } catch (e) {
        // A full disk: the lock is held all the same; only the holder's details are missing.
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'ENOSPC' && code !== 'EDQUOT') throw e;
      }
    } catch (e) {
      try {
        closeSync(fd);
      } catch {
        // already closed above
      }
      throw e;
    }
    let open = true;
    const current = () => open && stillAt(fd, path);
    return {
      path,
      current,
      release(leaveFile = false) {
        if (!open) return;
        // Removed while the lock is held (a taker that opened it before finds another inode, or none, at
        // the path, and tries again), and only when the path still names the locked file.
        if (!leaveFile && current()) {
          try {
            unlinkSync(path);
          } catch {
            // removed meanwhile: nothing to do
          }
        }
        open = false;
        closeSync(fd);
      },
    };
  }
}

/** Whether `path` exists and is on a bpffs (statfs). */
function isBpffs(path: string): boolean {
  try {
    return Number(statfsSync(path).type) === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

/** The pin root is not safe to use; the message says why and what to do. */
export class PinRootError extends Error {
  override readonly name = 'PinRootError';
}

/**
 * Make sure the pin root is a directory on bpffs that only we control:
 * created 0700 if missing; refused when it is a symlink, not on bpffs, owned
 * by another user, or writable by group or others (whoever can write there
 * can rename our maps away and make the datapath use stale ones).
 */
export function preparePinRoot(pinRoot: string, created?: string[]): void {
  // The nearest existing ancestor tells which filesystem the pin root is on.
  let parent = dirname(pinRoot);
  while (parent !== dirname(parent)) {
    try {
      lstatSync(parent);
      break;
    } catch {
      parent = dirname(parent);
    }
  }
  let fsType: number;
  try {
    fsType = Number(statfsSync(parent).type);
  } catch (e) {
    throw new PinRootError(`pin root ${pinRoot}: ${parent} is not accessible (${(e as Error).message})`);
  }
  if (fsType !== BPF_FS_MAGIC && parent === dirname(pinRoot) && isBpffs(pinRoot)) {
    // The pin root is a bpffs mount itself (e.g. /sys/fs/bpf): the kernel, ip, tc and other tools pin
    // there too, and --cleanup-on-exit removes what is under our pin root.
    throw new PinRootError(
      `pin root ${pinRoot} is the root of a bpffs mount, where the kernel and other tools pin too: ` +
        `choose a directory inside it for xdpctl alone, e.g. --pin-root ${pinRoot.replace(/\/+$/, '')}/xdpctl`,
    );
  }
  if (fsType !== BPF_FS_MAGIC) {
    throw new PinRootError(
      `pin root ${pinRoot} is not on a bpffs (${parent} is not one): mount one with ` +
        '"mount -t bpf -o mode=0700 bpf /sys/fs/bpf" or choose a --pin-root under a bpffs',
    );
  }
  try {
    makeDirs(pinRoot, 0o700, created);
  } catch (e) {
    const closed = (e as NodeJS.ErrnoException).code === 'EACCES' ? unsearchableAncestor(pinRoot) : undefined;
    if (closed) {
      const st = statSync(closed);
      const uid = process.geteuid?.() ?? 0;
      throw new PinRootError(
        `pin root ${pinRoot} cannot be reached: this daemon (uid ${uid}) may not search ${closed} (mode ` +
          `${(st.mode & 0o7777).toString(8).padStart(4, '0')}, owner uid ${st.uid}; systemd mounts /sys/fs/bpf ` +
          `0700). Give it search permission (chmod o+x ${closed}, as the deployment files' init step does) ` +
          'or choose a --pin-root it can reach',
      );
    }
    throw new PinRootError(`create pin root ${pinRoot}: ${(e as Error).message}`);
  }
  const st = lstatSync(pinRoot);
  if (!st.isDirectory()) {
    throw new PinRootError(`pin root ${pinRoot} is not a directory${st.isSymbolicLink() ? ' (a symlink)' : ''}`);
  }
  const unsafe = pinRootOwnership(pinRoot, st);
  if (unsafe) throw new PinRootError(`${unsafe} or choose another --pin-root`);
}

/**
 * The first directory above `path` (from /) that this process may not search (X_OK, asked of the
 * kernel with access(2), so capabilities count), or undefined when every existing one may be searched.
 */
function unsearchableAncestor(path: string): string | undefined {
  const parts = resolve(path).split('/').filter(Boolean);
  for (let i = 0; i < parts.length; i++) {
    const dir = '/' + parts.slice(0, i).join('/');
    try {
      accessSync(dir, fsc.X_OK);
    } catch (e) {
      return (e as NodeJS.ErrnoException).code === 'EACCES' ? dir : undefined;
    }
  }
  return undefined;
}

/**
 * Why the pin root may not be used as it is now (owned by another user, or writable by its group or
 * others: whoever can write there can swap the maps under the datapath), ending with the fix; undefined
 * when it is ours alone. A start refuses such a pin root; a reconciler pass reports it (docs/architecture.md).
 */
export function pinRootOwnership(pinRoot: string, st = lstatSync(pinRoot)): string | undefined {
  const uid = process.geteuid?.() ?? 0;
  if (st.uid !== uid) {
    return (
      `pin root ${pinRoot} is owned by uid ${st.uid}, not by this daemon (uid ${uid}): whoever owns it can ` +
      'swap the maps under the datapath. Remove it (after checking what it holds)'
    );
  }
  if ((st.mode & 0o022) !== 0) {
    return (
      `pin root ${pinRoot} is writable by ${st.mode & 0o002 ? 'others' : 'its group'} (mode ` +
      `${(st.mode & 0o7777).toString(8).padStart(4, '0')}): others could replace the pinned maps. ` +
      `chmod 0700 ${pinRoot}`
    );
  }
  return undefined;
}

/** What one daemon instance owns. */
export interface InstanceResources {
  pinRoot: string;
  stateDir?: string;
  /** Unix socket paths it serves on. */
  sockets: string[];
  listen: string[];
}

/** Everything one daemon holds (see {@link lockInstance}). */
export interface InstanceLock extends HeldLock {
  /**
   * Release every lock (idempotent). `stateDirAnswers` false (a stop found the state directory's disk not
   * completing writes: frozen): the state directory's lock file is left in place (its unlink would wait for
   * the disk, holding the stop and the exit); its lock goes with the descriptor, and the next start takes it.
   */
  release(opts?: { stateDirAnswers?: boolean }): void;
  /**
   * Whether the pin root locked at start is still the directory at its path; if it was removed
   * (`rm -rf PINROOT`) or replaced, it is created again (0700, see {@link preparePinRoot}) and locked
   * again, so that a second daemon on that pin root is refused as before. Returns 'held' (unchanged),
   * 'created' (made again and locked) or 'relocked' (a directory found there, checked and locked); throws
   * LockHeldError when another daemon holds the directory now at that path (it started
   * in between), PinRootError when the directory there may not be used.
   */
  checkPinRoot(): 'held' | 'created' | 'relocked' | 'covered';
  /**
   * While the directory locked as pin root is hidden by a filesystem mounted over its path (checkPinRoot
   * found it so at its last call, whether or not it could take the new one): that mount as text (see
   * {@link coveringMount}). Its pins, still naming this daemon's maps and program, stay there, unreachable by
   * path; its lock is kept until the daemon exits.
   */
  pinRootCover(): string | undefined;
  /** Paths that reach the pin root directories found hidden by a mount (/proc/self/fd/N), for a cleanup. */
  hiddenPinRoots(): string[];
  /**
   * Where the directories that were this daemon's pin root and were renamed under it are now (their
   * pins still name its live maps and program): their locks are kept until the daemon exits, so that a
   * second daemon pointed at the new name is refused like one on the pin root itself. Each path is
   * returned once, by the first call after the rename was noticed (the caller logs it).
   */
  renamedPinRoots(): string[];
  /**
   * The same for the state directory (undefined: none): when its lock file is no longer the one locked
   * at start (`rm -rf STATE_DIR`, or the lock file removed or replaced), the directory is made again
   * (0700) if missing and its lock file taken again, before the one held on the removed file is let go
   * (a second daemon is refused throughout: see {@link lockFile}). 'created' when the directory itself
   * was made again (the caller writes a fresh store into it). Throws LockHeldError when another process
   * holds the lock file now at that path.
   */
  checkStateDir(): 'held' | 'created' | 'relocked' | undefined;
  /**
   * The same for each socket's lock file: the paths whose lock was taken again, and for each one that
   * could not be, the error (another process holds the file now at that path).
   */
  checkSocketLocks(): { relocked: string[]; failed: { path: string; error: Error }[] };
}

/**
 * Check and lock everything one daemon owns, in a fixed order (pin root,
 * state directory, sockets), before it touches any of it. On any failure
 * the locks already taken are released and the error (LockHeldError,
 * PinRootError) is thrown. The returned lock releases all, in reverse.
 * Directories made on the way are added to `created` (the caller removes
 * them when its start is refused).
 */
export function lockInstance(r: InstanceResources, created?: string[]): InstanceLock {
  const info: HolderInfo = {
    pid: process.pid,
    startedAt: new Date().toISOString(),
    pinRoot: r.pinRoot,
    stateDir: r.stateDir,
    listen: r.listen,
  };
  // The state directory's lock first, then one per socket: released in reverse.
  const held: { lock: FileLock; what: string; shown: string }[] = [];
  let pinRootLock: DirectoryLock | undefined;
  /** Locks kept on former pin root directories renamed under the daemon (see renamedPinRoots). */
  const former: DirectoryLock[] = [];
  const renamedNew: string[] = [];
  /** Former pin root directories found hidden by a mount (a subset of `former`). */
  const hidden: DirectoryLock[] = [];
  let cover: string | undefined;
  const releaseAll = (opts: { stateDirAnswers?: boolean } = {}) => {
    for (const l of held.splice(0).reverse())
      l.lock.release(l.what === 'state directory' && opts.stateDirAnswers === false);
    pinRootLock?.release();
    for (const l of former.splice(0)) l.release();
  };
  /** Take the lock of held[i] again when its file is no longer the locked one; whether it was. */
  const relock = (i: number): boolean => {
    const h = held[i];
    if (h.lock.current()) return false;
    const next = lockFile(h.lock.path, h.what, info, h.shown); // throws LockHeldError: another holds it now
    h.lock.release(); // the removed file (the path names the new one: not unlinked)
    held[i] = { ...h, lock: next };
    return true;
  };
  try {
    preparePinRoot(r.pinRoot, created);
    pinRootLock = lockDirectory(r.pinRoot, 'pin root');
    refuseNestedPinRoot(r.pinRoot);
    if (r.stateDir !== undefined) {
      makeDirs(r.stateDir, 0o700, created);
      const path = join(r.stateDir, 'xdpctld.lock');
      held.push({
        lock: lockFile(path, 'state directory', info, r.stateDir, created),
        what: 'state directory',
        shown: r.stateDir,
      });
    }
    for (const s of r.sockets)
      held.push({ lock: lockFile(`${s}.lock`, 'socket', info, s, created), what: 'socket', shown: s });
  } catch (e) {
    releaseAll();
    throw e;
  }
  return {
    path: r.pinRoot,
    release: releaseAll,
    checkPinRoot() {
      if (pinRootLock?.current()) {
        cover = undefined;
        return 'held';
      }
      // Hidden, not moved: a filesystem mounted over the path (the directory is still there, at that path).
      cover = pinRootLock?.coveredBy();
      const made: string[] = [];
      preparePinRoot(r.pinRoot, made);
      const next = lockDirectory(r.pinRoot, 'pin root'); // throws LockHeldError: another daemon has it now
      // The directory locked before, renamed rather than removed (`mv PINROOT OTHER`): its pins still
      // name this daemon's live maps and program, so its lock is kept (a second daemon on OTHER, even
      // with --reset-datapath, is refused naming this one). One removed (no link left) is let go.
      const renamedTo = pinRootLock?.whereNow();
      if (pinRootLock && renamedTo !== undefined) {
        former.push(pinRootLock);
        if (cover === undefined) renamedNew.push(renamedTo);
        else hidden.push(pinRootLock);
      } else pinRootLock?.release();
      pinRootLock = next;
      return cover !== undefined ? 'covered' : made.includes(r.pinRoot) ? 'created' : 'relocked';
    },
    pinRootCover() {
      return cover;
    },
    hiddenPinRoots() {
      return hidden.map((l) => l.procPath()).filter((p): p is string => p !== undefined);
    },
    renamedPinRoots() {
      return renamedNew.splice(0);
    },
    checkStateDir() {
      if (r.stateDir === undefined || held.length === 0) return undefined;
      if (held[0].lock.current()) return 'held';
      const made: string[] = [];
      makeDirs(r.stateDir, 0o700, made);
      relock(0);
      return made.includes(r.stateDir) ? 'created' : 'relocked';
    },
    checkSocketLocks() {
      const out = { relocked: [] as string[], failed: [] as { path: string; error: Error }[] };
      for (let i = r.stateDir === undefined ? 0 : 1; i < held.length; i++) {
        try {
          if (relock(i)) out.relocked.push(held[i].lock.path);
        } catch (e) {
          out.failed.push({ path: held[i].lock.path, error: e as Error });
        }
      }
      return out;
    },
  };
}

/** A Unix socket path on which a live process listens: never removed. */
export class LiveSocketError extends Error {
  override readonly name = 'LiveSocketError';
}

/** Kernel view: the inode of the listening Unix socket bound to `path`, from /proc/net/unix. */
function listeningSocketInode(path: string): number | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/net/unix', 'utf8');
  } catch {
    return undefined;
  }
  // "Num RefCount Protocol Flags Type St Inode Path"; Flags 00010000 is __SO_ACCEPTCON (listening).
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f.slice(7).join(' ') === path && (parseInt(f[3], 16) & 0x10000) !== 0) return Number(f[6]);
  }
  return undefined;
}

/** The pid of a process that holds socket `inode` open (a scan of /proc/PID/fd). */
function socketHolderPid(inode: number): number | undefined {
  const want = `socket:[${inode}]`;
  for (const pid of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours to read
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`) === want) return Number(pid);
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

/**
 * Refuse to take over a Unix socket path that a live process listens on.
 * The lock file beside a socket says which xdpctld owns it, but a lock file
 * can be removed by hand or by a /tmp cleaner, and another program may serve
 * on the path: so before a socket file is replaced, a connect(2) to it must
 * be refused (ECONNREFUSED: nobody listens, the file is stale) or find
 * nothing (ENOENT). Anything else (a connection, a full backlog EAGAIN, a
 * timeout) is a live socket: throw LiveSocketError naming its process (pid
 * and command line, from /proc/net/unix and /proc/PID/fd).
 */
export async function assertSocketNotLive(path: string, timeoutMs = 1000): Promise<void> {
  const outcome = await new Promise<string>((resolve) => {
    const s = connect(path);
    const timer = setTimeout(() => {
      s.destroy();
      resolve(`no answer within ${timeoutMs} ms`);
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.destroy();
      resolve('accepts connections');
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? '' : `connect: ${e.code ?? e.message}`);
    });
  });
  if (!outcome) return;
  const inode = listeningSocketInode(path);
  const pid = inode === undefined ? undefined : socketHolderPid(inode);
  const command = pid === undefined ? undefined : commandOf(pid);
  const who = pid === undefined ? 'a process' : `pid ${pid}${command ? ` "${command}"` : ''}`;
  throw new LiveSocketError(
    `socket ${path} is in use: ${who} listens on it (${outcome}); a live socket is never removed. ` +
      'Stop that process, or give this daemon its own --listen path',
  );
}

/**
 * The identity of the Unix socket file at `path` now: its inode and birth time (ns), or undefined if there
 * is none or it is not a socket. An inode number alone is not an identity: a filesystem reuses the number
 * of a removed file for the next one made (ext4 does at once), so a file put at the path after ours was
 * removed can carry our socket's old number.
 */
export function socketIdentity(path: string): string | undefined {
  try {
    const st = lstatSync(path, { bigint: true });
    return st.isSocket() ? `${st.ino}@${st.birthtimeNs}` : undefined;
  } catch {
    return undefined;
  }
}

/** Whether there is any file at `path` (lstat: a dangling link counts). */
export function pathTaken(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Remove the socket file at `path` only if it is still the one this process
 * created (same {@link socketIdentity}): a file put there since by someone else is left by this
 * function. (Node's listener itself, libuv, unlinks the path it was bound to when it is closed,
 * whatever is there then.)
 */
export function removeOwnSocket(path: string, id: string | undefined): void {
  if (id === undefined || socketIdentity(path) !== id) return;
  try {
    unlinkSync(path);
  } catch {
    // removed meanwhile
  }
}
