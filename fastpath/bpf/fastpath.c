// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// TC programs that carry flannel's udp wire format (one inner IPv4 or
// IPv6 packet per UDP datagram over an IPv4 underlay, no extra header) in
// the kernel: flannel_egress on the TUN encapsulates, flannel_ingress on
// the underlay decapsulates. Anything they do not handle goes on
// unchanged to the userspace router (TC_ACT_OK), which stays the
// reference for every corner case: ICMP errors, options, fragments,
// unknown destinations. The helpers are in the headers: csum.h (headers
// and checksums), probe.h (which peers decapsulate in their kernel),
// handoff.h (the local VXLAN device), capture.h (the live capture).

#include "common.h"
#include "csum.h"
#include "capture.h"
#include "handoff.h"
#include "probe.h"

// pass_fib counts why the FIB lookup for a peer failed.
static __always_inline int pass_fib(int rc)
{
	count(rc == BPF_FIB_LKUP_RET_NO_NEIGH	 ? C_PASS_NO_NEIGH :
	      rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? C_PASS_TOO_BIG :
						   C_PASS_NO_UNDERLAY_ROUTE,
	      1);
	return TC_ACT_OK;
}

// dec_ttl decrements the inner packet's TTL or hop limit once, as the
// router does; the packet's headers start at off.
static __always_inline int dec_ttl(struct __sk_buff *skb, __u32 off, int v6)
{
	__u32 need = off + (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + need > end) {
		if (bpf_skb_pull_data(skb, need) < 0)
			return -1;
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (v6) {
		// IPv6 has no header checksum to update.
		struct ipv6hdr *in6 = data + off;
		if ((void *)(in6 + 1) > end)
			return -1;
		in6->hop_limit--;
		return 0;
	}
	struct iphdr *in = data + off;
	if ((void *)(in + 1) > end)
		return -1;
	// RFC 1624 update of the header checksum.
	__u32 check = in->check;
	check += bpf_htons(0x0100);
	in->check = (__u16)(check + (check >= 0xffff));
	in->ttl--;
	return 0;
}

// encap puts the outer headers for peer in front of the inner packet
// (IPv6 if v6), decrements its TTL or hop limit and redirects it to the
// underlay.
static __always_inline int encap(struct __sk_buff *skb, __u32 peer, int v6)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ipv4_src = local_addr,
		.ipv4_dst = peer,
		.ifindex = underlay_ifindex,
	};
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return pass_fib(rc);

	__u32 inner_len = skb->len;
	// On failure adjust_room leaves the packet as it was: userspace takes
	// it. The flags name the outer headers; the kernel keeps the inner
	// protocol (IPv4 or IPv6) from skb->protocol for GSO.
	if (bpf_skb_adjust_room(skb, ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP |
					BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(C_PASS_ENCAP, 1);
		return TC_ACT_OK;
	}
	if (bpf_skb_change_head(skb, sizeof(struct ethhdr), 0)) {
		count(C_DROP_ENCAP, 1);
		return TC_ACT_SHOT;
	}

	struct iphdr oip = {
		.version = 4,
		.ihl = 5,
		.tot_len = bpf_htons(inner_len + ENCAP_LEN),
		.frag_off = bpf_htons(0x4000), // DF, as the router's sockets send
		.ttl = 64,
		.protocol = IPPROTO_UDP,
		.saddr = local_addr,
		.daddr = peer,
	};
	ip_csum(&oip);
	struct encap_hdr h = {};
	__builtin_memcpy(h.eth.h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(h.eth.h_source, fib.smac, ETH_ALEN);
	h.eth.h_proto = bpf_htons(ETH_P_IP);
	h.ip = oip;
	h.udp.source = udp_port;
	h.udp.dest = udp_port;
	h.udp.len = bpf_htons(inner_len + sizeof(struct udphdr));
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0) || dec_ttl(skb, sizeof(h), v6)) {
		count(C_DROP_ENCAP, 1);
		return TC_ACT_SHOT;
	}
	count(C_OUT_PACKETS, 1);
	count(C_OUT_BYTES, inner_len);
	capture_pkt(skb, sizeof(h), 0);
	return bpf_redirect(fib.ifindex, 0);
}

