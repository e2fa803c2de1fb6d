package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
)

// TC return codes.
const (
	tcOK       = 0
	tcShot     = 2
	tcRedirect = 7
)

// packet6 is a 60-byte IPv6 packet from src to dst with next header nh
// and hop limit hl.
func packet6(src, dst string, nh, hl uint8) []byte {
	p := make([]byte, 60)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	p[6], p[7] = nh, hl
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	for i := 40; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

// datagram6 is datagram carrying inner instead of an IPv4 packet.
func datagram6(inner []byte) []byte {
	frame, v4 := datagram(8285)
	frame = append(frame[:len(frame)-len(v4)], inner...)
	binary.BigEndian.PutUint16(frame[14+2:], uint16(28+len(inner)))
	binary.BigEndian.PutUint16(frame[14+10:], 0)
	binary.BigEndian.PutUint16(frame[14+10:], ipChecksum(frame[14:34]))
	binary.BigEndian.PutUint16(frame[34+4:], uint16(8+len(inner)))
	return frame
}

func counter(t *testing.T, objs *bpfObjects, c bpfCounter) uint64 {
	t.Helper()
	var perCPU []uint64
	if err := objs.Stats.Lookup(uint32(c), &perCPU); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n
}

func putRoute6(t *testing.T, objs *bpfObjects, subnet, peer string) {
	t.Helper()
	if err := objs.Routes6.Put(route6Key(netip.MustParsePrefix(subnet)), be32(netip.MustParseAddr(peer))); err != nil {
		t.Fatal(err)
	}
}

// TestIngressIPv6Handoff: a datagram carrying inner IPv6 TCP is handed to the
// handoff device as VXLAN whose inner frame says IPv6 (0x86DD), the inner
// packet untouched; with the handoff off it is decapsulated into the TUN,
// or, by a kernel without the decap flags, left to the socket.
func TestIngressIPv6Handoff(t *testing.T) {
	objs := ingressProgram(t)
	inner := packet6("2001:db8:100:1::2", "2001:db8:100:2::2", 6, 63)
	frame := datagram6(inner)
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	ret, err := objs.FlannelIngress.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	out := opts.DataOut
	const hdr = 14 + 20 + 8 + 8 + 14
	if ret != tcOK || len(out) != hdr+len(inner) {
		t.Fatalf("program returned %d with %d bytes, want TC_ACT_OK with %d", ret, len(out), hdr+len(inner))
	}
	if dport := binary.BigEndian.Uint16(out[36:]); dport != 8286 {
		t.Errorf("UDP port %d, want the handoff port 8286", dport)
	}
	if proto := binary.BigEndian.Uint16(out[50+12:]); proto != 0x86dd {
		t.Errorf("inner EtherType %#04x, want 0x86dd", proto)
	}
	if !bytes.Equal(out[hdr:], inner) {
		t.Errorf("inner packet changed:\n got % x\nwant % x", out[hdr:], inner)
	}
	if n := counter(t, objs, bpfCounterC_HANDOFF); n != 1 {
		t.Errorf("handoff counter %d, want 1", n)
	}
	if n := counter(t, objs, bpfCounterC_IN_BYTES); n != uint64(len(inner)) {
		t.Errorf("received bytes %d, want %d", n, len(inner))
	}

	if err := objs.HandoffOff.Put(uint32(0), uint32(1)); err != nil {
		t.Fatal(err)
	}
	opts = &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}
	if ret, err = objs.FlannelIngress.Run(opts); err != nil {
		t.Fatal(err)
	}
	if testSettings(t).features&DecapFlags == 0 {
		if ret != tcOK || counter(t, objs, bpfCounterC_PASS_NO_KERNEL_DECAP) != 1 {
			t.Errorf("handoff off, no decap flags: program returned %d (no_kernel_decap %d), want TC_ACT_OK counted once",
				ret, counter(t, objs, bpfCounterC_PASS_NO_KERNEL_DECAP))
		}
		return
	}
	if ret != tcRedirect || !bytes.Equal(opts.DataOut[14:], inner) {
		t.Errorf("handoff off: program returned %d with % x, want TC_ACT_REDIRECT with the inner packet after the Ethernet header", ret, opts.DataOut)
	}
}

