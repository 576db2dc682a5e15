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
import koffi from 'koffi';

import { KernelError } from './errors.js';
import { lastErrno } from './libbpf.js';

const libc = koffi.load('libc.so.6');
const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const sendFn = libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)');
const recvFn = libc.func('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)');
const closeFn = libc.func('int close(int fd)');

// <linux/netlink.h>, <linux/genetlink.h>, <linux/netdev.h> (uapi).
const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_GENERIC = 16;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
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
let seq = 0;

function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, 4);
  return b;
}

/** Attributes of a genetlink message body (after the 4-byte genlmsghdr), by type. */
function attrs(body: Buffer): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let i = 4; i + 4 <= body.length;) {
    const len = body.readUInt16LE(i);
    if (len < 4) break;
    out.set(body.readUInt16LE(i + 2) & 0x3fff, body.subarray(i + 4, i + len));
    i += (len + 3) & ~3;
  }
  return out;
}

/**
 * One genetlink request and its one reply's body; undefined when the kernel
 * answers ENOENT/ENODEV (no such family or device). Throws KernelError on
 * other errors.
 */
function request(family: number, cmd: number, payload: Buffer, what: string): Buffer | undefined {
  const fd = socketFn(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC) as number;
  if (fd < 0) throw new KernelError(`open a netlink socket to ${what}`, lastErrno() || 24, [], 'socket failed');
  try {
    const msg = Buffer.alloc(16 + 4 + payload.length);
    msg.writeUInt32LE(msg.length, 0);
    msg.writeUInt16LE(family, 4);
    msg.writeUInt16LE(NLM_F_REQUEST, 6);
    msg.writeUInt32LE(++seq, 8);
    msg.writeUInt8(cmd, 16);
    msg.writeUInt8(1, 17); // version
    payload.copy(msg, 20);
    if (Number(sendFn(fd, msg, msg.length, 0)) < 0) {
      throw new KernelError(what, lastErrno() || 5, [], 'netlink send failed');
    }
    const buf = Buffer.alloc(8192);
    // The reply was queued while send() ran (a genetlink doit answers synchronously): recv does not wait.
    const n = Number(recvFn(fd, buf, buf.length, 0));
    if (n < 16) throw new KernelError(what, lastErrno() || 5, [], 'netlink recv failed');
    const len = buf.readUInt32LE(0);
    const type = buf.readUInt16LE(4);
    if (type === NLMSG_ERROR) {
      const err = -buf.readInt32LE(16);
      if (err === 0) return Buffer.alloc(4);
      if (err === 2 || err === 19) return undefined; // ENOENT, ENODEV
      throw new KernelError(what, err, [], 'netlink error');
    }
    if (type === NLMSG_DONE) return undefined;
    return buf.subarray(16, Math.min(len, n));
  } finally {
    closeFn(fd);
  }
}

function netdevFamily(): number | undefined {
  if (familyId !== undefined) return familyId ?? undefined;
  const body = request(
    GENL_ID_CTRL,
    CTRL_CMD_GETFAMILY,
    attr(CTRL_ATTR_FAMILY_NAME, Buffer.from('netdev\0')),
    'resolve the netdev netlink family',
  );
  const id = body && attrs(body).get(CTRL_ATTR_FAMILY_ID);
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
  const body = request(
    family,
    NETDEV_CMD_DEV_GET,
    attr(NETDEV_A_DEV_IFINDEX, idx),
    `read the XDP features of ifindex ${ifindex}`,
  );
  const v = body && attrs(body).get(NETDEV_A_DEV_XDP_FEATURES);
  return v && v.length >= 8 ? v.readBigUInt64LE(0) : undefined;
}
