package tun

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// naiveSum is a byte-by-byte RFC 1071 sum, independent of sum16.
func naiveSum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

// validIP checks an IPv4 or IPv6 packet: validIPv4's checks, or the
// payload length and the L4 checksum of an IPv6 packet whose TCP or UDP
// header follows the fixed header.
func validIP(p []byte) bool {
	if len(p) < 40 || p[0]>>4 != 6 {
		return validIPv4(p)
	}
	if int(binary.BigEndian.Uint16(p[4:])) != len(p)-40 {
		return false
	}
	l4 := p[40:]
	pseudo := uint32(naiveSum(p[8:40], 0)) + uint32(p[6]) + uint32(len(l4))
	switch p[6] {
	case protoTCP:
		return len(l4) >= 20 && naiveSum(l4, pseudo) == 0xffff
	case protoUDP:
		return len(l4) >= 8 && naiveSum(l4, pseudo) == 0xffff && (l4[6] != 0 || l4[7] != 0)
	}
	return false
}

// validIPv4 checks the header checksum, the total length and, for TCP and
// UDP, the L4 checksum of a packet with a 20-byte header or more.
func validIPv4(p []byte) bool {
	if len(p) < 20 || p[0]>>4 != 4 {
		return false
	}
	hl := int(p[0]&0xf) * 4
	if hl < 20 || hl > len(p) || int(binary.BigEndian.Uint16(p[2:])) != len(p) || naiveSum(p[:hl], 0) != 0xffff {
		return false
	}
	l4 := p[hl:]
	pseudo := uint32(naiveSum(p[12:20], 0)) + uint32(p[9]) + uint32(len(l4))
	switch p[9] {
	case protoTCP:
		return naiveSum(l4, pseudo) == 0xffff
	case protoUDP:
		return len(l4) >= 8 && naiveSum(l4, pseudo) == 0xffff
	}
	return true
}

func encodedHdr(h vnetHdr) []byte { b := make([]byte, vnetHdrLen); h.encode(b); return b }

func FuzzSplit(f *testing.F) {
	tcp := tcpFlow(1, 2, payload(3000, 1)).build(f)
	udp := udpFlow(3, payload(2500, 2)).build(f)
	hdr := encodedHdr
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: 40, gsoSize: 1000, csumStart: 20, csumOffset: 16}), tcp)
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoUDPL4, hdrLen: 28, gsoSize: 1000, csumStart: 20, csumOffset: 6}), udp)
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 20, csumOffset: 16}), tcp)
	f.Add(hdr(vnetHdr{gsoType: gsoTCPv4 | gsoECN, gsoSize: 1}), tcp[:60])
	f.Add(append(hdr(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv4, hdrLen: 40, gsoSize: 1000, csumStart: 20, csumOffset: 16}), 1), tcp)
	fuzzSplit(f)
}

// FuzzSplitIPv6 is FuzzSplit from IPv6 super-packets: TSO6, USO over
// IPv6, extension headers (refused), partial checksums past them.
func FuzzSplitIPv6(f *testing.F) {
	tp := v6(tcpFlow(1, 2, payload(3000, 1)))
	tp.flow, tp.flags = 0x12345, tcpFlagACK|tcpFlagPSH|tcpFlagCWR
	tcp := tp.build(f)
	udp := v6(udpFlow(3, payload(2500, 2))).build(f)
	ep := tp
	ep.ext = true
	ext := ep.build(f)
	hdr := encodedHdr
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv6 | gsoECN, hdrLen: 60, gsoSize: 1000, csumStart: 40, csumOffset: 16}), tcp)
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoUDPL4, hdrLen: 48, gsoSize: 1000, csumStart: 40, csumOffset: 6}), udp)
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, csumStart: 48, csumOffset: 16}), ext)
	f.Add(hdr(vnetHdr{flags: vnetFlagNeedsCsum, gsoType: gsoTCPv6, hdrLen: 68, gsoSize: 1000, csumStart: 48, csumOffset: 16}), ext)
	f.Add(append(hdr(vnetHdr{gsoType: gsoTCPv6, gsoSize: 7}), 1), tcp[:200])
	fuzzSplit(f)
}

