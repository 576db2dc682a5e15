// SPDX-License-Identifier: GPL-2.0-only
/*
 * xdpctl datapath: one XDP program attached to every interface the control
 * plane manages. Per packet, in order:
 *   1. cross-connect: if the ingress interface is connected (xc_links), the
 *      frame is redirected whole to its peer;
 *   2. UDP redirect rules: IPv4 UDP matched on (ingress, port, [destination])
 *      and optionally on source prefixes is rewritten to a backend chosen by
 *      flow hash and redirected to the backend's egress interface;
 *   3. everything else is XDP_PASS, so the host keeps working (ARP, ssh...).
 * All policy lives in maps that user space fills; nothing here allocates map
 * entries, so a full map can never make the datapath misbehave.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdpctl.h"

/* Cross-connect: key ingress ifindex, value egress ifindex (bpf_devmap_val's
 * first field). DEVMAP_HASH, not DEVMAP, so ifindexes need not be small.
 * Pinned by the loader, not by libbpf: the kernel adds BPF_F_RDONLY_PROG to
 * devmaps, which libbpf 1.1's pinned-map compatibility check then reports as
 * a mismatch (and the flag cannot be declared here: creation rejects it). */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, XDPCTL_MAX_LINKS);
	__type(key, __u32);
	__type(value, __u32);
} xc_links SEC(".maps");

/* ifindex -> XDPCTL_IF_F_* flags. An inlined array lookup that lets every
 * packet of an interface without a cross-connect skip the devmap hash lookup
 * (about 10 ns, a quarter of a whole XDP_PASS test run). User space sets the
 * flag before the xc_links entry exists and clears it after it is gone, so a
 * stale flag only costs the lookup it would have skipped. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_IFINDEX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} if_flags SEC(".maps");

/* Per link direction: key ingress ifindex. User space creates the entry with
 * the link; the datapath only counts into entries that exist. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, XDPCTL_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct xdpctl_link_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xc_stats SEC(".maps");

/* (ingress, proto, port, [daddr]) -> rule slot. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPCTL_MAX_MATCHES);
	__type(key, struct xdpctl_match_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_match SEC(".maps");

/* destination port (host order) -> how many match entries use it. A port
 * no rule uses costs one inlined array lookup instead of two hash lookups. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct xdpctl_port_use);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_ports SEC(".maps");

/* rule slot -> rule. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_RULE_SLOTS);
	__type(key, __u32);
	__type(value, struct xdpctl_rule);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_cfg SEC(".maps");

/* slot * XDPCTL_RING_SIZE + (flow_hash % XDPCTL_RING_SIZE) -> backend id.
 * max_entries is max_rule_slots * XDPCTL_RING_SIZE (set by the loader). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_RULE_SLOTS * XDPCTL_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_ring SEC(".maps");

/* (slot, source prefix) -> 1, for rules with XDPCTL_RULE_F_SRC_FILTER. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XDPCTL_MAX_SRC_PREFIXES);
	__type(key, struct xdpctl_src_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} src_allow SEC(".maps");

/* backend id -> where and how to send. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xdpctl_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backends SEC(".maps");

/* Counters are per-CPU so that the datapath increments without atomics; user
 * space sums the CPUs' copies. Stats ids are stable across rule updates. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCTL_MAX_STATS_IDS);
	__type(key, __u32);
	__type(value, struct xdpctl_rule_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCTL_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xdpctl_backend_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} backend_stats SEC(".maps");

/* enum xdpctl_stat -> packets. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCTL_STAT__MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} global_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(&global_stats, &stat);

	if (c)
		*c += 1;
}

/* Every exit goes through here so that the verdict counters add up to the
 * number of packets seen. */
static __always_inline int verdict(int action)
{
	count((__u32)action);
	return action;
}

/* Fold a 32-bit one's-complement sum into 16 bits. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/*
 * RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for a 32-bit field changed from m to
 * m'. Works on the raw (network order) 16-bit words: one's-complement sums are
 * byte-order independent, so no swapping is needed.
 */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~(from & 0xffff);
	sum += (__u16)~(from >> 16);
	sum += to & 0xffff;
	sum += to >> 16;
	return csum_fold(sum);
}

