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
