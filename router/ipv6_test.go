package router

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/inet"
	"github.com/flannel-go/flannel-go/internal/probe"
	"github.com/flannel-go/flannel-go/tun"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	ownSubnet6 = netip.MustParsePrefix("2001:db8:100:20::/64")
	src6       = netip.MustParseAddr("2001:db8:100:20::5")
	dstA6      = netip.MustParseAddr("2001:db8:100:5::7")  // peerA's subnet
	dstB6      = netip.MustParseAddr("2001:db8:100:44::9") // peerB's subnet
	noRoute6   = netip.MustParseAddr("2001:db8:100:63::5")
	// The IPv6 underlay's addresses.
	local6 = netip.MustParseAddr("2001:db8:1::1")
	peerA6 = netip.MustParseAddr("2001:db8:1::2")
	peerB6 = netip.MustParseAddr("2001:db8:1::3")
)

// sentProbe is a probe datagram the prober's stub sender recorded.
type sentProbe struct {
	msg [probe.Len]byte
	to  netip.AddrPort
}

// dualWorker returns a worker of a dual-stack router (IPv4-only with
// noV4) on an IPv4 underlay, or on an IPv6 one with underlay6, with routes
// to peerA and peerB for both families, and the probes it sends.
func dualWorker(t testing.TB, underlay6, noV4 bool) (*worker, *[]sentProbe) {
	t.Helper()
	cfg := Config{
		IPv6Network: netip.MustParsePrefix("2001:db8:100::/48"), IPv6SubnetLen: 64, OwnIPv6Subnet: ownSubnet6,
		LocalAddr: netip.MustParseAddr("192.0.2.1"), MTU: 1500,
	}
	if !noV4 {
		cfg.Network, cfg.SubnetLen, cfg.OwnSubnet = netip.MustParsePrefix("198.18.0.0/16"), 24, ownSubnet
	}
	a, b := peerA, peerB
	if underlay6 {
		cfg.LocalAddr, a, b = local6, peerA6, peerB6
	}
	r, err := newRouter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var sent []sentProbe
	r.sendProbe = func(m []byte, to netip.AddrPort) error {
		sent = append(sent, sentProbe{[probe.Len]byte(m), to})
		return nil
	}
	r.SetRoutes([]dataplane.Route{
		{Subnet: netip.MustParsePrefix("198.18.5.0/24"), Peer: a},
		{Subnet: netip.MustParsePrefix("198.18.68.0/24"), Peer: b},
		{Subnet: netip.MustParsePrefix("2001:db8:100:5::/64"), Peer: a},
		{Subnet: netip.MustParsePrefix("2001:db8:100:44::/64"), Peer: b},
	})
	w := newWorker(r, 0, memQueue{batch: tun.OffloadBatchSize})
	w.conn = &memConn{}
	r.workers = append(r.workers, w)
	return w, &sent
}

// ipv6Packet builds a valid IPv6 packet with the given next header, hop
// limit, traffic class and payload.
func ipv6Packet(t testing.TB, src, dst netip.Addr, nh layers.IPProtocol, hop, tc uint8, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: hop, NextHeader: nh, TrafficClass: tc, FlowLabel: 0x12345,
		SrcIP: net.IP(src.AsSlice()), DstIP: net.IP(dst.AsSlice())}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, ip, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return bytes.Clone(buf.Bytes())
}

