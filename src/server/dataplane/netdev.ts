/**
 * Network devices as the datapath needs them: name <-> ifindex, MAC
 * addresses, neighbour (ARP) lookups, and the veth precondition for native
 * XDP redirects (docs/kernel-notes.md, trap 3): a frame redirected by
 * native XDP into a veth is silently dropped unless the veth's peer has NAPI,
 * i.e. an XDP program or GRO enabled. Interface facts (ifindex, MAC, MTU,
 * flags, carrier) come from ioctls on a socket of the daemon's own network
 * namespace, never from /sys: under `nsenter --net=/run/netns/X` the sysfs
 * mounted at /sys still belongs to the namespace that mounted it, and would
 * give another namespace's interfaces and MACs. A device's master, the devices
 * stacked on it and its carrier come from rtnetlink (RTM_GETLINK) on a socket
 * of that namespace, for the same reason. Neighbours come from iproute2's JSON output (run in the same
 * namespace); nothing here changes a device except {@link ensureVethPeerNapi}
 * and {@link restoreGro}, which undoes it.
 */
import { closeSync, existsSync, openSync, readdirSync, readlinkSync } from 'node:fs';

import { isUtf8 } from 'node:buffer';

import koffi from 'koffi';

import { checkOwnCapabilities } from '../auth/capabilities.js';
import { runGuarded, runGuardedSync } from './children.js';
import type { PeerAway, TxLink, UpperLink } from '../core/dataplane.js';
import { KernelError } from './errors.js';
import { lastErrno } from './libbpf.js';
import {
  NETLINK_ROUTE,
  NLM_F_ACK,
  NLM_F_CREATE,
  NLM_F_REPLACE,
  nlAttr,
  nlAttrs,
  nlDump,
  nlRequest,
} from './netlink.js';
import { movedDevice, netnsOf } from './netns.js';
import { findNetns, netnsWords, unreachableNetns } from './netns-find.js';
import { nftChainMayDrop, nftIngressChains, type NftChain } from './nft-chains.js';
import { tcIngress, withNetns, type TcIngress } from './tc-filters.js';
import { nameText } from '../../shared/visible.js';

/** Every command runs as a child that cannot outlive the daemon (children.ts). */
const run = runGuarded;

/** A name the kernel can hold (IFNAMSIZ, no '/'); throws ENODEV naming it otherwise. */
function checkIfname(name: string): void {
  if (name.length === 0 || name.length > 15 || name.includes('/') || name.includes('\0')) {
    throw new KernelError(`look up interface "${name}"`, 19, [], 'not a valid interface name');
  }
}

/**
 * The ifindex of an interface in the daemon's namespace; throws ENODEV. The SIOCGIFINDEX that
 * if_nametoindex(3) asks, on the kept ioctl socket (glibc opens and closes a socket per call).
 */
export function ifindexOf(name: string): number {
  ifreq(name, SIOCGIFINDEX, `look up interface ${name}`);
  return IFR.readInt32LE(16);
}

/** The name of an ifindex, or undefined if there is no such interface (SIOCGIFNAME, as if_indextoname(3)). */
export function nameOf(ifindex: number): string | undefined {
  if (!Number.isInteger(ifindex) || ifindex <= 0 || ifindex > 0x7fffffff) return undefined;
  IFR.fill(0);
  IFR.writeInt32LE(ifindex, 16);
  if ((ioctlFn(ioctlSocket(), SIOCGIFNAME, 'uint8_t *', IFR) as number) < 0) return undefined;
  const end = IFR.indexOf(0);
  // A name that is not UTF-8 (bytes): its other bytes escaped as \xNN, not made U+FFFD (nameText).
  return nameText(IFR.subarray(0, end < 0 || end > 16 ? 16 : end));
}

/** A device of the daemon's namespace whose name is not UTF-8: no request (UTF-8 strings) can name it. */
export interface NonUtf8Link {
  ifindex: number;
  /** Its name's bytes. */
  bytes: Buffer;
}

/** The devices of the daemon's network namespace whose name is not UTF-8: one RTM_GETLINK dump (no stats). */
export function nonUtf8Links(): NonUtf8Link[] {
  const mask = Buffer.alloc(4);
  mask.writeUInt32LE(RTEXT_FILTER_SKIP_STATS);
  const out: NonUtf8Link[] = [];
  for (const m of nlDump(NETLINK_ROUTE, RTM_GETLINK, Buffer.alloc(16), nlAttr(IFLA_EXT_MASK, mask), 'list links')) {
    const raw = nlAttrs(m, 16).get(IFLA_IFNAME);
    if (!raw) continue;
    const end = raw.indexOf(0);
    const bytes = Buffer.from(raw.subarray(0, end < 0 ? raw.length : end));
    if (!isUtf8(bytes)) out.push({ ifindex: m.readInt32LE(4), bytes });
  }
  return out;
}

const libc = koffi.load('libc.so.6');
const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const ioctlFn = libc.func('int ioctl(int fd, unsigned long request, ...)');

// <linux/sockios.h>, <bits/socket.h>: the same on x86-64 and arm64.
const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SIOCGIFNAME = 0x8910;
const SIOCGIFFLAGS = 0x8913;
const SIOCGIFMTU = 0x8921;
const SIOCGIFHWADDR = 0x8927;
const SIOCGIFINDEX = 0x8933;
/** sizeof(struct ifreq): IFNAMSIZ (16) + the 24-byte union. */
const IFREQ_SIZE = 40;

/** What the kernel says about one interface of the daemon's network namespace. */
export interface InterfaceFacts {
  ifindex: number;
  /** "aa:bb:cc:dd:ee:ff" (all zeros for devices without an Ethernet address, e.g. lo). */
  mac: string;
  /** Link type of the hardware address (ARPHRD_*: 1 Ethernet, 772 loopback). */
  hwType: number;
  mtu: number;
  /** IFF_* flags (IFF_UP = 0x1, IFF_RUNNING = 0x40, ...). */
  flags: number;
}

/**
 * Index, MAC, MTU and flags of `name`, by SIOCGIF* ioctls on a socket this
 * process opened, so in the daemon's own network namespace (netdevice(7)). Throws
 * KernelError ENODEV for a missing interface.
 */
export function interfaceFacts(name: string): InterfaceFacts {
  return { ...interfaceAddress(name), ...interfaceLink(name) };
}

/** Ifindex and hardware address of `name` (two ioctls); throws ENODEV for a missing interface. */
export function interfaceAddress(name: string): Pick<InterfaceFacts, 'ifindex' | 'mac' | 'hwType'> {
  // SIOCGIFINDEX is what if_nametoindex(3) asks.
  ifreq(name, SIOCGIFINDEX, `look up interface ${name}`);
  const ifindex = IFR.readInt32LE(16);
  ifreq(name, SIOCGIFHWADDR, `read hardware address of ${name}`);
  const hwType = IFR.readUInt16LE(16);
  const mac = Array.from(IFR.subarray(18, 24), (b) => b.toString(16).padStart(2, '0')).join(':');
  return { ifindex, mac, hwType };
}

/** MTU and IFF_* flags of `name` (two ioctls); throws ENODEV for a missing interface. */
function interfaceLink(name: string): Pick<InterfaceFacts, 'mtu' | 'flags'> {
  ifreq(name, SIOCGIFMTU, `read MTU of ${name}`);
  const mtu = IFR.readInt32LE(16);
  ifreq(name, SIOCGIFFLAGS, `read flags of ${name}`);
  return { mtu, flags: IFR.readUInt16LE(16) };
}

/** One SIOCGIF* ioctl about `name`; its answer is in {@link IFR}. */
function ifreq(name: string, request: number, what: string): void {
  checkIfname(name);
  IFR.fill(0);
  IFR.write(name, 0, 15, 'utf8');
  if ((ioctlFn(ioctlSocket(), request, 'uint8_t *', IFR) as number) < 0) {
    const errno = lastErrno() || 19;
    throw new KernelError(what, errno, [], errno === 19 ? 'no such interface' : 'ioctl failed');
  }
}

/** The one struct ifreq the (synchronous) ioctls fill. */
const IFR = Buffer.alloc(IFREQ_SIZE);
let ioctlFd = -1;

/**
 * The socket interface ioctls go through, opened once (a socket and a close
 * per lookup were most of its cost: every change looks up each interface it
 * names). It belongs to the namespace the daemon runs in, as it did per call.
 */
function ioctlSocket(): number {
  if (ioctlFd < 0) {
    const fd = socketFn(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
    if (fd < 0) throw new KernelError('open a socket to read interfaces', lastErrno() || 24, [], 'socket failed');
    ioctlFd = fd;
  }
  return ioctlFd;
}

// <linux/if_link.h>, <linux/if.h>: what a device's place and link state are read from.
const IFLA_MASTER = 10;
const IFLA_OPERSTATE = 16;
const IFLA_CARRIER = 33;
/** IF_OPER_* (linux/if.h, RFC 2863): the operstates with carrier but not forwarding. */
const IF_OPER_TESTING = 4;
const IF_OPER_DORMANT = 5;

/**
 * One device of the daemon's network namespace as rtnetlink gives it (RTM_GETLINK, statistics left out):
 * what its place among the other devices and its link state are read from, in the namespace the daemon's
 * netlink socket belongs to. Never sysfs: /sys/class/net is the namespace of whoever mounted /sys (under
 * `nsenter --net=...` the host's), and a device of the same name there is another device.
 */
export interface LinkRow {
  ifindex: number;
  ifname: string;
  /** ifi_flags: IFF_* (IFF_UP 0x1, IFF_PROMISC 0x100, IFF_LOWER_UP 0x10000, ...). */
  flags: number;
  /** IFLA_INFO_KIND ("veth", "bridge", "vlan", ...); undefined for a device without one. */
  kind?: string;
  /** IFLA_MASTER: the ifindex of the bridge, bond or VRF it is enslaved to. */
  master?: number;
  /** IFLA_LINK: the device it is stacked on (vlan, macvlan), a veth's peer; in `linkNetnsid`'s namespace if set. */
  link?: number;
  linkNetnsid?: number;
  /** IFLA_CARRIER. */
  carrier?: boolean;
  /** IFLA_OPERSTATE (IF_OPER_*). */
  operstate?: number;
  /** What IFLA_INFO_DATA says of how it receives: a macvlan's or ipvlan's mode, a vlan's tag, a bridge's vlan_filtering. */
  mode?: string;
  vlan?: string;
  vlanFiltering?: boolean;
  /** IFLA_ADDRESS as "aa:bb:cc:dd:ee:ff", for a device with an Ethernet (6-byte) address. */
  mac?: string;
}

/** IFLA_MACVLAN_MODE values (linux/if_link.h MACVLAN_MODE_*). */
const MACVLAN_MODES: Record<number, string> = { 1: 'private', 2: 'vepa', 4: 'bridge', 8: 'passthru', 16: 'source' };
/** IFLA_IPVLAN_MODE values (linux/if_link.h IPVLAN_MODE_*). */
const IPVLAN_MODES: Record<number, string> = { 0: 'l2', 1: 'l3', 2: 'l3s' };

/** What IFLA_INFO_DATA (`data`) of a device of `kind` says of how it receives (LinkRow mode, vlan, vlanFiltering). */
function receiveInfo(
  kind: string | undefined,
  data: Buffer | undefined,
): Pick<LinkRow, 'mode' | 'vlan' | 'vlanFiltering'> {
  if (!data) return {};
  const d = nlAttrs(data);
  const at = (t: number, n: number) => {
    const b = d.get(t);
    return b && b.length >= n ? b : undefined;
  };
  switch (kind) {
    case 'macvlan':
    case 'macvtap': {
      const m = at(1, 4)?.readUInt32LE(0); // IFLA_MACVLAN_MODE
      return m === undefined ? {} : { mode: MACVLAN_MODES[m] ?? `mode ${m}` };
    }
    case 'ipvlan':
    case 'ipvtap': {
      const m = at(1, 2)?.readUInt16LE(0); // IFLA_IPVLAN_MODE
      return m === undefined ? {} : { mode: IPVLAN_MODES[m] ?? `mode ${m}` };
    }
    case 'vlan': {
      const id = at(1, 2)?.readUInt16LE(0); // IFLA_VLAN_ID
      const proto = at(5, 2)?.readUInt16BE(0); // IFLA_VLAN_PROTOCOL (network order)
      if (id === undefined) return {};
      return { vlan: `${proto === 0x88a8 ? '802.1ad' : '802.1Q'} ${id}` };
    }
    case 'bridge': {
      const f = at(7, 1)?.readUInt8(0); // IFLA_BR_VLAN_FILTERING
      return f === undefined ? {} : { vlanFiltering: f !== 0 };
    }
    default:
      return {};
  }
}

function linkRowOf(m: Buffer): LinkRow | undefined {
  if (m.length < 16) return undefined;
  const a = nlAttrs(m, 16);
  const info = a.get(IFLA_LINKINFO);
  const infos = info && nlAttrs(info);
  const kind = infos?.get(IFLA_INFO_KIND);
  const kindName = kind?.toString('utf8').replace(/\0+$/, '');
  const u32 = (t: number) => {
    const b = a.get(t);
    return b && b.length >= 4 ? b.readUInt32LE(0) : undefined;
  };
  const u8 = (t: number) => {
    const b = a.get(t);
    return b && b.length >= 1 ? b.readUInt8(0) : undefined;
  };
  const master = u32(IFLA_MASTER);
  const link = u32(IFLA_LINK);
  const nsid = a.get(IFLA_LINK_NETNSID);
  const carrier = u8(IFLA_CARRIER);
  const address = a.get(IFLA_ADDRESS);
  return {
    ifindex: m.readInt32LE(4),
    ifname: a.get(IFLA_IFNAME)?.toString('utf8').replace(/\0+$/, '') ?? '',
    flags: m.readUInt32LE(8),
    ...(kindName ? { kind: kindName } : {}),
    ...(master ? { master } : {}),
    ...(link ? { link } : {}),
    ...(nsid && nsid.length >= 4 ? { linkNetnsid: nsid.readInt32LE(0) } : {}),
    ...(carrier !== undefined ? { carrier: carrier !== 0 } : {}),
    ...(u8(IFLA_OPERSTATE) !== undefined ? { operstate: u8(IFLA_OPERSTATE) } : {}),
    ...receiveInfo(kindName, infos?.get(IFLA_INFO_DATA)),
    ...(address && address.length === 6 ? { mac: macText(address) } : {}),
  };
}

/** The RTM_GETLINK request header and attributes (statistics left out) for `ifindex` (0: a dump). */
function getlinkRequest(ifindex: number): { ifinfo: Buffer; attrs: Buffer } {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg: family AF_UNSPEC, index
  ifinfo.writeInt32LE(ifindex, 4);
  const mask = Buffer.alloc(4);
  mask.writeUInt32LE(RTEXT_FILTER_SKIP_STATS);
  return { ifinfo, attrs: nlAttr(IFLA_EXT_MASK, mask) };
}

/** The device `name` of the daemon's namespace (SIOCGIFINDEX, then one RTM_GETLINK); undefined when there is none. */
export function linkRowNamed(name: string): LinkRow | undefined {
  let ifindex: number;
  try {
    ifindex = ifindexOf(name);
  } catch {
    return undefined;
  }
  const { ifinfo, attrs } = getlinkRequest(ifindex);
  const body = nlRequest(NETLINK_ROUTE, RTM_GETLINK, ifinfo, attrs, `read link ${name}`);
  return body && linkRowOf(body);
}

/**
 * The dumps of the current synchronous stretch of code, by what was dumped and where ("links" of the daemon's
 * namespace, "links@NSID" and "v4@NSID" of another one): the rows read, or the error the kernel answered. Kept
 * until that code has run (a microtask drops them all), so that a pass asking about each of many interfaces
 * reads each namespace once, and the next await reads the kernel again.
 */
const stretchDumps = new Map<string, { rows: unknown } | { error: unknown }>();

/** `read()`'s result (or its error, thrown again) shared under `key` by the current synchronous stretch. */
function sharedDump<T>(key: string, read: () => T): T {
  let d = stretchDumps.get(key);
  if (!d) {
    if (stretchDumps.size === 0) queueMicrotask(() => stretchDumps.clear());
    try {
      d = { rows: read() };
    } catch (error) {
      d = { error };
    }
    stretchDumps.set(key, d);
  }
  if ('error' in d) throw d.error;
  return d.rows as T;
}

/** One RTM_GETLINK dump of the daemon's namespace, or (`nsid`) of the namespace it gives that id. */
function dumpLinks(nsid?: number): LinkRow[] {
  const { ifinfo, attrs } = getlinkRequest(0);
  const where = nsid === undefined ? attrs : Buffer.concat([attrs, nlAttr(IFLA_TARGET_NETNSID, int32(nsid))]);
  const rows: LinkRow[] = [];
  const what = nsid === undefined ? 'list the network devices' : `list the network devices of nsid ${nsid}`;
  for (const m of nlDump(NETLINK_ROUTE, RTM_GETLINK, ifinfo, where, what)) {
    const r = linkRowOf(m);
    if (r) rows.push(r);
  }
  return rows;
}

const int32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
};

