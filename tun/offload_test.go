package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/flannel-go/flannel-go/internal/inet"
	"net"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// pkt describes a TCP or UDP packet for gopacket to build, so that every
// expected header byte and checksum comes from an implementation other
// than the one under test.
type pkt struct {
	v6           bool // IPv6, src and dst mapped into 2001:db8::/96
	ext          bool // IPv6: a destination options header before L4
	flow         uint32
	udp          bool
	src, dst     [4]byte
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	win          uint16
	opts         []layers.TCPOption
	id           uint16
	ttl, tos     uint8
	df           bool
	ipOpts       bool
	payload      []byte
}

// addr6 maps a test IPv4 address into 2001:db8::/96.
func addr6(a [4]byte) net.IP {
	ip := net.ParseIP("2001:db8::")
	copy(ip[12:], a[:])
	return ip
}

// iphl is the IP header length of a packet built from p (extension
// headers included).
func (p pkt) iphl() int {
	switch {
	case p.v6 && p.ext:
		return ipv6Len + 8
	case p.v6:
		return ipv6Len
	case p.ipOpts:
		return ipv4Len + 4
	}
	return ipv4Len
}

// v6 returns p as an IPv6 packet of the same shape.
func v6(p pkt) pkt { p.v6 = true; return p }

var (
	addrA = [4]byte{198, 18, 5, 7}
	addrB = [4]byte{198, 18, 32, 5}
)

func tcpFlow(seq uint32, id uint16, payload []byte) pkt {
	return pkt{src: addrA, dst: addrB, sport: 40000, dport: 5201, seq: seq, ack: 777, flags: tcpFlagACK,
		win: 501, id: id, ttl: 63, df: true, payload: payload}
}

func udpFlow(id uint16, payload []byte) pkt {
	return pkt{udp: true, src: addrA, dst: addrB, sport: 40000, dport: 5201, id: id, ttl: 63, payload: payload}
}

func (p pkt) build(t testing.TB) []byte {
	t.Helper()
	proto := layers.IPProtocolTCP
	if p.udp {
		proto = layers.IPProtocolUDP
	}
	var ip gopacket.NetworkLayer
	var l3 []gopacket.SerializableLayer
	if p.v6 {
		ip6 := &layers.IPv6{Version: 6, TrafficClass: p.tos, FlowLabel: p.flow, HopLimit: p.ttl, NextHeader: proto,
			SrcIP: addr6(p.src), DstIP: addr6(p.dst)}
		ip, l3 = ip6, []gopacket.SerializableLayer{ip6}
		if p.ext {
			// PadN filling the 8 bytes: no option the kernel acts on.
			d := &layers.IPv6Destination{Options: []*layers.IPv6DestinationOption{{OptionType: 1, OptionLength: 4, OptionData: make([]byte, 4)}}}
			d.NextHeader = proto
			ip6.NextHeader = layers.IPProtocolIPv6Destination
			l3 = append(l3, d)
		}
	} else {
		ip4 := &layers.IPv4{Version: 4, TOS: p.tos, Id: p.id, TTL: p.ttl, SrcIP: net.IP(p.src[:]), DstIP: net.IP(p.dst[:]), Protocol: proto}
		if p.df {
			ip4.Flags = layers.IPv4DontFragment
		}
		if p.ipOpts {
			ip4.Options = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 0}}
		}
		ip, l3 = ip4, []gopacket.SerializableLayer{ip4}
	}
	var l4 gopacket.SerializableLayer
	if p.udp {
		u := &layers.UDP{SrcPort: layers.UDPPort(p.sport), DstPort: layers.UDPPort(p.dport)}
		u.SetNetworkLayerForChecksum(ip)
		l4 = u
	} else {
		tc := &layers.TCP{SrcPort: layers.TCPPort(p.sport), DstPort: layers.TCPPort(p.dport), Seq: p.seq, Ack: p.ack,
			Window: p.win, Options: p.opts,
			FIN: p.flags&tcpFlagFIN != 0, SYN: p.flags&tcpFlagSYN != 0, RST: p.flags&tcpFlagRST != 0,
			PSH: p.flags&tcpFlagPSH != 0, ACK: p.flags&tcpFlagACK != 0, URG: p.flags&tcpFlagURG != 0,
			ECE: p.flags&tcpFlagECE != 0, CWR: p.flags&tcpFlagCWR != 0}
		tc.SetNetworkLayerForChecksum(ip)
		l4 = tc
	}
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		append(l3, l4, gopacket.Payload(p.payload))...); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(b.Bytes())
}

// hdrLen is the IP+L4 header length of a packet built from p.
func (p pkt) hdrLen(t testing.TB) int {
	q := p
	q.payload = nil
	return len(q.build(t))
}