// wantICMPv6 builds with gopacket the ICMPv6 error the router should send
// about offender: an independent check of layout and checksum.
func wantICMPv6(t testing.TB, from netip.Addr, typ, code uint8, offender []byte) []byte {
	t.Helper()
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: net.IP(from.AsSlice()), DstIP: net.IP(offender[8:24])}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, code)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	quote := offender[:min(len(offender), 1280-48)]
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, icmp, gopacket.Payload(append(make([]byte, 4), quote...)))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestEgressIPv6(t *testing.T) {
	w, _ := dualWorker(t, false, false)
	toA := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte("to A"))
	toB := ipv6Packet(t, src6, dstB6, layers.IPProtocolTCP, 2, 0, []byte("to B, hop limit 2"))
	v4 := ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, []byte("v4 to A"))
	noRoute := ipv6Packet(t, src6, noRoute6, layers.IPProtocolUDP, 64, 0, []byte("nobody"))
	hop1 := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 1, 0, []byte("traceroute"))
	big := ipv6Packet(t, src6, noRoute6, layers.IPProtocolUDP, 64, 0, make([]byte, 1400))
	padded := append(bytes.Clone(toA), 0xee, 0xee)
	short := toA[:39]
	badLen := bytes.Clone(toA)
	binary.BigEndian.PutUint16(badLen[4:], 999)
	v5 := bytes.Clone(toA)
	v5[0] = 0x50

	pkts := [][]byte{toA, noRoute, toB, hop1, v4, big, padded, short, badLen, v5}
	nout, nicmp := w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	if nout != 4 || nicmp != 3 {
		t.Fatalf("nout %d nicmp %d, want 4 and 3", nout, nicmp)
	}
	// Sparse flows go first, so look the packets up by content.
	dec := func(p []byte) []byte {
		p = bytes.Clone(p)
		if p[0]>>4 == 6 {
			p[7]--
		} else {
			p[8]--
			binary.BigEndian.PutUint16(p[10:12], 0)
			binary.BigEndian.PutUint16(p[10:12], inet.Checksum(p[:20]))
		}
		return p
	}
	want := map[string]netip.Addr{}
	for _, wp := range []struct {
		p    []byte
		peer netip.Addr
	}{{toA, peerA}, {toB, peerB}, {v4, peerA}} {
		want[string(dec(wp.p))] = wp.peer
	}
	count := 0
	for _, m := range w.outMsgs[:w.outN] {
		for _, b := range m.Buffers {
			count++
			if peer, ok := want[string(b)]; !ok || m.Addr != netip.AddrPortFrom(peer, DefaultPort) {
				t.Errorf("sent %x to %s: not a packet expected there (hop limit lowered, padding cut)", b, m.Addr)
			}
		}
	}
	if count != 4 {
		t.Errorf("%d packets in the messages, want 4", count)
	}
	for i, wi := range []struct {
		typ, code uint8
		offender  []byte
	}{{1, 0, noRoute}, {3, 0, hop1}, {1, 0, big}} {
		got := w.icmpOut[i][off:]
		if want := wantICMPv6(t, ownSubnet6.Addr(), wi.typ, wi.code, wi.offender); !bytes.Equal(got, want) {
			t.Errorf("ICMPv6 %d =\n%x\nwant\n%x", i, got, want)
		}
	}
	if l := len(w.icmpOut[2]) - off; l != 1280 {
		t.Errorf("ICMPv6 about a 1448-byte packet has %d bytes, want 1280", l)
	}
	d := &w.eg.drops
	if d[dropNoRoute].Load() != 2 || d[dropTTLExceeded].Load() != 1 || d[dropMalformed].Load() != 3 {
		t.Errorf("drops: noroute %d hop limit %d malformed %d, want 2 1 3",
			d[dropNoRoute].Load(), d[dropTTLExceeded].Load(), d[dropMalformed].Load())
	}

	// No ICMPv6 error about an ICMPv6 error, nor about a packet to a
	// multicast address; an echo request gets one.
	errMsg := ipv6Packet(t, src6, noRoute6, layers.IPProtocolICMPv6, 64, 0, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	mcast := ipv6Packet(t, src6, netip.MustParseAddr("ff02::1"), layers.IPProtocolUDP, 64, 0, []byte("all"))
	echo := ipv6Packet(t, src6, noRoute6, layers.IPProtocolICMPv6, 64, 0, []byte{128, 0, 0, 0, 0, 0, 0, 0})
	if _, nicmp := w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{errMsg, mcast, echo})); nicmp != 1 {
		t.Errorf("%d ICMPv6 errors, want 1 (about the echo request)", nicmp)
	}

	// SetOwnIPv6Subnet moves the ICMPv6 source.
	w.r.SetOwnIPv6Subnet(netip.MustParsePrefix("2001:db8:100:21::/64"))
	_, nicmp = w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{noRoute}))
	if nicmp != 1 || netip.AddrFrom16([16]byte(w.icmpOut[0][off+8:off+24])) != netip.MustParseAddr("2001:db8:100:21::") {
		t.Errorf("ICMPv6 source after SetOwnIPv6Subnet: %x", w.icmpOut[0][off:])
	}
}

