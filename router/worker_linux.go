package router

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/probe"
	"github.com/flannel-go/flannel-go/tun"
	"github.com/flannel-go/flannel-go/udp"
	"golang.org/x/sys/unix"
)

const (
	// off is the headroom in front of every packet buffer (tun.Headroom).
	off = tun.Headroom
	// maxDatagram is the largest UDP payload; receive buffers hold it so
	// that no datagram (or GRO train) is truncated.
	maxDatagram = 65535
	// udpBatch is the number of messages one ReadBatch may return.
	// Each may be a GRO train of up to 64 KB, and a batch is written into
	// the TUN before the next one is read: 8 bounds that to about 512 KB,
	// a few hundred microseconds, which a sparse packet received behind it
	// may wait (32 held 2 MB, about a millisecond).
	udpBatch = 8
	// maxGROSegs is the most datagrams the kernel merges into one
	// UDP_GRO message.
	maxGROSegs = 64
	// minBulkSegs is the shortest run to one peer the AQM takes a packet
	// from: a bulk flow's. A sparse flow whose two packets happened to
	// queue together is never the victim.
	minBulkSegs = 4
)

// worker moves packets between one TUN queue and one UDP connection: an
// egress goroutine (TUN read, split, routing, each peer's run of packets
// handed to the connection as one message, ICMP errors back into the TUN)
// and an ingress goroutine (GRO trains from the connection, split, TUN
// write with coalescing). All buffers and messages are made once: the
// steady state allocates nothing.
type worker struct {
	r     *Router
	id    int
	q     tun.Queue
	conn  udp.Conn
	start time.Time // the worker's clock: the AQM, ICMP limit and error log run on it

	// Egress, owned by the egress goroutine.
	tunBufs   [][]byte
	tunSizes  []int
	outPkts   [][]byte // the packets to send, slices of tunBufs
	outPeer   []uint32 // each packet's peer
	outHash   []uint8  // each packet's flowHash, while sparseFirst runs
	nout      int
	outMsgs   []udp.Message // one per run of packets to one peer
	outN      int
	icmpBufs  [][]byte
	icmpOut   [][]byte
	lim       limiter
	probeLim  limiter // IPv6 probe answers; owned by the ingress goroutine
	sparePkts [][]byte
	sparePeer []uint32
	// egAQM watches how long the TUN queue stands: the TUN hands out no
	// timestamps, but a Read that fills half the batch or more shows a
	// backlog, so the time since the last Read that drained the queue is
	// a lower bound of the delay in front of the worker.
	egAQM     codel
	lastEmpty int64
	// flowCount counts a batch's packets per flow hash bucket; sparse
	// flows (one packet in the batch) are sent first.
	flowCount [256]uint8

	// Ingress, owned by the ingress goroutine.
	inBufs  [][]byte
	inMsgs  []udp.Message
	inWrite [][]byte
	inAQM   codel

	eg, in counters
	// egErr and inErr count failed calls; each is owned by one goroutine.
	egErr, inErr errnoCounts
	// stages times each batch's steps; both goroutines add to it.
	stages stageCounters
}

// slab cuts n buffers of size bytes out of one allocation.
func slab(n, size int) [][]byte {
	mem := make([]byte, n*size)
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = mem[i*size : (i+1)*size : (i+1)*size]
	}
	return bufs
}

// tunSlots returns the n TUN read buffers. Only the first needs room for a
// 64 KB super-packet, which the TUN reads in place; the rest receive the
// segments it is split into and the packets read after it, never longer
// than the MTU (the TUN keeps a packet that does not fit for the next
// Read, which starts at the first buffer). Without a known MTU every slot
// takes the largest packet.
func tunSlots(n, mtu int) [][]byte {
	if mtu <= 0 || n == 1 {
		return slab(n, off+maxDatagram)
	}
	bufs := append([][]byte{make([]byte, off+maxDatagram)}, slab(n-1, off+mtu)...)
	return bufs[:n:n]
}

// icmpBufLen is the size of an ICMP error buffer: an ICMPv6 error quotes
// up to 1280 bytes.
func icmpBufLen(cfg Config) int {
	if cfg.IPv6Network.IsValid() {
		return icmp6MaxLen
	}
	return icmpMaxLen
}