func payload(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// bufsFor makes n buffers of Headroom+65535 bytes with p at Headroom of
// the first, after its virtio-net header.
func bufsFor(n int, h vnetHdr, p []byte) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65535)
	}
	h.encode(bufs[0][Headroom-vnetHdrLen:])
	copy(bufs[0][Headroom:], p)
	return bufs
}

func TestSplitGSO(t *testing.T) {
	ts := []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 1, 2, 0, 0, 3, 4}}}
	type tc struct {
		name  string
		super pkt
		gso   uint8
		mss   int
		want  []pkt // nil: the input comes back unsplit
	}
	var tcs []tc
	// TCP: FIN and PSH only on the last segment, CWR only on the first,
	// IP ID and sequence number counting up, options on every segment.
	{
		s := tcpFlow(0xfffff000, 0xfffe, payload(3*1000+123, 1)) // seq and ID wrap
		s.flags = tcpFlagACK | tcpFlagPSH | tcpFlagFIN | tcpFlagCWR | tcpFlagECE
		s.opts = ts
		s.tos = 0x02
		var want []pkt
		for i := range 4 {
			seg := s
			seg.seq = s.seq + uint32(i*1000)
			seg.id = s.id + uint16(i)
			seg.payload = s.payload[i*1000 : min((i+1)*1000, len(s.payload))]
			seg.flags = tcpFlagACK | tcpFlagECE
			if i == 0 {
				seg.flags |= tcpFlagCWR
			}
			if i == 3 {
				seg.flags |= tcpFlagPSH | tcpFlagFIN
			}
			want = append(want, seg)
		}
		tcs = append(tcs, tc{"tcp4 with options, flags and wrap", s, gsoTCPv4 | gsoECN, 1000, want})
	}
	{
		s := tcpFlow(1, 7, payload(45*1420, 2))
		var want []pkt
		for i := range 45 {
			seg := s
			seg.seq, seg.id, seg.payload = 1+uint32(i*1420), 7+uint16(i), s.payload[i*1420:(i+1)*1420]
			want = append(want, seg)
		}
		tcs = append(tcs, tc{"tcp4 64K of full segments", s, gsoTCPv4, 1420, want})
	}
	{
		s := tcpFlow(1, 7, payload(500, 3))
		tcs = append(tcs, tc{"tcp4 one short segment", s, gsoTCPv4, 1420, []pkt{s}})
	}
	{
		s := udpFlow(100, payload(2*1200+1, 4))
		var want []pkt
		for i := range 3 {
			seg := s
			seg.id = 100 + uint16(i)
			seg.payload = s.payload[i*1200 : min((i+1)*1200, len(s.payload))]
			want = append(want, seg)
		}
		tcs = append(tcs, tc{"udp4 (USO)", s, gsoUDPL4, 1200, want})
	}
	// IPv6: no IP ID, the payload length per segment, the flow label,
	// traffic class and hop limit copied, checksums over the IPv6
	// pseudo-header.
	for _, c := range tcs[:4] {
		c.name = strings.Replace(c.name, "4", "6", 1)
		c.super = v6(c.super)
		c.super.flow, c.super.ttl = 0xabcde, 17
		if !c.super.udp {
			c.gso = gsoTCPv6 | c.gso&gsoECN
		}
		var want []pkt
		for _, w := range c.want {
			w = v6(w)
			w.flow, w.ttl = 0xabcde, 17
			want = append(want, w)
		}
		c.want = want
		tcs = append(tcs, c)
	}
	for _, c := range tcs {
		for _, inPlace := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/in_place=%v", c.name, inPlace), func(t *testing.T) {
				testSplitGSO(t, c.super, c.gso, c.mss, c.want, inPlace)
			})
		}
	}
}

// testSplitGSO splits super, either where Read puts it (bufs[0]) or from a
// spare buffer, which a refusal for too few buffers must leave unchanged.
func testSplitGSO(t *testing.T, super pkt, gso uint8, mss int, want []pkt, inPlace bool) {
	in := super.build(t)
	hl := super.hdrLen(t)
	iphl := super.iphl()
	h := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gso, hdrLen: uint16(hl), gsoSize: uint16(mss), csumStart: uint16(iphl)}
	// The kernel hands over a partial checksum; the split must not care.
	at := iphl + 16
	if super.udp {
		at = iphl + 6
	}
	in[at], in[at+1] = 0xde, 0xad
	bufs := bufsFor(64, h, in)
	sizes := make([]int, 64)
	src := bufs[0][Headroom : Headroom+len(in)]
	if !inPlace {
		src = bytes.Clone(src)
		for i := range bufs[0] {
			bufs[0][i] = 0xee
		}
		if len(want) > 1 {
			before := bytes.Clone(src)
			if _, err := splitGSO(&h, src, bufs[:len(want)-1], sizes, Headroom); !errors.Is(err, errTooManySegs) {
				t.Fatalf("split into %d buffers: %v, want errTooManySegs", len(want)-1, err)
			}
			if !bytes.Equal(src, before) {
				t.Fatal("a refused split changed the packet")
			}
		}
	}
	n, err := splitGSO(&h, src, bufs, sizes, Headroom)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(want) {
		t.Fatalf("%d segments, want %d", n, len(want))
	}
	for i, w := range want {
		if d := diff(bufs[i][Headroom:Headroom+sizes[i]], w.build(t)); d != "" {
			t.Errorf("segment %d: %s", i, d)
		}
	}
}

