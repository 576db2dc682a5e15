/**
 * ARP requests of our own and their replies, read off the wire: the only evidence that a MAC answers for a
 * backend's IP address. A neighbour entry is not such evidence: any tool may write one (`ip neigh replace IP
 * lladdr M nud reachable`), and a second write during a probe of the kernel's makes the same PROBE ->
 * REACHABLE transition an answer makes.
 *
 * One AF_PACKET socket (SOCK_DGRAM, ETH_P_ARP; libc through koffi, as for netlink), opened while requests
 * are outstanding and closed when none have been for a while. A request is sent as the kernel sends its
 * own: sender MAC the egress's, sender IP an IPv4 address of the egress's own (the caller picks it: one in
 * the backend's subnet), out of the backend's egress to one MAC (unicast, as the kernel's NUD_PROBE does:
 * only a host that owns that MAC receives it) or to all (broadcast: whoever has the address answers with its
 * MAC). Only an egress without any IPv4 address sends the RFC 5227 probe form (sender IP 0.0.0.0): a Linux
 * router answers that form only for its own addresses, never by proxy ARP, so a backend behind a proxy-ARP
 * router could never be confirmed with it. An answer is an ARP reply received on that interface, addressed
 * to this host (PACKET_HOST, target MAC the interface's, target IP the request's sender IP), whose sender IP
 * is the backend's and whose sender MAC (and Ethernet source) is the MAC asked, for a unicast request. A request is sent up to {@link ARP_TRIES} times,
 * {@link ARP_RETRY_MS} apart, until answered; unanswered by then (0.6 s), it is reported silent.
 *
 * The socket is non-blocking and read on a timer every {@link ARP_READ_MS} while requests are outstanding:
 * nothing waits on the event loop.
 *
 * On a loaded machine the daemon's event loop lags (a long pass, GC, a CPU hog beside it, the process stopped):
 * a backend is never called silent for the daemon's own lag. An answer is judged by when it arrived: each tick
 * reads everything queued on the socket before any deadline is judged (a tick that could not drain it judges
 * none), and each frame carries the kernel's receive time (SIOCGSTAMP), which is the time an
 * answer or a claim is recorded with, not the time the daemon got to it. A deadline counts from the moment the
 * request was sent (after sendto returned). A question is called silent only when its last window was watched
 * by a loop that ran: when the loop lagged more than the question's window while it was outstanding
 * ({@link ArpProber} `onUnknown`), or the kernel dropped frames for the socket in that time (its receive buffer
 * full: PACKET_STATISTICS tp_drops; the answer may be among them), it is asked again (up to {@link ARP_TRIES}
 * more requests), and when that cannot settle it either the verdict is "cannot tell", never "silent". A request
 * that could not be sent is no silence either ("cannot tell": nothing was asked).
 */
import koffi from 'koffi';

import { monotonicMs } from '../core/clock.js';
import { errnoName } from './errors.js';
import { lastErrno } from './libbpf.js';

const libc = koffi.load('libc.so.6');
const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const bindFn = libc.func('int bind(int fd, const void *addr, uint32_t len)');
const sendtoFn = libc.func(
  'intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)',
);
const recvfromFn = libc.func(
  'intptr_t recvfrom(int fd, _Out_ void *buf, size_t len, int flags, _Out_ void *addr, _Inout_ uint32_t *addrlen)',
);
const closeFn = libc.func('int close(int fd)');
const getsockoptFn = libc.func('int getsockopt(int fd, int level, int name, _Out_ void *val, _Inout_ uint32_t *len)');
const ioctlFn = libc.func('int ioctl(int fd, unsigned long request, _Out_ void *arg)');

