package router

import (
	"sync/atomic"
	"time"
)

// Stage names one step of a packet's way through a worker whose time is
// measured once per batch (Stats.Stages): the trace of where a packet's
// time goes under load.
type Stage uint8

const (
	// StageTUNBacklog is how long the egress worker has found the TUN
	// queue backlogged (a Read filling half its batch or more), the lower
	// bound of a packet's wait in the TUN ring that the AQM acts on;
	// observed for the batches that found it backlogged.
	StageTUNBacklog Stage = iota
	// StageRoute is the egress routing of one batch: parse, lookup, TTL,
	// train building.
	StageRoute
	// StageSend is one batch's sendmmsg calls, including, on a local
	// underlay, the peer's UDP receive softirq that runs inside them.
	StageSend
	// StageSocketQueue is how long the oldest datagram of a recvmmsg batch
	// waited in the socket's receive queue (kernel receive timestamp to
	// now), measured while the AQM is on.
	StageSocketQueue
	// StageTUNWrite is one batch's TUN writes, including the inner
	// packets' receive processing the kernel does inside them.
	StageTUNWrite
	NumStages
)

// StageNames are the metric labels of the stages.
var StageNames = [NumStages]string{"tun_backlog", "route", "send", "socket_queue", "tun_write"}

// StageBounds are the upper bounds of the stage-time buckets, in
// microseconds; the last bucket holds the longer ones.
var StageBounds = [...]int64{5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}

// StageHist is the distribution of one stage's time.
type StageHist struct {
	Buckets [len(StageBounds) + 1]uint64
	SumNs   uint64
}

type stageCounters struct {
	buckets [NumStages][len(StageBounds) + 1]atomic.Uint64
	sum     [NumStages]atomic.Uint64
}

func (c *stageCounters) observe(s Stage, d time.Duration) {
	us := int64(d / time.Microsecond)
	i := 0
	for i < len(StageBounds) && us > StageBounds[i] {
		i++
	}
	c.buckets[s][i].Add(1)
	c.sum[s].Add(uint64(max(d, 0)))
}

func (c *stageCounters) addTo(h *[NumStages]StageHist) {
	for s := range h {
		for i := range h[s].Buckets {
			h[s].Buckets[i] += c.buckets[s][i].Load()
		}
		h[s].SumNs += c.sum[s].Load()
	}
}