/**
 * Every device of the daemon's network namespace: one RTM_GETLINK dump (what `ip -d link show` reads, no
 * process). The dump is shared by every caller until the current synchronous stretch of code ends (a
 * microtask drops it), so a pass asking about each of many interfaces dumps once, and the next await reads
 * the kernel again. Throws KernelError when the kernel refuses the dump.
 */
export function linkTable(): LinkRow[] {
  return sharedDump('links', () => dumpLinks());
}

/**
 * Every device of the namespace the daemon's gives id `nsid` (IFLA_TARGET_NETNSID: Linux >= 4.20, CAP_NET_ADMIN
 * over it, no setns), shared as {@link linkTable} is. Throws KernelError when the kernel refuses (EACCES: no
 * permission over it; EINVAL: no namespace has that id any more).
 */
export function linkTableIn(nsid: number): LinkRow[] {
  return sharedDump(`links@${nsid}`, () => dumpLinks(nsid));
}

/**
 * The IPv4 addresses held in the namespace the daemon's gives id `nsid`, sorted: one RTM_GETADDR dump with
 * IFA_TARGET_NETNSID (Linux >= 5.0), shared as {@link linkTable} is. Throws KernelError when the kernel refuses.
 */
export function addressesIn(nsid: number): string[] {
  return sharedDump(`v4@${nsid}`, () => {
    const ifa = Buffer.alloc(8); // struct ifaddrmsg: family, prefixlen, flags, scope, index
    ifa.writeUInt8(AF_INET, 0);
    const ips = new Set<string>();
    for (const m of nlDump(
      NETLINK_ROUTE,
      RTM_GETADDR,
      ifa,
      nlAttr(IFA_TARGET_NETNSID, int32(nsid)),
      `list the addresses of nsid ${nsid}`,
      { strict: true }, // IFA_TARGET_NETNSID is read only from a strict request (else: the daemon's addresses)
    )) {
      if (m.length < 8 || m.readUInt8(0) !== AF_INET) continue;
      const a = nlAttrs(m, 8);
      const addr = a.get(IFA_LOCAL) ?? a.get(IFA_ADDRESS);
      if (addr && addr.length === 4) ips.add(`${addr[0]}.${addr[1]}.${addr[2]}.${addr[3]}`);
    }
    return [...ips].sort();
  });
}

/** The names of every device of the daemon's network namespace ({@link linkTable}). */
export function linkNames(): string[] {
  return linkTable().map((r) => r.ifname);
}

/**
 * Kinds of device the kernel stacks over another one as its upper device (netdev_upper_dev_link without a
 * master: vlan, macvlan, ipvlan, macsec register_*): IFLA_LINK names the device below. A veth's or a
 * tunnel's IFLA_LINK is not that (its peer; the device it sends through).
 */
const STACKED_KINDS = new Set(['vlan', 'macvlan', 'macvtap', 'ipvlan', 'ipvtap', 'macsec']);

/**
 * Devices directly below an interface (a bridge's ports, a bond's slaves: devices whose IFLA_MASTER it is;
 * for a vlan or macvlan, the device it is stacked on), from rtnetlink in the daemon's namespace ({@link
 * linkTable}); [] when it does not exist.
 */
export function lowerDevices(name: string): string[] {
  return adjacentDevices(name, 'lower');
}

/**
 * Devices directly above `name` (its bridge or bond: its IFLA_MASTER; a vlan, macvlan... stacked on it), from
 * rtnetlink in the daemon's namespace ({@link linkTable}); [] when it does not exist.
 */
export function upperDevices(name: string): string[] {
  return adjacentDevices(name, 'upper');
}

/** This namespace's devices ({@link linkTable}) and the one named `name` among them; undefined: gone, or the dump refused. */
function linkTableWith(name: string): { rows: LinkRow[]; me: LinkRow } | undefined {
  let rows: LinkRow[];
  try {
    rows = linkTable();
  } catch {
    return undefined;
  }
  const me = rows.find((r) => r.ifname === name);
  return me && { rows, me };
}

function adjacentDevices(name: string, side: 'lower' | 'upper'): string[] {
  const t = linkTableWith(name);
  if (!t) return [];
  const { rows, me } = t;
  /** The ifindex of the device `r` is stacked on in this namespace, if it is a stacked kind. */
  const stackedOn = (r: LinkRow) =>
    STACKED_KINDS.has(r.kind ?? '') && r.linkNetnsid === undefined ? r.link : undefined;
  const out: string[] = [];
  for (const r of rows) {
    if (r === me) continue;
    const above =
      side === 'upper'
        ? r.ifindex === me.master || stackedOn(r) === me.ifindex
        : r.master === me.ifindex || stackedOn(me) === r.ifindex;
    if (above) out.push(r.ifname);
  }
  return out;
}

/** Kinds whose IFLA_LINK names a peer, not a lower device (a veth pair, a vxcan pair, a netkit pair). */
const PEER_KINDS = new Set(['veth', 'vxcan', 'netkit']);

/**
 * The devices directly above `name` in the daemon's namespace, from one rtnetlink dump ({@link linkTable}): its
 * master (IFLA_MASTER) and every device whose IFLA_LINK names it here (a vlan, macvlan, macvtap, ipvlan,
 * ipvtap, macsec, a tunnel sending through it; not a veth's peer), each with its kind and what IFLA_INFO_DATA
 * says of how it receives. [] when `name` is gone or the dump is refused. A device stacked on `name` from
 * another namespace is not in this namespace's dump, and so not here.
 */
export function upperLinks(name: string): UpperLink[] {
  const t = linkTableWith(name);
  if (!t) return [];
  const { rows, me } = t;
  const out: UpperLink[] = [];
  const of = (r: LinkRow, via: UpperLink['via']): UpperLink => ({
    name: r.ifname,
    via,
    ...(r.kind !== undefined ? { kind: r.kind } : {}),
    ...(r.mode !== undefined ? { mode: r.mode } : {}),
    ...(r.vlan !== undefined ? { vlan: r.vlan } : {}),
    ...(r.vlanFiltering !== undefined ? { vlanFiltering: r.vlanFiltering } : {}),
  });
  const master = me.master === undefined ? undefined : rows.find((r) => r.ifindex === me.master);
  if (master && master !== me) out.push(of(master, 'master'));
  for (const r of rows) {
    if (r === me || r.link !== me.ifindex || r.linkNetnsid !== undefined || PEER_KINDS.has(r.kind ?? '')) continue;
    out.push(of(r, 'stacked'));
  }
  return out;
}

/**
 * How `name` transmits ({@link TxLink}): its kind and mode, and the device it is stacked on (a vlan's, macvlan's,
 * macvtap's, ipvlan's or ipvtap's IFLA_LINK) by name when that is in the daemon's namespace, from one rtnetlink dump
 * ({@link linkTable}). Undefined when `name` is gone or the dump is refused.
 */
export function txLink(name: string): TxLink | undefined {
  const t = linkTableWith(name);
  if (!t) return undefined;
  const { rows, me } = t;
  const out: TxLink = {
    ...(me.kind !== undefined ? { kind: me.kind } : {}),
    ...(me.mode !== undefined ? { mode: me.mode } : {}),
  };
  if (STACKED_KINDS.has(me.kind ?? '') && me.link) {
    const lower = me.linkNetnsid === undefined ? rows.find((r) => r.ifindex === me.link) : undefined;
    if (lower) out.lower = lower.ifname;
    else out.lowerAway = true;
  }
  return out;
}

/**
 * A port of a bridge in another namespace in words, by what it is: "veth rb", "macvlan mv (mode bridge, on a lower
 * device in another network namespace)", "eth1" (no kind: a NIC).
 */
function portWords(r: LinkRow): string {
  if (r.kind === undefined) return r.ifname;
  const detail = [
    ...(r.mode !== undefined ? [`mode ${r.mode}`] : []),
    ...(STACKED_KINDS.has(r.kind) && r.linkNetnsid !== undefined
      ? ['on a lower device in another network namespace']
      : []),
  ];
  return `${r.kind} ${r.ifname}${detail.length ? ` (${detail.join(', ')})` : ''}`;
}

/**
 * A veth of the daemon's namespace whose peer is in another one ({@link PeerAway}): the peer in words ("eth0 in netns
 * blue") and what takes a frame it receives there at layer 2, from one RTM_GETLINK dump of that namespace by its
 * nsid (IFLA_TARGET_NETNSID: Linux >= 4.20, CAP_NET_ADMIN over it, no setns): its master, a device stacked on it
 * there (a macvlan, vlan, ...). Neither: `leadsOn` undefined (a frame ends in that namespace's stack). The dump
 * refused: `leadsOn` says it cannot be read. Undefined when `name` is not a veth or its peer is here.
 */
export function vethPeerAway(name: string): PeerAway | undefined {
  const dev = linkRowNamed(name);
  if (!dev || dev.kind !== 'veth' || dev.linkNetnsid === undefined || !dev.link) return undefined;
  const nsid = dev.linkNetnsid;
  const netns = namedNetns(nsid);
  const way = netns === undefined ? findNetns(nsid) : undefined;
  const space =
    netns !== undefined ? `netns ${netns}` : way ? netnsWords(nsid, way) : `the network namespace with nsid ${nsid}`;
  let rows: LinkRow[];
  try {
    rows = linkTableIn(nsid);
  } catch (e) {
    return { where: `ifindex ${dev.link} in ${space}`, leadsOn: `cannot be read (${(e as Error).message})` };
  }
  const peer = rows.find((r) => r.ifindex === dev.link);
  if (!peer) return { where: `ifindex ${dev.link} in ${space}`, leadsOn: 'is not in its device list (gone meanwhile)' };
  const where = `${peer.ifname} in ${space}`;
  const stackedOn = (d: LinkRow) =>
    rows.find((r) => r !== d && r.link === d.ifindex && r.linkNetnsid === undefined && !PEER_KINDS.has(r.kind ?? ''));
  const above = stackedOn(peer);
  if (above) return { where, leadsOn: `is the lower device of ${above.kind ?? 'device'} ${above.ifname} there` };
  if (peer.master === undefined) return { where };
  const master = rows.find((r) => r.ifindex === peer.master);
  if (!master || master.kind !== 'bridge') {
    const what = master ? `${master.kind ?? 'device'} ${master.ifname}` : `ifindex ${peer.master}`;
    return { where, leadsOn: `is a port of ${what} there` };
  }
  // A bridge there: what it forwards out of a port that is a veth whose peer is here is a receive on that peer (the
  // peer here is the veth of ours whose IFLA_LINK is that port, in the namespace with this nsid).
  let here: LinkRow[];
  try {
    here = linkTable();
  } catch (e) {
    return {
      where,
      leadsOn: `is a port of bridge ${master.ifname} there, and this namespace's devices cannot be read (${(e as Error).message})`,
    };
  }
  const back: { port: string; peer: string }[] = [];
  const elsewhere: string[] = [];
  for (const port of rows) {
    if (port === peer || port.master !== master.ifindex) continue;
    const mine =
      port.kind === 'veth' && port.linkNetnsid !== undefined
        ? here.find((r) => r.kind === 'veth' && r.linkNetnsid === nsid && r.link === port.ifindex)
        : undefined;
    if (mine) back.push({ port: port.ifname, peer: mine.ifname });
    else elsewhere.push(portWords(port));
  }
  const top = stackedOn(master);
  // Where what the bridge forwards out of its other ports goes is not followed there (a veth's peer there, a
  // macvlan's lower device, which may be in this namespace again, a NIC...): not known, never said as elsewhere.
  const untold = [
    ...(elsewhere.length ? [`it forwards frames out of its port(s) ${elsewhere.join(', ')}`] : []),
    ...(top ? [`${top.kind ?? 'device'} ${top.ifname} is stacked on it`] : []),
  ];
  return {
    where,
    bridge: master.ifname,
    back,
    ...(untold.length ? { leadsOn: `is a port of bridge ${master.ifname} there, where ${untold.join(' and ')}` } : {}),
  };
}

/**
 * The ports of `name` (a bridge's, a bond's: the devices whose IFLA_MASTER it is) in the daemon's namespace, from
 * one rtnetlink dump ({@link linkTable}); [] when it is gone or the dump is refused.
 */
export function portsOf(name: string): string[] {
  try {
    const rows = linkTable();
    const me = rows.find((r) => r.ifname === name);
    return me ? rows.filter((r) => r !== me && r.master === me.ifindex).map((r) => r.ifname) : [];
  } catch {
    return [];
  }
}

/**
 * The device `name` is enslaved to (a bridge or a bond: IFLA_MASTER, read in the daemon's namespace), or
 * undefined. Such a port's neighbours are the master's: the kernel routes through the master, keeps their
 * entries on it and hands every frame received on the port (ARP replies too) to the master before any
 * protocol handler sees it.
 */
export function masterOf(name: string): string | undefined {
  try {
    const m = linkRowNamed(name)?.master;
    return m ? nameOf(m) : undefined;
  } catch {
    return undefined;
  }
}

/** IFF_NOARP (linux/if.h): the kernel resolves no neighbour on the device (`ip link set DEV arp off`). */
export const IFF_NOARP = 0x80;

