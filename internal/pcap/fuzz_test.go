package pcap

import (
	"bytes"
	"testing"
)

// FuzzUnwrap feeds arbitrary files to Unwrap: it must never panic, and
// whatever it writes must be a pcap holding as many packets as it reports.
func FuzzUnwrap(f *testing.F) {
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		st, err := Unwrap(bytes.NewReader(in), &out, 8285)
		if st.Packets+st.Skipped+st.Fragments+st.Malformed != st.Frames {
			t.Fatalf("stats do not add up: %+v", st)
		}
		if err != nil {
			return
		}
		if _, ps := readPcap(t, out.Bytes()); len(ps) != st.Packets {
			t.Fatalf("output holds %d packets, stats say %d", len(ps), st.Packets)
		}
	})
}

// FuzzDecapsulate checks the frame parser alone on every link type: the
// inner packet it returns always lies inside the frame.
func FuzzDecapsulate(f *testing.F) {
	f.Fuzz(func(t *testing.T, lt uint32, frame []byte, truncated bool) {
		off, end, orig, v := decapsulate(lt, frame, truncated, 8285)
		if v != verdictInner {
			return
		}
		if off < 0 || off > end || end > len(frame) || orig < end-off || off == end && orig == 0 {
			t.Fatalf("decapsulate(%d, %x, %v) = %d, %d, %d", lt, frame, truncated, off, end, orig)
		}
	})
}