func TestEgressIPv6Underlay(t *testing.T) {
	w, _ := dualWorker(t, true, true)
	toA := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte("to A"))
	v4 := ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, []byte("no IPv4 here"))
	nout, nicmp := w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{toA, v4}))
	if nout != 1 || nicmp != 0 || w.outMsgs[0].Addr != netip.AddrPortFrom(peerA6, DefaultPort) {
		t.Fatalf("nout %d nicmp %d to %s, want one datagram to %s", nout, nicmp, w.outMsgs[0].Addr, peerA6)
	}
	if err := w.send(); err != nil || mem(w).sent[0] != 1 {
		t.Fatalf("send: %v, sent %v", err, mem(w).sent)
	}
	if got := w.eg.drops[dropNotIPv6].Load(); got != 1 {
		t.Errorf("not_ipv6 drops %d, want 1", got)
	}
}

func TestIngressIPv6(t *testing.T) {
	for _, underlay6 := range []bool{false, true} {
		w, _ := dualWorker(t, underlay6, false)
		a, b := peerA, peerB
		if underlay6 {
			a, b = peerA6, peerB6
		}
		w.r.cfg.StrictSource = true
		good := ipv6Packet(t, dstA6, src6, layers.IPProtocolUDP, 63, 0, []byte("from A"))
		padded := append(bytes.Clone(good), 0xee)
		spoof := ipv6Packet(t, dstB6, src6, layers.IPProtocolUDP, 63, 0, []byte("B's pod, sent by A"))
		outside := ipv6Packet(t, netip.MustParseAddr("2001:db8:ffff::1"), src6, layers.IPProtocolUDP, 63, 0, []byte("outside"))
		v4 := ipv4Packet(t, [4]byte{198, 18, 68, 7}, srcPod, layers.IPProtocolUDP, 63, 0, []byte("v4 from B"))
		stranger := netip.MustParseAddr("2001:db8:1::99")
		from := []netip.Addr{a, a, a, a, b, stranger, a}
		pkts := [][]byte{good, padded, spoof, outside, v4, good, good[:30]}
		n := loadUDP(t, w, from, pkts)
		if k := w.ingressBatch(w.r.table.Load(), n); k != 3 {
			t.Fatalf("underlay6=%v: %d packets for the TUN, want 3", underlay6, k)
		}
		for i, want := range [][]byte{good, good, v4} {
			if got := w.inWrite[i][off:]; !bytes.Equal(got, want) {
				t.Errorf("underlay6=%v: packet %d = %x, want %x", underlay6, i, got, want)
			}
		}
		d := &w.in.drops
		if d[dropStrictSource].Load() != 2 || d[dropUnknownPeer].Load() != 1 || d[dropMalformed].Load() != 1 {
			t.Errorf("underlay6=%v: drops strict %d unknown %d malformed %d, want 2 1 1", underlay6,
				d[dropStrictSource].Load(), d[dropUnknownPeer].Load(), d[dropMalformed].Load())
		}
	}
}

func TestIngressIPv6OnIPv4OnlyRouter(t *testing.T) {
	w := testWorker(t, false)
	p := ipv6Packet(t, dstA6, src6, layers.IPProtocolUDP, 63, 0, []byte("from A"))
	n := loadUDP(t, w, []netip.Addr{peerA}, [][]byte{p})
	if k := w.ingressBatch(w.r.table.Load(), n); k != 0 || w.in.drops[dropNotIPv4].Load() != 1 {
		t.Errorf("%d packets, not_ipv4 %d: an IPv4-only router drops IPv6 as not_ipv4", k, w.in.drops[dropNotIPv4].Load())
	}
	// Nor does it answer IPv6 probes: it carries no IPv6.
	ask := probeMsg(probe.IPv6Ask, 7)
	n = loadUDP(t, w, []netip.Addr{peerA}, [][]byte{ask[:]})
	if k := w.ingressBatch(w.r.table.Load(), n); k != 0 || w.in.drops[dropMalformed].Load() != 1 {
		t.Errorf("probe on an IPv4-only router: %d packets, malformed %d, want dropped as malformed", k, w.in.drops[dropMalformed].Load())
	}
}

