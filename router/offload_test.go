package router

import (
	"bytes"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// udpTo builds an inner UDP packet of exactly size bytes from srcPod to dst.
func udpTo(t testing.TB, dst [4]byte, size int) []byte {
	return ipv4Packet(t, srcPod, dst, layers.IPProtocolUDP, 64, 0, make([]byte, size-20))
}

var (
	podA = [4]byte{198, 18, 5, 7}
	podB = [4]byte{198, 18, 68, 9}
)

// msgDesc describes one message to send: its peer and its packets.
type msgDesc struct {
	peer netip.Addr
	segs int
}

func msgsOf(w *worker) []msgDesc {
	var out []msgDesc
	for _, m := range w.outMsgs[:w.outN] {
		if m.Addr.Port() != DefaultPort {
			return nil
		}
		out = append(out, msgDesc{peer: m.Addr.Addr(), segs: len(m.Buffers)})
	}
	return out
}

// Each run of packets to one peer becomes one message, which the
// connection sends as GSO trains (their limits are package udp's tests).
func TestEgressRuns(t *testing.T) {
	w := testWorker(t, false)
	var pkts [][]byte
	for range 46 {
		pkts = append(pkts, udpTo(t, podA, 1472))
	}
	pkts = append(pkts, udpTo(t, podA, 500), udpTo(t, podB, 1472), udpTo(t, podB, 1472), udpTo(t, podA, 1472))
	nout, _ := w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	if nout != len(pkts) {
		t.Fatalf("%d packets to send, want %d", nout, len(pkts))
	}
	want := []msgDesc{{peerA, 47}, {peerB, 2}, {peerA, 1}}
	if got := msgsOf(w); !slices.Equal(got, want) {
		t.Fatalf("messages %+v, want %+v", got, want)
	}
	// Each packet is a slice of its TUN buffer: no copy.
	k := 0
	for i := range w.outN {
		for _, b := range w.outMsgs[i].Buffers {
			if &b[0] != &w.tunBufs[k][off] || len(b) != len(pkts[k]) {
				t.Fatalf("message %d: packet %d is not its TUN buffer", i, k)
			}
			k++
		}
	}
}

func TestIngressGRO(t *testing.T) {
	w := testWorker(t, false)
	in := func(size int, tag byte) []byte {
		p := ipv4Packet(t, podA, srcPod, layers.IPProtocolUDP, 63, 0, bytes.Repeat([]byte{tag}, size-20))
		return p
	}
	train := [][]byte{in(1400, 1), in(1400, 2), in(700, 3)}
	bad := bytes.Clone(in(1400, 5))
	bad[0] = 0x65
	train2 := [][]byte{in(1400, 4), bad, in(1400, 6)}
	single := in(300, 7)
	pushGRO(w, peerA, 1400, train)
	mem(w).push(memDatagram{parts: [][]byte{single}, from: peerA})
	pushGRO(w, peerA, 1400, train2)
	pushGRO(w, netip.MustParseAddr("192.0.2.99"), 1400, train)

	k := w.ingressBatch(w.r.table.Load(), readUDP(t, w))
	// The single datagram's flow has no train in the batch: it goes first.
	want := [][]byte{single, train[0], train[1], train[2], train2[0], train2[2]}
	if k != len(want) {
		t.Fatalf("%d packets, want %d", k, len(want))
	}
	for i := range want {
		if got := w.inWrite[i][off:]; !bytes.Equal(got, want[i]) {
			t.Errorf("packet %d = %x..., want %x...", i, got[:28], want[i][:28])
		}
	}
	// Packets of a train stay in the receive buffer, back to back.
	if &w.inWrite[2][off] != &w.inBufs[0][off+1400] {
		t.Error("the second packet of the train was copied")
	}
	if d := &w.in.drops; d[dropNotIPv4].Load() != 1 || d[dropUnknownPeer].Load() != 1 {
		t.Errorf("drops: not IPv4 %d, unknown peer %d; want 1 and 1", d[dropNotIPv4].Load(), d[dropUnknownPeer].Load())
	}
}

// recorder is a Tap that keeps copies.
type recorder struct {
	mu   sync.Mutex
	dirs []dataplane.Direction
	pkts [][]byte
}

func (r *recorder) Capture(d dataplane.Direction, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dirs = append(r.dirs, d)
	r.pkts = append(r.pkts, bytes.Clone(p))
}

func TestTap(t *testing.T) {
	w := testWorker(t, false)
	rec := &recorder{}
	w.r.SetTap(rec)
	toA := udpTo(t, podA, 200)
	noRoute := udpTo(t, [4]byte{198, 18, 99, 5}, 100)
	w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{toA, noRoute}))
	inA := ipv4Packet(t, podA, srcPod, layers.IPProtocolUDP, 63, 0, make([]byte, 100))
	pushGRO(w, peerA, len(inA), [][]byte{inA, inA})
	w.ingressBatch(w.r.table.Load(), readUDP(t, w))
	wantDirs := []dataplane.Direction{dataplane.Out, dataplane.Out, dataplane.In, dataplane.In}
	wantPkts := [][]byte{toA, noRoute, inA, inA}
	if len(rec.dirs) != len(wantDirs) {
		t.Fatalf("captured %v, want %v", rec.dirs, wantDirs)
	}
	for i := range wantDirs {
		if rec.dirs[i] != wantDirs[i] || !bytes.Equal(rec.pkts[i], wantPkts[i]) {
			t.Errorf("capture %d: %v %x, want %v %x", i, rec.dirs[i], rec.pkts[i], wantDirs[i], wantPkts[i])
		}
	}
	w.r.SetTap(nil)
	w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{toA}))
	if len(rec.dirs) != len(wantDirs) {
		t.Error("captured after SetTap(nil)")
	}
}

