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
	protoTCP     = 6
	protoUDP     = 17
	ipv4Len      = 20 // header without options
	tcpMinLen    = 20
	udpLen       = 8
	tcpFlagFIN   = 0x01
	tcpFlagSYN   = 0x02
	tcpFlagRST   = 0x04
	tcpFlagPSH   = 0x08
	tcpFlagACK   = 0x10
	tcpFlagURG   = 0x20
	tcpFlagECE   = 0x40
	tcpFlagCWR   = 0x80
	maxIPv4Total = 65535
)

// ErrDropped is wrapped by the errors of Queue.Read that dropped one
// malformed packet; the queue stays usable.
var ErrDropped = errors.New("packet dropped")

var (
	errShortVnet    = errors.New("read shorter than the virtio-net header")
	errBadGSO       = errors.New("malformed GSO super-packet")
	errBadCsum      = errors.New("checksum offsets outside the packet")
	errTooManySegs  = errors.New("GSO super-packet has more segments than buffers")
	errSegmentSpace = errors.New("buffer too small for a segment")
)

// completeChecksum finishes a CHECKSUM_PARTIAL packet: the field at
// start+offset holds the pseudo-header sum, and the checksum covers
// everything from start on. start and offset are 16-bit header fields, so
// they are never negative.
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

// splitGSO turns the packet p read from the TUN with the virtio-net
// header h into ordinary IPv4 packets, segment i in bufs[i][offset:].
// When p is bufs[0][offset:] the first segment stays in place; otherwise
// (a packet read into the queue's spare buffer) it is copied too.
// sizes[i] gets the length of segment i. It returns the number of
// packets. It changes nothing, neither p nor bufs, when it fails, so a
// packet refused with errTooManySegs may be split later into more
// buffers.
//
// A GSO packet is cut at h.gsoSize bytes of L4 payload, as the kernel's
// own segmentation would: every segment gets the full headers, an IP ID
// one higher than the previous one, its own IP total length and header
// checksum, and its TCP sequence number or UDP length; the L4 checksum is
// computed for every segment because the wire format carries complete
// packets. FIN and PSH stay on the last TCP segment only, CWR on the first
// only. Non-IPv4 GSO packets are returned unsplit for the caller to drop.
func splitGSO(h *vnetHdr, p []byte, bufs [][]byte, sizes []int, offset int) (int, error) {
	gso := h.gsoType &^ gsoECN
	if gso == gsoNone || len(p) < ipv4Len || p[0]>>4 != 4 {
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
	iphl := int(p[0]&0xf) * 4
	if iphl < ipv4Len || iphl > len(p) {
		return 0, errBadGSO
	}
	var l4hl int
	switch {
	case gso == gsoTCPv4 && p[9] == protoTCP:
		if iphl+tcpMinLen > len(p) {
			return 0, errBadGSO
		}
		l4hl = int(p[iphl+12]>>4) * 4
		if l4hl < tcpMinLen {
			return 0, errBadGSO
		}
	case gso == gsoUDPL4 && p[9] == protoUDP:
		l4hl = udpLen
	default:
		return 0, errBadGSO
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
	isTCP := p[9] == protoTCP
	id := binary.BigEndian.Uint16(p[4:6])
	var seq uint32
	var flags uint8
	if isTCP {
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
		ip := seg[:iphl]
		binary.BigEndian.PutUint16(ip[2:], uint16(len(seg)))
		binary.BigEndian.PutUint16(ip[4:], id+uint16(i))
		inet.SetHeaderChecksum(ip)
		l4 := seg[iphl:]
		if isTCP {
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
			binary.BigEndian.PutUint16(l4[16:], ^inet.Fold(inet.Sum16(l4, inet.PseudoSum(ip, protoTCP, len(l4)))))
		} else {
			binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
			l4[6], l4[7] = 0, 0
			c := ^inet.Fold(inet.Sum16(l4, inet.PseudoSum(ip, protoUDP, len(l4))))
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
	hl         int32 // IPv4 + L4 header length of the head
	proto      uint8 // protoTCP or protoUDP for a coalescable group, 0 for a single
	open       bool
	lastPSH    bool
	valid      bool   // a single whose checksum may be marked DATA_VALID
	nextSeq    uint32 // TCP sequence number the next member must have
	nextID     uint16 // IP ID the next member must have
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

// l4ChecksumOK verifies the TCP or UDP checksum of the IPv4 packet p with
// a 20-byte header.
func l4ChecksumOK(p []byte) bool {
	if p[9] == protoUDP && p[26] == 0 && p[27] == 0 {
		return true // sent without a checksum
	}
	l4 := p[ipv4Len:]
	return inet.Fold(inet.Sum16(l4, inet.PseudoSum(p, p[9], len(l4)))) == 0xffff
}

// classify returns the protocol a packet may be coalesced under (0 if it
// may not) and its header length. A coalescable packet is IPv4 without
// options, not a fragment, exactly as long as its total length, with a
// non-empty TCP or UDP payload; TCP needs ACK and none of SYN, RST, URG or
// FIN.
func (t *groTable) classify(p []byte) (proto uint8, hl int) {
	if len(p) < ipv4Len+udpLen || p[0] != 0x45 || int(binary.BigEndian.Uint16(p[2:])) != len(p) ||
		binary.BigEndian.Uint16(p[6:])&0x3fff != 0 {
		return 0, 0
	}
	switch p[9] {
	case protoTCP:
		if !t.tcp || len(p) < ipv4Len+tcpMinLen {
			return 0, 0
		}
		thl := int(p[ipv4Len+12]>>4) * 4
		hl = ipv4Len + thl
		f := p[ipv4Len+13]
		if thl < tcpMinLen || hl >= len(p) || f&tcpFlagACK == 0 ||
			f&(tcpFlagSYN|tcpFlagRST|tcpFlagURG|tcpFlagFIN) != 0 {
			return 0, 0
		}
		return protoTCP, hl
	case protoUDP:
		hl = ipv4Len + udpLen
		if !t.udp || hl >= len(p) || int(binary.BigEndian.Uint16(p[24:])) != len(p)-ipv4Len {
			return 0, 0
		}
		return protoUDP, hl
	}
	return 0, 0
}

// canAppend tells whether p (header length hl) continues the group it of
// the same flow exactly as the kernel's GRO would merge it.
func canAppend(it *groItem, head, p []byte, hl int) bool {
	pl := len(p) - hl
	if !it.open || it.count >= maxCoalesce || int(it.hl) != hl || pl > int(it.gsoSize) ||
		int(it.hl+it.payload)+pl > maxIPv4Total ||
		binary.BigEndian.Uint16(p[4:]) != it.nextID ||
		p[1] != head[1] || p[8] != head[8] || p[6]&0xe0 != head[6]&0xe0 {
		return false
	}
	if it.proto == protoUDP {
		return true
	}
	th, tp := head[ipv4Len:hl], p[ipv4Len:hl]
	if binary.BigEndian.Uint32(tp[4:]) != it.nextSeq ||
		binary.NativeEndian.Uint32(tp[8:]) != binary.NativeEndian.Uint32(th[8:]) || // ACK number
		tp[13]&^tcpFlagPSH != th[13]&^tcpFlagCWR || // CWR only on the head
		string(tp[tcpMinLen:]) != string(th[tcpMinLen:]) { // options
		return false
	}
	return true
}

// group fills t.items for the packets bufs[i][offset:].
func (t *groTable) group(bufs [][]byte, offset int) {
	t.reset(len(bufs))
	for i := range bufs {
		p := bufs[i][offset:]
		proto, hl := t.classify(p)
		if proto != 0 && t.verify && !l4ChecksumOK(p) {
			t.closeFlow(bufs, offset, p)
			t.items = append(t.items, groItem{head: int32(i), tail: int32(i), count: 1})
			continue
		}
		if proto == 0 {
			if len(p) >= ipv4Len+4 && p[0] == 0x45 && (p[9] == protoTCP || p[9] == protoUDP) {
				t.closeFlow(bufs, offset, p)
			}
			t.items = append(t.items, groItem{head: int32(i), tail: int32(i), count: 1, valid: true})
			continue
		}
		if t.appendTo(bufs, offset, i, p, hl) {
			continue
		}
		pl := len(p) - hl
		it := groItem{
			head: int32(i), tail: int32(i), count: 1, payload: int32(pl), gsoSize: int32(pl), hl: int32(hl),
			proto: proto, open: true, valid: true, nextID: binary.BigEndian.Uint16(p[4:]) + 1,
		}
		if proto == protoTCP {
			it.nextSeq = binary.BigEndian.Uint32(p[ipv4Len+4:]) + uint32(pl)
			it.open = p[ipv4Len+13]&tcpFlagPSH == 0
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
}

// appendTo adds packet i to the open group of its flow if it continues
// it; a group of the flow that it does not continue is closed, so that
// the flow's order is kept.
func (t *groTable) appendTo(bufs [][]byte, offset, i int, p []byte, hl int) bool {
	for k := len(t.open) - 1; k >= 0; k-- {
		it := &t.items[t.open[k]]
		head := bufs[it.head][offset:]
		if !inet.SameFlow(head, p) {
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
			it.lastPSH = p[ipv4Len+13]&tcpFlagPSH != 0
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
		if inet.SameFlow(bufs[t.items[t.open[k]].head][offset:], p) {
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
// it rewrites the head's headers in place and fills hdr. A single packet
// only gets its header (DATA_VALID when trusted).
func finish(it *groItem, bufs [][]byte, offset int, trust bool, hdr *vnetHdr) {
	*hdr = vnetHdr{}
	if it.count == 1 {
		if trust && it.valid {
			hdr.flags = vnetFlagDataValid
		}
		return
	}
	p := bufs[it.head][offset:]
	l4len := int(it.hl) - ipv4Len + int(it.payload)
	binary.BigEndian.PutUint16(p[2:], uint16(ipv4Len+l4len))
	inet.SetHeaderChecksum(p[:ipv4Len])
	hdr.flags = vnetFlagNeedsCsum
	hdr.hdrLen = uint16(it.hl)
	hdr.gsoSize = uint16(it.gsoSize)
	hdr.csumStart = ipv4Len
	if it.proto == protoTCP {
		hdr.gsoType = gsoTCPv4
		if p[ipv4Len+13]&tcpFlagCWR != 0 {
			hdr.gsoType |= gsoECN
		}
		if it.lastPSH {
			p[ipv4Len+13] |= tcpFlagPSH
		}
		hdr.csumOffset = 16
	} else {
		hdr.gsoType = gsoUDPL4
		binary.BigEndian.PutUint16(p[ipv4Len+4:], uint16(l4len))
		hdr.csumOffset = 6
	}
	// CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum.
	at := ipv4Len + int(hdr.csumOffset)
	binary.BigEndian.PutUint16(p[at:], inet.Fold(inet.PseudoSum(p, it.proto, l4len)))
}
