package router

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/flannel-go/flannel-go/internal/probe"
)

// IPv6 capability probe. Upstream flannel's udp backend holds dual-stack
// leases but drops every IPv6 packet, so the router asks each peer that
// holds an IPv6 subnet whether it carries IPv6 (package probe: the
// format and the schedule it shares with the fast path's probe). A peer
// that answers carries IPv6; one that stays silent for about a second
// gets no IPv6 until it answers: its IPv6 packets are refused with an
// ICMPv6 unreachable instead of vanishing.

// ipv6Timing: an unanswered peer is asked again after 100 ms, doubling
// up to 10 s, the period of the asks to a peer that answers; after
// probeMisses unanswered asks in a row (0.1+0.1+0.2+0.4 s) it counts as
// not carrying IPv6. An ask to a peer that answered is due back within
// a second: a node replaced by an upstream one at the same address loses
// IPv6 at most a period and about 2 s later.
var ipv6Timing = probe.Timing{Interval: 10 * time.Second, AnswerWait: time.Second, FirstRetry: 100 * time.Millisecond}

const probeMisses = 4

// A peer's IPv6 capability (peerInfo.state).
const (
	ipv6Unknown uint32 = iota
	ipv6Capable
	ipv6Incapable
)

// peerInfo is a peer's IPv6 capability. SetRoutes hands the same one to
// every table while the peer keeps a route; the prober and the ingress
// workers write it, the egress workers read state.
type peerInfo struct {
	state    atomic.Uint32
	askNonce atomic.Uint64 // nonce of the last ask sent
	answered atomic.Uint64 // nonce of the last answer that matched an ask
	refused  atomic.Bool   // counted as not carrying IPv6 (logged once)
}

// answer records a probe answer with nonce from the peer pi: it carries
// IPv6 if the nonce is that of the last ask.
func (pi *peerInfo) answer(nonce uint64) bool {
	if nonce == 0 || nonce != pi.askNonce.Load() {
		return false
	}
	pi.answered.Store(nonce)
	pi.state.Store(ipv6Capable)
	return true
}

// ipv6Store is the IPv6 probe's probe.Store: the peers' peerInfo, found
// in the current table.
type ipv6Store struct{ r *Router }

func (s ipv6Store) info(peer netip.Addr) *peerInfo {
	t := s.r.table.Load()
	if i := t.sender(peer); i != 0 {
		return t.info[i-1]
	}
	return nil
}

func (s ipv6Store) Asked(peer netip.Addr, nonce uint64) {
	if pi := s.info(peer); pi != nil {
		pi.askNonce.Store(nonce)
	}
}

func (s ipv6Store) Answered(peer netip.Addr, nonce uint64) bool {
	pi := s.info(peer)
	return pi != nil && pi.answered.Load() == nonce
}

func (s ipv6Store) Missed(peer netip.Addr, misses int) {
	pi := s.info(peer)
	switch {
	case pi == nil:
	case misses == 0 && pi.refused.Swap(false):
		s.r.log.Info("Peer answers the IPv6 probe again: carrying IPv6 to it", "peer", peer)
	case misses >= probeMisses && !pi.refused.Swap(true):
		pi.state.Store(ipv6Incapable)
		s.r.log.Warn("Peer does not answer the IPv6 probe: refusing IPv6 to it with ICMPv6 unreachable until it does (an upstream flanneld's udp backend carries IPv4 only)",
			"peer", peer, "unanswered", misses)
	}
}

// newIPv6Probe is the router's IPv6 probe schedule; its asks go through
// r.sendProbe to the peers' cluster port.
func newIPv6Probe(r *Router) *probe.Schedule {
	return probe.NewSchedule(probe.IPv6Ask, ipv6Timing, ipv6Store{r}, func(peer netip.Addr, msg [probe.Len]byte) {
		to := netip.AddrPortFrom(peer, uint16(r.cfg.Port))
		// A lost ask counts as a miss; the next one retries.
		if err := r.sendProbe(msg[:], to); err != nil {
			r.log.Debug("Sending an IPv6 probe failed", "peer", to, "error", err)
		}
	})
}

// ipv6Targets lists the peers the probe asks: those holding IPv6 subnets.
func (r *Router) ipv6Targets() []netip.Addr {
	t := r.table.Load()
	out := make([]netip.Addr, 0, len(t.v6Peers))
	for _, i := range t.v6Peers {
		out = append(out, t.peer(i).Addr())
	}
	return out
}

// pokeProbe makes the probe look at the table now: SetRoutes may have
// added peers.
func (r *Router) pokeProbe() {
	select {
	case r.probeWake <- struct{}{}:
	default:
	}
}