// fuzzSplit is the property both split targets check: a plain packet
// stays whole with its partial checksum completed; a GSO packet of either
// family becomes valid packets that carry its bytes, or is refused.
func fuzzSplit(f *testing.F) {
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65535)
	}
	sizes := make([]int, len(bufs))
	spare := make([]byte, 65535)
	f.Fuzz(func(t *testing.T, hb, p []byte) {
		if len(hb) < vnetHdrLen || len(p) > 65535 {
			return
		}
		var h vnetHdr
		h.decode(hb)
		copy(bufs[0][Headroom:], p)
		// A partial checksum is completed relative to what the field held
		// (the pseudo-header sum, from a kernel): the region's sum must
		// end up as the complement of that.
		var field uint16
		if at := int(h.csumStart) + int(h.csumOffset); at+2 <= len(p) {
			field = binary.BigEndian.Uint16(p[at:])
		}
		// An odd byte after the header splits from a spare buffer, as
		// Read does after its first packet.
		src := bufs[0][Headroom : Headroom+len(p)]
		if len(hb) > vnetHdrLen && hb[vnetHdrLen]&1 != 0 {
			src = spare[:len(p)]
			copy(src, p)
		}
		n, err := splitGSO(&h, src, bufs, sizes, Headroom)
		if err != nil {
			return
		}
		gso := h.gsoType &^ gsoECN
		if n < 1 || n > len(bufs) {
			t.Fatalf("%d segments", n)
		}
		if gso == gsoNone {
			if n != 1 || sizes[0] != len(p) {
				t.Fatalf("a plain packet became %d packets", n)
			}
			if h.flags&vnetFlagNeedsCsum != 0 {
				got := naiveSum(bufs[0][Headroom+int(h.csumStart):Headroom+len(p)], 0)
				if got != ^field && (h.csumOffset != 6 || got != naiveSum(nil, uint32(^field)+0xffff)) {
					t.Fatalf("completed checksum wrong: %+v: region sums to %#x, field held %#x", h, got, field)
				}
			}
			return
		}
		if len(p) < 20 || (p[0]>>4 != 4 && p[0]>>4 != 6) {
			if n != 1 || sizes[0] != len(p) {
				t.Fatalf("a GSO packet of neither family became %d packets", n)
			}
			return // handed back whole, for the router to drop
		}
		if p[0]>>4 == 6 && p[6] != protoTCP && p[6] != protoUDP {
			t.Fatalf("an IPv6 super-packet with next header %d was split", p[6])
		}
		total := 0
		for i := range n {
			seg := bufs[i][Headroom : Headroom+sizes[i]]
			if !validIP(seg) {
				t.Fatalf("segment %d of %d has a wrong length or checksum: %x", i, n, seg)
			}
			total += len(seg)
		}
		iphl, proto := int(p[0]&0xf)*4, p[9]
		if p[0]>>4 == 6 {
			iphl, proto = 40, p[6]
		}
		hl := iphl + 8
		if proto == protoTCP {
			hl = iphl + int(p[iphl+12]>>4)*4
		}
		if total-(n-1)*hl != len(p) {
			t.Fatalf("%d segments of %d bytes in all from %d bytes", n, total, len(p))
		}
	})
}

// fuzzPacket builds a valid TCP or UDP packet from 4 fuzz bytes, in one of
// four flows, so that random specs still form trains worth merging.
type fuzzFlow struct {
	seq uint32
	id  uint16
}

// fuzzPackets builds packets from spec, 4 bytes each. With mixed, bit 3
// of a packet's first byte makes it IPv6 (see fuzzPacket6).
func fuzzPackets(spec []byte, mixed bool) [][]byte {
	var flows, flows6 [8]fuzzFlow
	var out [][]byte
	for len(spec) >= 4 && len(out) < 200 {
		b := spec[:4]
		spec = spec[4:]
		f := int(b[0] & 7)
		if mixed && b[0]&8 != 0 {
			out = append(out, fuzzPacket6(b, &flows6[f]))
			continue
		}
		isUDP := f >= 6
		plen := 1000
		if b[1]&0x80 != 0 {
			plen = int(b[1]&0x7f) * 9
		}
		fl := &flows[f]
		if b[2]&0x40 != 0 {
			fl.id += 3
		}
		if b[2]&0x80 != 0 {
			fl.seq += 17
		}
		hl := 20 + 20
		if isUDP {
			hl = 28
		}
		opts := !isUDP && b[3]&1 != 0
		if opts {
			hl += 12
		}
		p := make([]byte, hl+plen)
		p[0], p[1] = 0x45, b[3]&0x4
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		binary.BigEndian.PutUint16(p[4:], fl.id)
		if b[3]&0x8 == 0 {
			p[6] = 0x40
		}
		p[8] = 63 - b[2]>>5&1
		copy(p[12:], []byte{198, 18, 5, byte(f)})
		copy(p[16:], []byte{198, 18, 32, 5})
		binary.BigEndian.PutUint16(p[20:], 40000+uint16(f))
		binary.BigEndian.PutUint16(p[22:], 5201)
		for i := hl; i < len(p); i++ {
			p[i] = byte(i) ^ b[0]
		}
		if isUDP {
			p[9] = protoUDP
			binary.BigEndian.PutUint16(p[24:], uint16(len(p)-20))
		} else {
			p[9] = protoTCP
			binary.BigEndian.PutUint32(p[24:], fl.seq)
			binary.BigEndian.PutUint32(p[28:], 777+uint32(b[3]>>7))
			p[32] = byte((hl - 20) / 4 << 4)
			p[33] = tcpFlagACK | b[2]&(tcpFlagFIN|tcpFlagSYN|tcpFlagPSH|tcpFlagECE|tcpFlagCWR)
			binary.BigEndian.PutUint16(p[34:], 501)
			if opts {
				copy(p[40:], []byte{1, 1, 8, 10, 0, 0, 0, b[3] >> 6, 0, 0, 0, 1})
			}
			fl.seq += uint32(plen)
		}
		fl.id++
		l4 := p[20:]
		at := 16
		if isUDP {
			at = 6
		}
		c := ^naiveSum(l4, uint32(naiveSum(p[12:20], 0))+uint32(p[9])+uint32(len(l4)))
		if c == 0 && isUDP {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[at:], c)
		binary.BigEndian.PutUint16(p[10:], ^naiveSum(p[:20], 0))
		out = append(out, p)
	}
	return out
}