func TestIPv6AQMMarksTrafficClass(t *testing.T) {
	ect := ipv6Packet(t, src6, dstA6, layers.IPProtocolTCP, 64, 0x02, []byte("ECT(0)")) // DSCP 0, ECN 2
	if !markCE(ect) || ect[0]&0x0f != 0 || ect[1]>>4 != 3 {
		t.Errorf("ECT(0) packet after markCE: % x, want traffic class 0x03", ect[:2])
	}
	notECT := ipv6Packet(t, src6, dstA6, layers.IPProtocolTCP, 64, 0xb8, []byte("EF, not ECT"))
	if before := bytes.Clone(notECT); markCE(notECT) || !bytes.Equal(before, notECT) {
		t.Error("markCE marked or changed a packet that is not ECN-capable")
	}
	dscp := ipv6Packet(t, src6, dstA6, layers.IPProtocolTCP, 64, 0xb9, []byte("EF, ECT(1)"))
	if !markCE(dscp) || dscp[0]&0x0f != 0xb || dscp[1]>>4 != 0xb {
		t.Errorf("EF ECT(1) after markCE: % x, want traffic class 0xbb", dscp[:2])
	}
}

func TestFlowHashIPv6(t *testing.T) {
	a := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte{0, 1, 0, 2, 9, 9, 9, 9})
	b := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte{0, 1, 0, 2, 7, 7})
	c := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte{0, 1, 0, 3, 9, 9, 9, 9})
	if flowHash(a) != flowHash(b) || !sameFlow(a, b) {
		t.Error("two packets of one flow hash apart or differ")
	}
	if sameFlow(a, c) || sameFlow(a, ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, a[40:])) {
		t.Error("sameFlow confuses flows")
	}
	distinct := map[uint8]bool{}
	for i := range 64 {
		p := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte{0, 1, byte(i), 2})
		distinct[flowHash(p)] = true
	}
	if len(distinct) < 32 {
		t.Errorf("64 flows hash to %d buckets", len(distinct))
	}
}

func TestZeroAllocsIPv6(t *testing.T) {
	w, _ := dualWorker(t, true, false)
	toA := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, make([]byte, 1400))
	noRoute := ipv6Packet(t, src6, noRoute6, layers.IPProtocolUDP, 64, 0, []byte("x"))
	tab := checkBatchAllocs(t, w, toA, noRoute, peerA6)
	dst := dstA6.As16()
	if a := testing.AllocsPerRun(1000, func() { tab.lookup6(dst[:]) }); a != 0 {
		t.Errorf("lookup6: %v allocations", a)
	}
}

