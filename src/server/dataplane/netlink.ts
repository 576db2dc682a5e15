/**
 * One netlink request and its one reply, through libc (koffi) on a socket
 * of the daemon's own network namespace: what xdp-features.ts (generic
 * netlink) and xdp.ts (rtnetlink) need without a dump of every device.
 * Requests go through one socket per protocol, opened at the first request
 * (the daemon's main thread never enters another namespace): a socket and a
 * close per request, and a 32 KiB reply buffer zeroed each time, cost every
 * UpdateRule tens of microseconds (it asks 4-6 questions). Dumps open their
 * own socket. Nothing else is kept: every answer is asked of the kernel.
 */
import koffi from 'koffi';

import { KernelError } from './errors.js';
import { lastErrno } from './libbpf.js';

/** libc's socket calls, through koffi (shared with link-events.ts, which holds a socket of its own). */
export const libc = koffi.load('libc.so.6');
export const socketFn = libc.func('int socket(int domain, int type, int protocol)');
export const sendFn = libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)');
export const recvFn = libc.func('intptr_t recv(int fd, _Out_ void *buf, size_t len, int flags)');
export const closeFn = libc.func('int close(int fd)');
export const setsockoptFn = libc.func(
  'int setsockopt(int fd, int level, int optname, const void *optval, uint32_t optlen)',
);

// <linux/netlink.h>
export const AF_NETLINK = 16;
export const SOCK_RAW = 3;
export const SOCK_CLOEXEC = 0o2000000;
/** Netlink protocol families used here. */
export const NETLINK_ROUTE = 0;
export const NETLINK_GENERIC = 16;
const NLM_F_REQUEST = 1;
/** Ask for an acknowledgement (an NLMSG_ERROR with error 0) of a request that has no other reply. */
export const NLM_F_ACK = 4;
/** Change an existing object (rtnetlink NEW requests, with NLM_F_REQUEST). */
export const NLM_F_REPLACE = 0x100;
/** Create the object if it does not exist (rtnetlink NEW requests). */
export const NLM_F_CREATE = 0x400;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
// <linux/netlink.h>: socket options.
const SOL_NETLINK = 270;
const NETLINK_GET_STRICT_CHK = 12;

let seq = 0;
/** The request socket of each protocol (fd), while it works. */
const requestSockets = new Map<number, number>();
/** Where replies are received (copied out before returning: callers keep them). */
const REPLY = Buffer.alloc(32 << 10);

function requestSocket(protocol: number, what: string): number {
  let fd = requestSockets.get(protocol);
  if (fd === undefined) {
    fd = socketFn(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol) as number;
    if (fd < 0) throw new KernelError(`open a netlink socket to ${what}`, lastErrno() || 24, [], 'socket failed');
    requestSockets.set(protocol, fd);
  }
  return fd;
}

/** Close a request socket that failed (the next request opens another). */
function dropSocket(protocol: number): void {
  const fd = requestSockets.get(protocol);
  requestSockets.delete(protocol);
  if (fd !== undefined) closeFn(fd);
}

/** A netlink attribute (struct nlattr + payload, padded to 4 bytes). */
export function nlAttr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, 4);
  return b;
}

/** Attributes from `from` to the end of `buf`, by type (NLA_F_NESTED and NLA_F_NET_BYTEORDER masked off). */
export function nlAttrs(buf: Buffer, from = 0): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  for (let i = from; i + 4 <= buf.length;) {
    const len = buf.readUInt16LE(i);
    if (len < 4) break;
    out.set(buf.readUInt16LE(i + 2) & 0x3fff, buf.subarray(i + 4, i + len));
    i += (len + 3) & ~3;
  }
  return out;
}

/**
 * Send one request (`header` is the family header: genlmsghdr, ifinfomsg,
 * ...; then `attrs`) and return the reply's payload after the nlmsghdr;
 * undefined when the kernel answers ENOENT or ENODEV (no such family or
 * device). Throws KernelError on any other error. The reply of a request
 * without NLM_F_DUMP is queued before send() returns: recv does not wait.
 * `flags` are added to NLM_F_REQUEST: a request that changes something and
 * has no reply of its own (RTM_NEWNEIGH) must carry NLM_F_ACK.
 */
