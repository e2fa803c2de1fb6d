package router

import (
	"encoding/binary"
	"errors"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/udp"
)

// egressBatch routes the n packets read from the TUN: packets for peers
// become slices of the TUN buffers (no copy), each peer's run of them one
// message in outMsgs, and ICMP errors go to icmpOut. It returns how many
// packets will be sent and how many ICMP errors were prepared.
func (w *worker) egressBatch(t *table, n int) (nout, nicmp int) {
	tap := w.r.tap.Load()
	v4, v6 := t.v4on, t.v6.on
	for i := range n {
		pkt := w.tunBufs[i][off : off+w.tunSizes[i]]
		if tap != nil {
			tap.t.Capture(dataplane.Out, pkt)
		}
		if v6 && len(pkt) > 0 && pkt[0]>>4 == 6 {
			var peer uint32
			if pkt, peer, nicmp = w.route6(t, pkt, nicmp); peer != 0 {
				w.outPkts[nout], w.outPeer[nout] = pkt, peer
				nout++
			}
			continue
		}
		hlen, total, reason := parseIPv4(pkt)
		if reason != dropNone || !v4 {
			w.eg.drop(familyReason(reason, v4, v6))
			continue
		}
		pkt = pkt[:total]
		peer := t.lookup(binary.BigEndian.Uint32(pkt[16:20]))
		if peer == 0 {
			w.eg.drop(dropNoRoute)
			nicmp = w.icmpError(pkt, hlen, icmpTypeDestUnreachable, icmpCodeNetUnreachable, ttlNetUnreachable, nicmp)
			continue
		}
		if pkt[8] <= 1 {
			w.eg.drop(dropTTLExceeded)
			nicmp = w.icmpError(pkt, hlen, icmpTypeTimeExceeded, icmpCodeTTLExceeded, ttlTimeExceeded, nicmp)
			continue
		}
		decrementTTL(pkt)
		w.outPkts[nout], w.outPeer[nout] = pkt, peer
		nout++
	}
	w.nout = nout
	w.sparseFirst()
	w.buildMsgs(t)
	return nout, nicmp
}

// familyReason is the drop reason of a packet that is not IPv6 (or on a
// router without IPv6) whose IPv4 parse said reason, on a router that
// carries IPv4 if v4 and IPv6 if v6: an IPv4 packet on an IPv6-only
// router is not_ipv6; with IPv6 on, a version neither 4 nor 6 is
// malformed.
func familyReason(reason dropReason, v4, v6 bool) dropReason {
	switch {
	case reason == dropNone && !v4:
		return dropNotIPv6
	case reason == dropNotIPv4 && v6:
		return dropMalformed
	}
	return reason
}

// route6 routes the TUN packet pkt, an IPv6 one: it returns the packet cut
// to its length, its hop limit lowered, and its peer, or peer 0 and the
// ICMP error count after counting the drop and preparing the error. A
// peer that does not carry IPv6 gets none: the sender learns it from an
// ICMPv6 unreachable.
func (w *worker) route6(t *table, pkt []byte, nicmp int) ([]byte, uint32, int) {
	total, reason := parseIPv6(pkt)
	if reason != dropNone {
		w.eg.drop(reason)
		return nil, 0, nicmp
	}
	pkt = pkt[:total]
	peer := t.lookup6(pkt[24:40])
	if peer == 0 {
		w.eg.drop(dropNoRoute)
		return nil, 0, w.icmp6Error(pkt, icmp6TypeDestUnreachable, icmp6CodeNoRoute, nicmp)
	}
	if pkt[7] <= 1 {
		w.eg.drop(dropTTLExceeded)
		return nil, 0, w.icmp6Error(pkt, icmp6TypeTimeExceeded, icmp6CodeHopLimit, nicmp)
	}
	if t.info[peer-1].state.Load() == ipv6Incapable {
		w.eg.drop(dropPeerNoIPv6)
		return nil, 0, w.icmp6Error(pkt, icmp6TypeDestUnreachable, icmp6CodeNoRoute, nicmp)
	}
	pkt[7]-- // no header checksum in IPv6
	return pkt, peer, nicmp
}

