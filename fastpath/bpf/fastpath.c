// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// TC programs that carry flannel's udp wire format (one inner IPv4 or
// IPv6 packet per UDP datagram over an IPv4 underlay, no extra header) in
// the kernel. Anything they do not
// handle goes on unchanged to the userspace router (TC_ACT_OK), which
// stays the reference for every corner case: ICMP errors, options,
// fragments, unknown destinations.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Debian 12's uapi headers predate these; the kernels that have tcx have them.
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif
#define AF_INET 2

#define ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr))
#define PROBE_LEN 16
#define CAPTURE_MAX 1500

// Set by the loader before the programs are loaded.
volatile const __u32 local_addr;       // underlay address, network order
volatile const __u16 udp_port;         // network order
volatile const __u32 underlay_ifindex;
volatile const __u32 tun_ifindex;
volatile const __u8 strict_source;
volatile const __u8 accept_unknown;
volatile const __u64 answer_valid_ns;  // how long a probe answer vouches for a peer
// The local handoff: a VXLAN device (VNI 1) listening on this UDP port
// (network order, 0 without one) with this MAC address.
volatile const __u16 handoff_port;
volatile const __u8 handoff_mac[6];
// The mark of the datagrams this program hands to the device: a netfilter
// rule on the host's input drops every datagram for handoff_port without
// it (see guard.go), so only what passed the sender check here gets in.
volatile const __u32 handoff_mark;

struct route_key {
	__u32 prefixlen;
	__u32 addr; // network order
};

// Other nodes' subnets -> their PublicIP (network order).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct route_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} routes SEC(".maps");

struct route6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

// Other nodes' IPv6 subnets -> their PublicIP (network order): inner IPv6
// crosses the same IPv4 underlay.
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct route6_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} routes6 SEC(".maps");

// Lease holders by PublicIP; answered is when the peer last showed that it
// decapsulates in its kernel (now(): a probe answer, or a datagram from
// its egress program, see vouch), 0 if never.
struct peer {
	__u64 answered;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct peer);
	__uint(max_entries, 65536);
} peers SEC(".maps");

// The programs' counters. Every reason a packet is passed to the
// userspace router, dropped or counted has its own value; the Go side
// (stats.go) names each one for /metrics.
enum counter {
	C_OUT_PACKETS,
	C_OUT_BYTES,
	C_IN_PACKETS,
	C_IN_BYTES,
	// Egress: packets from the TUN left to the userspace router.
	C_PASS_NO_ROUTE,   // no peer owns the destination
	C_PASS_TTL,        // TTL or hop limit would reach 0
	C_PASS_NOT_SIMPLE, // options, fragments, extension headers, not IP
	C_PASS_PEER,       // peer not known to decapsulate in the kernel
	C_PASS_NO_NEIGH,   // no neighbour entry for the peer (or its gateway) yet
	C_PASS_NO_UNDERLAY_ROUTE, // the FIB has no usable route to the peer
	C_PASS_TOO_BIG,    // not a super-packet and over the underlay's MTU
	C_PASS_OVERSIZE,   // the outer length fields cannot hold it
	C_PASS_ENCAP,      // bpf_skb_adjust_room refused to grow the packet
	// Ingress: datagrams to the flannel port left to its socket.
	C_PASS_UNKNOWN_SENDER, // the sender holds no lease
	C_PASS_NOT_ONE_PACKET, // the payload is not one whole IPv4/IPv6 packet
	C_PASS_DECAP,          // bpf_skb_adjust_room refused to shrink or grow it
	C_PASS_ROUTER_PROBE,   // the userspace router's own probes (IPv6 capability)
	C_DROP_STRICT,
	C_DROP_ENCAP,
	C_PROBES_ANSWERED,
	C_PROBE_ANSWERS,
	C_CAPTURE_LOST,
	C_DROP_HANDOFF, // datagrams for the handoff device's port from outside
	C_HANDOFF,      // packets handed to the handoff device
	C_MAX,
};