// TestIPv6ProbeAnswer: an ask from a peer is answered to its cluster port
// with the nonce echoed; an answer matching the last ask makes the peer
// capable; asks and answers from strangers do nothing.
func TestIPv6ProbeAnswer(t *testing.T) {
	w, sent := dualWorker(t, true, false)
	ask := probeMsg(probe.IPv6Ask, 0x1122334455667788)
	stranger := netip.MustParseAddr("2001:db8:1::99")
	n := loadUDP(t, w, []netip.Addr{peerA6, stranger}, [][]byte{ask[:], ask[:]})
	if k := w.ingressBatch(w.r.table.Load(), n); k != 0 {
		t.Fatalf("%d probes reached the TUN", k)
	}
	if len(*sent) != 1 || (*sent)[0].to != netip.AddrPortFrom(peerA6, DefaultPort) ||
		(*sent)[0].msg != probeMsg(probe.IPv6Answer, 0x1122334455667788) {
		t.Fatalf("sent %v, want one answer to %s", *sent, peerA6)
	}
	if w.in.drops[dropUnknownPeer].Load() != 1 {
		t.Error("the stranger's ask was not dropped as unknown_peer")
	}

	// The prober asks A and B (the peers with IPv6 subnets).
	*sent = (*sent)[:0]
	w.r.probe.Step(w.r.ipv6Targets(), 0)
	if len(*sent) != 2 {
		t.Fatalf("first step sent %d asks, want 2", len(*sent))
	}
	var nonceA uint64
	for _, s := range *sent {
		if probe.Type(s.msg[7]) != probe.IPv6Ask || s.to.Port() != DefaultPort {
			t.Fatalf("ask %x to %s", s.msg, s.to)
		}
		if s.to.Addr() == peerA6 {
			nonceA = binary.BigEndian.Uint64(s.msg[8:])
		}
	}
	wrong := probeMsg(probe.IPv6Answer, nonceA+1)
	right := probeMsg(probe.IPv6Answer, nonceA)
	n = loadUDP(t, w, []netip.Addr{peerA6, stranger}, [][]byte{wrong[:], right[:]})
	w.ingressBatch(w.r.table.Load(), n)
	if c, k := w.r.PeerIPv6Capable(peerA6); c || k {
		t.Errorf("after a wrong nonce and a stranger's answer: capable %v known %v, want unknown", c, k)
	}
	n = loadUDP(t, w, []netip.Addr{peerA6}, [][]byte{right[:]})
	w.ingressBatch(w.r.table.Load(), n)
	if c, k := w.r.PeerIPv6Capable(peerA6); !c || !k {
		t.Errorf("after the answer: capable %v known %v", c, k)
	}
}

