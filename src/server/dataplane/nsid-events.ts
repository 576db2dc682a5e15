/**
 * The kernel's reports that this network namespace gave an id to another namespace or took one back (RTM_NEWNSID
 * and RTM_DELNSID to the rtnetlink group RTNLGRP_NSID). The kernel gives a freed id to the next namespace it meets
 * (a namespace deleted, then another with a device moved into it, gets the same id), so what netns-find.ts found,
 * or did not find, for an id holds only until such a report. One netlink socket, subscribed to that group, read
 * without waiting by {@link NsidEvents.take}: the kernel queues a report before the call that gave or took the id
 * returns (rtnl_net_notifyid), so a take() returns every change made before it, and a device that names an id can
 * only be seen after that id's report was queued. A queue that overflowed (ENOBUFS), a socket that failed, could
 * not be opened or was opened only now (report-socket.ts): said by take() as `lost` (anything may have changed).
 * Owns that socket and nothing else; close() is idempotent.
 */
import { lastErrno } from './libbpf.js';
import { nlAttrs, recvFn } from './netlink.js';
import { ReportSocket } from './report-socket.js';

// <linux/rtnetlink.h>, <linux/net_namespace.h>
/** The rtnetlink group of namespace id reports (RTNLGRP_NSID = 28), as a bind mask. */
const RTMGRP_NSID = 1 << (28 - 1);
const RTM_NEWNSID = 88;
const RTM_DELNSID = 89;
const NETNSA_NSID = 1;
const MSG_DONTWAIT = 0x40;
const EINTR = 4;
const EAGAIN = 11;
const ENOBUFS = 105;

export class NsidEvents {
  /**
   * Room for 1 MiB of reports where root may set it: a host where containers come and go gives and frees ids all
   * the time, and take() runs only when an id is looked up (an overflow costs every remembered miss).
   */
  private readonly sock = new ReportSocket(RTMGRP_NSID, 'namespace id reports', 1 << 20);
  private readonly buf = Buffer.alloc(16 << 10);

  /**
   * The ids reported given or taken back since the last take(), and whether reports may be missing from them (the
   * queue overflowed; the socket failed, could not be opened, or was opened only now: nothing was observed then).
   */
  take(): { ids: Set<number>; lost: boolean } {
    const ids = new Set<number>();
    const fd = this.sock.open();
    while (fd >= 0 && this.sock.fd === fd) {
      const n = Number(recvFn(fd, this.buf, this.buf.length, MSG_DONTWAIT));
      if (n < 0) {
        const errno = lastErrno();
        if (errno === EAGAIN) break;
        if (errno === EINTR) continue;
        if (errno === ENOBUFS) {
          this.sock.lost = true;
          continue;
        }
        this.sock.drop();
        break;
      }
      for (let i = 0; i + 16 <= n;) {
        const len = this.buf.readUInt32LE(i);
        if (len < 16 || i + len > n) break;
        const type = this.buf.readUInt16LE(i + 4);
        const msg = this.buf.subarray(i, i + len);
        i += (len + 3) & ~3;
        if ((type !== RTM_NEWNSID && type !== RTM_DELNSID) || len < 20) continue;
        const id = nlAttrs(msg, 20).get(NETNSA_NSID)?.readInt32LE(0); // after struct rtgenmsg (4 bytes)
        if (id !== undefined && id >= 0) ids.add(id);
      }
    }
    const out = { ids, lost: this.sock.lost || this.sock.fd < 0 };
    this.sock.lost = false;
    return out;
  }

  close(): void {
    this.sock.close();
  }
}