/** IFF_UP and IFF_RUNNING (linux/if.h; RUNNING: operationally up, i.e. carrier, RFC 2863). */
const IFF_UP = 0x1;
const IFF_RUNNING = 0x40;
/** IFF_LOWER_UP (linux/if.h): the driver signals carrier (ifi_flags only: SIOCGIFFLAGS has 16 bits). */
const IFF_LOWER_UP = 0x10000;

/**
 * Up, carrier and MTU of an interface of the daemon's namespace (ioctls); undefined when it does not exist.
 * IFF_RUNNING is "operationally up" (RFC 2863): off without carrier, and also while userspace holds the
 * device DORMANT or TESTING with carrier on. SIOCGIFFLAGS returns 16 bits (no IFF_LOWER_UP), so only then
 * one RTM_GETLINK's IFLA_CARRIER and IFLA_OPERSTATE tell the two apart (Documentation/networking/operstates.rst),
 * read in the daemon's namespace (sysfs `carrier` would be the same-named device of whoever mounted /sys).
 */
export function linkState(
  name: string,
): { up: boolean; carrier: boolean; mtu: number; operstate?: 'dormant' | 'testing' } | undefined {
  let f: Pick<InterfaceFacts, 'mtu' | 'flags'>;
  try {
    f = interfaceLink(name);
  } catch {
    return undefined;
  }
  const up = (f.flags & IFF_UP) !== 0;
  if (!up || (f.flags & IFF_RUNNING) !== 0) return { up, carrier: up, mtu: f.mtu };
  let row: LinkRow | undefined;
  try {
    row = linkRowNamed(name);
  } catch {
    row = undefined;
  }
  if (!row) return { up, carrier: false, mtu: f.mtu }; // gone meanwhile, or rtnetlink not telling: as before
  const carrier = row.carrier ?? (row.flags & IFF_LOWER_UP) !== 0;
  const oper =
    row.operstate === IF_OPER_DORMANT ? 'dormant' : row.operstate === IF_OPER_TESTING ? 'testing' : undefined;
  return { up, carrier, mtu: f.mtu, ...(carrier && oper ? { operstate: oper } : {}) };
}

/** NTF_USE (linux/neighbour.h): "use" the entry, as a packet to it would: the kernel starts resolving it. */
const NTF_USE = 0x01;

/**
 * Make the kernel resolve a neighbour, as `ip neigh replace IP dev DEV use`
 * does: one RTM_NEWNEIGH with NTF_USE (net/core/neighbour.c neigh_add calls
 * neigh_event_send): an entry in no state becomes INCOMPLETE and the kernel
 * sends its ARP requests (net.ipv4.neigh.DEV.mcast_solicit of them); an entry
 * it holds is left as it is. No process is started, and it works when the
 * interface has no address of its own. Best effort, never throws.
 */
export function probeNeighbour(ip: string, dev: string): number | undefined {
  const addr = ip.split('.').map(Number);
  if (addr.length !== 4 || addr.some((x) => !(x >= 0 && x <= 255))) return undefined;
  try {
    const ndm = Buffer.alloc(12); // struct ndmsg
    ndm.writeUInt8(AF_INET, 0);
    ndm.writeInt32LE(ifindexOf(dev), 4);
    ndm.writeUInt8(NTF_USE, 10); // ndm_flags
    nlRequest(
      NETLINK_ROUTE,
      RTM_NEWNEIGH,
      ndm,
      nlAttr(NDA_DST, Buffer.from(addr)),
      `resolve the neighbour ${ip} on ${dev}`,
      NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE,
    );
    return undefined;
  } catch (e) {
    // the device is gone, or the kernel refused: the next pass reads the table as it is. The errno is the
    // caller's evidence (ENOBUFS: the kernel could not make the entry, its neighbour table is full).
    return e instanceof KernelError ? e.errno : undefined;
  }
}

/** ENOBUFS: what the kernel answers a new neighbour entry it cannot make (net/core/neighbour.c neigh_alloc). */
export const ENOBUFS = 105;

/** The IPv4 neighbour table's (arp_cache) size, limits and overflow count, as `ip -s ntable show name arp_cache` prints them. */
export interface NeighbourTableStats {
  /** ndtc_entries: the entries the table holds now, every network namespace's (the table is the host's). */
  entries: number;
  /** gc_thresh1..3 (net.ipv4.neigh.default.gc_thresh1..3: the init namespace's sysctls, for the whole host). */
  thresh1: number;
  thresh2: number;
  thresh3: number;
  /** ndts_table_fulls: how often the kernel could not make a new entry since boot ("neighbor table overflow!"). */
  tableFulls: number;
}

// <linux/rtnetlink.h>, <linux/neighbour.h>
const RTM_GETNEIGHTBL = 66;
const NDTA_NAME = 1;
const NDTA_THRESH1 = 2;
const NDTA_THRESH2 = 3;
const NDTA_THRESH3 = 4;
const NDTA_CONFIG = 5;
const NDTA_STATS = 7;

/**
 * The IPv4 neighbour table's counters: one RTM_GETNEIGHTBL dump (what `ip -s ntable show` reads), the message
 * of the table itself (arp_cache; the per-device parameter messages have no thresholds). The table, its
 * thresholds and its counters are the kernel's one table for every namespace: a dump in any namespace reads
 * them. Undefined when it cannot be read.
 */
export function neighbourTableStats(): NeighbourTableStats | undefined {
  const ndtmsg = Buffer.alloc(4); // struct ndtmsg: family, pad
  ndtmsg.writeUInt8(AF_INET, 0);
  let msgs: Buffer[];
  try {
    msgs = nlDump(NETLINK_ROUTE, RTM_GETNEIGHTBL, ndtmsg, Buffer.alloc(0), 'read the neighbour table statistics');
  } catch {
    return undefined;
  }
  for (const m of msgs) {
    if (m.length < 4 || m.readUInt8(0) !== AF_INET) continue;
    const a = nlAttrs(m, 4);
    const name = a.get(NDTA_NAME);
    const t3 = a.get(NDTA_THRESH3);
    const config = a.get(NDTA_CONFIG);
    const stats = a.get(NDTA_STATS);
    if (!name || name.toString('latin1').replace(/\0.*$/s, '') !== 'arp_cache' || !t3 || t3.length < 4) continue;
    if (!config || config.length < 8 || !stats || stats.length < 88) continue;
    const u32 = (b: Buffer | undefined) => (b && b.length >= 4 ? b.readUInt32LE(0) : 0);
    return {
      entries: config.readUInt32LE(4), // struct ndt_config: key_len u16, entry_size u16, entries u32
      thresh1: u32(a.get(NDTA_THRESH1)),
      thresh2: u32(a.get(NDTA_THRESH2)),
      thresh3: t3.readUInt32LE(0),
      tableFulls: Number(stats.readBigUInt64LE(80)), // struct ndt_stats: the 11th u64, ndts_table_fulls
    };
  }
  return undefined;
}

/** The MAC address of an interface, "aa:bb:cc:dd:ee:ff" (from its own network namespace). */
export function macOf(name: string): string {
  return interfaceAddress(name).mac;
}

// <linux/rtnetlink.h>, <linux/if_link.h>
const RTM_GETLINK = 18;
const IFLA_LINK = 5;
const IFLA_LINKINFO = 18;
const IFLA_INFO_KIND = 1;
const IFLA_EXT_MASK = 29;
const IFLA_CARRIER_CHANGES = 35;
const IFLA_LINK_NETNSID = 37;
const RTEXT_FILTER_SKIP_STATS = 1 << 3;

/** What rtnetlink says about who a device is and how often its carrier changed. */
export interface LinkIdentity {
  /** IFLA_INFO_KIND ("veth", "bridge", ...); undefined for a device without one (most physical NICs). */
  kind?: string;
  /** IFLA_LINK: the peer's (veth) or lower device's ifindex, in `linkNetnsid`'s namespace when that is set. */
  link?: number;
  /** IFLA_LINK_NETNSID: the namespace id (as this namespace names it) of the peer; undefined when ours. */
  linkNetnsid?: number;
  /**
   * IFLA_CARRIER_CHANGES: carrier up/down transitions since the device was created. A veth's carrier
   * follows its peer's up/down state, so every time the peer goes down and up this count moves.
   */
  carrierChanges: number;
  /** IFLA_MASTER: the ifindex of the device this one is enslaved to (a bridge, a bond, a team), in this namespace. */
  master?: number;
}

const IFLA_STATS64 = 23;
const IFLA_INFO_DATA = 2;
const IFLA_TUN_TYPE = 3;
/** IFF_TAP (linux/if_tun.h): a tun device that carries Ethernet frames. */
const IFF_TAP = 0x0002;

/** The attributes of the device with `ifindex` (one RTM_GETLINK, its stats included); undefined when it is gone. */
function linkAttrs(ifindex: number): Map<number, Buffer> | undefined {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg: family AF_UNSPEC, index
  ifinfo.writeInt32LE(ifindex, 4);
  const body = nlRequest(
    NETLINK_ROUTE,
    RTM_GETLINK,
    ifinfo,
    Buffer.alloc(0),
    `read the counters of ifindex ${ifindex}`,
  );
  return body ? nlAttrs(body, 16) : undefined;
}

/**
 * The transmit drops of a tap device (`tun` kind carrying Ethernet frames) with `ifindex`: rtnl_link_stats64
 * tx_dropped (what `/sys/class/net/<tap>/statistics/tx_dropped` shows), which the kernel raises for every frame
 * it could not queue to the process holding the tap (tun_net_xmit, tun_xdp_xmit: its queue full, or no
 * process attached). One RTM_GETLINK with its stats; undefined when the device is gone or is not a tap.
 */
export function tapTxDropped(ifindex: number): bigint | undefined {
  const a = linkAttrs(ifindex);
  if (!a) return undefined;
  const info = a.get(IFLA_LINKINFO);
  const infos = info && nlAttrs(info);
  const kind = infos?.get(IFLA_INFO_KIND)?.toString('utf8').replace(/\0+$/, '');
  if (kind !== 'tun') return undefined;
  const data = infos?.get(IFLA_INFO_DATA);
  const type = data && nlAttrs(data).get(IFLA_TUN_TYPE);
  if (type && type.length >= 1 && type.readUInt8(0) !== IFF_TAP) return undefined;
  const stats = a.get(IFLA_STATS64);
  // struct rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes, rx_errors, tx_errors, rx_dropped, tx_dropped.
  return stats && stats.length >= 64 ? stats.readBigUInt64LE(56) : undefined;
}

/**
 * What only grows over the life of the device with `ifindex` (no generation number exists, and a device made again
 * may take its name, ifindex and MAC): its packets received and sent (rtnl_link_stats64 rx_packets + tx_packets)
 * and its carrier changes (IFLA_CARRIER_CHANGES). A lower value than one read before on that ifindex is another
 * device. One RTM_GETLINK with its stats; undefined when the device is gone.
 */
export function linkCounters(ifindex: number): { packets: bigint; carrierChanges: number } | undefined {
  const a = linkAttrs(ifindex);
  if (!a) return undefined;
  const stats = a.get(IFLA_STATS64);
  return {
    packets: stats && stats.length >= 16 ? stats.readBigUInt64LE(0) + stats.readBigUInt64LE(8) : 0n,
    carrierChanges: a.get(IFLA_CARRIER_CHANGES)?.readUInt32LE(0) ?? 0,
  };
}

/**
 * Kind, peer and carrier-change count of the device with `ifindex` in the daemon's network namespace:
 * one RTM_GETLINK (rtnetlink(7)), no process spawned. Undefined when the device is gone.
 */
export function linkIdentity(ifindex: number): LinkIdentity | undefined {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg: family AF_UNSPEC, index
  ifinfo.writeInt32LE(ifindex, 4);
  const mask = Buffer.alloc(4);
  mask.writeUInt32LE(RTEXT_FILTER_SKIP_STATS);
  const body = nlRequest(
    NETLINK_ROUTE,
    RTM_GETLINK,
    ifinfo,
    nlAttr(IFLA_EXT_MASK, mask),
    `read link attributes of ifindex ${ifindex}`,
  );
  if (!body) return undefined;
  const a = nlAttrs(body, 16);
  const info = a.get(IFLA_LINKINFO);
  const kind = info && nlAttrs(info).get(IFLA_INFO_KIND);
  return {
    kind: kind ? kind.toString('utf8').replace(/\0+$/, '') : undefined,
    link: a.get(IFLA_LINK)?.readUInt32LE(0),
    linkNetnsid: a.get(IFLA_LINK_NETNSID)?.readInt32LE(0),
    carrierChanges: a.get(IFLA_CARRIER_CHANGES)?.readUInt32LE(0) ?? 0,
    master: a.get(IFLA_MASTER)?.readUInt32LE(0) || undefined,
  };
}

// <linux/if_link.h>: the attributes a veth peer's MTU is read with.
const IFLA_IFNAME = 3;
const IFLA_MTU = 4;
const IFLA_TARGET_NETNSID = 46;

/**
 * The veth peer of `name`, wherever it lives, with its MTU (the kernel drops a frame redirected into the
 * veth that the peer's MTU does not allow: veth_xdp_xmit in native mode, is_skb_forwardable in generic).
 * A peer in our namespace is read by its ifindex; one in another namespace, named or not, by one
 * RTM_GETLINK with IFLA_TARGET_NETNSID set to the id our namespace gives the peer's (Linux >= 4.20; needs
 * CAP_NET_ADMIN over that namespace, no setns). `netns`: the peer's named namespace (/run/netns/NAME),
 * `nsid` its id when it is in another one. `{ unreadable }` says why the peer's MTU cannot be read;
 * undefined: not a veth (or gone).
 */
export function vethPeerLink(
  name: string,
): { name: string; ifindex: number; mtu: number; netns?: string; nsid?: number } | { unreadable: string } | undefined {
  let ifindex: number;
  try {
    ifindex = ifindexOf(name);
  } catch {
    return undefined; // no such interface: reported as missing elsewhere
  }
  let id: LinkIdentity | undefined;
  try {
    id = linkIdentity(ifindex);
  } catch (e) {
    // The device is there, but the kernel did not say what it is: its peer's MTU is not known (never taken for
    // one that carries full-size frames).
    return {
      unreadable: `the kernel did not say whether ${name} is a veth and where its peer is: ${(e as Error).message}`,
    };
  }
  if (id?.kind !== 'veth') return undefined;
  if (!id.link) return { unreadable: `the kernel does not name the veth peer of ${name}` };
  if (id.linkNetnsid === undefined) {
    const peer = nameOf(id.link);
    if (!peer) return { unreadable: `the veth peer of ${name} (ifindex ${id.link}) was not found` };
    const st = linkState(peer);
    return st
      ? { name: peer, ifindex: id.link, mtu: st.mtu }
      : { unreadable: `the MTU of ${name}'s veth peer ${peer} cannot be read` };
  }
  const nsid = id.linkNetnsid;
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg: family AF_UNSPEC, index
  ifinfo.writeInt32LE(id.link, 4);
  const target = Buffer.alloc(4);
  target.writeInt32LE(nsid);
  const mask = Buffer.alloc(4);
  mask.writeUInt32LE(RTEXT_FILTER_SKIP_STATS);
  let body: Buffer | undefined;
  try {
    body = nlRequest(
      NETLINK_ROUTE,
      RTM_GETLINK,
      ifinfo,
      Buffer.concat([nlAttr(IFLA_TARGET_NETNSID, target), nlAttr(IFLA_EXT_MASK, mask)]),
      `read the veth peer of ${name} (ifindex ${id.link} in nsid ${nsid})`,
    );
  } catch (e) {
    return {
      unreadable: `the veth peer of ${name} is in a network namespace (nsid ${nsid}) xdpctld may not read: ${(e as Error).message}`,
    };
  }
  const a = body && nlAttrs(body, 16);
  const mtu = a?.get(IFLA_MTU)?.readUInt32LE(0);
  if (!a || mtu === undefined) {
    return { unreadable: `the veth peer of ${name} (ifindex ${id.link} in nsid ${nsid}) was not found` };
  }
  const peer = a.get(IFLA_IFNAME)?.toString('utf8').replace(/\0+$/, '') ?? `ifindex ${id.link}`;
  const netns = namedNetns(nsid);
  return { name: peer, ifindex: id.link, mtu, nsid, ...(netns ? { netns } : {}) };
}

