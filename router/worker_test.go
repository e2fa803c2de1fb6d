package router

import (
	"bytes"
	"encoding/binary"
	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/inet"
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/tun"
	"github.com/google/gopacket/layers"
)

// memQueue is an in-memory tun.Queue for the processing tests; Read and
// Write are never called by them.
type memQueue struct{ batch int }

func (q memQueue) Read([][]byte, []int, int) (int, error) { return 0, nil }
func (q memQueue) Write(b [][]byte, _ int) (int, error)   { return len(b), nil }
func (q memQueue) BatchSize() int                         { return q.batch }
func (q memQueue) Offloads() tun.Offloads                 { return tun.Offloads{} }
func (q memQueue) Close() error                           { return nil }

var (
	ownSubnet = netip.MustParsePrefix("198.18.32.0/24")
	peerA     = netip.MustParseAddr("192.0.2.2")
	peerB     = netip.MustParseAddr("192.0.2.3")
	srcPod    = [4]byte{198, 18, 32, 5}
)

func testWorker(t testing.TB, accept bool) *worker {
	t.Helper()
	r, err := newRouter(Config{
		Network: netip.MustParsePrefix("198.18.0.0/16"), SubnetLen: 24, OwnSubnet: ownSubnet,
		LocalAddr: netip.MustParseAddr("192.0.2.1"), AcceptUnknownPeers: accept, MTU: 1500,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.SetRoutes([]dataplane.Route{{Subnet: netip.MustParsePrefix("198.18.5.0/24"), Peer: peerA}, {Subnet: netip.MustParsePrefix("198.18.68.0/24"), Peer: peerB}})
	w := newWorker(r, 0, memQueue{batch: tun.OffloadBatchSize})
	w.conn = &memConn{}
	r.workers = append(r.workers, w)
	return w
}

// loadTUN puts packets into the worker's TUN read buffers as a Read would.
func loadTUN(w *worker, pkts [][]byte) int {
	for i, p := range pkts {
		w.tunSizes[i] = copy(w.tunBufs[i][off:], p)
	}
	return len(pkts)
}

// mem returns the worker's in-memory connection.
func mem(w *worker) *memConn { return w.conn.(*memConn) }

// readUDP receives what was pushed into the worker's connection into its
// receive messages, as the ingress loop does, and returns the count.
func readUDP(t testing.TB, w *worker) int {
	n, err := w.conn.ReadBatch(w.inMsgs)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// loadUDP receives the datagrams pkts from from[i] through the worker's
// connection.
func loadUDP(t testing.TB, w *worker, from []netip.Addr, pkts [][]byte) int {
	for i := range pkts {
		mem(w).push(memDatagram{parts: pkts[i : i+1], from: from[i]})
	}
	return readUDP(t, w)
}

// pushGRO queues the datagrams pkts as one UDP_GRO message with segment
// size gso.
func pushGRO(w *worker, from netip.Addr, gso int, pkts [][]byte) {
	mem(w).push(memDatagram{parts: pkts, from: from, seg: gso})
}

func TestEgressBatch(t *testing.T) {
	w := testWorker(t, false)
	toA := ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, []byte("to A"))
	toB := ipv4Packet(t, srcPod, [4]byte{198, 18, 68, 9}, layers.IPProtocolTCP, 2, 1, []byte("to B, TTL 2"))
	noRoute := ipv4Packet(t, srcPod, [4]byte{198, 18, 99, 5}, layers.IPProtocolUDP, 64, 0, []byte("nobody"))
	ttl1 := ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 1, 0, []byte("traceroute"))
	noRouteICMPErr := ipv4Packet(t, srcPod, [4]byte{198, 18, 99, 5}, layers.IPProtocolICMPv4, 64, 0, []byte{3, 1, 0, 0, 0, 0, 0, 0})
	ipv6 := bytes.Clone(toA)
	ipv6[0] = 0x60
	short := toA[:12]
	badIHL := bytes.Clone(toA)
	badIHL[0] = 0x43
	badLen := bytes.Clone(toA)
	binary.BigEndian.PutUint16(badLen[2:], 999)

	pkts := [][]byte{toA, noRoute, toB, ttl1, ipv6, short, badIHL, badLen}
	nout, nicmp := w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	if nout != 2 || nicmp != 2 {
		t.Fatalf("nout %d nicmp %d, want 2 and 2", nout, nicmp)
	}
	for i, tc := range []struct {
		orig []byte
		peer netip.Addr
	}{{toA, peerA}, {toB, peerB}} {
		got := w.outMsgs[i].Buffers[0]
		want := bytes.Clone(tc.orig)
		want[8]--
		binary.BigEndian.PutUint16(want[10:12], 0)
		binary.BigEndian.PutUint16(want[10:12], inet.Checksum(want[:int(want[0]&0xf)*4]))
		if !bytes.Equal(got, want) {
			t.Errorf("datagram %d = %x, want %x", i, got, want)
		}
		if to := w.outMsgs[i].Addr; to != netip.AddrPortFrom(tc.peer, DefaultPort) {
			t.Errorf("datagram %d to %s, want %s:%d", i, to, tc.peer, DefaultPort)
		}
		// The datagram points into the TUN buffer: no copy.
		if &got[0] != &w.tunBufs[[]int{0, 2}[i]][off] {
			t.Errorf("datagram %d was copied", i)
		}
	}
	wantICMP := []struct {
		typ, code uint8
		quoted    []byte
	}{{3, 0, noRoute}, {11, 0, ttl1}}
	for i, wi := range wantICMP {
		p := w.icmpOut[i][off:]
		quote := wi.quoted[:min(len(wi.quoted), 28)]
		if p[20] != wi.typ || p[21] != wi.code || netip.AddrFrom4([4]byte(p[12:16])) != ownSubnet.Addr() ||
			[4]byte(p[16:20]) != srcPod || !bytes.Equal(p[28:], quote) {
			t.Errorf("ICMP %d = %x, want type %d code %d quoting %x", i, p, wi.typ, wi.code, quote)
		}
	}
	d := &w.eg.drops
	if d[dropNoRoute].Load() != 1 || d[dropTTLExceeded].Load() != 1 || d[dropNotIPv4].Load() != 1 || d[dropMalformed].Load() != 3 {
		t.Errorf("drops: noroute %d ttl %d notipv4 %d malformed %d, want 1 1 1 3",
			d[dropNoRoute].Load(), d[dropTTLExceeded].Load(), d[dropNotIPv4].Load(), d[dropMalformed].Load())
	}

	// No ICMP about an ICMP error, but the drop is counted.
	_, nicmp = w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{noRouteICMPErr}))
	if nicmp != 0 || d[dropNoRoute].Load() != 2 {
		t.Errorf("ICMP error without route: nicmp %d, drops %d", nicmp, d[dropNoRoute].Load())
	}

	// SetOwnSubnet moves the ICMP source.
	w.r.SetOwnSubnet(netip.MustParsePrefix("198.18.33.0/24"))
	_, nicmp = w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{noRoute}))
	if nicmp != 1 || netip.AddrFrom4([4]byte(w.icmpOut[0][off+12:off+16])) != netip.MustParseAddr("198.18.33.0") {
		t.Errorf("ICMP source after SetOwnSubnet: %x", w.icmpOut[0][off:])
	}
}

