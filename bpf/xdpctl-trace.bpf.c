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
 * recorded (redir_last, redir_tracks: see bpf/xdpctl.h), and count them in
 * global_stats[XDPCTL_STAT_ERR_XMIT]. The maps are the pinned maps of
 * bpf/xdpctl.bpf.c (one definition in bpf/xdpctl-maps.h, reused by name).
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

struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

struct bpf_prog_aux {
	__u32 id;
} __attribute__((preserve_access_index));

struct bpf_prog {
	struct bpf_prog_aux *aux;
} __attribute__((preserve_access_index));

static __always_inline void count_xmit(__u64 n)
{
	__u32 k = XDPCTL_STAT_ERR_XMIT;
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

/* Key 0: the id of the xdpctl_main program whose maps these are (set by
 * the loader): several datapaths (pin roots) may run side by side, each with
 * its own tracepoint programs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} trace_cfg SEC(".maps");

static __always_inline int ours(const struct bpf_prog *xdp)
{
	__u32 zero = 0, *id = bpf_map_lookup_elem(&trace_cfg, &zero);

	return id && *id && xdp->aux->id == *id;
}

SEC("tp_btf/xdp_redirect_err")
int BPF_PROG(xdpctl_redirect_err, const struct net_device *dev, const struct bpf_prog *xdp,
	     const void *tgt, int err, int map_type, __u32 map_id, __u32 index)
{
	__u32 zero = 0, slot;
	struct xdpctl_redir_last *l;
	struct xdpctl_redir_q *q;

	if (!ours(xdp))
		return 0;
	l = bpf_map_lookup_elem(&redir_last, &zero);
	if (!l || !l->e.kind)
		return 0;
	count_xmit(1);
	failed(&l->e);
	if (l->queued && l->egress) {
		/* It was mirrored as queued, but the kernel never queued it. */
		slot = l->egress % XDPCTL_REDIR_TRACK;
		q = bpf_map_lookup_elem(&redir_track, &slot);
		if (q && q->ifindex == l->egress && q->count)
			q->count--;
	}
	l->e.kind = 0;
	return 0;
}

SEC("tp_btf/xdp_devmap_xmit")
int BPF_PROG(xdpctl_devmap_xmit, const struct net_device *from_dev, const struct net_device *to_dev,
	     int sent, int drops, int err)
{
	__u32 egress = to_dev->ifindex, slot = egress % XDPCTL_REDIR_TRACK, n, i, rest;
	struct xdpctl_redir_q *q = bpf_map_lookup_elem(&redir_track, &slot);

	if (!q || q->ifindex != egress || !q->count || sent < 0 || drops < 0)
		return 0; /* not frames xdpctl_main queued on this CPU */
	n = sent + drops;
	if (n > XDPCTL_BULK || q->count < n || q->count > XDPCTL_BULK + 1) {
		/* Out of step (another program queued to this egress, or more
		 * than we mirror): count the drops, attribute none, start over. */
		count_xmit(drops);
		q->count = 0;
		return 0;
	}
	count_xmit(drops);
	/* The driver took the first `sent`; the last `drops` were freed. */
#pragma unroll
	for (i = 0; i < XDPCTL_BULK; i++) {
		if (i < (__u32)sent || i >= n)
			continue;
		failed(&q->q[i]);
	}
	/* Frames queued after the flush (at most the one that caused it). */
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

char _license[] SEC("license") = "GPL";
