package router

import (
	"encoding/binary"
	"errors"
	"github.com/flannel-go/flannel-go/internal/inet"
	"os"
	"time"
	"unsafe"

	"github.com/flannel-go/flannel-go/internal/fdpoll"
	"github.com/flannel-go/flannel-go/tun"
	"golang.org/x/sys/unix"
)

const (
	// off is the headroom in front of every packet buffer (tun.Headroom).
	off = tun.Headroom
	// maxDatagram is the largest UDP payload; receive buffers hold it so
	// that no datagram (or GRO train) is truncated.
	maxDatagram = 65535
	// udpBatch is the number of messages one recvmmsg call may return.
	// Each may be a GRO train of up to 64 KB, and a batch is written into
	// the TUN before the next one is read: 8 bounds that to about 512 KB,
	// a few hundred microseconds, which a sparse packet received behind it
	// may wait (32 held 2 MB, about a millisecond).
	udpBatch = 8
	// maxGSOSegs and maxGSOBytes bound one UDP_SEGMENT send: the kernel
	// takes at most 64 segments (UDP_MAX_SEGMENTS on older kernels) and
	// one UDP datagram's worth of payload, 65535-20-8 bytes.
	maxGSOSegs  = 64
	maxGSOBytes = 65507
	// maxGROSegs is the most datagrams the kernel merges into one
	// UDP_GRO message.
	maxGROSegs = 64
	// minBulkSegs is the shortest train the AQM takes a packet from: a
	// bulk flow's. A sparse flow whose two packets happened to queue
	// together is never the victim.
	minBulkSegs = 4
)

var (
	gsoCtlLen = unix.CmsgSpace(2) // UDP_SEGMENT: a u16 segment size
	groCtlLen = unix.CmsgSpace(4) // UDP_GRO: an int segment size
	// inCtlLen holds UDP_GRO and SCM_TIMESTAMPNS (a struct timespec):
	// when the datagram reached the socket, for the queue's delay.
	inCtlLen = groCtlLen + unix.CmsgSpace(16)
)

// worker moves packets between one TUN queue and one UDP socket: an egress
// goroutine (TUN read, split, sendmmsg of GSO trains, ICMP errors back into
// the TUN) and an ingress goroutine (recvmmsg of GRO trains, split, TUN
// write with coalescing). Both make raw syscalls on a non-blocking socket
// and sleep in poll(2) on it and the worker's eventfd, so a busy worker
// costs one syscall per batch and Close wakes it at once. All buffers,
// message headers and control messages are made once: the steady state
// allocates nothing.
type worker struct {
	r    *Router
	id   int
	q    tun.Queue
	sock int
	evfd int
	// clock is the time since the worker started; tests stop it.
	clock func() time.Duration
	// sendmmsg is the syscall; tests make it fail.
	sendmmsg func(fd int, msgs []unix.Mmsghdr) (int, unix.Errno)

	// Egress, owned by the egress goroutine.
	tunBufs  [][]byte
	tunSizes []int
	outIovs  []unix.Iovec // one per packet to send, pointing into tunBufs
	outPeer  []uint32     // the packet's peer
	outPkts  int
	outMsgs  []unix.Mmsghdr // one per train
	outNames []unix.RawSockaddrInet4
	outCtl   []byte // gsoCtlLen bytes per message
	msgFirst []int32
	msgSegs  []int32
	outN     int
	outIdx   int
	spoll    *fdpoll.Waiter
	icmpBufs [][]byte
	icmpOut  [][]byte
	lim      limiter
	// egAQM watches how long the TUN queue stands: the TUN hands out no
	// timestamps, but a Read that fills half the batch or more shows a
	// backlog, so the time since the last Read that drained the queue is
	// a lower bound of the delay in front of the worker.
	egAQM     codel
	lastEmpty int64
	// flowCount counts a batch's packets per flow hash bucket; sparse
	// flows (one packet in the batch) are sent first.
	flowCount [256]uint8
	spareIovs []unix.Iovec
	sparePeer []uint32

	// Ingress, owned by the ingress goroutine.
	inBufs  [][]byte
	inMsgs  []unix.Mmsghdr
	inIovs  []unix.Iovec
	inNames []unix.RawSockaddrInet4
	inCtl   []byte // inCtlLen bytes per message
	inWrite [][]byte
	inSegs  []int32 // per message: segment size (the whole message if one datagram)
	inStamp []int64 // per message: when it reached the socket, wall-clock ns (0: unknown)
	inAQM   codel
	rpoll   *fdpoll.Waiter

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

func newWorker(r *Router, id int, q tun.Queue) *worker {
	eb := max(1, q.BatchSize())
	w := &worker{
		r:         r,
		id:        id,
		q:         q,
		sock:      -1,
		evfd:      -1,
		tunBufs:   slab(eb, off+maxDatagram),
		tunSizes:  make([]int, eb),
		outIovs:   make([]unix.Iovec, eb),
		outPeer:   make([]uint32, eb),
		spareIovs: make([]unix.Iovec, eb),
		sparePeer: make([]uint32, eb),
		outMsgs:   make([]unix.Mmsghdr, eb),
		outNames:  make([]unix.RawSockaddrInet4, eb),
		outCtl:    make([]byte, eb*gsoCtlLen),
		msgFirst:  make([]int32, eb),
		msgSegs:   make([]int32, eb),
		icmpBufs:  slab(eb, off+icmpMaxLen),
		icmpOut:   make([][]byte, eb),
		lim:       newLimiter(icmpRate, icmpBurst),
		inBufs:    slab(udpBatch, off+maxDatagram),
		inMsgs:    make([]unix.Mmsghdr, udpBatch),
		inIovs:    make([]unix.Iovec, udpBatch),
		inNames:   make([]unix.RawSockaddrInet4, udpBatch),
		inCtl:     make([]byte, udpBatch*inCtlLen),
		inSegs:    make([]int32, udpBatch),
		inStamp:   make([]int64, udpBatch),
		egAQM:     codel{target: int64(r.cfg.AQMTarget), interval: int64(r.cfg.AQMInterval)},
		inAQM:     codel{target: int64(r.cfg.AQMTarget), interval: int64(r.cfg.AQMInterval)},
		inWrite:   make([][]byte, 0, udpBatch*maxGROSegs),
	}
	start := time.Now()
	w.clock = func() time.Duration { return time.Since(start) }
	w.sendmmsg = sendmmsg
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], uint16(r.cfg.Port))
	sinPort := binary.NativeEndian.Uint16(port[:]) // sin_port holds network byte order
	for i := range w.outMsgs {
		w.outNames[i].Family = unix.AF_INET
		w.outNames[i].Port = sinPort
		h := &w.outMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.outNames[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		c := (*unix.Cmsghdr)(unsafe.Pointer(&w.outCtl[i*gsoCtlLen]))
		c.Level, c.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		c.SetLen(unix.CmsgLen(2))
	}
	for i := range w.inMsgs {
		w.inIovs[i].Base = &w.inBufs[i][off]
		w.inIovs[i].SetLen(maxDatagram)
		h := &w.inMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.inNames[i]))
		h.Iov = &w.inIovs[i]
		h.SetIovlen(1)
		h.Control = &w.inCtl[i*inCtlLen]
	}
	return w
}

