/**
 * A way into another network namespace known only by the id the daemon's namespace gives it (an nsid: what a
 * veth says of its peer's namespace, IFLA_LINK_NETNSID). Changing a device there (ethtool, ip link set) is
 * done from inside it (`nsenter --net=PATH`), which takes a file that is that namespace. Looked for, in this
 * order, by asking the kernel which nsid each candidate has (RTM_GETNSID with NETNSA_FD):
 *  1. a name: /run/netns/NAME (`ip netns add`);
 *  2. a bind mount of it elsewhere (/proc/self/mountinfo, file system nsfs: a container runtime's
 *     /run/docker/netns/ID, or a name whose /run/netns entry was deleted while another mount of it stays), or
 *     one in another mount namespace only (a process's private one, `unshare -m`: /proc/PID/mountinfo, read
 *     once per mount namespace, /proc/PID/ns/mnt), entered through that process's root: /proc/PID/root/PATH;
 *  3. a process in it: /proc/PID/ns/net (a container's, or `unshare -n`'s);
 *  4. an open namespace file of a process: /proc/PID/fd/N that is `net:[INODE]` (a process keeping it with
 *     an open file, not being in it).
 * A namespace that none of these reaches is kept alive only by sockets created in it or by the devices of
 * its processes gone: there is no file to enter it by (a socket's namespace, SIOCGSKNS, is given only to
 * the socket's owner), and {@link unreachableNetns} says so in those words.
 *
 * The last three read /proc: one stat per process for (2) and (3) each, one mountinfo per mount namespace
 * other than the daemon's, and one readlink per open file for (4), which runs only when (1)-(3) found nothing. What was found is kept and checked again (one RTM_GETNSID) at each use; a
 * namespace found nowhere is looked for again at most every {@link NOT_FOUND_RETRY_MS}, and at once after the
 * kernel reported its id given again or taken back (nsid-events.ts: RTM_NEWNSID, RTM_DELNSID, read at each use):
 * a freed id goes to the next namespace the kernel meets, of which a miss of the old one says nothing.
 */
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';

import { monotonicMs } from '../core/clock.js';
import { NETLINK_ROUTE, nlAttr, nlAttrs, nlRequest } from './netlink.js';
import { NsidEvents } from './nsid-events.js';

// <linux/rtnetlink.h>, <linux/net_namespace.h>
const RTM_GETNSID = 90;
const NETNSA_NSID = 1;
const NETNSA_FD = 3;

/**
 * A namespace found nowhere is looked for again after this long (ms); found ones are checked at each use. The
 * search reads every process's open files (one readlink each, on the event loop): a host with many processes
 * pays that once per this period per such namespace, not at every pass. A process that enters the namespace
 * later is found within it (meanwhile such a peer is judged by its redirect counters). An id the kernel reported
 * given or taken back since the miss is looked for at once (another namespace may hold it now); so is every id
 * while those reports cannot be received (no socket: a miss is not kept then).
 */
export const NOT_FOUND_RETRY_MS = 30_000;

/** A file to enter a namespace by, and how it was found (for messages). */
export interface NetnsWay {
  /** Its name in /run/netns, when it has one. */
  name?: string;
  /** What `nsenter --net=` takes. */
  path: string;
  /**
   * How it was found: "its name", "a bind mount at PATH", "a bind mount at PATH in the mount namespace of process
   * PID (COMM)", "process PID (COMM)", "an open file of process PID (COMM)".
   */
  via: string;
}