const AF_PACKET = 17;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const ETH_P_ARP = 0x0806;
const ARPHRD_ETHER = 1;
const ARPOP_REQUEST = 1;
const ARPOP_REPLY = 2;
const PACKET_HOST = 0;
const PACKET_OUTGOING = 4;
const EAGAIN = 11;
const EPERM = 1;
const EACCES = 13;
const SOL_PACKET = 263;
const PACKET_STATISTICS = 6;
const SIOCGSTAMP = 0x8906;
/**
 * The oldest a frame's kernel receive time is taken to be (ms): a frame queued longer than this (a loop stalled
 * for seconds) is dated this much before its read, and a wall-clock step between the stamp and the read moves it
 * by at most this much.
 */
const STAMP_AGE_MAX_MS = 10_000;
/** Frames read per tick at most: a tick that reads this many without emptying the socket judges no deadline. */
const READ_MAX = 4096;

/** "errno 1 (EPERM)". */
const errnoOf = (e: number) => `errno ${e} (${errnoName(e)})`;

/** How many requests are sent for one question (the kernel's ucast_solicit default). */
export const ARP_TRIES = 3;
/**
 * Time between them, and after the last one until it is given up (ms): a MAC that stopped answering (a host
 * that took another MAC without announcing it) is known within ~1 s of being asked.
 */
export const ARP_RETRY_MS = 200;
/**
 * The same for a question that must be settled at once (ms): does a MAC that answered before still answer,
 * now that another one does for its address? A real change (the old MAC gone) is followed once it is found
 * silent (3 requests, 0.3 s), within the second the reconciler has to follow a change.
 */
export const ARP_RETRY_SOON_MS = 100;
/** How often the socket is read while requests are outstanding (ms). */
export const ARP_READ_MS = 10;
/** The socket is closed when no request has been outstanding for this long (ms). */
const IDLE_CLOSE_MS = 5000;

/** A question put on the wire: does `mac` (or anyone, for a broadcast) answer for `ip` on `ifindex`? */
export interface ArpQuestion {
  ip: string;
  /** The interface's name when asked (for the caller; the ifindex is what is matched). */
  iface: string;
  ifindex: number;
  /** The MAC asked (lower case); '' for a broadcast request. */
  mac: string;
  /** The requests' sender IP (an address of the egress's own; '0.0.0.0' when it has none). */
  sender?: string;
  /**
   * Where the replies are delivered when not on `ifindex` itself: its master's ifindex for a bridge port (or a
   * bond's slave). A frame received on a port is handed to the bridge before protocol handlers run, so a packet
   * socket for ARP sees the replies on the bridge, never on the port the requests went out of.
   */
  rx?: number;
}

/** What was seen: `mac` answered for `ip` on `ifindex` (`question.mac` is '' for a broadcast). */
export interface ArpAnswer {
  question: ArpQuestion;
  mac: string;
  /** Round trip from the first request (ms). */
  ms: number;
  /** When the answer arrived (the kernel's receive time on the monotonic clock, ms; the read's time when it has none). */
  at: number;
}

/**
 * Why a question was given up without a verdict: the daemon cannot tell whether the host answered ({@link
 * ArpProber} onUnknown): its loop lagged more than the window, the socket dropped frames, or a request could
 * not be sent.
 */
export interface ArpUnknown {
  question: ArpQuestion;
  why: string;
}

/**
 * An ARP packet read off the wire (request or reply, to us or not, not one this host sent) whose sender claims
 * `ip` from `mac` (RFC 5227: any ARP packet whose sender IP is the address; sender MAC the one claiming it).
 */
export interface ArpClaim {
  ifindex: number;
  ip: string;
  mac: string;
  /** When it arrived (as {@link ArpAnswer.at}). */
  at: number;
}

/** The socket calls the prober makes (the kernel's by default; a test's fake). */
export interface ArpIo {
  /** Open a non-blocking packet socket for ARP: its fd, or -errno. */
  open(): number;
  /** Send `frame` to `to` (struct sockaddr_ll): >= 0, or -errno. */
  send(fd: number, frame: Buffer, to: Buffer): number;
  /** Read one frame into `buf`, its sockaddr_ll into `from`: its length, or -errno (-EAGAIN: none queued). */
  recv(fd: number, buf: Buffer, from: Buffer): number;
  /** When the last frame read arrived (ms, monotonic: core/clock.ts), if the kernel says. */
  stamp(fd: number): number | undefined;
  /** Frames the kernel dropped for the socket since the last call (its receive buffer full); undefined: unknown. */
  drops(fd: number): number | undefined;
  close(fd: number): void;
}

