/**
 * The deletions of devices the kernel reports (RTM_DELLINK to the rtnetlink group RTNLGRP_LINK), in the kernel's
 * order with the reads of devices that are judged against them: one netlink socket, subscribed to link events,
 * on which {@link LinkEvents.read} asks RTM_GETLINK for a device. Notifications and the replies to requests on
 * one netlink socket are queued in the order the kernel made them, and a device's deletion is reported before
 * its ifindex can be given to another device (the deletion sends it before it returns, under the RTNL lock), so
 * a read takes off the socket every deletion reported before it and none after: what {@link LinkEvents.take}
 * hands over after a read is exactly what came before that read. `ip monitor` (link-monitor.ts, another
 * process, through a pipe) cannot give that order: its report of a deletion may come after a read of the device
 * made again in its place. A queue that overflowed (ENOBUFS) lost reports: said by `take()`, as is a socket that
 * could not be opened. Owns that socket and nothing else; close() is idempotent.
 */

import { nameText } from '../../shared/visible.js';
import { KernelError } from './errors.js';
import { lastErrno } from './libbpf.js';
import { nlAttr, nlAttrs, recvFn, sendFn } from './netlink.js';
import { ReportSocket } from './report-socket.js';

/** The rtnetlink group of link events (RTNLGRP_LINK = 1), as a bind mask. */
const RTMGRP_LINK = 1;
const MSG_DONTWAIT = 0x40;
const NLM_F_REQUEST = 1;
const NLMSG_ERROR = 2;
const RTM_NEWLINK = 16;
const RTM_DELLINK = 17;
const RTM_GETLINK = 18;
const IFLA_IFNAME = 3;
const IFLA_STATS64 = 23;
const IFLA_CARRIER_CHANGES = 35;
/** Present in the RTM_DELLINK of a device moved to another namespace (not deleted: `ip monitor` says new-netns). */
const IFLA_NEW_NETNSID = 45;
const EAGAIN = 11;
const ENOBUFS = 105;
/** Room for the reports that come between two reads (a pass reads every second): 4 MiB where root may set it. */
const RCVBUF = 4 << 20;

/** A device the kernel reported deleted. */
export interface LinkDeletion {
  ifindex: number;
  name: string;
}

/** What {@link LinkEvents.read} reads of a device: its ifindex and what only grows over its life. */
export interface LinkRead {
  ifindex: number;
  packets: bigint;
  carrierChanges: number;
}

export class LinkEvents {
  private readonly sock = new ReportSocket(RTMGRP_LINK, 'link events', RCVBUF);
  private seq = 0;
  private readonly buf = Buffer.alloc(64 << 10);
  private pending: LinkDeletion[] = [];

  /** Why the socket could not be opened (said by the caller; tried again at the next read). */
  get openError(): string | undefined {
    return this.sock.openError;
  }

  /**
   * Deletions reported before the last read and not yet taken, in the kernel's order, and whether some may be
   * missing from them (the queue overflowed, or the socket could not be opened: nothing was observed then).
   */
  take(): { deleted: LinkDeletion[]; lost: boolean } {
    // (Reports from before the socket was opened were never received: a read made before, by another way, is not
    // shown to be of the device there now.)
    const out = { deleted: this.pending, lost: this.sock.lost || this.sock.fd < 0 };
    this.pending = [];
    this.sock.lost = false;
    return out;
  }

