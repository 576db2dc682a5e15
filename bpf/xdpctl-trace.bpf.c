// SPDX-License-Identifier: GPL-2.0-only
/*
 * Redirects the kernel dropped after xdpctl_main returned XDP_REDIRECT.
 * bpf_redirect() and bpf_redirect_map() only record the target; the kernel
 * moves the frame afterwards and can still drop it: egress down or without
 * carrier, MTU smaller than the frame, a device without XDP transmit (a
 * bridge), a veth whose peer has no NAPI. It reports each through two
 * tracepoints, on the CPU that ran the program (include/trace/events/xdp.h):
 *  - xdp_redirect_err, at once (the frame never got queued);
 *  - xdp_devmap_xmit, when a queue of frames for one egress is flushed at the
 *    end of the NAPI poll and the driver took only `sent` of them.
 * These programs move such frames out of the "redirected" counters of their
 * rule, backend or link into "redirect_errors", from what xdpctl_main
 * recorded (redir_last, redir_track: see bpf/xdpctl.h), and count them in
 * global_stats[XDPCTL_STAT_ERR_XMIT]; only when the frame is provably the
 * one recorded (same CPU, our program, our network namespace, same ingress,
 * target and NAPI poll, and a mirror exactly in step with the kernel's
 * queue). Any other drop of a frame our program redirected is counted in
 * XDPCTL_STAT_ERR_XMIT_UNATTRIBUTED too and charged to nobody, and drops of
 * frames another program queued are not ours to count. A third program,
 * xdpctl_napi_poll (napi:napi_poll, after each poll's flush), advances this
 * CPU's epoch, which retires whatever was recorded and not reported in that
 * poll. The maps are the pinned maps of bpf/xdpctl.bpf.c (one definition in
 * bpf/xdpctl-maps.h, reused by name).
 *
 * tp_btf programs: the arguments are typed kernel pointers; the structs below
 * name only the fields we read, and CO-RE (preserve_access_index) finds their
 * offsets in the running kernel's BTF.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "xdpctl.h"
#include "xdpctl-maps.h"

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

struct bpf_prog_aux {
	__u32 id;
} __attribute__((preserve_access_index));

struct bpf_prog {
	struct bpf_prog_aux *aux;
} __attribute__((preserve_access_index));

struct bpf_xdp_entity {
	struct bpf_prog *prog;
} __attribute__((preserve_access_index));

struct net_device {
	int ifindex;
	possible_net_t nd_net;
	struct bpf_xdp_entity xdp_state[3]; /* enum bpf_xdp_mode: SKB, DRV, HW */
} __attribute__((preserve_access_index));

#define XDP_MODE_DRV 1
/* bpf_redirect(ifindex) reports map type UNSPEC and this map id (net/core/filter.c). */
#define REDIRECT_BY_IFINDEX 0x7fffffff

static __always_inline void count_stat(__u32 k, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&global_stats, &k);

	if (c)
		*c += n;
}

static __always_inline void take(__u64 *v, __u64 n)
{
	*v = *v >= n ? *v - n : 0; /* a counter reset in between: never wrap */
}

/* Move one frame from "redirected" to "redirect_errors". */
static __always_inline void failed(struct xdpctl_redir_ent *e)
{
	__u32 id = e->id, id2 = e->id2;

	if (e->kind == XDPCTL_REDIR_RULE) {
		struct xdpctl_rule_stats *rs = bpf_map_lookup_elem(&rule_stats, &id);
		struct xdpctl_backend_stats *bs = bpf_map_lookup_elem(&backend_stats, &id2);

		if (rs) {
			take(&rs->redirected, 1);
			take(&rs->redirected_bytes, e->len);
			rs->redirect_errors++;
		}
		if (bs) {
			take(&bs->packets, 1);
			take(&bs->bytes, e->len);
			bs->redirect_errors++;
		}
	} else if (e->kind == XDPCTL_REDIR_LINK) {
		struct xdpctl_link_stats *st = bpf_map_lookup_elem(&xc_stats, &id);

		if (st) {
			take(&st->packets, 1);
			take(&st->bytes, e->len);
			st->redirect_errors++;
		}
	}
}

/* Key 0, set by the loader: the id of the xdpctl_main program whose maps
 * these are (several datapaths, each with its pin root and its own
 * tracepoint programs, may run side by side), the inode number of the
 * network namespace whose ifindexes its maps hold, and the id of its
 * cross-connect devmap (xc_links). */
struct xdpctl_trace_cfg {
	__u32 prog_id;
	__u32 netns;
	__u32 xc_links_id;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpctl_trace_cfg);
} trace_cfg SEC(".maps");

static __always_inline struct xdpctl_trace_cfg *config(void)
{
	__u32 zero = 0;
	struct xdpctl_trace_cfg *cfg = bpf_map_lookup_elem(&trace_cfg, &zero);

	return cfg && cfg->prog_id ? cfg : 0;
}

static __always_inline int in_our_netns(const struct net_device *dev, const struct xdpctl_trace_cfg *cfg)
{
	return dev->nd_net.net->ns.inum == cfg->netns;
}

