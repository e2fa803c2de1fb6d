package router

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"github.com/flannel-go/flannel-go/tun"
	"golang.org/x/sys/unix"
)

const (
	// off is the headroom in front of every packet buffer (tun.Headroom).
	off = tun.Headroom
	// maxDatagram is the largest UDP payload; receive buffers hold it so
	// that no datagram is truncated.
	maxDatagram = 65535
	// udpBatch is the number of datagrams one recvmmsg call may return.
	udpBatch = 32
)

// worker moves packets between one TUN queue and one UDP socket: an egress
// goroutine (TUN read, sendmmsg, ICMP errors back into the TUN) and an
// ingress goroutine (recvmmsg, TUN write). All buffers, message headers
// and callbacks are made once, so the steady state allocates nothing.
type worker struct {
	r     *Router
	id    int
	q     tun.Queue
	conn  *net.UDPConn
	rc    syscall.RawConn
	start time.Time

	// Egress, owned by the egress goroutine.
	tunBufs  [][]byte
	tunSizes []int
	outMsgs  []unix.Mmsghdr
	outIovs  []unix.Iovec
	outNames []unix.RawSockaddrInet4
	outN     int
	outIdx   int
	sendFn   func(fd uintptr) bool
	icmpBufs [][]byte
	icmpOut  [][]byte
	lim      limiter

	// Ingress, owned by the ingress goroutine.
	inBufs  [][]byte
	inMsgs  []unix.Mmsghdr
	inIovs  []unix.Iovec
	inNames []unix.RawSockaddrInet4
	inWrite [][]byte
	recvN   int
	recvErr error
	recvFn  func(fd uintptr) bool

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
		start:    time.Now(),
		tunBufs:  slab(eb, off+maxDatagram),
		tunSizes: make([]int, eb),
		outMsgs:  make([]unix.Mmsghdr, eb),
		outIovs:  make([]unix.Iovec, eb),
		outNames: make([]unix.RawSockaddrInet4, eb),
		icmpBufs: slab(eb, off+icmpMaxLen),
		icmpOut:  make([][]byte, eb),
		lim:      newLimiter(icmpRate, icmpBurst),
		inBufs:   slab(udpBatch, off+maxDatagram),
		inMsgs:   make([]unix.Mmsghdr, udpBatch),
		inIovs:   make([]unix.Iovec, udpBatch),
		inNames:  make([]unix.RawSockaddrInet4, udpBatch),
		inWrite:  make([][]byte, udpBatch),
	}
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], uint16(r.cfg.Port))
	sinPort := binary.NativeEndian.Uint16(port[:]) // sin_port holds network byte order
	for i := range w.outMsgs {
		w.outNames[i].Family = unix.AF_INET
		w.outNames[i].Port = sinPort
		h := &w.outMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.outNames[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &w.outIovs[i]
		h.SetIovlen(1)
	}
	for i := range w.inMsgs {
		w.inIovs[i].Base = &w.inBufs[i][off]
		w.inIovs[i].SetLen(maxDatagram)
		h := &w.inMsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&w.inNames[i]))
		h.Namelen = unix.SizeofSockaddrInet4
		h.Iov = &w.inIovs[i]
		h.SetIovlen(1)
	}
	w.sendFn = w.sendLoop
	w.recvFn = w.recvLoop
	return w
}

// egressBatch turns the n packets read from the TUN into datagrams in
// outMsgs (pointing into the TUN buffers, no copy) and ICMP errors in
// icmpOut, and returns how many of each it prepared.
func (w *worker) egressBatch(t *table, n int) (nout, nicmp int) {
	for i := range n {
		pkt := w.tunBufs[i][off : off+w.tunSizes[i]]
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
		binary.BigEndian.PutUint32(w.outNames[nout].Addr[:], peer)
		nout++
	}
	return nout, nicmp
}