/**
 * The name (/run/netns/NAME) of the namespace our namespace gives id `nsid`; undefined when it has none.
 * The name found last for an id is asked first (and kept while the kernel still gives it that id): the scan
 * opens every named namespace, and every change whose backend's veth peer is in one asked this.
 */
function namedNetns(nsid: number): string | undefined {
  const known = netnsNames.get(nsid);
  if (known !== undefined && nsidOfNamed(known) === nsid) return known;
  netnsNames.delete(nsid);
  let names: string[];
  try {
    names = readdirSync('/run/netns');
  } catch {
    return undefined;
  }
  for (const n of names) {
    if (nsidOfNamed(n) !== nsid) continue;
    if (netnsNames.size >= 1024) netnsNames.clear();
    netnsNames.set(nsid, n);
    return n;
  }
  return undefined;
}

/** nsid -> the name {@link namedNetns} found for it last. */
const netnsNames = new Map<number, string>();

/** The id our namespace gives the named namespace /run/netns/`n` (RTM_GETNSID); undefined when it cannot say. */
function nsidOfNamed(n: string): number | undefined {
  let fd: number;
  try {
    fd = openSync(`/run/netns/${n}`, 'r');
  } catch {
    return undefined;
  }
  try {
    const v = Buffer.alloc(4);
    v.writeUInt32LE(fd);
    const body = nlRequest(NETLINK_ROUTE, RTM_GETNSID, Buffer.alloc(4), nlAttr(NETNSA_FD, v), `nsid of netns ${n}`);
    return body && nlAttrs(body, 4).get(NETNSA_NSID)?.readInt32LE(0);
  } catch {
    return undefined; // not ours to read
  } finally {
    closeSync(fd);
  }
}

// <linux/rtnetlink.h>, <linux/net_namespace.h>
const RTM_GETNSID = 90;
const NETNSA_NSID = 1;
const NETNSA_FD = 3;

const IFLA_ADDRESS = 1;
const IFLA_XDP = 43;
const IFLA_XDP_ATTACHED = 2;
const IFLA_XDP_PROG_ID = 4;
const IFLA_XDP_DRV_PROG_ID = 5;
const IFLA_XDP_SKB_PROG_ID = 6;
const IFLA_XDP_HW_PROG_ID = 7;
/** IFLA_XDP_ATTACHED values (<linux/if_link.h>): a program in the driver, generic, offloaded, or several at once. */
const XDP_ATTACHED_DRV = 1;
const XDP_ATTACHED_SKB = 2;
const XDP_ATTACHED_HW = 3;
const XDP_ATTACHED_MULTI = 4;

/** An XDP program attached to a device (IFLA_XDP): its id and the mode it is attached in. */
export interface AttachedXdp {
  id: number;
  mode: 'native' | 'generic' | 'offload';
}

/**
 * The JSON `ip -j` prints: it writes a name's bytes as they are, so an interface named with a control character
 * (`ip link add $'x\x1b[2J' ...`, which the kernel allows) gives a string JSON.parse refuses; such a character can
 * only be inside a string (white space outside one is tab, newline and CR), where it is escaped first.
 */
function parseIpJson(text: string): unknown {
  return JSON.parse(text.replace(RAW_IN_JSON, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));
}
// eslint-disable-next-line no-control-regex -- the control characters are what is escaped
const RAW_IN_JSON = /[\x00-\x08\x0b\x0c\x0e-\x1f]/g;

/** A device as one RTM_GETLINK describes it (what the veth-peer check reads). */
export interface LinkView {
  ifindex: number;
  ifname: string;
  /** IFF_UP (administratively up). */
  up: boolean;
  kind?: string;
  /** IFLA_LINK: a veth's peer ifindex, in `linkNetnsid`'s namespace when that is set. */
  link?: number;
  linkNetnsid?: number;
  /** A native-mode (driver) XDP program is attached: IFLA_XDP_ATTACHED DRV, or MULTI with a driver program. */
  nativeXdp: boolean;
  /** Every XDP program attached to it (IFLA_XDP), any mode. */
  xdp: AttachedXdp[];
  /** IFLA_ADDRESS as "aa:bb:cc:dd:ee:ff", when it has one. */
  mac?: string;
}

/**
 * The device with `ifindex` in the daemon's namespace, or with `nsid` in the namespace this one names so
 * (IFLA_TARGET_NETNSID, Linux >= 4.20; needs CAP_NET_ADMIN over it): one RTM_GETLINK (rtnetlink(7)), no
 * process spawned. Undefined when there is no such device; throws KernelError when the kernel refuses.
 */
export function linkView(ifindex: number, nsid?: number): LinkView | undefined {
  const ifinfo = Buffer.alloc(16); // struct ifinfomsg: family AF_UNSPEC, index
  ifinfo.writeInt32LE(ifindex, 4);
  const mask = Buffer.alloc(4);
  mask.writeUInt32LE(RTEXT_FILTER_SKIP_STATS);
  const attrs = [nlAttr(IFLA_EXT_MASK, mask)];
  if (nsid !== undefined) {
    const t = Buffer.alloc(4);
    t.writeInt32LE(nsid);
    attrs.push(nlAttr(IFLA_TARGET_NETNSID, t));
  }
  const where = nsid === undefined ? '' : ` in the namespace with nsid ${nsid}`;
  const body = nlRequest(NETLINK_ROUTE, RTM_GETLINK, ifinfo, Buffer.concat(attrs), `read link ${ifindex}${where}`);
  if (!body || body.length < 16) return undefined;
  const a = nlAttrs(body, 16);
  const info = a.get(IFLA_LINKINFO);
  const kind = info && nlAttrs(info).get(IFLA_INFO_KIND);
  const xdpAttr = a.get(IFLA_XDP);
  const xdp = xdpAttr && nlAttrs(xdpAttr);
  const attached = xdp?.get(IFLA_XDP_ATTACHED)?.readUInt8(0) ?? 0;
  const drvProg = xdp?.get(IFLA_XDP_DRV_PROG_ID)?.readUInt32LE(0) ?? 0;
  const progs: AttachedXdp[] = [];
  const modes = { [XDP_ATTACHED_DRV]: 'native', [XDP_ATTACHED_SKB]: 'generic', [XDP_ATTACHED_HW]: 'offload' } as const;
  if (attached === XDP_ATTACHED_MULTI) {
    for (const [attr, mode] of [
      [IFLA_XDP_DRV_PROG_ID, 'native'],
      [IFLA_XDP_SKB_PROG_ID, 'generic'],
      [IFLA_XDP_HW_PROG_ID, 'offload'],
    ] as const) {
      const id = xdp?.get(attr)?.readUInt32LE(0) ?? 0;
      if (id) progs.push({ id, mode });
    }
  } else if (attached in modes) {
    const id = xdp?.get(IFLA_XDP_PROG_ID)?.readUInt32LE(0) ?? 0;
    if (id) progs.push({ id, mode: modes[attached as keyof typeof modes] });
  }
  const address = a.get(IFLA_ADDRESS);
  return {
    ifindex: body.readInt32LE(4),
    ifname: a.get(IFLA_IFNAME)?.toString('utf8').replace(/\0+$/, '') ?? '',
    up: (body.readUInt32LE(8) & IFF_UP) !== 0,
    kind: kind ? kind.toString('utf8').replace(/\0+$/, '') : undefined,
    link: a.get(IFLA_LINK)?.readUInt32LE(0),
    linkNetnsid: a.get(IFLA_LINK_NETNSID)?.readInt32LE(0),
    nativeXdp: attached === XDP_ATTACHED_DRV || (attached === XDP_ATTACHED_MULTI && drvProg !== 0),
    xdp: progs,
    mac:
      address && address.length > 0 ? Array.from(address, (x) => x.toString(16).padStart(2, '0')).join(':') : undefined,
  };
}

/** Whether an interface exists. */
export function interfaceExists(name: string): boolean {
  try {
    ifindexOf(name);
    return true;
  } catch {
    return false;
  }
}

/** Run an iproute2 command, optionally inside a named netns, and parse its JSON. */
async function ipJson(args: string[], netns?: string): Promise<unknown> {
  const argv = netns ? ['-n', netns, '-j', ...args] : ['-j', ...args];
  const { stdout } = await run('ip', argv, { maxBuffer: 16 << 20 });
  return stdout.trim() === '' ? [] : parseIpJson(stdout);
}

interface IpLink {
  ifindex: number;
  ifname: string;
  address?: string;
  operstate?: string;
  flags?: string[];
  link?: string;
  link_index?: number;
  link_netnsid?: number;
  xdp?: unknown;
  linkinfo?: { info_kind?: string };
}

/** A neighbour (ARP) entry as the kernel holds it. */
export interface NeighbourEntry {
  /** Its MAC; undefined when the host has not resolved it (or resolving failed). */
  mac?: string;
  /** NUD states ("REACHABLE", "STALE", "PROBE", "PERMANENT", ...; ip-neighbour(8)). */
  states: string[];
  /** Seconds since the neighbour last confirmed its MAC (an ARP reply), as the kernel counts them. */
  confirmed?: number;
  /**
   * Set when the kernel's entry says nothing of the host (adapter.ts neighbourView: a NOARP entry or egress,
   * an address of this host's own): why, and the MAC and states are then what ARP requests of ours found.
   */
  via?: string;
}

/**
 * The neighbour (ARP) entry for `ip` on an interface: its MAC (undefined
 * when the host has not resolved it, or it failed), states and the age of its
 * last confirmation, from the same RTM_GETNEIGH dump as {@link neighbourTable}: NOARP entries included, which
 * `ip neigh show` (what this ran before) hides, so an entry the kernel never asks is seen as one, not taken for
 * no entry. Throws KernelError ENODEV (kind not-found) when there is no such interface (any more).
 */
export async function neighbourEntry(ip: string, dev: string): Promise<NeighbourEntry> {
  let ifindex: number;
  try {
    ifindex = ifindexOf(dev);
  } catch {
    // The device went away (deleted, renamed) since the caller found it: ENODEV, as an ioctl on it would say.
    throw new KernelError(`read the neighbour entry of ${ip} on ${dev}`, 19, [], 'no such interface');
  }
  const found = readNeighbours((at, i) => (at === ip && i === ifindex ? 'it' : undefined)).get('it');
  return found ?? { mac: undefined, states: [] };
}

/** The MAC of a neighbour reachable through an interface, or undefined when the host has not resolved it. */
export async function neighbourMac(ip: string, dev: string): Promise<string | undefined> {
  return (await neighbourEntry(ip, dev)).mac;
}

/** NUD states (linux/neighbour.h), in the order `ip neigh` prints them. */
const NUD_NAMES: [number, string][] = [
  [0x01, 'INCOMPLETE'],
  [0x02, 'REACHABLE'],
  [0x04, 'STALE'],
  [0x08, 'DELAY'],
  [0x10, 'PROBE'],
  [0x20, 'FAILED'],
  [0x40, 'NOARP'],
  [0x80, 'PERMANENT'],
];
/** The names of a NUD state's bits (empty for NUD_NONE). */
function nudStates(nud: number): string[] {
  const out: string[] = [];
  for (const [bit, name] of NUD_NAMES) if (nud & bit) out.push(name);
  return out;
}

/** USER_HZ: the unit of nda_cacheinfo's ages (clock ticks), as iproute2 divides them. */
const USER_HZ = 100;
const RTM_GETNEIGH = 30;
const NUD_FAILED = 0x20;
/** ndm_flags: an entry learned from outside (a bridge's FDB user): `ip` shows it whatever its state. */
const NTF_EXT_LEARNED = 0x10;
const NDA_LLADDR = 2;
const NDA_CACHEINFO = 3;

/**
 * The whole IPv4 neighbour table of the daemon's namespace in one read: one RTM_GETNEIGH dump (what
 * `ip -4 -s neigh show` prints, entries in NUD_NONE left out; NOARP ones kept, which it hides):
 * "ip@dev" -> entry (as {@link neighbourEntry} reads one). It was `ip -j -4 -s neigh show`, a process
 * forked from the daemon at every reconciler pass (5-20 ms on the main thread for a daemon of a few
 * hundred MB, and passes run at every neighbour change).
 */
export function neighbourTable(): Map<string, NeighbourEntry> {
  const names = new Map<number, string | undefined>();
  return readNeighbours((ip, ifindex) => {
    if (!names.has(ifindex)) names.set(ifindex, nameOf(ifindex));
    const dev = names.get(ifindex);
    return dev ? `${ip}@${dev}` : undefined;
  });
}

/**
 * The same one RTM_GETNEIGH dump keyed "ip#ifindex": a device renamed during or after the dump keeps its
 * entries (the caller resolves its names to ifindexes after the read: a name that no longer resolves is a
 * device gone, one that names another device reads that device's entries, as `ip neigh show dev NAME` did).
 */
export function neighbourTableByIndex(): Map<string, NeighbourEntry> {
  return readNeighbours((ip, ifindex) => `${ip}#${ifindex}`);
}

function readNeighbours(keyOf: (ip: string, ifindex: number) => string | undefined): Map<string, NeighbourEntry> {
  const ndmsg = Buffer.alloc(12); // struct ndmsg
  ndmsg.writeUInt8(AF_INET, 0);
  const out = new Map<string, NeighbourEntry>();
  for (const m of nlDump(NETLINK_ROUTE, RTM_GETNEIGH, ndmsg, Buffer.alloc(0), 'read the neighbour table')) {
    if (m.length < 12 || m.readUInt8(0) !== AF_INET) continue;
    const ifindex = m.readInt32LE(4);
    const nud = m.readUInt16LE(8);
    // State NONE is left out, as `ip neigh show` does. NOARP entries are kept (which `ip neigh show` hides):
    // an egress switched to NOARP, or an entry set `nud noarp`, is one the kernel never asks, and whoever reads
    // the table must know it is there rather than take it for no entry.
    if (nud === 0 && !(m.readUInt8(10) & NTF_EXT_LEARNED)) continue;
    const attrs = nlAttrs(m, 12);
    const dst = attrs.get(NDA_DST);
    if (!dst || dst.length !== 4) continue;
    const key = keyOf(`${dst[0]}.${dst[1]}.${dst[2]}.${dst[3]}`, ifindex);
    if (!key) continue;
    const states = nudStates(nud);
    const ll = attrs.get(NDA_LLADDR);
    const ci = attrs.get(NDA_CACHEINFO);
    out.set(key, {
      mac: nud & NUD_FAILED || !ll || ll.length === 0 ? undefined : macText(ll),
      states,
      confirmed: ci && ci.length >= 4 ? Math.floor(ci.readUInt32LE(0) / USER_HZ) : undefined,
    });
  }
  return out;
}

