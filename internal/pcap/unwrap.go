package pcap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// Link types of underlay captures (LINKTYPE_* values). gopacket's
// layers.LinkType is a uint8, too small for LINKTYPE_LINUX_SLL2, so the
// header's link type is read here, not through pcapgo.Reader.LinkType.
const (
	linkEthernet  uint32 = 1
	linkRaw       uint32 = 101
	linkLinuxSLL  uint32 = 113
	linkIPv4      uint32 = 228
	linkLinuxSLL2 uint32 = 276
)

// maxFileSnapLen bounds the per-packet buffer the reader allocates, whatever
// a (possibly corrupt) file header claims. It is tcpdump's own maximum.
const maxFileSnapLen = 262144

// pcapngMagic starts every pcapng file (a Section Header Block).
var pcapngMagic = []byte{0x0a, 0x0d, 0x0d, 0x0a}

// UnwrapStats counts what Unwrap did with the underlay capture's frames.
type UnwrapStats struct {
	Frames    int // frames read
	Packets   int // inner packets written
	Skipped   int // not IPv4/UDP to the flannel port
	Fragments int // IPv4 fragments of an outer datagram, which cannot be unwrapped alone
	Malformed int // headers that contradict each other or the frame length
}

// verdict is what decapsulate made of a frame.
type verdict uint8

const (
	verdictInner verdict = iota
	verdictSkip
	verdictFragment
	verdictMalformed
)

// Unwrap reads a classic pcap capture of the underlay (Ethernet, Linux
// cooked SLL or SLL2, or raw IP) from r and writes to w a raw-IP pcap of the
// inner packets carried in UDP datagrams to port, with the outer frames'
// timestamps and timestamp resolution.
func Unwrap(r io.Reader, w io.Writer, port int) (UnwrapStats, error) {
	var st UnwrapStats
	if port < 1 || port > 65535 {
		return st, fmt.Errorf("port %d: want 1 to 65535", port)
	}
	br := bufio.NewReader(r)
	hdr, err := br.Peek(24)
	if err != nil {
		return st, fmt.Errorf("read pcap header: %w", err)
	}
	if string(hdr[:4]) == string(pcapngMagic) {
		return st, errors.New("the input is pcapng, which is not supported: convert it with `editcap -F pcap IN OUT` or capture with `tcpdump -w`")
	}
	lt, nanos, err := parseFileHeader(hdr)
	if err != nil {
		return st, err
	}
	switch lt {
	case linkEthernet, linkLinuxSLL, linkLinuxSLL2, linkRaw, linkIPv4:
	default:
		return st, fmt.Errorf("link type %d is not supported: capture on an Ethernet interface, on \"any\" (Linux cooked) or on a raw-IP device", lt)
	}
	pr, err := pcapgo.NewReader(br)
	if err != nil {
		return st, fmt.Errorf("read pcap header: %w", err)
	}
	if s := pr.Snaplen(); s == 0 || s > maxFileSnapLen {
		pr.SetSnaplen(maxFileSnapLen)
	}
	pw := pcapgo.NewWriter(w)
	if nanos {
		pw = pcapgo.NewWriterNanos(w)
	}
	if err := pw.WriteFileHeader(pr.Snaplen(), LinkType); err != nil {
		return st, fmt.Errorf("write pcap header: %w", err)
	}
	for {
		frame, ci, err := pr.ZeroCopyReadPacketData()
		if errors.Is(err, io.EOF) {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("read frame %d: %w", st.Frames+1, err)
		}
		st.Frames++
		off, end, orig, v := decapsulate(lt, frame, ci.CaptureLength < ci.Length, uint16(port))
		switch v {
		case verdictSkip:
			st.Skipped++
			continue
		case verdictFragment:
			st.Fragments++
			continue
		case verdictMalformed:
			st.Malformed++
			continue
		}
		inner := frame[off:end]
		out := gopacket.CaptureInfo{Timestamp: ci.Timestamp, CaptureLength: len(inner), Length: orig}
		if err := pw.WritePacket(out, inner); err != nil {
			return st, fmt.Errorf("write inner packet of frame %d: %w", st.Frames, err)
		}
		st.Packets++
	}
}

