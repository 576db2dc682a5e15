/**
 * A netlink socket of the daemon's namespace subscribed to rtnetlink groups (the kernel's reports of changes), and
 * whether reports may be missing from what was received on it: what link-events.ts (device deletions) and
 * nsid-events.ts (namespace ids given and taken back) receive their reports on. Opened at first use, and again
 * after a failure; a socket opened only now, one that failed, could not be opened, or whose queue overflowed
 * (the owner says so: `lost = true`) has lost reports. Reading and parsing are the owner's. close() is idempotent.
 */
import { lastErrno } from './libbpf.js';
import { AF_NETLINK, closeFn, libc, NETLINK_ROUTE, setsockoptFn, SOCK_CLOEXEC, SOCK_RAW, socketFn } from './netlink.js';

const bindFn = libc.func('int bind(int fd, const void *addr, uint32_t len)');
const getsocknameFn = libc.func('int getsockname(int fd, _Out_ void *addr, _Inout_ uint32_t *len)');

const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33;

export class ReportSocket {
  /** The socket (-1: none now). */
  fd = -1;
  /** Its port (the kernel's): a reply to a request of its own carries it. */
  port = 0;
  /** Reports may be missing from what was received since the owner last cleared this. */
  lost = false;
  /** Why the socket could not be opened (tried again at the next open()). */
  openError?: string;
  private closed = false;

  /**
   * @param groups the rtnetlink groups, as a bind mask (1 << (RTNLGRP_X - 1))
   * @param what the reports, for messages ("link events")
   * @param rcvbuf room for reports between two reads, bytes, where root may set it (0: the default)
   */
  constructor(
    private readonly groups: number,
    private readonly what: string,
    private readonly rcvbuf = 0,
  ) {}

  /** The socket, opened now if need be; -1 once closed or when it cannot be opened ({@link openError} says why). */
  open(): number {
    if (this.fd >= 0 || this.closed) return this.fd;
    const fd = socketFn(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE) as number;
    if (fd < 0) {
      this.openError = `open a netlink socket for ${this.what}: errno ${lastErrno()}`;
      return -1;
    }
    if (this.rcvbuf) {
      const size = Buffer.alloc(4);
      size.writeInt32LE(this.rcvbuf);
      if ((setsockoptFn(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, 4) as number) < 0) {
        setsockoptFn(fd, SOL_SOCKET, SO_RCVBUF, size, 4); // without CAP_NET_ADMIN: as much as rmem_max allows
      }
    }
    const sa = Buffer.alloc(12); // struct sockaddr_nl: family, pad, port (0: the kernel's), groups
    sa.writeUInt16LE(AF_NETLINK, 0);
    sa.writeUInt32LE(this.groups, 8);
    const len = [12];
    if ((bindFn(fd, sa, 12) as number) < 0 || (getsocknameFn(fd, sa, len) as number) < 0) {
      this.openError = `subscribe to ${this.what}: errno ${lastErrno()}`;
      closeFn(fd);
      return -1;
    }
    this.openError = undefined;
    this.port = sa.readUInt32LE(4);
    this.fd = fd;
    // Reports from before it was opened were never received.
    this.lost = true;
    return fd;
  }

  /** Close a socket that failed: its reports since are lost (the next open() opens another). */
  drop(): void {
    if (this.fd >= 0) closeFn(this.fd);
    this.fd = -1;
    this.lost = true;
  }

  close(): void {
    this.closed = true;
    if (this.fd >= 0) closeFn(this.fd);
    this.fd = -1;
  }
}
