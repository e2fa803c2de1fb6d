package router

import (
	"bytes"
	"encoding/binary"
	"github.com/flannel-go/flannel-go/internal/inet"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// ipv4Packet builds a valid IPv4 packet with the given protocol, TTL,
// options and payload.
func ipv4Packet(t testing.TB, src, dst [4]byte, proto layers.IPProtocol, ttl uint8, opts int, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: ttl, Protocol: proto, SrcIP: net.IP(src[:]), DstIP: net.IP(dst[:]), Id: 0x1234}
	if opts > 0 {
		ip.Options = []layers.IPv4Option{{OptionType: 1}} // NOPs pad the header by 4 bytes each
		for range opts*4 - 1 {
			ip.Options = append(ip.Options, layers.IPv4Option{OptionType: 1})
		}
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, gopacket.Payload(payload))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestChecksumUpdateRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	h := make([]byte, 20)
	for range 100000 {
		for i := range h {
			h[i] = byte(rng.Uint32())
		}
		h[0] = 0x45
		h[8] = byte(2 + rng.IntN(254))
		binary.BigEndian.PutUint16(h[10:12], 0)
		binary.BigEndian.PutUint16(h[10:12], inet.Checksum(h))
		decrementTTL(h)
		got := binary.BigEndian.Uint16(h[10:12])
		binary.BigEndian.PutUint16(h[10:12], 0)
		if want := inet.Checksum(h); got != want {
			t.Fatalf("header %x: incremental checksum %#04x, full %#04x", h, got, want)
		}
	}
}

func TestDecrementTTLGopacket(t *testing.T) {
	p := ipv4Packet(t, [4]byte{198, 18, 32, 5}, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, []byte("hello"))
	decrementTTL(p)
	if p[8] != 63 {
		t.Fatalf("TTL %d, want 63", p[8])
	}
	if inet.Checksum(p[:20]) != 0 {
		t.Errorf("header checksum no longer valid")
	}
}

func TestParseIPv4(t *testing.T) {
	good := ipv4Packet(t, [4]byte{198, 18, 32, 5}, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 1, []byte("hello"))
	hlen, total, r := parseIPv4(good)
	if r != dropNone || hlen != 24 || total != len(good) {
		t.Fatalf("good packet: %d %d %v", hlen, total, r)
	}
	// Trailing bytes beyond the total length are allowed and cut off.
	if _, total, r := parseIPv4(append(bytes.Clone(good), 0, 0)); r != dropNone || total != len(good) {
		t.Errorf("padded packet: total %d reason %v", total, r)
	}
	mod := func(f func(p []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, tc := range map[string]struct {
		p    []byte
		want dropReason
	}{
		"empty":           {nil, dropMalformed},
		"short":           {good[:19], dropMalformed},
		"ipv6":            {mod(func(p []byte) []byte { p[0] = 0x60; return p }), dropNotIPv4},
		"version 0":       {mod(func(p []byte) []byte { p[0] = 0x05; return p }), dropNotIPv4},
		"ihl 4":           {mod(func(p []byte) []byte { p[0] = 0x44; return p }), dropMalformed},
		"ihl past end":    {mod(func(p []byte) []byte { p[0] = 0x4f; return p }), dropMalformed},
		"total too big":   {mod(func(p []byte) []byte { binary.BigEndian.PutUint16(p[2:], uint16(len(p)+1)); return p }), dropMalformed},
		"total below ihl": {mod(func(p []byte) []byte { binary.BigEndian.PutUint16(p[2:], 20); return p }), dropMalformed},
	} {
		if _, _, r := parseIPv4(tc.p); r != tc.want {
			t.Errorf("%s: reason %v, want %v", name, r, tc.want)
		}
	}
}

func TestBuildICMPError(t *testing.T) {
	src := [4]byte{198, 18, 32, 0}
	for _, tc := range []struct {
		name      string
		opts      int
		payload   int
		typ, code uint8
		ttl       uint8
	}{
		{"net unreachable", 0, 100, icmpTypeDestUnreachable, icmpCodeNetUnreachable, ttlNetUnreachable},
		{"with options", 10, 100, icmpTypeDestUnreachable, icmpCodeNetUnreachable, ttlNetUnreachable},
		{"short payload", 0, 3, icmpTypeDestUnreachable, icmpCodeNetUnreachable, ttlNetUnreachable},
		{"time exceeded", 2, 50, icmpTypeTimeExceeded, icmpCodeTTLExceeded, ttlTimeExceeded},
	} {
		payload := make([]byte, tc.payload)
		for i := range payload {
			payload[i] = byte(i + 1)
		}
		off := ipv4Packet(t, [4]byte{198, 18, 32, 5}, [4]byte{198, 18, 99, 5}, layers.IPProtocolUDP, 1, tc.opts, payload)
		hlen := int(off[0]&0xf) * 4
		out := make([]byte, icmpMaxLen)
		n := buildICMPError(out, off, hlen, src, tc.typ, tc.code, tc.ttl)
		quote := hlen + min(8, tc.payload)
		if n != 28+quote {
			t.Errorf("%s: length %d, want %d", tc.name, n, 28+quote)
		}
		pkt := gopacket.NewPacket(out[:n], layers.LayerTypeIPv4, gopacket.DecodeOptions{SkipDecodeRecovery: true})
		ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		icmp, _ := pkt.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
		if ip == nil || icmp == nil {
			t.Fatalf("%s: does not decode as IPv4/ICMPv4: %v", tc.name, pkt.ErrorLayer())
		}
		if ip.TTL != tc.ttl || ip.Protocol != layers.IPProtocolICMPv4 || !ip.SrcIP.Equal(net.IP(src[:])) ||
			!ip.DstIP.Equal(net.IPv4(198, 18, 32, 5)) || int(ip.Length) != n || ip.IHL != 5 || ip.Flags != 0 || ip.TOS != 0 {
			t.Errorf("%s: IP header %+v", tc.name, ip)
		}
		if icmp.TypeCode != layers.CreateICMPv4TypeCode(tc.typ, tc.code) || icmp.Id != 0 || icmp.Seq != 0 {
			t.Errorf("%s: ICMP %v id %d seq %d", tc.name, icmp.TypeCode, icmp.Id, icmp.Seq)
		}
		if !bytes.Equal(icmp.Payload, off[:quote]) {
			t.Errorf("%s: quote %x, want %x", tc.name, icmp.Payload, off[:quote])
		}
		// Verify both checksums independently: recompute with gopacket.
		ip2 := *ip
		icmp2 := *icmp
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, &ip2, &icmp2, gopacket.Payload(icmp.Payload)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), out[:n]) {
			t.Errorf("%s: gopacket re-serialisation differs (checksums?)\n got %x\nwant %x", tc.name, out[:n], buf.Bytes())
		}
	}
}