// A CHECKSUM_PARTIAL packet is completed, of either family; IPv6
// extension headers are passed whole, the checksum field found where the
// kernel's csum_start says, past them.
func TestSplitCompletesChecksum(t *testing.T) {
	tcp, udp := tcpFlow(5, 6, payload(333, 5)), udpFlow(9, payload(77, 6))
	ext := func(p pkt) pkt { p = v6(p); p.ext = true; return p }
	for _, p := range []pkt{tcp, udp, v6(tcp), v6(udp), ext(tcp), ext(udp)} {
		want := p.build(t)
		in := bytes.Clone(want)
		// CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
		iphl := p.iphl()
		at, l4 := iphl+16, len(in)-iphl
		proto := uint8(protoTCP)
		if p.udp {
			at, proto = iphl+6, protoUDP
		}
		binary.BigEndian.PutUint16(in[at:], inet.Fold(testPseudoSum(in, proto, l4)))
		h := vnetHdr{flags: vnetFlagNeedsCsum, csumStart: uint16(iphl), csumOffset: uint16(at - iphl)}
		bufs := bufsFor(1, h, in)
		sizes := []int{0}
		n, err := splitGSO(&h, bufs[0][Headroom:Headroom+len(in)], bufs, sizes, Headroom)
		if err != nil || n != 1 {
			t.Fatalf("n %d err %v", n, err)
		}
		if d := diff(bufs[0][Headroom:Headroom+sizes[0]], want); d != "" {
			t.Errorf("udp=%v v6=%v ext=%v: %s", p.udp, p.v6, p.ext, d)
		}
	}
}

// testPseudoSum is the pseudo-header sum of either family, built from the
// RFC's field layout rather than pseudoSum.
func testPseudoSum(p []byte, proto uint8, l int) uint64 {
	if p[0]>>4 == 4 {
		return inet.PseudoSum(p, proto, l)
	}
	ph := make([]byte, 40)
	copy(ph, p[8:40])
	binary.BigEndian.PutUint32(ph[32:], uint32(l))
	ph[39] = proto
	return inet.Sum16(ph, 0)
}

