package tun

import (
	"encoding/binary"
	"errors"
	"github.com/flannel-go/flannel-go/internal/inet"
)

// The virtio-net header (include/uapi/linux/virtio_net.h) that an
// IFF_VNET_HDR TUN puts in front of every packet. Its 16-bit fields are in
// the TUN's vnet byte order, which is native unless TUNSETVNETLE/BE says
// otherwise; we never change it.
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // complete the checksum at csumStart+csumOffset
	vnetFlagDataValid = 2 // checksum already verified

	gsoNone  = 0
	gsoTCPv4 = 1
	gsoTCPv6 = 4
	gsoUDPL4 = 5
	gsoECN   = 0x80
)

type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func (h *vnetHdr) decode(b []byte) {
	_ = b[vnetHdrLen-1]
	h.flags = b[0]
	h.gsoType = b[1]
	h.hdrLen = binary.NativeEndian.Uint16(b[2:])
	h.gsoSize = binary.NativeEndian.Uint16(b[4:])
	h.csumStart = binary.NativeEndian.Uint16(b[6:])
	h.csumOffset = binary.NativeEndian.Uint16(b[8:])
}

func (h *vnetHdr) encode(b []byte) {
	_ = b[vnetHdrLen-1]
	b[0] = h.flags
	b[1] = h.gsoType
	binary.NativeEndian.PutUint16(b[2:], h.hdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(b[6:], h.csumStart)
	binary.NativeEndian.PutUint16(b[8:], h.csumOffset)
}

// Protocol facts the offload code needs.
const (
	protoTCP   = 6
	protoUDP   = 17
	ipv4Len    = 20 // header without options
	ipv6Len    = 40 // fixed header; extension headers follow it
	tcpMinLen  = 20
	udpLen     = 8
	tcpFlagFIN = 0x01
	tcpFlagSYN = 0x02
	tcpFlagRST = 0x04
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
	tcpFlagURG = 0x20
	tcpFlagECE = 0x40
	tcpFlagCWR = 0x80
	// maxPacket bounds a packet read from or written to the TUN, of
	// either family: the IPv4 total length's limit, which an IPv6
	// super-packet keeps too (no jumbograms).
	maxPacket = 65535
)

// ErrDropped is wrapped by the errors of Queue.Read that dropped one
// malformed packet; the queue stays usable.
var ErrDropped = errors.New("packet dropped")

var (
	errShortVnet    = errors.New("read shorter than the virtio-net header")
	errBadGSO       = errors.New("malformed GSO super-packet")
	errExtHdrGSO    = errors.New("IPv6 GSO super-packet with extension headers (never split)")
	errBadCsum      = errors.New("checksum offsets outside the packet")
	errTooManySegs  = errors.New("GSO super-packet has more segments than buffers")
	errSegmentSpace = errors.New("buffer too small for a segment")
)

// completeChecksum finishes a CHECKSUM_PARTIAL packet: the field at
// start+offset holds the pseudo-header sum, and the checksum covers
// everything from start on. start and offset are 16-bit header fields, so
// they are never negative. It needs no parsing, so it serves IPv4 and IPv6
// packets alike, extension headers included (the kernel's start points
// past them).
func completeChecksum(p []byte, start, offset int) error {
	at := start + offset
	// An odd offset would put the field across two checksum words.
	if at+2 > len(p) || offset&1 != 0 {
		return errBadCsum
	}
	c := ^inet.Fold(inet.Sum16(p[start:], 0))
	if c == 0 && offset == 6 { // a UDP checksum of 0 means "none"
		c = 0xffff
	}
	binary.BigEndian.PutUint16(p[at:], c)
	return nil
}

// pseudoSum is the unfolded pseudo-header sum for an L4 segment of length
// l of protocol proto in the IPv4 or IPv6 packet p (RFC 8200 8.1: the
// 32-bit length and next header add up as the same 16-bit words).
func pseudoSum(p []byte, proto uint8, l int) uint64 {
	if p[0]>>4 == 6 {
		return inet.Sum16(p[8:ipv6Len], uint64(proto)+uint64(l))
	}
	return inet.PseudoSum(p, proto, l)
}

// gsoHeaders checks that the super-packet p fits its GSO type and returns
// its IP and L4 header lengths and protocol. An IPv6 super-packet whose
// L4 header does not follow the fixed header directly is refused: its
// extension headers are never split (a routing header would even change
// the checksum's pseudo-header).
func gsoHeaders(gso uint8, p []byte) (iphl, l4hl int, proto uint8, err error) {
	if p[0]>>4 == 6 {
		if len(p) < ipv6Len {
			return 0, 0, 0, errBadGSO
		}
		iphl, proto = ipv6Len, p[6]
		if proto != protoTCP && proto != protoUDP {
			return 0, 0, 0, errExtHdrGSO
		}
	} else {
		iphl, proto = int(p[0]&0xf)*4, p[9]
		if iphl < ipv4Len || iphl > len(p) {
			return 0, 0, 0, errBadGSO
		}
	}
	tcpGSO := uint8(gsoTCPv4)
	if p[0]>>4 == 6 {
		tcpGSO = gsoTCPv6
	}
	switch {
	case gso == tcpGSO && proto == protoTCP:
		if iphl+tcpMinLen > len(p) {
			return 0, 0, 0, errBadGSO
		}
		l4hl = int(p[iphl+12]>>4) * 4
		if l4hl < tcpMinLen {
			return 0, 0, 0, errBadGSO
		}
	case gso == gsoUDPL4 && proto == protoUDP:
		l4hl = udpLen
	default:
		return 0, 0, 0, errBadGSO
	}
	return iphl, l4hl, proto, nil
}

// splitGSO turns the packet p read from the TUN with the virtio-net
// header h into ordinary IPv4 or IPv6 packets, segment i in
// bufs[i][offset:]. When p is bufs[0][offset:] the first segment stays in
// place; otherwise (a packet read into the queue's spare buffer) it is
// copied too. sizes[i] gets the length of segment i. It returns the
// number of packets. It changes nothing, neither p nor bufs, when it
// fails, so a packet refused with errTooManySegs may be split later into
// more buffers.
//
// A GSO packet is cut at h.gsoSize bytes of L4 payload, as the kernel's
// own segmentation would: every segment gets the full headers, its own IP
// total length (IPv4: with an IP ID one higher than the previous one and
// its header checksum) or payload length (IPv6), and its TCP sequence
// number or UDP length; the L4 checksum is computed for every segment,
// over the family's pseudo-header, because the wire format carries
// complete packets. FIN and PSH stay on the last TCP segment only, CWR on
// the first only. GSO packets of neither family are returned unsplit for
// the caller to drop; IPv6 ones with extension headers fail
// (errExtHdrGSO).
func splitGSO(h *vnetHdr, p []byte, bufs [][]byte, sizes []int, offset int) (int, error) {
	gso := h.gsoType &^ gsoECN
	if gso == gsoNone || len(p) < ipv4Len || (p[0]>>4 != 4 && p[0]>>4 != 6) {
		if len(bufs[0]) < offset+len(p) {
			return 0, errSegmentSpace
		}
		if gso == gsoNone && h.flags&vnetFlagNeedsCsum != 0 {
			if err := completeChecksum(p, int(h.csumStart), int(h.csumOffset)); err != nil {
				return 0, err
			}
		}
		sizes[0] = place(bufs[0][offset:], p)
		return 1, nil
	}
	iphl, l4hl, proto, err := gsoHeaders(gso, p)
	if err != nil {
		return 0, err
	}
	hl := iphl + l4hl
	mss := int(h.gsoSize)
	if hl > len(p) || mss == 0 {
		return 0, errBadGSO
	}
	payload := len(p) - hl
	n := max(1, (payload+mss-1)/mss)
	if n > len(bufs) || n > len(sizes) {
		return 0, errTooManySegs
	}
	for i := range n {
		if len(bufs[i]) < offset+min(hl+mss, len(p)) {
			return 0, errSegmentSpace
		}
	}
	v6 := p[0]>>4 == 6
	var id uint16
	if !v6 {
		id = binary.BigEndian.Uint16(p[4:6])
	}
	var seq uint32
	var flags uint8
	if proto == protoTCP {
		seq = binary.BigEndian.Uint32(p[iphl+4:])
		flags = p[iphl+13]
	}
	// Segments 1..n-1 first: they copy the headers segment 0 still has.
	for i := n - 1; i >= 0; i-- {
		start := hl + i*mss
		end := min(start+mss, len(p))
		var seg []byte
		if i == 0 {
			seg = bufs[0][offset : offset+end]
			place(seg, p[:end])
		} else {
			seg = bufs[i][offset : offset+hl+end-start]
			copy(seg, p[:hl])
			copy(seg[hl:], p[start:end])
		}
		if v6 {
			binary.BigEndian.PutUint16(seg[4:], uint16(len(seg)-ipv6Len))
		} else {
			ip := seg[:iphl]
			binary.BigEndian.PutUint16(ip[2:], uint16(len(seg)))
			binary.BigEndian.PutUint16(ip[4:], id+uint16(i))
			inet.SetHeaderChecksum(ip)
		}
		l4 := seg[iphl:]
		if proto == protoTCP {
			binary.BigEndian.PutUint32(l4[4:], seq+uint32(i*mss))
			f := flags
			if i != n-1 {
				f &^= tcpFlagFIN | tcpFlagPSH
			}
			if i != 0 {
				f &^= tcpFlagCWR
			}
			l4[13] = f
			l4[16], l4[17] = 0, 0
			binary.BigEndian.PutUint16(l4[16:], ^inet.Fold(inet.Sum16(l4, pseudoSum(seg, protoTCP, len(l4)))))
		} else {
			binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
			l4[6], l4[7] = 0, 0
			c := ^inet.Fold(inet.Sum16(l4, pseudoSum(seg, protoUDP, len(l4))))
			if c == 0 {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(l4[6:], c)
		}
		sizes[i] = len(seg)
	}
	return n, nil
}

// place copies src to the start of dst, unless src already is there.
func place(dst, src []byte) int {
	if len(src) > 0 && &dst[0] == &src[0] {
		return len(src)
	}
	return copy(dst, src)
}

// maxCoalesce is the most packets one super-packet written to the TUN
// carries; the kernel's GRO and UDP GSO stop at 64 segments too.
const maxCoalesce = 64

// groItem is one write into the TUN: a single packet, or a super-packet
// made of the head packet and the payloads of the packets linked from it.
type groItem struct {
	head, tail int32 // packet indices; next[] links head to tail
	count      int32
	payload    int32 // L4 payload bytes of all members
	gsoSize    int32 // payload of the head; every member but the last has it
	hl         int32 // IP + L4 header length of the head
	iphl       uint8 // ipv4Len or ipv6Len: the head's family
	proto      uint8 // protoTCP or protoUDP for a coalescable group, 0 for a single
	open       bool
	lastPSH    bool
	valid      bool   // a single whose checksum may be marked DATA_VALID
	nextSeq    uint32 // TCP sequence number the next member must have
	nextID     uint16 // IPv4 ID the next member must have
}

// groTable groups the packets of one Write into items. Its arrays are
// made once and grow only when a batch is larger than any before, so the
// steady state allocates nothing.
type groTable struct {
	items []groItem
	next  []int32
	open  []int32 // indices of open items, oldest first
	tcp   bool    // coalesce TCP (IFF_VNET_HDR)
	udp   bool    // coalesce UDP (the kernel accepts GSO_UDP_L4 writes)
	// verify re-checks the L4 checksum of every TCP/UDP packet; one
	// that fails is written unmarked, for the kernel to drop and count.
	verify bool
}

// maxOpen bounds the linear search for a packet's flow.
const maxOpen = 8

func (t *groTable) reset(n int) {
	if cap(t.next) < n {
		t.next = make([]int32, n)
		t.items = make([]groItem, 0, n)
	}
	t.next = t.next[:n]
	t.items = t.items[:0]
	t.open = t.open[:0]
	if cap(t.open) < maxOpen {
		t.open = make([]int32, 0, maxOpen)
	}
}

// l4ChecksumOK verifies the TCP or UDP checksum of the packet p, whose L4
// header starts at iphl; classify has checked its headers.
func l4ChecksumOK(p []byte, iphl int, proto uint8) bool {
	l4 := p[iphl:]
	if proto == protoUDP && iphl == ipv4Len && l4[6] == 0 && l4[7] == 0 {
		return true // sent without a checksum (IPv4 only: RFC 8200 8.1)
	}
	return inet.Fold(inet.Sum16(l4, pseudoSum(p, proto, len(l4)))) == 0xffff
}

// l3 returns the header length of an IPv4 packet without options or an
// IPv6 packet without extension headers, whose length fields agree with
// len(p), and its L4 protocol; 0 for any other packet, IPv4 fragments
// included. Such packets may be coalesced; the others pass unchanged, an
// IPv6 packet's extension headers included.
func l3(p []byte) (iphl int, proto uint8) {
	switch {
	case len(p) >= ipv4Len && p[0] == 0x45:
		if int(binary.BigEndian.Uint16(p[2:])) != len(p) || binary.BigEndian.Uint16(p[6:])&0x3fff != 0 {
			return 0, 0
		}
		return ipv4Len, p[9]
	case len(p) >= ipv6Len && p[0]>>4 == 6:
		if int(binary.BigEndian.Uint16(p[4:])) != len(p)-ipv6Len {
			return 0, 0
		}
		return ipv6Len, p[6]
	}
	return 0, 0
}

// classify returns the protocol a packet may be coalesced under (0 if it
// may not), its IP header length and its IP + L4 header length. A
// coalescable packet passes l3, with a non-empty TCP or UDP payload; TCP
// needs ACK and none of SYN, RST, URG or FIN.
func (t *groTable) classify(p []byte) (proto uint8, iphl, hl int) {
	iphl, proto = l3(p)
	switch {
	case iphl == 0:
	case proto == protoTCP:
		if !t.tcp || len(p) < iphl+tcpMinLen {
			break
		}
		thl := int(p[iphl+12]>>4) * 4
		hl = iphl + thl
		f := p[iphl+13]
		if thl < tcpMinLen || hl >= len(p) || f&tcpFlagACK == 0 ||
			f&(tcpFlagSYN|tcpFlagRST|tcpFlagURG|tcpFlagFIN) != 0 {
			break
		}
		return protoTCP, iphl, hl
	case proto == protoUDP:
		hl = iphl + udpLen
		if !t.udp || hl >= len(p) || int(binary.BigEndian.Uint16(p[iphl+4:])) != len(p)-iphl {
			break
		}
		return protoUDP, iphl, hl
	}
	return 0, 0, 0
}

// sameFlow reports whether the packets a and b, of which at least the IP
// headers are there, belong to one flow: same family, addresses and
// protocol (next header), for TCP and UDP same ports, and for IPv6 the
// same flow label, which the kernel's GRO takes as part of the flow too.
func sameFlow(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 || a[0]>>4 != b[0]>>4 {
		return false
	}
	if a[0]>>4 == 4 {
		return inet.SameFlow(a, b)
	}
	if len(a) < ipv6Len || len(b) < ipv6Len || a[6] != b[6] ||
		binary.BigEndian.Uint32(a)&0x000fffff != binary.BigEndian.Uint32(b)&0x000fffff ||
		string(a[8:ipv6Len]) != string(b[8:ipv6Len]) {
		return false
	}
	if a[6] != protoTCP && a[6] != protoUDP {
		return true
	}
	if len(a) < ipv6Len+4 || len(b) < ipv6Len+4 {
		return false
	}
	return binary.NativeEndian.Uint32(a[ipv6Len:]) == binary.NativeEndian.Uint32(b[ipv6Len:])
}

// canAppend tells whether p (header length hl) continues the group it of
// the same flow exactly as the kernel's GRO would merge it: IPv4 with the
// next IP ID and the same TOS, TTL and DF; IPv6 with the same traffic
// class and hop limit.
func canAppend(it *groItem, head, p []byte, hl int) bool {
	pl := len(p) - hl
	if !it.open || it.count >= maxCoalesce || int(it.hl) != hl || pl > int(it.gsoSize) ||
		int(it.hl+it.payload)+pl > maxPacket {
		return false
	}
	if it.iphl == ipv6Len {
		if binary.BigEndian.Uint16(p)&0x0ff0 != binary.BigEndian.Uint16(head)&0x0ff0 || p[7] != head[7] {
			return false
		}
	} else if binary.BigEndian.Uint16(p[4:]) != it.nextID ||
		p[1] != head[1] || p[8] != head[8] || p[6]&0xe0 != head[6]&0xe0 {
		return false
	}
	if it.proto == protoUDP {
		return true
	}
	th, tp := head[it.iphl:hl], p[it.iphl:hl]
	if binary.BigEndian.Uint32(tp[4:]) != it.nextSeq ||
		binary.NativeEndian.Uint32(tp[8:]) != binary.NativeEndian.Uint32(th[8:]) || // ACK number
		tp[13]&^tcpFlagPSH != th[13]&^tcpFlagCWR || // CWR only on the head
		string(tp[tcpMinLen:]) != string(th[tcpMinLen:]) { // options
		return false
	}
	return true
}

// group fills t.items for the packets bufs[i][offset:]. Packets of the two
// families never share a group: sameFlow tells them apart.
func (t *groTable) group(bufs [][]byte, offset int) {
	t.reset(len(bufs))
	for i := range bufs {
		p := bufs[i][offset:]
		proto, iphl, hl := t.classify(p)
		if proto != 0 && t.verify && !l4ChecksumOK(p, iphl, proto) {
			t.closeFlow(bufs, offset, p)
			t.items = append(t.items, groItem{head: int32(i), tail: int32(i), count: 1})
			continue
		}
		if proto == 0 {
			t.closeFlowOf(bufs, offset, p)
			t.items = append(t.items, groItem{head: int32(i), tail: int32(i), count: 1, valid: true})
			continue
		}
		if t.appendTo(bufs, offset, i, p, hl) {
			continue
		}
		t.start(i, p, proto, iphl, hl)
	}
}

// start makes packet i (protocol proto, header lengths iphl and hl) the
// head of a new group, open for more unless it carries PSH.
func (t *groTable) start(i int, p []byte, proto uint8, iphl, hl int) {
	pl := len(p) - hl
	it := groItem{
		head: int32(i), tail: int32(i), count: 1, payload: int32(pl), gsoSize: int32(pl), hl: int32(hl),
		iphl: uint8(iphl), proto: proto, open: true, valid: true,
	}
	if iphl == ipv4Len {
		it.nextID = binary.BigEndian.Uint16(p[4:]) + 1
	}
	if proto == protoTCP {
		it.nextSeq = binary.BigEndian.Uint32(p[iphl+4:]) + uint32(pl)
		it.open = p[iphl+13]&tcpFlagPSH == 0
		it.lastPSH = !it.open
	}
	t.items = append(t.items, it)
	if it.open {
		if len(t.open) == maxOpen {
			t.items[t.open[0]].open = false
			t.open = append(t.open[:0], t.open[1:]...)
		}
		t.open = append(t.open, int32(len(t.items)-1))
	}
}

// closeFlowOf closes the open group that a TCP or UDP packet p, which may
// not join it, belongs to, so that the flow's order is kept. An IPv6
// packet with extension headers closes every open group between its
// addresses, whatever transport it carries.
func (t *groTable) closeFlowOf(bufs [][]byte, offset int, p []byte) {
	switch {
	case len(p) >= ipv4Len+4 && p[0]>>4 == 4 && (p[9] == protoTCP || p[9] == protoUDP):
		t.closeFlow(bufs, offset, p) // IPv4 options included: SameFlow skips them
	case len(p) >= ipv6Len+4 && p[0]>>4 == 6 && (p[6] == protoTCP || p[6] == protoUDP):
		t.closeFlow(bufs, offset, p)
	case len(p) >= ipv6Len && p[0]>>4 == 6:
		for k := len(t.open) - 1; k >= 0; k-- {
			h := bufs[t.items[t.open[k]].head][offset:]
			if h[0]>>4 == 6 && string(h[8:ipv6Len]) == string(p[8:ipv6Len]) {
				t.closeOpen(k)
			}
		}
	}
}

// appendTo adds packet i to the open group of its flow if it continues
// it; a group of the flow that it does not continue is closed, so that
// the flow's order is kept.
func (t *groTable) appendTo(bufs [][]byte, offset, i int, p []byte, hl int) bool {
	for k := len(t.open) - 1; k >= 0; k-- {
		it := &t.items[t.open[k]]
		head := bufs[it.head][offset:]
		if !sameFlow(head, p) {
			continue
		}
		if !canAppend(it, head, p, hl) {
			t.closeOpen(k)
			return false
		}
		pl := len(p) - hl
		t.next[it.tail] = int32(i)
		it.tail = int32(i)
		it.count++
		it.payload += int32(pl)
		it.nextID++
		if it.proto == protoTCP {
			it.nextSeq += uint32(pl)
			it.lastPSH = p[int(it.iphl)+13]&tcpFlagPSH != 0
		}
		if pl < int(it.gsoSize) || it.lastPSH || it.count == maxCoalesce {
			t.closeOpen(k)
		}
		return true
	}
	return false
}

// closeFlow closes the open group of p's flow, if any.
func (t *groTable) closeFlow(bufs [][]byte, offset int, p []byte) {
	for k := len(t.open) - 1; k >= 0; k-- {
		if sameFlow(bufs[t.items[t.open[k]].head][offset:], p) {
			t.closeOpen(k)
			return
		}
	}
}

func (t *groTable) closeOpen(k int) {
	t.items[t.open[k]].open = false
	t.open = append(t.open[:k], t.open[k+1:]...)
}

// finish turns group it of packets bufs[i][offset:] into a super-packet:
// it rewrites the head's headers in place (IPv4 total length and header
// checksum, or IPv6 payload length) and fills hdr. A single packet only
// gets its header (DATA_VALID when trusted).
func finish(it *groItem, bufs [][]byte, offset int, trust bool, hdr *vnetHdr) {
	*hdr = vnetHdr{}
	if it.count == 1 {
		if trust && it.valid {
			hdr.flags = vnetFlagDataValid
		}
		return
	}
	p := bufs[it.head][offset:]
	iphl := int(it.iphl)
	l4len := int(it.hl) - iphl + int(it.payload)
	tcpGSO := uint8(gsoTCPv4)
	if iphl == ipv6Len {
		binary.BigEndian.PutUint16(p[4:], uint16(l4len))
		tcpGSO = gsoTCPv6
	} else {
		binary.BigEndian.PutUint16(p[2:], uint16(iphl+l4len))
		inet.SetHeaderChecksum(p[:iphl])
	}
	hdr.flags = vnetFlagNeedsCsum
	hdr.hdrLen = uint16(it.hl)
	hdr.gsoSize = uint16(it.gsoSize)
	hdr.csumStart = uint16(iphl)
	if it.proto == protoTCP {
		hdr.gsoType = tcpGSO
		if p[iphl+13]&tcpFlagCWR != 0 {
			hdr.gsoType |= gsoECN
		}
		if it.lastPSH {
			p[iphl+13] |= tcpFlagPSH
		}
		hdr.csumOffset = 16
	} else {
		hdr.gsoType = gsoUDPL4
		binary.BigEndian.PutUint16(p[iphl+4:], uint16(l4len))
		hdr.csumOffset = 6
	}
	// CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
	at := iphl + int(hdr.csumOffset)
	binary.BigEndian.PutUint16(p[at:], inet.Fold(pseudoSum(p, it.proto, l4len)))
}
