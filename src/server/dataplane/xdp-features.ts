/**
 * A device's XDP features as the kernel reports them: the `xdp-features`
 * attribute of the netdev generic netlink family (Linux 6.3+,
 * Documentation/netlink/specs/netdev.yaml; what libbpf >= 1.2 reads into
 * bpf_xdp_query_opts.feature_flags and `ynl --family netdev` prints). The one
 * that matters here is NDO_XMIT: the device can transmit frames that native
 * XDP redirects to it (its driver has ndo_xdp_xmit). The kernel keeps it
 * true to the device's state: a bridge, bond or tun never has it; a veth has
 * it only while its peer has NAPI (a native-mode XDP program or GRO on the
 * peer; veth_set_xdp_features), whatever namespace the peer is in. Without
 * it, every frame redirected there in native mode is dropped
 * (xdp_do_redirect -> -EOPNOTSUPP / veth_xdp_xmit drop).
 *
 * One request per call on a netlink socket of the daemon's own network
 * namespace (a few microseconds); reads nothing else and changes nothing.
 */
import { NETLINK_GENERIC, nlAttr, nlAttrs, nlRequest } from './netlink.js';

// <linux/genetlink.h>, <linux/netdev.h> (uapi).
const GENL_ID_CTRL = 0x10;
const CTRL_CMD_GETFAMILY = 3;
const CTRL_ATTR_FAMILY_ID = 1;
const CTRL_ATTR_FAMILY_NAME = 2;
const NETDEV_CMD_DEV_GET = 1;
const NETDEV_A_DEV_IFINDEX = 1;
const NETDEV_A_DEV_XDP_FEATURES = 3;

/** enum netdev_xdp_act (uapi linux/netdev.h): bit -> name, as `ynl` prints them. */
export const XDP_ACT = {
  basic: 1n,
  redirect: 2n,
  'ndo-xmit': 4n,
  'xsk-zerocopy': 8n,
  'hw-offload': 16n,
  'rx-sg': 32n,
  'ndo-xmit-sg': 64n,
} as const;

/** The names of the bits set in `flags`, e.g. ["basic", "redirect", "rx-sg"]. */
export function xdpActNames(flags: bigint): string[] {
  return Object.entries(XDP_ACT)
    .filter(([, bit]) => (flags & bit) !== 0n)
    .map(([n]) => n);
}

let familyId: number | undefined | null; // null: the kernel has no netdev family

/** A generic netlink request: genlmsghdr (cmd, version 1) and attributes; the reply's attributes. */
function request(family: number, cmd: number, attrs: Buffer, what: string): Map<number, Buffer> | undefined {
  const genl = Buffer.from([cmd, 1, 0, 0]);
  const body = nlRequest(NETLINK_GENERIC, family, genl, attrs, what);
  return body && nlAttrs(body, 4);
}

function netdevFamily(): number | undefined {
  if (familyId !== undefined) return familyId ?? undefined;
  const reply = request(
    GENL_ID_CTRL,
    CTRL_CMD_GETFAMILY,
    nlAttr(CTRL_ATTR_FAMILY_NAME, Buffer.from('netdev\0')),
    'resolve the netdev netlink family',
  );
  const id = reply?.get(CTRL_ATTR_FAMILY_ID);
  familyId = id ? id.readUInt16LE(0) : null;
  return familyId ?? undefined;
}

/**
 * The XDP features of the device with `ifindex` in the daemon's network
 * namespace (a mask of {@link XDP_ACT}); undefined when the kernel does not
 * report them (before Linux 6.3) or the device is gone.
 */
export function xdpFeatures(ifindex: number): bigint | undefined {
  const family = netdevFamily();
  if (family === undefined) return undefined;
  const idx = Buffer.alloc(4);
  idx.writeUInt32LE(ifindex);
  const reply = request(
    family,
    NETDEV_CMD_DEV_GET,
    nlAttr(NETDEV_A_DEV_IFINDEX, idx),
    `read the XDP features of ifindex ${ifindex}`,
  );
  const v = reply?.get(NETDEV_A_DEV_XDP_FEATURES);
  return v && v.length >= 8 ? v.readBigUInt64LE(0) : undefined;
}