// parseFileHeader reads the link type and the timestamp resolution from a
// classic pcap file header.
func parseFileHeader(h []byte) (linkType uint32, nanos bool, err error) {
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(h[0:4]) {
	case 0xa1b2c3d4:
		bo = binary.LittleEndian
	case 0xd4c3b2a1:
		bo = binary.BigEndian
	case 0xa1b23c4d:
		bo, nanos = binary.LittleEndian, true
	case 0x4d3cb2a1:
		bo, nanos = binary.BigEndian, true
	default:
		return 0, false, fmt.Errorf("not a pcap file (magic %x); write the capture with `tcpdump -w`", h[0:4])
	}
	// The upper bits hold the FCS length and flags (pcap-linktype(7)).
	return bo.Uint32(h[20:24]) & 0x0fffffff, nanos, nil
}

// decapsulate finds the UDP payload of a flannel datagram in frame: it is
// frame[off:end], and orig bytes long before any truncation. truncated says
// the capture cut the frame short, which makes a short frame legitimate.
func decapsulate(lt uint32, frame []byte, truncated bool, port uint16) (off, end, orig int, v verdict) {
	ip, ok := networkOffset(lt, frame)
	if !ok {
		return 0, 0, 0, verdictSkip
	}
	if len(frame)-ip < 20 {
		if truncated {
			return 0, 0, 0, verdictSkip
		}
		return 0, 0, 0, verdictMalformed
	}
	h := frame[ip:]
	if h[0]>>4 != 4 {
		return 0, 0, 0, verdictSkip
	}
	ihl := int(h[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(h[2:4]))
	if ihl < 20 || total < ihl {
		return 0, 0, 0, verdictMalformed
	}
	if h[9] != uint8(layers.IPProtocolUDP) {
		return 0, 0, 0, verdictSkip
	}
	if frag := binary.BigEndian.Uint16(h[6:8]); frag&0x3fff != 0 {
		// More-fragments set or a non-zero offset.
		return 0, 0, 0, verdictFragment
	}
	if len(h) < total && !truncated {
		return 0, 0, 0, verdictMalformed
	}
	// Ethernet pads short frames: the IPv4 total length says where the
	// packet ends.
	h = h[:min(len(h), total)]
	if len(h) < ihl+8 {
		if truncated {
			return 0, 0, 0, verdictSkip
		}
		return 0, 0, 0, verdictMalformed
	}
	udp := h[ihl:]
	if binary.BigEndian.Uint16(udp[2:4]) != port {
		return 0, 0, 0, verdictSkip
	}
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < 8 || ulen > total-ihl {
		return 0, 0, 0, verdictMalformed
	}
	if ulen == 8 {
		return 0, 0, 0, verdictMalformed // no inner packet at all
	}
	off = ip + ihl + 8
	end = min(ip+ihl+ulen, ip+len(h))
	return off, end, ulen - 8, verdictInner
}

// networkOffset returns where the IPv4 header starts in a frame of link
// type lt, or false when the frame carries something else.
func networkOffset(lt uint32, frame []byte) (int, bool) {
	var off int
	var proto uint16
	switch lt {
	case linkRaw, linkIPv4:
		return 0, true
	case linkEthernet:
		off = 14
		if len(frame) < off {
			return 0, false
		}
		proto = binary.BigEndian.Uint16(frame[12:14])
		// Up to two VLAN tags (802.1Q, 802.1ad QinQ).
		for range 2 {
			if proto != uint16(layers.EthernetTypeDot1Q) && proto != uint16(layers.EthernetTypeQinQ) && proto != 0x9100 {
				break
			}
			if len(frame) < off+4 {
				return 0, false
			}
			proto = binary.BigEndian.Uint16(frame[off+2 : off+4])
			off += 4
		}
	case linkLinuxSLL:
		off = 16
		if len(frame) < off {
			return 0, false
		}
		proto = binary.BigEndian.Uint16(frame[14:16])
	case linkLinuxSLL2:
		off = 20
		if len(frame) < off {
			return 0, false
		}
		proto = binary.BigEndian.Uint16(frame[0:2])
	default:
		return 0, false
	}
	return off, proto == uint16(layers.EthernetTypeIPv4)
}
