/**
 * The tc programs and filters on a device's ingress, read from the kernel: the clsact/ingress qdisc's
 * filters (one RTM_GETTFILTER dump, rtnetlink) and the tcx programs (BPF_PROG_QUERY with BPF_TCX_INGRESS,
 * Linux >= 6.6). The daemon attaches nothing on tc: every one found is another tool's. What is redirected
 * into a veth reaches its peer's receive path (native: veth_xdp_xmit into the peer's ring, then
 * netif_receive_skb; generic: veth_xmit, __dev_forward_skb), where tcx and then the ingress qdisc's filters
 * run on it (net/core/dev.c sch_handle_ingress) before the stack: a filter that answers TC_ACT_SHOT drops it
 * while every counter on this side says redirected. The egress side of the device we redirect into is not
 * read: a redirect transmits with ndo_xdp_xmit (native) or netdev_start_xmit (generic_xdp_tx), past the
 * qdisc layer and sch_handle_egress (__dev_queue_xmit), so no tc egress program or filter sees those frames.
 *
 * Neither RTM_GETTFILTER nor BPF_PROG_QUERY takes a target namespace id: a device in another namespace is
 * read from inside it, the main thread entering it (setns, CAP_SYS_ADMIN) for the synchronous calls and
 * leaving it before returning (withNetns). Nothing here changes anything.
 */
import { closeSync, openSync } from 'node:fs';

import { KernelError } from './errors.js';
import { lastErrno, lib, ProgQueryOpts, sizeOf } from './libbpf.js';
import { NETLINK_ROUTE, nlAttr, nlAttrs, nlDump, nlRequest } from './netlink.js';

// <linux/rtnetlink.h>
const RTM_GETTFILTER = 46;
const TCA_KIND = 1;
const TCA_OPTIONS = 2;
// <linux/pkt_cls.h>
const TCA_BPF_NAME = 7;
const TCA_BPF_FLAGS = 8;
const TCA_BPF_ID = 11;
const TCA_BPF_FLAG_ACT_DIRECT = 1;
/** TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS): the ingress of a clsact qdisc (an `ingress` qdisc's too). */
const TC_PARENT_INGRESS = 0xfffffff2;
// <linux/bpf.h>
const BPF_TCX_INGRESS = 46;
// <sched.h>, <linux/net_namespace.h>
const CLONE_NEWNET = 0x40000000;
const RTM_GETNSID = 90;
const NETNSA_NSID = 1;
const NETNSA_FD = 3;

/** One filter (a tcf_proto: kind, priority, protocol, chain) on a device's ingress, with its BPF programs. */
export interface TcFilter {
  kind: string;
  pref: number;
  /** Ethertype in host order (0x0003: all). */
  protocol: number;
  chain: number;
  /** A `bpf` filter's programs: id, the name tc gave it (TCA_BPF_NAME, e.g. `drop.o:[tc]`), direct-action. */
  programs: { id: number; tcName?: string; directAction: boolean }[];
}

/** What is on a device's ingress besides XDP: the qdisc's filters and the tcx programs' ids. */
export interface TcIngress {
  filters: TcFilter[];
  tcx: number[];
}

/**
 * The filters on the ingress (clsact or ingress qdisc) of the device with `ifindex` in the calling thread's
 * namespace: one RTM_GETTFILTER dump. The kernel sends each filter kind/priority once bare (the tcf_proto)
 * and then each of its filters (a u32 also its hash tables): they are grouped into one entry per proto.
 */