/** A link-layer address as `ip` prints it (lower-case hex, colons). */
function macText(b: Buffer): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += (i ? ':' : '') + (b[i] < 16 ? '0' : '') + b[i].toString(16);
  return s;
}

/** IFF_PROMISC (linux/if.h): the device takes frames for every MAC. */
const IFF_PROMISC = 0x100;

/**
 * The veth peer of `name`, wherever it is: its name, MAC and whether it may take frames sent to another MAC than
 * its own (promiscuous, or an upper device: a bridge, bond or macvlan on it). A peer in the daemon's namespace is
 * read here (ioctls, rtnetlink); one in another namespace by rtnetlink with that namespace's id
 * (IFLA_TARGET_NETNSID, IFA_TARGET_NETNSID: Linux >= 5.0, CAP_NET_ADMIN over it, no setns): its devices
 * ({@link linkTableIn}) and its IPv4 addresses ({@link addressesIn}), given as `ips` (the addresses of the peer's
 * host), each namespace read once per synchronous stretch whatever the number of egresses into it. `{ unreadable }`
 * says why a peer in another namespace cannot be read (the kernel refused: no permission over the namespace, or
 * it is gone; the peer not found there). Undefined for anything else (not a veth, a device that is gone).
 */
export function vethPeerMac(
  name: string,
): { name: string; mac: string; takesOthers: boolean; ips?: string[] } | { unreadable: string } | undefined {
  let id: LinkIdentity | undefined;
  try {
    id = linkIdentity(ifindexOf(name));
  } catch {
    return undefined;
  }
  if (id?.kind !== 'veth' || !id.link) return undefined;
  if (id.linkNetnsid !== undefined) return vethPeerMacAway(name, id.link, id.linkNetnsid);
  try {
    const peer = nameOf(id.link);
    if (!peer) return undefined;
    const f = interfaceFacts(peer);
    return { name: peer, mac: f.mac, takesOthers: (f.flags & IFF_PROMISC) !== 0 || upperDevices(peer).length > 0 };
  } catch {
    return undefined;
  }
}

/** {@link vethPeerMac} for the peer of `egress` with `ifindex` in the namespace our namespace gives id `nsid`. */
function vethPeerMacAway(
  egress: string,
  ifindex: number,
  nsid: number,
): { name: string; mac: string; takesOthers: boolean; ips: string[] } | { unreadable: string } {
  let rows: LinkRow[];
  let ips: string[];
  try {
    rows = linkTableIn(nsid);
    ips = addressesIn(nsid);
  } catch (e) {
    return {
      unreadable: `the veth peer of ${egress} is in a network namespace (nsid ${nsid}) that cannot be read: ${(e as Error).message}`,
    };
  }
  const peer = rows.find((r) => r.ifindex === ifindex);
  if (!peer?.mac) {
    return {
      unreadable: peer
        ? `the veth peer ${peer.ifname} of ${egress} (in nsid ${nsid}) has no Ethernet address`
        : `the veth peer of ${egress} (ifindex ${ifindex} in nsid ${nsid}) was not found there`,
    };
  }
  const stackedOnPeer = rows.some(
    (r) => STACKED_KINDS.has(r.kind ?? '') && r.linkNetnsid === undefined && r.link === ifindex,
  );
  const takesOthers = (peer.flags & IFF_PROMISC) !== 0 || peer.master !== undefined || stackedOnPeer;
  return { name: peer.ifname, mac: peer.mac, takesOthers, ips };
}

// <linux/rtnetlink.h>, <linux/if_addr.h>
const RTM_GETADDR = 22;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_TARGET_NETNSID = 10;

// <linux/rtnetlink.h>, <linux/neighbour.h>
const RTM_NEWNEIGH = 28;
const NDA_DST = 1;
const NUD_PROBE = 0x10;

/**
 * Make the kernel verify a resolved neighbour entry now, as `ip neigh change
 * IP dev DEV nud probe` does: one RTM_NEWNEIGH (NLM_F_REPLACE) setting the
 * entry's state to NUD_PROBE. The kernel then sends unicast ARP requests to
 * the MAC it holds (net.ipv4.neigh.DEV.ucast_solicit of them, retrans_time_ms
 * apart: 3 and 1 s by default): a reply makes the entry REACHABLE again; none
 * makes it FAILED, and the next lookup (a broadcast request) finds the
 * neighbour's MAC as it is now. Needed because XDP-redirected frames never
 * pass the stack: nothing else makes the kernel revalidate an entry only
 * xdpctld uses, and a neighbour that changes its MAC without a gratuitous
 * ARP keeps the old one forever (REACHABLE, then STALE). IPv4 only. Returns
 * false when there is no such entry; throws KernelError (EINVAL for an entry
 * without a MAC to probe).
 */
export function reprobeNeighbour(ip: string, dev: string): boolean {
  const addr = ip.split('.').map(Number);
  if (addr.length !== 4 || addr.some((x) => !(x >= 0 && x <= 255))) return false;
  const ndm = Buffer.alloc(12); // struct ndmsg
  ndm.writeUInt8(AF_INET, 0);
  ndm.writeInt32LE(ifindexOf(dev), 4);
  ndm.writeUInt16LE(NUD_PROBE, 8);
  const reply = nlRequest(
    NETLINK_ROUTE,
    RTM_NEWNEIGH,
    ndm,
    nlAttr(NDA_DST, Buffer.from(addr)),
    `re-probe the neighbour entry of ${ip} on ${dev}`,
    NLM_F_ACK | NLM_F_REPLACE,
  );
  return reply !== undefined;
}

/** Where a veth's peer is and whether it can take native XDP redirects. */
export interface VethPeerState {
  /** The interface checked is a veth. */
  veth: boolean;
  /** Redirecting into the interface in native mode delivers (or it is not a veth). */
  ok: boolean;
  peer?: string;
  /** Named network namespace of the peer; undefined when it is ours or has no name. */
  netns?: string;
  /** The nsid of the peer's namespace when it is not ours and has no name (or could not be inspected). */
  nsid?: number;
  /** A file to enter the peer's unnamed namespace by (netns-find.ts), when it has no name and one was found. */
  nsPath?: string;
  /** The peer in words ("eth0", "eth0 in netns blue", "eth0 in the unnamed network namespace with nsid 7 (...)"). */
  where?: string;
  /** Why not ok, or what was done. */
  detail?: string;
  /** The checked interface's kind (`ip -d link` info_kind: "bridge", "veth", ...), when it has one. */
  kind?: string;
  /** We enabled GRO on the peer to satisfy the precondition. */
  fixed?: boolean;
  /** The peer's ifindex (in its namespace). */
  peerIfindex?: number;
  /** The peer's identity beyond name and ifindex, for the host-changes record ({@link DeviceIdentity}). */
  peerIdentity?: DeviceIdentity;
  /** What gives the peer NAPI, when `ok` for a veth: a native-mode XDP program or GRO. */
  napi?: 'xdp' | 'gro';
  /** The peer could not be inspected (an unnamed namespace, or no CAP_SYS_ADMIN to enter it): `ok` is false. */
  uninspectable?: boolean;
  /** Not ok, and a check with `fix` would make it so (switch GRO on on the peer, which is up). */
  fixable?: boolean;
  /** Not ok because the peer is down. */
  peerDown?: boolean;
}

/**
 * What identifies a device beyond its ifindex: what the host cannot change under it while it exists. Not its
 * name (ip link set dev X name Y), nor its MAC address (ip link set dev X address ...: a backend host may
 * change it at any time); those are settings. A device made again gets its name back, and even its ifindex
 * when its network namespace is deleted and made again (a namespace numbers its devices from the start;
 * within one namespace the kernel hands ifindexes out in turn and gives none back while it runs): so the
 * namespace itself ({@link netnsId}, never given to another namespace, unlike its nsfs inode number, which a
 * namespace made after one was deleted gets back at once) and, for a veth, its peer (IFLA_LINK: a veth pair
 * made again has a new ifindex on the other side too). Absent in records written before these were kept
 * (the netns id also where the kernel does not say it, before Linux 6.18): then what is recorded is compared.
 * A MAC kept in an older record is not compared.
 */
export interface DeviceIdentity {
  /** The id of the device's network namespace when the change was made ({@link netnsId}; decimal). */
  netnsId?: string;
  /** IFLA_LINK of a veth: its peer's ifindex (in the peer's namespace). */
  linkIndex?: number;
  /**
   * For the veth peer of one of the daemon's own devices (a backend's egress, an ingress): the id of the
   * namespace `linkIndex` is in, the daemon's ({@link netnsId}). With it a peer moved to another namespace
   * since is found again through its veth there ({@link recordedDevice}). Absent in records written before.
   */
  linkNetnsId?: string;
  /**
   * That veth's name and MAC address when the change was made: settings, never compared; for the log, and to
   * tell a veth moved away from the daemon's namespace from one deleted (netns.ts movedDevice).
   */
  linkIfname?: string;
  linkMac?: string;
  /**
   * That veth's packets received and sent (decimal) and its carrier changes (IFLA_CARRIER_CHANGES) when the
   * change was made: they only grow over a device's life, so lower values now show that the veth at
   * `linkIndex` was deleted and made again with that ifindex (`ip link add NAME index N type veth ...`: a
   * namespace does hand out an ifindex again when asked for it) ({@link remadeVeth}). Absent in records
   * written before.
   */
  linkPackets?: string;
  linkCarrierChanges?: number;
}

/** _IOR(NSIO 0xb7, 13, __u64) (linux/nsfs.h, Linux >= 6.18): the namespace's id. */
const NS_GET_ID = 0x8008b70d;

/**
 * The id of a network namespace (`netns`: /run/netns/NAME, or a path to it when it starts with '/'; undefined:
 * the daemon's own), as NS_GET_ID gives
 * it (for a network namespace, its cookie: SO_NETNS_COOKIE): 64 bits, never given to another namespace while
 * the system runs. Its nsfs inode number is not that: a namespace made right after one was deleted gets the
 * same one (seen on 6.18: `ip netns del X; ip netns add X`, inode 4026532174 three times in a row, ids
 * 70903, 68127, 70905; docs/kernel-notes.md, trap 11). Undefined when the kernel does not say (before 6.18)
 * or there is no such namespace.
 */
export function netnsId(netns?: string): string | undefined {
  return netnsIdOfPath(
    netns === undefined ? '/proc/self/ns/net' : netns.startsWith('/') ? netns : `/run/netns/${netns}`,
  );
}

/** {@link netnsId} of the namespace a path names (/run/netns/NAME, /proc/PID/ns/net). */
function netnsIdOfPath(path: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const id = Buffer.alloc(8);
    if ((ioctlFn(fd, NS_GET_ID, 'uint8_t *', id) as number) < 0) return undefined;
    return id.readBigUInt64LE(0).toString();
  } finally {
    closeSync(fd);
  }
}

/**
 * A device's IFLA_LINK as `ip -j -d link` shows it: link_index for a link in another namespace; the name
 * (link) for one in the same namespace, which is the daemon's only when `netns` is undefined.
 */
function linkIndexOf(l: IpLink, netns: string | undefined): number | undefined {
  if (l.link_index !== undefined) return l.link_index;
  if (!l.link || netns !== undefined) return undefined;
  try {
    return ifindexOf(l.link);
  } catch {
    return undefined;
  }
}

/** The identity of a device as `ip -j -d link` shows it, in `netns` (undefined: ours) ({@link DeviceIdentity}). */
function identityOf(l: IpLink, netns: string | undefined): DeviceIdentity {
  const ns = netnsId(netns);
  const link = linkIndexOf(l, netns);
  return { ...(ns !== undefined ? { netnsId: ns } : {}), ...(link !== undefined ? { linkIndex: link } : {}) };
}

/** The same identity from rtnetlink ({@link linkView}; IFLA_LINK in whichever namespace), in `netns`. */
function identityOfView(l: LinkView, netns: string | undefined): DeviceIdentity {
  const ns = netnsId(netns);
  return { ...(ns !== undefined ? { netnsId: ns } : {}), ...(l.link ? { linkIndex: l.link } : {}) };
}

/** What a record of the veth peer of `veth` (a device in the daemon's namespace) adds to its identity. */
function peerOfOurs(veth: string): DeviceIdentity {
  const ours = netnsId();
  let mac: string | undefined;
  let counters: { packets: bigint; carrierChanges: number } | undefined;
  try {
    mac = interfaceAddress(veth).mac;
    counters = linkCounters(ifindexOf(veth));
  } catch {
    // gone meanwhile: the record says less
  }
  return {
    ...(ours !== undefined ? { linkNetnsId: ours } : {}),
    linkIfname: veth,
    ...(mac ? { linkMac: mac } : {}),
    ...(counters ? { linkPackets: counters.packets.toString(), linkCarrierChanges: counters.carrierChanges } : {}),
  };
}

/**
 * Why the veth now at a record's `linkIndex` in the daemon's namespace (`veth`) is not shown to be the one the
 * record names (the veth peer of one of the daemon's devices), or undefined when nothing read tells them apart.
 * An ifindex alone does not identify it: a pair deleted and made again with `ip link add NAME index N type veth
 * peer ...` has that veth's ifindex and name again, and its peer names it back. What is compared: its MAC
 * address (a new veth gets a random one, unless given; a changed one is not proof either way, so the device is
 * left alone and that is said) and what only grows over its life (its packets, its carrier changes).
 */
function remadeVeth(c: DeviceIdentity, veth: LinkView): string | undefined {
  if (c.linkMac !== undefined && veth.mac !== undefined && veth.mac.toLowerCase() !== c.linkMac.toLowerCase()) {
    return `its MAC address was ${c.linkMac} then, ${veth.mac} now`;
  }
  if (c.linkPackets === undefined && c.linkCarrierChanges === undefined) return undefined;
  let now: { packets: bigint; carrierChanges: number } | undefined;
  try {
    now = linkCounters(veth.ifindex);
  } catch {
    now = undefined;
  }
  if (!now) return 'its counters could not be read to tell it from a veth made again with that ifindex';
  if (c.linkPackets !== undefined && now.packets < BigInt(c.linkPackets)) {
    return `its packet count was ${c.linkPackets} then, ${now.packets} now (a device's own count only grows)`;
  }
  if (c.linkCarrierChanges !== undefined && now.carrierChanges < c.linkCarrierChanges) {
    return (
      `its carrier change count was ${c.linkCarrierChanges} then, ${now.carrierChanges} now ` +
      "(a device's own count only grows)"
    );
  }
  return undefined;
}