// TestIPv6ProbeTiming drives the prober with its clock: a silent peer is
// asked at doubling intervals, refused IPv6 after probeMisses asks (with an
// ICMPv6 unreachable and a peer_no_ipv6 drop), asked on at most every
// ipv6Timing.Interval, and carries IPv6 again once it answers.
func TestIPv6ProbeTiming(t *testing.T) {
	w, sent := dualWorker(t, false, false)
	p, tab := w.r.probe, w.r.table.Load()
	var asks []time.Duration // asks to A
	now, incapableAt := time.Duration(0), time.Duration(-1)
	for now < 30*time.Second {
		next := p.Step(w.r.ipv6Targets(), now)
		for _, s := range *sent {
			if s.to.Addr() == peerA {
				asks = append(asks, now)
			} else {
				// B answers every ask.
				n := loadUDP(t, w, []netip.Addr{peerB}, [][]byte{func() []byte {
					a := probeMsg(probe.IPv6Answer, binary.BigEndian.Uint64(s.msg[8:]))
					return a[:]
				}()})
				w.ingressBatch(tab, n)
			}
		}
		*sent = (*sent)[:0]
		if _, known := w.r.PeerIPv6Capable(peerA); known && incapableAt < 0 {
			incapableAt = now
		}
		if next <= now {
			t.Fatalf("step at %v wants to run again at %v", now, next)
		}
		now = next
	}
	if incapableAt < 500*time.Millisecond || incapableAt > 2*time.Second {
		t.Errorf("silent peer refused after %v, want about a second", incapableAt)
	}
	for i := 1; i < len(asks); i++ {
		if gap := asks[i] - asks[i-1]; gap < ipv6Timing.FirstRetry || gap > ipv6Timing.Interval {
			t.Errorf("asks %d and %d to the silent peer %v apart", i-1, i, gap)
		}
	}
	if last := asks[len(asks)-1] - asks[len(asks)-2]; last != ipv6Timing.Interval {
		t.Errorf("silent peer asked every %v in the end, want %v", last, ipv6Timing.Interval)
	}
	if c, k := w.r.PeerIPv6Capable(peerB); !c || !k {
		t.Errorf("answering peer: capable %v known %v", c, k)
	}
	if c, k := w.r.PeerIPv6Capable(peerA); c || !k {
		t.Errorf("silent peer: capable %v known %v", c, k)
	}

	// IPv6 to the silent peer: refused with an ICMPv6 unreachable; IPv4
	// to it and IPv6 to B go on.
	toA := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte("to A"))
	toB := ipv6Packet(t, src6, dstB6, layers.IPProtocolUDP, 64, 0, []byte("to B"))
	v4 := ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, []byte("v4 to A"))
	nout, nicmp := w.egressBatch(tab, loadTUN(w, [][]byte{toA, toB, v4}))
	if nout != 2 || nicmp != 1 || w.eg.drops[dropPeerNoIPv6].Load() != 1 {
		t.Fatalf("nout %d nicmp %d peer_no_ipv6 %d, want 2 1 1", nout, nicmp, w.eg.drops[dropPeerNoIPv6].Load())
	}
	if got, want := w.icmpOut[0][off:], wantICMPv6(t, ownSubnet6.Addr(), 1, 0, toA); !bytes.Equal(got, want) {
		t.Errorf("ICMPv6 = %x, want %x", got, want)
	}
	if w.r.Stats().Drops[dropPeerNoIPv6] != 1 {
		t.Error("Stats misses the peer_no_ipv6 drop")
	}

	// A upgrades: it answers its next ask (within ipv6Timing.Interval) and
	// carries IPv6 again.
	for end := now + ipv6Timing.Interval; now <= end && incapable(w, peerA); {
		next := p.Step(w.r.ipv6Targets(), now)
		for _, s := range *sent {
			a := probeMsg(probe.IPv6Answer, binary.BigEndian.Uint64(s.msg[8:]))
			w.ingressBatch(tab, loadUDP(t, w, []netip.Addr{s.to.Addr()}, [][]byte{a[:]}))
		}
		*sent = (*sent)[:0]
		now = next
	}
	if c, k := w.r.PeerIPv6Capable(peerA); !c || !k {
		t.Errorf("upgraded peer: capable %v known %v", c, k)
	}
	if nout, _ := w.egressBatch(tab, loadTUN(w, [][]byte{toA})); nout != 1 {
		t.Error("IPv6 to the upgraded peer still refused")
	}

	// A falls silent again (replaced by an upstream node at the same
	// address): refused at most a period and about 2 s later, when its
	// next ask goes unanswered, not a period after that.
	silentFrom := now
	for now < silentFrom+2*ipv6Timing.Interval && !incapable(w, peerA) {
		now = p.Step(w.r.ipv6Targets(), now)
		*sent = (*sent)[:0]
	}
	if d := now - silentFrom; !incapable(w, peerA) || d > ipv6Timing.Interval+3*time.Second {
		t.Errorf("peer that stopped answering still carried IPv6 %v later", d)
	}
}

func incapable(w *worker, peer netip.Addr) bool {
	c, k := w.r.PeerIPv6Capable(peer)
	return k && !c
}

// TestPeerStateSurvivesSetRoutes: a peer's capability outlives table
// rebuilds while it keeps a route, and is forgotten when it loses them.
func TestPeerStateSurvivesSetRoutes(t *testing.T) {
	w, _ := dualWorker(t, false, false)
	r := w.r
	tab := r.table.Load()
	tab.info[tab.sender(peerA)-1].state.Store(ipv6Incapable)
	routes := []dataplane.Route{{Subnet: netip.MustParsePrefix("2001:db8:100:5::/64"), Peer: peerA}, {Subnet: netip.MustParsePrefix("2001:db8:100:6::/64"), Peer: peerB}}
	r.SetRoutes(routes)
	if c, k := r.PeerIPv6Capable(peerA); c || !k {
		t.Errorf("after SetRoutes: capable %v known %v, want known incapable", c, k)
	}
	r.SetRoutes(routes[1:])
	r.SetRoutes(routes)
	if _, k := r.PeerIPv6Capable(peerA); k {
		t.Error("a peer that lost its routes kept its state")
	}
}

type recTap struct{ got []string }

