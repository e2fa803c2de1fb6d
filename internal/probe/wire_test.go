package probe

import (
	"bytes"
	"testing"
)

func TestMarshalParse(t *testing.T) {
	m := Message{Type: IPv6Answer, Nonce: 0x0102030405060708}
	b := m.Marshal()
	want := []byte{0x00, 'f', 'l', 'g', 'o', 'f', 'p', 4, 1, 2, 3, 4, 5, 6, 7, 8}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("Marshal = % x, want % x", b, want)
	}
	got, ok := Parse(b[:])
	if !ok || got != m {
		t.Fatalf("Parse = %+v %v, want %+v", got, ok, m)
	}
	for _, bad := range [][]byte{b[:15], append(b[:], 0), {0x45, 'f', 'l', 'g', 'o', 'f', 'p', 1, 0, 0, 0, 0, 0, 0, 0, 1}} {
		if _, ok := Parse(bad); ok {
			t.Errorf("Parse(% x) took it for a probe", bad)
		}
	}
}

// FuzzParse: probes come from the network; Parse never panics and what it
// takes marshals back to the same bytes.
func FuzzParse(f *testing.F) {
	b := Message{Type: FastPathAsk, Nonce: 7}.Marshal()
	f.Add(b[:])
	f.Add([]byte{0x45, 0, 0, 20})
	f.Fuzz(func(t *testing.T, d []byte) {
		m, ok := Parse(d)
		if !ok {
			return
		}
		if again := m.Marshal(); !bytes.Equal(again[:], d) {
			t.Fatalf("Parse(% x) = %+v marshals to % x", d, m, again)
		}
	})
}