// fuzzPacket6 builds the IPv6 packet of flow fl (index b[0]&7, UDP from
// 6) from the 4 bytes b, as fuzzPackets does an IPv4 one: b[3] bit 2 sets
// the traffic class, bit 3 the flow label (another flow for the kernel's
// GRO), bit 4 a destination options header, which must pass whole.
func fuzzPacket6(b []byte, fl *fuzzFlow) []byte {
	f := int(b[0] & 7)
	isUDP := f >= 6
	plen := 1000
	if b[1]&0x80 != 0 {
		plen = int(b[1]&0x7f) * 9
	}
	if b[2]&0x80 != 0 {
		fl.seq += 17
	}
	iphl := 40
	if b[3]&0x10 != 0 {
		iphl += 8
	}
	hl := iphl + 20
	if isUDP {
		hl = iphl + 8
	}
	opts := !isUDP && b[3]&1 != 0
	if opts {
		hl += 12
	}
	p := make([]byte, hl+plen)
	binary.BigEndian.PutUint32(p, 6<<28|uint32(b[3]&0x4)<<20|uint32(b[3]>>3&1))
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	p[7] = 63 - b[2]>>5&1
	copy(p[8:], []byte{0x20, 0x01, 0x0d, 0xb8, 12: 198, 18, 5, byte(f)})
	copy(p[24:], []byte{0x20, 0x01, 0x0d, 0xb8, 12: 198, 18, 32, 5})
	proto := uint8(protoTCP)
	if isUDP {
		proto = protoUDP
	}
	p[6] = proto
	if iphl > 40 {
		p[6] = 60 // destination options: PadN over its 6 bytes
		copy(p[40:], []byte{proto, 0, 1, 4})
	}
	l4 := p[iphl:]
	binary.BigEndian.PutUint16(l4, 40000+uint16(f))
	binary.BigEndian.PutUint16(l4[2:], 5201)
	for i := hl - iphl; i < len(l4); i++ {
		l4[i] = byte(i) ^ b[0]
	}
	at := 16
	if isUDP {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		at = 6
	} else {
		binary.BigEndian.PutUint32(l4[4:], fl.seq)
		binary.BigEndian.PutUint32(l4[8:], 777+uint32(b[3]>>7))
		l4[12] = byte((hl - iphl - 20) / 4 << 4)
		l4[13] = tcpFlagACK | b[2]&(tcpFlagFIN|tcpFlagSYN|tcpFlagPSH|tcpFlagECE|tcpFlagCWR)
		binary.BigEndian.PutUint16(l4[14:], 501)
		if opts {
			copy(l4[20:], []byte{1, 1, 8, 10, 0, 0, 0, b[3] >> 6, 0, 0, 0, 1})
		}
		fl.seq += uint32(plen)
	}
	c := ^naiveSum(l4, uint32(naiveSum(p[8:40], 0))+uint32(proto)+uint32(len(l4)))
	if c == 0 && isUDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[at:], c)
	return p
}

func FuzzCoalesce(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0}, false, true)
	f.Add([]byte{0, 0, 0, 0, 1, 0, 0, 0, 0, 0x85, 0, 0, 1, 0x85, 0, 0, 6, 0, 0, 0, 6, 0x90, 0, 0}, true, false)
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0x80, 1, 0, 0, 0x40, 1, 0, 0, 0x82, 0}, false, false)
	fuzzCoalesce(f, false)
}