// sparseFirst moves the packets of flows that have a single packet in the
// batch in front of the others, keeping each group's order, so that a
// ping or a DNS query is sent before a bulk flow's trains.
func (w *worker) sparseFirst() {
	n := w.nout
	if n < 2 {
		return
	}
	clear(w.flowCount[:])
	hash := w.outHash[:n]
	for i := range hash {
		h := flowHash(w.outPkts[i])
		hash[i] = h
		w.flowCount[h] = min(w.flowCount[h]+1, 2)
	}
	k := 0
	for i := range n {
		if w.flowCount[hash[i]] == 1 {
			w.sparePkts[k], w.sparePeer[k] = w.outPkts[i], w.outPeer[i]
			k++
		}
	}
	if k == 0 || k == n {
		return
	}
	for i := range n {
		if w.flowCount[hash[i]] != 1 {
			w.sparePkts[k], w.sparePeer[k] = w.outPkts[i], w.outPeer[i]
			k++
		}
	}
	copy(w.outPkts[:n], w.sparePkts[:n])
	copy(w.outPeer[:n], w.sparePeer[:n])
}

// buildMsgs makes each run of packets to one peer one message: the
// connection sends it as UDP GSO trains, one datagram per packet on the
// wire.
func (w *worker) buildMsgs(t *table) {
	w.outN = 0
	for i := 0; i < w.nout; {
		j := i + 1
		for j < w.nout && w.outPeer[j] == w.outPeer[i] {
			j++
		}
		m := &w.outMsgs[w.outN]
		m.Buffers = w.outPkts[i:j:j]
		m.Addr = t.peer(w.outPeer[i])
		w.outN++
		i = j
	}
}

// aqmSignal applies a CoDel signal to the batch in outMsgs: the last packet
// of its longest run to one peer of at least minBulkSegs, a bulk flow's,
// is marked CE or, if its flow is not ECN-capable, left out.
func (w *worker) aqmSignal() {
	best := -1
	for m := range w.outN {
		l := len(w.outMsgs[m].Buffers)
		if l >= minBulkSegs && (best < 0 || l > len(w.outMsgs[best].Buffers)) {
			best = m
		}
	}
	if best < 0 {
		return
	}
	b := w.outMsgs[best].Buffers
	if markCE(b[len(b)-1]) {
		w.eg.ceMarked.Add(1)
		return
	}
	w.eg.drop(dropCoDel)
	w.outMsgs[best].Buffers = b[:len(b)-1]
}

// icmpError prepares an ICMP error about pkt as icmpOut[nicmp], unless the
// rules or the rate limit forbid one, and returns the new count.
func (w *worker) icmpError(pkt []byte, hlen int, typ, code, ttl uint8, nicmp int) int {
	if !mayReportError(pkt, hlen) {
		return nicmp
	}
	if !w.lim.allow(int64(w.clock())) {
		w.eg.icmpLimited.Add(1)
		return nicmp
	}
	var src [4]byte
	binary.BigEndian.PutUint32(src[:], w.r.ownAddr.Load())
	b := w.icmpBufs[nicmp]
	n := buildICMPError(b[off:], pkt, hlen, src, typ, code, ttl)
	w.icmpOut[nicmp] = b[:off+n]
	return nicmp + 1
}

// icmp6Error is icmpError for the IPv6 packet pkt.
func (w *worker) icmp6Error(pkt []byte, typ, code uint8, nicmp int) int {
	if !mayReportError6(pkt) {
		return nicmp
	}
	if !w.lim.allow(int64(w.clock())) {
		w.eg.icmpLimited.Add(1)
		return nicmp
	}
	b := w.icmpBufs[nicmp]
	n := buildICMPv6Error(b[off:], pkt, *w.r.ownAddr6.Load(), typ, code)
	w.icmpOut[nicmp] = b[:off+n]
	return nicmp + 1
}

// send hands outMsgs[:outN] to the connection. The rest of a message the
// kernel refuses is counted as dropped and skipped; only a closed
// connection ends the worker.
func (w *worker) send() error {
	msgs := w.outMsgs[:w.outN]
	for len(msgs) > 0 {
		n, err := w.conn.WriteBatch(msgs)
		for i := range min(n+1, len(msgs)) {
			var bytes uint64
			for _, b := range msgs[i].Buffers[:msgs[i].N] {
				bytes += uint64(len(b))
			}
			w.eg.packets.Add(uint64(msgs[i].N))
			w.eg.bytes.Add(bytes)
		}
		if err == nil {
			return nil
		}
		if errors.Is(err, udp.ErrClosed) {
			return errStopped
		}
		w.eg.drops[dropSendError].Add(uint64(len(msgs[n].Buffers) - msgs[n].N))
		w.transient(&w.egErr, opSendmmsg, err)
		msgs = msgs[n+1:]
	}
	return nil
}
