// Package probe is the 16-byte datagram flannel-go nodes ask each other
// with on the flannel port, and the schedule of the asks. Two uses share
// it: the kernel fast path asks which peers decapsulate in their own
// kernel (answered by the peer's ingress program), the userspace router
// asks which peers carry inner IPv6 (answered by the peer's router).
// Upstream's proxy drops any datagram under 20 bytes and the router
// drops a malformed IPv4 packet, so neither mistakes a probe for data.
package probe

import "encoding/binary"

// Len is a probe's length: Magic, the type, the nonce.
const Len = 16

// Magic starts every probe. Its first byte, 0x00, is neither IPv4 nor
// IPv6.
var Magic = [7]byte{0x00, 'f', 'l', 'g', 'o', 'f', 'p'}

// Type is a probe's type. The fast path's program (fastpath/bpf/probe.h)
// knows FastPathAsk and FastPathAnswer; TestProbeWireFormat in fastpath
// checks the two definitions against each other.
type Type uint8

// The probe types.
const (
	FastPathAsk    Type = 1
	FastPathAnswer Type = 2
	IPv6Ask        Type = 3
	IPv6Answer     Type = 4
)

// Message is a probe: its type and its nonce, which an answer repeats.
type Message struct {
	Type  Type
	Nonce uint64
}

// Marshal is m on the wire: Magic, the type, the nonce big-endian.
func (m Message) Marshal() [Len]byte {
	var b [Len]byte
	copy(b[:], Magic[:])
	b[7] = byte(m.Type)
	binary.BigEndian.PutUint64(b[8:], m.Nonce)
	return b
}

// Parse reads a probe; ok is false for anything else (wrong length or
// magic).
func Parse(b []byte) (m Message, ok bool) {
	if len(b) != Len || [7]byte(b[:7]) != Magic {
		return Message{}, false
	}
	return Message{Type: Type(b[7]), Nonce: binary.BigEndian.Uint64(b[8:])}, true
}

// WireNonce is the nonce as the fast path's program loads it from a
// packet: the wire's bytes read in the machine's order.
func WireNonce(nonce uint64) uint64 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], nonce)
	return binary.NativeEndian.Uint64(b[:])
}