// TestIngressIPv6StrictSource: with --strict-source an inner IPv6 source
// must lie in an IPv6 subnet the sender (192.0.2.1) holds.
func TestIngressIPv6StrictSource(t *testing.T) {
	objs := loadPrograms(t, func(s *settings) { s.strict = true })
	putRoute6(t, objs, "2001:db8:100:1::/64", "192.0.2.1")
	putRoute6(t, objs, "2001:db8:100:3::/64", "192.0.2.3")
	for _, tc := range []struct {
		src  string
		want uint32
	}{
		{"2001:db8:100:1::2", tcOK},   // the sender's own subnet: handed over
		{"2001:db8:100:3::2", tcShot}, // another node's subnet
		{"2001:db8:200::2", tcShot},   // no node's subnet
	} {
		frame := datagram6(packet6(tc.src, "2001:db8:100:2::2", 6, 63))
		ret, err := objs.FlannelIngress.Run(&ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)})
		if err != nil {
			t.Fatal(err)
		}
		if ret != tc.want {
			t.Errorf("inner source %s: program returned %d, want %d", tc.src, ret, tc.want)
		}
	}
	if n := counter(t, objs, bpfCounterC_DROP_STRICT); n != 2 {
		t.Errorf("strict source drops %d, want 2", n)
	}
}

// TestEgressIPv6Passes runs the egress program on inner IPv6 it must leave
// to userspace unchanged, each counted under its reason. The test run
// hands the program an Ethernet frame and takes the protocol from bytes
// 12-13, which in an IPv6 header are source address bytes 4-5: sources in
// 2001:db8:86dd::/48 make the kernel see 0x86DD.
func TestEgressIPv6Passes(t *testing.T) {
	objs := loadPrograms(t, func(s *settings) { s.localAddr = netip.MustParseAddr("192.0.2.1") })
	putRoute6(t, objs, "2001:db8:100:2::/64", "192.0.2.2")
	if err := objs.Peers.Put(be32(netip.MustParseAddr("192.0.2.2")), bpfPeer{}); err != nil {
		t.Fatal(err)
	}
	const src = "2001:db8:86dd::2"
	for _, tc := range []struct {
		name    string
		pkt     []byte
		counter bpfCounter
	}{
		{"no route", packet6(src, "2001:db8:100:9::2", 6, 64), bpfCounterC_PASS_NO_ROUTE},
		{"hop limit 1", packet6(src, "2001:db8:100:2::2", 6, 1), bpfCounterC_PASS_TTL},
		{"hop-by-hop options", packet6(src, "2001:db8:100:2::2", 0, 64), bpfCounterC_PASS_NOT_SIMPLE},
		{"fragment header", packet6(src, "2001:db8:100:2::2", 44, 64), bpfCounterC_PASS_NOT_SIMPLE},
		{"peer never answered", packet6(src, "2001:db8:100:2::2", 6, 64), bpfCounterC_PASS_PEER},
	} {
		before := counter(t, objs, tc.counter)
		opts := &ebpf.RunOptions{Data: tc.pkt, DataOut: make([]byte, len(tc.pkt)+64)}
		ret, err := objs.FlannelEgress.Run(opts)
		if err != nil {
			t.Fatal(err)
		}
		if ret != tcOK || !bytes.Equal(opts.DataOut, tc.pkt) {
			t.Errorf("%s: program returned %d with % x, want TC_ACT_OK with the packet unchanged", tc.name, ret, opts.DataOut)
		}
		if n := counter(t, objs, tc.counter) - before; n != 1 {
			t.Errorf("%s: counter %d grew by %d, want 1", tc.name, tc.counter, n)
		}
	}
}