/* Murmur3-style mixing; src/server/dataplane/flow-hash.ts is the same
 * function, and a test checks that both pick the same ring slot. */
static __always_inline __u32 mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 flow_hash(__u32 saddr, __u32 daddr, __u16 sport, __u16 dport,
				       __u8 proto)
{
	__u32 h = 0x9747b28c;

	h = mix(h, saddr);
	h = mix(h, daddr);
	h = mix(h, ((__u32)sport << 16) | dport);
	h = mix(h, proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Cross-connect: returns XDP_REDIRECT if the ingress is connected, else
 * XDP_PASS (the low bits of bpf_redirect_map's flags are its miss action;
 * 0 would mean XDP_ABORTED). */
static __always_inline int xconnect(struct xdp_md *ctx, __u64 len)
{
	__u32 in = ctx->ingress_ifindex;
	__u32 *flags = bpf_map_lookup_elem(&if_flags, &in);
	struct xdpctl_link_stats *st;
	long act;

	/* No entry (ifindex too large for the array): look in xc_links. */
	if (flags && !(*flags & XDPCTL_IF_F_XCONNECT))
		return XDP_PASS;
	act = bpf_redirect_map(&xc_links, in, XDP_PASS);
	if (act != XDP_REDIRECT)
		return XDP_PASS;
	st = bpf_map_lookup_elem(&xc_stats, &in);
	if (st) {
		st->packets++;
		st->bytes += len;
	}
	return XDP_REDIRECT;
}

static __always_inline int udp_redirect(struct xdp_md *ctx, void *data, void *data_end,
					 struct iphdr *ip, __u64 len)
{
	struct xdpctl_match_key mk = {};
	struct xdpctl_rule_stats *rs;
	struct xdpctl_backend_stats *bs;
	struct xdpctl_backend *be;
	struct xdpctl_port_use *pu;
	struct xdpctl_rule *rule;
	struct udphdr *udp;
	__u32 *slotp, slot, ring_idx, *be_id, old_daddr, new_daddr;
	__u32 ihl = ip->ihl, port;

	if (ihl < 5)
		return verdict(XDP_PASS);
	/* Variable-length header: the verifier needs the explicit bound on ihl
	 * (4 bits, so <= 60 bytes) and the check against data_end below. */
	udp = (void *)ip + ihl * 4;
	if ((void *)(udp + 1) > data_end) {
		count(XDPCTL_STAT_ERR_TRUNCATED);
		return verdict(XDP_PASS);
	}

	port = bpf_ntohs(udp->dest);
	pu = bpf_map_lookup_elem(&rule_ports, &port);
	if (!pu || (!pu->any && !pu->dst))
		return verdict(XDP_PASS); /* no rule uses this port */

	mk.ifindex = ctx->ingress_ifindex;
	mk.dport = udp->dest;
	mk.proto = IPPROTO_UDP;
	mk.family = XDPCTL_AF_INET;
	slotp = NULL;
	if (pu->dst) {
		__builtin_memcpy(mk.daddr, &ip->daddr, 4);
		slotp = bpf_map_lookup_elem(&rule_match, &mk);
		__builtin_memset(mk.daddr, 0, 4);
	}
	if (!slotp && pu->any) /* then "any destination" */
		slotp = bpf_map_lookup_elem(&rule_match, &mk);
	if (!slotp)
		return verdict(XDP_PASS);
	slot = *slotp;
	/* The array lookup bounds-checks slot against rule_cfg's size, which the
	 * loader keeps at rule_ring's size / XDPCTL_RING_SIZE, so the ring index
	 * below cannot overflow into another rule's table. */
	rule = bpf_map_lookup_elem(&rule_cfg, &slot);
	if (!rule || !(rule->flags & XDPCTL_RULE_F_ACTIVE)) {
		count(XDPCTL_STAT_ERR_NO_RULE);
		return verdict(XDP_PASS);
	}
	rs = bpf_map_lookup_elem(&rule_stats, &rule->stats_id);
	if (rs) {
		rs->matched++;
		rs->matched_bytes += len;
	}

	/* A fragment carries no UDP header (or only the first does): rewriting
	 * the first alone would break reassembly, so leave them to the stack. */
	if (ip->frag_off & bpf_htons(0x3fff)) {
		count(XDPCTL_STAT_ERR_FRAGMENT);
		return verdict(XDP_PASS);
	}

	if (rule->flags & XDPCTL_RULE_F_SRC_FILTER) {
		struct xdpctl_src_key sk = {
			.prefixlen = 32 + 32,
			.slot = slot,
		};

		__builtin_memcpy(sk.addr, &ip->saddr, 4);
		if (!bpf_map_lookup_elem(&src_allow, &sk)) {
			if (rs)
				rs->filtered++;
			return verdict(XDP_PASS);
		}
	}

	ring_idx = slot * XDPCTL_RING_SIZE +
		   flow_hash(ip->saddr, ip->daddr, udp->source, udp->dest, IPPROTO_UDP) %
			   XDPCTL_RING_SIZE;
	be_id = bpf_map_lookup_elem(&rule_ring, &ring_idx);
	be = be_id ? bpf_map_lookup_elem(&backends, be_id) : NULL;
	if (!be || !be->ifindex) {
		if (rs)
			rs->no_backend++;
		count(XDPCTL_STAT_ERR_NO_BACKEND);
		return verdict(XDP_DROP);
	}

	/* Rewrite: L2 addresses, then the destination address and the two
	 * checksums that cover it (the IPv4 header's, and UDP's through its
	 * pseudo-header). */
	__builtin_memcpy(&new_daddr, be->addr, 4);
	old_daddr = ip->daddr;
	ip->daddr = new_daddr;
	ip->check = csum_replace4(ip->check, old_daddr, new_daddr);
	if (rule->flags & XDPCTL_RULE_F_UDP_CSUM_ZERO) {
		/* Legal for IPv4 (RFC 768) and robust against senders whose
		 * checksum was still partial (offloaded) when XDP saw it. */
		udp->check = 0;
	} else if (udp->check) {
		/* 0 means "no checksum": keep it; a computed 0 is sent as
		 * 0xffff, its one's-complement twin (RFC 768). */
		__u16 c = csum_replace4(udp->check, old_daddr, new_daddr);

		udp->check = c ? c : 0xffff;
	}
	__builtin_memcpy(((struct ethhdr *)data)->h_dest, be->dmac, ETH_ALEN);
	__builtin_memcpy(((struct ethhdr *)data)->h_source, be->smac, ETH_ALEN);

	if (bpf_redirect(be->ifindex, 0) != XDP_REDIRECT) {
		count(XDPCTL_STAT_ERR_REDIRECT);
		return verdict(XDP_ABORTED);
	}
	if (rs) {
		rs->redirected++;
		rs->redirected_bytes += len;
	}
	bs = bpf_map_lookup_elem(&backend_stats, &be->stats_id);
	if (bs) {
		bs->packets++;
		bs->bytes += len;
	}
	return verdict(XDP_REDIRECT);
}

SEC("xdp")
int xdpctl_main(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct ethhdr *eth = data;
	struct iphdr *ip;

#ifdef XDPCTL_BUILD_MARK
	/* Only changes the instruction stream (and so the program tag): lets the
	 * tests load a "new version" for hitless-upgrade runs. */
	__u32 mark = XDPCTL_BUILD_MARK;

	asm volatile("" : "+r"(mark));
#endif
	if (xconnect(ctx, len) == XDP_REDIRECT)
		return verdict(XDP_REDIRECT);

	if ((void *)(eth + 1) > data_end)
		return verdict(XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return verdict(XDP_PASS); /* ARP, IPv6 (not yet), VLANs: the stack's */
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end) {
		count(XDPCTL_STAT_ERR_TRUNCATED);
		return verdict(XDP_PASS);
	}
	if (ip->protocol != IPPROTO_UDP)
		return verdict(XDP_PASS);
	return udp_redirect(ctx, data, data_end, ip, len);
}

char _license[] SEC("license") = "GPL";
