/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Layout shared by the XDP program (bpf/xdpctl.bpf.c) and the control plane
 * (src/server/dataplane/codec.ts). Every struct here is a map key or value:
 * changing one changes the pinned maps' layout, so it is an upgrade that cannot
 * reuse old pins. test/unit/codec-layout.test.ts compares the TypeScript codecs
 * with the BTF of the compiled object and fails if the two drift.
 *
 * Byte order: addresses and ports are stored in network byte order (as they
 * appear in the packet) so the datapath compares them without swapping;
 * everything else is host order.
 */
#ifndef XDPCTL_H
#define XDPCTL_H

#include <linux/types.h>

/* Slots in each rule's backend lookup table (a prime, as Maglev's). The control
 * plane gives each backend a share proportional to its weight to within one
 * slot (src/server/core/ring.ts); the datapath indexes it with
 * flow_hash % XDPCTL_RING_SIZE. Memory: 1031 x 4 B = 4 KiB per rule slot, two
 * slots per rule (live and shadow): 8 KiB per rule. */
#define XDPCTL_RING_SIZE 1031

/* Default capacities; the loader may raise them (bpf_map__set_max_entries). */
#define XDPCTL_MAX_LINKS 1024
#define XDPCTL_MAX_RULE_SLOTS 8192 /* two per rule: live and its shadow */
#define XDPCTL_MAX_MATCHES 16384
#define XDPCTL_MAX_SRC_PREFIXES 65536
#define XDPCTL_MAX_BACKENDS 65536
#define XDPCTL_MAX_STATS_IDS 8192

/* Entries of if_flags: ifindexes below this have their flags there (an
 * inlined array lookup); a larger ifindex has them in if_flags_big (a hash). */
#define XDPCTL_MAX_IFINDEX 65536
/* Entries of if_flags_big: interfaces with an ifindex >= XDPCTL_MAX_IFINDEX
 * that have flags (a cross-connect, a generic-mode attachment). */
#define XDPCTL_MAX_BIG_IFINDEXES 4096

/* if_flags values: what an ingress interface uses. */
#define XDPCTL_IF_F_XCONNECT 0x1 /* has an xc_links entry */
#define XDPCTL_IF_F_LINK 0x2     /* bits 8-31 hold its link counters' index in xc_stats */
#define XDPCTL_IF_F_GENERIC 0x4  /* our program runs in generic (skb) mode here */
#define XDPCTL_IF_LINK_SHIFT 8

/* A ring slot with no backend. */
#define XDPCTL_NO_BACKEND 0xffffffffu

/* Address families, as in <sys/socket.h>. */
#define XDPCTL_AF_INET 2
#define XDPCTL_AF_INET6 10

/*
 * Key of the rule_match hash: what a packet must carry for a rule to apply.
 * Looked up twice per packet, first with the packet's destination address and
 * then with daddr all-zero ("any destination"). proto and family leave room
 * for TCP and IPv6 without a new layout; daddr holds an IPv4 address in its
 * first four bytes and zeros after.
 */
struct xdpctl_match_key {
	__u32 ifindex; /* ingress interface */
	__u16 dport;   /* destination port, network order */
	__u8 proto;    /* IPPROTO_UDP (17); IPPROTO_TCP later */
	__u8 family;   /* XDPCTL_AF_INET; XDPCTL_AF_INET6 later; | XDPCTL_MATCH_GEN */
	__u8 daddr[16];
};

/*
 * Rule generations: a many-rule change is one kernel transaction. rule_gen
 * holds the active generation G (0 or 1); the program looks up only the
 * rule_match entries whose family byte carries G (XDPCTL_MATCH_GEN set for
 * generation 1) and the rule_ports entries of G (index G << 16 | port). User
 * space writes a change's whole match set under the other generation, then
 * switches with one update of rule_gen (the commit point), then deletes the
 * entries of the old generation. rule_match's max_entries is twice the match
 * capacity: room for both.
 */
#define XDPCTL_MATCH_GEN 0x80
#define XDPCTL_PORTS_PER_GEN 65536

/* Value of rule_ports (array indexed by destination port, host order): how
 * many rule_match entries use the port, so that the datapath looks up only
 * what can exist (most packets: nothing at all); and the port's
 * any-destination entries folded into one word, which names the entry itself
 * when there is exactly one (the common case: then no rule_match lookup). */
struct xdpctl_port_use {
	__u32 any; /* entries with daddr "any" */
	__u32 dst; /* entries with a specific daddr */
	/* Over the port's any-destination entries: bits 0-31 the XOR of their
	 * ingress ifindexes, 32-55 the XOR of their slots, 56-63 their number
	 * (saturating at 255). With exactly one entry, the XORs are that entry.
	 * A function of the entries alone (not of their history), so an undone
	 * change leaves it as it was; one 64-bit field, read with one load, so
	 * count, ifindex and slot come from the same write. */
	__u64 any_fold;
};
#define XDPCTL_FOLD_SLOT_MASK 0xffffffULL

