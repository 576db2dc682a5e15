// SPDX-License-Identifier: GPL-2.0-only
/*
 * Baselines for benchmarks and a "foreign" program for tests: the cheapest
 * XDP programs that do what xdpctl does, so that its cost can be stated as a
 * ratio against them measured in the same run.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Forward everything to the ifindex in slot 0 (set by user space). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} base_tx SEC(".maps");

SEC("xdp")
int base_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int base_redirect(struct xdp_md *ctx)
{
	return bpf_redirect_map(&base_tx, 0, XDP_PASS);
}

/* Receiver of the live-frame benchmarks: key 0 counts IPv4 UDP frames (what
 * the benchmarks send), key 1 everything else. Per-CPU: no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} sink_rx SEC(".maps");

/* Count and drop: attached natively to the veth the benchmarked path sends
 * into, so the peer has NAPI (docs/kernel-notes.md, trap 3) and the count is what was
 * really delivered. Keep it after base_pass: `ip link ... sec xdp` loads the
 * section's first program. */
SEC("xdp")
int base_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 key = 1;
	__u64 *c;

	if ((void *)(ip + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IP) &&
	    ip->protocol == IPPROTO_UDP)
		key = 0;
	c = bpf_map_lookup_elem(&sink_rx, &key);
	if (c)
		*c += 1;
	return XDP_DROP;
}

/* Headers (Ethernet + IPv4 + UDP) of the frame the stack benchmarks inject,
 * set by user space. */
#define FEED_HDR_LEN (14 + 20 + 8)
struct feed_hdr {
	__u8 b[FEED_HDR_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct feed_hdr);
} feed_tmpl SEC(".maps");

/* XDP_PASS that first restores the frame's headers from feed_tmpl. Live-frame
 * test runs recycle their pages without re-copying the frame, so what the
 * stack wrote into a frame (TTL, NAT'd address, next hop's MAC) would be
 * what the next run injects; this keeps every injected frame the same. A
 * 42-byte copy: noise next to the stack's own cost. */
SEC("xdp")
int base_feed(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	struct feed_hdr *t;

	if (data + FEED_HDR_LEN > data_end)
		return XDP_PASS;
	t = bpf_map_lookup_elem(&feed_tmpl, &key);
	if (t)
		__builtin_memcpy(data, t->b, FEED_HDR_LEN);
	return XDP_PASS;
}

/* The program base_feed_then runs after restoring the headers (key 0): the
 * xdpctl program in the live UDP benchmark, whose rewrite (TTL, destination,
 * MACs) would otherwise be what a recycled page injects next time; with TTL
 * decremented on every pass, a page's frame stops being forwarded after 63
 * uses. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} feed_next SEC(".maps");

/* Multi-buffer like the xdpctl program, so that it may tail-call it. */
SEC("xdp.frags")
int base_feed_then(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 key = 0;
	struct feed_hdr *t;

	if (data + FEED_HDR_LEN > data_end)
		return XDP_PASS;
	t = bpf_map_lookup_elem(&feed_tmpl, &key);
	if (t)
		__builtin_memcpy(data, t->b, FEED_HDR_LEN);
	bpf_tail_call(ctx, &feed_next, 0);
	return XDP_ABORTED;
}

char _license[] SEC("license") = "GPL";
