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
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "xdpctl.h"
#include "xdpctl-maps.h"

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

/* link index (as in xc_stats) -> the egress ifindex its xc_links entry
 * holds: what the redirect tracking needs, from an inlined array lookup
 * instead of a second devmap hash lookup (~10 ns a frame). User space writes
 * it before the xc_links entry; during a peer swap the two can disagree for
 * a moment, which the tracepoint programs see as a queue out of step (drops
 * counted, not attributed). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_LINKS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xc_egress SEC(".maps");

/* ifindex -> XDPCTL_IF_F_* flags (and a link's counter index). An inlined
 * array lookup that lets every packet of an interface without a cross-connect
 * skip the devmap hash lookup (about 10 ns, a quarter of a whole XDP_PASS
 * test run). User space sets the flag before the xc_links entry exists and
 * clears it after it is gone, so a stale flag only costs the lookup it would
 * have skipped. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_IFINDEX);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} if_flags SEC(".maps");

/* The same for ifindexes past if_flags (a host that made and removed 65 536
 * interfaces): looked up only when if_flags has no entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPCTL_MAX_BIG_IFINDEXES);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} if_flags_big SEC(".maps");

/* The unicast MACs other than its own address that an ingress takes as this
 * host's, (ingress ifindex, MAC) -> 1, written by the daemon from the kernel
 * (dataplane/ingress-macs.ts): looked up only for a matched frame whose
 * destination is not the ingress's own address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XDPCTL_MAX_INGRESS_MACS);
	__type(key, struct xdpctl_mac_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ingress_macs SEC(".maps");

/* The active rule generation (0 or 1; see XDPCTL_MATCH_GEN): one update of
 * its one entry switches every rule of a many-rule change at once. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_gen SEC(".maps");

/* (ingress, proto, port, [daddr], generation) -> rule slot. Room for two
 * generations (the loader sets twice the match capacity). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 2 * XDPCTL_MAX_MATCHES);
	__type(key, struct xdpctl_match_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} rule_match SEC(".maps");

/* generation << 16 | destination port (host order) -> how many match entries
 * of that generation use it. A port no rule uses costs one inlined array
 * lookup instead of two hash lookups. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * XDPCTL_PORTS_PER_GEN);
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
 * max_entries is max_rule_slots * XDPCTL_RING_SIZE (set by the loader).
 * Mmapable: user space reads and writes a slot's 1031 ids through a mapping
 * of its pages (aligned 4-byte stores, atomic for this program) instead of
 * BPF_MAP_*_BATCH, which costs ~0.5 us an id on kernel 6.18: a rule change
 * wrote and cleared 2 x 1031 ids, a start verified 10 million. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDPCTL_MAX_RULE_SLOTS * XDPCTL_RING_SIZE);
	__type(key, __u32);
	__type(value, __u32);
	__uint(map_flags, BPF_F_MMAPABLE);
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

/* Fragments of datagrams whose first fragment was redirected: non-first
 * fragments carry no UDP header, so they follow their first fragment to the
 * same backend (Cilium tracks them the same way). LRU: entries of datagrams
 * that finished are evicted by newer ones; nothing needs to delete them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct xdpctl_frag_key);
	__type(value, struct xdpctl_frag_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frag_track SEC(".maps");

/* Scratch for frame_sum(): bpf_xdp_load_bytes copies 512-byte chunks of a
 * (possibly multi-buffer) frame here; 4 spare bytes for the zero padding of
 * the last chunk. Per-CPU: one program run per CPU at a time. */
struct csum_chunk {
	__u8 b[516];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_chunk);
	/* Pinned like every map, so that a restarted daemon's object has the
	 * same maps as the attached program and adopts it. */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} csum_buf SEC(".maps");

/* The kernel's struct net_device, for the address its frames are for:
 * dev_addr_shadow is the copy of dev->dev_addr that every change of the
 * address writes too (dev_addr_mod(); the kernel warns if the two differ),
 * held in the device itself, so a load reads it (dev_addr is a pointer,
 * which the verifier does not let a program follow). */
struct net_device___xdpctl {
	__u8 dev_addr_shadow[32];
} __attribute__((preserve_access_index));

struct xdp_rxq_info___xdpctl {
	struct net_device___xdpctl *dev;
} __attribute__((preserve_access_index));

/* The kernel's struct xdp_buff, for its flags and its ingress device (CO-RE
 * finds the offsets). */
