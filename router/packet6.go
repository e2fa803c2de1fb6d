package router

import (
	"encoding/binary"

	"github.com/flannel-go/flannel-go/internal/inet"
)

// IPv6 facts the data path needs.
const (
	ipv6Header  = 40
	protoICMPv6 = 58

	icmp6TypeDestUnreachable = 1
	icmp6TypeTimeExceeded    = 3
	icmp6CodeNoRoute         = 0
	icmp6CodeHopLimit        = 0

	// icmp6MaxLen is the largest ICMPv6 error: RFC 4443 2.4(c) quotes as
	// much of the offender as fits in the IPv6 minimum MTU.
	icmp6MaxLen = 1280
	// hopLimitICMPv6 is the hop limit of the router's ICMPv6 errors.
	hopLimitICMPv6 = 64
)

// parseIPv6 checks that p starts with a sane IPv6 header and returns the
// packet's length (header plus payload length; p may be longer). A zero
// payload length (a jumbogram's) is refused: no datagram carries one.
func parseIPv6(p []byte) (total int, reason dropReason) {
	if len(p) < ipv6Header {
		return 0, dropMalformed
	}
	if p[0]>>4 != 6 {
		return 0, dropNotIPv6
	}
	total = ipv6Header + int(binary.BigEndian.Uint16(p[4:6]))
	if total == ipv6Header && p[6] == 0 {
		return 0, dropMalformed // hop-by-hop options with a zero length: a jumbogram
	}
	if total > len(p) {
		return 0, dropMalformed
	}
	return total, dropNone
}

// upperLayer walks the extension headers of the valid IPv6 packet p and
// returns the upper-layer protocol and its offset. ok is false when the
// walk leaves p or meets a non-first fragment, whose upper layer is not
// in it.
func upperLayer(p []byte) (proto uint8, at int, ok bool) {
	proto, at = p[6], ipv6Header
	for range 8 { // more extension headers than this is abuse: give up
		switch proto {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(p) < at+8 {
				return 0, 0, false
			}
			proto, at = p[at], at+(int(p[at+1])+1)*8
		case 44: // fragment
			if len(p) < at+8 || binary.BigEndian.Uint16(p[at+2:at+4])&0xfff8 != 0 {
				return 0, 0, false
			}
			proto, at = p[at], at+8
		default:
			return proto, at, at <= len(p)
		}
	}
	return 0, 0, false
}

// mayReportError6 tells whether an ICMPv6 error may be sent about the
// valid IPv6 packet p (RFC 4443 2.4(e)): never about an ICMPv6 error
// message, a packet to a multicast address, or one whose source does not
// name a single node; nor when the upper layer cannot be found.
func mayReportError6(p []byte) bool {
	if p[24] == 0xff || p[8] == 0xff || isZero(p[8:24]) {
		return false
	}
	proto, at, ok := upperLayer(p)
	if !ok {
		return false
	}
	if proto != protoICMPv6 {
		return true
	}
	// Error messages have types 0-127; the type must be visible.
	return at < len(p) && p[at] >= 128
}

func isZero(b []byte) bool {
	return binary.NativeEndian.Uint64(b[:8])|binary.NativeEndian.Uint64(b[8:16]) == 0
}

// buildICMPv6Error writes into out (at least icmp6MaxLen bytes) an ICMPv6
// error of type typ and code about the offending packet p, sent from src
// to the offender's source, and returns its length. The quote is as much
// of p as fits in icmp6MaxLen.
func buildICMPv6Error(out []byte, p []byte, src [16]byte, typ, code uint8) int {
	quote := min(len(p), icmp6MaxLen-ipv6Header-icmpHeaderLen)
	plen := icmpHeaderLen + quote
	ip := out[:ipv6Header]
	binary.BigEndian.PutUint32(ip[0:4], 6<<28)
	binary.BigEndian.PutUint16(ip[4:6], uint16(plen))
	ip[6] = protoICMPv6
	ip[7] = hopLimitICMPv6
	copy(ip[8:24], src[:])
	copy(ip[24:40], p[8:24])

	icmp := out[ipv6Header : ipv6Header+plen]
	icmp[0] = typ
	icmp[1] = code
	clear(icmp[2:8]) // checksum, then unused
	copy(icmp[8:], p[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], ^inet.Fold(inet.Sum16(icmp, pseudoSum6(ip, protoICMPv6, plen))))
	return ipv6Header + plen
}

// pseudoSum6 is the unfolded IPv6 pseudo-header sum (RFC 8200 8.1) for an
// upper-layer message of length l and protocol proto between the
// addresses of the IPv6 header ip.
func pseudoSum6(ip []byte, proto uint8, l int) uint64 {
	return inet.Sum16(ip[8:40], uint64(proto)+uint64(l))
}

// flowHash6 hashes the addresses, next header and (TCP, UDP) ports of the
// valid IPv6 packet p into a byte.
func flowHash6(p []byte) uint8 {
	h := uint64(p[6])
	for i := 8; i < 40; i += 8 {
		h = (h ^ binary.BigEndian.Uint64(p[i:i+8])) * 0x9e3779b97f4a7c15
	}
	if (p[6] == 6 || p[6] == 17) && len(p) >= ipv6Header+4 {
		h ^= uint64(binary.BigEndian.Uint32(p[40:44])) * 0xc2b2ae3d
	}
	h ^= h >> 32
	return uint8(h>>24 ^ h>>16 ^ h>>8 ^ h)
}

// sameFlow6 reports whether the IPv6 packets a and b (at least their
// headers) have the same addresses, next header and, for TCP and UDP,
// ports.
func sameFlow6(a, b []byte) bool {
	if len(a) < ipv6Header || len(b) < ipv6Header || a[6] != b[6] || string(a[8:40]) != string(b[8:40]) {
		return false
	}
	if a[6] != 6 && a[6] != 17 {
		return true
	}
	if len(a) < ipv6Header+4 || len(b) < ipv6Header+4 {
		return false
	}
	return binary.NativeEndian.Uint32(a[40:]) == binary.NativeEndian.Uint32(b[40:])
}

// markCE6 sets Congestion Experienced on the IPv6 packet p when it is
// ECN-capable and reports whether it did. ECN is the low two bits of the
// Traffic Class, bits 2-3 of byte 1; IPv6 has no header checksum.
func markCE6(p []byte) bool {
	if (p[1]>>4)&3 == 0 {
		return false
	}
	p[1] |= 0x30
	return true
}