// Emits enum counter into the BTF, for bpf2go -type counter.
const enum counter *unused_counter __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, C_MAX);
} stats SEC(".maps");

// capture[0] is nonzero while a live capture reads the ring.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} capture SEC(".maps");

// handoff_off[0] is nonzero once userspace saw the handoff device miss
// what the program hands it (a firewall on the host's input, say).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} handoff_off SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} ring SEC(".maps");

// A captured packet: its inner bytes (at most CAPTURE_MAX) and direction.
struct capture_rec {
	__u32 len;      // length of the whole inner packet
	__u16 caplen;   // bytes kept in data
	__u8 dir;       // 0 out (to a peer), 1 in (from a peer)
	__u8 pad;
	__u8 data[CAPTURE_MAX];
};

// probe is the datagram payload of a fast-path probe: 16 bytes, which
// upstream's proxy (anything under 20 bytes) and our userspace router
// (malformed IPv4) both drop.
struct probe {
	__u8 magic[7];
	__u8 type; // PROBE_ASK or PROBE_ANSWER
	__u64 nonce;
};

#define PROBE_ASK 1
#define PROBE_ANSWER 2

static const __u8 probe_magic[7] = {0x00, 'f', 'l', 'g', 'o', 'f', 'p'};

static __always_inline void count(__u32 c, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &c);
	if (v)
		*v += n;
}

static __always_inline __u32 route(__u32 addr)
{
	struct route_key k = {.prefixlen = 32, .addr = addr};
	__u32 *peer = bpf_map_lookup_elem(&routes, &k);
	return peer ? *peer : 0;
}

static __always_inline __u32 route6(const struct in6_addr *addr)
{
	struct route6_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	__u32 *peer = bpf_map_lookup_elem(&routes6, &k);
	return peer ? *peer : 0;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

// ip_csum sets the checksum of the option-less IPv4 header ip.
static __always_inline void ip_csum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	ip->check = csum_fold(sum);
}

// capture_pkt copies the inner packet at off into the ring when a capture
// runs; without one it costs a single array lookup.
static __always_inline void capture_pkt(struct __sk_buff *skb, __u32 off, __u8 dir)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&capture, &zero);
	if (!on || !*on)
		return;
	struct capture_rec *r = bpf_ringbuf_reserve(&ring, sizeof(*r), 0);
	if (!r) {
		count(C_CAPTURE_LOST, 1);
		return;
	}
	__u64 len = skb->len > off ? skb->len - off : 0;
	__u64 caplen = len < CAPTURE_MAX ? len : CAPTURE_MAX;
	// Keeps clang from checking a copy of caplen rather than the register
	// the helper gets: the verifier needs the bound on that one.
	asm volatile("" : "+r"(caplen));
	r->len = len;
	r->dir = dir;
	r->pad = 0;
	r->caplen = 0;
	if (caplen >= 1 && caplen <= CAPTURE_MAX && bpf_skb_load_bytes(skb, off, r->data, caplen) == 0)
		r->caplen = caplen;
	bpf_ringbuf_submit(r, 0);
}

// Outer headers written in front of an inner packet.
struct encap_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));

// now is the clock of peer.answered: the coarse monotonic clock (a tick's
// resolution is plenty for a validity of seconds) costs no clock-source
// read, and the egress program asks it for every packet.
static __always_inline __u64 now(void)
{
	return bpf_ktime_get_coarse_ns();
}

// peer_ready tells whether peer answered a probe recently enough to take
// packets whose inner checksums are left to offload.
static __always_inline int peer_ready(__u32 peer)
{
	struct peer *p = bpf_map_lookup_elem(&peers, &peer);
	__u64 at = p ? *(volatile __u64 *)&p->answered : 0;
	// Another CPU may renew the answer after this one read the clock: an
	// answer from the future is fresh, not 2^64 ns old.
	__u64 t = now();
	if (!at || (t > at && t - at > answer_valid_ns)) {
		count(C_PASS_PEER, 1);
		return 0;
	}
	return 1;
}

