package router

import (
	"bytes"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/inet"
	"github.com/google/gopacket/layers"
)

func TestCoDelSignals(t *testing.T) {
	ms := int64(time.Millisecond)
	c := codel{target: ms / 4, interval: 2 * ms}
	if c.signal(ms/10, 0) {
		t.Fatal("signal below target")
	}
	// Above target: nothing until it has stood for an interval.
	if c.signal(ms, 1*ms) || c.signal(ms, 2*ms) {
		t.Fatal("signal before an interval above target")
	}
	if !c.signal(ms, 3*ms+1) {
		t.Fatal("no signal after an interval above target")
	}
	// The next one after interval/sqrt(count) at the latest, not at once.
	if c.signal(ms, 3*ms+2) {
		t.Fatal("two signals at once")
	}
	var at int64
	for now := 3 * ms; now < 10*ms; now += ms / 20 {
		if c.signal(ms, now) {
			at = now
			break
		}
	}
	if at == 0 || at > 5*ms+ms/20+1 {
		t.Fatalf("second signal at %d ns, want by %d", at, 5*ms+ms/20+1)
	}
	// Below target again: no more signals, and the episode ends.
	if c.signal(ms/10, 20*ms) || c.signal(ms, 21*ms) {
		t.Fatal("signal after the delay fell below target")
	}
	if (&codel{}).signal(time.Hour.Nanoseconds(), 1) {
		t.Fatal("a disabled codel signalled")
	}
}

func TestMarkCE(t *testing.T) {
	p := udpTo(t, podA, 100)
	if markCE(p) {
		t.Fatal("a Not-ECT packet was marked")
	}
	p[1] |= 2 // ECT(0)
	p[10], p[11] = 0, 0
	inet.SetHeaderChecksum(p)
	if !markCE(p) || p[1]&3 != 3 {
		t.Fatalf("ECT(0) packet not marked: tos %#x", p[1])
	}
	if inet.Checksum(p[:20]) != 0 {
		t.Fatal("header checksum wrong after marking")
	}
}

// The egress AQM takes its packet from the batch's longest train, a bulk
// flow's, and never from a short train or a single packet.
func TestEgressAQMVictim(t *testing.T) {
	w := testWorker(t, false)
	ping := ipv4Packet(t, srcPod, podA, layers.IPProtocolICMPv4, 64, 0, []byte{8, 0, 0, 0, 0, 0, 0, 0})
	pkts := [][]byte{ping, udpTo(t, podB, 500), udpTo(t, podB, 500)}
	for range 6 {
		pkts = append(pkts, udpTo(t, podA, 1000))
	}
	w.egressBatch(w.r.table.Load(), loadTUN(w, pkts))
	var segs []int
	for _, m := range w.outMsgs[:w.outN] {
		segs = append(segs, len(m.Buffers))
	}
	w.aqmSignal()
	if w.eg.drops[dropCoDel].Load() != 1 {
		t.Fatalf("%d codel drops, want 1", w.eg.drops[dropCoDel].Load())
	}
	for m := range w.outN {
		want := segs[m]
		if segs[m] == 6 {
			want = 5
		}
		if got := len(w.outMsgs[m].Buffers); got != want {
			t.Errorf("message %d: %d packets, want %d", m, got, want)
		}
	}
	// A batch of short trains only: no victim.
	w2 := testWorker(t, false)
	w2.egressBatch(w2.r.table.Load(), loadTUN(w2, [][]byte{udpTo(t, podB, 500), udpTo(t, podB, 500), ping}))
	w2.aqmSignal()
	if w2.eg.drops[dropCoDel].Load() != 0 {
		t.Fatal("a short train lost a packet to the AQM")
	}
}

// The ingress AQM, once the socket queue's delay stood above target, drops
// the last datagram of a bulk train and leaves single datagrams alone.
func TestIngressAQMVictim(t *testing.T) {
	w := testWorker(t, false)
	w.inAQM = codel{target: 1, interval: 1}
	w.inAQM.firstAbove, w.inAQM.dropping = 1, false // stood above target already
	pkt := func(tag byte) []byte {
		return ipv4Packet(t, podA, srcPod, layers.IPProtocolUDP, 63, 0, bytes.Repeat([]byte{tag}, 1380))
	}
	train := [][]byte{pkt(1), pkt(1), pkt(1), pkt(1)}
	single := ipv4Packet(t, podA, srcPod, layers.IPProtocolUDP, 63, 0, bytes.Repeat([]byte{9}, 80))
	// Both queued at the epoch: a long wait.
	mem(w).push(memDatagram{parts: [][]byte{single}, from: peerA, stamp: 1})
	mem(w).push(memDatagram{parts: train, from: peerA, seg: 1400, stamp: 1})
	k := w.ingressBatch(w.r.table.Load(), readUDP(t, w))
	if k != 4 || w.in.drops[dropCoDel].Load() != 1 {
		t.Fatalf("%d packets written, %d codel drops; want 4 and 1", k, w.in.drops[dropCoDel].Load())
	}
	if !bytes.Equal(w.inWrite[0][off:], single) {
		t.Error("the single datagram was not written first")
	}
}