export function nlRequest(
  protocol: number,
  type: number,
  header: Buffer,
  attrs: Buffer,
  what: string,
  flags = 0,
): Buffer | undefined {
  const fd = requestSocket(protocol, what);
  const msg = Buffer.concat([Buffer.alloc(16), header, attrs]);
  msg.writeUInt32LE(msg.length, 0);
  msg.writeUInt16LE(type, 4);
  msg.writeUInt16LE(NLM_F_REQUEST | flags, 6);
  const mySeq = ++seq >>> 0;
  msg.writeUInt32LE(mySeq, 8);
  if (Number(sendFn(fd, msg, msg.length, 0)) < 0) {
    const errno = lastErrno() || 5;
    dropSocket(protocol);
    throw new KernelError(what, errno, [], 'netlink send failed');
  }
  const buf = REPLY;
  // The reply is queued before send() returns; a message of another sequence number is what an earlier
  // request left (an acknowledgement it did not ask to read): skipped.
  for (;;) {
    const n = Number(recvFn(fd, buf, buf.length, 0));
    if (n < 16) {
      const errno = lastErrno() || 5;
      dropSocket(protocol);
      throw new KernelError(what, errno, [], 'netlink recv failed');
    }
    if (buf.readUInt32LE(8) !== mySeq) continue;
    const len = Math.min(buf.readUInt32LE(0), n);
    const t = buf.readUInt16LE(4);
    if (t === NLMSG_ERROR) {
      const err = -buf.readInt32LE(16);
      if (err === 0) return Buffer.alloc(0);
      if (err === 2 || err === 19) return undefined; // ENOENT, ENODEV
      throw new KernelError(what, err, [], 'netlink error');
    }
    if (t === NLMSG_DONE) return undefined;
    return Buffer.from(buf.subarray(16, len));
  }
}

const NLM_F_DUMP = 0x300;

/**
 * A dump request (NLM_F_DUMP): every reply message's payload after its nlmsghdr, until NLMSG_DONE.
 * Throws KernelError when the kernel answers with an error (ENOENT and ENODEV included: a dump of a
 * namespace that is gone says so), as an NLMSG_ERROR or as the error an NLMSG_DONE carries (a dump that
 * failed once started: an IFLA_TARGET_NETNSID the kernel refuses, EACCES or EINVAL). `strict`: the socket
 * asks for strict checking (NETLINK_GET_STRICT_CHK), without which some dumps ignore their filter attributes
 * (RTM_GETADDR reads IFA_TARGET_NETNSID only then, since Linux 5.0: else the daemon's own addresses).
 */
export function nlDump(
  protocol: number,
  type: number,
  header: Buffer,
  attrs: Buffer,
  what: string,
  { strict = false } = {},
): Buffer[] {
  const fd = socketFn(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol) as number;
  if (fd < 0) throw new KernelError(`open a netlink socket to ${what}`, lastErrno() || 24, [], 'socket failed');
  try {
    if (strict) {
      const one = Buffer.alloc(4);
      one.writeInt32LE(1);
      if ((setsockoptFn(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, one, 4) as number) < 0) {
        throw new KernelError(`ask strict checking to ${what}`, lastErrno() || 92, [], 'setsockopt failed');
      }
    }
    const msg = Buffer.concat([Buffer.alloc(16), header, attrs]);
    msg.writeUInt32LE(msg.length, 0);
    msg.writeUInt16LE(type, 4);
    msg.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    const mySeq = ++seq;
    msg.writeUInt32LE(mySeq, 8);
    if (Number(sendFn(fd, msg, msg.length, 0)) < 0) {
      throw new KernelError(what, lastErrno() || 5, [], 'netlink send failed');
    }
    const out: Buffer[] = [];
    const buf = Buffer.alloc(64 << 10);
    for (;;) {
      const n = Number(recvFn(fd, buf, buf.length, 0));
      if (n < 16) throw new KernelError(what, lastErrno() || 5, [], 'netlink recv failed');
      for (let i = 0; i + 16 <= n;) {
        const len = buf.readUInt32LE(i);
        if (len < 16 || i + len > n) break;
        const t = buf.readUInt16LE(i + 4);
        if (t === NLMSG_DONE) {
          const err = len >= 20 ? -buf.readInt32LE(i + 16) : 0;
          if (err > 0) throw new KernelError(what, err, [], 'netlink error');
          return out;
        }
        if (t === NLMSG_ERROR) {
          const err = -buf.readInt32LE(i + 16);
          if (err === 0) return out;
          throw new KernelError(what, err, [], 'netlink error');
        }
        out.push(Buffer.from(buf.subarray(i + 16, i + len)));
        i += (len + 3) & ~3;
      }
    }
  } finally {
    closeFn(fd);
  }
}
