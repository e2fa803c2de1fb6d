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

// dropTable names each drop reason: the /metrics label, the direction of
// the packets it drops and what it means (also docs/metrics.md's list, checked
// by TestDocsDropReasons). A new reason is a constant above and a line
// here.
var dropTable = [numDropReasons]struct{ name, dir, help string }{
	dropNoRoute:       {"no_route", "out", "destination inside the overlay network but in no node's subnet (no lease, or the lease expired)"},
	dropUnknownPeer:   {"unknown_peer", "in", "datagram from an address that holds no lease; see `--accept-unknown-peers`"},
	dropTTLExceeded:   {"ttl_exceeded", "out", "TTL (IPv4) or hop limit (IPv6) would reach 0; an ICMP or ICMPv6 time exceeded is sent back (subject to the rate limit)"},
	dropMalformed:     {"malformed", "both", "too short, bad IPv4 header length or total length, bad IPv6 payload length; with both families on, an IP version neither 4 nor 6"},
	dropOversize:      {"oversize", "in", "datagram larger than the receive buffer (a peer with a larger MTU)"},
	dropNotIPv4:       {"not_ipv4", "both", "inner packet of another IP version on a node whose network carries IPv4 only"},
	dropSendError:     {"send_error", "out", "the UDP socket refused the datagram, mostly its send queue being full (ENOBUFS/EAGAIN)"},
	dropTunWriteError: {"tun_write_error", "in", "flannel0 refused the packet, mostly its queue being full"},
	dropTunRead:       {"tun_read", "out", "flannel0 returned a super-packet flanneld could not split (malformed virtio-net header)"},
	dropStrictSource:  {"strict_source", "in", "inner source outside the sending node's subnet, with `--strict-source`"},
	dropCoDel:         {"codel", "both", "a bulk flow's packet dropped by the AQM because the queue in front of flanneld stood above `--aqm-target`"},
	dropNotIPv6:       {"not_ipv6", "both", "inner IPv4 packet on a node whose network carries IPv6 only"},
	dropPeerNoIPv6:    {"peer_no_ipv6", "out", "IPv6 packet for a node that does not answer the IPv6 probe (an upstream flanneld, whose udp backend carries IPv4 only); an ICMPv6 unreachable is sent back (subject to the rate limit)"},
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

	// Drops counts dropped packets by reason (dropTable).
	Drops [numDropReasons]uint64

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
	for r := range s.Drops {
		s.Drops[r] += c.drops[r].Load()
	}
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
