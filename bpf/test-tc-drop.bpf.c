// SPDX-License-Identifier: GPL-2.0-only
/*
 * Test helper, not part of the datapath: a tc program that drops every frame (TC_ACT_SHOT), as another
 * tool's filter on a backend's veth peer may (test/integration/backend-peer-tc.test.ts). Attached with
 * `tc filter add dev PEER ingress bpf da obj ... sec tc`, or as a tcx program.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

SEC("tc")
int tc_drop(struct __sk_buff *skb)
{
	return TC_ACT_SHOT;
}

char _license[] SEC("license") = "GPL";