/* rule_cfg.flags */
#define XDPCTL_RULE_F_ACTIVE 0x1        /* slot holds a complete rule */
#define XDPCTL_RULE_F_SRC_FILTER 0x2    /* only sources in src_allow match */
#define XDPCTL_RULE_F_UDP_CSUM_ZERO 0x4 /* zero the UDP checksum (IPv4 only) */
/* Every entry of the slot's ring holds the same backend id (one backend, or
 * none): the datapath takes ring entry 0 and skips the flow hash. Written by
 * the control plane from the ring it wrote (src/server/dataplane/tables.ts):
 * set only after such a ring is complete, cleared before a partial rewrite
 * of it, so a packet never sees the flag with a ring of several backends. */
#define XDPCTL_RULE_F_ONE_BACKEND 0x8

/* Value of rule_cfg (array indexed by rule slot). A rule change is written
 * into a free slot (its shadow) and published by repointing rule_match, so a
 * packet sees either the whole old rule or the whole new one. */
struct xdpctl_rule {
	__u32 flags;
	__u32 stats_id; /* index into rule_stats; stable across rule updates */
};

/* Key of ingress_macs: a unicast MAC the ingress device takes as this host's
 * besides its own address (its secondary unicast addresses, a macvlan's on it,
 * its bridge's). */
struct xdpctl_mac_key {
	__u32 ifindex;
	__u8 mac[6];
	__u16 pad; /* 0 */
};

/* Entries of ingress_macs (over every ingress). */
#define XDPCTL_MAX_INGRESS_MACS 4096

/* Key of src_allow (LPM trie). prefixlen counts the 32 bits of slot plus the
 * address bits, so a prefix only ever matches packets of its own rule slot. */
struct xdpctl_src_key {
	__u32 prefixlen;
	__u32 slot;
	__u8 addr[16];
};

/* Value of backends (array indexed by backend id, the values of rule_ring). */
struct xdpctl_backend {
	__u8 dmac[6];    /* backend's MAC */
	__u8 smac[6];    /* egress interface's MAC */
	__u32 ifindex;   /* egress interface; 0 = unused entry */
	__u32 stats_id;  /* index into backend_stats; stable across updates */
	__u8 family;     /* XDPCTL_AF_INET */
	__u8 pad[3];
	__u8 addr[16];   /* backend address, network order */
};

/* Per-CPU counters. */
struct xdpctl_link_stats {
	__u64 packets;         /* frames redirected and accepted by the kernel */
	__u64 bytes;
	__u64 redirect_errors; /* redirected, then dropped by the kernel (tracepoints) */
};

struct xdpctl_rule_stats {
	__u64 matched;          /* packets that matched the rule's key */
	__u64 matched_bytes;
	__u64 redirected;       /* packets rewritten and redirected */
	__u64 redirected_bytes;
	__u64 filtered;         /* source not in the rule's prefixes: passed */
	__u64 no_backend;       /* empty ring slot: dropped */
	__u64 redirect_errors;  /* redirected, then dropped by the kernel (tracepoints) */
};

struct xdpctl_backend_stats {
	__u64 packets;          /* redirected and accepted by the kernel */
	__u64 bytes;
	__u64 redirect_errors;  /* redirected, then dropped by the kernel (tracepoints) */
};

/* Index of the global stats array: verdicts first, then errors. */
enum xdpctl_stat {
	XDPCTL_STAT_ABORTED = 0, /* = XDP_ABORTED ... XDP_REDIRECT */
	XDPCTL_STAT_DROP = 1,
	XDPCTL_STAT_PASS = 2,
	XDPCTL_STAT_TX = 3,
	XDPCTL_STAT_REDIRECT = 4,
	XDPCTL_STAT_ERR_TRUNCATED = 5,   /* headers shorter than they claim */
	XDPCTL_STAT_ERR_FRAGMENT = 6,    /* non-first fragment with no tracked first: passed */
	XDPCTL_STAT_ERR_NO_RULE = 7,     /* rule_match points at an inactive slot */
	XDPCTL_STAT_ERR_NO_BACKEND = 8,  /* ring slot empty or backend unused */
	XDPCTL_STAT_ERR_REDIRECT = 9,    /* bpf_redirect refused the target */
	XDPCTL_STAT_ERR_MALFORMED = 10,  /* IPv4/UDP header invalid (RFC 1812 5.2.2): passed */
	XDPCTL_STAT_ERR_TTL = 11,        /* TTL <= 1 on a matched packet: passed (stack sends ICMP) */
	XDPCTL_STAT_ERR_IP_OPTIONS = 12, /* matched packet with IP options: passed */
	XDPCTL_STAT_ERR_XMIT = 13,       /* redirected, then dropped by the kernel (tracepoints) */
	XDPCTL_STAT_ERR_MARTIAN = 14,    /* martian source or non-unicast destination (RFC 1812 5.3.7): passed */
	/* of ERR_XMIT: frames our program redirected that the kernel dropped but that the tracepoints
	 * cannot tie to the redirect that sent them: charged to no rule, backend or link (their
	 * "redirected" still counts them) */
	XDPCTL_STAT_ERR_XMIT_UNATTRIBUTED = 15,
	/* matched packet in a frame whose destination MAC is not the ingress's own (link-layer
	 * broadcast, multicast, another station's): not for this host (RFC 1812 5.3.4): passed */
	XDPCTL_STAT_ERR_NOT_FOR_US = 16,
	XDPCTL_STAT__MAX = 17,
};

