package udp

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FuzzParseCtl reads arbitrary control message buffers: never a panic and
// never a negative segment size.
func FuzzParseCtl(f *testing.F) {
	gro := make([]byte, inCtlLen)
	c := gro[:unix.CmsgLen(4)]
	binary.NativeEndian.PutUint64(c, uint64(unix.CmsgLen(4)))
	binary.NativeEndian.PutUint32(c[8:], unix.SOL_UDP)
	binary.NativeEndian.PutUint32(c[12:], unix.UDP_GRO)
	binary.NativeEndian.PutUint32(c[unix.CmsgLen(0):], 1400)
	f.Add(gro[:unix.CmsgSpace(4)])
	f.Add([]byte{255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		// The kernel's control buffer is aligned; so is this copy.
		buf := make([]uint64, (len(data)+7)/8+1)
		b := unsafeBytes(buf)[:len(data)]
		copy(b, data)
		seg, _ := parseCtl(b)
		if seg < 0 {
			t.Fatalf("segment size %d", seg)
		}
	})
}

func unsafeBytes(u []uint64) []byte { return unsafe.Slice((*byte)(unsafe.Pointer(&u[0])), 8*len(u)) }