/** {@link ArpIo} on the kernel (libc through koffi). */
export const kernelArpIo: ArpIo = {
  open() {
    const fd = Number(socketFn(AF_PACKET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0x0608)); // htons(ETH_P_ARP)
    if (fd < 0) return -(lastErrno() || EPERM);
    const addr = sockaddrLl(0);
    if (Number(bindFn(fd, addr, addr.length)) < 0) {
      const e = lastErrno() || EPERM;
      closeFn(fd);
      return -e;
    }
    // The kernel's receive time on every frame, read back with SIOCGSTAMP: its first call turns the socket's
    // timestamps on (SOCK_TIMESTAMP; it answers ENOENT, nothing received yet). Not SO_TIMESTAMP: with it the
    // kernel puts the time in a control message of recvmsg and no longer in what SIOCGSTAMP reads.
    ioctlFn(fd, SIOCGSTAMP, STAMP);
    return fd;
  },
  send(fd, frame, to) {
    return Number(sendtoFn(fd, frame, frame.length, 0, to, to.length)) < 0 ? -(lastErrno() || EPERM) : 0;
  },
  recv(fd, buf, from) {
    const len = [from.length];
    const got = Number(recvfromFn(fd, buf, buf.length, 0, from, len));
    return got < 0 ? -(lastErrno() || EAGAIN) : got;
  },
  stamp(fd) {
    const tv = STAMP;
    if (Number(ioctlFn(fd, SIOCGSTAMP, tv)) < 0) return undefined;
    const ms = Number(tv.readBigInt64LE(0)) * 1000 + Math.floor(Number(tv.readBigInt64LE(8)) / 1000);
    if (!(ms > 0)) return undefined;
    // The kernel stamps by the wall clock; the prober's times are monotonic (core/clock.ts): the frame's age
    // (now by the wall clock minus the stamp, read at once after the frame) taken from the monotonic now. A
    // wall-clock step between the two cannot make it older than STAMP_AGE_MAX_MS or younger than now.
    return monotonicMs() - Math.min(STAMP_AGE_MAX_MS, Math.max(0, Date.now() - ms));
  },
  drops(fd) {
    const st = STATS;
    const len = [st.length];
    if (Number(getsockoptFn(fd, SOL_PACKET, PACKET_STATISTICS, st, len)) < 0) return undefined;
    return st.readUInt32LE(4); // struct tpacket_stats { tp_packets, tp_drops }: reset by the read
  },
  close(fd) {
    closeFn(fd);
  },
};
const STAMP = Buffer.alloc(16); // struct timeval
const STATS = Buffer.alloc(8); // struct tpacket_stats

interface Outstanding {
  q: ArpQuestion;
  /** The interface's own MAC (the requests' sender, the replies' target). */
  own: Buffer;
  /** The requests' sender IP (the replies' target IP). */
  ownIp: Buffer;
  first: number;
  last: number;
  sent: number;
  /** Time between its requests (ms). */
  retry: number;
  /** Requests sent again because a window could not be watched (the loop lagged, the socket dropped frames). */
  again: number;
  /**
   * Why its current window cannot count as silence, if it cannot: the daemon's loop lagged more than the window,
   * or the kernel dropped frames for the socket (the answer may be among them), while it was outstanding.
   */
  blind?: string;
}

const keyOf = (q: ArpQuestion) => `${q.ifindex}/${q.ip}/${q.mac}`;

function macBytes(mac: string): Buffer | undefined {
  const b = Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));
  return b.length === 6 && mac.split(':').length === 6 && ![...b].some((x) => Number.isNaN(x)) ? b : undefined;
}