func TestSplitErrors(t *testing.T) {
	good := tcpFlow(1, 1, payload(4000, 7)).build(t)
	udp := udpFlow(1, payload(100, 8)).build(t)
	v5 := bytes.Clone(good)
	v5[0] = 0x55
	good6 := v6(tcpFlow(1, 1, payload(4000, 7))).build(t)
	udp6 := v6(udpFlow(1, payload(100, 8))).build(t)
	ext := v6(tcpFlow(1, 1, payload(4000, 7)))
	ext.ext = true
	ext6 := ext.build(t)
	for _, c := range []struct {
		name  string
		h     vnetHdr
		p     []byte
		nbufs int
		ok    bool
	}{
		{"too many segments", vnetHdr{gsoType: gsoTCPv4, gsoSize: 100}, good, 8, false},
		{"gso size 0", vnetHdr{gsoType: gsoTCPv4}, good, 64, false},
		{"tcp gso on udp", vnetHdr{gsoType: gsoTCPv4, gsoSize: 10}, udp, 64, false},
		{"udp gso on tcp", vnetHdr{gsoType: gsoUDPL4, gsoSize: 1000}, good, 64, false},
		{"ufo", vnetHdr{gsoType: 3, gsoSize: 10}, udp, 64, false},
		{"truncated header", vnetHdr{gsoType: gsoTCPv4, gsoSize: 10}, good[:30], 64, false},
		{"csum outside", vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 4039, csumOffset: 0}, good, 1, false},
		{"csum offset outside", vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 65000}, good, 1, false},
		{"ipv5 stays whole", vnetHdr{gsoType: gsoTCPv6, gsoSize: 10}, v5, 1, true},
		{"plain", vnetHdr{}, good, 1, true},
		{"tcp6 gso on ipv4", vnetHdr{gsoType: gsoTCPv6, gsoSize: 1000}, good, 64, false},
		{"tcp4 gso on ipv6", vnetHdr{gsoType: gsoTCPv4, gsoSize: 1000}, good6, 64, false},
		{"tcp6 gso on udp6", vnetHdr{gsoType: gsoTCPv6, gsoSize: 10}, udp6, 64, false},
		{"udp gso on tcp6", vnetHdr{gsoType: gsoUDPL4, gsoSize: 1000}, good6, 64, false},
		{"ipv6 truncated header", vnetHdr{gsoType: gsoTCPv6, gsoSize: 10}, good6[:39], 64, false},
		{"ipv6 truncated tcp header", vnetHdr{gsoType: gsoTCPv6, gsoSize: 10}, good6[:50], 64, false},
		{"ipv6 extension headers", vnetHdr{gsoType: gsoTCPv6, gsoSize: 1000}, ext6, 64, false},
		{"ipv6 extension headers, no gso", vnetHdr{}, ext6, 1, true},
		{"ipv6 plain", vnetHdr{}, good6, 1, true},
	} {
		bufs := bufsFor(c.nbufs, c.h, c.p)
		sizes := make([]int, c.nbufs)
		n, err := splitGSO(&c.h, bufs[0][Headroom:Headroom+len(c.p)], bufs, sizes, Headroom)
		if c.ok != (err == nil) || (c.ok && (n != 1 || sizes[0] != len(c.p))) {
			t.Errorf("%s: n %d err %v", c.name, n, err)
		}
	}
	// An IPv6 super-packet with extension headers is refused as such,
	// and left as it was.
	bufs6 := bufsFor(64, vnetHdr{}, ext6)
	if _, err := splitGSO(&vnetHdr{gsoType: gsoTCPv6, gsoSize: 1000}, bufs6[0][Headroom:Headroom+len(ext6)], bufs6, make([]int, 64), Headroom); !errors.Is(err, errExtHdrGSO) {
		t.Errorf("extension headers: %v, want errExtHdrGSO", err)
	}
	if !bytes.Equal(bufs6[0][Headroom:Headroom+len(ext6)], ext6) {
		t.Error("a refused IPv6 super-packet was changed")
	}
	// A buffer too small for a segment is an error, not a panic.
	bufs := bufsFor(8, vnetHdr{}, good)
	bufs[2] = bufs[2][:Headroom+100]
	if _, err := splitGSO(&vnetHdr{gsoType: gsoTCPv4, gsoSize: 1000}, bufs[0][Headroom:Headroom+len(good)], bufs, make([]int, 8), Headroom); err == nil {
		t.Error("short buffer: no error")
	}
}

