package router

import (
	"net/netip"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/probe"
	"github.com/flannel-go/flannel-go/udp"
)

// check6 checks the received inner packet pkt, an IPv6 one, from the peer
// sender (0: unknown, accepted by AcceptUnknownPeers, but holding no
// subnet for StrictSource) and returns its length, or counts the drop.
func (w *worker) check6(t *table, pkt []byte, sender uint32) (int, bool) {
	total, reason := parseIPv6(pkt)
	if reason == dropNone && w.r.cfg.StrictSource && (sender == 0 || t.lookup6(pkt[8:24]) != sender) {
		reason = dropStrictSource
	}
	if reason != dropNone {
		w.in.drop(reason)
		return 0, false
	}
	return total, true
}

// probe handles the probe d received in message m from peer sender and
// reports whether it was one of the router's: an IPv6 ask is answered
// (rate-limited) when the router carries IPv6, an answer from a known
// peer records that the peer does. Other probes (the fast path's, when it
// is not running) are left to the packet checks, which drop them.
func (w *worker) probe(t *table, m *udp.Message, d []byte, sender uint32) bool {
	msg, ok := probe.Parse(d)
	if w.r.probe == nil || !ok {
		return false
	}
	switch msg.Type {
	case probe.IPv6Ask:
		if !w.probeLim.allow(int64(w.clock())) {
			return true
		}
		ans := probe.Message{Type: probe.IPv6Answer, Nonce: msg.Nonce}.Marshal()
		to := netip.AddrPortFrom(m.Addr.Addr().Unmap(), uint16(w.r.cfg.Port))
		if err := w.r.sendProbe(ans[:], to); err != nil {
			w.r.log.Debug("Answering an IPv6 probe failed", "peer", to, "error", err)
		}
		return true
	case probe.IPv6Answer:
		if sender != 0 {
			t.info[sender-1].answer(msg.Nonce)
		}
		return true
	}
	return false
}

// isTrain reports whether received message m carries more than one datagram.
func isTrain(m *udp.Message) bool { return m.Segment < m.N }

// ingressBatch checks the n received messages, splits GRO trains into
// their datagrams (each one inner packet) and lists the packets to write
// into the TUN in inWrite, as slices of the receive buffers; it returns
// their number. A batch with more packets than inWrite holds is written
// in parts.
//
// Sparse flows go first: a single datagram whose flow has no train in the
// batch is listed before the trains, so a ping or a DNS answer never waits
// for a bulk flow's writes; a flow's own packets keep their order. The
// socket's queue is under CoDel: when the delay since the kernel queued
// the messages has stood above target, the last datagram of a train (a
// bulk flow's) is marked CE or, if its flow is not ECN-capable, dropped.
func (w *worker) ingressBatch(t *table, n int) int {
	w.inWrite = w.inWrite[:0]
	victim := -1
	if w.inAQM.target > 0 {
		now, clock := time.Now().UnixNano(), int64(w.clock())
		owed := false
		for i := range n {
			m := &w.inMsgs[i]
			if i == 0 && m.Stamp != 0 {
				w.stages.observe(StageSocketQueue, time.Duration(now-m.Stamp))
			}
			if m.Stamp != 0 && w.inAQM.signal(now-m.Stamp, clock) {
				owed = true
			}
			if owed && m.N > (minBulkSegs-1)*m.Segment {
				victim, owed = i, false
			}
		}
	}
	for i := range n {
		if !isTrain(&w.inMsgs[i]) && !w.sameFlowAsTrain(i, n) {
			if w.ingressMsg(t, i, false) != nil {
				return 0
			}
		}
	}
	for i := range n {
		if isTrain(&w.inMsgs[i]) || w.sameFlowAsTrain(i, n) {
			if w.ingressMsg(t, i, i == victim) != nil {
				return 0
			}
		}
	}
	return len(w.inWrite)
}

// sameFlowAsTrain reports whether the single datagram in message i belongs
// to a flow (addresses, protocol, ports) that a train in the batch carries.
func (w *worker) sameFlowAsTrain(i, n int) bool {
	m := &w.inMsgs[i]
	if isTrain(m) {
		return false
	}
	a := m.Buffers[0][:m.N]
	for j := range n {
		if o := &w.inMsgs[j]; isTrain(o) && sameFlow(a, o.Buffers[0][:o.Segment]) {
			return true
		}
	}
	return false
}

// ingressMsg checks message i and appends its packets to inWrite, writing
// inWrite out first when it is full; with signal, the last packet is
// marked CE or dropped (CoDel). Only a closed TUN is an error.
func (w *worker) ingressMsg(t *table, i int, signal bool) error {
	m := &w.inMsgs[i]
	if m.Truncated {
		w.in.drop(dropOversize)
		return nil
	}
	sender := t.sender(m.Addr.Addr())
	if !w.r.cfg.AcceptUnknownPeers && sender == 0 {
		w.in.drop(dropUnknownPeer)
		return nil
	}
	buf := w.inBufs[i]
	l := m.N
	if l == 0 || m.Segment <= 0 {
		w.in.drop(dropMalformed)
		return nil
	}
	if l == probe.Len && w.probe(t, m, buf[off:off+l], sender) {
		return nil
	}
	tap := w.r.tap.Load()
	seg := m.Segment
	v4, v6, strict := t.v4on, t.v6.on, w.r.cfg.StrictSource
	for at := 0; at < l; at += seg {
		pkt := buf[off+at : off+min(at+seg, l)]
		if tap != nil {
			tap.t.Capture(dataplane.In, pkt)
		}
		var total int
		if v6 && len(pkt) > 0 && pkt[0]>>4 == 6 {
			var ok bool
			if total, ok = w.check6(t, pkt, sender); !ok {
				continue
			}
		} else {
			var reason dropReason
			if _, total, reason = parseIPv4(pkt); reason != dropNone || !v4 {
				w.in.drop(familyReason(reason, v4, v6))
				continue
			}
			if strict && (sender == 0 || t.lookup(be32([4]byte(pkt[12:16]))) != sender) {
				w.in.drop(dropStrictSource)
				continue
			}
		}
		if signal && at+seg >= l {
			if !markCE(pkt[:total]) {
				w.in.drop(dropCoDel)
				continue
			}
			w.in.ceMarked.Add(1)
		}
		if len(w.inWrite) == cap(w.inWrite) {
			if err := w.writeTUN(w.inWrite, &w.in, true); err != nil {
				w.inWrite = w.inWrite[:0]
				return err
			}
			w.inWrite = w.inWrite[:0]
		}
		// The headroom of a packet inside a train is the previous
		// packet's tail; the TUN never writes before offset.
		w.inWrite = append(w.inWrite, buf[at:off+at+total])
	}
	return nil
}
