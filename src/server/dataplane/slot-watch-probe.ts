/**
 * The tracepoint programs of bpf/xdpctl-watch.bpf.c, which tell the slot watcher (slot-watch.ts) of writes into
 * rule_cfg, rule_ring and backends through the bpf() system call, and of other processes mapping rule_ring
 * writable, by counters in a map it reads through memory (watch_seen). Loaded and attached by the main thread;
 * the links are not pinned: they end with close() or with the process, and nothing is left in bpffs.
 *
 * Owns the object and its links (close() is idempotent); the worker gets its own duplicate of watch_seen's
 * descriptor. Decides nothing.
 */
import { statSync } from 'node:fs';

import { mapInfo } from './bpf-map.js';
import type { DatapathMaps } from './datapath.js';
import { KernelError } from './errors.js';
import { captureLibbpfLog, check, clearErrno, LIBBPF_DEBUG, lib, nullError, openObjectFile } from './libbpf.js';
import { WATCH_SLOT0 } from './slot-watch-print.js';

/** The programs of the object, each on its syscall tracepoint. */
export const WATCH_PROGRAMS = ['xdpctl_watch_bpf_enter', 'xdpctl_watch_bpf_exit', 'xdpctl_watch_mmap'];

/** Where libbpf reads a tracepoint's id: tracefs, or its old place under debugfs. */
export const TRACEFS_ROOTS = ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'];

/** The errno code of a stat of `path` (undefined: it is there). */
function statCode(path: string): string | undefined {
  try {
    statSync(path);
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? 'EIO';
  }
}

/**
 * Why the syscall tracepoints cannot be attached as far as tracefs shows, checked before attaching (was: only
 * libbpf's "attach xdpctl_watch_bpf_enter: no such file or entry"): no `events` under either root (tracefs not
 * mounted: its mount point is an empty directory), or a root this process may not read. Undefined when tracefs
 * is there, or when what stat said is neither (the attach then says what failed).
 */
export function tracefsProblem(
  stat: (path: string) => string | undefined = statCode,
): { errno: number; why: string } | undefined {
  const codes = TRACEFS_ROOTS.map((root) => [root, stat(`${root}/events`)] as const);
  if (codes.some(([, code]) => code === undefined)) return undefined;
  const denied = codes.find(([, code]) => code === 'EACCES' || code === 'EPERM');
  if (denied) {
    return {
      errno: denied[1] === 'EPERM' ? 1 : 13,
      why: `tracefs at ${denied[0]} cannot be read by this process (${denied[1]}): syscall tracepoints cannot be attached`,
    };
  }
  if (codes.every(([, code]) => code === 'ENOENT' || code === 'ENOTDIR')) {
    return {
      errno: 2,
      why: `tracefs is not mounted at ${TRACEFS_ROOTS[0]} (or ${TRACEFS_ROOTS[1]}): syscall tracepoints cannot be attached`,
    };
  }
  return undefined;
}

export class WatchProbe {
  private obj: unknown;
  private links: unknown[] = [];
  /** watch_seen's descriptor (the object's: valid until close) and its entries (u64 counters). */
  readonly seenFd: number;
  readonly entries: number;

  private constructor(obj: unknown, seenFd: number, entries: number) {
    this.obj = obj;
    this.seenFd = seenFd;
    this.entries = entries;
  }

  /**
   * Load `path`, size its counters for every slot of rule_cfg and every id of backends, tell it the maps' ids and
   * this process (its own mappings of rule_ring are not reported), attach its programs. Throws what failed
   * (a KernelError with the libbpf lines), having released what it made.
   */
  static open(path: string, maps: Pick<DatapathMaps, 'ruleCfg' | 'ruleRing' | 'backends'>): WatchProbe {
    const lines: string[] = [];
    const stop = captureLibbpfLog((level, line) => {
      if (level !== LIBBPF_DEBUG) lines.push(line.trimEnd());
    });
    let probe: WatchProbe | undefined;
    try {
      const tracefs = tracefsProblem();
      if (tracefs)
        throw new KernelError('attach the syscall tracepoint programs', tracefs.errno, [], tracefs.why, true);
      const obj = openObjectFile(path, lines);
      const slots = maps.ruleCfg.info.maxEntries;
      const backends = maps.backends.info.maxEntries;
      const entries = WATCH_SLOT0 + slots + backends;
      try {
        const seen = lib.bpf_object__find_map_by_name(obj, 'watch_seen');
        const cfg = lib.bpf_object__find_map_by_name(obj, 'watch_cfg');
        if (!seen || !cfg) throw new KernelError(`open ${path}`, 2, lines, 'no map watch_seen or watch_cfg in it');
        check('size map watch_seen', lib.bpf_map__set_max_entries(seen, entries) as number);
        check(`load ${path}`, lib.bpf_object__load(obj) as number, lines);
        probe = new WatchProbe(obj, check('open map watch_seen', lib.bpf_map__fd(seen) as number), entries);
        // struct xdpctl_watch_cfg (bpf/xdpctl-watch.bpf.c).
        const ns = statSync('/proc/self/ns/pid');
        const v = Buffer.alloc(40);
        v.writeUInt32LE(mapInfo(maps.ruleCfg.fd, 'rule_cfg').id ?? 0, 0);
        v.writeUInt32LE(mapInfo(maps.ruleRing.fd, 'rule_ring').id ?? 0, 4);
        v.writeUInt32LE(mapInfo(maps.backends.fd, 'backends').id ?? 0, 8);
        v.writeUInt32LE(slots, 12);
        v.writeUInt32LE(backends, 16);
        v.writeUInt32LE(process.pid, 20);
        v.writeBigUInt64LE(BigInt(ns.dev), 24);
        v.writeBigUInt64LE(BigInt(ns.ino), 32);
        const cfgFd = check('open map watch_cfg', lib.bpf_map__fd(cfg) as number);
        check('write watch_cfg', lib.bpf_map_update_elem(cfgFd, Buffer.alloc(4), v, 0) as number);
        for (const name of WATCH_PROGRAMS) {
          const prog = lib.bpf_object__find_program_by_name(obj, name);
          if (!prog) throw new KernelError(`find program ${name}`, 2, lines, 'not in the object');
          clearErrno();
          const link = lib.bpf_program__attach(prog);
          if (!link) throw nullError(`attach ${name}`, lines);
          probe.links.push(link);
        }
        return probe;
      } catch (e) {
        if (probe) probe.close();
        else lib.bpf_object__close(obj);
        throw e;
      }
    } finally {
      stop();
    }
  }

  /** Detach the programs and close the object (idempotent); a worker's mapping of watch_seen stays valid. */
  close(): void {
    for (const l of this.links.splice(0)) lib.bpf_link__destroy(l);
    if (this.obj) lib.bpf_object__close(this.obj);
    this.obj = null;
  }
}
