// Package inet holds the IPv4 and Internet-checksum helpers that the TUN
// offloads and the router share: one implementation of each, kept fast and
// allocation-free.
package inet

import (
	"encoding/binary"
	"math/bits"
)

// Sum16 adds b as big-endian 16-bit words to sum without folding; a
// trailing odd byte is the high byte of a last word. It adds 64-bit words
// with end-around carry: 2^64-1 is a multiple of 2^16-1, so this is the
// same one's-complement sum, four 16-bit words at a time.
func Sum16(b []byte, sum uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[8:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[16:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	sum, c = bits.Add64(sum, c, 0)
	sum += c
	// Fold to 32 bits so that the short tail cannot overflow.
	sum = sum>>32 + sum&0xffffffff
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// Fold reduces a one's-complement sum to 16 bits.
func Fold(sum uint64) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// Checksum is the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 { return ^Fold(Sum16(b, 0)) }

// ChecksumUpdate returns checksum hc after one 16-bit word of the covered
// data changed from old to new (RFC 1624, eqn. 3).
func ChecksumUpdate(hc, old, new uint16) uint16 {
	sum := uint32(^hc) + uint32(^old) + uint32(new)
	sum = sum>>16 + sum&0xffff
	sum += sum >> 16
	return ^uint16(sum)
}

// PseudoSum is the unfolded IPv4 pseudo-header sum for an L4 segment of
// length l of protocol proto between the addresses in the IPv4 header ip.
func PseudoSum(ip []byte, proto uint8, l int) uint64 {
	return Sum16(ip[12:20], uint64(proto)+uint64(l))
}

// SetHeaderChecksum sets the header checksum of the IPv4 header h.
func SetHeaderChecksum(h []byte) {
	h[10], h[11] = 0, 0
	binary.BigEndian.PutUint16(h[10:], Checksum(h))
}

// SameFlow reports whether the IPv4 packets a and b (at least their
// headers) have the same addresses, protocol and, for TCP and UDP, ports.
func SameFlow(a, b []byte) bool {
	if len(a) < 20 || len(b) < 20 || a[9] != b[9] ||
		binary.NativeEndian.Uint64(a[12:20]) != binary.NativeEndian.Uint64(b[12:20]) {
		return false
	}
	if a[9] != 6 && a[9] != 17 {
		return true
	}
	ha, hb := int(a[0]&0xf)*4, int(b[0]&0xf)*4
	if len(a) < ha+4 || len(b) < hb+4 {
		return false
	}
	return binary.NativeEndian.Uint32(a[ha:]) == binary.NativeEndian.Uint32(b[hb:])
}