struct xdp_buff___xdpctl {
	__u32 flags;
	struct xdp_rxq_info___xdpctl *rxq;
} __attribute__((preserve_access_index));
#define XDPCTL_XDP_FLAGS_HAS_FRAGS 0x1 /* enum xdp_buff_flags, include/net/xdp.h */

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The frame's length, all buffers: the first buffer's when the frame has no
 * others (read from the kernel's xdp_buff, an inlined cast and one load),
 * else bpf_xdp_get_buff_len() (a helper call, ~8 ns here). */
static __always_inline __u64 frame_len(struct xdp_md *ctx)
{
	struct xdp_buff___xdpctl *xdp = bpf_cast_to_kern_ctx(ctx);

	if (xdp->flags & XDPCTL_XDP_FLAGS_HAS_FRAGS)
		return bpf_xdp_get_buff_len(ctx);
	return ctx->data_end - ctx->data;
}

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

/*
 * Remember a redirect for the tracepoint programs (xdpctl.h, struct
 * xdpctl_redir_q): `ingress` is the run's ingress, `target` what the kernel
 * will report as the redirect's index (egress ifindex, or the devmap key).
 * Native mode only queues: generic mode transmits at once and reports
 * failures through xdp_redirect_err alone. A mirror entry of another egress,
 * ingress or NAPI poll is not pending any more: it starts over here.
 */
static __always_inline void track_redirect(__u32 kind, __u32 id, __u32 id2, __u64 len, __u32 ingress,
					   __u32 target, __u32 egress, int generic)
{
	__u32 zero = 0, slot;
	struct xdpctl_redir_last *l = bpf_map_lookup_elem(&redir_last, &zero);
	struct xdpctl_redir_q *q;

	if (!l)
		return;
	l->e.kind = kind;
	l->e.id = id;
	l->e.id2 = id2;
	l->e.len = len;
	l->egress = egress;
	l->queued = 0;
	l->ingress = ingress;
	l->target = target;
	if (!egress || generic)
		return;
	slot = egress % XDPCTL_REDIR_TRACK;
	q = bpf_map_lookup_elem(&redir_track, &slot);
	if (!q)
		return;
	if (q->ifindex != egress || q->epoch != l->epoch || q->ingress != ingress) {
		q->ifindex = egress;
		q->epoch = l->epoch;
		q->ingress = ingress;
		q->count = 0;
	}
	{
		__u32 c = q->count;

		if (c <= XDPCTL_BULK) {
			q->q[c] = l->e;
			l->queued = 1;
		}
		q->count = c + 1;
	}
}

/* Fold a 32-bit one's-complement sum into 16 bits (not inverted). For a
 * non-zero sum the result is 1..0xffff, the kernel's canonical form. */
static __always_inline __u16 csum_fold_raw(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Fold and invert: the value a checksum field holds. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	return (__u16)~csum_fold_raw(sum);
}

/* One's-complement addition of 32-bit partial sums (end-around carry). */
static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	__u32 r = a + b;

	return r + (r < b);
}

/*
 * The UDP pseudo-header sum (RFC 768) of an IPv4 datagram, unfolded. Raw
 * (network order) words throughout: the one's-complement sum is byte-order
 * independent as long as every word is read the same way.
 */
static __always_inline __u32 pseudo_sum(__u32 saddr, __u32 daddr, __u16 udp_len_raw)
{
	return (saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16) +
	       bpf_htons(IPPROTO_UDP) + udp_len_raw;
}

/*
 * One's-complement sum of `len` bytes of the frame from offset `off`, folded
 * to 16 bits (not inverted), or -1 if the bytes cannot be read. Works on
 * multi-buffer frames (bpf_xdp_load_bytes), in 512-byte chunks: the most
 * bpf_csum_diff() sums at once. Every chunk but the last is 512 bytes, so all
 * start at even offsets and the 16-bit words line up; an odd tail is padded
 * with a zero byte, as RFC 768 pads. A global function: verified once on its
 * own, which keeps the loop out of every caller's state space.
 */
