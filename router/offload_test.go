//go:build linux

package router

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"unsafe"

	"github.com/google/gopacket/layers"
	"golang.org/x/sys/unix"
)

// udpTo builds an inner UDP packet of exactly size bytes from srcPod to dst.
func udpTo(t testing.TB, dst [4]byte, size int) []byte {
	return ipv4Packet(t, srcPod, dst, layers.IPProtocolUDP, 64, 0, make([]byte, size-20))
}

var (
	podA = [4]byte{198, 18, 5, 7}
	podB = [4]byte{198, 18, 68, 9}
)

// msgsOf describes outMsgs[:outN] as (peer, segments, gso size) triples.
type msgDesc struct {
	peer netip.Addr
	segs int
	gso  int // 0: no UDP_SEGMENT control message
}

func msgsOf(w *worker) []msgDesc {
	var out []msgDesc
	for i := range w.outN {
		h := &w.outMsgs[i].Hdr
		d := msgDesc{peer: netip.AddrFrom4(w.outNames[i].Addr), segs: int(h.Iovlen)}
		if h.Controllen > 0 {
			ctl := unsafe.Slice(h.Control, h.Controllen)
			c := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
			if c.Level != unix.SOL_UDP || c.Type != unix.UDP_SEGMENT || int(c.Len) != unix.CmsgLen(2) {
				return nil
			}
			d.gso = int(binary.NativeEndian.Uint16(ctl[unix.CmsgLen(0):]))
		}
		out = append(out, d)
	}
	return out
}

