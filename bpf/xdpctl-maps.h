/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The maps that both bpf/xdpctl.bpf.c (the XDP program, which counts) and
 * bpf/xdpctl-trace.bpf.c (the tracepoint programs, which move frames the
 * kernel dropped after XDP_REDIRECT from "redirected" to "redirect_errors")
 * use: one definition, so the two objects cannot disagree about a type or a
 * size. Both pin them by name in the same pin root, so the trace object reuses
 * the XDP object's maps. The loader sets max_entries where it is sized by
 * --max-rules (src/server/dataplane/datapath.ts).
 */
#ifndef XDPCTL_MAPS_H
#define XDPCTL_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "xdpctl.h"

/* Per link direction, indexed by the link's index (a small number user space
 * gives each direction and keeps in its ingress's if_flags entry, bits 8-31,
 * with XDPCTL_IF_F_LINK): an inlined per-CPU array lookup where a per-CPU
 * hash keyed by ifindex cost ~30 ns a frame. User space zeroes the entry when
 * it gives the index out; the datapath counts only for an ingress whose flags
 * name an index. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCTL_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct xdpctl_link_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xc_stats SEC(".maps");

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

/* The frame this CPU redirected last, and the frames queued per egress since
 * the kernel last flushed them: see struct xdpctl_redir_q in xdpctl.h. Read
 * and corrected by the tracepoint programs of bpf/xdpctl-trace.bpf.c. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpctl_redir_last);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} redir_last SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCTL_REDIR_TRACK);
	__type(key, __u32);
	__type(value, struct xdpctl_redir_q);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} redir_track SEC(".maps");

/* enum xdpctl_stat -> packets. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XDPCTL_STAT__MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} global_stats SEC(".maps");

#endif /* XDPCTL_MAPS_H */