func TestOffloadsReport(t *testing.T) {
	w := testWorker(t, false)
	w.r.offloads = Offloads{TUNVnetHdr: true, TUNTSO: true, UDPGSO: true, UDPGRO: true}
	mem(w).gso = true
	if o := w.r.Stats().Offloads; !o.UDPGSO || !o.TUNTSO || o.TUNUSO {
		t.Errorf("Stats().Offloads = %+v", o)
	}
	mem(w).gso = false // as after EIO
	if o := w.r.Offloads(); o.UDPGSO || !o.UDPGRO {
		t.Errorf("after GSO was turned off: %+v", o)
	}
}

func TestOffloadZeroAllocs(t *testing.T) {
	w := testWorker(t, false)
	var eg [][]byte
	for range 46 {
		eg = append(eg, udpTo(t, podA, 1472))
	}
	inA := ipv4Packet(t, podA, srcPod, layers.IPProtocolUDP, 63, 0, make([]byte, 1400))
	train := [][]byte{inA, inA, inA, inA, inA, inA, inA, inA}
	tab := w.r.table.Load()
	if a := testing.AllocsPerRun(200, func() {
		n := loadTUN(w, eg)
		w.egressBatch(tab, n)
	}); a != 0 {
		t.Errorf("egressBatch with trains: %v allocations per batch", a)
	}
	if a := testing.AllocsPerRun(200, func() {
		for range udpBatch {
			pushGRO(w, peerA, len(inA), train)
		}
		w.ingressBatch(tab, readUDP(t, w))
	}); a != 0 {
		t.Errorf("ingressBatch with GRO trains: %v allocations per batch", a)
	}
}

// A message the connection refuses with an errno that is not about GSO is
// dropped and counted, and the worker goes on with the next one.
func TestSendError(t *testing.T) {
	w := testWorker(t, false)
	mem(w).failTrains = unix.EPERM
	pkts := [][]byte{udpTo(t, podB, 300)}
	for range 10 {
		pkts = append(pkts, udpTo(t, podA, 1000))
	}
	pkts = append(pkts, udpTo(t, podB, 200))
	w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	if err := w.send(); err != nil {
		t.Fatal(err)
	}
	if d := w.eg.drops[dropSendError].Load(); d != 10 || w.eg.packets.Load() != 2 || w.eg.bytes.Load() != 500 {
		t.Errorf("%d dropped, %d sent (%d bytes); want 10 and 2 (500 bytes)", d, w.eg.packets.Load(), w.eg.bytes.Load())
	}
	want := []SyscallError{{Op: "sendmmsg", Errno: "EPERM", Count: 1}}
	if got := w.r.Stats().SyscallErrors; !slices.Equal(got, want) {
		t.Errorf("syscall errors %v, want %v", got, want)
	}
}

// A single datagram of a flow that also has a train in the batch keeps its
// place: reordering a bulk flow would look like loss to TCP.
func TestIngressSparseFirstKeepsFlowOrder(t *testing.T) {
	w := testWorker(t, false)
	pkt := func(size int, tag byte) []byte {
		return ipv4Packet(t, podA, srcPod, layers.IPProtocolUDP, 63, 0, bytes.Repeat([]byte{tag}, size-20))
	}
	train := [][]byte{pkt(1400, 1), pkt(1400, 1)}
	tail := pkt(600, 1)  // same ports (payload bytes): same flow as the train
	other := pkt(100, 9) // another flow
	pushGRO(w, peerA, 1400, train)
	for _, p := range [][]byte{tail, other} {
		mem(w).push(memDatagram{parts: [][]byte{p}, from: peerA})
	}
	k := w.ingressBatch(w.r.table.Load(), readUDP(t, w))
	want := [][]byte{other, train[0], train[1], tail}
	if k != len(want) {
		t.Fatalf("%d packets, want %d", k, len(want))
	}
	for i := range want {
		if got := w.inWrite[i][off:]; !bytes.Equal(got, want[i]) {
			t.Errorf("packet %d = %x..., want %x...", i, got[:28], want[i][:28])
		}
	}
}
