// SPDX-License-Identifier: GPL-2.0-only
/*
 * Baselines for benchmarks and a "foreign" program for tests: the cheapest
 * XDP programs that do what xdpctl does, so that its cost can be stated as a
 * ratio against them measured in the same run.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

char _license[] SEC("license") = "GPL";