func TestEgressTrains(t *testing.T) {
	w := testWorker(t, false)
	w.r.gso.Store(true)
	var pkts [][]byte
	for range 46 {
		pkts = append(pkts, udpTo(t, podA, 1472))
	}
	pkts = append(pkts, udpTo(t, podA, 500), udpTo(t, podB, 1472), udpTo(t, podB, 1472), udpTo(t, podA, 1472))
	nout, _ := w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	if nout != len(pkts) {
		t.Fatalf("%d packets to send, want %d", nout, len(pkts))
	}
	want := []msgDesc{
		{peerA, 44, 1472}, // 45 x 1472 would pass 65,507 bytes
		{peerA, 3, 1472},  // the short packet ends the train
		{peerB, 2, 1472},
		{peerA, 1, 0},
	}
	got := msgsOf(w)
	if len(got) != len(want) {
		t.Fatalf("messages %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("message %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	// One iovec per packet, pointing into the TUN buffers: no copy.
	k := 0
	for i := range w.outN {
		h := &w.outMsgs[i].Hdr
		iovs := unsafe.Slice(h.Iov, h.Iovlen)
		for _, iov := range iovs {
			if iov.Base != &w.tunBufs[k][off] || int(iov.Len) != len(pkts[k]) {
				t.Fatalf("message %d: iovec of packet %d does not point at its TUN buffer", i, k)
			}
			k++
		}
	}

	// The kernel's limit of 64 segments per train.
	pkts = pkts[:0]
	for range 70 {
		pkts = append(pkts, udpTo(t, podA, 100))
	}
	w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	if got := msgsOf(w); len(got) != 2 || got[0].segs != 64 || got[1].segs != 6 {
		t.Errorf("70 small packets: %+v, want 64 + 6", got)
	}
	// A larger packet after a smaller one starts a new train.
	w.egressBatch(w.r.table.Load(), loadTUN(w, [][]byte{udpTo(t, podA, 100), udpTo(t, podA, 200), udpTo(t, podA, 200)}))
	if got := msgsOf(w); len(got) != 2 || got[0].segs != 1 || got[1] != (msgDesc{peerA, 2, 200}) {
		t.Errorf("100, 200, 200: %+v", got)
	}

	// After EIO the rest of the batch goes one datagram per message.
	w.egressBatch(w.r.table.Load(), loadTUN(w, pkts[:10]))
	w.outN = w.buildMsgs(0, 0, false)
	if got := msgsOf(w); len(got) != 10 || got[0] != (msgDesc{peerA, 1, 0}) {
		t.Errorf("without GSO: %+v", got)
	}
	w.r.gso.Store(false)
	w.egressBatch(w.r.table.Load(), loadTUN(w, pkts[:10]))
	if len(msgsOf(w)) != 10 {
		t.Errorf("GSO off: %d messages, want 10", w.outN)
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
	loadGRO(w, 0, peerA, 1400, train)
	loadUDP(w, nil, nil)
	w.inMsgs[1].Len = uint32(copy(w.inBufs[1][off:], single))
	w.inMsgs[1].Hdr.Flags = 0
	w.inMsgs[1].Hdr.SetControllen(0)
	w.inNames[1].Addr = peerA.As4()
	loadGRO(w, 2, peerA, 1400, train2)
	loadGRO(w, 3, netip.MustParseAddr("192.0.2.99"), 1400, train)

	k := w.ingressBatch(w.r.table.Load(), 4)
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
	dirs []Direction
	pkts [][]byte
}

func (r *recorder) Capture(d Direction, p []byte) {
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
	loadGRO(w, 0, peerA, len(inA), [][]byte{inA, inA})
	w.ingressBatch(w.r.table.Load(), 1)
	wantDirs := []Direction{Out, Out, In, In}
	wantPkts := [][]byte{toA, noRoute, inA, inA}
	if len(rec.dirs) != len(wantDirs) {
		t.Fatalf("captured %v, want %v", rec.dirs, wantDirs)
	}
	for i := range wantDirs {
		if rec.dirs[i] != wantDirs[i] || !bytes.Equal(rec.pkts[i], wantPkts[i]) {
			t.Errorf("capture %d: %v %x, want %v %x", i, rec.dirs[i], rec.pkts[i], wantDirs[i], wantPkts[i])
		}
	}
	if In.String() != "in" || Out.String() != "out" {
		t.Errorf("Direction strings %q %q", In, Out)
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
	w.r.gso.Store(true)
	if o := w.r.Stats().Offloads; !o.UDPGSO || !o.TUNTSO || o.TUNUSO {
		t.Errorf("Stats().Offloads = %+v", o)
	}
	w.r.gso.Store(false) // as after EIO
	if o := w.r.Offloads(); o.UDPGSO || !o.UDPGRO {
		t.Errorf("after GSO was turned off: %+v", o)
	}
}

func TestOffloadZeroAllocs(t *testing.T) {
	w := testWorker(t, false)
	w.r.gso.Store(true)
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
		for i := range udpBatch {
			loadGRO(w, i, peerA, len(inA), train)
		}
		w.ingressBatch(tab, udpBatch)
	}); a != 0 {
		t.Errorf("ingressBatch with GRO trains: %v allocations per batch", a)
	}
}

// fakeSend stands in for sendmmsg: it fails a GSO train with err and
// sends everything else, recording the segments of each message sent.
type fakeSend struct {
	err  unix.Errno
	sent []int
}

func (f *fakeSend) sendmmsg(_ int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	for i := range msgs {
		if msgs[i].Hdr.Iovlen > 1 && f.err != 0 {
			if i == 0 {
				return 0, f.err
			}
			return i, 0
		}
		n := 0
		for _, iov := range unsafe.Slice(msgs[i].Hdr.Iov, msgs[i].Hdr.Iovlen) {
			n += int(iov.Len)
		}
		msgs[i].Len = uint32(n)
		f.sent = append(f.sent, int(msgs[i].Hdr.Iovlen))
	}
	return len(msgs), 0
}

func TestSendFallback(t *testing.T) {
	for _, c := range []struct {
		err     unix.Errno
		gsoKept bool
		drops   uint64
		sent    []int
	}{
		{0, true, 0, []int{1, 10}},         // a single to B, then a train of 10 to A
		{unix.EIO, false, 0, ones(11)},     // the device cannot segment: GSO off for good
		{unix.EMSGSIZE, true, 0, ones(11)}, // this train only
		{unix.EPERM, true, 10, nil},        // not about GSO: the train is dropped
	} {
		w := testWorker(t, false)
		w.r.offloads.UDPGSO = true
		w.r.gso.Store(true)
		f := &fakeSend{err: c.err}
		w.sendmmsg = f.sendmmsg
		pkts := [][]byte{udpTo(t, podB, 300)}
		for range 10 {
			pkts = append(pkts, udpTo(t, podA, 1000))
		}
		w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
		if err := w.send(); err != nil {
			t.Fatal(err)
		}
		if c.err == unix.EPERM {
			// An error that is not about GSO drops the train's packets.
			if d := w.eg.drops[dropSendError].Load(); d != c.drops || w.eg.packets.Load() != 1 {
				t.Errorf("EPERM: %d dropped, %d sent; want 10 and 1", d, w.eg.packets.Load())
			}
			want := []SyscallError{{Op: "sendmmsg", Errno: "EPERM", Count: 1}}
			if got := w.r.Stats().SyscallErrors; !slices.Equal(got, want) {
				t.Errorf("EPERM: syscall errors %v, want %v", got, want)
			}
			continue
		}
		if w.r.Offloads().UDPGSO != c.gsoKept {
			t.Errorf("errno %v: GSO on %v, want %v", c.err, w.r.Offloads().UDPGSO, c.gsoKept)
		}
		if !slices.Equal(f.sent, c.sent) || w.eg.packets.Load() != 11 || w.eg.bytes.Load() != 300+10*1000 {
			t.Errorf("errno %v: sent %v (%d packets, %d bytes), want %v", c.err, f.sent, w.eg.packets.Load(), w.eg.bytes.Load(), c.sent)
		}
	}
}

func ones(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
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
	loadGRO(w, 0, peerA, 1400, train)
	for i, p := range [][]byte{tail, other} {
		w.inMsgs[i+1].Len = uint32(copy(w.inBufs[i+1][off:], p))
		w.inMsgs[i+1].Hdr.Flags = 0
		w.inMsgs[i+1].Hdr.SetControllen(0)
		w.inNames[i+1].Addr = peerA.As4()
	}
	k := w.ingressBatch(w.r.table.Load(), 3)
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
