/**
 * getsockopt(SO_PEERCRED) on a connected Unix socket: the uid, gid and pid
 * the kernel recorded for the peer when it connected. Used by the access
 * layer to identify local clients; the values cannot be forged by the peer.
 * This is the only koffi use outside the libbpf binding; it touches no map.
 */
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const getsockopt = libc.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *val, _Inout_ uint32_t *len)');

// <asm-generic/socket.h>: the values of x86-64 and arm64 (not of mips, ppc, sparc, parisc).
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

/** struct ucred. */
export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** The peer of a connected AF_UNIX socket; throws with errno on failure. */
export function peerCred(fd: number): PeerCred {
  const buf = Buffer.alloc(12);
  const len = [12];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, buf, len) !== 0) {
    throw new Error(`getsockopt SO_PEERCRED on fd ${fd}: errno ${koffi.errno()}`);
  }
  if (len[0] !== 12) throw new Error(`getsockopt SO_PEERCRED on fd ${fd}: unexpected length ${len[0]}`);
  return { pid: buf.readInt32LE(0), uid: buf.readUInt32LE(4), gid: buf.readUInt32LE(8) };
}

// ---- the owner of a local TCP socket: NETLINK_SOCK_DIAG (what `ss` uses) ----------------------------

const socket = libc.func('int socket(int domain, int type, int protocol)');
const send = libc.func('intptr_t send(int fd, const uint8_t *buf, uintptr_t len, int flags)');
const recv = libc.func('intptr_t recv(int fd, _Out_ uint8_t *buf, uintptr_t len, int flags)');
const close = libc.func('int close(int fd)');

// <linux/netlink.h>, <linux/sock_diag.h>, <linux/inet_diag.h>
const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_SOCK_DIAG = 4;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const IPPROTO_TCP = 6;
const NLMSG_HDRLEN = 16;
/** struct inet_diag_req_v2: family, protocol, ext, pad, states, then struct inet_diag_sockid (48 bytes). */
const REQ_LEN = NLMSG_HDRLEN + 8 + 48;
/** Offset of idiag_uid in the reply: header, then inet_diag_msg's 4 bytes, sockid, expires, rqueue, wqueue. */
const UID_OFFSET = NLMSG_HDRLEN + 4 + 48 + 12;

let diagFd = -1;
let seq = 0;

/** One end of a TCP connection: address (IPv4, IPv6 or IPv4-mapped IPv6) and port. */
export interface TcpEnd {
  address: string;
  port: number;
}

/** 4 or 16 address bytes in network order (an IPv4-mapped IPv6 address as its IPv4 bytes). */
function addressBytes(text: string): Buffer | undefined {
  const v4 = /^(?:::ffff:)?(\d+)\.(\d+)\.(\d+)\.(\d+)$/i.exec(text);
  if (v4) return Buffer.from(v4.slice(1, 5).map(Number));
  if (!text.includes(':')) return undefined;
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  if (groups.length !== 8) return undefined;
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16) & 0xffff, i * 2));
  return out;
}

/**
 * The uid owning the TCP socket whose local end is `local` and remote end
 * `remote`, in the daemon's network namespace: one exact lookup through
 * NETLINK_SOCK_DIAG (inet_diag, as `ss` does; tens of microseconds, whatever
 * the number of sockets, unlike reading /proc/net/tcp). For a loopback
 * connection, `local` is the client's end: the uid the kernel recorded when
 * the client created its socket. undefined when no such socket exists (it
 * closed meanwhile) or the lookup fails.
 */
export function tcpSocketUid(local: TcpEnd, remote: TcpEnd): number | undefined {
  const src = addressBytes(local.address);
  const dst = addressBytes(remote.address);
  if (!src || !dst || src.length !== dst.length) return undefined;
  if (diagFd < 0) {
    diagFd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as number;
    if (diagFd < 0) return undefined;
  }
  const req = Buffer.alloc(REQ_LEN);
  req.writeUInt32LE(REQ_LEN, 0);
  req.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
  req.writeUInt16LE(NLM_F_REQUEST, 6);
  const mySeq = (seq = (seq + 1) >>> 0);
  req.writeUInt32LE(mySeq, 8);
  let o = NLMSG_HDRLEN;
  req.writeUInt8(src.length === 4 ? AF_INET : AF_INET6, o);
  req.writeUInt8(IPPROTO_TCP, o + 1);
  req.writeUInt32LE(0xffffffff, o + 4); // every state
  o += 8; // struct inet_diag_sockid
  req.writeUInt16BE(local.port, o);
  req.writeUInt16BE(remote.port, o + 2);
  src.copy(req, o + 4);
  dst.copy(req, o + 20);
  req.writeUInt32LE(0, o + 36); // any interface
  req.writeUInt32LE(0xffffffff, o + 40); // INET_DIAG_NOCOOKIE
  req.writeUInt32LE(0xffffffff, o + 44);
  if (Number(send(diagFd, req, REQ_LEN, 0)) !== REQ_LEN) return undefined;
  const reply = Buffer.alloc(8192);
  for (;;) {
    const n = Number(recv(diagFd, reply, reply.length, 0));
    if (n < NLMSG_HDRLEN) return undefined;
    if (reply.readUInt32LE(8) !== mySeq) continue; // a stale answer to an earlier request
    if (reply.readUInt16LE(4) === NLMSG_ERROR || n < UID_OFFSET + 4) return undefined;
    return reply.readUInt32LE(UID_OFFSET);
  }
}

/** Close the sock_diag socket (it is reopened on the next lookup). */
export function closeSockDiag(): void {
  if (diagFd >= 0) close(diagFd);
  diagFd = -1;
}