func (r *recTap) Capture(dir dataplane.Direction, pkt []byte) {
	r.got = append(r.got, dir.String()+" "+string(pkt))
}

func TestTapSeesIPv6(t *testing.T) {
	w, _ := dualWorker(t, false, false)
	tap := &recTap{}
	w.r.SetTap(tap)
	out := ipv6Packet(t, src6, dstA6, layers.IPProtocolUDP, 64, 0, []byte("out"))
	in := ipv6Packet(t, dstA6, src6, layers.IPProtocolUDP, 63, 0, []byte("in"))
	w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{out}))
	ask := probeMsg(probe.IPv6Ask, 1)
	w.ingressBatch(w.r.table.Load(), loadUDP(t, w, []netip.Addr{peerA, peerA}, [][]byte{in, ask[:]}))
	if len(tap.got) != 2 || tap.got[0] != "out "+string(out) || tap.got[1] != "in "+string(in) {
		t.Errorf("tap got %q", tap.got)
	}
}

// With AcceptUnknownPeers, a stranger holds no subnet: StrictSource drops
// all its packets, of both families, as before peers became indexes.
func TestStrictSourceUnknownPeer(t *testing.T) {
	w, _ := dualWorker(t, false, false)
	w.r.cfg.AcceptUnknownPeers, w.r.cfg.StrictSource = true, true
	v6 := ipv6Packet(t, netip.MustParseAddr("2001:db8:ffff::1"), src6, layers.IPProtocolUDP, 63, 0, []byte("outside"))
	v4 := ipv4Packet(t, [4]byte{203, 0, 113, 9}, srcPod, layers.IPProtocolUDP, 63, 0, []byte("outside"))
	stranger := netip.MustParseAddr("192.0.2.99")
	n := loadUDP(t, w, []netip.Addr{stranger, stranger}, [][]byte{v6, v4})
	if k := w.ingressBatch(w.r.table.Load(), n); k != 0 || w.in.drops[dropStrictSource].Load() != 2 {
		t.Errorf("%d packets passed, strict_source %d, want 0 and 2", k, w.in.drops[dropStrictSource].Load())
	}
}

// TestForgetPeersAsksAtOnce: a peer that took a new lease is asked at the
// prober's next step instead of a period later; the others are not.
func TestForgetPeersAsksAtOnce(t *testing.T) {
	w, sent := dualWorker(t, false, false)
	p, tab := w.r.probe, w.r.table.Load()
	now := time.Duration(0)
	for now < time.Second {
		next := p.Step(w.r.ipv6Targets(), now)
		for _, s := range *sent {
			a := probeMsg(probe.IPv6Answer, binary.BigEndian.Uint64(s.msg[8:]))
			w.ingressBatch(tab, loadUDP(t, w, []netip.Addr{s.to.Addr()}, [][]byte{a[:]}))
		}
		*sent = (*sent)[:0]
		now = next
	}
	// Both answered; the next asks are a period away.
	if next := p.Step(w.r.ipv6Targets(), now); next-now < ipv6Timing.Interval/2 {
		t.Fatalf("after answers the prober wants to run in %v", next-now)
	}
	*sent = (*sent)[:0]
	w.r.ForgetPeers([]netip.Addr{peerA})
	p.Step(w.r.ipv6Targets(), now+time.Millisecond)
	if len(*sent) != 1 || (*sent)[0].to.Addr() != peerA {
		t.Fatalf("after ForgetPeers(A) the prober sent %v, want one ask to %s", *sent, peerA)
	}
	if c, k := w.r.PeerIPv6Capable(peerA); !c || !k {
		t.Errorf("a forgotten peer lost its capability before missing an ask: capable %v known %v", c, k)
	}
}

// probeMsg is a probe on the wire.
func probeMsg(typ probe.Type, nonce uint64) [probe.Len]byte {
	return probe.Message{Type: typ, Nonce: nonce}.Marshal()
}

// isProbe tells whether d is a probe.
func isProbe(d []byte) bool {
	_, ok := probe.Parse(d)
	return ok
}