/** The words for {@link remadeVeth}'s finding: the veth at the recorded ifindex is not shown to be the recorded one. */
const remadeWords = (c: DeviceIdentity, veth: LinkView, why: string): string =>
  `its veth peer then, ifindex ${c.linkIndex} in this daemon's network namespace ` +
  `(${c.linkIfname ?? '?'} then, ${veth.ifname} now), is not shown to be the same veth: ${why}; a veth deleted ` +
  'and made again with that ifindex cannot be told from it otherwise';

/** A device setting xdpctld changed, to be put back by {@link restoreGro}. */
export interface GroChange extends DeviceIdentity {
  /** The device, in `netns` (undefined: ours), by the name it had when the change was made. */
  ifname: string;
  netns?: string;
  ifindex: number;
}

/**
 * Switch GRO back off on a device where we switched it on, if it is still
 * the same device ({@link DeviceIdentity}: whatever its name or MAC now) and GRO
 * is still on. Returns what was done, for the log.
 */
export async function restoreGro(c: GroChange): Promise<string> {
  const d = await recordedDevice(c, { left: 'GRO left on', undo: ['gro', 'off'] });
  if (typeof d === 'string') return d;
  const { stdout } = await d.ethtool(['-k', d.ifname]);
  if (!/^generic-receive-offload: on/m.test(stdout)) return `already off${d.note}`;
  await d.ethtool(['-K', d.ifname, 'gro', 'off']);
  return `GRO off again${d.note}`;
}

/**
 * A recorded device found again: its name now, an `ethtool` runner in its namespace, and what the log adds
 * to what was done there: '', " (now named X)", or where it was found when it moved (" (moved to netns A:
 * ifindex 2 there; found as the veth peer of X)").
 */
interface FoundDevice {
  ifname: string;
  ethtool: (args: string[]) => Promise<{ stdout: string }>;
  note: string;
}

/**
 * The device a recorded host change was made on, if it is still that device ({@link DeviceIdentity}: the
 * same namespace, ifindex and veth peer; found by its ifindex, so under another name too) where it was, or,
 * for the veth peer of one of the daemon's own devices, wherever that veth says its peer is now
 * ({@link followedPeer}: moved to another namespace since). Otherwise why not, as observed at both ('gone
 * (...)', 'replaced by another device (...): left alone', 'not found (...): left alone').
 */
async function recordedDevice(c: GroChange, change: RecordedChange): Promise<FoundDevice | string> {
  // Entering another namespace (ip -n, nsenter: setns) takes CAP_SYS_ADMIN. Without it every look inside fails
  // with EPERM, which is not evidence that the device is gone: said as it is, and the record is kept.
  if (c.netns !== undefined && !canEnterNetns()) throw new NamespaceUnreachable(c, change);
  const here = await atRecordedPlace(c);
  if (!('head' in here)) return here;
  const away = followedPeer(c);
  if (away !== undefined && typeof away !== 'string') return away;
  return `${here.head} (${here.detail}${away ? `; ${away}` : ''})${here.leftAlone ? ': left alone' : ''}`;
}

/**
 * Why the device a record names is gone for good, by the checks a restore makes ({@link recordedDevice}): not at
 * its recorded place (no device with its ifindex in a namespace that was read, or another device there now: a
 * device made again is not the one recorded) and, for the veth peer of one of our veths, that veth gone too or
 * made again. Undefined when it is there, or cannot be checked now (a namespace this process may not enter or
 * that is not visible, a read that failed): such a record is kept.
 */
export async function recordedDeviceGone(c: GroChange): Promise<string | undefined> {
  if (c.netns !== undefined && !canEnterNetns()) return undefined;
  const here = await atRecordedPlace(c);
  if (!('head' in here) || here.unread) return undefined;
  let away: FoundDevice | string | undefined;
  try {
    away = followedPeer(c);
  } catch {
    return undefined; // found, but no way into where it is now: not gone
  }
  if (away !== undefined && typeof away !== 'string') return undefined;
  // A namespace not visible here (its name deleted, no process in it): gone only when its veth pair is.
  if (here.head === 'not found' && !(away !== undefined && away.endsWith(PAIR_GONE))) return undefined;
  return `${here.head} (${here.detail}${away ? `; ${away}` : ''})`;
}

/** The end of what {@link followedPeer} says when the recorded veth pair no longer exists. */
const PAIR_GONE = 'the veth pair no longer exists';

/** What a record changed, for the words of a refusal to undo it: what stays, and the ethtool -K arguments. */
interface RecordedChange {
  left: string;
  undo: string[];
}

const offloadsLeft = (c: OffloadChange): RecordedChange => ({
  left: `${c.features.join(', ')} left off`,
  undo: c.features.flatMap((n) => [SET_NAME[n] ?? n, 'on']),
});

let enterNetns: boolean | undefined;
/** Whether this process may enter another network namespace (CAP_SYS_ADMIN), read once. */
function canEnterNetns(): boolean {
  enterNetns ??= checkOwnCapabilities().canEnterNetns;
  return enterNetns;
}

/**
 * A recorded device in a named namespace this process may not enter (no CAP_SYS_ADMIN): not undone, and not
 * gone either; the caller keeps the record. The message says what stays and the command that undoes it.
 */
export class NamespaceUnreachable extends Error {
  constructor(c: GroChange, change: RecordedChange) {
    super(
      `cannot enter netns ${c.netns} without CAP_SYS_ADMIN: ${change.left}, recorded ` +
        `(ip netns exec ${c.netns} ethtool -K ${c.ifname} ${change.undo.join(' ')})`,
    );
    this.name = 'NamespaceUnreachable';
  }
}

/** Why a recorded device is not where it was: what is there instead ({@link recordedDevice}). */
interface NotThere {
  head: 'gone' | 'not found' | 'replaced by another device';
  detail: string;
  /** Another device (or namespace) is there now, and was left as it is. */
  leftAlone: boolean;
  /** The namespace's device list could not be read: not known to be gone ({@link recordedDeviceGone}). */
  unread?: boolean;
}

/**
 * The path of a network namespace with id `id` ({@link netnsId}): a name under /run/netns, else any process's
 * /proc/PID/ns/net (a namespace whose name was deleted while a process keeps it alive). Undefined when none
 * visible here is in it.
 */
function namespaceWithId(id: string): string | undefined {
  const paths: string[] = [];
  try {
    paths.push(...readdirSync('/run/netns').map((n) => `/run/netns/${n}`));
  } catch {
    // no named namespaces
  }
  try {
    paths.push(
      ...readdirSync('/proc')
        .filter((p) => /^\d+$/.test(p))
        .map((p) => `/proc/${p}/ns/net`),
    );
  } catch {
    // no /proc
  }
  const seen = new Set<string>();
  for (const p of paths) {
    let link: string;
    try {
      link = p.startsWith('/proc/') ? readlinkSync(p) : p;
    } catch {
      continue; // exited meanwhile
    }
    if (seen.has(link)) continue;
    seen.add(link);
    if (netnsIdOfPath(p) === id) return p;
  }
  return undefined;
}

/** The recorded device in its recorded namespace, by its ifindex ({@link recordedDevice}), or what is there. */
async function atRecordedPlace(c: GroChange): Promise<FoundDevice | NotThere> {
  /** Where to look: the recorded name, or (its name deleted) the namespace found by its id. */
  let path = c.netns === undefined ? undefined : `/run/netns/${c.netns}`;
  let via = '';
  if (c.netnsId !== undefined) {
    const now = netnsId(c.netns);
    if (now === undefined && c.netns !== undefined && !existsSync(`/run/netns/${c.netns}`)) {
      // The name was deleted (ip netns del); the namespace lives on while a process is in it.
      path = namespaceWithId(c.netnsId);
      if (path === undefined) {
        return {
          head: 'not found',
          detail:
            `/run/netns/${c.netns} no longer exists, and no namespace visible here has its id ${c.netnsId} ` +
            '(no name under /run/netns, no process in it)',
          leftAlone: true,
        };
      }
      via = `; /run/netns/${c.netns} no longer exists: its namespace found by its id ${c.netnsId}, entered through ${path}`;
    } else if (now !== undefined && now !== c.netnsId) {
      const which = c.netns === undefined ? "this daemon's network namespace" : `/run/netns/${c.netns}`;
      return {
        head: 'gone',
        detail: `${which} is another network namespace now: namespace id ${c.netnsId} then, ${now} now`,
        leftAlone: true,
      };
    }
  }
  const byPath = via !== '';
  const ipHere = async (args: string[]): Promise<IpLink[]> => {
    if (!byPath) return (await ipJson(args, c.netns)) as IpLink[];
    const { stdout } = await run('nsenter', [`--net=${path}`, 'ip', '-j', ...args], { maxBuffer: 16 << 20 });
    return stdout.trim() === '' ? [] : (parseIpJson(stdout) as IpLink[]);
  };
  let byName: IpLink | undefined;
  try {
    byName = (await ipHere(['-d', 'link', 'show', 'dev', c.ifname]))[0];
  } catch {
    byName = undefined;
  }
  let dev = byName;
  let unread = false;
  if (dev?.ifindex !== c.ifindex) {
    // Renamed since (or another device took its name): found by its ifindex.
    try {
      dev = (await ipHere(['-d', 'link', 'show'])).find((l) => l.ifindex === c.ifindex);
    } catch {
      dev = undefined;
      unread = true;
    }
  }
  if (!dev) {
    // Its name is another device's now (deleted and made again: a new ifindex), or nothing's.
    if (byName) {
      return {
        head: 'replaced by another device',
        detail: replacedBy(c, { ifindex: byName.ifindex })! + via,
        leftAlone: true,
        ...(unread ? { unread } : {}),
      };
    }
    const where = c.netns === undefined ? "this daemon's network namespace" : `netns ${c.netns}`;
    return {
      head: 'gone',
      detail: `no device with ifindex ${c.ifindex} in ${where} any more${via}`,
      leftAlone: false,
      ...(unread ? { unread } : {}),
    };
  }
  const replaced = replacedBy(c, { ifindex: dev.ifindex, linkIndex: linkIndexOf(dev, c.netns) });
  if (replaced) return { head: 'replaced by another device', detail: replaced + via, leftAlone: true };
  // The peer of one of the daemon's veths: that veth must be the recorded one too (a pair made again with both
  // ifindexes asked for has the same name, ifindex and peer ifindex at both ends).
  if (c.linkIndex !== undefined && c.linkNetnsId !== undefined && c.linkNetnsId === netnsId()) {
    const veth = linkView(c.linkIndex);
    const why = veth && remadeVeth(c, veth);
    if (veth && why) {
      return { head: 'replaced by another device', detail: remadeWords(c, veth, why) + via, leftAlone: true };
    }
  }
  const ifname = dev.ifname;
  const notes = [...(ifname === c.ifname ? [] : [`now named ${ifname}`]), ...(via ? [via.slice(2)] : [])];
  return {
    ifname,
    note: notes.length ? ` (${notes.join('; ')})` : '',
    ethtool: (args) => (path ? run('nsenter', [`--net=${path}`, 'ethtool', ...args]) : run('ethtool', args)),
  };
}

/**
 * A recorded veth peer of one of the daemon's devices that is not where it was, found through that device: a
 * veth names its peer wherever it is (IFLA_LINK, in the namespace IFLA_LINK_NETNSID gives; `ip link set dev
 * PEER netns OTHER` moves the peer, the pair stays). Followed only from that veth as recorded: in the
 * daemon's namespace (the same id, {@link netnsId}: never given to another namespace) at the recorded
 * ifindex (a namespace hands its ifindexes out in turn and gives none back while it runs), so the device it
 * names is the one recorded, whatever its name, namespace or ifindex there now (a move into a namespace where
 * the ifindex is taken gives another). Undefined when the record names no such veth (not a veth peer of
 * ours: nothing to follow); a string saying what was observed when it is not found so; throws when it is
 * found but cannot be reached (a namespace without a name or a process to enter it by, or not ours to read).
 */
function followedPeer(c: GroChange): FoundDevice | string | undefined {
  if (c.linkIndex === undefined || c.linkIfname === undefined) return undefined;
  const end = `its veth peer then, ifindex ${c.linkIndex} in this daemon's network namespace (${c.linkIfname} then)`;
  if (c.linkNetnsId === undefined) return `${end}, not looked at: the kernel did not say which namespace that was`;
  const ours = netnsId();
  if (ours !== c.linkNetnsId) {
    return (
      `${end.replace("this daemon's network namespace", `namespace id ${c.linkNetnsId}`)}, not looked at: ` +
      `this daemon runs in namespace id ${ours ?? '(unknown)'}`
    );
  }
  const veth = linkView(c.linkIndex);
  if (!veth) {
    // Deleted (and its peer with it: deleting the namespace either end is in deletes the pair), or moved away
    // itself: a device moved from here is in a namespace this one has an id for (the kernel gives it one).
    if (!c.linkMac) return `${end}, is not here any more`;
    const moved = movedDevice(c.linkIfname, c.linkMac);
    if (moved) {
      const ns = netnsOf(moved.nsid, true); // at exit: not an old miss (netns-find.ts findNetns)
      const where = ns?.name ? `netns ${ns.name}` : `the network namespace with nsid ${moved.nsid}`;
      return (
        `${end}, is not here any more: a device with its name and MAC address (${c.linkMac}) is in ${where} ` +
        `(ifindex ${moved.ifindex} there), not followed: a name and a MAC address are settings, not its identity`
      );
    }
    return (
      `${end}, is gone too: no device has that ifindex here, nor its name and MAC address ${c.linkMac} in any ` +
      `other namespace this one has an id for and could read; ${PAIR_GONE}`
    );
  }
  if (veth.kind !== 'veth' || veth.link === undefined) {
    return `${end}, is ${veth.ifname}, ${veth.kind ? `a ${veth.kind}` : 'a device'} without a veth peer, now`;
  }
  const peer = veth.linkNetnsid === undefined ? linkView(veth.link) : linkView(veth.link, veth.linkNetnsid);
  if (!peer || peer.link !== c.linkIndex) {
    return `${end}, names ifindex ${veth.link} as its peer, which does not name it back`;
  }
  // The same ifindex is not the same veth (ip link add ... index N): not followed unless nothing tells them apart.
  const remade = remadeVeth(c, veth);
  if (remade) return `${remadeWords(c, veth, remade)}: not followed`;
  const before = peer.ifindex === c.ifindex ? '' : `, ${c.ifindex} before`;
  const named = peer.ifname === c.ifname ? '' : `, now named ${peer.ifname}`;
  const found = `ifindex ${peer.ifindex} there${before}${named}; found as the veth peer of ${veth.ifname}`;
  if (veth.linkNetnsid === undefined) {
    return {
      ifname: peer.ifname,
      note: ` (moved to this daemon's network namespace: ${found})`,
      ethtool: (args) => run('ethtool', args),
    };
  }
  const ns = netnsOf(veth.linkNetnsid, true); // at exit: not an old miss of a reused nsid (findNetns)
  if (!ns) {
    throw new Error(
      `moved to the network namespace with nsid ${veth.linkNetnsid} (${found}), which has no name in /run/netns ` +
        'and no process xdpctld can see is in it: there is no way into it from here',
    );
  }
  const where = ns.name
    ? `netns ${ns.name}`
    : `the unnamed network namespace with nsid ${veth.linkNetnsid}, entered through ${ns.path}`;
  return {
    ifname: peer.ifname,
    note: ` (moved to ${where}: ${found})`,
    ethtool: (args) => run('nsenter', [`--net=${ns.path}`, 'ethtool', ...args]),
  };
}