// encap puts the outer headers for peer in front of the inner packet
// (IPv6 if v6), decrements its TTL or hop limit once, as the router does,
// and redirects it to the underlay.
static __always_inline int encap(struct __sk_buff *skb, __u32 peer, int v6)
{
	struct bpf_fib_lookup fib = {
		.family = AF_INET,
		.ipv4_src = local_addr,
		.ipv4_dst = peer,
		.ifindex = underlay_ifindex,
	};
	int rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(rc == BPF_FIB_LKUP_RET_NO_NEIGH	    ? C_PASS_NO_NEIGH :
		      rc == BPF_FIB_LKUP_RET_FRAG_NEEDED ? C_PASS_TOO_BIG :
							  C_PASS_NO_UNDERLAY_ROUTE,
		      1);
		return TC_ACT_OK;
	}

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
	if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0)) {
		count(C_DROP_ENCAP, 1);
		return TC_ACT_SHOT;
	}

	__u32 need = sizeof(h) + (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + need > end) {
		if (bpf_skb_pull_data(skb, need) < 0) {
			count(C_DROP_ENCAP, 1);
			return TC_ACT_SHOT;
		}
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	if (v6) {
		// IPv6 has no header checksum to update.
		struct ipv6hdr *in6 = data + sizeof(h);
		if ((void *)(in6 + 1) > end) {
			count(C_DROP_ENCAP, 1);
			return TC_ACT_SHOT;
		}
		in6->hop_limit--;
	} else {
		struct iphdr *in = data + sizeof(h);
		if ((void *)(in + 1) > end) {
			count(C_DROP_ENCAP, 1);
			return TC_ACT_SHOT;
		}
		// RFC 1624 update of the header checksum.
		__u32 check = in->check;
		check += bpf_htons(0x0100);
		in->check = (__u16)(check + (check >= 0xffff));
		in->ttl--;
	}

	count(C_OUT_PACKETS, 1);
	count(C_OUT_BYTES, inner_len);
	capture_pkt(skb, sizeof(h), 0);
	return bpf_redirect(fib.ifindex, 0);
}

// ipv6_ext tells whether next header nh is an IPv6 extension header: such
// packets are rare enough to leave to userspace.
static __always_inline int ipv6_ext(__u8 nh)
{
	switch (nh) {
	case 0:   // hop-by-hop options
	case 43:  // routing
	case 44:  // fragment
	case 51:  // authentication
	case 60:  // destination options
	case 135: // mobility
	case 139: // HIP
	case 140: // shim6
	case 253:
	case 254: // experiments
		return 1;
	}
	return 0;
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
	__u32 peer = route6(&ip6->daddr);
	if (!peer) {
		count(C_PASS_NO_ROUTE, 1);
		return TC_ACT_OK;
	}
	if (ip6->hop_limit <= 1) {
		count(C_PASS_TTL, 1);
		return TC_ACT_OK;
	}
	if (!peer_ready(peer))
		return TC_ACT_OK;
	return encap(skb, peer, 1);
}

SEC("tcx/egress")
int flannel_egress(struct __sk_buff *skb)
{
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
	__u32 peer = route(ip->daddr);
	if (!peer) {
		count(C_PASS_NO_ROUTE, 1);
		return TC_ACT_OK;
	}
	if (ip->ttl <= 1) {
		count(C_PASS_TTL, 1);
		return TC_ACT_OK;
	}
	if (!peer_ready(peer))
		return TC_ACT_OK;
	return encap(skb, peer, 0);
}