__attribute__((noinline)) int frame_sum(struct xdp_md *ctx, __u32 off32, __u32 len32)
{
	__u64 off = off32, len = len32;
	__u32 zero = 0, i;
	struct csum_chunk *buf = bpf_map_lookup_elem(&csum_buf, &zero);
	__s64 sum = 0;

	if (!buf || !ctx)
		return -1;
	for (i = 0; i < 128; i++) { /* up to 64 KiB: any IPv4 datagram */
		__u64 n = len > 512 ? 512 : len;

		/* Make the verifier see the bound on the register passed below. */
		asm volatile("" : "+r"(n));
		if (n == 0)
			break;
		if (n > 512)
			return -1;
		if (bpf_xdp_load_bytes(ctx, off, buf->b, n) < 0)
			return -1;
		buf->b[n] = 0;
		buf->b[n + 1] = 0;
		buf->b[n + 2] = 0;
		sum = bpf_csum_diff(NULL, 0, (__be32 *)buf->b, (n + 3) & ~3u, (__wsum)sum);
		if (sum < 0)
			return -1;
		off += n;
		len -= n;
	}
	if (len)
		return -1;
	return csum_fold_raw((__u32)sum);
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

/*
 * h % XDPCTL_RING_SIZE without a division: BPF has no multiply-high, so
 * clang emits a BPF_MOD, which the x86 JIT turns into a `div` (with two
 * pushes and pops around it) on every rule hit. For a 32-bit h,
 * h / 1031 == (h * 2132903255) >> 41 exactly (Granlund-Montgomery:
 * 2132903255 = ceil(2^41 / 1031), and 2132903255 * 1031 - 2^41 = 353 <= 2^9;
 * the product stays below 2^63); a C loop over all 2^32 values of h agreed,
 * and test/unit/ring-pos.test.ts checks the constants and samples.
 */
_Static_assert(XDPCTL_RING_SIZE == 1031, "ring_pos() constants are for a ring of 1031 slots");
static __always_inline __u32 ring_pos(__u32 h)
{
	__u64 q = ((__u64)h * 2132903255ULL) >> 41;

	return h - (__u32)q * XDPCTL_RING_SIZE;
}

/*
 * A cross-connected frame leaves as the bytes it arrived with. In native
 * mode that is wrong for one kind of frame: TCP or UDP from a local socket
 * behind a veth or tap with TX checksum offload (the default), whose
 * checksum is partial (CHECKSUM_PARTIAL, docs/kernel-notes.md, trap 4) and which no
 * device completes after the redirect. Complete such checksums here, as the
 * sender's NIC would have on a wire (in generic mode the skb stays
 * CHECKSUM_PARTIAL and the kernel completes it). A partial field holds the
 * folded pseudo-header sum; a complete checksum with that value (1 in
 * 65 536) is left alone once the full sum shows it is valid. Fragments are
 * never partial (the kernel completes checksums before fragmenting).
 * Returns 0, or -1 if the frame cannot be read.
 */
__attribute__((noinline)) int complete_partial_csum(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 pseudo, l4_off, l4_len, csum_off;
	__u16 *field, c;
	__u8 proto;
	int s;

	if (!ctx || (void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		__u32 hl;

		if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
			return 0;
		if (ip->frag_off & bpf_htons(0x3fff))
			return 0;
		proto = ip->protocol;
		hl = ip->ihl * 4;
		if (bpf_ntohs(ip->tot_len) <= hl)
			return 0;
		l4_len = bpf_ntohs(ip->tot_len) - hl;
		l4_off = sizeof(*eth) + hl;
		pseudo = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
			 (ip->daddr >> 16);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		__u16 *a;
		int i;

		if ((void *)(ip6 + 1) > data_end)
			return 0;
		proto = ip6->nexthdr; /* extension headers: left alone */
		l4_len = bpf_ntohs(ip6->payload_len);
		l4_off = sizeof(*eth) + sizeof(*ip6);
		a = (__u16 *)&ip6->saddr;
		pseudo = 0;
#pragma unroll
		for (i = 0; i < 16; i++) /* source and destination: 32 bytes */
			pseudo += a[i];
	} else {
		return 0;
	}
	if (proto == IPPROTO_UDP)
		csum_off = 6;
	else if (proto == IPPROTO_TCP)
		csum_off = 16;
	else
		return 0;
	if (l4_len < csum_off + 2 || l4_off > 14 + 60)
		return 0;
	/* Pseudo-header: addresses, protocol, L4 length (RFC 768/793/8200). */
	pseudo += bpf_htons(proto) + bpf_htons(l4_len & 0xffff) + bpf_htons(l4_len >> 16);
	field = data + l4_off + csum_off;
	if ((void *)(field + 1) > data_end)
		return 0;
	if (*field != csum_fold_raw(pseudo) || (proto == IPPROTO_UDP && !*field))
		return 0;
	s = frame_sum(ctx, l4_off, l4_len);
	if (s < 0)
		return -1;
	if (csum_fold_raw(csum_add(s, pseudo)) == 0xffff)
		return 0; /* complete after all */
	/* Re-derive the pointer: the verifier forgets packet bounds across
	 * the call. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (l4_off > 14 + 60)
		return 0;
	field = data + l4_off + csum_off;
	if ((void *)(field + 1) > data_end)
		return 0;
	c = csum_fold(csum_add(csum_add(s, (__u16)~*field), pseudo));
	*field = (proto == IPPROTO_UDP && !c) ? 0xffff : c;
	return 0;
}

/*
 * Whether a cross-connected frame may carry a partial checksum, decided
 * inline for the common frames so that only candidates pay the call of
 * complete_partial_csum() (which checks again, and sums): an IPv4 TCP or UDP
 * datagram (not a fragment) whose checksum field holds its folded
 * pseudo-header sum. IPv4 with options and IPv6 are left to the function.
 */
static __always_inline int may_be_partial(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	__u32 pseudo, l4_len;
	__u16 *field;

	if ((void *)(ip + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return 1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4)
		return 0;
	if (ip->ihl != 5)
		return 1;
	if (ip->frag_off & bpf_htons(0x3fff))
		return 0;
	if (ip->protocol == IPPROTO_UDP)
		field = (void *)(ip + 1) + 6;
	else if (ip->protocol == IPPROTO_TCP)
		field = (void *)(ip + 1) + 16;
	else
		return 0;
	if ((void *)(field + 1) > data_end)
		return 0;
	l4_len = bpf_ntohs(ip->tot_len);
	if (l4_len <= sizeof(*ip))
		return 0;
	l4_len -= sizeof(*ip);
	pseudo = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) + (ip->daddr >> 16) +
		 bpf_htons(ip->protocol) + bpf_htons(l4_len);
	return *field == csum_fold_raw(pseudo);
}

/* Cross-connect: returns XDP_REDIRECT if the ingress is connected, else
 * XDP_PASS (the low bits of bpf_redirect_map's flags are its miss action; 0
 * would mean XDP_ABORTED). An interface connected to itself (xdp-xconnect's
 * reflector) is a devmap entry pointing at itself: the frame goes back out
 * of the interface it came in on. Not XDP_TX: on a veth in native mode
 * (kernel 6.18) XDP_TX frames were counted as sent and never arrived at the
 * peer, while a redirect to the same device arrives, in both modes. The
 * link's counters are xc_stats[its index], the index in the ingress's flags. */
static __always_inline int xconnect(struct xdp_md *ctx, __u32 flags)
{
	__u32 in = ctx->ingress_ifindex, link = XDPCTL_NO_LINK, target = 0, *egress = NULL;
	struct xdpctl_link_stats *st;
	__u64 len;
	long act;

	if (!(flags & XDPCTL_IF_F_XCONNECT))
		return XDP_PASS;
	act = bpf_redirect_map(&xc_links, in, XDP_PASS);
	if (act != XDP_REDIRECT)
		return XDP_PASS;
	len = frame_len(ctx);
	if (flags & XDPCTL_IF_F_LINK) {
		__u32 n = flags >> XDPCTL_IF_LINK_SHIFT;

		st = bpf_map_lookup_elem(&xc_stats, &n);
		if (st) {
			st->packets++;
			st->bytes += len;
			link = n;
			target = in;
		}
	}
	/* Native mode queues the frame for the devmap's egress and the driver
	 * may drop it at the flush (a veth whose peer's MTU is too small, or
	 * without NAPI): the egress ifindex (bpf_devmap_val's first field, a
	 * link's xc_egress entry) lets xdpctl_devmap_xmit attribute such drops
	 * to the link. Generic mode transmits at once (xdp_redirect_err alone).
	 * A link without counters (no index: a state user space never leaves)
	 * is recorded without a target and its egress is not mirrored: the
	 * tracepoint programs count its failures in global_stats, as
	 * unattributed (nothing proves which link's frame it was). */
	if (!(flags & XDPCTL_IF_F_GENERIC)) {
		if (link != XDPCTL_NO_LINK)
			egress = bpf_map_lookup_elem(&xc_egress, &link);
		track_redirect(XDPCTL_REDIR_LINK, link, 0, len, in, target, egress ? *egress : 0, 0);
	} else {
		track_redirect(XDPCTL_REDIR_LINK, link, 0, len, in, target, 0, 1);
	}
	return act;
}

/* Look up the rule for (ingress, port, daddr): returns its slot and entry, or
 * NULL. The source filter is part of the match: a packet from a source the
 * exact-destination rule does not allow falls to the any-destination rule. */
static __always_inline struct xdpctl_rule *find_rule(struct xdp_md *ctx, struct iphdr *ip,
						     __u16 dport_raw, __u32 *slot_out)
{
	struct xdpctl_match_key mk = {};
	struct xdpctl_rule_stats *rs;
	struct xdpctl_port_use *pu;
	struct xdpctl_rule *rule;
	__u32 port = bpf_ntohs(dport_raw), *slotp, one_slot, zero = 0, *genp;
	__u8 gen_bit;
	__u64 fold;
	int pass;

	/* The generation is read once: both lookups below are of the same one. */
	genp = bpf_map_lookup_elem(&rule_gen, &zero);
	gen_bit = genp && (*genp & 1) ? XDPCTL_MATCH_GEN : 0;
	if (gen_bit)
		port += XDPCTL_PORTS_PER_GEN;
	pu = bpf_map_lookup_elem(&rule_ports, &port);
	if (!pu || (!pu->any && !pu->dst))
		return NULL; /* no rule uses this port */
	fold = pu->any_fold;
	asm volatile("" : "+r"(fold)); /* one load: count, ifindex and slot of one write */

	mk.ifindex = ctx->ingress_ifindex;
	mk.dport = dport_raw;
	mk.proto = IPPROTO_UDP;
	mk.family = XDPCTL_AF_INET | gen_bit;
	/* Pass 0: exact destination; pass 1: any destination. */
	for (pass = 0; pass < 2; pass++) {
		if (pass == 0) {
			if (!pu->dst)
				continue;
			__builtin_memcpy(mk.daddr, &ip->daddr, 4);
		} else {
			if (!pu->any)
				break;
			if ((fold >> 56) == 1) {
				/* The port's one any-destination entry: no hash lookup. */
				if ((__u32)fold != mk.ifindex)
					break;
				one_slot = (fold >> 32) & XDPCTL_FOLD_SLOT_MASK;
				slotp = &one_slot;
				goto found;
			}
			__builtin_memset(mk.daddr, 0, 4);
		}
		slotp = bpf_map_lookup_elem(&rule_match, &mk);
		if (!slotp)
			continue;
found:
		*slot_out = *slotp;
		/* The array lookup bounds-checks the slot against rule_cfg's
		 * size, which the loader keeps at rule_ring's size /
		 * XDPCTL_RING_SIZE, so the ring index cannot overflow into
		 * another rule's table. */
		rule = bpf_map_lookup_elem(&rule_cfg, slot_out);
		if (!rule || !(rule->flags & XDPCTL_RULE_F_ACTIVE)) {
			count(XDPCTL_STAT_ERR_NO_RULE);
			continue;
		}
		if (rule->flags & XDPCTL_RULE_F_SRC_FILTER) {
			struct xdpctl_src_key sk = {
				.prefixlen = 32 + 32,
				.slot = *slot_out,
			};

			__builtin_memcpy(sk.addr, &ip->saddr, 4);
			if (!bpf_map_lookup_elem(&src_allow, &sk)) {
				rs = bpf_map_lookup_elem(&rule_stats, &rule->stats_id);
				if (rs)
					rs->filtered++;
				continue;
			}
		}
		return rule;
	}
	return NULL;
}

/* Rewrite the IPv4 header for the backend: destination address and TTL, with
 * the header checksum updated incrementally (RFC 1624; the header was
 * verified, so its checksum is complete). Then the L2 addresses. */
static __always_inline void rewrite_ip(void *data, struct iphdr *ip, struct xdpctl_backend *be,
				       __u32 new_daddr)
{
	__u16 old_ttl_word = *(__u16 *)&ip->ttl, new_ttl_word;
	__u32 old_daddr = ip->daddr, sum;

	ip->ttl--;
	new_ttl_word = *(__u16 *)&ip->ttl;
	/* RFC 1624 eqn. 3 for both fields at once: one fold instead of two. */
	sum = (__u16)~ip->check;
	sum += (__u16)~(old_daddr & 0xffff);
	sum += (__u16)~(old_daddr >> 16);
	sum += new_daddr & 0xffff;
	sum += new_daddr >> 16;
	sum += (__u16)~old_ttl_word;
	sum += new_ttl_word;
	ip->check = csum_fold(sum);
	ip->daddr = new_daddr;
	__builtin_memcpy(((struct ethhdr *)data)->h_dest, be->dmac, ETH_ALEN);
	__builtin_memcpy(((struct ethhdr *)data)->h_source, be->smac, ETH_ALEN);
}

/*
 * The UDP checksum after the destination changes from old_daddr to
 * new_daddr. Three kinds of sender reach us:
 *  - a complete checksum (remote senders, NICs, fragments: the kernel
 *    completes it before fragmenting): RFC 1624 incremental update, which
 *    also keeps a damaged datagram damaged for the receiver to see;
 *  - a partial one (CHECKSUM_PARTIAL, docs/kernel-notes.md, trap 4: a local socket
 *    behind a veth or tap with tx checksum offload, the default): the field
 *    holds only the folded pseudo-header sum. In native mode the frame leaves
 *    as bytes and nobody completes it, so we compute it in full; in generic
 *    mode the skb stays CHECKSUM_PARTIAL and whoever transmits it completes
 *    it, so the field must become the new pseudo-header sum (what the
 *    kernel's inet_proto_csum_replace4 does for such an skb);
 *  - none (0): stays 0.
 * A partial field is recognised by its value (the pseudo-header sum); 1 in
 * 65 536 complete checksums has that value too, so the full sum decides.
 */
static __always_inline void update_udp_csum(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp,
					    __u32 old_daddr, __u32 new_daddr, __u32 rule_flags,
					    __u32 if_flags, int first_fragment)
{
	__u16 ulen = udp->len;
	__u32 l4_off = (void *)udp - (void *)(long)ctx->data;
	__u16 c;
	int s;

	if (rule_flags & XDPCTL_RULE_F_UDP_CSUM_ZERO) {
		/* Legal for IPv4 (RFC 768). */
		udp->check = 0;
		return;
	}
	if (!udp->check)
		return; /* "no checksum" */
	if (first_fragment ||
	    udp->check != csum_fold_raw(pseudo_sum(ip->saddr, old_daddr, ulen)))
		goto incremental;
	s = frame_sum(ctx, l4_off, bpf_ntohs(ulen));
	if (s >= 0 && csum_fold_raw(csum_add(s, pseudo_sum(ip->saddr, old_daddr, ulen))) == 0xffff)
		goto incremental; /* a complete checksum that looks partial */
	if (if_flags & XDPCTL_IF_F_GENERIC) {
		udp->check = csum_fold_raw(pseudo_sum(ip->saddr, new_daddr, ulen));
		return;
	}
	if (s < 0)
		goto incremental; /* cannot read it: leave it to the receiver */
	/* Complete it: the sum with the field as it is (the old pseudo-header
	 * sum) minus that field, plus the new pseudo-header. */
	c = csum_fold(csum_add(csum_add(s, (__u16)~udp->check), pseudo_sum(ip->saddr, new_daddr, ulen)));
	udp->check = c ? c : 0xffff;
	return;
incremental:
	c = csum_replace4(udp->check, old_daddr, new_daddr);
	/* a computed 0 is sent as 0xffff, its one's-complement twin (RFC 768) */
	udp->check = c ? c : 0xffff;
}

/* Count a redirect and hand the frame to the kernel. */
static __always_inline int do_redirect(struct xdpctl_backend *be, struct xdpctl_rule_stats *rs,
				       __u32 rule_stats_id, __u64 len, __u32 ingress, int generic)
{
	struct xdpctl_backend_stats *bs;

	if (bpf_redirect(be->ifindex, 0) != XDP_REDIRECT) {
		count(XDPCTL_STAT_ERR_REDIRECT);
		return verdict(XDP_ABORTED);
	}
	track_redirect(XDPCTL_REDIR_RULE, rule_stats_id, be->stats_id, len, ingress, be->ifindex, be->ifindex, generic);
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

/*
 * An address a router does not forward from (as a source) or to (as a
 * destination), RFC 1812 5.3.7 and 5.3.5.1: network 0 (0.0.0.0/8), loopback
 * (127.0.0.0/8), multicast (224.0.0.0/4) and class E (240.0.0.0/4, with the
 * limited broadcast 255.255.255.255). A rule for "any destination" must not
 * take a broadcast or a multicast datagram to its port (DHCP, mDNS, ...)
 * away from the host: the stack gets those.
 */
static __always_inline int martian(__be32 addr)
{
	__u8 first = *(__u8 *)&addr; /* network byte order: the first octet */

	return first == 0 || first == 127 || first >= 224;
}

/*
 * Whether the frame was addressed to the ingress at layer 2, as Linux would
 * classify it there (PACKET_HOST): its destination MAC is the ingress device's
 * own address, as the kernel holds it now (so a change of the address, `ip
 * link set X address ...`, is followed from the next frame on, in both XDP
 * modes), or another unicast address the device takes as this host's, which
 * the daemon writes into ingress_macs from the kernel: the device's secondary
 * unicast addresses (its uc list, where a macvlan on it -- a VRRP virtual MAC
 * -- puts its own), and on a bridge port the bridge's local addresses (the
 * bridge's MAC, its ports'). Anything else -- link-layer broadcast or
 * multicast, another station's unicast (a promiscuous NIC, a switch flooding
 * an unknown unicast) -- is not for this host: Linux's forwarding drops such
 * frames (ip_rcv_core, PACKET_OTHERHOST; RFC 1812 5.3.4), so they go to the
 * stack, counted. Cross-connects (layer 2) never ask.
 */
static __always_inline int for_us(struct xdp_md *ctx, struct ethhdr *eth)
{
	struct xdp_buff___xdpctl *xdp = bpf_cast_to_kern_ctx(ctx);
	struct net_device___xdpctl *dev = xdp->rxq->dev;
	__u32 hi = *(__u32 *)&dev->dev_addr_shadow[0];
	__u16 lo = *(__u16 *)&dev->dev_addr_shadow[4];
	struct xdpctl_mac_key mk = {};

	if (*(__u32 *)&eth->h_dest[0] == hi && *(__u16 *)&eth->h_dest[4] == lo)
		return 1;
	if (!(eth->h_dest[0] & 1)) {
		mk.ifindex = ctx->ingress_ifindex;
		__builtin_memcpy(mk.mac, eth->h_dest, 6);
		if (bpf_map_lookup_elem(&ingress_macs, &mk))
			return 1;
	}
	count(XDPCTL_STAT_ERR_NOT_FOR_US);
	return 0;
}

/*
 * What a router checks before forwarding (RFC 1812), on a packet we are about
 * to redirect; false: pass it to the stack, counted. Options (5.2.4) take a
 * router's slow path: the stack's. The header checksum is verified (5.2.2):
 * ten words. Martian sources and destinations are not forwarded (5.3.7).
 * TTL <= 1 is not forwarded (5.3.1); the stack answers with ICMP time
 * exceeded when the host forwards.
 */
static __always_inline int router_checks(struct iphdr *ip)
{
	__u16 *w = (void *)ip;
	__u32 sum = 0;
	int i;

	if (ip->ihl != 5) {
		count(XDPCTL_STAT_ERR_IP_OPTIONS);
		return 0;
	}
#pragma unroll
	for (i = 0; i < 10; i++)
		sum += w[i];
	if (csum_fold_raw(sum) != 0xffff) {
		count(XDPCTL_STAT_ERR_MALFORMED);
		return 0;
	}
	if (martian(ip->saddr) || martian(ip->daddr)) {
		count(XDPCTL_STAT_ERR_MARTIAN);
		return 0;
	}
	if (ip->ttl <= 1) {
		count(XDPCTL_STAT_ERR_TTL);
		return 0;
	}
	return 1;
}

/* A non-first fragment: no UDP header, so never parsed for ports; it follows
 * its first fragment if that one was redirected, else the stack gets it. */
static __always_inline int follow_fragment(struct xdp_md *ctx, void *data, struct iphdr *ip, int generic)
{
	struct xdpctl_frag_key fk = {
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.id = ip->id,
		.proto = ip->protocol,
	};
	struct xdpctl_frag_val *fv = bpf_map_lookup_elem(&frag_track, &fk);
	struct xdpctl_rule_stats *rs;
	struct xdpctl_backend *be;
	__u32 new_daddr;
	__u64 len;

	if (!fv) {
		count(XDPCTL_STAT_ERR_FRAGMENT);
		return verdict(XDP_PASS);
	}
	len = frame_len(ctx);
	if (!for_us(ctx, data) || !router_checks(ip))
		return verdict(XDP_PASS);
	be = bpf_map_lookup_elem(&backends, &fv->backend_id);
	rs = bpf_map_lookup_elem(&rule_stats, &fv->rule_stats_id);
	if (rs) {
		rs->matched++;
		rs->matched_bytes += len;
	}
	if (!be || !be->ifindex) {
		if (rs)
			rs->no_backend++;
		count(XDPCTL_STAT_ERR_NO_BACKEND);
		return verdict(XDP_DROP);
	}
	__builtin_memcpy(&new_daddr, be->addr, 4);
	rewrite_ip(data, ip, be, new_daddr);
	return do_redirect(be, rs, fv->rule_stats_id, len, ctx->ingress_ifindex, generic);
}

static __always_inline int udp_redirect(struct xdp_md *ctx, void *data, void *data_end,
					 struct iphdr *ip, __u32 if_flags)
{
	struct xdpctl_rule_stats *rs;
	struct xdpctl_backend *be;
	struct xdpctl_rule *rule;
	struct udphdr *udp;
	__u32 slot, ring_idx, *be_id, old_daddr, new_daddr, ip_len, l3_len;
	__u64 len;
	__u16 frag = bpf_ntohs(ip->frag_off);
	int first_fragment;

	/* RFC 1812 5.2.2 (and what Linux's ip_rcv_core checks): version 4, a
	 * header of at least 20 bytes, a total length that covers the header
	 * and fits in the frame. Anything else is the stack's to drop. */
	if (ip->version != 4 || ip->ihl < 5) {
		count(XDPCTL_STAT_ERR_MALFORMED);
		return verdict(XDP_PASS);
	}
	ip_len = bpf_ntohs(ip->tot_len);
	/* The first buffer usually holds the whole frame; the helper that
	 * counts every buffer (multi-buffer frames) only runs when it does not. */
	l3_len = data_end - (void *)ip;
	if (ip_len > l3_len)
		l3_len = bpf_xdp_get_buff_len(ctx) - sizeof(struct ethhdr);
	if (ip_len > l3_len) {
		count(XDPCTL_STAT_ERR_TRUNCATED);
		return verdict(XDP_PASS);
	}
	if (ip_len < ip->ihl * 4) {
		count(XDPCTL_STAT_ERR_MALFORMED);
		return verdict(XDP_PASS);
	}

	if (frag & 0x1fff)
		return follow_fragment(ctx, data, ip, !!(if_flags & XDPCTL_IF_F_GENERIC)); /* non-first */
	first_fragment = !!(frag & 0x2000); /* MF set, offset 0 */

	/* Variable-length header: the verifier needs the explicit bound on ihl
	 * (4 bits, so <= 60 bytes) and the check against data_end below. */
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end) {
		count(XDPCTL_STAT_ERR_TRUNCATED);
		return verdict(XDP_PASS);
	}
	rule = find_rule(ctx, ip, udp->dest, &slot);
	if (!rule)
		return verdict(XDP_PASS);
	if (!for_us(ctx, data))
		return verdict(XDP_PASS); /* not addressed to this host: not ours to judge further */

	/* The UDP length must agree with the IP length (RFC 768/1122): equal
	 * for a whole datagram, larger than this fragment's part for a first
	 * fragment. Linux would trim a shorter one; a forwarder must not guess. */
	if (first_fragment ? bpf_ntohs(udp->len) <= ip_len - ip->ihl * 4
			   : bpf_ntohs(udp->len) != ip_len - ip->ihl * 4) {
		count(XDPCTL_STAT_ERR_MALFORMED);
		return verdict(XDP_PASS);
	}
	if (!router_checks(ip))
		return verdict(XDP_PASS);
	len = frame_len(ctx);
	rs = bpf_map_lookup_elem(&rule_stats, &rule->stats_id);
	if (rs) {
		rs->matched++;
		rs->matched_bytes += len;
	}
	/* A ring of one backend (XDPCTL_RULE_F_ONE_BACKEND) gives every flow
	 * that backend: its first entry, without the flow hash (~7 ns). */
	ring_idx = slot * XDPCTL_RING_SIZE;
	if (!(rule->flags & XDPCTL_RULE_F_ONE_BACKEND))
		ring_idx += ring_pos(flow_hash(ip->saddr, ip->daddr, udp->source, udp->dest, IPPROTO_UDP));
	be_id = bpf_map_lookup_elem(&rule_ring, &ring_idx);
	be = be_id ? bpf_map_lookup_elem(&backends, be_id) : NULL;
	if (!be || !be->ifindex) {
		if (rs)
			rs->no_backend++;
		count(XDPCTL_STAT_ERR_NO_BACKEND);
		return verdict(XDP_DROP);
	}
	if (first_fragment) {
		/* The rest of the datagram follows this fragment. */
		struct xdpctl_frag_key fk = {
			.saddr = ip->saddr,
			.daddr = ip->daddr,
			.id = ip->id,
			.proto = ip->protocol,
		};
		struct xdpctl_frag_val fv = {
			.backend_id = *be_id,
			.rule_stats_id = rule->stats_id,
		};

		bpf_map_update_elem(&frag_track, &fk, &fv, BPF_ANY);
	}

	/* Rewrite: the UDP checksum (it covers the destination through its
	 * pseudo-header), then the IPv4 header and L2 addresses. */
	__builtin_memcpy(&new_daddr, be->addr, 4);
	old_daddr = ip->daddr;
	update_udp_csum(ctx, ip, udp, old_daddr, new_daddr, rule->flags, if_flags, first_fragment);
	/* update_udp_csum may call a helper that invalidates packet pointers
	 * in the verifier's view: re-derive them. */
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return verdict(XDP_ABORTED);
	rewrite_ip(data, ip, be, new_daddr);
	return do_redirect(be, rs, rule->stats_id, len, ctx->ingress_ifindex, !!(if_flags & XDPCTL_IF_F_GENERIC));
}

/* Multi-buffer (xdp.frags): attaches natively to interfaces whose MTU is
 * larger than a page (jumbo frames); ctx->data..data_end is then only the
 * first buffer, which holds every header we read, and lengths come from
 * bpf_xdp_get_buff_len(). */
SEC("xdp.frags")
int xdpctl_main(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 in = ctx->ingress_ifindex, flags = 0;
	__u32 *fp = bpf_map_lookup_elem(&if_flags, &in);
	int act;

#ifdef XDPCTL_BUILD_MARK
	/* Only changes the instruction stream (and so the program tag): lets the
	 * tests load a "new version" for hitless-upgrade runs. */
	__u32 mark = XDPCTL_BUILD_MARK;

	asm volatile("" : "+r"(mark));
#endif
	if (!fp)
		fp = bpf_map_lookup_elem(&if_flags_big, &in);
	if (fp)
		flags = *fp;
	act = xconnect(ctx, flags);
	if (act != XDP_PASS) {
		if (!(flags & XDPCTL_IF_F_GENERIC) && may_be_partial(ctx))
			complete_partial_csum(ctx);
		return verdict(act);
	}

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
	return udp_redirect(ctx, data, data_end, ip, flags);
}

char _license[] SEC("license") = "GPL";