func TestMayReportError(t *testing.T) {
	s, d := [4]byte{198, 18, 32, 5}, [4]byte{198, 18, 99, 5}
	udp := ipv4Packet(t, s, d, layers.IPProtocolUDP, 64, 0, make([]byte, 8))
	frag := bytes.Clone(udp)
	binary.BigEndian.PutUint16(frag[6:8], 185) // offset 185*8
	firstFrag := bytes.Clone(udp)
	binary.BigEndian.PutUint16(firstFrag[6:8], 0x2000) // MF set, offset 0
	icmp := func(typ byte) []byte {
		return ipv4Packet(t, s, d, layers.IPProtocolICMPv4, 64, 0, []byte{typ, 0, 0, 0, 0, 0, 0, 0})
	}
	for name, tc := range map[string]struct {
		p    []byte
		want bool
	}{
		"udp":                {udp, true},
		"non-first fragment": {frag, false},
		"first fragment":     {firstFrag, true},
		"echo request":       {icmp(8), true},
		"echo reply":         {icmp(0), true},
		"dest unreachable":   {icmp(3), false},
		"source quench":      {icmp(4), false},
		"redirect":           {icmp(5), false},
		"time exceeded":      {icmp(11), false},
		"parameter problem":  {icmp(12), false},
		"icmp without type":  {ipv4Packet(t, s, d, layers.IPProtocolICMPv4, 64, 0, nil), false},
	} {
		if got := mayReportError(tc.p, 20); got != tc.want {
			t.Errorf("%s: %v, want %v", name, got, tc.want)
		}
	}
}

func TestLimiter(t *testing.T) {
	l := newLimiter(100, 10)
	n := 0
	for range 50 {
		if l.allow(0) {
			n++
		}
	}
	if n != 10 {
		t.Errorf("burst allowed %d, want 10", n)
	}
	if l.allow(5e6) { // 5 ms: half a token
		t.Error("allowed before a token accrued")
	}
	if !l.allow(10e6) || l.allow(10e6) {
		t.Error("want exactly one token after 10 ms")
	}
	n = 0
	for range 50 {
		if l.allow(3600e9) {
			n++
		}
	}
	if n != 10 {
		t.Errorf("after an idle hour allowed %d, want the burst of 10", n)
	}
}
