/**
 * The unicast MACs an ingress takes as this host's besides its own address, read from the kernel, and their
 * sync into the datapath's ingress_macs map (bpf/xdpctl.bpf.c for_us: a matched frame to any other MAC is
 * passed to the stack, counted not_for_us, as Linux's forwarding would drop it as PACKET_OTHERHOST).
 *
 * What the kernel delivers to this host on a device, besides its own address:
 * - the device's secondary unicast addresses (dev->uc: `bridge fdb show dev X` lists them "self permanent"):
 *   what `bridge fdb add MAC dev X self` adds and where an up macvlan/macvtap on X (any mode but passthru,
 *   which takes X's own address) puts its MAC, a VRRP virtual MAC (keepalived use_vmac) among them;
 * - on a bridge port, the bridge's local entries ("master ... permanent"): the bridge's own MAC and its
 *   ports' addresses, which the bridge delivers up to the host.
 * Both are read per ingress with one rtnetlink RTM_GETNEIGH AF_BRIDGE dump filtered to the device (its own
 * uc list, and the bridge's entries on that port) and sysfs (the bridge's and its ports' addresses). Not
 * read: a bridge's own secondary unicast addresses (a macvlan on the bridge itself): the bridge's dump is
 * its whole forwarding table; frames to those MACs arriving on a port are passed, counted not_for_us.
 */

import type { MacKey } from './codec.js';
import type { BpfMap } from './bpf-map.js';
import { linkRowNamed, lowerDevices, macOf, masterOf } from './netdev.js';
import { nlAttrs, nlDump, NETLINK_ROUTE } from './netlink.js';

const AF_BRIDGE = 7;
const RTM_GETNEIGH = 30;
const NDA_LLADDR = 2;
const NUD_PERMANENT = 0x80;
const NTF_SELF = 0x02;
const NTF_MASTER = 0x04;

/** Whether `mac` ("aa:bb:...") is a unicast address (the I/G bit clear) other than all zeros. */
export function isUnicastMac(mac: string): boolean {
  return (
    /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac) && !(parseInt(mac.slice(0, 2), 16) & 1) && mac !== '00:00:00:00:00:00'
  );
}

function macText(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/**
 * The permanent unicast fdb entries the kernel reports for device `ifindex`: its own (NTF_SELF: its uc
 * list) and, on a bridge port, the bridge's local entries on that port (NTF_MASTER, permanent).
 */
export function fdbOwnEntries(ifindex: number): string[] {
  // The legacy dump request (struct ifinfomsg, no attributes): ifi_index filters the dump to that device
  // (rtnetlink.c valid_fdb_dump_legacy: brport_idx).
  const ifi = Buffer.alloc(16);
  ifi.writeUInt8(AF_BRIDGE, 0);
  ifi.writeInt32LE(ifindex, 4);
  const out: string[] = [];
  for (const m of nlDump(NETLINK_ROUTE, RTM_GETNEIGH, ifi, Buffer.alloc(0), 'read the forwarding entries')) {
    if (m.length < 12 || m.readUInt8(0) !== AF_BRIDGE || m.readInt32LE(4) !== ifindex) continue;
    const state = m.readUInt16LE(8);
    const flags = m.readUInt8(10);
    if (!(state & NUD_PERMANENT) || !(flags & (NTF_SELF | NTF_MASTER))) continue;
    const ll = nlAttrs(m, 12).get(NDA_LLADDR);
    if (!ll || ll.length !== 6) continue;
    const mac = macText(ll);
    if (isUnicastMac(mac)) out.push(mac);
  }
  return out;
}

/** What an ingress takes as this host's besides its own address, and what of it could not be read. */
export interface AcceptedMacs {
  macs: Set<string>;
  /** Why some could not be read (each names what is passed to the stack meanwhile). */
  unknown: string[];
}

/** The unicast MACs other than its own that device `name` (ifindex `ifindex`) takes as this host's. */
export function acceptedMacs(name: string, ifindex: number): AcceptedMacs {
  const macs = new Set<string>();
  const unknown: string[] = [];
  let own: string | undefined;
  try {
    own = macOf(name);
  } catch {
    own = undefined;
  }
  try {
    for (const m of fdbOwnEntries(ifindex)) macs.add(m);
  } catch (e) {
    unknown.push(
      `its secondary unicast addresses (a macvlan's on it, \`bridge fdb show dev ${name}\` self entries) could ` +
        `not be read (${(e as Error).message}): frames to them are passed to the stack, counted not_for_us`,
    );
  }
  const master = masterOf(name);
  if (master && isBridge(master)) {
    for (const dev of [master, ...lowerDevices(master)]) {
      try {
        const mac = macOf(dev);
        if (isUnicastMac(mac)) macs.add(mac);
      } catch (e) {
        unknown.push(
          `the address of ${dev === master ? `its bridge ${master}` : `${dev}, a port of its bridge ${master}`} could ` +
            `not be read (${(e as Error).message}): frames to it are passed to the stack, counted not_for_us`,
        );
      }
    }
  }
  if (own) macs.delete(own);
  return { macs, unknown };
}

/**
 * Make ingress_macs hold exactly `want` (ifindex -> MACs), at most `capacity` entries: what does not fit
 * is returned by ifindex. Entries for ifindexes not in `want` are removed.
 */
export function syncMacMap(
  map: BpfMap<MacKey, number>,
  want: ReadonlyMap<number, ReadonlySet<string>>,
  capacity: number,
): Map<number, string[]> {
  const have = new Set<string>();
  for (const [k] of map.entriesBatch()) have.add(`${k.ifindex}/${k.mac}`);
  const keep = new Set<string>();
  const left = new Map<number, string[]>();
  let n = 0;
  const put: MacKey[] = [];
  for (const [ifindex, set] of want) {
    for (const mac of [...set].sort()) {
      const key = `${ifindex}/${mac}`;
      if (n >= capacity) {
        left.set(ifindex, [...(left.get(ifindex) ?? []), mac]);
        continue;
      }
      n++;
      keep.add(key);
      if (!have.has(key)) put.push({ ifindex, mac });
    }
  }
  for (const key of have) {
    if (keep.has(key)) continue;
    const i = key.indexOf('/');
    map.delete({ ifindex: Number(key.slice(0, i)), mac: key.slice(i + 1) });
  }
  for (const k of put) map.put(k, 1);
  return left;
}

/** Whether `name` is a bridge of the daemon's namespace (rtnetlink's kind; never /sys, another namespace's). */
function isBridge(name: string): boolean {
  try {
    return linkRowNamed(name)?.kind === 'bridge';
  } catch {
    return false;
  }
}