// egress_checks passes what the router must handle: no route, a TTL or
// hop limit that would reach 0, a peer not known to decapsulate in its
// kernel; it returns the peer, 0 when the packet was passed.
static __always_inline __u32 egress_checks(__u32 peer, __u8 ttl)
{
	if (!peer) {
		count(C_PASS_NO_ROUTE, 1);
		return 0;
	}
	if (ttl <= 1) {
		count(C_PASS_TTL, 1);
		return 0;
	}
	return peer_ready(peer) ? peer : 0;
}

static __always_inline int egress6(struct __sk_buff *skb)
{
	if (bpf_skb_pull_data(skb, sizeof(struct ipv6hdr)) < 0)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data;
	if ((void *)(ip6 + 1) > end)
		return TC_ACT_OK;
	// A zero payload length is a jumbogram; the outer lengths could not
	// hold a packet that long either.
	if (ip6->version != 6 || ipv6_ext(ip6->nexthdr) || !ip6->payload_len) {
		count(C_PASS_NOT_SIMPLE, 1);
		return TC_ACT_OK;
	}
	if (skb->len > 0xffff - ENCAP_LEN) {
		count(C_PASS_OVERSIZE, 1);
		return TC_ACT_OK;
	}
	__u32 peer = egress_checks(route6(&ip6->daddr), ip6->hop_limit);
	return peer ? encap(skb, peer, 1) : TC_ACT_OK;
}

SEC("tcx/egress")
int flannel_egress(struct __sk_buff *skb)
{
	// A node that cannot decapsulate everything must not make its peers
	// think it can: its datagrams from here would vouch for it.
	if (!decap_all()) {
		count(C_PASS_NO_KERNEL_DECAP, 1);
		return TC_ACT_OK;
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return egress6(skb);
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_pull_data(skb, sizeof(struct iphdr)) < 0)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct iphdr *ip = data;
	if ((void *)(ip + 1) > end)
		return TC_ACT_OK;
	if (ip->version != 4 || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff))) {
		count(C_PASS_NOT_SIMPLE, 1);
		return TC_ACT_OK;
	}
	// A super-packet longer than the outer length fields can say (BIG
	// TCP) is the router's to segment.
	if (skb->len > 0xffff - ENCAP_LEN) {
		count(C_PASS_OVERSIZE, 1);
		return TC_ACT_OK;
	}
	__u32 peer = egress_checks(route(ip->daddr), ip->ttl);
	return peer ? encap(skb, peer, 0) : TC_ACT_OK;
}

// inner_ok checks the inner packet at in (IPv4, or IPv6 if v6) against
// the datagram's UDP length and --strict-source, and returns its length,
// 0 to leave the datagram to the socket, -1 to drop it; *proto is its
// protocol (IPv6: next header).
static __always_inline int inner_ok(void *in, void *end, struct encap_hdr *h, __u32 sender, int v6, __u8 *proto)
{
	__u32 len, owner;
	if (v6) {
		struct ipv6hdr *ip6 = in;
		if ((void *)(ip6 + 1) > end)
			return 0;
		len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
		owner = strict_source ? route6(&ip6->saddr) : sender;
		*proto = ip6->nexthdr;
	} else {
		struct iphdr *ip = in;
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return 0;
		len = bpf_ntohs(ip->tot_len);
		owner = strict_source ? route(ip->saddr) : sender;
		*proto = ip->protocol;
	}
	if (len + sizeof(struct udphdr) != bpf_ntohs(h->udp.len))
		return 0;
	if (owner != sender) {
		count(C_DROP_STRICT, 1);
		return -1;
	}
	return len;
}

