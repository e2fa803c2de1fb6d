/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
// The fast-path probe: which peers decapsulate in their own kernel, and
// may therefore be sent packets whose inner checksums are left to
// offload.
#pragma once

#include "common.h"
#include "handoff.h"

// probe is the datagram payload of a probe: 16 bytes, which upstream's
// proxy (anything under 20 bytes) and our userspace router (malformed
// IPv4) both drop. Its layout is the Go package probe's (checked by
// TestProbeWireFormat).
struct probe {
	__u8 magic[7];
	__u8 type; // PROBE_ASK or PROBE_ANSWER
	__u64 nonce;
};

#define PROBE_LEN 16
#define PROBE_ASK 1
#define PROBE_ANSWER 2

// Emits struct probe into the BTF, for bpf2go -type probe.
const struct probe *unused_probe __attribute__((unused));

static const __u8 probe_magic[7] = {0x00, 'f', 'l', 'g', 'o', 'f', 'p'};

// The nonce of the last ask this node sent each peer, as it appears in
// the packet: an answer must carry it, so an off-path host cannot make a
// peer look like a fast-path node by answering for it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 65536);
} asks SEC(".maps");

// peer_ready tells whether peer answered a probe recently enough to take
// packets whose inner checksums are left to offload.
static __always_inline int peer_ready(__u32 peer)
{
	struct peer *p = bpf_map_lookup_elem(&peers, &peer);
	if (!p || !fresh(*(volatile __u64 *)&p->answered, answer_valid_ns, now())) {
		count(C_PASS_PEER, 1);
		return 0;
	}
	return 1;
}

// vouch counts a datagram that the peer's own egress program sent as an
// answer: that program leaves the outer UDP checksum zero, which no UDP
// socket sends over IPv4 (a computed zero goes out as 0xffff, one left to
// offload holds the pseudo-header sum, never zero), so neither upstream's
// proxy nor the userspace router does. And a peer sends from its kernel
// only to nodes it holds a lease of, whose datagrams its ingress program
// therefore takes, and only while it can decapsulate everything itself
// (decap_all). Probes alone are not enough: a full backlog drops them
// like any packet, and right after a peer comes up the next ask may be
// seconds away; either way the flows towards it went through userspace
// meanwhile and were reordered. The write is rare because every CPU
// shares the entry.
static __always_inline void vouch(struct peer *p, __u64 t)
{
	__u64 at = *(volatile __u64 *)&p->answered;
	if (t > at && t - at > answer_valid_ns / 8)
		p->answered = t;
}

static __always_inline int is_probe(struct udphdr *udp, void *end)
{
	struct probe *pr = (void *)(udp + 1);
	if (udp->len != bpf_htons(sizeof(*udp) + PROBE_LEN) || (void *)(pr + 1) > end)
		return 0;
#pragma unroll
	for (int i = 0; i < (int)sizeof(probe_magic); i++)
		if (pr->magic[i] != probe_magic[i])
			return 0;
	return 1;
}

// answer_probe turns a probe into its answer and sends it back out of the
// interface it came in on: this node's kernel decapsulates, so the asker may
// hand it packets whose inner checksums are left to offload. An answer to
// this node's own probe renews the peer's entry (t is now()).
static __always_inline int answer_probe(struct __sk_buff *skb, __u64 t)
{
	if (bpf_skb_pull_data(skb, sizeof(struct encap_hdr) + PROBE_LEN) < 0) {
		count(C_PASS_NOT_ONE_PACKET, 1);
		return TC_ACT_OK;
	}
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct encap_hdr *h = data;
	struct probe *pr = data + sizeof(*h);
	if ((void *)(pr + 1) > end)
		return TC_ACT_OK;
	if (pr->type == PROBE_ANSWER) {
		__u32 from = h->ip.saddr;
		struct peer *p = bpf_map_lookup_elem(&peers, &from);
		__u64 *want = bpf_map_lookup_elem(&asks, &from);
		if (p && want && *want == pr->nonce) {
			p->answered = t;
			count(C_PROBE_ANSWERS, 1);
		} else {
			count(C_DROP_PROBE_ANSWER, 1);
		}
		return TC_ACT_SHOT;
	}
	if (pr->type != PROBE_ASK) {
		count(C_PASS_ROUTER_PROBE, 1);
		return TC_ACT_OK;
	}
	if (!decap_all()) {
		// Unanswered, the asker keeps its packets for this node in
		// userspace, with complete checksums.
		count(C_PASS_NO_KERNEL_DECAP, 1);
		return TC_ACT_OK;
	}
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, h->eth.h_dest, ETH_ALEN);
	__builtin_memcpy(h->eth.h_dest, h->eth.h_source, ETH_ALEN);
	__builtin_memcpy(h->eth.h_source, mac, ETH_ALEN);
	// Swapping the addresses leaves the header checksum as it was.
	__u32 a = h->ip.saddr;
	h->ip.saddr = h->ip.daddr;
	h->ip.daddr = a;
	h->udp.source = udp_port;
	h->udp.dest = udp_port;
	h->udp.check = 0;
	pr->type = PROBE_ANSWER;
	count(C_PROBES_ANSWERED, 1);
	return bpf_redirect(skb->ifindex, 0);
}