func TestEgressICMPRateLimit(t *testing.T) {
	w := testWorker(t, false)
	noRoute := ipv4Packet(t, srcPod, [4]byte{198, 18, 99, 5}, layers.IPProtocolUDP, 64, 0, []byte("nobody"))
	start := time.Now()
	sent := 0
	for range 3 * icmpBurst {
		_, nicmp := w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{noRoute}))
		sent += nicmp
	}
	// The bucket refills at icmpRate while the loop runs: a busy machine
	// may add that many, never more.
	refill := int(time.Since(start).Seconds()*icmpRate) + 1
	if sent < icmpBurst || sent > icmpBurst+refill {
		t.Errorf("%d ICMP errors for %d misses, want the burst %d (+ up to %d refilled)", sent, 3*icmpBurst, icmpBurst, refill)
	}
	if lim := w.eg.icmpLimited.Load(); int(lim)+sent != 3*icmpBurst {
		t.Errorf("rate-limited %d + sent %d != %d", lim, sent, 3*icmpBurst)
	}
}

func TestIngressBatch(t *testing.T) {
	w := testWorker(t, false)
	good := ipv4Packet(t, [4]byte{198, 18, 5, 7}, srcPod, layers.IPProtocolUDP, 63, 0, []byte("from A"))
	padded := append(bytes.Clone(good), 0xee, 0xee)
	ipv6 := bytes.Clone(good)
	ipv6[0] = 0x60
	stranger := netip.MustParseAddr("192.0.2.99")
	from := []netip.Addr{peerA, stranger, peerB, peerA, peerA, peerB}
	pkts := [][]byte{good, good, padded, ipv6, good[:19], good}
	for i := range pkts {
		mem(w).push(memDatagram{parts: pkts[i : i+1], from: from[i], trunc: i == 5})
	}
	n := readUDP(t, w)
	k := w.ingressBatch(w.r.table.Load(), n)
	if k != 2 {
		t.Fatalf("%d packets for the TUN, want 2", k)
	}
	for i := range k {
		if got := w.inWrite[i][off:]; !bytes.Equal(got, good) {
			t.Errorf("packet %d = %x, want %x (TTL untouched, padding cut)", i, got, good)
		}
	}
	d := &w.in.drops
	if d[dropUnknownPeer].Load() != 1 || d[dropNotIPv4].Load() != 1 || d[dropMalformed].Load() != 1 || d[dropOversize].Load() != 1 {
		t.Errorf("drops: unknown %d notipv4 %d malformed %d oversize %d, want 1 each",
			d[dropUnknownPeer].Load(), d[dropNotIPv4].Load(), d[dropMalformed].Load(), d[dropOversize].Load())
	}

	wa := testWorker(t, true)
	n = loadUDP(t, wa, []netip.Addr{stranger}, [][]byte{good})
	if k := wa.ingressBatch(wa.r.table.Load(), n); k != 1 {
		t.Errorf("AcceptUnknownPeers: %d packets, want 1", k)
	}
}

