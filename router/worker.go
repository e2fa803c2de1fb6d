package router

import (
	"errors"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel-go/tun"
	"github.com/flannel-go/flannel-go/udp"
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

// transient counts a failed call that does not stop the worker and logs it
// once per errno per minute.
func (w *worker) transient(c *errnoCounts, op syscallOp, err error) {
	e := errnoOf(err)
	if c.count(op, e, w.clock()) {
		w.r.log.Warn("Data-plane call failed; counting and carrying on (logged once a minute per error)",
			"worker", w.id, "call", opNames[op], "errno", unix.ErrnoName(e), "error", err)
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