// diff describes where got and want differ, or returns "".
func diff(got, want []byte) string {
	if bytes.Equal(got, want) {
		return ""
	}
	for i := range min(len(got), len(want)) {
		if got[i] != want[i] {
			lo, hi := max(0, i-4), min(i+8, len(got), len(want))
			return fmt.Sprintf("byte %d differs (lengths %d, %d): got ..%x.. want ..%x..", i, len(got), len(want), got[lo:hi], want[lo:hi])
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(got), len(want))
}

// write is one TUN write as the queue would make it.
type write struct {
	h   vnetHdr
	pkt []byte
}

// coalesce runs the queue's grouping and assembles the writes.
func coalesce(g *groTable, pkts [][]byte) []write {
	bufs := make([][]byte, len(pkts))
	for i, p := range pkts {
		bufs[i] = append(make([]byte, Headroom), p...)
	}
	g.group(bufs, Headroom)
	var out []write
	for i := range g.items {
		it := &g.items[i]
		var w write
		finish(it, bufs, Headroom, !g.verify, &w.h)
		head := bufs[it.head][Headroom:]
		if it.count == 1 {
			w.pkt = bytes.Clone(head)
		} else {
			w.pkt = bytes.Clone(head[:it.hl+it.gsoSize])
			for m := g.next[it.head]; ; m = g.next[m] {
				w.pkt = append(w.pkt, bufs[m][Headroom+int(it.hl):]...)
				if m == it.tail {
					break
				}
			}
		}
		out = append(out, w)
	}
	return out
}

// super builds the super-packet the kernel should see for members: the
// first member's headers with the summed length and the last one's PSH,
// with the L4 checksum left partial as NEEDS_CSUM wants.
func super(t *testing.T, members []pkt) []byte {
	s := members[0]
	s.payload = nil
	for _, m := range members {
		s.payload = append(s.payload, m.payload...)
	}
	s.flags |= members[len(members)-1].flags & tcpFlagPSH
	b := s.build(t)
	iphl := s.iphl()
	at, proto := iphl+16, uint8(protoTCP)
	if s.udp {
		at, proto = iphl+6, protoUDP
	}
	binary.BigEndian.PutUint16(b[at:], inet.Fold(testPseudoSum(b, proto, len(b)-iphl)))
	return b
}

func TestCoalesce(t *testing.T) {
	full := func(i int) []byte { return payload(1000, byte(i)) }
	seg := func(i int) pkt { return tcpFlow(1000+uint32(i*1000), 50+uint16(i), full(i)) }
	psh := seg(2)
	psh.flags |= tcpFlagPSH
	psh1 := seg(1)
	psh1.flags |= tcpFlagPSH
	short := seg(2)
	short.payload = payload(10, 9)
	after := seg(3)
	after.seq = short.seq + 10
	otherFlow := func(p pkt) pkt { p.sport = 40001; return p }
	with := func(p pkt, f func(*pkt)) pkt { f(&p); return p }
	ts := []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}}, {OptionType: 1}, {OptionType: 1}}
	ts2 := []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 9, 0, 0, 0, 2}}, {OptionType: 1}, {OptionType: 1}}
	u := func(i int, n int) pkt { return udpFlow(300+uint16(i), payload(n, byte(i))) }

	// groups lists the expected writes: each a list of input indices.
	type tc struct {
		name   string
		in     []pkt
		groups [][]int
		noUDP  bool
	}
	for _, c := range []tc{
		{"three in order, PSH last", []pkt{seg(0), seg(1), psh}, [][]int{{0, 1, 2}}, false},
		{"PSH ends the group", []pkt{seg(0), psh1, seg(2)}, [][]int{{0, 1}, {2}}, false},
		{"short segment ends the group", []pkt{seg(0), seg(1), short, after}, [][]int{{0, 1, 2}, {3}}, false},
		{"larger segment starts a new group", []pkt{short, seg(1)}, [][]int{{0}, {1}}, false},
		{"sequence gap", []pkt{seg(0), seg(2)}, [][]int{{0}, {1}}, false},
		{"two flows interleaved", []pkt{seg(0), otherFlow(seg(0)), seg(1), otherFlow(seg(1))}, [][]int{{0, 2}, {1, 3}}, false},
		{"TTL differs", []pkt{seg(0), with(seg(1), func(p *pkt) { p.ttl = 62 })}, [][]int{{0}, {1}}, false},
		{"TOS differs", []pkt{seg(0), with(seg(1), func(p *pkt) { p.tos = 4 })}, [][]int{{0}, {1}}, false},
		{"DF differs", []pkt{seg(0), with(seg(1), func(p *pkt) { p.df = false })}, [][]int{{0}, {1}}, false},
		{"IP ID not consecutive", []pkt{seg(0), with(seg(1), func(p *pkt) { p.id += 5 })}, [][]int{{0}, {1}}, false},
		{"ACK number differs", []pkt{seg(0), with(seg(1), func(p *pkt) { p.ack++ })}, [][]int{{0}, {1}}, false},
		{"same options", []pkt{with(seg(0), func(p *pkt) { p.opts = ts }), with(seg(1), func(p *pkt) { p.opts = ts })}, [][]int{{0, 1}}, false},
		{"options differ", []pkt{with(seg(0), func(p *pkt) { p.opts = ts }), with(seg(1), func(p *pkt) { p.opts = ts2 })}, [][]int{{0}, {1}}, false},
		{"IP options", []pkt{with(seg(0), func(p *pkt) { p.ipOpts = true }), with(seg(1), func(p *pkt) { p.ipOpts = true })}, [][]int{{0}, {1}}, false},
		{"CWR on the head only", []pkt{with(seg(0), func(p *pkt) { p.flags |= tcpFlagCWR }), seg(1), with(seg(2), func(p *pkt) { p.flags |= tcpFlagCWR })}, [][]int{{0, 1}, {2}}, false},
		{"ECE must match", []pkt{seg(0), with(seg(1), func(p *pkt) { p.flags |= tcpFlagECE })}, [][]int{{0}, {1}}, false},
		{"FIN is not coalesced and keeps order", []pkt{seg(0), with(seg(1), func(p *pkt) { p.flags |= tcpFlagFIN }), seg(2)}, [][]int{{0}, {1}, {2}}, false},
		{"pure ACK", []pkt{with(seg(0), func(p *pkt) { p.payload = nil }), seg(0)}, [][]int{{0}, {1}}, false},
		{"UDP train", []pkt{u(0, 1200), u(1, 1200), u(2, 5)}, [][]int{{0, 1, 2}}, false},
		{"UDP without USO", []pkt{u(0, 1200), u(1, 1200)}, [][]int{{0}, {1}}, true},
		{"UDP larger second", []pkt{u(0, 100), u(1, 1200)}, [][]int{{0}, {1}}, false},
	} {
		t.Run(c.name, func(t *testing.T) { checkCoalesce(t, &groTable{tcp: true, udp: !c.noUDP}, c.in, c.groups) })
	}
}