/**
 * How `dev` (found in the recorded namespace by the recorded ifindex) differs from the device a change was
 * recorded on: its veth peer (a pair made again); undefined when it is that device as far as the record can
 * tell. Its name and MAC are not compared: settings its owner may change.
 */
export function replacedBy(c: GroChange, dev: { ifindex: number; linkIndex?: number }): string | undefined {
  if (dev.ifindex !== c.ifindex) return `ifindex ${c.ifindex} then, ${dev.ifindex} now`;
  if (c.linkIndex !== undefined && c.linkIndex !== dev.linkIndex) {
    return (
      `ifindex ${c.ifindex}, but its veth peer was ifindex ${c.linkIndex} then, ` +
      `${dev.linkIndex === undefined ? 'none' : `ifindex ${dev.linkIndex}`} now`
    );
  }
  return undefined;
}

/**
 * Offloads this daemon turned off on one device for XDP (prepareIngressSync): kept in the host-changes
 * file so that --cleanup-on-exit turns them on again, after a restart too.
 */
export interface OffloadChange extends DeviceIdentity {
  /** The device, in `netns` (undefined: ours), by the name it had when the change was made. */
  ifname: string;
  netns?: string;
  ifindex: number;
  /** `ethtool -k` names of the features turned off, e.g. `tx-vlan-offload`. */
  features: string[];
}

/**
 * Turn the features of an OffloadChange on again, if it is still the same device ({@link DeviceIdentity}:
 * whatever its name or MAC now) and they are still off. Returns what was done, for the log.
 */
export async function restoreOffloads(c: OffloadChange): Promise<string> {
  const d = await recordedDevice(c, offloadsLeft(c));
  if (typeof d === 'string') return d;
  const { stdout } = await d.ethtool(['-k', d.ifname]);
  const off = c.features.filter((n) => new RegExp(`^${n}: off(?! \\[fixed\\])`, 'm').test(stdout));
  if (!off.length) return `${c.features.join(', ')} already on${d.note}`;
  await d.ethtool(['-K', d.ifname, ...off.flatMap((n) => [SET_NAME[n] ?? n, 'on'])]);
  return `${off.join(', ')} on again${d.note}`;
}

/**
 * {@link restoreOffloads} for features the daemon no longer needs off while XDP stays attached: those the
 * kernel holds fixed now (a native XDP ingress's peer: veth_xdp_set takes GSO_SOFTWARE out of its
 * hw_features while the program runs) cannot be turned on yet and are returned in `fixed` (to stay
 * recorded); `settled` are on again or were already. A string when the device is gone or was replaced.
 */
export async function releaseOffloads(
  c: OffloadChange,
): Promise<{ settled: string[]; turnedOn: string[]; fixed: string[] } | string> {
  const d = await recordedDevice(c, offloadsLeft(c));
  if (typeof d === 'string') return d;
  const ethtool = d.ethtool;
  const isOn = (text: string, n: string) => new RegExp(`^${n}: on`, 'm').test(text);
  const before = (await ethtool(['-k', d.ifname])).stdout;
  const off = c.features.filter((n) => !isOn(before, n) && !new RegExp(`^${n}: off \\[fixed\\]`, 'm').test(before));
  if (off.length) {
    try {
      await ethtool(['-K', d.ifname, ...off.flatMap((n) => [SET_NAME[n] ?? n, 'on'])]);
    } catch {
      // "Could not change any device features": what is still off is said below
    }
  }
  // What is on now, read back: a composite feature (tcp-segmentation-offload) whose parts the kernel holds
  // fixed stays off without saying [fixed].
  const after = off.length ? (await ethtool(['-k', d.ifname])).stdout : before;
  const settled = c.features.filter((n) => isOn(after, n));
  return {
    settled,
    turnedOn: off.filter((n) => settled.includes(n)),
    fixed: c.features.filter((n) => !settled.includes(n)),
  };
}

/**
 * The XDP programs attached to a veth's peer, wherever the peer is (read by its nsid, IFLA_TARGET_NETNSID: one
 * RTM_GETLINK, no process), and what runs on the peer's ingress on tc (tc-filters.ts: the clsact/ingress
 * filters, RTM_GETTFILTER, and the tcx programs, BPF_PROG_QUERY, read from inside the peer's namespace), with
 * the peer in words ("eth0", "eth0 in netns blue", "eth0 in the unnamed network namespace with nsid 7
 * (...)"). Undefined when `name` is not a veth, when its peer has none of them, or when the peer cannot be read
 * (that is said by the redirect-target check: ensureVethPeerNapi). Frames redirected into the veth are that
 * program's first on the other side, then tc's, then those of the nftables chains hooked on its ingress
 * (nft-chains.ts: NFT_MSG_GETCHAIN, read inside the peer's namespace; a chain with policy accept and no rule is
 * left out: it passes every frame): they may drop them, which nothing on this side can see.
 * The tc ingress and nftables chains of a peer in a namespace the daemon cannot enter (setns refused: no
 * CAP_SYS_ADMIN, as in the documented container) are not read, and nothing is said of them here: a known gap.
 */
export function vethPeerXdp(
  name: string,
): { where: string; programs: AttachedXdp[]; tc?: TcIngress; nft?: NftChain[] } | undefined {
  const dev = linkView(ifindexOf(name));
  if (!dev || dev.kind !== 'veth' || !dev.link) return undefined;
  let peer: LinkView | undefined;
  try {
    peer = linkView(dev.link, dev.linkNetnsid);
  } catch {
    return undefined;
  }
  if (!peer) return undefined;
  let where = peer.ifname;
  let netns: { path: string; nsid: number } | undefined;
  let reachable = true;
  if (dev.linkNetnsid !== undefined) {
    const named = namedNetns(dev.linkNetnsid);
    const way = named === undefined ? findNetns(dev.linkNetnsid) : undefined;
    where +=
      named !== undefined
        ? ` in netns ${named}`
        : way
          ? ` in ${netnsWords(dev.linkNetnsid, way)}`
          : ` in the network namespace with nsid ${dev.linkNetnsid}`;
    const path = named !== undefined ? `/run/netns/${named}` : way?.path;
    if (path !== undefined) netns = { path, nsid: dev.linkNetnsid };
    else reachable = false; // said by the redirect-target check (ensureVethPeerNapi)
  }
  let tc: TcIngress | undefined;
  let nft: NftChain[] | undefined;
  if (reachable) {
    const { ifindex, ifname } = peer;
    // Both read on one entry into the peer's namespace; one that fails leaves the other said.
    const read = () => {
      try {
        tc = tcIngress(ifindex);
      } catch {
        // Gone meanwhile: see above.
      }
      try {
        nft = nftIngressChains(ifname).filter(nftChainMayDrop);
      } catch {
        // Refused or gone meanwhile: see above.
      }
    };
    try {
      if (netns) withNetns(netns.path, netns.nsid, read);
      else read();
    } catch {
      // Not enterable (EPERM without CAP_SYS_ADMIN) or gone meanwhile: see above.
    }
  }
  const tcSome = !!tc && (tc.filters.length > 0 || tc.tcx.length > 0);
  const nftSome = !!nft?.length;
  if (!peer.xdp.length && !tcSome && !nftSome) return undefined;
  return { where, programs: peer.xdp, ...(tcSome ? { tc } : {}), ...(nftSome ? { nft } : {}) };
}

/**
 * What runs on the ingress of the device `name` itself, in the daemon's namespace, besides XDP: its tc filters and
 * tcx programs (tc-filters.ts) and the nftables chains hooked there that may drop a frame (nft-chains.ts). For a
 * backend's egress these see what the backend sends back (its answers, ARP replies) before this host's stack;
 * what is redirected out of it never passes them. Undefined when there is none, or when the device is gone; a
 * read that is refused leaves the other said.
 */
export function ingressHooks(name: string): { tc?: TcIngress; nft?: NftChain[] } | undefined {
  const ifindex = ifindexOf(name);
  let tc: TcIngress | undefined;
  let nft: NftChain[] | undefined;
  try {
    tc = tcIngress(ifindex);
  } catch {
    // Gone meanwhile.
  }
  try {
    nft = nftIngressChains(name).filter(nftChainMayDrop);
  } catch {
    // Refused or gone meanwhile.
  }
  const tcSome = !!tc && (tc.filters.length > 0 || tc.tcx.length > 0);
  const nftSome = !!nft?.length;
  if (!tcSome && !nftSome) return undefined;
  return { ...(tcSome ? { tc } : {}), ...(nftSome ? { nft } : {}) };
}

/**
 * Check, and if `fix` is set satisfy, the veth precondition for native XDP
 * redirects into `name`: its peer must have an XDP program or GRO enabled
 * (either gives it NAPI), and be up. A peer in another namespace is read and changed from inside it: a named
 * one by its name, an unnamed one by a file found for it (netns-find.ts: a bind mount, a process in it, an
 * open file of it). One that no file reaches cannot be inspected: that is reported as not ok (saying
 * exactly that), never assumed fine.
 */
export async function ensureVethPeerNapi(name: string, fix: boolean): Promise<VethPeerState> {
  // The device and its peer from rtnetlink (RTM_GETLINK; the peer's namespace by its nsid), no process
  // spawned: only the peer's GRO setting needs ethtool (a device feature rtnetlink does not carry).
  const dev = linkView(ifindexOf(name));
  if (!dev) throw new KernelError(`look up interface ${name}`, 19, [], 'no such interface');
  if (dev.kind !== 'veth') return { veth: false, ok: true, kind: dev.kind };
  let netns: string | undefined;
  /** The peer's namespace when it is not ours: a file to enter it by, and how it is named in messages. */
  let away: { nsid: number; path: string; words: string; found: string } | undefined;
  let peer: LinkView | undefined;
  if (dev.linkNetnsid === undefined) {
    if (dev.link) peer = linkView(dev.link);
  } else {
    netns = namedNetns(dev.linkNetnsid);
    // A namespace without a name (a container's, `unshare -n`'s) is entered by a bind mount of it, a process
    // in it or a process's open file of it (netns-find.ts), as a named one is by its name.
    const way = netns === undefined ? findNetns(dev.linkNetnsid) : undefined;
    if (netns === undefined && !way) {
      return {
        veth: true,
        ok: false,
        uninspectable: true,
        nsid: dev.linkNetnsid,
        detail:
          `the peer of ${name} is in an unnamed network namespace (nsid ${dev.linkNetnsid}), where xdpctld ` +
          `cannot read its settings (GRO, XDP program, up or down): ${unreachableNetns(dev.linkNetnsid)}`,
      };
    }
    away = {
      nsid: dev.linkNetnsid,
      path: netns === undefined ? way!.path : `/run/netns/${netns}`,
      words: netns === undefined ? netnsWords(dev.linkNetnsid, way!) : `netns ${netns}`,
      found: netns === undefined ? netnsWords(dev.linkNetnsid, way!, 'found as') : `network namespace ${netns}`,
    };
    try {
      peer = dev.link === undefined ? undefined : linkView(dev.link, dev.linkNetnsid);
    } catch (e) {
      // Reading another namespace's devices by nsid takes CAP_NET_ADMIN over it (IFLA_TARGET_NETNSID).
      return {
        veth: true,
        ok: false,
        uninspectable: true,
        netns,
        nsid: away.nsid,
        detail: `the peer of ${name} is in ${away.words}, whose devices xdpctld cannot read: ${(e as Error).message}`,
      };
    }
  }
  if (!peer) return { veth: true, ok: false, netns, detail: `the peer of ${name} was not found` };
  const where = away ? `${peer.ifname} in ${away.words}` : peer.ifname;
  /** Where the peer is, for the caller: its namespace's name, or its nsid and the file it was entered by. */
  const at = { netns, ...(away && netns === undefined ? { nsid: away.nsid, nsPath: away.path } : {}), where };
  // A peer that is down has no NAPI whatever it is set to. GRO is not switched on while it is down: that
  // gives it no NAPI when it comes up (veth_set_features does nothing for a device that is down), so it is
  // done by the first check after the peer comes up.
  if (!peer.up) {
    return {
      veth: true,
      ok: false,
      peerDown: true,
      peer: peer.ifname,
      ...at,
      detail: `native XDP redirects into ${name} would be dropped: its peer ${where} is down`,
    };
  }
  // Only a native-mode program gives the peer NAPI; a generic-mode one does not (veth_xdp_set).
  if (peer.nativeXdp) {
    return { veth: true, ok: true, peer: peer.ifname, ...at, napi: 'xdp', detail: `${where} has native XDP` };
  }
  const ethtool = (args: string[]) =>
    away ? run('nsenter', [`--net=${away.path}`, 'ethtool', ...args]) : run('ethtool', args);
  let stdout: string;
  try {
    ({ stdout } = await ethtool(['-k', peer.ifname]));
  } catch (e) {
    // Entering another network namespace (setns) takes CAP_SYS_ADMIN.
    if (!away || !setnsRefused(e)) throw e;
    return {
      veth: true,
      ok: false,
      uninspectable: true,
      netns,
      nsid: away.nsid,
      detail:
        `the peer of ${name} is in ${away.found}, which xdpctld cannot enter without ` +
        `CAP_SYS_ADMIN to check it; grant CAP_SYS_ADMIN, or use generic mode for ${name}'s senders`,
    };
  }
  if (/^generic-receive-offload: on/m.test(stdout)) {
    return {
      veth: true,
      ok: true,
      peer: peer.ifname,
      ...at,
      napi: 'gro',
      peerIfindex: peer.ifindex,
      detail: `${where} has GRO on`,
    };
  }
  if (!fix) {
    return {
      veth: true,
      ok: false,
      fixable: true,
      peer: peer.ifname,
      ...at,
      detail:
        `native XDP redirects into ${name} would be dropped: its peer ${where} has neither an XDP program nor ` +
        `GRO (a generic-mode program gives it no NAPI; ${at.nsPath ? `nsenter --net=${at.nsPath} ` : ''}ethtool -K ` +
        `${peer.ifname} gro on)`,
    };
  }
  await ethtool(['-K', peer.ifname, 'gro', 'on']);
  return {
    veth: true,
    ok: true,
    peer: peer.ifname,
    ...at,
    fixed: true,
    napi: 'gro',
    peerIfindex: peer.ifindex,
    peerIdentity: { ...identityOfView(peer, away?.path), ...peerOfOurs(name) },
    detail: `enabled GRO on ${where}`,
  };
}

/**
 * Switch GRO off and on again on a veth peer that shows it on and is up: GRO switched on while the peer
 * was down leaves it without NAPI once up (every frame redirected into its veth is dropped, and the
 * kernel announces no NDO_XMIT); switched on while up, it gets NAPI. The setting ends as it was (on). The
 * peer is in `netns` (a name), or in the namespace `nsPath` enters (an unnamed one), or in ours.
 */
