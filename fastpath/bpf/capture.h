/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
// The live capture: packets the programs carry, copied into a ring buffer
// while /debug/pcap reads it.
#pragma once

#include "common.h"

// A power of two: the copy's length is masked into [1, CAPTURE_MAX], a
// bound every verifier can follow.
#define CAPTURE_MAX 2048

// capture[0] is nonzero while a live capture reads the ring.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} capture SEC(".maps");

// Without have_ringbuf the loader makes this a one-entry array, which
// the (then unreachable) ring calls never touch.
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

// Emits struct capture_rec into the BTF, for bpf2go -type capture_rec.
const struct capture_rec *unused_capture_rec __attribute__((unused));

// capture_pkt copies the inner packet at off into the ring when a capture
// runs; without one it costs a single array lookup.
static __always_inline void capture_pkt(struct __sk_buff *skb, __u32 off, __u8 dir)
{
	if (!have_ringbuf)
		return;
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&capture, &zero);
	if (!on || !*on)
		return;
	struct capture_rec *r = bpf_ringbuf_reserve(&ring, sizeof(*r), 0);
	if (!r) {
		count(C_CAPTURE_LOST, 1);
		return;
	}
	__u32 len = skb->len > off ? skb->len - off : 0;
	r->len = len;
	r->dir = dir;
	r->pad = 0;
	r->caplen = 0;
	if (len) {
		__u32 n = len < CAPTURE_MAX ? len : CAPTURE_MAX;
		// n is already in [1, CAPTURE_MAX]; the arithmetic says so to
		// the verifier without a branch it would have to follow.
		n = ((n - 1) & (CAPTURE_MAX - 1)) + 1;
		if (bpf_skb_load_bytes(skb, off, r->data, n) == 0)
			r->caplen = n;
	}
	bpf_ringbuf_submit(r, 0);
}
