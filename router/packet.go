package router

import (
	"encoding/binary"

	"github.com/flannel-go/flannel-go/internal/inet"
)

// IPv4 header facts the data path needs.
const (
	ipv4MinHeader  = 20
	ipv4MaxHeader  = 60
	protoICMP      = 1
	icmpHeaderLen  = 8
	icmpQuoteExtra = 8 // bytes of the offender's payload quoted after its header

	// icmpMaxLen is the largest ICMP error we build: our IP header, the
	// ICMP header, the offender's header with options and 8 payload bytes.
	icmpMaxLen = ipv4MinHeader + icmpHeaderLen + ipv4MaxHeader + icmpQuoteExtra

	icmpTypeDestUnreachable = 3
	icmpTypeTimeExceeded    = 11
	icmpCodeNetUnreachable  = 0
	icmpCodeTTLExceeded     = 0

	// Upstream's C proxy sends net-unreachable with TTL 8; time exceeded
	// is ours (upstream drops silently), so it gets an ordinary TTL.
	ttlNetUnreachable = 8
	ttlTimeExceeded   = 64
)

// parseIPv4 checks that p starts with a sane IPv4 header and returns the
// header length and the total length (which may be shorter than p).
func parseIPv4(p []byte) (hlen, total int, reason dropReason) {
	if len(p) < ipv4MinHeader {
		return 0, 0, dropMalformed
	}
	if p[0]>>4 != 4 {
		return 0, 0, dropNotIPv4
	}
	hlen = int(p[0]&0x0f) * 4
	total = int(binary.BigEndian.Uint16(p[2:4]))
	if hlen < ipv4MinHeader || total < hlen || total > len(p) {
		return 0, 0, dropMalformed
	}
	return hlen, total, dropNone
}

// decrementTTL lowers the TTL of the valid IPv4 header h by one and patches
// its checksum. The caller has checked that the TTL is above 1.
func decrementTTL(h []byte) {
	old := binary.BigEndian.Uint16(h[8:10])
	h[8]--
	hc := binary.BigEndian.Uint16(h[10:12])
	binary.BigEndian.PutUint16(h[10:12], inet.ChecksumUpdate(hc, old, old-0x0100))
}

// mayReportError tells whether an ICMP error may be sent about the valid
// IPv4 packet p with header length hlen: never about a non-first fragment
// (RFC 1122 3.2.2) and never about an ICMP error message (RFC 792), whose
// type must then be visible.
func mayReportError(p []byte, hlen int) bool {
	if binary.BigEndian.Uint16(p[6:8])&0x1fff != 0 {
		return false
	}
	if p[9] != protoICMP {
		return true
	}
	if len(p) <= hlen {
		return false
	}
	switch p[hlen] {
	case 3, 4, 5, 11, 12: // unreachable, source quench, redirect, time exceeded, parameter problem
		return false
	}
	return true
}

// buildICMPError writes into out (at least icmpMaxLen bytes) an ICMP error
// of type typ and code about the offending packet p (header length hlen),
// sent from src to the offender's source, and returns its length. The
// quote is the offender's header with options and up to 8 payload bytes.
func buildICMPError(out []byte, p []byte, hlen int, src [4]byte, typ, code, ttl uint8) int {
	quote := min(len(p), hlen+icmpQuoteExtra)
	n := ipv4MinHeader + icmpHeaderLen + quote
	ip := out[:ipv4MinHeader]
	ip[0] = 0x45
	ip[1] = 0
	binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	clear(ip[4:8]) // ID 0, no flags, as upstream
	ip[8] = ttl
	ip[9] = protoICMP
	clear(ip[10:12])
	copy(ip[12:16], src[:])
	copy(ip[16:20], p[12:16])
	binary.BigEndian.PutUint16(ip[10:12], inet.Checksum(ip))

	icmp := out[ipv4MinHeader:n]
	icmp[0] = typ
	icmp[1] = code
	clear(icmp[2:8])
	copy(icmp[8:], p[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], inet.Checksum(icmp))
	return n
}

// flowHash hashes the addresses, protocol and (TCP, UDP) ports of the IPv4
// or IPv6 packet p into a byte; short packets hash to 0.
func flowHash(p []byte) uint8 {
	if len(p) < 20 {
		return 0
	}
	if p[0]>>4 == 6 && len(p) >= ipv6Header {
		return flowHash6(p)
	}
	h := binary.BigEndian.Uint32(p[12:16])*0x9e3779b1 ^ binary.BigEndian.Uint32(p[16:20])*0x85ebca77 ^ uint32(p[9])
	if hl := int(p[0]&0xf) * 4; (p[9] == 6 || p[9] == 17) && len(p) >= hl+4 {
		h ^= binary.BigEndian.Uint32(p[hl:hl+4]) * 0xc2b2ae3d
	}
	return uint8(h>>24 ^ h>>16 ^ h>>8 ^ h)
}

// sameFlow reports whether the packets a and b (at least their headers)
// are of one IP version and have the same addresses, protocol and, for
// TCP and UDP, ports.
func sameFlow(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 || a[0]>>4 != b[0]>>4 {
		return false
	}
	if a[0]>>4 == 6 {
		return sameFlow6(a, b)
	}
	return inet.SameFlow(a, b)
}
