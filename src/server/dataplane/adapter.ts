/**
 * The real Dataplane for the core: XdpDatapath + tables + netdev behind the
 * interface in core/dataplane.ts.
 */
import { existsSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { dirname, join } from 'node:path';

import type {
  BackendEntry,
  CounterRead,
  Dataplane,
  InterfaceInfo,
  LinkState,
  MovedEntries,
  HostChangeScope,
  PeerMtu,
  PeerXdp,
  RedirectTarget,
  RepairSink,
  RuleSlotState,
  RuleSlotWrite,
  StartGenerations,
  StrayAttachment,
  StrayRemoval,
  UpperLink,
  TxLink,
  PeerAway,
  XdpModeName,
  XdpStatus,
} from '../core/dataplane.js';
import type { EntryRepair } from '../core/entry-owners.js';
import type { RepairSubject } from '../core/fights.js';
import type { NonUtf8Interface } from '../core/non-utf8.js';
import { monotonicMs, wallAt } from '../core/clock.js';
import { checkOwnCapabilities } from '../auth/capabilities.js';
import { ArpProber } from './arp.js';
import { CONFLICT_MS, conflictingMacs, NEIGHBOUR_HOLD_MS, noteClaim, type ClaimRun } from '../core/neighbour-hold.js';
import type { PeerRead } from '../core/static-mac.js';
import {
  backendEntry,
  NO_BACKEND,
  RING_SIZE,
  sumCounters,
  type GenMatchKey,
  type MatchKey,
  type SrcKey,
} from './codec.js';
import type { Logger } from '../log.js';
import type { XdpDatapath } from './datapath.js';
import { KernelError } from './errors.js';
import { CoreError } from '../core/errors.js';
import { LinkEvents } from './link-events.js';
import { SlotWatch, WATCH_PERIOD_MS, watchSafetyMs } from './slot-watch.js';
import { RECORD_WRITE_TIMEOUT_MS, RecordNotAnswering, RecordWriter } from './record-writer.js';
import {
  ensureVethPeerNapi,
  ifindexOf,
  linkCounters,
  interfaceAddress,
  interfaceFacts,
  IFF_NOARP,
  masterOf,
  linkState,
  lowerDevices,
  upperDevices,
  upperLinks,
  portsOf,
  txLink,
  vethPeerAway,
  nameOf,
  nonUtf8Links,
  neighbourEntry,
  neighbourTableByIndex,
  type NeighbourEntry,
  vethPeerMac,
  reprobeNeighbour,
  linkIdentity,
  vethPeerLink,
  vethPeerXdp,
  ingressHooks,
  probeNeighbour,
  neighbourTableStats,
  ENOBUFS,
  type NeighbourTableStats,
  prepareIngress,
  routeGet,
  reannounceVethGro,
  xdpTransmitStats,
  tapTxDropped,
  restoreGro,
  restoreOffloads,
  recordedDeviceGone,
  releaseOffloads,
  NamespaceUnreachable,
  GENERIC_GSO_FEATURES,
  type GroChange,
  type OffloadChange,
  netnsId,
  type LinkIdentity,
} from './netdev.js';
import { acceptedMacs, syncMacMap } from './ingress-macs.js';
import { missingHostTools } from './host-tools.js';
import { detachCommand, detachXdpIn, movedDevice, netnsOf } from './netns.js';
import * as tables from './tables.js';
import { nameText } from '../../shared/visible.js';
import { XDP_ACT, xdpActNames, xdpFeatures } from './xdp-features.js';

/**
 * Whether two host-change records name the same device: namespace, ifindex and, where both record them, the
 * namespace's id and the veth peer (netdev.ts DeviceIdentity), and for the peer of one of our veths, that
 * veth's MAC and counts (netdev.ts remadeVeth). Not the device's own name or MAC: settings its owner may change
 * (a device renamed since is still the one recorded).
 */
/** Why XDP needs these offloads off (the reasons prepareIngress gives: dataplane/netdev.ts). */
function offloadWhy(features: readonly string[]): string {
  return features.some((f) => GENERIC_GSO_FEATURES.includes(f))
    ? 'generic XDP cannot redirect GSO packets (TCP from it would stall)'
    : 'VLAN tags delivered as metadata look untagged to XDP here';
}

function sameDevice(a: GroChange, b: GroChange): boolean {
  if (a.netns !== b.netns || a.ifindex !== b.ifindex) return false;
  if (a.netnsId !== undefined && b.netnsId !== undefined && a.netnsId !== b.netnsId) return false;
  if (a.linkIndex !== undefined && b.linkIndex !== undefined && a.linkIndex !== b.linkIndex) return false;
  // `a` recorded, `b` seen since: a veth of ours made again with the same ifindex (and its peer's) shows by its
  // MAC, or by counts lower than recorded (they only grow over a device's life): another device, recorded apart
  // (the restore leaves the old record's device alone and puts back what was changed on this one).
  if (a.linkMac !== undefined && b.linkMac !== undefined && a.linkMac.toLowerCase() !== b.linkMac.toLowerCase()) {
    return false;
  }
  if (a.linkPackets !== undefined && b.linkPackets !== undefined && BigInt(b.linkPackets) < BigInt(a.linkPackets)) {
    return false;
  }
  return !(
    a.linkCarrierChanges !== undefined &&
    b.linkCarrierChanges !== undefined &&
    b.linkCarrierChanges < a.linkCarrierChanges
  );
}

/**
 * How long a veth verified able to receive native redirects is trusted without inspecting its peer again
 * when nothing the kernel reports about it changed (ms). A safety net: the changes that matter (the
 * peer's GRO or XDP program while it is up, its up/down state, the peer itself) each move the key.
 */
const VETH_RECHECK_MS = 30_000;

/**
 * A neighbour entry that a backend given without MAC relies on is verified (set to NUD_PROBE: the kernel
 * asks the MAC it holds) when the kernel has seen no confirmation of it for this long (ms), and at most
 * this often. XDP-redirected frames never pass the stack, so without it a neighbour that changed its MAC
 * without a gratuitous ARP would keep the old one forever. Repair bound (docs/architecture.md,
 * "Neighbours"): this + ucast_solicit x retrans_time (3 x 1 s by default) + 3 s = 11 s.
 */
export const NEIGHBOUR_VERIFY_MS = 5000;
/**
 * The same MAC of a backend is asked on the wire (an ARP request of our own) at most this often (ms); a MAC a
 * backend receives with is asked again this often (the daemon's own check that it still answers: a host that
 * took another MAC without a gratuitous ARP is found within this + arp.ts ARP_TRIES x ARP_RETRY_MS, 1.6 s).
 */
export const ASK_EVERY_MS = 1000;
/**
 * A broadcast request for an address that went unanswered is sent again after ASK_EVERY_MS x 2^n (n the
 * broadcasts in a row nobody answered), at most this far apart (ms): a host that is not there is not asked
 * 3 times a second for ever. Any answer for the address starts over at ASK_EVERY_MS.
 */
export const ASK_BROADCAST_MAX_MS = 16_000;
/**
 * How a neighbour entry's `via` starts when its MAC is what answered ARP requests of ours while the kernel's own
 * entry failed (neighbourView): the kernel is asked to resolve it again every NEIGHBOUR_VERIFY_MS
 * (verifyNeighbour), so that its entry is the backend's again once its own requests are answered (the filter
 * removed).
 */
const KERNEL_FAILS = "the kernel's own neighbour entry for";
/**
 * How a neighbour entry's `via` starts when its MAC is what answered ARP requests of ours while the kernel could
 * not hold an entry for it (its neighbour table full: neighbourView); asked to make it again as KERNEL_FAILS is.
 */
const TABLE_FULL = 'neighbour table full';
/**
 * How long the kernel's neighbour table counts as full after it last said so (ms): a new entry refused
 * (ENOBUFS to a request of ours, or its table_fulls count rising between two reads).
 */
export const TABLE_FULL_MS = 10_000;
/** The neighbour table's counters are read at most this often (ms). */
const TABLE_STATS_MS = 500;
/** A spell of the kernel saying its neighbour table is full (KernelDataplane.tableFull). */
interface TableFullSpell {
  /** When it began and when the kernel last said so (ms, monotonic: core/clock.ts). */
  since: number;
  last: number;
  /** The table's counters when it began (said in the status, unchanged while it lasts). */
  stats?: NeighbourTableStats;
}
/** How long a backend's next hop (its route) is kept at most without a route change seen (ms). */
export const HOPS_MS = 30_000;

/** 32-bit value of a dotted IPv4 address. */
const ipv4Value = (ip: string) => ip.split('.').reduce((v, x) => v * 256 + Number(x), 0);

/**
 * What the adapter read of the egresses in one turn of the event loop (KernelDataplane hopTurn): the same for every
 * backend behind an egress that a pass or a change asks about in that turn, read again in the next.
 */
interface TurnReads {
  /** Name -> ifindex (-1: none). */
  ifindex: Map<string, number>;
  /** Name -> the egress and the device its neighbours live on (EgressView). */
  egress: Map<string, EgressView | undefined>;
  /** Name -> its ifindex and MAC for an ARP request of ours (null: none). */
  own: Map<string, { ifindex: number; mac: string } | null>;
  /** Name -> its master (a bridge port's) and the master's ifindex, where ARP replies are delivered. */
  master: Map<string, { master?: string; rx?: number }>;
  /** The host's addresses by device (os.networkInterfaces), for the sender address of an ARP request. */
  addrs?: ReturnType<typeof networkInterfaces>;
}

/** How the neighbours behind an egress are found ({@link KernelDataplane.neighbourView}). */
interface EgressView {
  /** The egress's own ifindex (what ARP requests of ours go out of, and what answers are recorded by). */
  ifindex: number;
  /**
   * The device whose neighbour table holds the egress's neighbours and on which the replies to requests out of
   * the egress are delivered: its master (a bridge or a bond it is a port of), else the egress itself.
   */
  dev: { name: string; ifindex: number; mac: string; noarp: boolean };
}

/** This host's IPv4 addresses: who holds each, and each subnet's broadcast address by device. */
interface HostAddresses {
  owners: Map<string, string[]>;
  broadcasts: Map<string, { dev: string; subnet: string }[]>;
}

function hostAddresses(): HostAddresses {
  const owners = new Map<string, string[]>();
  const broadcasts = new Map<string, { dev: string; subnet: string }[]>();
  for (const [dev, list] of Object.entries(networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.family !== 'IPv4') continue;
      owners.set(a.address, [...(owners.get(a.address) ?? []), dev]);
      const prefix = Number(a.cidr?.split('/')[1] ?? 32);
      if (!(prefix < 31)) continue;
      const mask = ipv4Value(a.netmask);
      const net = (ipv4Value(a.address) & mask) >>> 0;
      const bc = (net | (~mask >>> 0)) >>> 0;
      const text = (v: number) => [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join('.');
      broadcasts.set(text(bc), [...(broadcasts.get(text(bc)) ?? []), { dev, subnet: `${text(net)}/${prefix}` }]);
    }
  }
  return { owners, broadcasts };
}

/**
 * The sender IP of our ARP requests for `ip` out of `iface`, as the kernel picks it for its own: an IPv4
 * address of the egress's own, the one whose subnet holds `ip` when there is one, else its first; '0.0.0.0'
 * (an RFC 5227 probe) only when the egress has none.
 */
export function arpSenderIp(
  ip: string,
  addrs: { address: string; netmask: string; family: string | number; internal?: boolean }[] | undefined,
): string {
  const v4 = (addrs ?? []).filter((a) => a.family === 'IPv4' || a.family === 4);
  const t = ipv4Value(ip);
  const inSubnet = v4.find((a) => {
    const m = ipv4Value(a.netmask);
    return (ipv4Value(a.address) & m) >>> 0 === (t & m) >>> 0;
  });
  return (inSubnet ?? v4[0])?.address ?? '0.0.0.0';
}
/** At most this many such checks a second (beyond: each MAC is checked less often). */
const CHECKS_PER_S = 500;

/** A recorded device setting this daemon changed: GRO switched on, or offloads turned off. */
type HostRecord = { kind: 'gro'; change: GroChange } | { kind: 'offloads'; change: OffloadChange };

/** One device setting changed inside a {@link KernelDataplane.trackHostChanges} scope. */
type HostJournalEntry =
  | { kind: 'gro'; change: GroChange; added: boolean; veth?: string }
  | { kind: 'offloads'; change: OffloadChange; added: string[] };

/**
 * A recorded change read from a record that may not be current (its last write was never confirmed: a
 * `FILE.tmp` left beside it): this daemon cannot prove it (or an earlier daemon) made it, or that it was not
 * undone since. Such entries are kept with the flag (a later daemon knows it too), never undone nor made again,
 * and said by --cleanup-on-exit as left as found; a change this daemon makes on that device replaces it.
 */
type MaybeStale = { unconfirmed?: boolean };
const unconfirmed = (c: GroChange | OffloadChange): boolean => (c as MaybeStale).unconfirmed === true;

/** The host-changes record's write bound, in seconds, for messages. */
const RECORD_BOUND_S = RECORD_WRITE_TIMEOUT_MS / 1000;

/** A recorded device for messages: its name, and its namespace when not ours. */
const whereOf = (c: GroChange): string => (c.netns ? `${c.ifname} in netns ${c.netns}` : c.ifname);

/** Undo a recorded change (GRO off again, offloads on again) where it is still due: what was done, for the log. */
const undoRecord = (r: HostRecord): Promise<string> =>
  r.kind === 'gro' ? restoreGro(r.change) : restoreOffloads(r.change);

export class KernelDataplane implements Dataplane {
  /** This namespace's IPv4 addresses as last read for {@link vethPeerMac} (ms, monotonic: core/clock.ts). */
  private v4?: { at: number; ips: readonly string[] };
  readonly ringSize = RING_SIZE;
  readonly noBackend = NO_BACKEND;

  /**
   * What the datapath cannot observe: the tracepoint programs did not attach; a program the daemon runs to
   * observe the host (ip, ethtool, nsenter) is not in PATH (host-tools.ts).
   */
  get warnings(): readonly string[] {
    const tools = missingHostTools();
    const record = this.recordWarning();
    const watch = this.slotWatchWarning();
    if (!this.dp.traceWarning && tools.length === 0 && !record && !watch) return [];
    return [
      ...(this.dp.traceWarning ? [this.dp.traceWarning] : []),
      ...tools.map((t) => t.text),
      ...(record ? [record] : []),
      ...(watch ? [watch] : []),
    ];
  }

  /**
   * The host-changes record's disk not answering (a write pending past the bound: record-writer.ts): every
   * change that changes a device setting is refused meanwhile, and what a reconciler pass changes is not
   * recorded for a restart's --cleanup-on-exit (written once the disk answers).
   */
  private recordWarning(): string | undefined {
    const since = this.record?.notAnswering();
    if (since === undefined) return undefined;
    return (
      `host-changes record ${this.hostChangesFile}: the disk has not completed a write sent to it at ` +
      `${new Date(since).toISOString()} (not answering for more than ${RECORD_BOUND_S} s): changes that switch ` +
      'GRO on or offloads off are refused, and device settings a reconciler pass changes are not recorded for a ' +
      "restart's --cleanup-on-exit until it does (this daemon's own --cleanup-on-exit still undoes them)"
    );
  }
  /**
   * Device settings this daemon (or an earlier one with the same file)
   * changed: GRO switched on on veth peers, offloads turned off for XDP
   * (VLAN tag offloads; TSO/GSO of a generic ingress's peer). Kept in
   * `hostChangesFile` when given, so that --cleanup-on-exit can put them back
   * after a restart too.
   */
  private readonly groChanges: GroChange[] = [];
  private readonly offloadChanges: OffloadChange[] = [];

  constructor(
    readonly dp: XdpDatapath,
    private readonly hostChangesFile?: string,
    /** Where the device settings it changes are reported (each change, once). */
    private readonly log?: Logger,
  ) {
    this.record = hostChangesFile ? new RecordWriter(hostChangesFile) : undefined;
    // A write of the record never confirmed (its daemon stopped before the disk completed it: a frozen disk at a
    // stop): the record beside it may not be current. The temporary file is removed, said.
    const partial = hostChangesFile ? this.takePartial(hostChangesFile) : undefined;
    if (hostChangesFile && existsSync(hostChangesFile)) {
      try {
        const saved = JSON.parse(readFileSync(hostChangesFile, 'utf8')) as {
          gro?: GroChange[];
          offloads?: OffloadChange[];
        };
        this.groChanges.push(...(saved.gro ?? []));
        this.offloadChanges.push(...(saved.offloads ?? []));
      } catch (err) {
        this.keepUnreadable(hostChangesFile, err as Error);
      }
    }
    if (hostChangesFile && partial) this.notCurrent(hostChangesFile, partial);
    dp.onOffloadsChanged = (changes) => this.recordOffloads(changes);
  }

  /**
   * `FILE.tmp` removed if there is one (a write of the record never confirmed, 0 bytes or cut short): what it
   * was, for the line that says the record may not be current; undefined when there was none.
   */
  private takePartial(file: string): string | undefined {
    const tmp = `${file}.tmp`;
    let size: number;
    try {
      size = statSync(tmp).size;
    } catch {
      return undefined;
    }
    let removed = 'removed';
    try {
      rmSync(tmp, { force: true });
    } catch (e) {
      removed = `could not be removed (${(e as Error).message})`;
    }
    return `${tmp} (${size} bytes, a write of it the disk never confirmed) ${removed}`;
  }

  /**
   * The record's last write was not confirmed: every change it lists is flagged {@link MaybeStale} (left as
   * found, never undone nor made again), said in one line, and the record written with the flags.
   */
  private notCurrent(file: string, partial: string): void {
    const listed = [...this.groChanges, ...this.offloadChanges];
    for (const c of listed) (c as MaybeStale).unconfirmed = true;
    const what = [
      ...this.groChanges.map((c) => `GRO on ${whereOf(c)}`),
      ...this.offloadChanges.map((c) => `${c.features.join(', ')} off on ${whereOf(c)}`),
    ];
    this.log?.warn(
      { file, partial, listed: what },
      `host-changes record ${file} may not be current: ${partial}; the daemon that wrote it stopped before its ` +
        'last write was confirmed, so what the record lists may have been undone since (and set again by someone ' +
        'else). ' +
        (what.length
          ? `The ${what.length} device setting(s) it lists are left as they are found (not undone by ` +
            `--cleanup-on-exit, not made again): ${what.join('; ')}`
          : 'It lists no device setting'),
    );
    if (listed.length) void this.saveHostChanges(undefined, 'the record flagged as not known to be current');
  }

  /**
   * A host-changes record that cannot be read (truncated, not JSON) is never overwritten: it is moved aside
   * to `FILE.unreadable-<time>` (kept byte for byte, for the operator) and that is logged as an error naming
   * both and what will not be undone: the GRO and offload changes it lists are unknown to this daemon, so
   * --cleanup-on-exit does not put them back. The next change is recorded in a fresh FILE. When it cannot be
   * moved aside, nothing is written over it while this daemon runs (changes kept in memory, as on a disk
   * that refuses writes).
   */
  private keepUnreadable(file: string, err: Error): void {
    const copy = `${file}.unreadable-${new Date().toISOString().replace(/[:.]/g, '-')}`;
    const lost =
      'the GRO and offload changes an earlier daemon recorded there are unknown to this one: --cleanup-on-exit ' +
      'will not put them back (read the file and undo them by hand)';
    try {
      renameSync(file, copy);
      this.log?.error(
        { err, file, keptAs: copy },
        `host-changes record ${file} is unreadable (${err.message}): ${lost}; kept as ${copy}, and the changes ` +
          `this daemon makes are recorded in a fresh ${file}`,
      );
    } catch (e) {
      this.keepAside = file;
      this.log?.error(
        { err, file, moveError: (e as Error).message },
        `host-changes record ${file} is unreadable (${err.message}): ${lost}; it could not be moved aside ` +
          `(${(e as Error).message}), so it is not written over while this daemon runs (its own changes are ` +
          'undone by its --cleanup-on-exit, not recorded for a restart)',
      );
    }
  }

  /** An unreadable record that could not be moved aside: never written over (see {@link keepUnreadable}). */
  private keepAside?: string;

  /** Writes the host-changes record off the event loop, bounded (record-writer.ts); undefined without a file. */
  private readonly record?: RecordWriter;

  private recordOffloads(changes: OffloadChange[]): void {
    for (const c of changes) {
      // A change this daemon made replaces one a record not known to be current listed for that device.
      const stale = this.offloadChanges.findIndex((x) => sameDevice(x, c) && unconfirmed(x));
      if (stale >= 0) this.offloadChanges.splice(stale, 1);
      const same = this.offloadChanges.find((x) => sameDevice(x, c));
      const added = same ? c.features.filter((f) => !same.features.includes(f)) : [...c.features];
      if (same) same.features = [...new Set([...same.features, ...c.features])];
      else this.offloadChanges.push({ ...c, features: [...c.features] });
      this.journal?.push({ kind: 'offloads', change: { ...c, features: [...c.features] }, added });
    }
    void this.saveHostChanges({ changes }, 'offloads turned off for XDP');
  }

  /** Record a GRO switched on; settles once the record is written (or could not be: said), within the bound. */
  private async recordGro(c: GroChange, vethName: string): Promise<void> {
    // This daemon switched it on itself: one a record not known to be current listed is replaced by this one.
    const stale = this.groChanges.findIndex((x) => sameDevice(x, c) && unconfirmed(x));
    if (stale >= 0) this.groChanges.splice(stale, 1);
    const known = this.groChanges.some((x) => sameDevice(x, c));
    this.journal?.push({ kind: 'gro', change: c, added: !known, veth: vethName });
    if (known) return;
    this.groChanges.push(c);
    await this.saveHostChanges({ change: c }, 'GRO switched on');
  }

  /**
   * The device settings changed while a scope of {@link trackHostChanges} is open, oldest first, each with
   * what it added to the host-changes record (so that a revert takes out exactly that).
   */
  private journal?: HostJournalEntry[];

  /**
   * Follow the device settings this daemon changes from now on (GRO switched on on veth peers, offloads
   * turned off for XDP) until `close()`: `revert()` puts back those changed since, newest first, and takes
   * their entries out of the host-changes record, so that a transaction that failed leaves the host and
   * the record as they were. `settle()` waits for the record's writes made since (off the event loop,
   * bounded: record-writer.ts) and refuses the change (UNAVAILABLE, naming the record) when the disk did not
   * complete one within the bound: a change is acknowledged only once the record holds what it did to the
   * host. One scope at a time (the core runs one change at a time); a second call starts a new journal.
   */
  trackHostChanges(): HostChangeScope {
    const journal: HostJournalEntry[] = [];
    const writes: Promise<Error | undefined>[] = [];
    this.journal = journal;
    this.scopeWrites = writes;
    let recordBefore: string | undefined;
    try {
      // A read: answered by a frozen file system too (it holds writes only).
      recordBefore = this.hostChangesFile ? readFileSync(this.hostChangesFile, 'utf8') : undefined;
    } catch {
      recordBefore = undefined; // none yet (or unreadable: rewritten from memory below)
    }
    const stop = () => {
      if (this.journal === journal) this.journal = undefined;
      if (this.scopeWrites === writes) this.scopeWrites = undefined;
    };
    return {
      close: stop,
      settle: async () => {
        const failed = (await Promise.all(writes.splice(0))).find((e) => e instanceof RecordNotAnswering);
        if (!failed) return;
        throw new CoreError(
          'unavailable',
          `record the device settings the change made: host-changes record ${failed.message}: the change is not ` +
            'applied (what it did in the kernel and to the device settings is undone); every change that switches ' +
            'GRO on or offloads off is refused until the disk answers',
        );
      },
      revert: async () => {
        stop();
        const reverted: string[] = [];
        const failed: string[] = [];
        for (const j of journal.splice(0).reverse()) {
          const where = whereOf(j.change);
          try {
            reverted.push(`${where}: ${await undoRecord(j)}`);
            if (j.kind === 'gro' && j.veth) this.vethVerified.delete(j.veth);
          } catch (e) {
            failed.push(
              `${j.kind === 'gro' ? 'switch GRO off again' : `turn ${j.change.features.join(', ')} on again`} ` +
                `on ${where}: ${(e as Error).message}`,
            );
            continue; // still changed: the record keeps it, for --cleanup-on-exit
          }
          this.forget(j);
        }
        if (failed.length || !this.hostChangesFile) await this.saveHostChanges();
        else if (reverted.length) await this.restoreRecord(recordBefore);
        return { reverted, failed };
      },
    };
  }

  /** The record's writes made while a {@link trackHostChanges} scope is open (its error, if any, each). */
  private scopeWrites?: Promise<Error | undefined>[];

  /**
   * Every change of a scope put back: the host-changes file as it was, byte for byte (or none, as there was
   * none). Written only when it differs (a record that could not be written, on a full disk, never changed
   * it) or a write of it is still under way (one the disk has not completed: this one follows it), and
   * atomically (a temporary file renamed over it), so that a failing disk never leaves it cut.
   */
  private async restoreRecord(before: string | undefined): Promise<void> {
    const file = this.hostChangesFile!;
    if (!this.record!.busy()) {
      let now: string | undefined;
      try {
        now = readFileSync(file, 'utf8');
      } catch {
        now = undefined;
      }
      if (now === before) return;
    }
    try {
      await this.record!.write(before ?? null);
    } catch (e) {
      this.log?.warn(
        { err: e, file },
        `${file} could not be put back as it was${e instanceof RecordNotAnswering ? ' yet (written once the disk answers)' : ''}: ` +
          'it may name device settings that were already put back (--cleanup-on-exit finds them as they should be ' +
          'and leaves them)',
      );
    }
  }

  /** Take out of the host-changes record what a journal entry added to it (the setting was put back). */
  private forget(j: HostJournalEntry): void {
    const same = (x: GroChange) => sameDevice(x, j.change);
    if (j.kind === 'gro') {
      if (!j.added) return;
      const i = this.groChanges.findIndex(same);
      if (i >= 0) this.groChanges.splice(i, 1);
      return;
    }
    const i = this.offloadChanges.findIndex(same);
    if (i < 0) return;
    const rec = this.offloadChanges[i];
    rec.features = rec.features.filter((f) => !j.added.includes(f));
    if (rec.features.length === 0) this.offloadChanges.splice(i, 1);
  }

  /**
   * At start: each record whose device is gone for good ({@link recordedDeviceGone}: the identity checks a
   * restore makes) is said once (device, namespace, settings, and that nothing will be undone for it) and
   * dropped from the record, written again. A record whose device cannot be checked now (a namespace this
   * daemon may not enter or cannot see, a read that failed) or that is not known to be current is kept.
   * Never throws.
   */
  async dropGoneRecords(): Promise<void> {
    let dropped = 0;
    for (const kind of ['gro', 'offloads'] as const) {
      const list: GroChange[] = kind === 'gro' ? this.groChanges : this.offloadChanges;
      for (const c of [...list]) {
        if (unconfirmed(c)) continue;
        let why: string | undefined;
        try {
          why = await recordedDeviceGone(c);
        } catch {
          why = undefined; // not checked: kept
        }
        const at = list.indexOf(c);
        if (why === undefined || at < 0) continue;
        list.splice(at, 1);
        dropped++;
        const settings = kind === 'gro' ? 'GRO switched on' : `${(c as OffloadChange).features.join(', ')} turned off`;
        this.log?.info(
          { ifname: c.ifname, ifindex: c.ifindex, netns: c.netns, kind, settings },
          `host-changes record: ${whereOf(c)} (ifindex ${c.ifindex}), ${settings} by xdpctld, is gone for good: ` +
            `${why}; nothing will be undone for it, and its record is dropped`,
        );
      }
    }
    if (dropped) await this.saveHostChanges(undefined, 'the record without the devices gone for good');
  }

  /** The host-changes record as this daemon holds it. */
  private recordText(): string {
    return `${JSON.stringify({ gro: this.groChanges, offloads: this.offloadChanges })}\n`;
  }

  /**
   * Write the host-changes file (off the event loop, atomically, bounded: record-writer.ts). A write that
   * fails (a full or read-only state dir) does not fail what changed the host: the change is kept in memory,
   * so this daemon's --cleanup-on-exit still undoes it; the warning says a restarted daemon would not know of
   * it. A write the disk does not complete within the bound is said the same way (and fails the change that
   * made it: {@link trackHostChanges} settle). Resolves true once written (never rejects).
   */
  private saveHostChanges(what?: object, change?: string, boundMs?: number, quiet = false): Promise<boolean> {
    if (!this.hostChangesFile || !this.record) return Promise.resolve(true);
    if (this.keepAside) return Promise.resolve(false); // an unreadable record kept in place: logged at start
    const file = this.hostChangesFile;
    const outcome = this.record.write(this.recordText(), boundMs).then(
      () => {
        this.hostChangesPending = false;
        return undefined;
      },
      (e: Error) => {
        this.hostChangesPending = true;
        if (quiet) return e;
        const late =
          e instanceof RecordNotAnswering ? ' (written once the disk answers, if this daemon still runs)' : '';
        this.log?.warn(
          { err: e, file, ...what },
          `${change ?? 'host changes'} not recorded in ${file}${late}: ` +
            `this daemon's --cleanup-on-exit still undoes it, a restarted daemon cannot (until the record is ` +
            'written: tried again at every reconciler pass)',
        );
        return e;
      },
    );
    this.scopeWrites?.push(outcome);
    return outcome.then((e) => e === undefined);
  }

  /** A host change the record could not be written for (a full or read-only state dir): written later. */
  private hostChangesPending = false;

  /**
   * Write the host-changes record if a change was not recorded when it was made (its disk refused writes or
   * did not answer): called at every reconciler pass (never waits: the write runs off the event loop, bounded);
   * once the disk takes writes, the record holds every change and that is logged. Quiet (nothing logged) while
   * nothing is pending or the disk still refuses; a disk not answering is in {@link warnings}.
   */
  saveHostChangesPending(): void {
    if (!this.hostChangesPending || !this.record || this.keepAside || this.record.notAnswering() !== undefined) {
      return;
    }
    this.record.write(this.recordText()).then(
      () => {
        if (!this.hostChangesPending) return;
        this.hostChangesPending = false;
        this.log?.info(
          { file: this.hostChangesFile, gro: this.groChanges.length, offloads: this.offloadChanges.length },
          `host changes not recorded earlier (the disk refused writes) are now recorded in ${this.hostChangesFile}`,
        );
      },
      () => {
        // still refused: said when the change was made; tried again next pass
      },
    );
  }

  /** Write the host-changes record again (its state directory was removed and made again). */
  rewriteHostChanges(): void {
    void this.saveHostChanges(undefined, 'the device settings this daemon changed were');
  }

  /**
   * At a stop: whether the record's disk answers a write within `boundMs` (the record written again, as this
   * daemon holds it, when there is one and the disk has not confirmed that content yet; nothing written without
   * a record). Not answering is logged: the stop
   * could not write the record, and leaves what else it would write there (the store's checkpoint) to the next
   * start. A disk that refuses the write (full, read-only) answers.
   */
  async recordAnswers(boundMs: number, stopBoundMs = boundMs): Promise<boolean> {
    const file = this.hostChangesFile;
    if (!this.record || !file || this.keepAside) return true;
    if (!existsSync(file) && !this.groChanges.length && !this.offloadChanges.length) return true;
    // Already on disk as this daemon holds it (the cleanup's write, confirmed): not written again.
    if (!this.record.busy() && this.record.confirmed === this.recordText()) return true;
    try {
      await this.record.write(this.recordText(), boundMs);
      this.hostChangesPending = false;
      return true;
    } catch (e) {
      if (!(e instanceof RecordNotAnswering)) return true;
      this.log?.error(
        { err: e, file, boundMs: stopBoundMs },
        `stop: host-changes record ${file}: the disk did not complete a write within the stop's ` +
          `${stopBoundMs / 1000} s (not answering) (pending since ${new Date(e.since).toISOString()}): it could not ` +
          'be written; it holds what it held before (what the stop and the changes since did to device settings is ' +
          `not recorded: a next start that finds ${file}.tmp says the record may not be current, and leaves what ` +
          'it lists as found)',
      );
      return false;
    }
  }

  strayAttachments(): StrayAttachment[] {
    return this.dp.ownElsewhere();
  }

  movedTo(ifname: string, mac: string): string | undefined {
    const d = movedDevice(ifname, mac);
    if (!d) return undefined;
    const ns = netnsOf(d.nsid);
    const where = ns?.name
      ? `network namespace ${ns.name}`
      : `the unnamed network namespace with nsid ${d.nsid}${ns ? ` (${ns.path})` : ''}`;
    return `${where} (ifindex ${d.ifindex} there)`;
  }

  /**
   * Detach our program from a device that was moved to another network namespace (from inside that
   * namespace: netns.ts), and turn back on there the offloads we turned off on it for XDP (a named
   * namespace: the record names the device by name and ifindex). Never throws: what was not done is said.
   */
  async removeStray(s: StrayAttachment): Promise<StrayRemoval> {
    const ns = netnsOf(s.nsid);
    const where = ns?.name
      ? `network namespace ${ns.name}`
      : `the unnamed network namespace with nsid ${s.nsid}${ns ? ` (${ns.path})` : ''}`;
    const command = detachCommand(ns, s.nsid, s.ifname, s.mode);
    if (!ns) {
      return {
        where,
        detached: false,
        restored: [],
        error: 'no process of that namespace is visible to enter it',
        command,
      };
    }
    try {
      await detachXdpIn(ns, s.ifname, s.mode);
    } catch (e) {
      return { where, detached: false, restored: [], error: (e as Error).message, command };
    }
    this.log?.info({ ifname: s.ifname, ifindex: s.ifindex, nsid: s.nsid, netns: ns.name ?? ns.path }, 'detached');
    const restored: string[] = [];
    const failed: string[] = [];
    // Records of this namespace's devices (not of a veth peer in an unnamed namespace: recorded without a name
    // too, by that namespace's id).
    const ours = netnsId();
    const mine = this.offloadChanges.filter(
      (c) =>
        !unconfirmed(c) &&
        c.netns === undefined &&
        c.ifindex === s.ifindex &&
        (c.netnsId === undefined || c.netnsId === ours),
    );
    for (const c of mine) {
      if (!ns.name) {
        failed.push(
          `${c.features.join(', ')} left off (an unnamed namespace: ethtool -K ${s.ifname} ... on, from inside it)`,
        );
        continue;
      }
      try {
        // Found by the kernel's own account (our device, with its ifindex, in that namespace now): the record's
        // namespace id is this namespace's, not that one's.
        const { netnsId: _ours, ...rest } = c;
        restored.push(await restoreOffloads({ ...rest, ifname: s.ifname, netns: ns.name, ifindex: s.ifindex }));
        this.offloadChanges.splice(this.offloadChanges.indexOf(c), 1);
      } catch (e) {
        failed.push(`turn ${c.features.join(', ')} on again: ${(e as Error).message}`);
      }
    }
    if (mine.length) await this.saveHostChanges();
    return { where, detached: true, restored, ...(failed.length ? { error: failed.join('; ') } : {}) };
  }

  /**
   * --cleanup-on-exit: detach our program from every interface (uppers
   * before lowers) and put back every device setting we changed. Returns
   * what could not be undone. The record's write waits at most `recordBoundMs`
   * (the stop's bound; RECORD_WRITE_TIMEOUT_MS when not given).
   */
  async cleanupHost(
    recordBoundMs?: number,
  ): Promise<{ detached: string[]; restored: string[]; failed: string[]; leftAlone: string[] }> {
    const d = this.dp.detachEverywhere();
    const restored: string[] = [];
    /** Recorded devices that are gone, not found, or were replaced by another with the same ifindex. */
    const leftAlone: string[] = [];
    const put = (line: string) =>
      (/: (gone|not found|replaced by another device)\b/.test(line) ? leftAlone : restored).push(line);
    const failed = d.failed.map((f) => `detach ${f.ifname}: ${f.error}`);
    // And from devices moved to other namespaces while they ran it.
    for (const s of this.strayAttachments()) {
      const r = await this.removeStray(s);
      if (r.detached) d.detached.push(`${s.ifname} in ${r.where}`);
      else failed.push(`detach ${s.ifname} in ${r.where}: ${r.error}; left attached there (${r.command})`);
      restored.push(...r.restored.map((x) => `${s.ifname} in ${r.where}: ${x}`));
      if (r.detached && r.error) failed.push(`${s.ifname} in ${r.where}: ${r.error}`);
    }
    // Every recorded change, GRO's first, each list taken whole when its turn comes.
    const recorded = { gro: this.groChanges, offloads: this.offloadChanges };
    for (const kind of ['gro', 'offloads'] as const) {
      for (const change of recorded[kind].splice(0)) {
        const r = { kind, change } as HostRecord;
        const where = whereOf(change);
        if (unconfirmed(change)) {
          // Not known to be this daemon's (or an earlier one's) doing: left as found, and out of the record.
          leftAlone.push(
            `${where}: ${r.kind === 'gro' ? 'GRO' : r.change.features.join(', ')} left as found (the host-changes ` +
              'record listing it may not be current: its last write was never confirmed)',
          );
          continue;
        }
        try {
          put(`${where}: ${await undoRecord(r)}`);
        } catch (e) {
          // Not undone (a namespace it may not enter, a command that failed): the record stays, for a later run.
          failed.push(
            e instanceof NamespaceUnreachable
              ? `${where}: ${e.message}`
              : `${r.kind === 'gro' ? 'restore GRO' : `turn ${r.change.features.join(', ')} on again`} on ${where}: ` +
                  (e as Error).message,
          );
          if (r.kind === 'gro') this.groChanges.push(r.change);
          else this.offloadChanges.push(r.change);
        }
      }
    }
    // Within the stop's bound on the state directory's writes (a disk that does not answer: said, not waited for).
    // Quiet: the stop's own write of the record follows, and says whether the disk took it (recordAnswers).
    await this.saveHostChanges(undefined, undefined, recordBoundMs, recordBoundMs !== undefined);
    return { detached: d.detached, restored, failed, leftAlone };
  }

  get capacity() {
    return this.dp.capacity;
  }

  get progId(): number {
    return this.dp.progId;
  }

  get pinRoot(): string {
    return this.dp.options.pinRoot;
  }

  lookupInterface(name: string): InterfaceInfo | undefined {
    try {
      const a = interfaceAddress(name);
      // The kernel resolves an alternative name (`ip link property add dev X altname Y`) to its device too. A
      // device is managed under its name only (a rule or link given an altname names the device: the
      // controller's byDeviceName), so an altname is no interface of its own here: two names of one device
      // managed as two interfaces detached our program from under the other name's rules.
      if (nameOf(a.ifindex) !== name) return undefined;
      return { name, ifindex: a.ifindex, mac: a.mac };
    } catch (e) {
      if (e instanceof KernelError && e.kind === 'not-found') return undefined;
      throw e;
    }
  }

  nonUtf8Interfaces(): NonUtf8Interface[] {
    return nonUtf8Links().map((l) => ({ ifindex: l.ifindex, bytes: l.bytes, name: nameText(l.bytes) }));
  }

  deviceName(name: string): { name: string; ifindex: number } | undefined {
    try {
      const ifindex = ifindexOf(name);
      const dev = nameOf(ifindex);
      return dev === undefined ? undefined : { name: dev, ifindex };
    } catch {
      return undefined;
    }
  }

  /**
   * The last neighbour entry read per "ip@iface" (neighbourMac, neighbourMacs, neighbourTable), with when and
   * the ifindex the name had at that read: what verifyNeighbour decides on, and the device every fact below is
   * looked up by for that name (a name can move to another device: two egresses renamed the other's way).
   */
  private readonly neighbourSeen = new Map<string, { entry: NeighbourEntry; at: number; ifindex: number }>();
  /** When each neighbour ("ip#ifindex") was last set to NUD_PROBE by verifyNeighbour (ms, monotonic: core/clock.ts). */
  private readonly reprobed = new Map<string, number>();

  /** Entries ("ip#ifindex") seen FAILED and not seen with a MAC since ({@link neighbourMissing}). */
  private readonly neighbourFailed = new Set<string>();

  /**
   * What answered ARP requests of our own, read off the wire (arp.ts), by DEVICE ("ip#ifindex", never the
   * interface's name: a name that now names another device must not inherit what answered on the old one):
   * each MAC that answered, and when (ms, monotonic: core/clock.ts). A MAC is taken out when a later request of ours to it
   * went unanswered (arp.ts ARP_TRIES of them). A neighbour entry, whatever its state, never puts a MAC here:
   * any tool can write one.
   */
  private readonly wire = new Map<string, Map<string, number>>();
  /**
   * The MACs whose last ARP request of ours went unanswered ("ip#ifindex/mac" -> when found silent; ms, monotonic),
   * until they answer again ({@link neighbourMacAnswers}: asked and silent, not merely never asked).
   */
  private readonly silent = new Map<string, number>();
  /** When anything last answered an ARP request of ours for "ip#ifindex" (kept when that MAC is dropped from {@link wire}). */
  private readonly answeredAt = new Map<string, number>();
  /** When each "ip#ifindex/mac" was last asked on the wire (ms, monotonic: core/clock.ts): at most once per {@link ASK_EVERY_MS}. */
  private readonly asked = new Map<string, number>();
  private arpProber?: ArpProber;
  /** Broadcasts for "ip#ifindex" nobody answered, in a row, and how long until the next one (ms). */
  private readonly broadcastSilent = new Map<string, { n: number; wait: number }>();
  /** Called when a MAC answered that had not (a reconciler pass acts on it at once); set by the daemon. */
  onNeighbourAnswer?: () => void;
  /** The checks of MACs that answered before, this second: [second, count] ({@link CHECKS_PER_S}). */
  private checks: [number, number] = [0, 0];

  /** The addresses whose claims are recorded ({@link claims}), by device: "ip#ifindex" (added when asked). */
  private readonly claimWatch = new Set<string>();
  /**
   * Who claimed each asked address on the wire (arp.ts ArpClaim: an ARP packet from that MAC with that sender
   * IP, an answer to us or not), by device ("ip#ifindex"): each MAC's claims in a row ({@link neighbourConflict}).
   */
  private readonly claims = new Map<string, Map<string, ClaimRun>>();

  private get arp(): ArpProber {
    this.arpProber ??= new ArpProber(
      (a) => {
        // The device it was asked on and answered on (the ifindex: arp.ts matches replies by it).
        const key = `${a.question.ip}#${a.question.ifindex}`;
        let m = this.wire.get(key);
        if (!m) {
          if (this.wire.size > 65536) this.wire.clear();
          this.wire.set(key, (m = new Map()));
        }
        this.broadcastSilent.delete(key);
        if (this.answeredAt.size > 65536) this.answeredAt.clear();
        // When it arrived (the kernel's receive time), not when a lagging loop got to it.
        this.answeredAt.set(key, a.at);
        const fresh = !m.has(a.mac);
        m.set(a.mac, Math.max(a.at, m.get(a.mac) ?? 0));
        this.silent.delete(`${key}/${a.mac}`);
        if (fresh) this.onNeighbourAnswer?.();
      },
      (q) => {
        // Asked, never answered: that MAC does not answer for the address (any more). Who does now: asked by
        // broadcast (the host's reply reaches the kernel too, which takes its MAC into the entry; a new MAC that
        // answers runs a pass at once, the next periodic pass says the silent one is no longer confirmed).
        const key = `${q.ip}#${q.ifindex}`;
        if (q.mac === '') {
          const n = (this.broadcastSilent.get(key)?.n ?? 0) + 1;
          if (this.broadcastSilent.size > 65536) this.broadcastSilent.clear();
          this.broadcastSilent.set(key, { n, wait: Math.min(ASK_EVERY_MS * 2 ** n, ASK_BROADCAST_MAX_MS) });
          return;
        }
        const was = this.wire.get(key)?.delete(q.mac);
        if (this.silent.size > 65536) this.silent.clear();
        this.silent.set(`${key}/${q.mac}`, monotonicMs());
        // Whoever has it on that device (by its name now: asked only while the name still names it).
        if (this.deviceOf(q.ip, q.iface) === q.ifindex) this.askOn(q.ip, q.iface, '');
        // A MAC that answered no longer does: a pass acts on it at once (a hold waiting for it to fall silent).
        if (was) this.onNeighbourAnswer?.();
      },
      monotonicMs,
      (c) => {
        const key = `${c.ip}#${c.ifindex}`;
        if (!this.claimWatch.has(key)) return;
        let m = this.claims.get(key);
        if (!m) {
          if (this.claims.size > 65536) this.claims.clear();
          this.claims.set(key, (m = new Map()));
        }
        if (m.size > 64) m.clear();
        noteClaim(m, c.mac, c.at);
      },
      (u) => {
        // Whether the host answered cannot be told (the daemon's loop lagged past the window, the socket dropped
        // frames, a request could not be sent): nothing concluded, what answered before stands; asked again at
        // the next check.
        this.log?.debug(
          { backend: u.question.ip, ifindex: u.question.ifindex, mac: u.question.mac || 'broadcast', why: u.why },
          `ARP request for ${u.question.ip}: cannot tell whether it was answered (${u.why})`,
        );
      },
    );
    return this.arpProber;
  }

  /**
   * The device (ifindex) `iface` named when the neighbour entry of `ip` on it was last read (in the same pass as
   * the caller's facts), else the one it names now; undefined: none.
   */
  private deviceOf(ip: string, iface: string): number | undefined {
    const seen = this.neighbourSeen.get(`${ip}@${iface}`);
    if (seen) return seen.ifindex;
    return this.ifindexThisTurn(iface);
  }

  /**
   * The ifindex `iface` names (undefined: none), read once per turn of the event loop ({@link hopTurn}): the
   * same for every backend behind it that a pass or a change asks about in that turn.
   */
  private ifindexThisTurn(iface: string): number | undefined {
    const turn = this.hopTurn();
    let ifindex = turn.ifindex.get(iface);
    if (ifindex === undefined) {
      try {
        ifindex = ifindexOf(iface);
      } catch {
        ifindex = -1;
      }
      turn.ifindex.set(iface, ifindex);
    }
    return ifindex < 0 ? undefined : ifindex;
  }

  /** What answered for `ip` on the device `iface` names ({@link deviceOf}): MAC -> when. */
  private answeredOn(ip: string, iface: string): Map<string, number> | undefined {
    const ifindex = this.deviceOf(ip, iface);
    return ifindex === undefined ? undefined : this.wire.get(`${ip}#${ifindex}`);
  }

  /** Every neighbour entry read (key "ip#ifindex"): whether it failed ({@link neighbourMissing}). */
  private noteNeighbour(key: string, entry: NeighbourEntry): void {
    if (entry.states.includes('FAILED')) {
      if (this.neighbourFailed.size > 65536) this.neighbourFailed.clear();
      this.neighbourFailed.add(key);
    } else if (entry.mac) this.neighbourFailed.delete(key);
  }

  /**
   * The MAC that answered an ARP request of ours for `ip` on `iface` (arp.ts: a reply seen on the wire): the
   * entry's own MAC when it did, else the one that answered last; undefined when none did.
   */
  neighbourAnswered(backend: string, iface: string): string | undefined {
    this.noteInterest(`${backend}@${iface}`);
    const ip = this.nextHop(backend, iface);
    const m = this.answeredOn(ip, iface);
    if (!m?.size) return undefined;
    const entry = this.neighbourSeen.get(`${ip}@${iface}`)?.entry.mac;
    if (entry && m.has(entry)) return entry;
    let last: [string, number] | undefined;
    for (const [mac, at] of m) if (!last || at > last[1]) last = [mac, at];
    return last?.[0];
  }

  neighbourAnswerAge(backend: string, iface: string, mac: string): number | undefined {
    const ip = this.nextHop(backend, iface);
    const at = this.answeredOn(ip, iface)?.get(mac.toLowerCase());
    return at ? Math.max(0, monotonicMs() - at) : undefined;
  }

  /**
   * What ARP requests of ours for `ip` on the device `iface` names found: of `mac`, 'answers' (it answered one
   * within NEIGHBOUR_HOLD_MS, none to it unanswered since) or 'silent' (the last one to it went unanswered),
   * undefined when not asked (lately); `others`, the other MACs that answered one within CONFLICT_MS, none to them
   * unanswered since.
   */
  neighbourAnswers(backend: string, iface: string, mac: string): { own?: 'answers' | 'silent'; others: string[] } {
    // Nothing of ours was answered or found silent anywhere: the same answer without the next hop's route and
    // device reads (asked for every static-MAC backend in every pass and change: 10 000 route reads a pass).
    if (this.wire.size === 0 && this.silent.size === 0) return { others: [] };
    const ip = this.nextHop(backend, iface);
    const ifindex = this.deviceOf(ip, iface);
    if (ifindex === undefined) return { others: [] };
    const key = `${ip}#${ifindex}`;
    const m = mac.toLowerCase();
    const t = monotonicMs();
    const wire = this.wire.get(key);
    const at = wire?.get(m);
    const own =
      at !== undefined && t - at <= NEIGHBOUR_HOLD_MS
        ? 'answers'
        : this.silent.has(`${key}/${m}`)
          ? 'silent'
          : undefined;
    const others: string[] = [];
    for (const [x, when] of wire ?? []) if (x !== m && t - when <= CONFLICT_MS) others.push(x);
    return { own, others: others.sort() };
  }

  /**
   * The MACs that claim `ip` on the device `iface` names at once (an address conflict, RFC 5227:
   * core/neighbour-hold.ts conflictingMacs, from every ARP packet read whose sender IP is `ip`, while it is
   * asked); undefined: none.
   */
  neighbourConflict(backend: string, iface: string): string[] | undefined {
    const ip = this.nextHop(backend, iface);
    const ifindex = this.deviceOf(ip, iface);
    const m = ifindex === undefined ? undefined : this.claims.get(`${ip}#${ifindex}`);
    return m ? conflictingMacs(m, monotonicMs()) : undefined;
  }

  /**
   * `mac` '' asks whoever has `ip` (broadcast). `now`: whatever the rate limit says, its requests
   * arp.ts ARP_RETRY_SOON_MS apart (a hold that must know at once whether its kept MAC still answers); a
   * question still outstanding is not asked twice either way.
   */
  askNeighbour(backend: string, iface: string, mac: string, now = false): boolean {
    return this.askOn(this.nextHop(backend, iface), iface, mac, now);
  }

  /** {@link askNeighbour} for the address asked itself (a next hop already: {@link nextHop}). */
  private askOn(ip: string, iface: string, mac: string, now = false): boolean {
    const turn = this.hopTurn();
    let own = turn.own.get(iface);
    if (own === undefined) {
      try {
        own = interfaceAddress(iface);
      } catch {
        own = null;
      }
      turn.own.set(iface, own);
    }
    if (!own) return false; // gone: the next pass says so
    // Rate and back-off per device: the name's previous device's silence says nothing of this one.
    const k = `${ip}#${own.ifindex}/${mac.toLowerCase()}`;
    const t = monotonicMs();
    // Less a little: the passes that ask come once a second, give or take the timer's jitter.
    const every = (mac === '' && this.broadcastSilent.get(`${ip}#${own.ifindex}`)?.wait) || ASK_EVERY_MS;
    if (!now && t - (this.asked.get(k) ?? 0) < every - 100) return false;
    if (this.asked.size > 65536) this.asked.clear();
    this.asked.set(k, t);
    if (this.claimWatch.size > 65536) this.claimWatch.clear();
    this.claimWatch.add(`${ip}#${own.ifindex}`);
    // A bridge port has no address of its own: the sender IP is its master's, and the replies are delivered on
    // the master (arp.ts ArpQuestion.rx), whose table holds the port's neighbours. Read once per egress per turn
    // (the same for every backend behind it), the host's addresses once per turn.
    let port = turn.master.get(iface);
    if (port === undefined) {
      const master = masterOf(iface);
      let rx: number | undefined;
      try {
        rx = master === undefined ? undefined : ifindexOf(master);
      } catch {
        rx = undefined;
      }
      port = { master, rx };
      turn.master.set(iface, port);
    }
    const { master, rx } = port;
    turn.addrs ??= networkInterfaces();
    const sender = arpSenderIp(ip, turn.addrs[rx === undefined ? iface : master!]);
    const q = { ip, iface, ifindex: own.ifindex, mac: mac.toLowerCase(), sender, ...(rx === undefined ? {} : { rx }) };
    const sent = this.arp.ask(q, own.mac, now);
    if (!sent && this.arp.lastError && this.arpError !== this.arp.lastError) {
      this.arpError = this.arp.lastError;
      const said = arpSendFailure(this.arpError, ip, iface);
      this.log?.[said.level]({ err: this.arpError, ...(said.local ? { interface: iface } : {}) }, said.text);
    }
    return sent;
  }
  private arpError?: string;
  private canSendArp?: boolean;

  arpUnavailable(): string | undefined {
    this.canSendArp ??= checkOwnCapabilities().canSendArp;
    if (!this.canSendArp) return 'no CAP_NET_RAW to send ARP requests';
    if (this.arpProber?.denied) return `no permission to send ARP requests (${this.arpProber.lastError})`;
    return undefined;
  }

  /** Stop the slot watcher, close the ARP socket and the link event socket (daemon stop). */
  closeSockets(): void {
    this.slotWatch?.close();
    this.arpProber?.close();
    this.linkEvents.close();
  }

  async neighbourMac(backend: string, iface: string): Promise<string | undefined> {
    const ifindex = ifindexOf(iface); // ENODEV (kind not-found) when it is gone, as neighbourEntry's
    this.noteInterest(`${backend}@${iface}`);
    const ip = this.nextHop(backend, iface);
    const eg = this.egressView(iface);
    const kernel = await neighbourEntry(ip, eg?.dev.name ?? iface);
    const entry = (eg
      ? this.neighbourView(ip, iface, eg, kernel.mac || kernel.states.length ? kernel : undefined, hostAddresses())
      : kernel) ?? {
      mac: undefined,
      states: [],
    };
    if (this.neighbourSeen.size > 65536) this.neighbourSeen.clear();
    this.neighbourSeen.set(`${ip}@${iface}`, { entry, at: monotonicMs(), ifindex });
    this.noteNeighbour(`${ip}#${ifindex}`, entry);
    return entry.mac;
  }

  /**
   * Many backends' neighbour entries in one read (one RTM_GETNEIGH dump, no process forked): each answered
   * as {@link neighbourMac} answers it, and recorded as it records it (an absent entry as an entry without MAC
   * or state). An egress that no longer resolves after the dump is in `gone` (deleted, renamed away: what
   * `ip neigh show dev` said with "Cannot find device"); a name now on another device reads that device's.
   * Throws when the table cannot be read. `whole`: the whole table of the same dump in `table` too, keyed and
   * recorded as {@link neighbourTable} does (each device's name as it is right after the dump).
   */
  async neighbourMacs(
    wanted: readonly { ip: string; iface: string }[],
    whole = false,
  ): Promise<{ macs: Map<string, string | undefined>; gone: Set<string>; table?: Map<string, NeighbourEntry> }> {
    const table = neighbourTableByIndex();
    const t = monotonicMs();
    const index = new Map<string, number | undefined>();
    const gone = new Set<string>();
    const macs = new Map<string, string | undefined>();
    const views = new Map<string, EgressView | undefined>();
    let addrs: HostAddresses | undefined;
    if (this.neighbourSeen.size + wanted.length + (whole ? table.size : 0) > 65536) this.neighbourSeen.clear();
    for (const { ip: backend, iface } of wanted) {
      if (!index.has(iface)) {
        try {
          index.set(iface, ifindexOf(iface));
        } catch (e) {
          if (!(e instanceof KernelError && e.kind === 'not-found')) throw e;
          index.set(iface, undefined);
        }
      }
      const ifindex = index.get(iface);
      if (ifindex === undefined) {
        gone.add(iface);
        continue;
      }
      this.noteInterest(`${backend}@${iface}`);
      // The address whose entry is the backend's MAC: its own, or its gateway's on the egress (nextHop).
      const ip = this.nextHop(backend, iface);
      const key = `${ip}@${iface}`;
      if (!views.has(iface)) views.set(iface, this.egressView(iface));
      const eg = views.get(iface);
      addrs ??= hostAddresses();
      const entry = (eg
        ? this.neighbourView(ip, iface, eg, table.get(`${ip}#${eg.dev.ifindex}`), addrs)
        : table.get(`${ip}#${ifindex}`)) ?? { mac: undefined, states: [] };
      this.neighbourSeen.set(key, { entry, at: t, ifindex });
      this.noteNeighbour(`${ip}#${ifindex}`, entry);
      macs.set(`${backend}@${iface}`, entry.mac);
    }
    return whole ? { macs, gone, table: this.namedTable(table, t, views, addrs) } : { macs, gone };
  }

  /**
   * The backends' entries ("ip@iface") asked about (neighbourMacs, neighbourAnswered, verifyNeighbour,
   * probeNeighbour): the keys {@link namedTable} reads through {@link neighbourView} too.
   */
  private readonly interest = new Set<string>();

  private noteInterest(key: string): void {
    if (this.interest.has(key)) return;
    if (this.interest.size > 65536) this.interest.clear();
    this.interest.add(key);
  }

  /** The egress and the device its neighbours live on ({@link EgressView}); undefined: the egress is gone. */
  private egressView(iface: string): EgressView | undefined {
    let own: { ifindex: number };
    try {
      own = interfaceAddress(iface);
    } catch {
      return undefined;
    }
    const master = masterOf(iface);
    for (const name of master ? [master, iface] : [iface]) {
      try {
        const f = interfaceFacts(name);
        return {
          ifindex: own.ifindex,
          dev: { name, ifindex: f.ifindex, mac: f.mac, noarp: (f.flags & IFF_NOARP) !== 0 },
        };
      } catch {
        // The master went since: the egress's own.
      }
    }
    return undefined;
  }

  /**
   * The neighbour entry of `ip` behind `iface` as its backend sees it: the kernel's entry on the device the
   * egress's neighbours live on (`kernel`: its master's for a bridge port, where the kernel keeps them), unless
   * that entry says nothing of the host. Then `via` says why and the MAC is what ARP requests of ours found
   * (asked by broadcast while none answered; the MAC that answered is asked once a second by verifyNeighbour,
   * a silent one is dropped and asked for again): the egress has ARP off (NOARP: the kernel's entry holds the
   * egress's own MAC and is never asked), the entry was set `nud noarp` (never asked nor confirmed), or `ip` is
   * also an address of this host (the kernel delivers it locally and keeps no entry). An address of this
   * host's on the egress itself, or its subnet's broadcast address, is no backend's: never asked, no MAC, said
   * why. Without CAP_NET_RAW nothing of ours can ask: a hand-set entry is the kernel's as it is (followed as
   * the operator's statement; its status says it cannot be confirmed), never the egress's own MAC.
   */
  private neighbourView(
    ip: string,
    iface: string,
    eg: EgressView,
    kernel: NeighbourEntry | undefined,
    addrs: HostAddresses,
  ): NeighbourEntry | undefined {
    const dev = eg.dev.name;
    const sameMac = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
    let why: string | undefined;
    let askable = true;
    const owners = addrs.owners.get(ip);
    const bc = addrs.broadcasts.get(ip)?.find((b) => b.dev === iface || b.dev === dev);
    if (owners?.some((o) => o === iface || o === dev)) {
      why =
        `${ip} is this host's own address (on ${dev}), not a backend's: the kernel delivers it locally and no ` +
        'other host answers ARP for it there (not asked)';
      askable = false;
    } else if (bc) {
      why = `${ip} is the broadcast address of ${bc.dev}'s subnet ${bc.subnet}, not a backend's: no host answers ARP for it (not asked)`;
      askable = false;
    } else if (owners) {
      why =
        `${ip} is also an address of this host (on ${owners.join(', ')}): the kernel delivers it locally and keeps ` +
        'no neighbour entry for it (an address conflict with the backend)';
    } else if (eg.dev.noarp) {
      why =
        `${dev} has ARP off (NOARP): the kernel never asks ${ip}'s MAC` +
        (kernel?.mac
          ? ` (its neighbour entry holds ${kernel.mac}${sameMac(kernel.mac, eg.dev.mac) ? `, ${dev}'s own MAC` : ''})`
          : '');
    } else if (kernel?.states.includes('NOARP')) {
      why =
        `the neighbour entry for ${ip} on ${dev} is NOARP, set by hand: the kernel never asks nor confirms it ` +
        `(it holds ${kernel.mac ?? 'no MAC'})`;
    }
    if (!why) {
      // Only an entry the kernel gave up on (FAILED, and not resolved since: its next resolve makes it INCOMPLETE
      // again); a missing one (flushed with a bounced egress, garbage-collected) is not a failure (Facts.keptMacs).
      const k = `${ip}#${eg.ifindex}`;
      if (kernel?.states.includes('FAILED')) {
        if (this.kernelFailed.size > 65536) this.kernelFailed.clear();
        this.kernelFailed.add(k);
      } else if (kernel?.mac) this.kernelFailed.delete(k);
      if (kernel?.mac) return kernel;
      // The kernel's table full (it said so: a new entry refused): an entry evicted to make room, or one it
      // cannot make, is no word on the host, which may answer every request of ours.
      let full = this.tableFull();
      const last = this.lastAnswer(k);
      const fresh = !!last && monotonicMs() - last[1] <= NEIGHBOUR_HOLD_MS;
      if (!full && fresh && !this.kernelFailed.has(k) && (this.madeAsked.get(k) ?? 0) <= monotonicMs()) {
        // A MAC answered ours and the kernel has no entry (evicted?): asked to make one now, as the pass that
        // finds it missing does (probeNeighbour; at most once a second): a refusal (ENOBUFS) is the kernel
        // saying its table is full, heard in this read rather than the next.
        if (this.madeAsked.size > 4096) this.madeAsked.clear();
        this.madeAsked.set(k, monotonicMs() + 1000);
        this.noteTableFull(probeNeighbour(ip, dev));
        full = this.tableFull();
      }
      if (!full && !this.kernelFailed.has(k)) return kernel;
      // The kernel's entry failed (and has had no MAC since) while the host answers ARP requests of ours,
      // read off the wire by our packet socket: it sees the replies before the host's ARP input does, so an ARP
      // input filter (nftables `arp` family, arptables) that drops them for the kernel leaves its entry failing
      // while the host answers; so does another tool setting the entry `nud failed`. Or the kernel's neighbour
      // table is full (gc_thresh3 reached: entries of other interfaces or namespaces, the table is the host's):
      // the entry was evicted or cannot be made while the host answers. The answers are the evidence (at most
      // NEIGHBOUR_HOLD_MS old; a MAC asked and silent is dropped from them at once).
      if (!last || !fresh) {
        // The table full and nothing answered ours for NEIGHBOUR_HOLD_MS while we asked (a broadcast request
        // of ours unanswered, the spell at least that old): the evidence that the host does not receive, the
        // backend out, its status naming the table (a host on this same kernel cannot answer ARP either while
        // the table has no room for its entry of the asker: net/ipv4/arp.c replies only with one).
        const t = monotonicMs();
        if (full && t - full.since >= NEIGHBOUR_HOLD_MS && this.broadcastSilent.has(k)) {
          return {
            mac: undefined,
            states: ['FAILED'],
            via:
              `${TABLE_FULL}: ${this.tableSizeText(full)}; the kernel cannot hold an entry for ${ip} on ${dev}, and ` +
              `no ARP request of ours has been answered since ${new Date(wallAt(this.answeredAt.get(k) ?? full.since)).toISOString()} (asking)`,
          };
        }
        return kernel;
      }
      return {
        mac: last[0],
        states: ['REACHABLE'],
        confirmed: Math.floor(Math.max(0, monotonicMs() - last[1]) / 1000),
        via: full
          ? this.tableFullText(full, ip, dev, last[0])
          : `${KERNEL_FAILS} ${ip} on ${dev} failed (its requests unanswered as far as the kernel knows) ` +
            `while ${ip} answers ARP requests of ours from ${last[0]}: the host's ARP input may be filtered ` +
            '(nftables arp family, arptables), or another tool set the entry',
      };
    }
    if (!askable) return { mac: undefined, states: ['FAILED'], via: why };
    const cannot = this.arpUnavailable();
    if (cannot) {
      if (kernel?.mac && !sameMac(kernel.mac, eg.dev.mac)) return kernel;
      return { mac: undefined, states: ['FAILED'], via: `${why}; no ARP request of ours can be sent (${cannot})` };
    }
    const key = `${ip}#${eg.ifindex}`;
    const last = this.lastAnswer(key);
    if (last) {
      const confirmed = Math.floor(Math.max(0, monotonicMs() - last[1]) / 1000);
      return { mac: last[0], states: ['REACHABLE'], confirmed, via: why };
    }
    this.askOn(ip, iface, '');
    const silent = this.broadcastSilent.has(key);
    return {
      mac: undefined,
      states: [silent ? 'FAILED' : 'INCOMPLETE'],
      via: `${why}; asking by ARP requests of ours: ${silent ? 'no answer' : 'no answer yet'}`,
    };
  }

  /** When neighbourView may next ask the kernel to make a missing entry ("ip#ifindex"; ms, monotonic). */
  private readonly madeAsked = new Map<string, number>();

  /** The kernel's entries ("ip#ifindex" of the egress) seen FAILED and not seen with a MAC since (neighbourView). */
  private readonly kernelFailed = new Set<string>();

  /** The last read of the neighbour table's counters, and when (ms, monotonic: core/clock.ts). */
  private tableStats?: { at: number; stats: NeighbourTableStats };
  /**
   * The kernel's last word that its neighbour table is full (a new entry refused): when, and the counters read
   * when this spell of it began (said in the status, unchanged while it lasts); undefined: not seen.
   */
  private tableFullSeen?: TableFullSpell;

  /** The kernel refused a new neighbour entry of ours with ENOBUFS (probeNeighbour): its table is full. */
  private noteTableFull(errno: number | undefined): void {
    if (errno === ENOBUFS) this.tableFullSeen = this.tableFullSpell(monotonicMs());
  }

  /** The spell the kernel's word at `t` that its table is full belongs to: the current one, or a new one. */
  private tableFullSpell(t: number): TableFullSpell {
    const was = this.tableFullSeen;
    if (was && t - was.last <= TABLE_FULL_MS) return { ...was, last: t };
    if (!this.tableStats || t - this.tableStats.at >= TABLE_STATS_MS) {
      const stats = neighbourTableStats();
      if (stats) this.tableStats = { at: t, stats };
    }
    return { since: t, last: t, stats: this.tableStats?.stats };
  }

  /**
   * Whether the kernel said within {@link TABLE_FULL_MS} that its neighbour table is full: it refused a new
   * entry of ours (ENOBUFS), or its table_fulls count rose between two reads of the table's counters (read
   * here, at most every {@link TABLE_STATS_MS}). Never guessed from the entry count alone (permanent entries
   * count in it but not against gc_thresh3). Undefined: not full as far as the kernel said.
   */
  private tableFull(): TableFullSpell | undefined {
    const t = monotonicMs();
    if (!this.tableStats || t - this.tableStats.at >= TABLE_STATS_MS || t < this.tableStats.at) {
      const stats = neighbourTableStats();
      const before = this.tableStats?.stats;
      if (stats) {
        this.tableStats = { at: t, stats };
        if (before && stats.tableFulls > before.tableFulls) this.tableFullSeen = this.tableFullSpell(t);
      }
    }
    const seen = this.tableFullSeen;
    return seen && t - seen.last <= TABLE_FULL_MS ? seen : undefined;
  }

  /** The table's size and limit when the spell began ("N entries, gc_thresh3 M (...)"). */
  private tableSizeText(full: TableFullSpell): string {
    const st = full.stats ?? this.tableStats?.stats;
    return st
      ? `${st.entries} entries, gc_thresh3 ${st.thresh3} (net.ipv4.neigh.default.gc_thresh3, one table for ` +
          'every network namespace of the host)'
      : 'its size could not be read';
  }

  /** What a backend's status says of a MAC that answered ours while the kernel's table could hold no entry for it. */
  private tableFullText(full: TableFullSpell, ip: string, dev: string, mac: string): string {
    return (
      `${TABLE_FULL}: ${this.tableSizeText(full)}; the kernel has refused new neighbour entries since ` +
      `${new Date(wallAt(full.since)).toISOString()} (ENOBUFS, its table_fulls count rising) and cannot hold an entry ` +
      `for ${ip} on ${dev}: MAC from our own ARP answer (${ip} answers ARP requests of ours from ${mac})`
    );
  }

  /** The MAC that answered an ARP request of ours for "ip#ifindex" last, and when (ms, monotonic: core/clock.ts). */
  private lastAnswer(key: string): [string, number] | undefined {
    let last: [string, number] | undefined;
    for (const [mac, at] of this.wire.get(key) ?? []) if (!last || at > last[1]) last = [mac, at];
    return last;
  }

  /**
   * The next hop of each MAC-less backend ("ip@iface#ifindex"), from the kernel's routes ({@link hopOf}), while
   * they are unchanged: cleared at every route change (a route or address added, removed or changed:
   * {@link routesChanged}, from `ip monitor`) and at least every {@link HOPS_MS} (a change the monitor missed).
   */
  private readonly hops = new Map<string, { via?: string; note?: string }>();
  /** When {@link hops} was last cleared (ms, monotonic: core/clock.ts). */
  private hopsSince = 0;

  /** A route or address changed (link-monitor.ts): every next hop is looked up again. */
  routesChanged(): void {
    this.hops.clear();
    this.hopsSince = monotonicMs();
  }

  /**
   * Where the frames to the backend `ip` behind `iface` go, as the kernel would send a packet to `ip` out of
   * `iface` (RTM_GETROUTE with that output device, as `ip route get IP oif IFACE`; a bridge port's routes are
   * its master's): `via` the gateway whose MAC the backend's is when a route through the egress has one (an
   * off-link backend: the kernel would send its packets to that gateway's MAC; asking the backend's own address
   * there would only leave an INCOMPLETE entry for an address not on the link); `note` what the status says of
   * it. Without a route through the egress the kernel takes the address as on its link (as it does for any
   * packet sent out of a device without a route): so is the backend, and when the host has a route of its own
   * for it (not the default route) out of another device the note says so.
   */
  private hopOf(ip: string, iface: string): { via?: string; note?: string } {
    const t = monotonicMs();
    if (t - this.hopsSince >= HOPS_MS || t < this.hopsSince) this.routesChanged();
    const ifindex = this.ifindexThisTurn(iface);
    if (ifindex === undefined) return {};
    const turn = this.hopTurn();
    const key = `${ip}@${iface}#${ifindex}`;
    let h = this.hops.get(key);
    if (h) return h;
    h = {};
    if (!turn.egress.has(iface)) turn.egress.set(iface, this.egressView(iface));
    const eg = turn.egress.get(iface);
    if (eg) {
      const dev = eg.dev.name;
      const r = routeGet(ip, eg.dev.ifindex);
      if (r && r.type === 1 && r.gateway && r.oif === eg.dev.ifindex && r.gateway !== ip) {
        h = {
          via: r.gateway,
          note:
            `off-link: the host routes ${ip} via ${r.gateway} on ${dev}: MAC of the gateway ${r.gateway} ` +
            '(where the kernel would send its packets)',
        };
      } else if (r && r.type === 1 && r.table === 0) {
        // Said only for a route of its own (not the default route: an egress without an address of the host's,
        // whose backends the host never routes to, is an ordinary set-up).
        const p = routeGet(ip, undefined, true);
        if (p && p.type === 1 && p.prefix && p.oif !== undefined && p.oif !== eg.dev.ifindex && p.oif !== eg.ifindex) {
          const out = nameOf(p.oif) ?? `ifindex ${p.oif}`;
          h = {
            note:
              `no route to ${ip} through ${dev}: the host routes it out of ${out}` +
              `${p.gateway ? ` via ${p.gateway}` : ''}; taken as on ${dev}'s link (as the kernel takes an address ` +
              `without a route when it sends out of ${dev})`,
          };
        }
      }
    }
    if (this.hops.size > 65536) this.hops.clear();
    this.hops.set(key, h);
    return h;
  }

  /**
   * What {@link hopOf}, {@link deviceOf} and {@link askOn} read of the egresses in this turn of the event loop
   * ({@link TurnReads}), read once a turn however many backends a pass or a change asks about (one read a backend
   * before: 10 000 backends behind one egress made 10 000 ioctls and netlink requests of the same device in one
   * turn, and each ARP request of ours a read of every address of the host).
   */
  private hopReads?: TurnReads;

  private hopTurn(): TurnReads {
    if (!this.hopReads) {
      this.hopReads = { ifindex: new Map(), egress: new Map(), own: new Map(), master: new Map() };
      setImmediate(() => (this.hopReads = undefined));
    }
    return this.hopReads;
  }

  /** The address whose neighbour entry gives the MAC of the backend `ip` behind `iface` ({@link hopOf}). */
  private nextHop(ip: string, iface: string): string {
    return this.hopOf(ip, iface).via ?? ip;
  }

  neighbourRoute(ip: string, iface: string): string | undefined {
    return this.hopOf(ip, iface).note;
  }

  /** Why the MAC of `ip` behind `iface` is not the kernel's entry's (the last read's {@link neighbourView}). */
  neighbourVia(backend: string, iface: string): string | undefined {
    return this.neighbourSeen.get(`${this.nextHop(backend, iface)}@${iface}`)?.entry.via;
  }

  neighbourMissing(backend: string, iface: string): boolean {
    const ip = this.nextHop(backend, iface);
    const seen = this.neighbourSeen.get(`${ip}@${iface}`);
    const e = seen?.entry;
    // Failed since it last had a MAC: the host did not answer. Our next resolve makes the entry INCOMPLETE
    // again, which must not make a MAC the host did not answer for "kept" again.
    return !!e && !e.mac && !e.states.includes('FAILED') && !this.neighbourFailed.has(`${ip}#${seen.ifindex}`);
  }

  neighbourHandSet(backend: string, iface: string): string | undefined {
    const ip = this.nextHop(backend, iface);
    const entry = this.neighbourSeen.get(`${ip}@${iface}`)?.entry;
    const states = entry?.states ?? [];
    if (!states.includes('PERMANENT') && !states.includes('NOARP')) return undefined;
    // Its MAC answered an ARP request of ours: confirmed by the host, as any other entry's.
    if (entry?.mac && this.answeredOn(ip, iface)?.has(entry.mac)) return undefined;
    return states.join(', ');
  }

  /**
   * Verify a resolved neighbour entry the datapath uses (a backend given without MAC): when the kernel
   * has seen no confirmation of its MAC for {@link NEIGHBOUR_VERIFY_MS}, and at most once per that
   * interval, the entry is set to NUD_PROBE (netdev.ts reprobeNeighbour): the kernel asks the MAC it has,
   * and an entry nobody answers for becomes FAILED, after which the reconciler resolves it again.
   * With `unanswered` (the caller needs an answer), an entry whose MAC no ARP request of ours has had
   * answered on the wire is asked at once ({@link askNeighbour}, at most once a second) and set to NUD_PROBE
   * at once (at most once a second): what answers is read off the wire; the kernel's own probe fails a MAC
   * nobody owns. Static entries (PERMANENT, NOARP) are asked the same way (their MAC is no more evidence than
   * any other's) but never set to NUD_PROBE (that would replace the operator's entry), and entries the kernel
   * is already probing are not set to NUD_PROBE again.
   */
  verifyNeighbour(backend: string, iface: string, unanswered = false): boolean {
    this.noteInterest(`${backend}@${iface}`);
    const ip = this.nextHop(backend, iface);
    const seen = this.neighbourSeen.get(`${ip}@${iface}`);
    if (!seen?.entry.mac) return false;
    // An entry the kernel never asks (NOARP), or a MAC only ARP requests of ours found: never set to NUD_PROBE.
    const handSet = !!seen.entry.via || seen.entry.states.some((x) => x === 'PERMANENT' || x === 'NOARP');
    const key = `${ip}#${seen.ifindex}`;
    const answer = this.wire.get(key)?.get(seen.entry.mac);
    const now = unanswered && !answer;
    // A MAC that answered is asked again once a second (at most CHECKS_PER_S a second in all): it still does.
    const t0 = monotonicMs();
    let asked = false;
    if (now) asked = this.askOn(ip, iface, seen.entry.mac);
    else if (unanswered && answer && t0 - answer >= ASK_EVERY_MS / 2) {
      const second = Math.floor(t0 / 1000);
      if (this.checks[0] !== second) this.checks = [second, 0];
      if (this.checks[1] < CHECKS_PER_S && this.askOn(ip, iface, seen.entry.mac)) {
        this.checks[1]++;
        asked = true;
      }
    }
    const busy = ['PROBE', 'DELAY', 'INCOMPLETE'];
    const t = monotonicMs();
    if (seen.entry.via?.startsWith(KERNEL_FAILS) || seen.entry.via?.startsWith(TABLE_FULL)) {
      // The kernel's own entry has none (its requests unanswered as far as it knows, or its table full): asked
      // to resolve it again now and then, whose reply makes its entry the backend's again once its ARP input
      // takes replies or its table has room (a refusal, ENOBUFS, says the table is still full).
      if (t - (this.reprobed.get(key) ?? 0) < NEIGHBOUR_VERIFY_MS) return asked;
      if (this.reprobed.size > 65536) this.reprobed.clear();
      this.reprobed.set(key, t);
      this.noteTableFull(probeNeighbour(ip, masterOf(iface) ?? iface));
      return asked;
    }
    if (handSet || seen.entry.states.some((x) => busy.includes(x))) return asked;
    // `ip -s neigh` gives the age in whole seconds, rounded down: counted as up to a second older, so that
    // a probe is never later than NEIGHBOUR_VERIFY_MS plus one pass (the bound in docs/architecture.md).
    const confirmedAgo = ((seen.entry.confirmed ?? Infinity) + 1) * 1000 + (t - seen.at);
    const since = t - (this.reprobed.get(key) ?? 0);
    // An entry whose MAC no request of ours has had answered (it changed, or was never asked): at once, once
    // a second, whatever the kernel says of its age (an entry another tool wrote as REACHABLE looks confirmed).
    if (now ? since < 1000 : confirmedAgo < NEIGHBOUR_VERIFY_MS || since < NEIGHBOUR_VERIFY_MS) return asked;
    if (this.reprobed.size > 65536) this.reprobed.clear();
    this.reprobed.set(key, t);
    try {
      // A bridge port's entry is its master's (where the kernel keeps it).
      return reprobeNeighbour(ip, masterOf(iface) ?? iface) || asked;
    } catch {
      return asked; // gone or without a MAC since it was read: the next read says so
    }
  }

  /**
   * The IPv4 neighbour table in one read (netdev.ts neighbourTableByIndex, keyed here by the names the devices
   * have after it); every entry read is also what {@link verifyNeighbour} decides on, with its device. Empty
   * when it cannot be read.
   */
  async neighbourTable(): Promise<Map<string, NeighbourEntry>> {
    let byIndex: Map<string, NeighbourEntry>;
    try {
      byIndex = neighbourTableByIndex();
    } catch {
      return new Map();
    }
    if (this.neighbourSeen.size + byIndex.size > 65536) this.neighbourSeen.clear();
    return this.namedTable(byIndex, monotonicMs());
  }

  /**
   * A table read keyed "ip#ifindex" (netdev.ts neighbourTableByIndex) keyed "ip@name" for the caller by the
   * names the devices have now, each entry recorded with its device (the name's ifindex at this read).
   */
  private namedTable(
    byIndex: Map<string, NeighbourEntry>,
    t: number,
    views = new Map<string, EgressView | undefined>(),
    addrs?: HostAddresses,
  ): Map<string, NeighbourEntry> {
    const table = new Map<string, NeighbourEntry>();
    const names = new Map<number, string | undefined>();
    for (const [k, entry] of byIndex) {
      const at = k.indexOf('#');
      const ifindex = Number(k.slice(at + 1));
      if (!names.has(ifindex)) names.set(ifindex, nameOf(ifindex));
      const dev = names.get(ifindex);
      if (!dev) continue;
      const key = `${k.slice(0, at)}@${dev}`;
      table.set(key, entry);
      this.neighbourSeen.set(key, { entry, at: t, ifindex });
      this.noteNeighbour(k, entry);
    }
    // The backends' entries as they see them (neighbourView): a bridge port's on its master, a NOARP one's or
    // an address of this host's from ARP requests of ours.
    for (const key of this.interest) {
      const at = key.indexOf('@');
      const iface = key.slice(at + 1);
      if (!views.has(iface)) views.set(iface, this.egressView(iface));
      const eg = views.get(iface);
      if (!eg) continue;
      // An off-link backend's MAC is its gateway's on the egress (nextHop): the gateway's entry under its key.
      const ip = this.nextHop(key.slice(0, at), iface);
      addrs ??= hostAddresses();
      const entry = this.neighbourView(ip, iface, eg, byIndex.get(`${ip}#${eg.dev.ifindex}`), addrs);
      if (!entry) {
        table.delete(key);
        continue;
      }
      table.set(key, entry);
      this.neighbourSeen.set(`${ip}@${iface}`, { entry, at: t, ifindex: eg.ifindex });
      this.noteNeighbour(`${ip}#${eg.ifindex}`, entry);
    }
    return table;
  }

  vethPeerMac(ifname: string): PeerRead | undefined {
    const p = vethPeerMac(ifname);
    if (!p || 'unreadable' in p) return p;
    if (p.ips) return p; // the peer is in another namespace: that namespace's addresses, read with it
    // The peer is in this namespace: the addresses held here (one read per pass, whatever the egress count).
    const t = monotonicMs();
    if (!this.v4 || t - this.v4.at > 200 || t < this.v4.at) {
      this.v4 = { at: t, ips: [...hostAddresses().owners.keys()].sort() };
    }
    return { ...p, ips: this.v4.ips };
  }

  /** Why an interface runs in another mode than asked, by name#ifindex (from the last attach). */
  private readonly attachWarnings = new Map<string, string[]>();

  attach(ifname: string, mode: XdpModeName): XdpStatus {
    const r = this.dp.attach(ifname, mode);
    const key = `${ifname}#${r.ifindex}`;
    if (r.warnings.length) this.attachWarnings.set(key, r.warnings);
    else if (r.mode === mode || r.mode === 'native') this.attachWarnings.delete(key);
    return { mode: r.mode, progId: r.progId, ours: true, warnings: this.attachWarnings.get(key) ?? [] };
  }

  keepMode(ifname: string, why: string, requested: XdpModeName = 'native'): XdpStatus {
    const now = this.dp.state(ifname).mode;
    const r = this.dp.attach(ifname, now === 'native' ? 'native' : 'generic');
    const key = `${ifname}#${r.ifindex}`;
    if (this.attachWarnings.get(key)?.[0] !== why) {
      this.log?.warn({ ifname, mode: r.mode, requested, kept: true }, `${ifname}: ${why}`);
    }
    this.attachWarnings.set(key, [why]);
    return { mode: r.mode, progId: r.progId, ours: true, warnings: [why] };
  }

  detach(ifname: string, ifindex?: number): void {
    this.dp.detach(ifname, ifindex);
  }

  lowerDevices(ifname: string): string[] {
    return lowerDevices(ifname);
  }

  upperDevices(ifname: string): string[] {
    return upperDevices(ifname);
  }

  vethPeer(ifname: string): string | undefined {
    try {
      const id = linkIdentity(ifindexOf(ifname));
      if (id?.kind !== 'veth' || id.linkNetnsid !== undefined || !id.link) return undefined;
      return nameOf(id.link);
    } catch {
      return undefined; // no such interface: reported as missing elsewhere
    }
  }

  masterLink(ifname: string): { name: string; kind?: string } | undefined {
    try {
      const m = linkIdentity(ifindexOf(ifname))?.master;
      const name = m === undefined ? undefined : nameOf(m);
      if (m === undefined || name === undefined) return undefined;
      const kind = linkIdentity(m)?.kind;
      return kind === undefined ? { name } : { name, kind };
    } catch {
      return undefined; // no such interface: reported as missing elsewhere
    }
  }

  upperLinks(ifname: string): UpperLink[] {
    return upperLinks(ifname);
  }

  bridgePorts(ifname: string): string[] {
    return portsOf(ifname);
  }

  txLink(ifname: string): TxLink | undefined {
    return txLink(ifname);
  }

  vethPeerAway(ifname: string): PeerAway | undefined {
    try {
      return vethPeerAway(ifname);
    } catch {
      return undefined; // no such interface: reported as missing elsewhere
    }
  }

  vethPeerXdp(ifname: string): PeerXdp | undefined {
    let p: ReturnType<typeof vethPeerXdp>;
    try {
      p = vethPeerXdp(ifname);
    } catch {
      return undefined; // no such interface: reported as missing elsewhere
    }
    if (!p) return undefined;
    const named = <T extends { id: number }>(x: T): T & { name?: string } => {
      const name = this.dp.programName(x.id);
      return { ...x, ...(name !== undefined ? { name } : {}) };
    };
    // Ours (an ingress of this daemon on the other side) forwards what its rules and links say, passes the rest.
    const programs = p.programs.filter((x) => this.dp.identify(x.id) !== 'ours').map(named);
    // Nothing of ours is ever on tc: every filter and tcx program there is another tool's.
    const tc = p.tc && {
      filters: p.tc.filters.map((f) => ({
        kind: f.kind,
        pref: f.pref,
        protocol: f.protocol,
        programs: f.programs.map((x) => named({ id: x.id, directAction: x.directAction })),
      })),
      tcx: p.tc.tcx.map((id) => named({ id })),
    };
    // Nor in nftables: every chain on the peer's ingress is another tool's.
    const nft = p.nft?.map((c) => ({ ...c }));
    return programs.length || tc || nft
      ? { where: p.where, programs, ...(tc ? { tc } : {}), ...(nft ? { nft } : {}) }
      : undefined;
  }

  ingressHooks(ifname: string): Omit<PeerXdp, 'where' | 'programs'> | undefined {
    let h: ReturnType<typeof ingressHooks>;
    try {
      h = ingressHooks(ifname);
    } catch {
      return undefined; // no such interface: reported as missing elsewhere
    }
    if (!h) return undefined;
    const named = <T extends { id: number }>(x: T): T & { name?: string } => {
      const name = this.dp.programName(x.id);
      return { ...x, ...(name !== undefined ? { name } : {}) };
    };
    // Nothing of ours is ever on tc or in nftables.
    const tc = h.tc && {
      filters: h.tc.filters.map((f) => ({
        kind: f.kind,
        pref: f.pref,
        protocol: f.protocol,
        programs: f.programs.map((x) => named({ id: x.id, directAction: x.directAction })),
      })),
      tcx: h.tc.tcx.map((id) => named({ id })),
    };
    const nft = h.nft?.map((c) => ({ ...c }));
    return { ...(tc ? { tc } : {}), ...(nft ? { nft } : {}) };
  }

  nameOf(ifindex: number): string | undefined {
    return nameOf(ifindex);
  }

  deviceCounters(name: string): { ifindex: number; packets: bigint; carrierChanges: number } | undefined {
    try {
      // On the link event socket: every deletion reported before this read is then in linkDeletions().
      return this.linkEvents.read(name);
    } catch {
      if (!this.linkEvents.openError) return undefined;
    }
    // No link event socket (linkDeletions() says nothing was observed): read as any other device read.
    try {
      const ifindex = ifindexOf(name);
      const c = linkCounters(ifindex);
      return c && { ifindex, ...c };
    } catch {
      return undefined;
    }
  }

  linkDeletions(): { deleted: { ifindex: number; name: string }[]; lost: boolean } {
    return this.linkEvents.take();
  }
  private readonly linkEvents = new LinkEvents();

  forgetDevice(name: string): void {
    this.vethVerified.delete(name);
  }

  vethPeerMtu(ifname: string): PeerMtu | undefined {
    return vethPeerLink(ifname);
  }

  linkState(ifname: string): LinkState | undefined {
    return linkState(ifname);
  }

  /** At most one probe per neighbour per second. */
  private readonly probed = new Map<string, number>();

  probeNeighbour(backend: string, iface: string): void {
    this.noteInterest(`${backend}@${iface}`);
    // The address whose entry is the backend's MAC (nextHop): never an entry for an address not on the link.
    const ip = this.nextHop(backend, iface);
    // At most once a second per device (not per name: a name now on another device is resolved there at once).
    const key = `${ip}#${this.deviceOf(ip, iface) ?? iface}`;
    const t = monotonicMs();
    if ((this.probed.get(key) ?? 0) > t) return;
    this.probed.set(key, t + 1000);
    if (this.probed.size > 4096) this.probed.clear();
    // An entry the kernel does not resolve (neighbourView): asked by a broadcast request of ours (never when
    // it is an address of this host's on the egress or its broadcast address: `via` says so, nothing to ask).
    const via = this.neighbourSeen.get(`${ip}@${iface}`)?.entry;
    if (via?.via) {
      if (!/\(not asked\)/.test(via.via)) this.askOn(ip, iface, '');
      return;
    }
    // A bridge port's neighbours are resolved on its master (where the kernel keeps them and the replies are
    // delivered); asked by a request of ours too, whose answer is read there.
    const master = masterOf(iface);
    const errno = probeNeighbour(ip, master ?? iface);
    this.noteTableFull(errno);
    // A bridge port's; and an entry that failed: the kernel's own requests went unanswered as far as it knows,
    // but a filter on the host's ARP input (nftables arp family, arptables) drops the replies only for the
    // kernel: our packet socket reads them (neighbourView takes what answered ours). And an entry the kernel
    // could not make (ENOBUFS: its table full): it asks nothing, ours do.
    if (master || via?.states.includes('FAILED') || this.neighbourFailed.has(key) || errno === ENOBUFS)
      this.askOn(ip, iface, '');
  }

  ownAttachments(): Map<string, { ifindex: number; mode: XdpStatus['mode'] }> {
    return this.dp.ownAttachments();
  }

  /** What of the MACs an ingress takes as this host's could not be read or written, by name#ifindex. */
  private readonly macWarnings = new Map<string, string[]>();

  syncIngressMacs(ingresses: ReadonlyMap<string, number>): Map<string, string[]> {
    const want = new Map<number, Set<string>>();
    const out = new Map<string, string[]>();
    for (const [name, ifindex] of ingresses) {
      const a = acceptedMacs(name, ifindex);
      want.set(ifindex, a.macs);
      if (a.unknown.length) out.set(name, a.unknown);
    }
    let left: Map<number, string[]>;
    try {
      left = syncMacMap(this.dp.maps.ingressMacs, want, this.dp.maps.ingressMacs.info.maxEntries);
    } catch (e) {
      left = new Map();
      for (const [name, ifindex] of ingresses) {
        const macs = want.get(ifindex);
        if (!macs?.size) continue;
        out.set(name, [
          ...(out.get(name) ?? []),
          `writing the MACs it takes as this host's (${[...macs].join(', ')}) failed (${(e as Error).message}): ` +
            'frames to them may be passed to the stack, counted not_for_us',
        ]);
      }
    }
    for (const [name, ifindex] of ingresses) {
      const l = left.get(ifindex);
      if (!l) continue;
      out.set(name, [
        ...(out.get(name) ?? []),
        `${l.length} MAC(s) it takes as this host's (${l.slice(0, 8).join(', ')}${l.length > 8 ? ', ...' : ''}) ` +
          `do not fit the datapath's ${this.dp.maps.ingressMacs.info.maxEntries} entries: frames to them are ` +
          'passed to the stack, counted not_for_us',
      ]);
    }
    const keys = new Set<string>();
    for (const [name, ifindex] of ingresses) {
      const key = `${name}#${ifindex}`;
      keys.add(key);
      const w = out.get(name);
      const before = this.macWarnings.get(key);
      if (w && w.join('\n') !== before?.join('\n')) {
        this.log?.warn({ ifname: name, ifindex }, `${name}: ${w.join('; ')}`);
        this.macWarnings.set(key, w);
      } else if (!w && before) {
        this.log?.info(
          { ifname: name, ifindex },
          `${name}: every MAC it takes as this host's is known to the datapath again`,
        );
        this.macWarnings.delete(key);
      }
    }
    for (const key of this.macWarnings.keys()) if (!keys.has(key)) this.macWarnings.delete(key);
    return out;
  }

  xdpStatus(ifname: string): XdpStatus | undefined {
    try {
      const s = this.dp.state(ifname);
      const m = s.ours ? this.macWarnings.get(`${ifname}#${s.ifindex}`) : undefined;
      const g = s.ours && s.mode === 'generic' ? this.attachWarnings.get(`${ifname}#${s.ifindex}`) : undefined;
      const w = m ? [...(g ?? []), ...m] : g;
      return {
        mode: s.mode,
        progId: s.progId,
        ours: s.ours,
        ...(s.identity === 'unknown' ? { unidentified: this.dp.unidentifiedReason } : {}),
        ...(s.identity === 'foreign' ? otherDaemon(this.dp.otherDaemon(s.progId)) : {}),
        ...(s.identity === 'foreign' ? programName(this.dp.programName(s.progId)) : {}),
        warnings: w ?? [],
      };
    } catch (e) {
      if (e instanceof KernelError && e.kind === 'not-found') return undefined;
      throw e;
    }
  }

  /**
   * Veths whose peer was inspected and found able to receive, by name: trusted again without spawning the
   * peer tools while the veth is the same device, the kernel's xdp-features for it are unchanged, its peer
   * is the same and its carrier has not changed since (a veth's carrier follows its peer's up/down state),
   * for at most VETH_RECHECK_MS.
   */
  private readonly vethVerified = new Map<string, { key: string; at: number; result: RedirectTarget & { ok: true } }>();

  /** Where repairs are recorded (core/fights.ts; Dataplane.setRepairSink). */
  private repairs?: RepairSink;

  setRepairSink(sink: RepairSink): void {
    this.repairs = sink;
  }

  /**
   * Veths whose peer was seen with NAPI (verified) since the last repair of its GRO recorded: a re-announce
   * (GRO off and on) counts as a repair only then, not as the tail of the last one.
   */
  private readonly groSettled = new Set<string>();

  /**
   * Veths whose peer's GRO this daemon switched on (first or again), by name: the veth's carrier-change count
   * (IFLA_CARRIER_CHANGES, which moves when the peer goes down or up) then. A GRO lost again tells whether the
   * peer went down and up since (a repair subject of its own: core/fights.ts).
   */
  private readonly groCarrier = new Map<string, number | undefined>();

  /**
   * Whether frames redirected into `ifname` by native XDP are transmitted.
   * A device other than a veth: its xdp-features (netdev netlink family) decide: NDO_XMIT is set when the
   * driver has ndo_xdp_xmit, which a bridge never has. A veth transmits into its peer, and the peer
   * receives them only while it is up with NAPI (veth_xdp_xmit drops them otherwise): a native-mode XDP
   * program on it, or GRO switched on while it was up. Both the peer's own state (inspected with the
   * peer tools) and the kernel's NDO_XMIT must say so, because each can be wrong alone (measured with
   * traffic on 6.18): GRO switched off while the peer is down leaves NDO_XMIT set with no NAPI
   * (veth_set_features skips the update for a device that is down), and GRO switched on while it is
   * down shows "on" with no NAPI and no NDO_XMIT. With `fix`, a peer without NAPI gets GRO switched on
   * while it is up (recorded for --cleanup-on-exit), and GRO that is on without NAPI is switched off and
   * on. A verified veth is trusted again while nothing the kernel reports about it changed (ifindex,
   * xdp-features, peer, carrier-change count: one rtnetlink and one netdev request, no process), at most
   * VETH_RECHECK_MS; otherwise the peer tools run. A peer in a namespace xdpctld cannot inspect is judged
   * by the kernel's NDO_XMIT alone, and the detail says so. On kernels without xdp-features (before 6.3)
   * the peer check alone answers.
   */
  tapTxDropped(ifname: string): bigint | undefined {
    try {
      return tapTxDropped(ifindexOf(ifname));
    } catch {
      return undefined;
    }
  }

  async xdpTransmitStats(ifname: string): Promise<{ taken: bigint; dropped: bigint } | undefined> {
    try {
      return await xdpTransmitStats(ifname);
    } catch {
      return undefined;
    }
  }

  async checkIngress(
    ifname: string,
    generic: boolean,
  ): Promise<{ done: string[]; set?: string[]; unrepaired: string[]; unread?: string[]; released?: string[] }> {
    const prep = await prepareIngress(ifname, generic);
    // What this daemon had turned off on that device before (its host-changes record, same device) and found
    // on again is "done" (made again); the rest it turns off for the first time there ("set": the mode changed,
    // or the device is new), which nobody can be said to have undone.
    const done: string[] = [];
    const set: string[] = [];
    prep.changed.forEach((c) => {
      const rec = this.offloadChanges.find((x) => sameDevice(x, c) && !unconfirmed(x));
      const again = c.features.filter((f) => rec?.features.includes(f));
      const first = c.features.filter((f) => !again.includes(f));
      const where = c.netns ? `${c.ifname} in netns ${c.netns}` : c.ifname;
      if (again.length) done.push(`turned ${again.join(', ')} off on ${where}`);
      if (first.length) set.push(`turned ${first.join(', ')} off on ${where} (${offloadWhy(first)})`);
    });
    if (prep.changed.length) this.recordOffloads(prep.changed);
    const released = generic ? [] : await this.releaseGenericOffloads(ifname);
    return {
      done,
      ...(set.length ? { set } : {}),
      unrepaired: prep.unrepaired ?? [],
      ...(prep.unread?.length ? { unread: prep.unread } : {}),
      ...(released.length ? { released } : {}),
    };
  }

  /**
   * An ingress that runs our program in native mode no longer needs the segmentation offloads this daemon
   * turned off on its veth peer for generic mode (GENERIC_GSO_FEATURES; recorded in the host-changes file):
   * they are turned on again (the kernel keeps the peer's software GSO masked while our native program runs,
   * veth_fix_features, and lets it through when the program leaves) and taken out of the record. What was
   * done, for the log; nothing when there is no such record, or its device was replaced (left for
   * --cleanup-on-exit to report).
   */
  /** Features found fixed by {@link releaseGenericOffloads}, already said (once per device and set). */
  private readonly fixedReported = new Set<string>();

  private async releaseGenericOffloads(ifname: string): Promise<string[]> {
    const peer = vethPeerLink(ifname);
    if (!peer || 'unreadable' in peer) return [];
    const out: string[] = [];
    let changed = false;
    for (const rec of [...this.offloadChanges]) {
      if (unconfirmed(rec)) continue; // not known to be ours: left as found
      // By ifindex and namespace (its name may have changed since; releaseOffloads checks the rest of its identity).
      if (rec.ifindex !== peer.ifindex || rec.netns !== peer.netns) continue;
      if (rec.netns === undefined && peer.nsid !== undefined) continue; // a peer in an unnamed namespace
      const gso = rec.features.filter((f) => GENERIC_GSO_FEATURES.includes(f));
      if (!gso.length) continue;
      const where = rec.netns ? `${peer.name} in netns ${rec.netns}` : peer.name;
      let r: Awaited<ReturnType<typeof releaseOffloads>>;
      try {
        r = await releaseOffloads({ ...rec, features: gso });
      } catch (e) {
        if (e instanceof NamespaceUnreachable) continue; // kept in the record: --cleanup-on-exit says so
        this.log?.warn(
          { ifname, peer: where, features: gso, err: e },
          `${ifname} runs in native mode: turning ${gso.join(', ')} on again on its veth peer ${where} failed ` +
            '(kept in the record for --cleanup-on-exit)',
        );
        continue;
      }
      if (typeof r === 'string') continue; // gone or replaced: --cleanup-on-exit reports it
      if (r.settled.length) changed = true;
      rec.features = rec.features.filter((f) => !r.settled.includes(f));
      if (rec.features.length === 0) this.offloadChanges.splice(this.offloadChanges.indexOf(rec), 1);
      const why = `no longer needed: ${ifname} runs our program in native mode`;
      if (r.turnedOn.length) out.push(`${where}: ${r.turnedOn.join(', ')} on again (${why})`);
      const fixedKey = `${where}#${rec.ifindex}|${r.fixed.join(',')}`;
      if (r.fixed.length && !this.fixedReported.has(fixedKey)) {
        this.fixedReported.add(fixedKey);
        out.push(
          `${where}: ${r.fixed.join(', ')} left off (${why}, but the kernel does not let it be turned on while ` +
            'our native program runs; turned on again when the program leaves, by --cleanup-on-exit)',
        );
      }
    }
    if (changed) await this.saveHostChanges();
    return out;
  }

  nativeXdp(ifname: string): { supported: boolean; features: string } | undefined {
    try {
      const f = xdpFeatures(ifindexOf(ifname));
      if (f === undefined) return undefined;
      return { supported: (f & XDP_ACT.basic) !== 0n, features: xdpActNames(f).join(', ') || 'none' };
    } catch {
      return undefined;
    }
  }

  async redirectTarget(ifname: string, fix: boolean): Promise<RedirectTarget> {
    let features: bigint | undefined;
    let id: LinkIdentity | undefined;
    let ifindex: number | undefined;
    try {
      ifindex = ifindexOf(ifname);
      features = xdpFeatures(ifindex);
      id = linkIdentity(ifindex);
    } catch {
      /* no such interface, or no answer: the check below says why */
    }
    const xmit = (f: bigint | undefined) => f !== undefined && (f & XDP_ACT['ndo-xmit']) !== 0n;
    if (xmit(features) && id && id.kind !== 'veth') {
      return { ok: true, detail: `${ifname} transmits native XDP redirects (xdp-features ndo-xmit)` };
    }
    const keyOf = (f: bigint | undefined) => id && `${ifindex}/${f}/${id.link}/${id.linkNetnsid}/${id.carrierChanges}`;
    const seen = this.vethVerified.get(ifname);
    if (seen && seen.key === keyOf(features) && monotonicMs() - seen.at < VETH_RECHECK_MS) return seen.result;
    this.vethVerified.delete(ifname);

    const s = await ensureVethPeerNapi(ifname, fix);
    // The repair's subject (core/fights.ts): the device pair (a peer made again, a new container's, is another
    // device: a new count), and how GRO was lost: while the peer stayed up, or across a down and up of the peer
    // (the veth's carrier changes moved since this daemon last switched it on). The same device going down and
    // up each time is the same subject, so a loop of down, GRO off, up is a fight; a GRO switched off while up
    // and one lost across a down/up are two different undos, counted apart.
    const was = this.groCarrier.get(ifname);
    const cycled = id !== undefined && was !== undefined && id.carrierChanges !== was;
    const subject = (): RepairSubject => ({
      key: `gro|${ifindex}|${s.peerIfindex ?? s.peer}@${s.netns ?? s.nsid ?? ''}|${cycled ? 'down-up' : 'up'}`,
      what: `GRO on ${s.where ?? s.peer}, the veth peer of ${ifname}`,
      interfaces: [ifname],
    });
    if (s.fixed && s.peer && s.peerIfindex) {
      // A change to the host: said each time it is made (what, where, why), and recorded for --cleanup-on-exit.
      // Info, as "offloads set for XDP" on an ingress: a setting the datapath needs, made on purpose. GRO was
      // observed off and switched on: one repair (a fight's repairs are counted, not said one by one).
      const line = () =>
        this.log?.info(
          { ifname, peer: s.peer, netns: s.netns ?? s.nsPath, nsid: s.nsid, peerIfindex: s.peerIfindex },
          `GRO switched on on ${s.where ?? s.peer}, the veth peer of ${ifname}: ` +
            'without NAPI (no GRO, no native-mode XDP program) the kernel drops every frame redirected into it ' +
            '(--fix-veth-peers)',
        );
      const change: GroChange = { ifname: s.peer, netns: s.netns, ifindex: s.peerIfindex, ...s.peerIdentity };
      const repeated = this.groChanges.some((x) => sameDevice(x, change) && !unconfirmed(x));
      // Recorded before it is said (off the event loop, bounded: a disk not answering is said by the record).
      await this.recordGro(change, ifname);
      // A repair only when this daemon had switched it on there before (its record, same device) and found it
      // off: the first switch on a peer (a new rule's egress, a new container) undoes nobody's work.
      if (this.repairs && repeated) this.repairs.repaired(subject(), line);
      else line();
      this.groSettled.delete(ifname);
      this.groCarrier.set(ifname, id?.carrierChanges);
    }
    const have = (f: bigint | undefined) => `xdp-features: ${xdpActNames(f ?? 0n).join(', ') || 'none'}`;
    if (!s.veth) {
      if (features === undefined) return { ok: s.ok, detail: s.detail };
      return {
        ok: false,
        detail:
          `${ifname} (${s.kind ?? 'device'}) cannot transmit native XDP redirects: the kernel reports no ` +
          `ndo_xdp_xmit for it (${have(features)}), so every frame redirected to it from a native-mode ingress is ` +
          `dropped; use a veth or tap egress, or generic mode on the ingress`,
      };
    }
    const trust = (result: RedirectTarget & { ok: true }, f: bigint | undefined) => {
      const key = keyOf(f);
      if (!result.unverified && xmit(f)) this.groSettled.add(ifname);
      if (key && xmit(f)) this.vethVerified.set(ifname, { key, at: monotonicMs(), result });
      return result;
    };
    if (s.uninspectable) {
      if (!xmit(features)) {
        // Up without carrier: its peer, wherever it is, is down (a veth has carrier only while both ends are up).
        const l = linkState(ifname);
        // What the kernel says from this side, and only that: the peer's GRO may be on (switched on while the
        // peer was down, which gives it no NAPI) or off, and which one cannot be read from here. The text up
        // to its first colon is what a rule's status repeats: it names the namespace.
        return {
          ok: false,
          ...(l?.up && !l.carrier ? { waitsForPeer: true } : {}),
          detail:
            `${s.detail}; the kernel reports no ndo_xdp_xmit for ${ifname} (xdp-features ` +
            `${xdpActNames(features ?? 0n).join(', ') || 'none'}), so its peer has no NAPI and every frame ` +
            `redirected into ${ifname} in native mode would be dropped. If the peer's GRO is off, switch it on ` +
            `while the peer is up; if it is on, it was switched on while the peer was down, which gives no NAPI: ` +
            `switch it off and on again; or use generic mode on the ingress`,
        };
      }
      // Not verified: the reconciler judges it by the backends' redirect counters (core/egress-watch.ts).
      return trust(
        {
          ok: true,
          unverified: true,
          key: keyOf(features),
          detail:
            `${ifname}: the kernel reports ndo-xmit, but whether its peer has NAPI cannot be checked ` +
            `(GRO switched off while the peer was down leaves ndo-xmit set): ${s.detail}`,
        },
        features,
      );
    }
    if (!s.ok) {
      return {
        ok: false,
        detail: s.detail,
        ...(s.fixable ? { fixable: true } : {}),
        ...(s.peerDown ? { waitsForPeer: true } : {}),
      };
    }
    // The peer is up with a native program or GRO. GRO gives it NAPI only when switched on while it is up:
    // switched on while it was down, the peer comes up without NAPI (every redirected frame is dropped)
    // and the kernel, rightly, announces no ndo-xmit. Switching GRO off and on while up gives it NAPI.
    let now = s.fixed ? xdpFeatures(ifindexOf(ifname)) : features;
    if (now !== undefined && !xmit(now) && fix && s.napi === 'gro' && s.peer) {
      await reannounceVethGro(s.peer, s.netns, s.nsPath);
      // A repair of its own only when the peer had been seen with NAPI since the last one: right after our
      // own switch (above, or an earlier pass's that the kernel has not announced yet) it is the same repair.
      if (!s.fixed && this.groSettled.has(ifname)) {
        this.repairs?.repaired(subject(), () =>
          this.log?.debug({ ifname, peer: s.peer }, `GRO switched off and on again on ${s.where ?? s.peer}`),
        );
      }
      this.groSettled.delete(ifname);
      this.groCarrier.set(ifname, id?.carrierChanges);
      now = xdpFeatures(ifindexOf(ifname));
    }
    if (now === undefined || xmit(now))
      return trust({ ok: true, detail: s.detail ?? `${ifname}'s peer has NAPI` }, now);
    return {
      ok: false,
      ...(!fix && s.napi === 'gro' && s.peer ? { fixable: true } : {}),
      detail:
        `native XDP redirects into ${ifname} would be dropped: its peer ${s.peer ?? '?'} has ${s.napi === 'gro' ? 'GRO' : 'an XDP program'} ` +
        `but no NAPI (the kernel reports no ndo_xdp_xmit for ${ifname}: ${have(now)}); GRO switched on while ` +
        `the peer was down gives it none: switch it off and on again (ethtool -K ${s.peer ?? '<peer>'} gro off; ` +
        `ethtool -K ${s.peer ?? '<peer>'} gro on)`,
    };
  }

  writeRuleSlot(c: RuleSlotWrite): void {
    tables.writeRuleSlot(this.dp.maps, c);
  }

  clearRuleSlot(slot: number, srcPrefixes: { length: number; addr: Uint8Array }[], backendIds: number[]): void {
    tables.clearRuleSlot(this.dp.maps, slot, srcPrefixes, backendIds);
  }

  /** The open many-rule transaction ({@link beginMatches}). */
  private matchTxn?: tables.GenerationTxn;
  /** This daemon left the inactive generation empty (what staging finds there is another tool's: said so). */
  private inactiveClean = false;

  /**
   * The generation this daemon made active (read at the start's rebuildPortIndex, then set by each switch):
   * what rule_gen must hold between changes. Another tool's flip of rule_gen is not adopted (checkGeneration).
   */
  private madeActive?: number;

  private activeGen(): number {
    return this.matchTxn ? this.matchTxn.active : (this.madeActive ?? tables.activeGeneration(this.dp.maps));
  }

  checkGeneration(): EntryRepair | undefined {
    const want = this.activeGen();
    if (this.madeActive === undefined) return undefined;
    const now = this.dp.maps.ruleGen.get(0);
    if (now === want) return undefined;
    this.dp.maps.ruleGen.put(0, want);
    const entry = 'rule_gen (the active rule generation)';
    return {
      line: `${entry}: kernel ${now ?? 'absent'}, desired ${want}: rewritten`,
      map: 'rule_gen',
      key: '0',
      entry,
      owner: { kind: 'none' },
    };
  }

  putMatch(key: MatchKey, slot: number, index = true): void {
    const t = this.matchTxn;
    if (t) t.ports.add(key.dport);
    tables.publishMatches(this.dp.maps, [key], slot, t ? t.next : this.activeGen(), index);
  }

  deleteMatch(key: MatchKey, index = true): void {
    const t = this.matchTxn;
    tables.removeMatches(this.dp.maps, [key], t ? t.next : this.activeGen(), index);
  }

  listMatches(): [MatchKey, number][] {
    return tables.activeMatches(this.dp.maps, this.activeGen());
  }

  beginMatches(): void {
    if (this.matchTxn) throw new Error('a many-rule transaction is already open');
    // Staged from the generation this daemon made active: rule_gen flipped by another tool is put back first.
    const flipped = this.checkGeneration();
    if (flipped) this.log?.warn({ map: flipped.map, key: flipped.key }, flipped.line);
    const active = this.activeGen();
    const clean = this.inactiveClean;
    this.inactiveClean = false; // part of a copy may be there after a failure: the next transaction or start clears it
    // The transaction is open from before staging's first write: a write that fails part-way (an errno, a
    // full map) leaves part of the copy in the inactive generation, which the caller's abortMatches deletes.
    const t = tables.stageGeneration(this.dp.maps, active, (open) => (this.matchTxn = open));
    if (t.found.length) {
      // Staging reads the whole inactive generation, never trusting it: what was there is said, entry by entry.
      const who = clean
        ? 'this daemon left it empty: another tool wrote them'
        : 'left by a change this daemon did not finish cleaning up, or written by another tool';
      this.log?.warn(
        { entries: t.found.length, generation: t.next },
        `rule generation ${t.next} (inactive) held ${t.found.length} entries before a many-rule change (${who}); repaired: ${t.found.slice(0, 20).join('; ')}${t.found.length > 20 ? `; and ${t.found.length - 20} more` : ''}`,
      );
    }
  }

  commitMatches(): void {
    const t = this.matchTxn;
    if (!t) return;
    tables.switchGeneration(this.dp.maps, t); // throws: not switched, the transaction stays open for abortMatches
    this.matchTxn = undefined;
    this.madeActive = t.next;
    try {
      tables.dropGeneration(this.dp.maps, t.active, t.before, t.ports);
      this.inactiveClean = true;
    } catch (e) {
      // Switched (the change holds); the old generation's entries are not looked up. The next transaction
      // reads the whole range, the next start or full comparison deletes them.
      this.log?.warn(
        { err: e },
        `deleting the replaced rule generation ${t.active}'s match entries failed: left until the next change or start`,
      );
    }
  }

  abortMatches(): void {
    const t = this.matchTxn;
    if (!t) return;
    this.matchTxn = undefined;
    tables.dropGeneration(this.dp.maps, t.next, tables.inactiveMatches(this.dp.maps, t.active), t.ports);
    this.inactiveClean = true;
  }

  rebuildPortIndex(): StartGenerations {
    const found: [GenMatchKey, number][] = [];
    const stale = tables.rebuildPortUse(this.dp.maps, found);
    this.inactiveClean = true;
    this.madeActive = tables.activeGeneration(this.dp.maps); // what the start found and kept (the pins' truth)
    if (stale > 0) {
      this.log?.info(
        { entries: stale },
        `deleted ${stale} match entries of the inactive rule generation (a many-rule change that did not finish switching, or finished it but not its cleanup)`,
      );
    }
    return { live: this.madeActive, inactive: found.map(([k, slot]) => [tables.plainKey(k), slot]) };
  }

  async checkPortIndex(pace?: () => Promise<void>, all?: boolean): Promise<EntryRepair[]> {
    const gen = this.activeGen();
    const out = await tables.checkPortUse(this.dp.maps, pace, nameOf, all, gen);
    if (all && !this.matchTxn) {
      // Between changes the inactive generation holds nothing: its entries are leftovers (or another tool's).
      const stale = tables.inactiveMatches(this.dp.maps, gen);
      if (stale.length) {
        this.dp.maps.ruleMatch.deleteMany(stale);
        this.log?.warn(
          { entries: stale.length },
          `deleted ${stale.length} match entries of the inactive rule generation ${gen ^ 1} (not looked up; they would be after the next many-rule change)`,
        );
      }
    }
    return out;
  }

  checkInterfaceFlags(generic: ReadonlyMap<number, boolean>, links?: ReadonlyMap<number, number>): EntryRepair[] {
    return tables.checkIfFlags(this.dp.maps, generic, nameOf, links);
  }

  listSrcPrefixes(): SrcKey[] {
    return [...this.dp.maps.srcAllow.keys()];
  }

  deleteSrcPrefix(key: SrcKey): void {
    this.dp.maps.srcAllow.delete(key);
  }

  readRing(slot: number): number[] {
    return Array.from(this.dp.maps.ruleRing.getRangeU32(slot * RING_SIZE, RING_SIZE));
  }

  readRuleSlots(slots: readonly number[], visit: (slot: number, s: RuleSlotState) => void): void {
    tables.readRuleSlots(this.dp.maps, slots, visit);
  }

  differingBackends(want: readonly [number, BackendEntry][]): number[] {
    if (want.length === 0) return [];
    const m = this.dp.maps.backends;
    let lo = Infinity;
    let hi = 0;
    for (const [id] of want) {
      lo = Math.min(lo, id);
      hi = Math.max(hi, id);
    }
    // The raw bytes of the ids' range in one batch read, compared with each entry encoded (no decoding).
    const vs = backendEntry.layout.size;
    const raw = m.getRangeRaw(lo, hi - lo + 1);
    const buf = Buffer.alloc(vs);
    const out: number[] = [];
    for (const [id, e] of want) {
      backendEntry.encode(e, buf);
      if (buf.compare(raw, (id - lo) * vs, (id - lo + 1) * vs) !== 0) out.push(id);
    }
    return out;
  }

  nonEmptyBackends(lo: number, hi: number): number[] {
    if (hi < lo) return [];
    const vs = backendEntry.layout.size;
    const raw = this.dp.maps.backends.getRangeRaw(lo, hi - lo + 1);
    const out: number[] = [];
    for (let i = 0; i <= hi - lo; i++) {
      for (let b = i * vs; b < (i + 1) * vs; b++) {
        if (raw[b] !== 0) {
          out.push(lo + i);
          break;
        }
      }
    }
    return out;
  }

  backendComparer(lo: number, hi: number): (id: number, e: BackendEntry) => boolean {
    const vs = backendEntry.layout.size;
    // The raw bytes of the range in one batch read, compared with each entry encoded (no decoding).
    const raw = hi < lo ? Buffer.alloc(0) : this.dp.maps.backends.getRangeRaw(lo, hi - lo + 1);
    const buf = Buffer.alloc(vs);
    return (id, e) => {
      if (id < lo || id > hi) return false;
      backendEntry.encode(e, buf);
      return buf.compare(raw, (id - lo) * vs, (id - lo + 1) * vs) === 0;
    };
  }

  /** The watcher of rule entries, tables and backend entries (slot-watch.ts), made at the first call. */
  private slotWatch?: SlotWatch;

  watchSlots(slots: number, backends: number): MovedEntries {
    const maps = this.dp.maps;
    if (this.slotWatch && !this.slotWatch.watches(maps)) {
      this.slotWatch.close(); // maps opened again (pins replaced): a watcher of the new ones
      this.slotWatch = undefined;
    }
    // (No thread while there is no rule: nothing to read.)
    if (!this.slotWatch && slots === 0)
      return { slots: new Set(), backends: new Set(), coverMs: 0, reads: 0, readMs: 0 };
    try {
      if (!this.slotWatch) {
        const probe = join(dirname(this.dp.options.objectPath), 'xdpctl-watch.bpf.o');
        this.slotWatch = new SlotWatch(maps, probe);
        if (this.slotWatch.mode === 'told')
          this.log?.info(
            { mode: 'told' },
            'slot watcher: writes into rule_cfg, rule_ring and backends through bpf() are told by tracepoint ' +
              `programs; every slot is read every ${watchSafetyMs() / 1000} s, and every ${WATCH_PERIOD_MS} ms ` +
              'while another process maps rule_ring writable',
          );
        else this.log?.warn({ mode: 'reading', err: this.slotWatch.why }, `slot watcher: ${this.slotWatchWarning()}`);
      }
    } catch (e) {
      return { slots: new Set(), backends: new Set(), coverMs: 0, reads: 0, readMs: 0, error: (e as Error).message };
    }
    this.slotWatch.range(slots, backends);
    return this.slotWatch.take();
  }

  /** What the watcher costs when its tracepoint programs did not attach (status warnings and the log). */
  private slotWatchWarning(): string | undefined {
    const w = this.slotWatch;
    if (!w || w.mode === 'told') return undefined;
    return (
      `every rule entry, backend table and backend entry is read every ${WATCH_PERIOD_MS} ms to see other tools' ` +
      `writes (5-9% of one CPU with 10 000 rules): the tracepoint programs that tell of them did not attach: ${w.why}`
    );
  }

  rewatch(slots: number[], backends: number[]): void {
    this.slotWatch?.again(slots, backends);
  }

  readBackends(ids: readonly number[]): Map<number, BackendEntry> {
    const out = new Map<number, BackendEntry>();
    for (const id of ids) {
      const e = this.dp.maps.backends.get(id);
      if (e) out.set(id, e);
    }
    return out;
  }

  writeBackends(entries: [number, BackendEntry][]): void {
    this.dp.maps.backends.putMany(entries);
  }

  writeRing(slot: number, start: number, ids: ArrayLike<number>): void {
    tables.writeRingPart(this.dp.maps, slot, start, ids);
  }

  writeRuleCfg(slot: number, flags: number, statsId: number, srcFilter: boolean): void {
    tables.writeRuleCfg(this.dp.maps, slot, flags, statsId, srcFilter);
  }

  putSrcPrefix(key: SrcKey): void {
    this.dp.maps.srcAllow.put(key, 1);
  }

  resetRuleStats(statsId: number): void {
    tables.resetRuleStats(this.dp.maps, statsId);
  }

  resetBackendStats(statsId: number): void {
    tables.resetBackendStats(this.dp.maps, statsId);
  }

  connect(from: number, to: number): boolean {
    return tables.connectDirection(this.dp.maps, from, to);
  }

  disconnect(from: number): void {
    tables.disconnectDirection(this.dp.maps, from);
  }

  listLinks(): [number, number][] {
    return [...this.dp.maps.xcLinks.entries()];
  }

  resetLinkStats(from: number): void {
    tables.resetLinkStats(this.dp.maps, from);
  }

  readCounters(ruleStatsIds: number[], backendStatsIds: number[], linkFroms: number[]): CounterRead {
    const m = this.dp.maps;
    // Per-CPU arrays read in batches (BpfMap.getManyPerCpu): 1 000 rules of 4 backends were 5 000 lookups a read.
    const ruleRead = m.ruleStats.getManyPerCpu(ruleStatsIds);
    const backendRead = m.backendStats.getManyPerCpu(backendStatsIds);
    const rules = new Map(ruleStatsIds.map((id) => [id, sumCounters(ruleRead.get(id) ?? [])]));
    const backends = new Map(backendStatsIds.map((id) => [id, sumCounters(backendRead.get(id) ?? [])]));
    const links = tables.linkCountersMany(m, linkFroms);
    return { rules, backends, links, global: tables.globalCounters(m) };
  }
}

/** The name field of an XdpStatus, when it was read. */
function programName(name: string | undefined): { name?: string } {
  return name ? { name } : {};
}

/** The otherDaemon field of an XdpStatus, when there is something to say. */
function otherDaemon(what: string | undefined): { otherDaemon?: string } {
  return what ? { otherDaemon: what } : {};
}

/**
 * How a refused ARP request of ours is said: an errno that is the interface's own state (down, gone, its queue
 * full: ENETDOWN, ENXIO, ENODEV, ENETUNREACH, ENOBUFS) of that interface only, at info (its egress status says
 * it is down); anything else (the socket's: EPERM, EACCES, ...) as ARP requests of ours failing everywhere.
 * `error`: arp.ts ArpProber.lastError ("send an ARP request for IP on ifindex N: errno E (NAME)").
 */
export function arpSendFailure(
  error: string,
  ip: string,
  iface: string,
): { level: 'info' | 'warn'; local: boolean; text: string } {
  const local = /\((ENETDOWN|ENXIO|ENODEV|ENOBUFS|ENETUNREACH)\)/.exec(error)?.[1];
  if (!local) return { level: 'warn', local: false, text: `ARP requests of our own cannot be sent: ${error}` };
  const why =
    local === 'ENETDOWN'
      ? 'the interface is down'
      : local === 'ENOBUFS'
        ? 'its queue is full'
        : 'the interface is gone';
  return { level: 'info', local: true, text: `ARP request for ${ip} on ${iface} not sent: ${why} (${local})` };
}
