/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
// What both programs share: the loader's settings, the kernel features
// it found, the maps and the counters.
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Older uapi headers (Debian 12's) predate these; whether the running
// kernel knows them is the loader's have_decap_flags.
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif
#define AF_INET 2

#define ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr))

// Set by the loader before the programs are loaded. The map that holds
// them is frozen, so the verifier knows their values and never looks at
// the branches for features the kernel lacks.
volatile const __u32 local_addr;       // underlay address, network order
volatile const __u16 udp_port;         // network order
volatile const __u32 underlay_ifindex;
volatile const __u32 tun_ifindex;
volatile const __u8 strict_source;
volatile const __u8 accept_unknown;
volatile const __u8 carry_ipv6;        // the network carries inner IPv6
volatile const __u64 answer_valid_ns;  // how long a probe answer vouches for a peer
// The local handoff: a VXLAN device (VNI 1) listening on this UDP port
// (network order, 0 without one) with this MAC address.
volatile const __u16 handoff_port;
volatile const __u8 handoff_mac[6];
// The mark of the datagrams this program hands to the device: a netfilter
// rule on the host's input drops every datagram for handoff_port without
// it (see guard.go), so only what passed the sender check here gets in.
volatile const __u32 handoff_mark;

// Kernel features (features.go probes them; a variant is a set of them).
volatile const __u8 have_coarse_clock; // bpf_ktime_get_coarse_ns (5.11)
volatile const __u8 have_decap_flags;  // BPF_F_ADJ_ROOM_DECAP_L3_* (6.3)
volatile const __u8 have_gso_size;     // __sk_buff.gso_size (5.7)
volatile const __u8 have_ringbuf;      // BPF_MAP_TYPE_RINGBUF (5.8)
// Attached as cls_bpf filters, which outlive the process: the ingress
// program acts only while the daemon keeps the heartbeat fresh, and
// passes every packet unchanged otherwise.
volatile const __u8 need_heartbeat;
volatile const __u64 heartbeat_valid_ns;

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
	// Both ways: this node cannot decapsulate inner IPv6 in the kernel.
	C_PASS_NO_KERNEL_DECAP,
	C_DROP_STRICT,
	C_DROP_ENCAP,
	C_PROBES_ANSWERED,
	C_PROBE_ANSWERS,
	C_CAPTURE_LOST,
	C_DROP_HANDOFF, // datagrams for the handoff device's port from outside
	C_HANDOFF,      // packets handed to the handoff device
	C_DROP_PROBE_ANSWER, // an answer without the nonce of this node's last ask
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

// heartbeat[0] is when the daemon last said it runs (now()'s clock); see
// need_heartbeat.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} heartbeat SEC(".maps");

// handoff_off[0] is nonzero once userspace saw the handoff device miss
// what the program hands it (a firewall on the host's input, say).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} handoff_off SEC(".maps");

static __always_inline void count(__u32 c, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &c);
	if (v)
		*v += n;
}

// now is the clock of peer.answered and the heartbeat: where the kernel
// has it, the coarse monotonic clock (a tick's resolution is plenty for
// validities of seconds, and it costs no clock-source read, which the
// egress program would pay per packet).
static __always_inline __u64 now(void)
{
	if (have_coarse_clock)
		return bpf_ktime_get_coarse_ns();
	return bpf_ktime_get_ns();
}

// fresh tells whether a time stamp at (0: never) is younger than valid
// at time t (now()). Another CPU may write it after this one read the
// clock: a stamp from the future is fresh, not 2^64 ns old.
static __always_inline int fresh(__u64 at, __u64 valid, __u64 t)
{
	return at && (t <= at || t - at <= valid);
}

// alive tells whether the daemon runs at time t (always, for tcx links,
// which go with the process). Only the ingress program asks: the egress
// program's device, the TUN, goes with the process either way.
static __always_inline int alive(__u64 t)
{
	if (!need_heartbeat)
		return 1;
	__u32 zero = 0;
	__u64 *hb = bpf_map_lookup_elem(&heartbeat, &zero);
	return hb && fresh(*(volatile __u64 *)hb, heartbeat_valid_ns, t);
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

// Outer headers written in front of an inner packet.
struct encap_hdr {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));