func TestStatsSum(t *testing.T) {
	w := testWorker(t, false)
	w2 := newWorker(w.r, 1, memQueue{batch: 4})
	w2.conn = &memConn{}
	w.r.workers = append(w.r.workers, w2)
	w.eg.packets.Add(3)
	w2.eg.packets.Add(4)
	w2.in.bytes.Add(100)
	w.in.drop(dropUnknownPeer)
	w2.eg.drop(dropSendError)
	w2.in.drop(dropTunWriteError)
	s := w.r.Stats()
	if s.TxPackets != 7 || s.RxBytes != 100 || s.Drops[dropUnknownPeer] != 1 || s.Drops[dropSendError] != 1 || s.Drops[dropTunWriteError] != 1 {
		t.Errorf("Stats = %+v", s)
	}
}

// checkBatchAllocs fails t if routing an egress batch (toA and one
// noRoute packet) or an ingress batch of toA from peer allocates; it
// returns the table it routed with.
func checkBatchAllocs(t *testing.T, w *worker, toA, noRoute []byte, peer netip.Addr) *table {
	t.Helper()
	eg := [][]byte{toA, toA, noRoute, toA, toA, toA, toA, toA}
	in := make([][]byte, udpBatch)
	from := make([]netip.Addr, udpBatch)
	for i := range in {
		in[i], from[i] = toA, peer
	}
	tab := w.r.table.Load()
	if a := testing.AllocsPerRun(200, func() {
		n := loadTUN(w, eg)
		w.egressBatch(tab, n)
	}); a != 0 {
		t.Errorf("egressBatch: %v allocations per batch", a)
	}
	if a := testing.AllocsPerRun(200, func() {
		n := loadUDP(t, w, from, in)
		w.ingressBatch(tab, n)
	}); a != 0 {
		t.Errorf("ingressBatch: %v allocations per batch", a)
	}
	return tab
}