// direct tells whether an inner packet with this protocol may skip the
// handoff device: a UDP, ICMP or ICMPv6 packet that is not a super-packet
// (only TCP and UDP super-packets reach the ingress whole, and those must
// stay whole), where the kernel can decapsulate its family in TC. Going
// straight into the TUN saves a trip through the UDP stack and a VXLAN
// device per packet, which is what limits small-packet rates. TCP always
// takes the device, super-packet or not, so that the segments of a flow
// keep their order; a UDP flow whose datagrams arrive both as
// super-packets and singly (possible only on an underlay that keeps
// super-packets whole, such as veth) may be reordered.
static __always_inline int direct(struct __sk_buff *skb, __u8 proto, int v6)
{
	if (v6 && !have_decap_flags)
		return 0;
	if (!have_gso_size || skb->gso_size)
		return 0;
	return proto == IPPROTO_UDP || proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

// decap removes the outer headers in TC and redirects the inner packet
// into the TUN. Without have_decap_flags the kernel keeps skb->protocol,
// which is right for inner IPv4 only: inner IPv6 never gets here then.
static __always_inline int decap(struct __sk_buff *skb, __u32 inner_len, int v6)
{
	__u64 flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	if (have_decap_flags)
		flags |= v6 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV6 : BPF_F_ADJ_ROOM_DECAP_L3_IPV4;
	if (v6 && !have_decap_flags) {
		count(C_PASS_NO_KERNEL_DECAP, 1);
		return TC_ACT_OK;
	}
	if (bpf_skb_adjust_room(skb, -(__s32)ENCAP_LEN, BPF_ADJ_ROOM_MAC, flags)) {
		count(C_PASS_DECAP, 1);
		return TC_ACT_OK;
	}
	count(C_IN_PACKETS, 1);
	count(C_IN_BYTES, inner_len);
	return bpf_redirect(tun_ifindex, BPF_F_INGRESS);
}

// deliver takes a datagram from a lease holder (past the probe check): its
// inner packet goes to the handoff device or straight into the TUN.
static __always_inline int deliver(struct __sk_buff *skb, __u32 sender)
{
	// The shortest inner packet is an IPv4 header; an IPv6 one needs more.
	if (bpf_skb_pull_data(skb, sizeof(struct encap_hdr) + sizeof(struct iphdr)) < 0) {
		count(C_PASS_NOT_ONE_PACKET, 1);
		return TC_ACT_OK;
	}
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u8 *ver = data + sizeof(struct encap_hdr);
	if ((void *)(ver + 1) > end)
		return TC_ACT_OK;
	int v6 = (*ver >> 4) == 6;
	if (!v6 && (*ver >> 4) != 4) {
		count(C_PASS_NOT_ONE_PACKET, 1);
		return TC_ACT_OK;
	}
	if (v6 && bpf_skb_pull_data(skb, sizeof(struct encap_hdr) + sizeof(struct ipv6hdr)) < 0) {
		count(C_PASS_NOT_ONE_PACKET, 1);
		return TC_ACT_OK;
	}
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	struct encap_hdr *h = data;
	if ((void *)(h + 1) > end)
		return TC_ACT_OK;
	__u8 proto = 0;
	int len = inner_ok(h + 1, end, h, sender, v6, &proto);
	if (len < 0)
		return TC_ACT_SHOT;
	if (len == 0) {
		count(C_PASS_NOT_ONE_PACKET, 1);
		return TC_ACT_OK;
	}
	__u32 inner_len = len;
	capture_pkt(skb, sizeof(struct encap_hdr), 1);
	if (!direct(skb, proto, v6) && handoff_ready() && handoff_fits(inner_len))
		return handoff(skb, h, inner_len, bpf_htons(v6 ? ETH_P_IPV6 : ETH_P_IP));
	return decap(skb, inner_len, v6);
}

SEC("tcx/ingress")
int flannel_ingress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_pull_data(skb, sizeof(struct encap_hdr)) < 0)
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct encap_hdr *h = data;
	if ((void *)(h + 1) > end)
		return TC_ACT_OK;
	if (h->eth.h_proto != bpf_htons(ETH_P_IP) || h->ip.version != 4 || h->ip.ihl != 5 ||
	    h->ip.protocol != IPPROTO_UDP || (h->ip.frag_off & bpf_htons(0x3fff)) ||
	    h->ip.daddr != local_addr)
		return TC_ACT_OK;
	// One clock read serves the heartbeat, the vouch and a probe answer.
	__u64 t = now();
	if (!alive(t))
		return TC_ACT_OK;
	// The guard (guard.go) closes the handoff port to every datagram this
	// program did not mark; plain ones are dropped here already, counted.
	if (handoff_port && h->udp.dest == handoff_port) {
		count(C_DROP_HANDOFF, 1);
		return TC_ACT_SHOT;
	}
	if (h->udp.dest != udp_port)
		return TC_ACT_OK;
	__u32 sender = h->ip.saddr;
	// The sender check: only lease holders get the kernel path.
	struct peer *p = bpf_map_lookup_elem(&peers, &sender);
	if (!p && !accept_unknown) {
		count(C_PASS_UNKNOWN_SENDER, 1);
		return TC_ACT_OK;
	}
	if (is_probe(data + sizeof(struct ethhdr) + sizeof(struct iphdr), end))
		return answer_probe(skb, t);
	if (p && !h->udp.check)
		vouch(p, t);
	return deliver(skb, sender);
}

char __license[] SEC("license") = "Dual MIT/GPL";