/* The program run that just returned XDP_REDIRECT failed to hand its frame
 * over (this fires before that run's poll ends, on its CPU). */
SEC("tp_btf/xdp_redirect_err")
int BPF_PROG(xdpctl_redirect_err, const struct net_device *dev, const struct bpf_prog *xdp,
	     const void *tgt, int err, int map_type, __u32 map_id, __u32 index)
{
	struct xdpctl_trace_cfg *cfg = config();
	__u32 zero = 0, slot;
	struct xdpctl_redir_last *l;
	struct xdpctl_redir_q *q;
	int same;

	if (!cfg || xdp->aux->id != cfg->prog_id)
		return 0; /* another program's redirect */
	count_stat(XDPCTL_STAT_ERR_XMIT, 1);
	l = bpf_map_lookup_elem(&redir_last, &zero);
	if (!l)
		return 0;
	/* The redirect recorded is this one: pending, same ingress and target
	 * (a rule redirects by ifindex, a link through our devmap, xc_links). */
	same = l->target && l->target == index && l->ingress == dev->ifindex && in_our_netns(dev, cfg) &&
	       ((map_type == BPF_MAP_TYPE_UNSPEC && map_id == REDIRECT_BY_IFINDEX) || map_id == cfg->xc_links_id);
	if (same) {
		failed(&l->e);
	} else {
		count_stat(XDPCTL_STAT_ERR_XMIT_UNATTRIBUTED, 1);
	}
	if (same && l->queued && l->egress) {
		/* It was mirrored as queued, but the kernel never queued it. */
		slot = l->egress % XDPCTL_REDIR_TRACK;
		q = bpf_map_lookup_elem(&redir_track, &slot);
		if (q && q->ifindex == l->egress && q->epoch == l->epoch && q->ingress == l->ingress && q->count)
			q->count--;
	}
	l->target = 0; /* reported: no longer pending */
	l->e.kind = 0;
	return 0;
}

/* A queue of frames for one egress was flushed; `sent` of them went. */
SEC("tp_btf/xdp_devmap_xmit")
int BPF_PROG(xdpctl_devmap_xmit, const struct net_device *from_dev, const struct net_device *to_dev,
	     int sent, int drops, int err)
{
	struct xdpctl_trace_cfg *cfg = config();
	__u32 egress = to_dev->ifindex, slot = egress % XDPCTL_REDIR_TRACK, zero = 0, n, i, rest;
	struct xdpctl_redir_q *q;
	struct xdpctl_redir_last *l;
	struct bpf_prog *prog;
	int ok;

	if (!cfg || sent < 0 || drops < 0)
		return 0;
	/* The queue holds what the ingress's (native) program redirected in this
	 * NAPI poll: ours only if that program is ours. */
	prog = from_dev->xdp_state[XDP_MODE_DRV].prog;
	if (!prog || prog->aux->id != cfg->prog_id)
		return 0;
	count_stat(XDPCTL_STAT_ERR_XMIT, drops);
	n = sent + drops;
	q = bpf_map_lookup_elem(&redir_track, &slot);
	l = bpf_map_lookup_elem(&redir_last, &zero);
	if (!q || !l)
		return 0;
	/* The mirror holds exactly these frames: same egress, ingress, poll and
	 * namespace, and as many as the kernel flushed (plus the one queued
	 * after a flush of a full queue). */
	ok = q->ifindex == egress && q->ingress == from_dev->ifindex && q->epoch == l->epoch &&
	     in_our_netns(from_dev, cfg) && in_our_netns(to_dev, cfg) && n <= XDPCTL_BULK &&
	     (q->count == n || (n == XDPCTL_BULK && q->count == XDPCTL_BULK + 1));
	if (!ok) {
		count_stat(XDPCTL_STAT_ERR_XMIT_UNATTRIBUTED, drops);
		if (q->ifindex == egress)
			q->ifindex = 0; /* out of step: the next redirect starts it over */
		return 0;
	}
	/* The driver took the first `sent`; the last `drops` were freed. */
#pragma unroll
	for (i = 0; i < XDPCTL_BULK; i++) {
		if (i < (__u32)sent || i >= n)
			continue;
		failed(&q->q[i]);
	}
	/* The frame queued after the flush of a full queue. */
	rest = q->count - n;
	if (rest == 1) {
		__u64 k = n;

		asm volatile("" : "+r"(k)); /* bound the register that indexes */
		if (k <= XDPCTL_BULK)
			q->q[0] = q->q[k];
	}
	q->count = rest;
	return 0;
}

/* After each NAPI poll (and the flush at its end): a redirect recorded on
 * this CPU and not reported by now was delivered, or never queued (generic
 * mode, a test run); none is pending any more. */
SEC("tp_btf/napi_poll")
int BPF_PROG(xdpctl_napi_poll, void *napi, int work, int budget)
{
	__u32 zero = 0;
	struct xdpctl_redir_last *l = bpf_map_lookup_elem(&redir_last, &zero);

	if (l) {
		l->epoch++;
		l->target = 0;
	}
	return 0;
}

char _license[] SEC("license") = "GPL";