// vouch counts a datagram that the peer's own egress program sent as an
// answer: that program leaves the outer UDP checksum zero, which no UDP
// socket sends over IPv4 (a computed zero goes out as 0xffff, one left to
// offload holds the pseudo-header sum, never zero), so neither upstream's
// proxy nor the userspace router does. And a peer sends from its kernel
// only to nodes it holds a lease of, whose datagrams its ingress program
// therefore takes. Probes alone are not enough: a full backlog drops them
// like any packet, and right after a peer comes up (or a lease event reset
// its answer) the next ask may be seconds away; either way the flows
// towards it went through userspace meanwhile and were reordered. The
// write is rare because every CPU shares the entry.
static __always_inline void vouch(struct peer *p)
{
	__u64 at = *(volatile __u64 *)&p->answered;
	__u64 t = now();
	if (t > at && t - at > answer_valid_ns / 8)
		p->answered = t;
}

// answer_probe turns a probe into its answer and sends it back out of the
// interface it came in on: this node's kernel decapsulates, so the asker may
// hand it packets whose inner checksums are left to offload.
static __always_inline int answer_probe(struct __sk_buff *skb)
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
		if (p)
			p->answered = now();
		count(C_PROBE_ANSWERS, 1);
		return TC_ACT_SHOT;
	}
	if (pr->type != PROBE_ASK) {
		count(C_PASS_ROUTER_PROBE, 1);
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

// The handoff turns a datagram into VXLAN for the local handoff device,
// whose kernel decapsulation leaves a plain packet: a decapsulation here
// would leave skb->encapsulation set on a super-packet, and the bridge
// towards the containers would then cut it into segments in software and
// compute each checksum (its hw_enc_features carry neither TSO nor
// checksum offload).
struct handoff_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	__be32 vx_flags;
	__be32 vx_vni;
	struct ethhdr inner;
} __attribute__((packed));

#define HANDOFF_LEN (sizeof(struct handoff_hdr) - sizeof(struct encap_hdr))

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

// handoff_on tells whether a packet that direct() does not take goes to
// the handoff device. Not only TCP super-packets do: a flow whose single
// segments went straight into the TUN while its super-packets took the
// device's queue would be reordered (measured: spurious retransmissions
// with 4 streams).
static __always_inline int handoff_on(__u32 inner_len)
{
	if (!handoff_port)
		return 0;
	// The outer length field must hold the VXLAN form too.
	if (inner_len > 0xffff - sizeof(struct handoff_hdr) + sizeof(struct ethhdr))
		return 0;
	__u32 zero = 0;
	__u32 *off = bpf_map_lookup_elem(&handoff_off, &zero);
	return off && !*off;
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
// stay whole). Going straight into the TUN saves a trip through the UDP
// stack and a VXLAN device per packet, which is what limits small-packet
// rates. TCP always takes the device, super-packet or not, so that the
// segments of a flow keep their order; a UDP flow whose datagrams arrive
// both as super-packets and singly (possible only on an underlay that
// keeps super-packets whole, such as veth) may be reordered.
static __always_inline int direct(struct __sk_buff *skb, __u8 proto)
{
	if (skb->gso_size)
		return 0;
	return proto == IPPROTO_UDP || proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
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
	if (!direct(skb, proto) && handoff_on(inner_len))
		return handoff(skb, h, inner_len, bpf_htons(v6 ? ETH_P_IPV6 : ETH_P_IP));
	if (bpf_skb_adjust_room(skb, -(__s32)ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				(v6 ? BPF_F_ADJ_ROOM_DECAP_L3_IPV6 : BPF_F_ADJ_ROOM_DECAP_L3_IPV4) |
					BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(C_PASS_DECAP, 1);
		return TC_ACT_OK;
	}
	count(C_IN_PACKETS, 1);
	count(C_IN_BYTES, inner_len);
	return bpf_redirect(tun_ifindex, BPF_F_INGRESS);
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
	// Only this program may reach the handoff device: whatever arrives for
	// its port from outside would bypass the sender check.
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
		return answer_probe(skb);
	if (p && !h->udp.check)
		vouch(p);
	return deliver(skb, sender);
}

char __license[] SEC("license") = "Dual MIT/GPL";
