/**
 * Devices in other network namespaces, as this one sees them: a device carrying our XDP program that was
 * moved away (`ip link set dev X netns OTHER`) keeps the program there, out of sight of everything that
 * looks at this namespace. The kernel gives every namespace that a device moved to (or a veth peer lives
 * in) an id relative to ours (nsid: the IFLA_NEW_NETNSID of the RTM_DELLINK that announced the move,
 * peernet2id_alloc), and rtnetlink answers RTM_GETLINK about the devices of another namespace given that
 * id (IFLA_TARGET_NETNSID, Linux >= 4.20; needs CAP_NET_ADMIN over it). RTM_SETLINK does not take it
 * (measured on 6.18: ENODEV), so a change there is made from inside: `nsenter --net=PATH ip link ...`,
 * with the namespace found by its id (netns-find.ts: its name, a bind mount, a process in it or a process's
 * open file of it), which needs CAP_SYS_ADMIN.
 *
 * Reads go through netlink (netlink.ts, no process); only a change spawns iproute2.
 */
import { runGuarded } from './children.js';
import { NETLINK_ROUTE, nlAttr, nlAttrs, nlDump } from './netlink.js';
import { findNetns, nsidOfPath } from './netns-find.js';
import type { EffectiveMode } from './xdp.js';

/** Every command runs as a child that cannot outlive the daemon (children.ts). */
const run = runGuarded;

// <linux/rtnetlink.h>, <linux/net_namespace.h>, <linux/if_link.h>
const RTM_GETLINK = 18;
const RTM_GETNSID = 90;
const NETNSA_NSID = 1;
const IFLA_ADDRESS = 1;
const IFLA_IFNAME = 3;
const IFLA_XDP = 43;
const IFLA_TARGET_NETNSID = 46;
const IFLA_XDP_ATTACHED = 2;
const IFLA_XDP_PROG_ID = 4;
const IFLA_XDP_DRV_PROG_ID = 5;
const IFLA_XDP_SKB_PROG_ID = 6;
const MODES: EffectiveMode[] = ['none', 'native', 'generic', 'offload', 'multi'];

/** A device of another network namespace with an XDP program attached. */
export interface XdpElsewhere {
  /** The namespace's id as ours names it. */
  nsid: number;
  ifindex: number;
  ifname: string;
  mode: EffectiveMode;
  progId: number;
}

/**
 * The ids this namespace has given to other namespaces (`ip netns list-id`). A namespace may hold an id
 * for itself too (seen on this host: the initial namespace had one, given when a device of another
 * namespace named it): that one is left out, its devices are ours to see directly.
 */
export function peerNsids(): number[] {
  const self = nsidOfPath('/proc/self/ns/net');
  const out: number[] = [];
  for (const m of nlDump(NETLINK_ROUTE, RTM_GETNSID, Buffer.alloc(4), Buffer.alloc(0), 'list namespace ids')) {
    const id = nlAttrs(m, 4).get(NETNSA_NSID)?.readInt32LE(0);
    if (id !== undefined && id >= 0 && id !== self) out.push(id);
  }
  return out;
}

/**
 * The devices of the namespace with id `nsid`: one RTM_GETLINK dump with IFLA_TARGET_NETNSID, a message a device.
 * Undefined when that namespace is gone meanwhile or not ours to read (EPERM).
 */
function devicesOfNsid(nsid: number): Buffer[] | undefined {
  const t = Buffer.alloc(4);
  t.writeInt32LE(nsid);
  try {
    return nlDump(
      NETLINK_ROUTE,
      RTM_GETLINK,
      Buffer.alloc(16),
      nlAttr(IFLA_TARGET_NETNSID, t),
      `list devices of nsid ${nsid}`,
    );
  } catch {
    return undefined;
  }
}

/**
 * Every device with an XDP program in the namespace with id `nsid` (one RTM_GETLINK dump with
 * IFLA_TARGET_NETNSID). Empty when that namespace is gone or may not be read.
 */
