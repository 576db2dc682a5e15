// SPDX-License-Identifier: GPL-2.0-only
/*
 * Test helper, not part of the datapath: a tc egress program that pushes an
 * 802.1Q tag (VLAN 100) on every frame, the way a VLAN device or a container
 * network does. The kernel keeps such a tag as skb metadata (hardware VLAN
 * acceleration) when the device offers tx-vlan-offload, so the receiving
 * side sees it as rx offload metadata, not in the frame.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

SEC("tc")
int push_vlan(struct __sk_buff *skb)
{
	bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), 100);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