  /**
   * The device named `name` as the kernel has it now (undefined when there is none), read after every deletion
   * reported before it (kept for take()). Throws KernelError when it cannot be read.
   */
  read(name: string): LinkRead | undefined {
    const fd = this.sock.open();
    if (fd < 0) throw new KernelError(`read link ${name}`, 9, [], this.sock.openError ?? 'no link event socket');
    const ifinfo = Buffer.alloc(16); // struct ifinfomsg: AF_UNSPEC, by name
    const attrs = nlAttr(IFLA_IFNAME, Buffer.from(`${name}\0`));
    // A reply the kernel could not queue (the queue was full of reports: EAGAIN) is asked again once it is read.
    for (let attempt = 0; attempt < 3; attempt++) {
      const mySeq = (this.seq = (this.seq + 1) >>> 0 || 1);
      const msg = Buffer.concat([Buffer.alloc(16), ifinfo, attrs]);
      msg.writeUInt32LE(msg.length, 0);
      msg.writeUInt16LE(RTM_GETLINK, 4);
      msg.writeUInt16LE(NLM_F_REQUEST, 6);
      msg.writeUInt32LE(mySeq, 8);
      if (Number(sendFn(fd, msg, msg.length, 0)) < 0) {
        const errno = lastErrno() || 5;
        this.sock.drop();
        throw new KernelError(`read link ${name}`, errno, [], 'netlink send failed');
      }
      const r = this.receive(mySeq, name);
      if (r !== 'again') return r;
    }
    throw new KernelError(`read link ${name}`, EAGAIN, [], 'no reply: the link event queue stays full');
  }

  /** Reports up to the reply to `mySeq` (kept), then that reply; 'again' when it never came (not queued). */
  private receive(mySeq: number, name: string): LinkRead | undefined | 'again' {
    const buf = this.buf;
    for (;;) {
      const n = Number(recvFn(this.sock.fd, buf, buf.length, MSG_DONTWAIT));
      if (n < 0) {
        const errno = lastErrno();
        if (errno === ENOBUFS) {
          this.sock.lost = true;
          continue;
        }
        if (errno === EAGAIN) return 'again';
        if (errno === 4) continue; // EINTR
        this.sock.drop();
        throw new KernelError(`read link ${name}`, errno || 5, [], 'netlink recv failed');
      }
      for (let i = 0; i + 16 <= n;) {
        const len = buf.readUInt32LE(i);
        if (len < 16 || i + len > n) break;
        const type = buf.readUInt16LE(i + 4);
        const msg = buf.subarray(i, i + len);
        i += (len + 3) & ~3;
        // Ours: this socket's port and this request's number (a report carries those of whoever caused it).
        if (msg.readUInt32LE(12) === this.sock.port && msg.readUInt32LE(8) === mySeq) {
          if (type === NLMSG_ERROR) {
            const err = -msg.readInt32LE(16);
            if (err === 19 || err === 2) return undefined; // ENODEV, ENOENT: no such device
            if (err === EAGAIN || err === ENOBUFS) return 'again';
            throw new KernelError(`read link ${name}`, err, [], 'netlink error');
          }
          if (type !== RTM_NEWLINK || len < 32) continue;
          const a = nlAttrs(msg, 32);
          const stats = a.get(IFLA_STATS64);
          return {
            ifindex: msg.readInt32LE(20),
            packets: stats && stats.length >= 16 ? stats.readBigUInt64LE(0) + stats.readBigUInt64LE(8) : 0n,
            carrierChanges: a.get(IFLA_CARRIER_CHANGES)?.readUInt32LE(0) ?? 0,
          };
        }
        // A device deleted (AF_UNSPEC: not a bridge port's AF_BRIDGE record; not one moved to another namespace).
        if (type !== RTM_DELLINK || len < 32 || msg.readUInt8(16) !== 0) continue;
        const a = nlAttrs(msg, 32);
        if (a.has(IFLA_NEW_NETNSID)) continue;
        const raw = a.get(IFLA_IFNAME);
        const end = raw ? raw.indexOf(0) : -1;
        const gone = raw ? nameText(raw.subarray(0, end < 0 ? raw.length : end)) : '';
        this.pending.push({ ifindex: msg.readInt32LE(20), name: gone });
        if (this.pending.length > 4096) {
          // Nobody takes them (no reads are judged): the oldest are dropped, and that is said as a loss.
          this.pending.splice(0, this.pending.length - 4096);
          this.sock.lost = true;
        }
      }
    }
  }

  close(): void {
    this.sock.close();
  }
}