export function xdpDevicesIn(nsid: number): XdpElsewhere[] {
  const msgs = devicesOfNsid(nsid);
  if (!msgs) return [];
  const out: XdpElsewhere[] = [];
  for (const m of msgs) {
    const a = nlAttrs(m, 16);
    const xdp = a.get(IFLA_XDP);
    if (!xdp) continue;
    const x = nlAttrs(xdp);
    const mode = MODES[x.get(IFLA_XDP_ATTACHED)?.readUInt8(0) ?? 0] ?? 'multi';
    if (mode === 'none') continue;
    const id = x.get(
      mode === 'native' ? IFLA_XDP_DRV_PROG_ID : mode === 'generic' ? IFLA_XDP_SKB_PROG_ID : IFLA_XDP_PROG_ID,
    );
    out.push({
      nsid,
      ifindex: m.readInt32LE(4),
      ifname: a.get(IFLA_IFNAME)?.toString('utf8').replace(/\0+$/, '') ?? '?',
      mode,
      progId: id?.readUInt32LE(0) ?? 0,
    });
  }
  return out;
}

/**
 * Where a device of ours that left this namespace is now: the first other namespace (by id) holding a device
 * of that name with that MAC address (a move keeps both unless told otherwise). One RTM_GETLINK dump per
 * other namespace; undefined when none holds it (deleted) or they cannot be read.
 */
export function movedDevice(ifname: string, mac: string): { nsid: number; ifindex: number } | undefined {
  let ids: number[];
  try {
    ids = peerNsids();
  } catch {
    return undefined;
  }
  const want = mac.toLowerCase();
  for (const nsid of ids) {
    for (const m of devicesOfNsid(nsid) ?? []) {
      const a = nlAttrs(m, 16);
      if (a.get(IFLA_IFNAME)?.toString('utf8').replace(/\0+$/, '') !== ifname) continue;
      const addr = a.get(IFLA_ADDRESS);
      const got = addr ? [...addr].map((b) => b.toString(16).padStart(2, '0')).join(':') : '';
      if (got === want) return { nsid, ifindex: m.readInt32LE(4) };
    }
  }
  return undefined;
}

/** A way into another namespace: its name when it has one (/run/netns/NAME), and a path to enter it. */
export interface NetnsRef {
  name?: string;
  path: string;
}

/**
 * The namespace with id `nsid`: a named one (/run/netns/NAME) first, else a bind mount of it, a process in it
 * (/proc/PID/ns/net: an unnamed namespace, a container's) or a process's open file of it (netns-find.ts).
 * Undefined when none is found.
 */
export function netnsOf(nsid: number, fresh = false): NetnsRef | undefined {
  const way = findNetns(nsid, fresh);
  return way && (way.name ? { name: way.name, path: way.path } : { path: way.path });
}

/** How a person would detach a program from a device in another namespace (for messages). */
export function detachCommand(ns: NetnsRef | undefined, nsid: number, ifname: string, mode: EffectiveMode): string {
  const off = `link set dev ${ifname} ${mode === 'generic' ? 'xdpgeneric' : mode === 'native' ? 'xdpdrv' : 'xdp'} off`;
  if (ns?.name) return `ip -n ${ns.name} ${off}`;
  return `nsenter --net=${ns?.path ?? `<the namespace with nsid ${nsid}>`} ip ${off}`;
}

/** Detach the XDP program in `mode` from a device of another namespace (from inside it: needs CAP_SYS_ADMIN). */
export async function detachXdpIn(ns: NetnsRef, ifname: string, mode: EffectiveMode): Promise<void> {
  const kind = mode === 'generic' ? 'xdpgeneric' : mode === 'native' ? 'xdpdrv' : 'xdp';
  try {
    await run('nsenter', [`--net=${ns.path}`, 'ip', 'link', 'set', 'dev', ifname, kind, 'off'], { timeout: 5000 });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error((err.stderr ?? '').trim() || err.message, { cause: e });
  }
}