export async function reannounceVethGro(peer: string, netns?: string, nsPath?: string): Promise<void> {
  const path = nsPath ?? (netns ? `/run/netns/${netns}` : undefined);
  const ethtool = (args: string[]) =>
    path ? run('nsenter', [`--net=${path}`, 'ethtool', ...args]) : run('ethtool', args);
  await ethtool(['-K', peer, 'gro', 'off']);
  await ethtool(['-K', peer, 'gro', 'on']);
}

/**
 * What a veth did with the native XDP redirects into it (see Dataplane.xdpTransmitStats): the frames its
 * peer took (`ethtool -S`: tx_queue_N_xdp_xmit, the peer's ring counters shown on this side) and the frames
 * dropped on transmit (rtnetlink stats64 tx_dropped, where veth_ndo_xdp_xmit counts what a peer without
 * NAPI refused; other transmit drops count there too).
 */
export async function xdpTransmitStats(name: string): Promise<{ taken: bigint; dropped: bigint }> {
  const { stdout } = await run('ethtool', ['-S', name]);
  let taken = 0n;
  for (const m of stdout.matchAll(/^\s*tx_queue_\d+_xdp_xmit: (\d+)$/gm)) taken += BigInt(m[1]);
  const [link] = (await ipJson(['-s', 'link', 'show', 'dev', name])) as { stats64?: { tx?: { dropped?: number } } }[];
  return { taken, dropped: BigInt(link?.stats64?.tx?.dropped ?? 0) };
}

/**
 * The segmentation offloads turned off on a generic-mode ingress's veth peer (generic XDP cannot redirect a
 * GSO packet); not needed in native mode, where the kernel masks the peer's software GSO itself while our
 * program runs (veth_fix_features) and puts it back when it leaves.
 */
export const GENERIC_GSO_FEATURES: readonly string[] = [
  'tcp-segmentation-offload',
  'generic-segmentation-offload',
  'tx-udp-segmentation',
];

/** `ethtool -k` display names -> the names `ethtool -K` takes. */
const SET_NAME: Record<string, string> = {
  'tcp-segmentation-offload': 'tso',
  'generic-segmentation-offload': 'gso',
  'tx-vlan-offload': 'txvlan',
  'rx-vlan-offload': 'rxvlan',
};

/**
 * Offload settings an XDP ingress needs so that XDP sees and handles frames
 * as they are (run on every attach; `generic`: the program runs in generic mode):
 *  - VLAN tags in the frame, not as metadata. A device with rx VLAN offload
 *    (or, for a veth, a peer with tx VLAN offload) hands the stack the 802.1Q
 *    tag beside the frame; XDP then sees an untagged frame, would match it
 *    as untagged and, in native mode, drop the tag when it redirects. The XDP
 *    RX metadata kfunc that reads it needs a device-bound program, which we do
 *    not load (it oopsed kernel 6.18 on veth removal). So: rx-vlan offload off
 *    on the device, or tx-vlan offload off on a veth's peer (its stack then
 *    puts the tag in the frame before sending).
 *  - Generic mode cannot redirect a GSO packet: the kernel checks the whole
 *    skb's length against the egress MTU (xdp_ok_fwd_dev) and drops it. A
 *    veth peer with TSO/GSO on (the default) sends such packets, and every TCP
 *    stream from it would stall. In native mode the kernel turns the peer's
 *    software GSO off by itself (veth_fix_features); in generic mode we do.
 * Returns what was done and, when something could not be done, why (said in
 * the interface status).
 */
export function prepareIngressSync(name: string, generic: boolean): IngressPreparation {
  const steps = prepareIngressSteps(name, generic);
  let step = steps.next();
  while (!step.done) {
    let out: string;
    try {
      out = runGuardedSync(step.value.cmd, step.value.args, { encoding: 'utf8', stdio: 'pipe' });
    } catch (e) {
      step = steps.throw(e);
      continue;
    }
    step = steps.next(out);
  }
  return step.value;
}

/**
 * {@link prepareIngressSync} without holding the event loop (the reconciler runs it on every interface
 * that runs our program, to put back what drifted: someone turned TSO on again on a generic ingress's
 * peer, or tx VLAN offload on a native one's). The same steps, run with asynchronous child processes.
 */
export async function prepareIngress(name: string, generic: boolean): Promise<IngressPreparation> {
  const steps = prepareIngressSteps(name, generic);
  let step = steps.next();
  while (!step.done) {
    let out: string;
    try {
      out = (await run(step.value.cmd, step.value.args, { encoding: 'utf8' })).stdout;
    } catch (e) {
      step = steps.throw(e);
      continue;
    }
    step = steps.next(out);
  }
  return step.value;
}

/** What {@link prepareIngressSync} did, could not do, and changed (for the host-changes record). */
export interface IngressPreparation {
  done: string[];
  problems: string[];
  changed: OffloadChange[];
  /** Of `problems`, the settings found on that could not be turned off (not a fixed feature: a failed change). */
  unrepaired?: string[];
  /**
   * Of `problems`, the reads that could not be made this time (a command that failed or did not answer; not a
   * namespace the kernel refuses to let the daemon enter, a standing condition): nothing was learnt about those
   * settings (said as "cannot be verified").
   */
  unread?: string[];
}

/**
 * Whether a command run in another network namespace (`ip -n`, `nsenter --net`) failed because the kernel
 * refused to enter it (setns EPERM: CAP_SYS_ADMIN missing, a deployment's steady condition), as its stderr says.
 */
function setnsRefused(e: unknown): boolean {
  return /Operation not permitted/.test(String((e as { stderr?: string }).stderr ?? e));
}

/** One command a preparation step runs; its stdout is sent back into the generator (a failure thrown into it). */
interface Command {
  cmd: string;
  args: string[];
}

/** The logic of {@link prepareIngressSync}, as the commands it runs (one driver waits for them, one does not). */
function* prepareIngressSteps(name: string, generic: boolean): Generator<Command, IngressPreparation, string> {
  const done: string[] = [];
  const problems: string[] = [];
  const unrepaired: string[] = [];
  const unread: string[] = [];
  const changed: OffloadChange[] = [];
  /** The peer's namespace when not ours: its name (a named one), the file it is entered by, in words. */
  type Place = { name?: string; path: string; words: string };
  function* ip(args: string[], ns?: Place): Generator<Command, IpLink[], string> {
    // `ip -n` takes a name only: an unnamed namespace is entered by its file.
    const cmd: Command =
      ns && !ns.name
        ? { cmd: 'nsenter', args: [`--net=${ns.path}`, 'ip', '-j', ...args] }
        : { cmd: 'ip', args: [...(ns ? ['-n', ns.name!] : []), '-j', ...args] };
    return parseIpJson((yield cmd) || '[]') as IpLink[];
  }
  const ethtool = (ns: Place | undefined, argv: string[]): Command =>
    ns ? { cmd: 'nsenter', args: [`--net=${ns.path}`, 'ethtool', ...argv] } : { cmd: 'ethtool', args: argv };
  /** Turn features off where they are on and not fixed. */
  function* turnOff(
    l: IpLink,
    ns: Place | undefined,
    names: string[],
    why: string,
    /** The veth in our namespace `l` is the peer of (for the record: {@link peerOfOurs}). */
    peerOf?: string,
  ): Generator<Command, void, string> {
    const { ifname: dev, ifindex } = l;
    const where = ns ? `${dev} in ${ns.words}` : dev;
    let text: string;
    try {
      text = yield ethtool(ns, ['-k', dev]);
    } catch (e) {
      const problem = `cannot read the offloads of ${where}: ${(e as Error).message}`;
      problems.push(problem);
      // A namespace the daemon may not enter (no CAP_SYS_ADMIN) is a standing condition, said when our program
      // is attached (the attach's warnings); any other failure is a read that could not be made this time.
      if (!setnsRefused(e)) unread.push(problem);
      return;
    }
    const on = names.filter((n) => new RegExp(`^${n}: on(?! \\[fixed\\])`, 'm').test(text));
    const fixed = names.filter((n) => new RegExp(`^${n}: on \\[fixed\\]`, 'm').test(text));
    if (fixed.length) problems.push(`${fixed.join(', ')} cannot be turned off on ${where}: ${why}`);
    if (!on.length) return;
    try {
      yield ethtool(ns, ['-K', dev, ...on.flatMap((n) => [SET_NAME[n] ?? n, 'off'])]);
      done.push(`turned ${on.join(', ')} off on ${where}`);
      // A device in an unnamed namespace is recorded by that namespace's id and its veth (found again through
      // it, netns.ts followedPeer), without a name to look it up by.
      changed.push({
        ifname: dev,
        ...(ns?.name ? { netns: ns.name } : {}),
        ifindex,
        ...identityOf(l, ns?.path),
        ...(peerOf ? peerOfOurs(peerOf) : {}),
        features: on,
      });
    } catch (e) {
      const problem = `turn ${on.join(', ')} off on ${where}: ${(e as Error).message}; ${why}`;
      problems.push(problem);
      unrepaired.push(problem);
    }
  }
  const vlanWhy = 'VLAN tags delivered as metadata look untagged to XDP here';
  const gsoWhy = 'generic XDP cannot redirect GSO packets (TCP from it would stall)';
  const dev = (yield* ip(['-d', 'link', 'show', 'dev', name]))[0];
  if (!dev) return { done, problems: [`interface ${name} not found`], changed, unrepaired };
  if (dev.linkinfo?.info_kind !== 'veth') {
    yield* turnOff(dev, undefined, ['rx-vlan-offload', 'rx-vlan-stag-hw-parse'], vlanWhy);
    return { done, problems, changed, unrepaired, unread };
  }
  let place: Place | undefined;
  let peer: IpLink | undefined;
  if (dev.link_netnsid === undefined) {
    peer = dev.link ? (yield* ip(['-d', 'link', 'show', 'dev', dev.link]))[0] : undefined;
  } else {
    const ids = parseIpJson((yield { cmd: 'ip', args: ['-j', 'netns', 'list-id'] }) || '[]') as {
      nsid: number;
      name?: string;
    }[];
    const netns = ids.find((i) => i.nsid === dev.link_netnsid)?.name;
    // Unnamed (a container's, `unshare -n`'s): entered by a file found for it (netns-find.ts).
    const way = netns === undefined ? findNetns(dev.link_netnsid) : undefined;
    if (netns === undefined && !way) {
      problems.push(
        `the peer of ${name} is in an unnamed network namespace (nsid ${dev.link_netnsid}), where xdpctld cannot ` +
          `read or change its offloads (${unreachableNetns(dev.link_netnsid)}): if tx-vlan-offload is on there, ` +
          `turn it off (${vlanWhy})` +
          (generic ? `, and TSO/GSO if on (${gsoWhy})` : ''),
      );
      return { done, problems, changed, unrepaired };
    }
    place = netns
      ? { name: netns, path: `/run/netns/${netns}`, words: `netns ${netns}` }
      : { path: way!.path, words: netnsWords(dev.link_netnsid, way!) };
    try {
      peer = (yield* ip(['-d', 'link', 'show'], place)).find((l) => l.ifindex === dev.link_index);
    } catch (e) {
      const problem = `cannot enter ${place.words} to prepare the peer of ${name}: ${(e as Error).message}`;
      problems.push(problem);
      if (!setnsRefused(e)) unread.push(problem);
      return { done, problems, changed, unrepaired, unread };
    }
  }
  if (!peer) return { done, problems: [`the peer of ${name} was not found`], changed, unrepaired };
  yield* turnOff(peer, place, ['tx-vlan-offload', 'tx-vlan-stag-hw-insert'], vlanWhy, name);
  if (generic) {
    yield* turnOff(peer, place, [...GENERIC_GSO_FEATURES], gsoWhy, name);
  }
  return { done, problems, changed, unrepaired, unread };
}

// <linux/rtnetlink.h>: routes
const RTM_GETROUTE = 26;
const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_GATEWAY = 5;
const RTA_TABLE = 15;
const RTM_F_LOOKUP_TABLE = 0x1000;
/** The reply is the FIB route that matched (its prefix, gateway, device), not the route a packet takes. */
const RTM_F_FIB_MATCH = 0x2000;

/** What the kernel's FIB says of sending to one IPv4 address ({@link routeGet}). */
export interface RouteAnswer {
  /** rtm_type: 1 unicast, 2 local, 3 broadcast, 6 blackhole, 7 unreachable, ... */
  type: number;
  /** The device it goes out of. */
  oif?: number;
  /** The gateway it goes via (dotted quad); undefined: on the link (no gateway). */
  gateway?: string;
  /**
   * The routing table whose route matched; 0: none did, and the kernel took the address as on the link of the
   * device asked (`oif`: what it does for a packet sent out of a device without a route to its destination).
   */
  table: number;
  /** The matching route's prefix length (0: a default route); with `fib` only. */
  prefix?: number;
}

/**
 * The kernel's answer to `ip route get IP [oif IFINDEX]`: one RTM_GETROUTE request (no process), the route a
 * packet to `ip` takes (out of `oif` when given: only routes through that device match, and with none the
 * kernel takes the address as on its link). `fib`: the matching route itself (RTM_F_FIB_MATCH: its prefix
 * length too; a multipath route has no single device). Undefined when the kernel has no route (ENETUNREACH,
 * EHOSTUNREACH, a device that is down or gone): nothing is known. Never throws.
 */
export function routeGet(ip: string, oif?: number, fib = false): RouteAnswer | undefined {
  const addr = ip.split('.').map(Number);
  if (addr.length !== 4 || addr.some((x) => !(x >= 0 && x <= 255))) return undefined;
  const rtm = Buffer.alloc(12); // struct rtmsg
  rtm.writeUInt8(AF_INET, 0);
  rtm.writeUInt8(32, 1); // rtm_dst_len
  // RTM_F_LOOKUP_TABLE: the reply's table is the one whose route matched (0: none); without it, always main.
  rtm.writeUInt32LE(RTM_F_LOOKUP_TABLE | (fib ? RTM_F_FIB_MATCH : 0), 8);
  const attrs = [nlAttr(RTA_DST, Buffer.from(addr))];
  if (oif !== undefined) {
    const o = Buffer.alloc(4);
    o.writeUInt32LE(oif, 0);
    attrs.push(nlAttr(RTA_OIF, o));
  }
  let reply: Buffer | undefined;
  try {
    reply = nlRequest(NETLINK_ROUTE, RTM_GETROUTE, rtm, Buffer.concat(attrs), `look up the route to ${ip}`);
  } catch {
    return undefined;
  }
  if (!reply || reply.length < 12 || reply.readUInt8(0) !== AF_INET) return undefined;
  const a = nlAttrs(reply, 12);
  const gw = a.get(RTA_GATEWAY);
  const o = a.get(RTA_OIF);
  const t = a.get(RTA_TABLE);
  return {
    type: reply.readUInt8(7),
    ...(o && o.length >= 4 ? { oif: o.readUInt32LE(0) } : {}),
    ...(gw && gw.length === 4 ? { gateway: `${gw[0]}.${gw[1]}.${gw[2]}.${gw[3]}` } : {}),
    table: t && t.length >= 4 ? t.readUInt32LE(0) : reply.readUInt8(4),
    ...(fib ? { prefix: reply.readUInt8(1) } : {}),
  };
}