// FuzzCoalesceIPv6 is FuzzCoalesce over batches of both families, IPv6
// packets with flow labels, traffic classes and extension headers among
// them.
func FuzzCoalesceIPv6(f *testing.F) {
	f.Add([]byte{8, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0, 8, 0x85, 0, 0}, false, false)
	f.Add([]byte{8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0x10, 8, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 8, 9, 0, 0, 0}, false, true)
	f.Add([]byte{14, 0, 0, 0, 14, 0, 0, 0, 14, 0x83, 0, 0, 6, 0, 0, 0, 14, 0, 0, 0x4, 15, 0, 0, 0x10}, false, false)
	f.Add([]byte{8, 0, 0, 1, 8, 0, 0, 1, 8, 0, 0x20, 1, 8, 0, 0x80, 1, 8, 0, 0x08, 1}, false, false)
	fuzzCoalesce(f, true)
}

// related reports whether packet b, written after a, must stay after it:
// one IPv4 flow as the original target keyed it, or, for IPv6, one
// address pair where either packet has extension headers, else one flow.
func related(a, b []byte) bool {
	if len(a) < 24 || len(b) < 24 || a[0]>>4 != b[0]>>4 {
		return false
	}
	if a[0]>>4 != 6 {
		return a[9] == b[9] && string(a[12:24]) == string(b[12:24])
	}
	if len(a) < 44 || len(b) < 44 || string(a[8:40]) != string(b[8:40]) {
		return false
	}
	l4 := func(p []byte) bool { return p[6] == protoTCP || p[6] == protoUDP }
	if !l4(a) || !l4(b) {
		return true
	}
	return sameFlow(a, b)
}

func fuzzCoalesce(f *testing.F, mixed bool) {
	g := &groTable{tcp: true}
	f.Fuzz(func(t *testing.T, spec []byte, raw, verify bool) {
		var pkts [][]byte
		if raw {
			// Arbitrary bytes: only "never panic" and "every packet
			// leaves exactly once" can be asked of them.
			for len(spec) > 0 && len(pkts) < 100 {
				n := min(int(spec[0])+1, len(spec)-1)
				pkts = append(pkts, spec[1:1+n])
				spec = spec[1+n:]
			}
		} else {
			pkts = fuzzPackets(spec, mixed)
		}
		if len(pkts) == 0 {
			return
		}
		g.udp, g.verify = len(spec)%2 == 0, verify
		orig := make([][]byte, len(pkts))
		for i := range pkts {
			orig[i] = bytes.Clone(pkts[i])
		}
		out := coalesce(g, pkts)
		seen := make([]int, len(pkts))
		var order []int
		for i := range g.items {
			it := &g.items[i]
			for m := it.head; ; m = g.next[m] {
				seen[m]++
				order = append(order, int(m))
				if m == it.tail {
					break
				}
			}
		}
		for i, n := range seen {
			if n != 1 {
				t.Fatalf("packet %d written %d times", i, n)
			}
		}
		// Packets of one flow keep their order.
		for i, k := range order {
			for _, j := range order[i+1:] {
				if j < k && related(orig[j], orig[k]) {
					t.Fatalf("packet %d written after packet %d of its flow", j, k)
				}
			}
		}
		for i, w := range out {
			it := &g.items[i]
			if it.count == 1 {
				if !bytes.Equal(w.pkt, orig[it.head]) {
					t.Fatalf("single packet %d changed", it.head)
				}
				continue
			}
			if raw {
				t.Fatalf("raw bytes coalesced")
			}
			sp := bytes.Clone(w.pkt)
			if err := completeChecksum(sp, int(w.h.csumStart), int(w.h.csumOffset)); err != nil || !validIP(sp) {
				t.Fatalf("super-packet %d invalid (%v): %x", i, err, sp[:40])
			}
			bufs := bufsFor(64, w.h, w.pkt)
			sizes := make([]int, 64)
			n, err := splitGSO(&w.h, bufs[0][Headroom:Headroom+len(w.pkt)], bufs, sizes, Headroom)
			if err != nil || n != int(it.count) {
				t.Fatalf("re-split of write %d: %d segments, %v; want %d", i, n, err, it.count)
			}
			j := 0
			for m := it.head; ; m = g.next[m] {
				if d := diff(bufs[j][Headroom:Headroom+sizes[j]], orig[m]); d != "" {
					t.Fatalf("write %d segment %d is not packet %d: %s", i, j, m, d)
				}
				j++
				if m == it.tail {
					break
				}
			}
		}
	})
}