func newWorker(r *Router, id int, q tun.Queue) *worker {
	eb := max(1, q.BatchSize())
	w := &worker{
		r:         r,
		id:        id,
		q:         q,
		tunBufs:   tunSlots(eb, r.cfg.MTU),
		tunSizes:  make([]int, eb),
		outPkts:   make([][]byte, eb),
		outPeer:   make([]uint32, eb),
		outHash:   make([]uint8, eb),
		sparePkts: make([][]byte, eb),
		sparePeer: make([]uint32, eb),
		outMsgs:   make([]udp.Message, eb),
		icmpBufs:  slab(eb, off+icmpBufLen(r.cfg)),
		icmpOut:   make([][]byte, eb),
		lim:       newLimiter(icmpRate, icmpBurst),
		probeLim:  newLimiter(icmpRate, icmpBurst),
		inBufs:    slab(udpBatch, off+maxDatagram),
		inMsgs:    make([]udp.Message, udpBatch),
		egAQM:     codel{target: int64(r.cfg.AQMTarget), interval: int64(r.cfg.AQMInterval)},
		inAQM:     codel{target: int64(r.cfg.AQMTarget), interval: int64(r.cfg.AQMInterval)},
		inWrite:   make([][]byte, 0, udpBatch*maxGROSegs),
	}
	w.start = time.Now()
	// Datagrams land behind the headroom, so that the TUN write can put
	// its virtio-net header in front without a copy.
	in := make([][]byte, udpBatch)
	for i := range w.inMsgs {
		in[i] = w.inBufs[i][off:]
		w.inMsgs[i].Buffers = in[i : i+1 : i+1]
	}
	return w
}

// clock is the monotonic time since the worker started.
func (w *worker) clock() time.Duration { return time.Since(w.start) }

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

func (w *worker) runEgress() error {
	for {
		n, err := w.q.Read(w.tunBufs, w.tunSizes, off)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return errStopped
			}
			if errors.Is(err, tun.ErrDropped) {
				w.eg.drop(dropTunRead)
				w.r.log.Debug("TUN read dropped a packet", "worker", w.id, "error", err)
				continue
			}
			// Only a closed queue ends the worker; a pause keeps a
			// persistent error from spinning the CPU.
			w.transient(&w.egErr, opTunRead, err)
			time.Sleep(time.Millisecond)
			continue
		}
		if n == 0 {
			continue
		}
		w.eg.batch(n)
		now := int64(w.clock())
		if n < len(w.tunBufs)/2 {
			w.lastEmpty = now
		}
		if now > w.lastEmpty {
			w.stages.observe(StageTUNBacklog, time.Duration(now-w.lastEmpty))
		}
		_, nicmp := w.egressBatch(w.r.table.Load(), n)
		if w.egAQM.signal(now-w.lastEmpty, now) {
			w.aqmSignal()
		}
		routed := w.clock()
		w.stages.observe(StageRoute, routed-time.Duration(now))
		if w.outN > 0 {
			if err := w.send(); err != nil {
				return err
			}
			w.stages.observe(StageSend, w.clock()-routed)
		}
		if nicmp > 0 {
			if err := w.writeTUN(w.icmpOut[:nicmp], &w.eg, false); err != nil {
				return err
			}
		}
	}
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

// transient counts a failed call that does not stop the worker and logs it
// once per errno per minute.
func (w *worker) transient(c *errnoCounts, op syscallOp, err error) {
	e := errnoOf(err)
	if c.count(op, e, w.clock()) {
		w.r.log.Warn("Data-plane call failed; counting and carrying on (logged once a minute per error)",
			"worker", w.id, "call", opNames[op], "errno", unix.ErrnoName(e), "error", err)
	}
}

func (w *worker) runIngress() error {
	for {
		n, err := w.recv()
		if err != nil {
			return err
		}
		w.in.batch(n)
		start := w.clock()
		if k := w.ingressBatch(w.r.table.Load(), n); k > 0 {
			if err := w.writeTUN(w.inWrite[:k], &w.in, true); err != nil {
				return err
			}
		}
		w.stages.observe(StageTUNWrite, w.clock()-start)
	}
}

// recv fills inMsgs with one batch. ECONNREFUSED (an ICMP error about a
// datagram we sent), ENOMEM and the like are counted, and the connection
// is read again.
func (w *worker) recv() (int, error) {
	for {
		n, err := w.conn.ReadBatch(w.inMsgs)
		if err == nil {
			return n, nil
		}
		if errors.Is(err, udp.ErrClosed) {
			return 0, errStopped
		}
		w.transient(&w.inErr, opRecvmmsg, err)
	}
}

// writeTUN writes bufs into the TUN queue. Packets the TUN refuses are
// counted; only a closed queue ends the worker. Data packets count as
// received traffic, ICMP errors as sent ICMP.
func (w *worker) writeTUN(bufs [][]byte, c *counters, data bool) error {
	var bytes uint64
	if data {
		for _, b := range bufs {
			bytes += uint64(len(b) - off)
		}
	}
	n, err := w.q.Write(bufs, off)
	if data {
		if n < len(bufs) {
			// The queue does not say which packets failed; the byte
			// count of a partly refused batch is prorated.
			bytes = bytes * uint64(n) / uint64(len(bufs))
		}
		c.packets.Add(uint64(n))
		c.bytes.Add(bytes)
	} else {
		c.icmpSent.Add(uint64(n))
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, os.ErrClosed) {
		return errStopped
	}
	c.drops[dropTunWriteError].Add(uint64(len(bufs) - n))
	if data {
		w.transient(&w.inErr, opTunWrite, err)
	} else {
		w.transient(&w.egErr, opTunWrite, err)
	}
	return nil
}
