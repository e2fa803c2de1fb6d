/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
// Header checksums and header classification.
#pragma once

#include "common.h"

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