// icmpError prepares an ICMP error about pkt as icmpOut[nicmp], unless the
// rules or the rate limit forbid one, and returns the new count.
func (w *worker) icmpError(pkt []byte, hlen int, typ, code, ttl uint8, nicmp int) int {
	if !mayReportError(pkt, hlen) {
		return nicmp
	}
	if !w.lim.allow(int64(time.Since(w.start))) {
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

// ingressBatch checks the n received datagrams and lists the packets to
// write into the TUN in inWrite; it returns their number.
func (w *worker) ingressBatch(t *table, n int) int {
	k := 0
	accept := w.r.cfg.AcceptUnknownPeers
	for i := range n {
		m := &w.inMsgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			w.in.drop(dropOversize)
			continue
		}
		if !accept && !t.isPeer(be32(w.inNames[i].Addr)) {
			w.in.drop(dropUnknownPeer)
			continue
		}
		pkt := w.inBufs[i][off : off+int(m.Len)]
		_, total, reason := parseIPv4(pkt)
		if reason != dropNone {
			w.in.drop(reason)
			continue
		}
		w.inWrite[k] = w.inBufs[i][:off+total]
		k++
	}
	return k
}

func (w *worker) runEgress() error {
	for {
		n, err := w.q.Read(w.tunBufs, w.tunSizes, off)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return errStopped
			}
			return wrapf(err, "worker %d: read from TUN", w.id)
		}
		if n == 0 {
			continue
		}
		w.eg.batches.Add(1)
		nout, nicmp := w.egressBatch(w.r.table.Load(), n)
		if nout > 0 {
			w.outN, w.outIdx = nout, 0
			if err := w.rc.Write(w.sendFn); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return errStopped
				}
				return wrapf(err, "worker %d: send to peers", w.id)
			}
		}
		if nicmp > 0 {
			if err := w.writeTUN(w.icmpOut[:nicmp], &w.eg, false); err != nil {
				return err
			}
		}
	}
}

// sendLoop sends outMsgs[outIdx:outN] with sendmmsg. A datagram the kernel
// refuses is counted and skipped; EAGAIN parks on the netpoller.
func (w *worker) sendLoop(fd uintptr) bool {
	for w.outIdx < w.outN {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&w.outMsgs[w.outIdx])),
			uintptr(w.outN-w.outIdx), 0, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0 || r == 0:
			// The errno belongs to the first unsent datagram.
			w.eg.drop(dropSendError)
			w.outIdx++
			continue
		}
		var bytes uint64
		for _, m := range w.outMsgs[w.outIdx : w.outIdx+int(r)] {
			bytes += uint64(m.Len)
		}
		w.eg.packets.Add(uint64(r))
		w.eg.bytes.Add(bytes)
		w.outIdx += int(r)
	}
	return true
}

func (w *worker) runIngress() error {
	for {
		w.recvN, w.recvErr = 0, nil
		if err := w.rc.Read(w.recvFn); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return errStopped
			}
			return wrapf(err, "worker %d: receive from peers", w.id)
		}
		if w.recvErr != nil {
			return wrapf(w.recvErr, "worker %d: recvmmsg", w.id)
		}
		w.in.batches.Add(1)
		if k := w.ingressBatch(w.r.table.Load(), w.recvN); k > 0 {
			if err := w.writeTUN(w.inWrite[:k], &w.in, true); err != nil {
				return err
			}
		}
	}
}

// recvLoop fills inMsgs with one recvmmsg; it returns false (park) when
// no datagram is waiting.
func (w *worker) recvLoop(fd uintptr) bool {
	for i := range w.inMsgs {
		w.inMsgs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		w.inMsgs[i].Hdr.Flags = 0
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&w.inMsgs[0])),
			uintptr(len(w.inMsgs)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			w.recvN = int(r)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		default:
			w.recvErr = e
			return true
		}
	}
}

// writeTUN writes bufs into the TUN queue. A packet the TUN refuses is
// counted and skipped; only a closed queue ends the worker. Data packets
// count as received traffic, ICMP errors as sent ICMP.
func (w *worker) writeTUN(bufs [][]byte, c *counters, data bool) error {
	for len(bufs) > 0 {
		n, err := w.q.Write(bufs, off)
		if data {
			var bytes uint64
			for _, b := range bufs[:n] {
				bytes += uint64(len(b) - off)
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
		c.drop(dropTunWriteError)
		w.r.log.Debug("TUN write failed", "worker", w.id, "error", err)
		bufs = bufs[min(n+1, len(bufs)):]
	}
	return nil
}
