package inet

import (
	"encoding/binary"
	"testing"
)

// The header of RFC 1071's usual example: a valid IPv4 header checksums
// to zero, and SetHeaderChecksum restores a cleared checksum.
func TestHeaderChecksum(t *testing.T) {
	h := []byte{0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7}
	if c := Checksum(h); c != 0 {
		t.Fatalf("checksum over a valid header = %#x, want 0", c)
	}
	h[10], h[11] = 0xde, 0xad
	SetHeaderChecksum(h)
	if got := binary.BigEndian.Uint16(h[10:]); got != 0xb861 {
		t.Fatalf("header checksum %#x, want 0xb861", got)
	}
	// An incremental update agrees with a full recomputation.
	old := binary.BigEndian.Uint16(h[8:10])
	h[8]--
	inc := ChecksumUpdate(0xb861, old, binary.BigEndian.Uint16(h[8:10]))
	SetHeaderChecksum(h)
	if full := binary.BigEndian.Uint16(h[10:]); inc != full {
		t.Fatalf("incremental %#x, full %#x", inc, full)
	}
}

func TestSum16OddAndLong(t *testing.T) {
	b := make([]byte, 101)
	for i := range b {
		b[i] = byte(i * 7)
	}
	var want uint64
	for i := 0; i+1 < len(b); i += 2 {
		want += uint64(b[i])<<8 | uint64(b[i+1])
	}
	want += uint64(b[100]) << 8
	if Fold(Sum16(b, 0)) != Fold(want) {
		t.Fatalf("Sum16 %#x, want %#x", Fold(Sum16(b, 0)), Fold(want))
	}
}

func TestSameFlow(t *testing.T) {
	a := make([]byte, 28)
	a[0], a[9] = 0x45, 17
	copy(a[12:], []byte{198, 18, 1, 2, 198, 18, 2, 3, 0, 53, 4, 0})
	b := append([]byte(nil), a...)
	if !SameFlow(a, b) {
		t.Fatal("identical headers are not one flow")
	}
	b[21] = 54
	if SameFlow(a, b) {
		t.Fatal("another port is the same flow")
	}
	if SameFlow(a, a[:10]) {
		t.Fatal("a short packet matched")
	}
}
