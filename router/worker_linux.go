package router

import (
	"encoding/binary"
	"errors"
	"os"
	"time"
	"unsafe"

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
	udpBatch = 32
	// maxGSOSegs and maxGSOBytes bound one UDP_SEGMENT send: the kernel
	// takes at most 64 segments (UDP_MAX_SEGMENTS on older kernels) and
	// one UDP datagram's worth of payload, 65535-20-8 bytes.
	maxGSOSegs  = 64
	maxGSOBytes = 65507
	// maxGROSegs is the most datagrams the kernel merges into one
	// UDP_GRO message.
	maxGROSegs = 64
)

var (
	gsoCtlLen = unix.CmsgSpace(2) // UDP_SEGMENT: a u16 segment size
	groCtlLen = unix.CmsgSpace(4) // UDP_GRO: an int segment size
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
	spoll    [2]unix.PollFd
	icmpBufs [][]byte
	icmpOut  [][]byte
	lim      limiter

	// Ingress, owned by the ingress goroutine.
	inBufs  [][]byte
	inMsgs  []unix.Mmsghdr
	inIovs  []unix.Iovec
	inNames []unix.RawSockaddrInet4
	inCtl   []byte // groCtlLen bytes per message
	inWrite [][]byte
	rpoll   [2]unix.PollFd

	eg, in counters
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
		r:        r,
		id:       id,
		q:        q,
		sock:     -1,
		evfd:     -1,
		tunBufs:  slab(eb, off+maxDatagram),
		tunSizes: make([]int, eb),
		outIovs:  make([]unix.Iovec, eb),
		outPeer:  make([]uint32, eb),
		outMsgs:  make([]unix.Mmsghdr, eb),
		outNames: make([]unix.RawSockaddrInet4, eb),
		outCtl:   make([]byte, eb*gsoCtlLen),
		msgFirst: make([]int32, eb),
		msgSegs:  make([]int32, eb),
		icmpBufs: slab(eb, off+icmpMaxLen),
		icmpOut:  make([][]byte, eb),
		lim:      newLimiter(icmpRate, icmpBurst),
		inBufs:   slab(udpBatch, off+maxDatagram),
		inMsgs:   make([]unix.Mmsghdr, udpBatch),
		inIovs:   make([]unix.Iovec, udpBatch),
		inNames:  make([]unix.RawSockaddrInet4, udpBatch),
		inCtl:    make([]byte, udpBatch*groCtlLen),
		inWrite:  make([][]byte, 0, udpBatch*maxGROSegs),
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
		h.Control = &w.inCtl[i*groCtlLen]
	}
	return w
}

// initPoll sets up the poll(2) sets once the socket and eventfd exist.
func (w *worker) initPoll() {
	w.spoll = [2]unix.PollFd{{Fd: int32(w.sock), Events: unix.POLLOUT}, {Fd: int32(w.evfd), Events: unix.POLLIN}}
	w.rpoll = [2]unix.PollFd{{Fd: int32(w.sock), Events: unix.POLLIN}, {Fd: int32(w.evfd), Events: unix.POLLIN}}
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
	w.outN, w.outIdx = w.buildMsgs(0, 0, w.r.gso.Load()), 0
	return nout, nicmp
}

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

// groSize returns the segment size of a UDP_GRO message, 0 if it is one
// datagram.
func (w *worker) groSize(i int) int {
	h := &w.inMsgs[i].Hdr
	if int(h.Controllen) < unix.CmsgLen(4) {
		return 0
	}
	ctl := w.inCtl[i*groCtlLen : (i+1)*groCtlLen]
	c := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
	if c.Level != unix.SOL_UDP || c.Type != unix.UDP_GRO {
		return 0
	}
	return int(int32(binary.NativeEndian.Uint32(ctl[unix.CmsgLen(0):])))
}

// ingressBatch checks the n received messages, splits GRO trains into
// their datagrams (each one inner packet) and lists the packets to write
// into the TUN in inWrite, as slices of the receive buffers; it returns
// their number. A batch with more packets than inWrite holds is written
// in parts.
func (w *worker) ingressBatch(t *table, n int) int {
	accept, strict := w.r.cfg.AcceptUnknownPeers, w.r.cfg.StrictSource
	tap := w.r.tap.Load()
	w.inWrite = w.inWrite[:0]
	for i := range n {
		m := &w.inMsgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			w.in.drop(dropOversize)
			continue
		}
		sender := be32(w.inNames[i].Addr)
		if !accept && !t.isPeer(sender) {
			w.in.drop(dropUnknownPeer)
			continue
		}
		buf := w.inBufs[i]
		l := int(m.Len)
		if l == 0 {
			w.in.drop(dropMalformed)
			continue
		}
		seg := w.groSize(i)
		if seg <= 0 {
			seg = l
		}
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
			if strict && t.lookup(be32([4]byte(pkt[12:16]))) != sender {
				w.in.drop(dropStrictSource)
				continue
			}
			if len(w.inWrite) == cap(w.inWrite) {
				if w.writeTUN(w.inWrite, &w.in, true) != nil {
					w.inWrite = w.inWrite[:0]
					return 0
				}
				w.inWrite = w.inWrite[:0]
			}
			// The headroom of a packet inside a train is the previous
			// packet's tail; the TUN never writes before offset.
			w.inWrite = append(w.inWrite, buf[at:off+at+total])
		}
	}
	return len(w.inWrite)
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
			return wrapf(err, "worker %d: read from TUN", w.id)
		}
		if n == 0 {
			continue
		}
		w.eg.batch(n)
		_, nicmp := w.egressBatch(w.r.table.Load(), n)
		if w.outN > 0 {
			if err := w.send(); err != nil {
				return err
			}
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
			if waitFD(&w.spoll) != nil {
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
			w.outIdx++
		}
	}
	return nil
}

func sendmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	return int(r), e
}

// waitFD sleeps until pfd[0] is ready; it fails once the eventfd in pfd[1]
// was signalled (the router is closing).
func waitFD(pfd *[2]unix.PollFd) error {
	for {
		pfd[0].Revents, pfd[1].Revents = 0, 0
		_, err := unix.Poll(pfd[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if pfd[1].Revents != 0 {
			return errStopped
		}
		return nil
	}
}

func (w *worker) runIngress() error {
	for {
		n, err := w.recv()
		if err != nil {
			return err
		}
		w.in.batch(n)
		if k := w.ingressBatch(w.r.table.Load(), n); k > 0 {
			if err := w.writeTUN(w.inWrite[:k], &w.in, true); err != nil {
				return err
			}
		}
	}
}

// recv fills inMsgs with one recvmmsg, sleeping while nothing is waiting.
func (w *worker) recv() (int, error) {
	for i := range w.inMsgs {
		h := &w.inMsgs[i].Hdr
		h.Namelen = unix.SizeofSockaddrInet4
		h.Flags = 0
		h.SetControllen(groCtlLen)
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(w.sock), uintptr(unsafe.Pointer(&w.inMsgs[0])),
			uintptr(len(w.inMsgs)), 0, 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
		case unix.EAGAIN:
			if waitFD(&w.rpoll) != nil {
				return 0, errStopped
			}
		default:
			return 0, wrapf(e, "worker %d: recvmmsg", w.id)
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
	w.r.log.Debug("TUN write failed", "worker", w.id, "error", err)
	return nil
}
