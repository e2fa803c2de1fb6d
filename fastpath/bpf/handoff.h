/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
// The handoff turns a datagram into VXLAN for the local handoff device,
// whose kernel decapsulation leaves a plain packet: a decapsulation here
// would leave skb->encapsulation set on a super-packet, and the bridge
// towards the containers would then cut it into segments in software and
// compute each checksum (its hw_enc_features carry neither TSO nor
// checksum offload). The device also decapsulates inner IPv6 where the
// kernel cannot change skb->protocol in TC (no have_decap_flags).
#pragma once

#include "common.h"
#include "csum.h"

struct handoff_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__be32 vx_flags;
	__be32 vx_vni;
	struct ethhdr inner;
} __attribute__((packed));

#define HANDOFF_LEN (sizeof(struct handoff_hdr) - sizeof(struct encap_hdr))

// handoff_ready tells whether the device takes packets: there is one, and
// the watchdog has not turned it off.
static __always_inline int handoff_ready(void)
{
	if (!handoff_port)
		return 0;
	__u32 zero = 0;
	__u32 *off = bpf_map_lookup_elem(&handoff_off, &zero);
	return off && !*off;
}

// handoff_fits tells whether the outer length field holds the VXLAN form
// of an inner packet of inner_len bytes.
static __always_inline int handoff_fits(__u32 inner_len)
{
	return inner_len <= 0xffff - sizeof(struct handoff_hdr) + sizeof(struct ethhdr);
}

// decap_all tells whether this node can decapsulate in the kernel every
// packet a fast-path peer may send it. Peers send partial inner checksums
// to a node that answered their probe or sent from its own egress
// program, and the userspace router would deliver those broken: a node
// that cannot must do neither.
static __always_inline int decap_all(void)
{
	return !carry_ipv6 || have_decap_flags || handoff_ready();
}

static __always_inline int handoff(struct __sk_buff *skb, struct encap_hdr *h, __u32 inner_len, __u16 proto)
{
	struct handoff_hdr v = {};
	v.eth = h->eth;
	v.udp = h->udp;
	struct iphdr oip = h->ip;
	oip.tot_len = bpf_htons(inner_len + sizeof(struct iphdr) + sizeof(struct udphdr) + HANDOFF_LEN);
	ip_csum(&oip);
	v.ip = oip;
	v.udp.dest = handoff_port;
	v.udp.len = bpf_htons(inner_len + sizeof(struct udphdr) + HANDOFF_LEN);
	v.udp.check = 0;
	v.vx_flags = bpf_htonl(0x08000000);
	v.vx_vni = bpf_htonl(1 << 8);
	// The source only has to differ from the device's own address (VXLAN
	// drops its own frames as loops).
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++) {
		v.inner.h_dest[i] = handoff_mac[i];
		v.inner.h_source[i] = handoff_mac[i];
	}
	v.inner.h_source[ETH_ALEN - 1] ^= 0xff;
	v.inner.h_proto = proto;
	// The packet pointers die here; everything above was read before.
	if (bpf_skb_adjust_room(skb, HANDOFF_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(C_PASS_DECAP, 1);
		return TC_ACT_OK;
	}
	if (bpf_skb_store_bytes(skb, 0, &v, sizeof(v), 0)) {
		count(C_DROP_ENCAP, 1);
		return TC_ACT_SHOT;
	}
	skb->mark = handoff_mark;
	count(C_IN_PACKETS, 1);
	count(C_IN_BYTES, inner_len);
	count(C_HANDOFF, 1);
	return TC_ACT_OK;
}