/*
 * Key of frag_track (LRU hash): an IPv4 datagram being fragmented, as RFC 791
 * identifies it for reassembly (source, destination, protocol, id) -- the
 * key Cilium's IPV4_FRAG_DATAGRAMS_MAP uses. Network order, as in the packet.
 */
struct xdpctl_frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

/* Value of frag_track: where the datagram's first fragment went, so that
 * the rest follow it (they carry no ports to hash). */
struct xdpctl_frag_val {
	__u32 backend_id;    /* index into backends */
	__u32 rule_stats_id; /* index into rule_stats */
};

/*
 * What the XDP program redirected, so that bpf/xdpctl-trace.bpf.c can take a
 * frame the kernel dropped afterwards back out of "redirected" and count it
 * as an error of the same rule, backend or link. The kernel reports two kinds
 * of failure, both on the CPU that ran the program:
 *  - xdp:xdp_redirect_err, right after the program returned (egress down,
 *    MTU too small, no XDP transmit): the frame is `last`;
 *  - xdp:xdp_devmap_xmit at the end of the NAPI poll, when the egress driver
 *    took only `sent` of the queued frames (e.g. a veth peer without NAPI):
 *    the dropped ones are the last `drops` of that egress's queue, which the
 *    program mirrors in `q` (the kernel queues at most 16 per CPU and egress,
 *    DEV_MAP_BULK_SIZE, flushes when full, and flushes every queue at the end
 *    of the NAPI poll that filled it: one ingress device per queue).
 * An outcome is charged only when the tracepoint can tell it is this frame:
 * same CPU (per-CPU maps), our program (prog id) on an ingress in our network
 * namespace, the same ingress, target (egress ifindex or devmap key, and map)
 * and NAPI poll (`epoch`: xdpctl_napi_poll counts this CPU's polls, after
 * their flush, so anything recorded in an earlier poll is no longer pending),
 * and for a flush exactly as many mirrored frames as the kernel flushed.
 * Anything else goes to XDPCTL_STAT_ERR_XMIT_UNATTRIBUTED, and the mirror
 * starts over at the next redirect (a mirror left behind by a run that
 * queued nothing -- generic mode, a test run, a daemon restart -- is of an
 * earlier epoch).
 * Value of redir_track (per-CPU array indexed by egress ifindex % 1024; the
 * ifindex is kept to detect two egresses sharing an entry).
 */
#define XDPCTL_REDIR_TRACK 1024
#define XDPCTL_BULK 16
#define XDPCTL_REDIR_RULE 1 /* id: rule stats id, id2: backend stats id */
#define XDPCTL_REDIR_LINK 2 /* id: the link's index in xc_stats, or XDPCTL_NO_LINK */
#define XDPCTL_NO_LINK 0xffffffffu /* a link without counters (recorded without a target: unattributed) */

struct xdpctl_redir_ent {
	__u32 kind;
	__u32 id;
	__u32 id2;
	__u32 len;
};

/* Value of redir_last (per-CPU, one entry): the frame the program just redirected. */
struct xdpctl_redir_last {
	struct xdpctl_redir_ent e; /* e.kind 0: nothing pending */
	__u32 egress;  /* ifindex, 0 when the program does not know it (devmap) */
	__u32 queued;  /* mirrored in redir_track[egress] */
	__u32 ingress; /* ctx->ingress_ifindex of the run */
	__u32 target;  /* the index the kernel reports: egress ifindex (bpf_redirect) or devmap key */
	__u32 epoch;   /* this CPU's NAPI polls so far (xdpctl_napi_poll) */
	__u32 pad;
};

struct xdpctl_redir_q {
	__u32 ifindex; /* egress this entry mirrors; 0: unused */
	__u32 count;   /* frames queued since the last flush */
	__u32 ingress; /* the ingress they came in on */
	__u32 epoch;   /* the NAPI poll that queued them (redir_last.epoch) */
	/* One more than the kernel queues: the frame that makes it flush is
	 * queued after the flush (bq_enqueue). */
	struct xdpctl_redir_ent q[XDPCTL_BULK + 1];
};

#endif /* XDPCTL_H */
