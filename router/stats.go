package router

import (
	"math/bits"
	"sync/atomic"
)

// dropReason says why a packet was dropped; it indexes the drop counters.
type dropReason uint8

const (
	dropNone dropReason = iota
	dropNoRoute
	dropUnknownPeer
	dropTTLExceeded
	dropMalformed
	dropOversize
	dropNotIPv4
	dropSendError
	dropTunWriteError
	dropTunRead
	dropStrictSource
	dropCoDel
	dropNotIPv6
	dropPeerNoIPv6
	numDropReasons
)

// Drops counts dropped packets by reason.
type Drops struct {
	NoRoute       uint64 // TUN packet for a destination no peer owns
	UnknownPeer   uint64 // datagram whose source is not a current peer's PublicIP
	TTLExceeded   uint64 // TUN packet whose TTL (IPv4) or hop limit (IPv6) would reach 0 on the way out
	Malformed     uint64 // too short, bad header length or bad total length; on a dual-stack router also an IP version neither 4 nor 6
	Oversize      uint64 // datagram truncated by the receive buffer
	NotIPv4       uint64 // inner packet of another IP version than 4 on a router without IPv6
	NotIPv6       uint64 // inner packet of another IP version than 6 on a router without IPv4
	SendError     uint64 // sendmmsg refused the datagram
	TunWriteError uint64 // the TUN refused the packet
	TunRead       uint64 // the TUN queue returned a malformed (super-)packet
	StrictSource  uint64 // inner source outside the sender's subnets (Config.StrictSource)
	CoDel         uint64 // a bulk flow's packet dropped because the queue in front of the router stood above the AQM target
	PeerNoIPv6    uint64 // TUN IPv6 packet for a peer that does not answer the IPv6 probe (an upstream node's udp backend drops IPv6)
}

// Stats are the router's counters, summed over its workers. Packets and
// bytes count inner packets (the UDP payload), not outer headers.
type Stats struct {
	TxPackets uint64 // sent to peers
	TxBytes   uint64
	RxPackets uint64 // received from peers and written into the TUN
	RxBytes   uint64
	TxBatches uint64 // TUN read batches
	RxBatches uint64 // recvmmsg batches

	ICMPSent        uint64 // ICMP and ICMPv6 errors written into the TUN
	ICMPRateLimited uint64 // ICMP errors not sent because of the rate limit

	// TxCEMarked and RxCEMarked count ECN-capable packets marked
	// Congestion Experienced instead of a CoDel drop.
	TxCEMarked, RxCEMarked uint64

	Drops Drops

	// TxBatchSizes and RxBatchSizes count batches by size: bucket i holds
	// the batches of more than BatchSizeBounds[i-1] and at most
	// BatchSizeBounds[i] packets, the last bucket the larger ones.
	TxBatchSizes, RxBatchSizes [len(BatchSizeBounds) + 1]uint64
	// TxBatchPackets and RxBatchPackets are the packets in those batches.
	TxBatchPackets, RxBatchPackets uint64

	// Stages is the distribution of each step's time per batch.
	Stages [NumStages]StageHist

	// SyscallErrors counts failed data-plane calls by call and errno,
	// sorted; calls that never failed are left out.
	SyscallErrors []SyscallError

	// Offloads in use when Stats was called.
	Offloads Offloads
}

// BatchSizeBounds are the upper bounds of the batch-size buckets.
var BatchSizeBounds = [...]int{1, 2, 4, 8, 16, 32, 64, 128}

// counters belong to one direction of one worker: only its goroutine
// writes them, Stats reads them. The padding keeps two directions off
// one cache line.
type counters struct {
	packets, bytes, batches atomic.Uint64
	batchPackets            atomic.Uint64
	batchSizes              [len(BatchSizeBounds) + 1]atomic.Uint64
	icmpSent, icmpLimited   atomic.Uint64
	ceMarked                atomic.Uint64
	drops                   [numDropReasons]atomic.Uint64
	_                       [64]byte
}

func (c *counters) drop(r dropReason) { c.drops[r].Add(1) }

// batch counts a batch of n >= 1 packets.
func (c *counters) batch(n int) {
	c.batches.Add(1)
	c.batchPackets.Add(uint64(n))
	c.batchSizes[min(bits.Len(uint(n-1)), len(BatchSizeBounds))].Add(1)
}

func sumBatches(sizes *[len(BatchSizeBounds) + 1]uint64, c *counters) {
	for i := range sizes {
		sizes[i] += c.batchSizes[i].Load()
	}
}

func (s *Stats) addDrops(c *counters) {
	s.Drops.NoRoute += c.drops[dropNoRoute].Load()
	s.Drops.UnknownPeer += c.drops[dropUnknownPeer].Load()
	s.Drops.TTLExceeded += c.drops[dropTTLExceeded].Load()
	s.Drops.Malformed += c.drops[dropMalformed].Load()
	s.Drops.Oversize += c.drops[dropOversize].Load()
	s.Drops.NotIPv4 += c.drops[dropNotIPv4].Load()
	s.Drops.SendError += c.drops[dropSendError].Load()
	s.Drops.TunWriteError += c.drops[dropTunWriteError].Load()
	s.Drops.TunRead += c.drops[dropTunRead].Load()
	s.Drops.StrictSource += c.drops[dropStrictSource].Load()
	s.Drops.CoDel += c.drops[dropCoDel].Load()
	s.Drops.NotIPv6 += c.drops[dropNotIPv6].Load()
	s.Drops.PeerNoIPv6 += c.drops[dropPeerNoIPv6].Load()
	s.ICMPSent += c.icmpSent.Load()
	s.ICMPRateLimited += c.icmpLimited.Load()
}

// limiter is a token bucket for ICMP errors, one per worker, driven by the
// caller's monotonic clock so it needs no lock and no allocation.
type limiter struct {
	tokens int64
	last   int64 // ns on the caller's clock when tokens was last topped up
	rate   int64 // tokens per second
	burst  int64
}

func newLimiter(rate, burst int64) limiter {
	return limiter{tokens: burst, rate: rate, burst: burst}
}

func (l *limiter) allow(now int64) bool {
	elapsed := now - l.last
	if elapsed >= l.burst*1e9/l.rate {
		l.tokens, l.last = l.burst, now
	} else if add := elapsed * l.rate / 1e9; add > 0 {
		l.tokens = min(l.burst, l.tokens+add)
		l.last += add * 1e9 / l.rate
	}
	if l.tokens <= 0 {
		return false
	}
	l.tokens--
	return true
}