// initPoll sets up the poll(2) sets once the socket and eventfd exist.
// A full send buffer drains at the kernel's pace, so only the receive side
// busy-polls.
func (w *worker) initPoll() {
	w.spoll = fdpoll.New(w.sock, unix.POLLOUT, w.evfd, 0)
	w.rpoll = fdpoll.New(w.sock, unix.POLLIN, w.evfd, w.r.cfg.BusyPoll)
}

// egressBatch routes the n packets read from the TUN: packets for peers
// become iovecs into the TUN buffers (no copy), grouped into UDP GSO trains
// in outMsgs, and ICMP errors go to icmpOut. It returns how many packets
// will be sent and how many ICMP errors were prepared.
func (w *worker) egressBatch(t *table, n int) (nout, nicmp int) {
	tap := w.r.tap.Load()
	for i := range n {
		pkt := w.tunBufs[i][off : off+w.tunSizes[i]]
		if tap != nil {
			tap.t.Capture(Out, pkt)
		}
		hlen, total, reason := parseIPv4(pkt)
		if reason != dropNone {
			w.eg.drop(reason)
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
		w.outIovs[nout].Base = &pkt[0]
		w.outIovs[nout].SetLen(total)
		w.outPeer[nout] = peer
		nout++
	}
	w.outPkts = nout
	w.sparseFirst()
	w.outN, w.outIdx = w.buildMsgs(0, 0, w.r.gso.Load()), 0
	return nout, nicmp
}

// sparseFirst moves the packets of flows that have a single packet in the
// batch in front of the others, keeping each group's order, so that a
// ping or a DNS query is sent before a bulk flow's trains.
func (w *worker) sparseFirst() {
	n := w.outPkts
	if n < 2 {
		return
	}
	clear(w.flowCount[:])
	for i := range n {
		h := flowHash(iovBytes(w.outIovs[i]))
		w.flowCount[h] = min(w.flowCount[h]+1, 2)
	}
	k := 0
	for i := range n {
		if w.flowCount[flowHash(iovBytes(w.outIovs[i]))] == 1 {
			w.spareIovs[k], w.sparePeer[k] = w.outIovs[i], w.outPeer[i]
			k++
		}
	}
	if k == 0 || k == n {
		return
	}
	for i := range n {
		if w.flowCount[flowHash(iovBytes(w.outIovs[i]))] != 1 {
			w.spareIovs[k], w.sparePeer[k] = w.outIovs[i], w.outPeer[i]
			k++
		}
	}
	copy(w.outIovs[:n], w.spareIovs[:n])
	copy(w.outPeer[:n], w.sparePeer[:n])
}

// aqmSignal applies a CoDel signal to the batch in outMsgs: the last packet
// of its longest train of at least minBulkSegs, a bulk flow's, is marked CE or, if its flow is not
// ECN-capable, left out of the train.
func (w *worker) aqmSignal() {
	best := -1
	for m := range w.outN {
		if w.msgSegs[m] >= minBulkSegs && (best < 0 || w.msgSegs[m] > w.msgSegs[best]) {
			best = m
		}
	}
	if best < 0 {
		return
	}
	last := int(w.msgFirst[best] + w.msgSegs[best] - 1)
	if markCE(iovBytes(w.outIovs[last])) {
		w.eg.ceMarked.Add(1)
		return
	}
	w.eg.drop(dropCoDel)
	w.msgSegs[best]--
	h := &w.outMsgs[best].Hdr
	h.SetIovlen(int(w.msgSegs[best]))
	if w.msgSegs[best] == 1 {
		h.Control = nil
		h.SetControllen(0)
	}
}

func iovBytes(iov unix.Iovec) []byte { return unsafe.Slice(iov.Base, iov.Len) }

// buildMsgs fills outMsgs[msg:] with the packets from index pkt on and
// returns the number of messages. With gso, a run of packets to one peer
// whose sizes are equal (the last may be shorter) becomes one message
// with one iovec per packet and a UDP_SEGMENT control message: the kernel
// sends it as one datagram per packet, so the wire format is unchanged.
func (w *worker) buildMsgs(msg, pkt int, gso bool) int {
	for pkt < w.outPkts {
		first := pkt
		size := int(w.outIovs[pkt].Len)
		peer := w.outPeer[pkt]
		total := size
		pkt++
		if gso {
			for pkt < w.outPkts && pkt-first < maxGSOSegs && w.outPeer[pkt] == peer {
				l := int(w.outIovs[pkt].Len)
				if l > size || total+l > maxGSOBytes {
					break
				}
				total += l
				pkt++
				if l < size {
					break
				}
			}
		}
		segs := pkt - first
		binary.BigEndian.PutUint32(w.outNames[msg].Addr[:], peer)
		h := &w.outMsgs[msg].Hdr
		h.Iov = &w.outIovs[first]
		h.SetIovlen(segs)
		if segs > 1 {
			ctl := w.outCtl[msg*gsoCtlLen : (msg+1)*gsoCtlLen]
			binary.NativeEndian.PutUint16(ctl[unix.CmsgLen(0):], uint16(size))
			h.Control = &ctl[0]
			h.SetControllen(gsoCtlLen)
		} else {
			h.Control = nil
			h.SetControllen(0)
		}
		w.msgFirst[msg], w.msgSegs[msg] = int32(first), int32(segs)
		msg++
	}
	return msg
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

// parseCtl reads message i's control messages into inSegs[i] (the UDP_GRO
// segment size, or its length if it is one datagram) and inStamp[i].
func (w *worker) parseCtl(i int) {
	h := &w.inMsgs[i].Hdr
	w.inSegs[i], w.inStamp[i] = int32(w.inMsgs[i].Len), 0
	ctl := w.inCtl[i*inCtlLen : i*inCtlLen+min(int(h.Controllen), inCtlLen)]
	for len(ctl) >= unix.CmsgLen(0) {
		c := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		l := int(c.Len)
		if l < unix.CmsgLen(0) || l > len(ctl) {
			return
		}
		data := ctl[unix.CmsgLen(0):l]
		switch {
		case c.Level == unix.SOL_UDP && c.Type == unix.UDP_GRO && len(data) >= 4:
			if seg := int32(binary.NativeEndian.Uint32(data)); seg > 0 {
				w.inSegs[i] = seg
			}
		case c.Level == unix.SOL_SOCKET && c.Type == unix.SO_TIMESTAMPNS && len(data) >= 16:
			w.inStamp[i] = int64(binary.NativeEndian.Uint64(data))*1e9 + int64(binary.NativeEndian.Uint64(data[8:]))
		}
		ctl = ctl[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(ctl)):]
	}
}

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
			w.parseCtl(i)
			if i == 0 && w.inStamp[0] != 0 {
				w.stages.observe(StageSocketQueue, time.Duration(now-w.inStamp[0]))
			}
			if w.inStamp[i] != 0 && w.inAQM.signal(now-w.inStamp[i], clock) {
				owed = true
			}
			if owed && int32(w.inMsgs[i].Len) > (minBulkSegs-1)*w.inSegs[i] {
				victim, owed = i, false
			}
		}
	} else {
		for i := range n {
			w.parseCtl(i)
		}
	}
	for i := range n {
		if w.inSegs[i] >= int32(w.inMsgs[i].Len) && !w.sameFlowAsTrain(i, n) {
			if w.ingressMsg(t, i, false) != nil {
				return 0
			}
		}
	}
	for i := range n {
		if w.inSegs[i] < int32(w.inMsgs[i].Len) || w.sameFlowAsTrain(i, n) {
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
	if w.inSegs[i] < int32(w.inMsgs[i].Len) {
		return false
	}
	a := w.inBufs[i][off : off+int(w.inMsgs[i].Len)]
	for j := range n {
		if w.inSegs[j] < int32(w.inMsgs[j].Len) && inet.SameFlow(a, w.inBufs[j][off:off+int(w.inSegs[j])]) {
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
	if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
		w.in.drop(dropOversize)
		return nil
	}
	sender := be32(w.inNames[i].Addr)
	if !w.r.cfg.AcceptUnknownPeers && !t.isPeer(sender) {
		w.in.drop(dropUnknownPeer)
		return nil
	}
	buf := w.inBufs[i]
	l := int(m.Len)
	if l == 0 {
		w.in.drop(dropMalformed)
		return nil
	}
	tap := w.r.tap.Load()
	seg := int(w.inSegs[i])
	for at := 0; at < l; at += seg {
		pkt := buf[off+at : off+min(at+seg, l)]
		if tap != nil {
			tap.t.Capture(In, pkt)
		}
		_, total, reason := parseIPv4(pkt)
		if reason != dropNone {
			w.in.drop(reason)
			continue
		}
		if w.r.cfg.StrictSource && t.lookup(be32([4]byte(pkt[12:16]))) != sender {
			w.in.drop(dropStrictSource)
			continue
		}
		if signal && at+seg >= l {
			if !markCE(pkt) {
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

// send sends outMsgs[outIdx:outN] with sendmmsg. A message the kernel
// refuses is counted and skipped. EIO on a GSO train means the egress
// device cannot do UDP segmentation: GSO is turned off for good and the
// rest goes one datagram per message; EINVAL or EMSGSIZE on a train (a
// segment larger than the path allows) resends that batch's rest the same
// way.
func (w *worker) send() error {
	for w.outIdx < w.outN {
		r, e := w.sendmmsg(w.sock, w.outMsgs[w.outIdx:w.outN])
		switch {
		case e == 0 && r > 0:
			var bytes, pkts uint64
			for k := w.outIdx; k < w.outIdx+r; k++ {
				bytes += uint64(w.outMsgs[k].Len)
				pkts += uint64(w.msgSegs[k])
			}
			w.eg.packets.Add(pkts)
			w.eg.bytes.Add(bytes)
			w.outIdx += r
		case e == unix.EINTR:
		case e == unix.EAGAIN:
			if w.spoll.Wait() != nil {
				return errStopped
			}
		case w.msgSegs[w.outIdx] > 1 && (e == unix.EIO || e == unix.EINVAL || e == unix.EMSGSIZE):
			if e == unix.EIO && w.r.gso.CompareAndSwap(true, false) {
				w.r.log.Warn("The egress device refused UDP GSO (EIO); sending one datagram per packet from now on",
					"worker", w.id)
			}
			w.outN = w.buildMsgs(w.outIdx, int(w.msgFirst[w.outIdx]), false)
		default:
			// The errno belongs to the first unsent message.
			w.eg.drops[dropSendError].Add(uint64(w.msgSegs[w.outIdx]))
			w.transient(&w.egErr, opSendmmsg, e)
			w.outIdx++
		}
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

func sendmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	return int(r), e
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

// recv fills inMsgs with one recvmmsg, sleeping while nothing is waiting.
func (w *worker) recv() (int, error) {
	for i := range w.inMsgs {
		h := &w.inMsgs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet4
		h.Flags = 0
		h.SetControllen(inCtlLen)
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(w.sock), uintptr(unsafe.Pointer(&w.inMsgs[0])),
			uintptr(len(w.inMsgs)), 0, 0, 0)
		switch e {
		case 0:
			w.rpoll.Active()
			return int(r), nil
		case unix.EINTR:
		case unix.EAGAIN:
			if w.rpoll.Wait() != nil {
				return 0, errStopped
			}
		case unix.EBADF:
			return 0, errStopped
		default:
			// ECONNREFUSED (an ICMP error about a datagram we sent),
			// ENOMEM, ...: counted, and the socket is read again.
			w.transient(&w.inErr, opRecvmmsg, e)
		}
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