function ipBytes(ip: string): Buffer | undefined {
  const a = ip.split('.').map(Number);
  return a.length === 4 && a.every((x) => Number.isInteger(x) && x >= 0 && x <= 255) ? Buffer.from(a) : undefined;
}

function macText(b: Buffer): string {
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** struct sockaddr_ll (20 bytes) for ARP on `ifindex`, with a link-layer destination when given. */
function sockaddrLl(ifindex: number, dest?: Buffer): Buffer {
  const a = Buffer.alloc(20);
  a.writeUInt16LE(AF_PACKET, 0);
  a.writeUInt16BE(ETH_P_ARP, 2);
  a.writeInt32LE(ifindex, 4);
  a.writeUInt16LE(ARPHRD_ETHER, 8);
  if (dest) {
    a.writeUInt8(6, 11);
    dest.copy(a, 12);
  }
  return a;
}

/** An ARP request: who has `ip`? Sender `own` at `ownIp` (0.0.0.0: an RFC 5227 probe), target MAC the one asked (or none). */
export function arpRequest(own: Buffer, ownIp: Buffer, ip: Buffer, target?: Buffer): Buffer {
  const p = Buffer.alloc(28);
  p.writeUInt16BE(ARPHRD_ETHER, 0);
  p.writeUInt16BE(0x0800, 2);
  p.writeUInt8(6, 4);
  p.writeUInt8(4, 5);
  p.writeUInt16BE(ARPOP_REQUEST, 6);
  own.copy(p, 8);
  ownIp.copy(p, 14);
  if (target) target.copy(p, 18);
  ip.copy(p, 24);
  return p;
}

export class ArpProber {
  private fd = -1;
  private readonly outstanding = new Map<string, Outstanding>();
  /** The ports asked out of, by the master their replies are delivered on (ArpQuestion.rx). */
  private readonly ports = new Map<number, Set<number>>();
  private timer?: NodeJS.Timeout;
  private idleSince = 0;
  /** When the last tick ran (this.now()): the loop's lag is the gap to the next one beyond ARP_READ_MS. */
  private lastTick = 0;
  /** Frames the kernel dropped for the socket since it was opened (PACKET_STATISTICS), for whoever reports it. */
  dropped = 0;
  /** Questions given up as "cannot tell" (onUnknown), and the longest loop lag seen (ms), for whoever reports it. */
  unknown = 0;
  maxLagMs = 0;
  private readonly buf = Buffer.alloc(1600);
  private readonly from = Buffer.alloc(20);
  /** Why the socket could not be opened or a request sent (the last time), for whoever reports it. */
  lastError?: string;
  /**
   * The last attempt to open the socket was refused (EPERM/EACCES: no CAP_NET_RAW): no request can be sent,
   * so none is outstanding and no MAC can be confirmed by one.
   */
  denied = false;

  constructor(
    private readonly onAnswer: (a: ArpAnswer) => void,
    private readonly onSilent: (q: ArpQuestion) => void,
    /** Ages and retry times: the monotonic clock (core/clock.ts); tests give their own. */
    private readonly now: () => number = monotonicMs,
    /** Every ARP packet read whose sender claims an address ({@link ArpClaim}), answers or not. */
    private readonly onClaim?: (c: ArpClaim) => void,
    /** A question given up without a verdict: whether the host answered cannot be told ({@link ArpUnknown}). */
    private readonly onUnknown?: (u: ArpUnknown) => void,
    private readonly io: ArpIo = kernelArpIo,
  ) {}

  /** Whether a question is outstanding (requests sent, no answer yet, not given up). */
  asking(q: ArpQuestion): boolean {
    return this.outstanding.has(keyOf(q));
  }

  /**
   * Put a question on the wire out of `ifindex`, whose own MAC is `ownMac`: `q.mac` asked by unicast, or
   * everyone (broadcast) when it is ''. Nothing is sent when the same question is outstanding. False when
   * it could not be sent (no socket: {@link lastError}). `soon`: {@link ARP_RETRY_SOON_MS} apart (an
   * outstanding question is made so too).
   */
  ask(q: ArpQuestion, ownMac: string, soon = false): boolean {
    const k = keyOf(q);
    const was = this.outstanding.get(k);
    if (was) {
      if (soon) was.retry = Math.min(was.retry, ARP_RETRY_SOON_MS);
      return true;
    }
    const own = macBytes(ownMac);
    const ownIp = ipBytes(q.sender ?? '0.0.0.0');
    if (!own || !ownIp || !ipBytes(q.ip) || (q.mac !== '' && !macBytes(q.mac))) return false;
    const retry = soon ? ARP_RETRY_SOON_MS : ARP_RETRY_MS;
    const o: Outstanding = { q, own, ownIp, first: this.now(), last: 0, sent: 0, retry, again: 0 };
    if (!this.send(o)) return false;
    this.outstanding.set(k, o);
    if (q.rx !== undefined && q.rx !== q.ifindex) {
      let s = this.ports.get(q.rx);
      if (!s) {
        if (this.ports.size > 4096) this.ports.clear();
        this.ports.set(q.rx, (s = new Set()));
      }
      if (s.size > 4096) s.clear();
      s.add(q.ifindex);
    }
    this.arm();
    return true;
  }

  private open(): boolean {
    if (this.fd >= 0) return true;
    const fd = this.io.open();
    if (fd < 0) {
      const e = -fd;
      this.lastError = `open a packet socket for ARP: ${errnoOf(e)}`;
      if (e === EPERM || e === EACCES) this.denied = true;
      return false;
    }
    this.fd = fd;
    this.denied = false;
    this.io.drops(fd); // counted from now
    return true;
  }

  private send(o: Outstanding): boolean {
    if (!this.open()) return false;
    const target = o.q.mac ? macBytes(o.q.mac)! : undefined;
    const frame = arpRequest(o.own, o.ownIp, ipBytes(o.q.ip)!, target);
    const to = sockaddrLl(o.q.ifindex, target ?? Buffer.alloc(6, 0xff));
    const r = this.io.send(this.fd, frame, to);
    if (r < 0) {
      this.lastError = `send an ARP request for ${o.q.ip} on ifindex ${o.q.ifindex}: ${errnoOf(-r)}`;
      return false;
    }
    o.sent++;
    // Its window counts from here: the request is on the wire once sendto has returned.
    o.last = this.now();
    o.blind = undefined;
    return true;
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), ARP_READ_MS);
    this.timer.unref();
  }

  /** Read what came, resend or give up what is due; close the socket when idle. */
  tick(): void {
    // Everything queued first: an answer that arrived before a deadline is read before that deadline is judged.
    const drained = this.fd < 0 || this.read();
    const t = this.now();
    // The loop's own lag since the last tick (beyond the timer's period), and frames the kernel dropped for us.
    const lag = this.lastTick ? t - this.lastTick - ARP_READ_MS : 0;
    this.lastTick = t;
    if (lag > this.maxLagMs) this.maxLagMs = lag;
    const dropped = this.fd >= 0 ? (this.io.drops(this.fd) ?? 0) : 0;
    this.dropped += dropped;
    for (const o of this.outstanding.values()) {
      if (o.sent === 0) continue;
      if (lag > o.retry && !o.blind)
        o.blind = `the daemon's event loop lagged ${Math.round(lag)} ms (window ${o.retry} ms)`;
      if (dropped > 0 && !o.blind)
        o.blind = `the kernel dropped ${dropped} ARP frame(s) for our socket (its receive buffer full)`;
    }
    if (!drained) return; // more queued than one tick reads: no deadline judged before it is read
    for (const [k, o] of this.outstanding) {
      if (t - o.last < o.retry) continue;
      if (o.sent < ARP_TRIES) {
        if (!this.send(o)) this.giveUp(k, o, `a request could not be sent (${this.lastError})`);
        continue;
      }
      if (!o.blind) {
        this.outstanding.delete(k);
        this.onSilent(o.q);
        continue;
      }
      // A window the daemon could not watch: asked again, with a window of its own, a few times at most.
      if (o.again >= ARP_TRIES) {
        this.giveUp(k, o, o.blind);
        continue;
      }
      o.again++;
      o.sent--;
      const why = o.blind;
      if (!this.send(o)) this.giveUp(k, o, `${why}; a request could not be sent again (${this.lastError})`);
    }
    if (this.outstanding.size) {
      this.idleSince = 0;
      return;
    }
    if (!this.idleSince) this.idleSince = t;
    else if (t - this.idleSince >= IDLE_CLOSE_MS) this.close();
  }

  /** A question given up without a verdict: the host's answer cannot be told. */
  private giveUp(k: string, o: Outstanding, why: string): void {
    this.outstanding.delete(k);
    this.unknown++;
    this.onUnknown?.({ question: o.q, why });
  }

  /** Read every frame queued (at most READ_MAX); whether the socket was emptied. */
  private read(): boolean {
    for (let n = 0; n < READ_MAX; n++) {
      const got = this.io.recv(this.fd, this.buf, this.from);
      if (got < 0) {
        if (-got !== EAGAIN) this.lastError = `read ARP replies: ${errnoOf(-got)}`;
        return true;
      }
      if (got >= 28 && (this.outstanding.size || this.onClaim)) {
        this.frame(this.buf.subarray(0, got), this.io.stamp(this.fd) ?? this.now());
      }
    }
    return false;
  }

  private frame(p: Buffer, at: number): void {
    const ifindex = this.from.readInt32LE(4);
    const pkttype = this.from.readUInt8(10);
    if (p.readUInt16BE(0) !== ARPHRD_ETHER || p.readUInt16BE(2) !== 0x0800 || p[4] !== 6 || p[5] !== 4) return;
    const op = p.readUInt16BE(6);
    const sha = p.subarray(8, 14);
    // Whoever claims an address (RFC 5227): a reply, to us or not, a request, a gratuitous ARP; not our own.
    if (this.onClaim && pkttype !== PACKET_OUTGOING && (op === ARPOP_REPLY || op === ARPOP_REQUEST)) {
      if (p.readUInt32BE(14) !== 0) {
        const ip = `${p[14]}.${p[15]}.${p[16]}.${p[17]}`;
        // On a master: a claim on each port asked out of too (what their hosts send is delivered there).
        for (const dev of [ifindex, ...(this.ports.get(ifindex) ?? [])])
          this.onClaim({ ifindex: dev, ip, mac: macText(sha), at });
      }
    }
    if (pkttype !== PACKET_HOST || op !== ARPOP_REPLY) return;
    if (this.from.readUInt8(11) !== 6 || !this.from.subarray(12, 18).equals(sha)) return; // Ethernet source = sender
    const ip = `${p[14]}.${p[15]}.${p[16]}.${p[17]}`;
    const mac = macText(sha);
    // Asked out of this interface, or out of a port of it (a bridge: the replies are delivered on the master).
    const asked: string[] = [];
    for (const dev of [ifindex, ...(this.ports.get(ifindex) ?? [])]) {
      asked.push(keyOf({ ip, iface: '', ifindex: dev, mac }), keyOf({ ip, iface: '', ifindex: dev, mac: '' }));
    }
    for (const k of asked) {
      const o = this.outstanding.get(k);
      // The reply to our request: target MAC and IP the requests' sender MAC and IP.
      if (!o || !p.subarray(18, 24).equals(o.own) || !p.subarray(24, 28).equals(o.ownIp)) continue;
      this.outstanding.delete(k);
      this.onAnswer({ question: o.q, mac, ms: Math.max(0, at - o.first), at });
    }
  }

  /** Close the socket and forget every outstanding question (idempotent). */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.outstanding.clear();
    this.idleSince = 0;
    this.lastTick = 0;
    if (this.fd >= 0) this.io.close(this.fd);
    this.fd = -1;
  }
}