// checkCoalesce coalesces the packets built from pkts with g and checks
// the writes against groups, each a list of input indices: a single
// unchanged with DATA_VALID, a group as the super-packet of its members,
// which the kernel's segmentation (splitGSO) turns back into them.
func checkCoalesce(t *testing.T, g *groTable, pkts []pkt, groups [][]int) {
	t.Helper()
	var in [][]byte
	for _, p := range pkts {
		in = append(in, p.build(t))
	}
	out := coalesce(g, in)
	if len(out) != len(groups) {
		t.Fatalf("%d writes, want %d", len(out), len(groups))
	}
	for i, grp := range groups {
		w := out[i]
		if len(grp) == 1 {
			if d := diff(w.pkt, in[grp[0]]); d != "" || w.h != (vnetHdr{flags: vnetFlagDataValid}) {
				t.Errorf("write %d: %+v %s; want packet %d unchanged with DATA_VALID", i, w.h, d, grp[0])
			}
			continue
		}
		var members []pkt
		for _, k := range grp {
			members = append(members, pkts[k])
		}
		want := super(t, members)
		hl := pkts[grp[0]].hdrLen(t)
		iphl := pkts[grp[0]].iphl()
		wh := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: uint16(hl),
			gsoSize: uint16(len(members[0].payload)), csumStart: uint16(iphl), csumOffset: 16}
		if members[0].v6 {
			wh.gsoType = gsoTCPv6
		}
		if members[0].udp {
			wh.gsoType, wh.csumOffset = gsoUDPL4, 6
		}
		if members[0].flags&tcpFlagCWR != 0 {
			wh.gsoType |= gsoECN
		}
		if w.h != wh {
			t.Errorf("write %d header %+v, want %+v", i, w.h, wh)
		}
		if d := diff(w.pkt, want); d != "" {
			t.Errorf("write %d: %s", i, d)
		}
		// What the kernel will do: segment it back.
		bufs := bufsFor(64, w.h, w.pkt)
		sizes := make([]int, 64)
		n, err := splitGSO(&w.h, bufs[0][Headroom:Headroom+len(w.pkt)], bufs, sizes, Headroom)
		if err != nil || n != len(grp) {
			t.Fatalf("re-split: %d, %v", n, err)
		}
		for j, k := range grp {
			if d := diff(bufs[j][Headroom:Headroom+sizes[j]], in[k]); d != "" {
				t.Errorf("re-split segment %d: %s", j, d)
			}
		}
	}
}

// IPv6 coalesces as the kernel's GRO does: same addresses, ports and flow
// label (another label is another flow), same traffic class and hop
// limit; no IP ID to follow. Packets with extension headers pass whole and
// keep their flow's order, and the families never merge.
func TestCoalesceIPv6(t *testing.T) {
	seg := func(i int) pkt { return v6(tcpFlow(1000+uint32(i*1000), 50+uint16(i), payload(1000, byte(i)))) }
	with := func(p pkt, f func(*pkt)) pkt { f(&p); return p }
	psh := with(seg(2), func(p *pkt) { p.flags |= tcpFlagPSH })
	ext := func(p pkt) pkt { p.ext = true; return p }
	u := func(i, n int) pkt { return v6(udpFlow(300+uint16(i), payload(n, byte(i)))) }
	v4 := func(p pkt) pkt { p.v6 = false; return p }
	ts := []layers.TCPOption{{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}}, {OptionType: 1}, {OptionType: 1}}
	for _, c := range []struct {
		name   string
		in     []pkt
		groups [][]int
	}{
		{"three in order, PSH last", []pkt{seg(0), seg(1), psh}, [][]int{{0, 1, 2}}},
		{"IP ID plays no part", []pkt{seg(0), with(seg(1), func(p *pkt) { p.id += 9 })}, [][]int{{0, 1}}},
		{"same flow label", []pkt{with(seg(0), func(p *pkt) { p.flow = 7 }), with(seg(1), func(p *pkt) { p.flow = 7 })}, [][]int{{0, 1}}},
		{"flow label differs: two flows", []pkt{seg(0), with(seg(1), func(p *pkt) { p.flow = 7 }), seg(1)}, [][]int{{0, 2}, {1}}},
		{"traffic class differs", []pkt{seg(0), with(seg(1), func(p *pkt) { p.tos = 4 })}, [][]int{{0}, {1}}},
		{"hop limit differs", []pkt{seg(0), with(seg(1), func(p *pkt) { p.ttl = 62 })}, [][]int{{0}, {1}}},
		{"sequence gap", []pkt{seg(0), seg(2)}, [][]int{{0}, {1}}},
		{"options", []pkt{with(seg(0), func(p *pkt) { p.opts = ts }), with(seg(1), func(p *pkt) { p.opts = ts })}, [][]int{{0, 1}}},
		{"CWR on the head only", []pkt{with(seg(0), func(p *pkt) { p.flags |= tcpFlagCWR }), seg(1)}, [][]int{{0, 1}}},
		{"FIN is not coalesced", []pkt{seg(0), with(seg(1), func(p *pkt) { p.flags |= tcpFlagFIN }), seg(2)}, [][]int{{0}, {1}, {2}}},
		{"extension headers pass whole, in order", []pkt{seg(0), ext(seg(1)), seg(2), ext(seg(3)), ext(seg(4))}, [][]int{{0}, {1}, {2}, {3}, {4}}},
		{"extension headers of another pair", []pkt{seg(0), with(ext(seg(1)), func(p *pkt) { p.dst[3]++ }), seg(1)}, [][]int{{0, 2}, {1}}},
		{"families never merge", []pkt{seg(0), v4(seg(1)), seg(1), v4(seg(2))}, [][]int{{0, 2}, {1, 3}}},
		{"v4 and v6 of one shape", []pkt{v4(seg(0)), seg(0), v4(seg(1)), seg(1)}, [][]int{{0, 2}, {1, 3}}},
		{"UDP train", []pkt{u(0, 1200), u(1, 1200), u(2, 5)}, [][]int{{0, 1, 2}}},
		{"UDP with extension headers", []pkt{u(0, 1200), ext(u(1, 1200)), u(2, 1200)}, [][]int{{0}, {1}, {2}}},
	} {
		t.Run(c.name, func(t *testing.T) { checkCoalesce(t, &groTable{tcp: true, udp: true}, c.in, c.groups) })
	}
	// A payload length that disagrees with the packet's (padding, or a
	// jumbogram's 0) is never merged.
	g := &groTable{tcp: true, udp: true}
	a, b := seg(0).build(t), seg(1).build(t)
	binary.BigEndian.PutUint16(b[4:], 0)
	if out := coalesce(g, [][]byte{a, b}); len(out) != 2 || !bytes.Equal(out[1].pkt, b) {
		t.Errorf("payload length 0 merged: %d writes", len(out))
	}
}