export function tcIngressFilters(ifindex: number): TcFilter[] {
  const tcm = Buffer.alloc(20);
  tcm.writeInt32LE(ifindex, 4);
  tcm.writeUInt32LE(TC_PARENT_INGRESS, 12);
  const byProto = new Map<string, TcFilter>();
  for (const m of nlDump(
    NETLINK_ROUTE,
    RTM_GETTFILTER,
    tcm,
    Buffer.alloc(0),
    `read the tc filters of ifindex ${ifindex}`,
  )) {
    if (m.length < 20) continue;
    const info = m.readUInt32LE(16);
    const pref = info >>> 16;
    const protocol = ((info & 0xff) << 8) | ((info >>> 8) & 0xff); // network order in the low 16 bits
    const a = nlAttrs(m, 20);
    const kind = a.get(TCA_KIND)?.toString('latin1').replace(/\0.*$/s, '') ?? 'unknown';
    const chain = a.get(11)?.readUInt32LE(0) ?? 0; // TCA_CHAIN
    const key = `${kind}/${pref}/${protocol}/${chain}`;
    let f = byProto.get(key);
    if (!f) byProto.set(key, (f = { kind, pref, protocol, chain, programs: [] }));
    const opts = a.get(TCA_OPTIONS);
    if (kind !== 'bpf' || !opts) continue;
    const o = nlAttrs(opts);
    const id = o.get(TCA_BPF_ID)?.readUInt32LE(0);
    if (id === undefined || f.programs.some((p) => p.id === id)) continue;
    const tcName = o.get(TCA_BPF_NAME)?.toString('latin1').replace(/\0.*$/s, '');
    const flags = o.get(TCA_BPF_FLAGS)?.readUInt32LE(0) ?? 0;
    f.programs.push({ id, ...(tcName ? { tcName } : {}), directAction: (flags & TCA_BPF_FLAG_ACT_DIRECT) !== 0 });
  }
  return [...byProto.values()];
}

/**
 * The ids of the tcx programs on the ingress of the device with `ifindex` in the calling thread's namespace
 * (BPF_PROG_QUERY, BPF_TCX_INGRESS). Empty on a kernel without tcx (EINVAL: an attach type it does not know).
 */
export function tcxIngressPrograms(ifindex: number): number[] {
  for (let cnt = 8; ; cnt *= 4) {
    const ids = new Uint32Array(cnt);
    const opts = { sz: sizeOf(ProgQueryOpts), query_flags: 0, attach_flags: 0, prog_ids: ids, prog_cnt: cnt };
    const ret = lib.bpf_prog_query_opts(ifindex, BPF_TCX_INGRESS, opts) as number;
    if (ret < 0) {
      const errno = ret === -1 ? lastErrno() : -ret;
      if (errno === 22) return []; // EINVAL: no tcx in this kernel
      if (errno === 28 && cnt < 4096) continue; // ENOSPC: more than asked for
      throw new KernelError(`query the tcx ingress programs of ifindex ${ifindex}`, errno);
    }
    return [...ids.subarray(0, Math.min(opts.prog_cnt, cnt))];
  }
}

/**
 * Run `fn` in the network namespace of the file `path` (a /run/netns bind mount, /proc/PID/ns/net), after
 * checking that it is the one our namespace gives id `nsid` (a name may have been reused), and come back
 * before returning. `fn` must be synchronous: the main thread is in the other namespace while it runs.
 */
export function withNetns<T>(path: string, nsid: number, fn: () => T): T {
  const target = openSync(path, 'r');
  try {
    const v = Buffer.alloc(4);
    v.writeUInt32LE(target);
    const body = nlRequest(NETLINK_ROUTE, RTM_GETNSID, Buffer.alloc(4), nlAttr(NETNSA_FD, v), `nsid of ${path}`);
    const id = body && nlAttrs(body, 4).get(NETNSA_NSID)?.readInt32LE(0);
    if (id !== nsid) throw new Error(`${path} is no longer the network namespace with nsid ${nsid}`);
    const home = openSync('/proc/thread-self/ns/net', 'r');
    try {
      if ((lib.setns(target, CLONE_NEWNET) as number) < 0) {
        throw new KernelError(`enter the network namespace ${path} (setns)`, lastErrno() || 1);
      }
      try {
        return fn();
      } finally {
        if ((lib.setns(home, CLONE_NEWNET) as number) < 0) {
          // The main thread would stay in another namespace: nothing after this could be trusted.
          process.stderr.write(`xdpctld: cannot return to its own network namespace (errno ${lastErrno()})\n`);
          process.abort();
        }
      }
    } finally {
      closeSync(home);
    }
  } finally {
    closeSync(target);
  }
}

/** The filters and tcx programs on the ingress of `ifindex`, in the namespace of `netns` when given. */
export function tcIngress(ifindex: number, netns?: { path: string; nsid: number }): TcIngress {
  const read = (): TcIngress => ({ filters: tcIngressFilters(ifindex), tcx: tcxIngressPrograms(ifindex) });
  return netns ? withNetns(netns.path, netns.nsid, read) : read();
}
