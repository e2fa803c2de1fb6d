package router

import (
	"errors"
	"os"
	"time"

	"github.com/flannel-go/flannel-go/tun"
	"github.com/flannel-go/flannel-go/udp"
)

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