func TestCoalesceLimits(t *testing.T) {
	g := &groTable{tcp: true}
	var in [][]byte
	for i := range 70 {
		in = append(in, tcpFlow(uint32(i*100), uint16(i), payload(100, byte(i))).build(t))
	}
	out := coalesce(g, in)
	if len(out) != 2 || out[0].h.gsoSize != 100 || len(out[0].pkt) != 40+64*100 || len(out[1].pkt) != 40+6*100 {
		t.Errorf("70 segments: %d writes, want 64 + 6", len(out))
	}
	in = in[:0]
	for i := range 50 {
		in = append(in, tcpFlow(uint32(i*1460), uint16(i), payload(1460, byte(i))).build(t))
	}
	out = coalesce(g, in)
	for _, w := range out {
		if len(w.pkt) > 65535 {
			t.Errorf("super-packet of %d bytes", len(w.pkt))
		}
	}
	if len(out) != 2 || len(out[0].pkt) != 40+44*1460 {
		t.Errorf("50 x 1460: %d writes, first %d bytes; want 44 segments then 6", len(out), len(out[0].pkt))
	}
	// A fragment is never merged.
	frag := tcpFlow(0, 0, payload(100, 1)).build(t)
	frag[6] |= 0x20
	if out := coalesce(g, [][]byte{frag, frag}); len(out) != 2 {
		t.Errorf("fragments merged: %d writes", len(out))
	}
}

func TestCoalesceVerify(t *testing.T) {
	g := &groTable{tcp: true, udp: true, verify: true}
	a := tcpFlow(0, 0, payload(100, 1)).build(t)
	bad := tcpFlow(100, 1, payload(100, 2)).build(t)
	bad[len(bad)-1] ^= 0xff
	c := tcpFlow(200, 2, payload(100, 3)).build(t)
	out := coalesce(g, [][]byte{a, bad, c})
	if len(out) != 3 {
		t.Fatalf("%d writes, want 3 (the bad packet splits the train)", len(out))
	}
	for i, w := range out {
		if w.h.flags != 0 || w.h.gsoType != 0 {
			t.Errorf("write %d: %+v; a verified single goes unmarked, for the kernel to check", i, w.h)
		}
	}
	if out := coalesce(g, [][]byte{a, tcpFlow(100, 1, payload(100, 2)).build(t)}); len(out) != 1 {
		t.Errorf("good packets not merged under verify: %d writes", len(out))
	}
	// IPv6: the same over its pseudo-header, and a UDP checksum of 0,
	// which IPv6 forbids, is not taken as "none".
	a6 := v6(tcpFlow(0, 0, payload(100, 1))).build(t)
	b6 := v6(tcpFlow(100, 1, payload(100, 2))).build(t)
	if out := coalesce(g, [][]byte{a6, b6}); len(out) != 1 {
		t.Errorf("good IPv6 packets not merged under verify: %d writes", len(out))
	}
	b6[len(b6)-1] ^= 0xff
	if out := coalesce(g, [][]byte{a6, b6}); len(out) != 2 || out[1].h.flags != 0 {
		t.Errorf("bad IPv6 checksum: %d writes", len(out))
	}
	u0 := v6(udpFlow(0, payload(100, 1))).build(t)
	u1 := v6(udpFlow(1, payload(100, 2))).build(t)
	u1[ipv6Len+6], u1[ipv6Len+7] = 0, 0
	if out := coalesce(g, [][]byte{u0, u1}); len(out) != 2 || out[1].h.flags != 0 {
		t.Errorf("IPv6 UDP without checksum: %d writes", len(out))
	}
}

