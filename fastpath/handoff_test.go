package fastpath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// ingressProgram loads the ingress program for local address 192.0.2.2,
// flannel port 8285 and a handoff device on 8286, taking datagrams from
// anyone.
func ingressProgram(t *testing.T) *bpfObjects {
	t.Helper()
	return loadPrograms(t, nil)
}

// testSettings are ingressProgram's settings, with the features of the
// running kernel (or those FASTPATH_VARIANT names).
func testSettings(t *testing.T) settings {
	t.Helper()
	feats, err := ProbeFeatures()
	if err != nil {
		t.Fatal(err)
	}
	if v := os.Getenv("FASTPATH_VARIANT"); v != "" {
		want, err := ParseVariant(v)
		if err != nil {
			t.Fatal(err)
		}
		feats &= want
	}
	return settings{
		localAddr:     netip.MustParseAddr("192.0.2.2"),
		port:          8285,
		handoffPort:   8286,
		acceptUnknown: true,
		features:      feats,
	}
}

// loadPrograms loads both programs with ingressProgram's settings, changed
// by change.
func loadPrograms(t *testing.T, change func(*settings)) *bpfObjects {
	t.Helper()
	testbed.RequireRoot(t)
	s := testSettings(t)
	if change != nil {
		change(&s)
	}
	var objs bpfObjects
	if err := loadObjects(s, &objs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	return &objs
}

// datagram is an Ethernet frame from 192.0.2.1 to 192.0.2.2:dport
// carrying a 40-byte inner IPv4 TCP packet, and that inner packet.
func datagram(dport uint16) (frame, inner []byte) {
	return datagramProto(dport, 6)
}

// datagramProto is datagram with inner IP protocol proto.
func datagramProto(dport uint16, proto byte) (frame, inner []byte) {
	inner = make([]byte, 40)
	inner[0] = 0x45
	binary.BigEndian.PutUint16(inner[2:], uint16(len(inner)))
	inner[8], inner[9] = 64, proto
	copy(inner[12:], []byte{198, 18, 1, 2})
	copy(inner[16:], []byte{198, 18, 2, 2})
	return udpFrame(dport, inner), inner
}

// udpFrame is an Ethernet frame from 192.0.2.1:8285 to 192.0.2.2:dport
// carrying payload, the outer UDP checksum zero.
func udpFrame(dport uint16, payload []byte) []byte {
	frame := make([]byte, 14+28, 14+28+len(payload))
	copy(frame, []byte{2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00})
	ip := frame[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(28+len(payload)))
	ip[8], ip[9] = 64, 17
	copy(ip[12:], []byte{192, 0, 2, 1})
	copy(ip[16:], []byte{192, 0, 2, 2})
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 8285)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	return append(frame, payload...)
}

// skbMark is struct __sk_buff as a test run passes it in and out: its
// head up to mark, the rest zero (room for the whole struct out).
type skbMark struct {
	Len, PktType, Mark uint32
	_                  [61]uint32
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// TestIngressHandoff runs the ingress program on a datagram: it must come
// out as VXLAN for the handoff device (same outer addresses, port 8286,
// lengths and header checksum right, inner frame to the device's MAC),
// the inner packet untouched, and go on to the stack. Once the watchdog
// turned the handoff off, the program decapsulates into the TUN itself.
func TestIngressHandoff(t *testing.T) {
	objs := ingressProgram(t)
	frame, inner := datagram(8285)
	var skb skbMark
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64), Context: skbMark{}, ContextOut: &skb}
	ret, err := objs.FlannelIngress.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	out := opts.DataOut
	if ret != 0 { // TC_ACT_OK
		t.Fatalf("program returned %d, want TC_ACT_OK", ret)
	}
	// The guard lets only datagrams with this mark reach the device.
	if skb.Mark != handoffMark {
		t.Errorf("handed-off datagram has mark %#x, want %#x", skb.Mark, handoffMark)
	}
	const hdr = 14 + 20 + 8 + 8 + 14
	if len(out) != hdr+len(inner) {
		t.Fatalf("output %d bytes, want %d", len(out), hdr+len(inner))
	}
	ip := out[14:34]
	if got := binary.BigEndian.Uint16(ip[2:]); int(got) != len(out)-14 {
		t.Errorf("outer total length %d, want %d", got, len(out)-14)
	}
	if ipChecksum(ip) != 0 {
		t.Errorf("outer IPv4 header checksum is wrong: % x", ip)
	}
	if !bytes.Equal(ip[12:20], frame[26:34]) {
		t.Errorf("outer addresses % x, want % x", ip[12:20], frame[26:34])
	}
	udp := out[34:42]
	if dport, ulen := binary.BigEndian.Uint16(udp[2:]), binary.BigEndian.Uint16(udp[4:]); dport != 8286 || int(ulen) != len(out)-34 {
		t.Errorf("UDP port %d length %d, want 8286 and %d", dport, ulen, len(out)-34)
	}
	if vx := out[42:50]; vx[0] != 0x08 {
		t.Errorf("VXLAN header % x lacks the I flag", vx)
	}
	eth := out[50:64]
	if !bytes.Equal(eth[:6], handoffMAC) || bytes.Equal(eth[6:12], handoffMAC) || binary.BigEndian.Uint16(eth[12:]) != 0x0800 {
		t.Errorf("inner Ethernet header % x: want to %s, from another address, IPv4", eth, handoffMAC)
	}
	if !bytes.Equal(out[hdr:], inner) {
		t.Errorf("inner packet changed:\n got % x\nwant % x", out[hdr:], inner)
	}
	var perCPU []uint64
	if err := objs.Stats.Lookup(uint32(bpfCounterC_HANDOFF), &perCPU); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	if n != 1 {
		t.Errorf("handoff counter %d, want 1", n)
	}

	if err := objs.HandoffOff.Put(uint32(0), uint32(1)); err != nil {
		t.Fatal(err)
	}
	skb = skbMark{}
	opts = &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64), Context: skbMark{}, ContextOut: &skb}
	if ret, err = objs.FlannelIngress.Run(opts); err != nil {
		t.Fatal(err)
	}
	out = opts.DataOut
	if ret != 7 { // TC_ACT_REDIRECT to the TUN
		t.Fatalf("handoff off: program returned %d, want TC_ACT_REDIRECT", ret)
	}
	if skb.Mark != 0 {
		t.Errorf("handoff off: decapsulated packet has mark %#x, want none", skb.Mark)
	}
	if !bytes.Equal(out[14:], inner) {
		t.Errorf("handoff off: output % x, want the inner packet after the Ethernet header", out)
	}
}