/** The nsid this namespace gives the namespace of `nsPath` (undefined: none assigned, or unreadable). */
export function nsidOfPath(nsPath: string): number | undefined {
  let fd: number;
  try {
    fd = openSync(nsPath, 'r');
  } catch {
    return undefined;
  }
  try {
    const v = Buffer.alloc(4);
    v.writeUInt32LE(fd);
    const body = nlRequest(NETLINK_ROUTE, RTM_GETNSID, Buffer.alloc(4), nlAttr(NETNSA_FD, v), `nsid of ${nsPath}`);
    const id = body && nlAttrs(body, 4).get(NETNSA_NSID)?.readInt32LE(0);
    return id !== undefined && id >= 0 ? id : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

const found = new Map<number, NetnsWay>();
const notFound = new Map<number, number>();
/** The kernel's reports of ids given and taken back: each ends what a miss said of its id. */
const nsidEvents = new NsidEvents();

/** Forget the misses of every id the kernel reported given or taken back since the last look (all of them when reports were lost). */
function forgetReassigned(): void {
  const { ids, lost } = nsidEvents.take();
  if (lost) notFound.clear();
  else for (const id of ids) notFound.delete(id);
}

/** The name of process `pid` (/proc/PID/comm), for messages; '?' when it cannot be read. */
function comm(pid: string): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

/**
 * A file to enter the namespace with id `nsid` by (see the module's comment for where it is looked for), or
 * undefined when there is none (or `nsid` is this daemon's own namespace: nothing to enter). A miss less than
 * {@link NOT_FOUND_RETRY_MS} old is answered from memory unless the kernel reported `nsid` given again or taken
 * back since (it gives a freed nsid to the next namespace it meets: a namespace deleted, then another with a
 * device moved into it, gets the same id, and a miss of the deleted one says nothing of the new one). `fresh`:
 * search even then — for a one-time act that must not act on any remembered miss (the cleanup at exit).
 */
export function findNetns(nsid: number, fresh = false): NetnsWay | undefined {
  const known = found.get(nsid);
  if (known && nsidOfPath(known.path) === nsid) return known;
  found.delete(nsid);
  forgetReassigned();
  const missed = notFound.get(nsid);
  if (!fresh && missed !== undefined && monotonicMs() - missed < NOT_FOUND_RETRY_MS) return undefined;
  const way = search(nsid);
  if (found.size >= 1024) found.clear();
  if (notFound.size >= 1024) notFound.clear();
  if (way) {
    found.set(nsid, way);
    notFound.delete(nsid);
  } else notFound.set(nsid, monotonicMs());
  return way;
}

/** Forget what {@link findNetns} found or did not (tests; a caller that knows the host changed). */
export function forgetNetns(): void {
  found.clear();
  notFound.clear();
}

function search(nsid: number): NetnsWay | undefined {
  if (nsid === nsidOfPath('/proc/self/ns/net')) return undefined;
  let selfIno: number | undefined;
  try {
    selfIno = statSync('/proc/self/ns/net').ino;
  } catch {
    selfIno = undefined;
  }
  /** nsfs inodes already asked about (each namespace is asked once, by the first file found for it). */
  const seen = new Set<number>(selfIno === undefined ? [] : [selfIno]);
  const ask = (path: string, ino?: number): boolean => {
    let i = ino;
    if (i === undefined) {
      try {
        i = statSync(path).ino;
      } catch {
        return false;
      }
    }
    if (seen.has(i)) return false;
    seen.add(i);
    return nsidOfPath(path) === nsid;
  };
  // 1. Names.
  let names: string[] = [];
  try {
    names = readdirSync('/run/netns');
  } catch {
    // no named namespaces
  }
  for (const name of names) {
    if (ask(`/run/netns/${name}`)) return { name, path: `/run/netns/${name}`, via: 'its name' };
  }
  // 2. Bind mounts of nsfs elsewhere: in this daemon's mount table, then in that of every other mount
  // namespace (a process's private one: `unshare -m`), entered through /proc/PID/root.
  for (const at of nsfsNetMounts(readText('/proc/self/mountinfo'))) {
    if (ask(at)) return { path: at, via: `a bind mount at ${at}` };
  }
  let pids: string[] = [];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p));
  } catch {
    return undefined;
  }
  /** Mount namespaces already read (this daemon's own: read above). */
  const mntSeen = new Set<number>();
  try {
    mntSeen.add(statSync('/proc/self/ns/mnt').ino);
  } catch {
    // not known: its table is read again below, at most once
  }
  for (const pid of pids) {
    let mnt: number;
    try {
      mnt = statSync(`/proc/${pid}/ns/mnt`).ino;
    } catch {
      continue;
    }
    if (mntSeen.has(mnt)) continue;
    mntSeen.add(mnt);
    for (const at of nsfsNetMounts(readText(`/proc/${pid}/mountinfo`))) {
      const path = `/proc/${pid}/root${at}`;
      if (ask(path)) {
        return { path, via: `a bind mount at ${at} in the mount namespace of process ${pid} (${comm(pid)})` };
      }
    }
  }
  // 3. Processes in it.
  for (const pid of pids) {
    const path = `/proc/${pid}/ns/net`;
    if (ask(path)) return { path, via: `process ${pid} (${comm(pid)})` };
  }
  // 4. Open namespace files.
  for (const pid of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^net:\[(\d+)\]$/.exec(target);
      if (!m) continue;
      const path = `/proc/${pid}/fd/${fd}`;
      if (ask(path, Number(m[1]))) return { path, via: `an open file of process ${pid} (${comm(pid)})` };
    }
  }
  return undefined;
}

/** The text of `path` ('' when it cannot be read). */
function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

/**
 * The bind mounts of network namespaces in a mount table (mountinfo: "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ...
 * - FSTYPE ..."; file system nsfs, root "net:[INODE]"): where each is mounted.
 */
function nsfsNetMounts(mountinfo: string): string[] {
  const out: string[] = [];
  for (const line of mountinfo.split('\n')) {
    const sep = line.indexOf(' - ');
    if (sep < 0 || !line.slice(sep + 3).startsWith('nsfs ')) continue;
    const f = line.slice(0, sep).split(' ');
    if (!f[3]?.startsWith('net:[')) continue;
    // Octal escapes (\040 for a space) as the kernel writes them.
    const at = (f[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (at) out.push(at);
  }
  return out;
}

/** Why the namespace with id `nsid` cannot be entered ({@link findNetns} found no file of it), in words. */
export function unreachableNetns(nsid: number): string {
  return (
    `the network namespace with nsid ${nsid} has no name in /run/netns, no bind mount, no process in it and ` +
    'no open namespace file of any process (only its devices or sockets made in it keep it): xdpctld has no ' +
    'file to enter it by'
  );
}

/**
 * A namespace found by {@link findNetns}, in words: "netns NAME", or "the unnamed network namespace with nsid N
 * (entered through PATH: how it was found)" (`how`: "found as" where it could not be entered).
 */
export function netnsWords(nsid: number, way: NetnsWay, how = 'entered through'): string {
  if (way.name) return `netns ${way.name}`;
  return `the unnamed network namespace with nsid ${nsid} (${how} ${way.path}: ${way.via})`;
}
