package router

import (
	"encoding/binary"
	"testing"
)

// hdr6 returns a 40-byte IPv6 header with next header nh and payload
// length plen, followed by payload.
func hdr6(nh uint8, plen int, payload ...byte) []byte {
	p := make([]byte, 40, 40+len(payload))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:6], uint16(plen))
	p[6], p[7] = nh, 64
	copy(p[8:24], []byte{0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 5})
	copy(p[24:40], []byte{0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0x63, 0, 0, 0, 0, 0, 0, 0, 5})
	return append(p, payload...)
}

func TestParseIPv6(t *testing.T) {
	for name, tc := range map[string]struct {
		p     []byte
		total int
		want  dropReason
	}{
		"udp":          {hdr6(17, 4, 1, 2, 3, 4), 44, dropNone},
		"padded":       {hdr6(17, 2, 1, 2, 3, 4), 42, dropNone},
		"empty":        {hdr6(59, 0), 40, dropNone},
		"jumbogram":    {hdr6(0, 0, 194, 4, 0, 0, 0, 0, 0, 0), 0, dropMalformed},
		"short":        {hdr6(17, 0)[:39], 0, dropMalformed},
		"length past":  {hdr6(17, 5, 1, 2, 3, 4), 0, dropMalformed},
		"ipv4 version": {append([]byte{0x45}, make([]byte, 39)...), 0, dropNotIPv6},
	} {
		total, r := parseIPv6(tc.p)
		if r != tc.want || (r == dropNone && total != tc.total) {
			t.Errorf("%s: total %d reason %d, want %d %d", name, total, r, tc.total, tc.want)
		}
	}
}

func TestMayReportError6(t *testing.T) {
	hbh := func(next uint8, rest ...byte) []byte { return append([]byte{next, 0, 0, 0, 0, 0, 0, 0}, rest...) }
	frag := func(next uint8, offset uint16, rest ...byte) []byte {
		b := []byte{next, 0, 0, 0, 0, 0, 0, 1}
		binary.BigEndian.PutUint16(b[2:], offset<<3)
		return append(b, rest...)
	}
	mcast := hdr6(17, 0)
	mcast[24] = 0xff
	unspecSrc := hdr6(17, 0)
	clear(unspecSrc[8:24])
	for name, tc := range map[string]struct {
		p    []byte
		want bool
	}{
		"udp":                    {hdr6(17, 8, make([]byte, 8)...), true},
		"echo request":           {hdr6(58, 8, 128, 0, 0, 0, 0, 0, 0, 0), true},
		"unreachable":            {hdr6(58, 8, 1, 0, 0, 0, 0, 0, 0, 0), false},
		"time exceeded past hbh": {hdr6(0, 16, hbh(58, 3, 0, 0, 0, 0, 0, 0, 0)...), false},
		"echo past hbh":          {hdr6(0, 16, hbh(58, 128, 0, 0, 0, 0, 0, 0, 0)...), true},
		"icmpv6 type cut off":    {hdr6(58, 0), false},
		"first fragment error":   {hdr6(44, 16, frag(58, 0, 1, 0, 0, 0, 0, 0, 0, 0)...), false},
		"later fragment":         {hdr6(44, 16, frag(17, 100, make([]byte, 8)...)...), false},
		"ext header cut off":     {hdr6(0, 4, 17, 0, 0, 0), false},
		"to multicast":           {mcast, false},
		"from unspecified":       {unspecSrc, false},
	} {
		if got := mayReportError6(tc.p); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

// The checksum is checked independently of inet: a plain RFC 1071 sum
// over the pseudo-header and the message.
func TestBuildICMPv6ErrorChecksum(t *testing.T) {
	for _, size := range []int{0, 8, 100, 1232, 1233, 5000} {
		off := hdr6(17, size, make([]byte, size)...)
		for i := range off[40:] {
			off[40+i] = byte(i * 7)
		}
		out := make([]byte, icmp6MaxLen)
		var src [16]byte
		src[0], src[15] = 0x20, 1
		n := buildICMPv6Error(out, off, src, 3, 0)
		if want := min(1280, 48+len(off)); n != want {
			t.Fatalf("offender of %d bytes: error of %d bytes, want %d", len(off), n, want)
		}
		p := out[:n]
		var sum uint32
		add := func(b []byte) {
			for i := 0; i+1 < len(b); i += 2 {
				sum += uint32(b[i])<<8 | uint32(b[i+1])
			}
			if len(b)%2 == 1 {
				sum += uint32(b[len(b)-1]) << 8
			}
		}
		add(p[8:40])
		l := n - 40
		add([]byte{byte(l >> 24), byte(l >> 16), byte(l >> 8), byte(l), 0, 0, 0, 58})
		add(p[40:])
		for sum>>16 != 0 {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			t.Errorf("offender of %d bytes: checksum does not verify (sum %#x)", len(off), sum)
		}
		if int(binary.BigEndian.Uint16(p[4:6])) != l || p[6] != 58 || p[40] != 3 || string(p[24:40]) != string(off[8:24]) {
			t.Errorf("header wrong: %x", p[:48])
		}
	}
}