// TestIngressDropsHandoffPort: a datagram for the handoff port from the
// underlay is dropped and counted.
func TestIngressDropsHandoffPort(t *testing.T) {
	objs := ingressProgram(t)
	frame, _ := datagram(8286)
	ret, err := objs.FlannelIngress.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatal(err)
	}
	if ret != 2 { // TC_ACT_SHOT
		t.Fatalf("program returned %d, want TC_ACT_SHOT", ret)
	}
}

// TestIngressDirect: single UDP, ICMP and ICMPv6 packets skip the handoff
// device (decapsulated and redirected into the TUN); TCP does not. The
// variants without __sk_buff.gso_size send everything to the device, and
// those without the decap flags inner IPv6. (BPF_PROG_TEST_RUN cannot
// make a UDP super-packet: it sets no gso_type, without which
// bpf_skb_adjust_room refuses any GSO packet.)
func TestIngressDirect(t *testing.T) {
	objs := ingressProgram(t)
	feats := testSettings(t).features
	direct4, direct6 := uint32(tcOK), uint32(tcOK)
	if feats&GSOSize != 0 {
		direct4 = tcRedirect
		if feats&DecapFlags != 0 {
			direct6 = tcRedirect
		}
	}
	udp, udpInner := datagramProto(8285, 17)
	icmp, icmpInner := datagramProto(8285, 1)
	tcp, tcpInner := datagram(8285)
	icmp6Inner := packet6("2001:db8:100:1::2", "2001:db8:100:2::2", 58, 63)
	tcp6Inner := packet6("2001:db8:100:1::2", "2001:db8:100:2::2", 6, 63)
	for _, tc := range []struct {
		name         string
		frame, inner []byte
		want         uint32
	}{
		{"UDP", udp, udpInner, direct4},
		{"ICMP", icmp, icmpInner, direct4},
		{"ICMPv6", datagram6(icmp6Inner), icmp6Inner, direct6},
		{"TCP", tcp, tcpInner, tcOK},
		{"IPv6 TCP", datagram6(tcp6Inner), tcp6Inner, tcOK},
	} {
		opts := &ebpf.RunOptions{Data: tc.frame, DataOut: make([]byte, len(tc.frame)+64)}
		ret, err := objs.FlannelIngress.Run(opts)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ret != tc.want {
			t.Errorf("%s: program returned %d, want %d", tc.name, ret, tc.want)
			continue
		}
		out := opts.DataOut
		if ret == tcRedirect {
			if !bytes.Equal(out[14:], tc.inner) {
				t.Errorf("%s: output % x, want the inner packet after the Ethernet header", tc.name, out)
			}
		} else if dport := binary.BigEndian.Uint16(out[36:]); dport != 8286 || !bytes.Equal(out[64:], tc.inner) {
			t.Errorf("%s: UDP port %d, want the handoff port 8286 and the inner packet after 64 bytes", tc.name, dport)
		}
	}
}