func TestOffloadAllocs(t *testing.T) {
	for _, s := range []pkt{tcpFlow(1, 1, payload(45*1420, 1)), v6(tcpFlow(1, 1, payload(45*1420, 1)))} {
		t.Run(fmt.Sprintf("v6=%v", s.v6), func(t *testing.T) { testOffloadAllocs(t, s) })
	}
}

func testOffloadAllocs(t *testing.T, s pkt) {
	in := s.build(t)
	h := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: uint16(s.hdrLen(t)), gsoSize: 1420, csumStart: uint16(s.iphl()), csumOffset: 16}
	if s.v6 {
		h.gsoType = gsoTCPv6
	}
	bufs := bufsFor(64, h, in)
	sizes := make([]int, 64)
	if a := testing.AllocsPerRun(100, func() {
		copy(bufs[0][Headroom:], in)
		if _, err := splitGSO(&h, bufs[0][Headroom:Headroom+len(in)], bufs, sizes, Headroom); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Errorf("splitGSO: %v allocations", a)
	}
	segs := make([][]byte, 45)
	for i := range segs {
		segs[i] = append(make([]byte, Headroom), bufs[i][Headroom:Headroom+sizes[i]]...)
	}
	g := &groTable{tcp: true, udp: true}
	// The runs below measure a merge only the first time (finish
	// rewrites the head); group alone merges every time.
	if a := testing.AllocsPerRun(100, func() { g.group(segs, Headroom) }); a != 0 || len(g.items) != 1 || g.items[0].count != 45 {
		t.Errorf("group: %v allocations, %d writes; want 0, one of 45 segments", a, len(g.items))
	}
	var vh vnetHdr
	if a := testing.AllocsPerRun(100, func() {
		g.group(segs, Headroom)
		for i := range g.items {
			finish(&g.items[i], segs, Headroom, true, &vh)
		}
	}); a != 0 {
		t.Errorf("group+finish: %v allocations", a)
	}
}

func BenchmarkSplitTCP64K(b *testing.B) {
	for _, s := range []pkt{tcpFlow(1, 1, payload(45*1420, 1)), v6(tcpFlow(1, 1, payload(44*1420, 1)))} {
		b.Run(map[bool]string{false: "ipv4", true: "ipv6"}[s.v6], func(b *testing.B) {
			in := s.build(b)
			hl := s.hdrLen(b)
			h := vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: uint16(hl), gsoSize: 1420, csumStart: uint16(s.iphl()), csumOffset: 16}
			if s.v6 {
				h.gsoType = gsoTCPv6
			}
			bufs := bufsFor(64, h, in)
			sizes := make([]int, 64)
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				copy(bufs[0][Headroom:Headroom+hl], in[:hl])
				splitGSO(&h, bufs[0][Headroom:Headroom+len(in)], bufs, sizes, Headroom)
			}
		})
	}
}

func BenchmarkCoalesceTCP(b *testing.B) {
	for _, fam := range []string{"ipv4", "ipv6"} {
		for _, flows := range []int{1, 4} {
			b.Run(fmt.Sprintf("%s/flows=%d", fam, flows), func(b *testing.B) {
				segs := make([][]byte, 44)
				total := 0
				for i := range segs {
					f := i % flows
					p := tcpFlow(uint32(i/flows*1420), uint16(i/flows), payload(1420, byte(i)))
					p.sport += uint16(f)
					p.v6 = fam == "ipv6"
					segs[i] = append(make([]byte, Headroom), p.build(b)...)
					total += len(segs[i]) - Headroom
				}
				// finish rewrites each head's headers: they are restored
				// every round, or later rounds would merge nothing.
				orig := make([][]byte, len(segs))
				for i := range segs {
					orig[i] = bytes.Clone(segs[i][:Headroom+80])
				}
				g := &groTable{tcp: true, udp: true}
				var vh vnetHdr
				b.SetBytes(int64(total))
				b.ReportAllocs()
				for b.Loop() {
					for i := range segs {
						copy(segs[i], orig[i])
					}
					g.group(segs, Headroom)
					for i := range g.items {
						finish(&g.items[i], segs, Headroom, true, &vh)
					}
				}
			})
		}
	}
}