func TestZeroAllocs(t *testing.T) {
	w := testWorker(t, false)
	toA := ipv4Packet(t, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, make([]byte, 1400))
	noRoute := ipv4Packet(t, srcPod, [4]byte{198, 18, 99, 5}, layers.IPProtocolUDP, 64, 0, []byte("x"))
	tab := checkBatchAllocs(t, w, toA, noRoute, peerA)
	if a := testing.AllocsPerRun(1000, func() { tab.lookup(0xc6120507) }); a != 0 {
		t.Errorf("lookup: %v allocations", a)
	}
}

func TestIngressStrictSource(t *testing.T) {
	w := testWorker(t, false)
	w.r.cfg.StrictSource = true
	dst := [4]byte{198, 18, 32, 7}
	fromA := ipv4Packet(t, [4]byte{198, 18, 5, 9}, dst, layers.IPProtocolUDP, 63, 0, []byte("A's pod"))
	spoofB := ipv4Packet(t, [4]byte{198, 18, 68, 9}, dst, layers.IPProtocolUDP, 63, 0, []byte("B's pod, sent by A"))
	outside := ipv4Packet(t, [4]byte{203, 0, 113, 9}, dst, layers.IPProtocolUDP, 63, 0, []byte("NodePort client"))
	own := ipv4Packet(t, [4]byte{198, 18, 32, 9}, dst, layers.IPProtocolUDP, 63, 0, []byte("our own pod"))
	n := loadUDP(t, w, []netip.Addr{peerA, peerA, peerA, peerA}, [][]byte{fromA, spoofB, outside, own})
	if k := w.ingressBatch(w.r.table.Load(), n); k != 1 || !bytes.Equal(w.inWrite[0][off:], fromA) {
		t.Fatalf("%d packets for the TUN, want only A's own pod's", k)
	}
	if got := w.in.drops[dropStrictSource].Load(); got != 3 {
		t.Fatalf("strict_source drops %d, want 3", got)
	}

	// Off (the default), the NodePort-style packet is delivered.
	w = testWorker(t, false)
	n = loadUDP(t, w, []netip.Addr{peerA}, [][]byte{outside})
	if k := w.ingressBatch(w.r.table.Load(), n); k != 1 {
		t.Fatalf("without StrictSource: %d packets, want 1", k)
	}
}

// Egress slots are sized for what they carry: the first takes a 64 KB
// super-packet read in place, the others one packet of the MTU.
// TestRouterWireFormat sends a super-packet through them.
func TestTUNSlots(t *testing.T) {
	bufs := tunSlots(tun.OffloadBatchSize, 1472)
	total := 0
	for i, b := range bufs {
		want := off + 1472
		if i == 0 {
			want = off + maxDatagram
		}
		if len(b) != want || cap(b) != want {
			t.Fatalf("slot %d: %d bytes (cap %d), want %d", i, len(b), cap(b), want)
		}
		total += len(b)
	}
	if len(bufs) != tun.OffloadBatchSize || total > 300<<10 {
		t.Errorf("%d slots, %d bytes", len(bufs), total)
	}
	// Without a known MTU every slot takes the largest packet.
	for i, b := range tunSlots(4, 0) {
		if len(b) != off+maxDatagram {
			t.Errorf("no MTU: slot %d has %d bytes", i, len(b))
		}
	}
}
