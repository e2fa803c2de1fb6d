package router

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"
)

// IPv6 capability probe. Upstream flannel's udp backend holds dual-stack
// leases but drops every IPv6 packet, so the router asks each peer that
// holds an IPv6 subnet whether it carries IPv6, with the fast path's probe
// format (fastpath/fastpath.go): 16 bytes, probeMagic, a type byte, a
// nonce. The leading 0x00 is neither IPv4 nor IPv6: upstream drops it, and
// the fast path's ingress program passes the types it does not know to
// the socket. A peer that answers carries IPv6; one that stays silent for
// about a second gets no IPv6 until it answers: its IPv6 packets are
// refused with an ICMPv6 unreachable instead of vanishing.

// probeMagic starts every probe (the fast path's, too).
var probeMagic = [7]byte{0x00, 'f', 'l', 'g', 'o', 'f', 'p'}

// Probe types; 1 and 2 are the fast path's ask and answer.
const (
	probeIPv6Ask    = 3
	probeIPv6Answer = 4
	probeLen        = 16
)

// Probe timing: an unanswered peer is asked again after firstProbeBackoff,
// doubling up to probeInterval, the period of the asks to a peer that
// answers; after probeMisses unanswered asks in a row (0.1+0.2+0.4+0.8 s)
// it counts as not carrying IPv6. An ask to a peer that answered is due
// back within answerWait, not at the end of the period: a node replaced
// by an upstream one at the same address loses IPv6 at most a period and
// about 2 s later (before: two periods).
const (
	firstProbeBackoff = 100 * time.Millisecond
	probeInterval     = 10 * time.Second
	probeMisses       = 4
	answerWait        = time.Second
)

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
	recheck  atomic.Bool   // ask now: the peer took a new lease (ForgetPeers)
}

// probeState is the prober's own record of a peer.
type probeState struct {
	next    time.Duration // when the peer is asked next
	backoff time.Duration
	nonce   uint64 // of the outstanding ask, 0 if none
	asked   time.Duration
	misses  int    // unanswered asks in a row
	round   uint64 // the last round the peer was in the table
}

// prober asks the peers holding IPv6 subnets whether they carry IPv6 and
// sends the answers to their asks. Run owns the loop; send may be called
// from any goroutine.
type prober struct {
	r     *Router
	state map[*peerInfo]*probeState
	nonce uint64
	round uint64
	wake  chan struct{}
	// send sends one probe datagram; Run sets it to the probe socket's.
	send func(b []byte, to netip.AddrPort) error
}

func newProber(r *Router) *prober {
	return &prober{
		r:     r,
		state: map[*peerInfo]*probeState{},
		nonce: rand.Uint64(),
		wake:  make(chan struct{}, 1),
		send:  func([]byte, netip.AddrPort) error { return nil },
	}
}

// poke makes the loop look at the table now: SetRoutes may have added
// peers.
func (p *prober) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func probeMsg(typ uint8, nonce uint64) [probeLen]byte {
	var b [probeLen]byte
	copy(b[:], probeMagic[:])
	b[7] = typ
	binary.BigEndian.PutUint64(b[8:], nonce)
	return b
}

// isProbe reports whether datagram d is a probe (of any type).
func isProbe(d []byte) bool {
	return len(d) == probeLen && string(d[:7]) == string(probeMagic[:])
}

// step asks the peers that are due at now (the caller's monotonic clock),
// settles their previous asks and returns when it wants to run again.
func (p *prober) step(t *table, now time.Duration) (next time.Duration) {
	p.round++
	next = now + probeInterval
	for _, idx := range t.v6Peers {
		pi := t.info[idx-1]
		st := p.state[pi]
		if st == nil {
			st = &probeState{}
			p.state[pi] = st
		}
		st.round = p.round
		if pi.recheck.Swap(false) {
			st.next = now
		}
		if st.nonce != 0 && st.misses == 0 && st.next-st.asked > answerWait && pi.answered.Load() != st.nonce {
			if now < st.asked+answerWait {
				next = min(next, st.asked+answerWait)
				continue
			}
			st.next = now
		}
		if now < st.next {
			next = min(next, st.next)
			continue
		}
		p.settle(pi, st, t.peer(idx))
		p.nonce++
		if p.nonce == 0 {
			p.nonce++
		}
		st.nonce, st.asked = p.nonce, now
		pi.askNonce.Store(st.nonce)
		st.next = now + st.backoff
		next = min(next, st.next)
		if st.misses == 0 {
			next = min(next, now+answerWait)
		}
		msg := probeMsg(probeIPv6Ask, st.nonce)
		// A lost ask counts as a miss; the next one retries.
		if err := p.send(msg[:], t.peer(idx)); err != nil {
			p.r.log.Debug("Sending an IPv6 probe failed", "peer", t.peer(idx), "error", err)
		}
	}
	for pi, st := range p.state {
		if st.round != p.round {
			delete(p.state, pi)
		}
	}
	return next
}

// settle accounts for the peer's outstanding ask and sets the backoff
// before the next.
func (p *prober) settle(pi *peerInfo, st *probeState, peer netip.AddrPort) {
	switch {
	case st.nonce != 0 && pi.answered.Load() == st.nonce:
		if st.misses >= probeMisses {
			p.r.log.Info("Peer answers the IPv6 probe again: carrying IPv6 to it", "peer", peer.Addr())
		}
		st.misses, st.backoff = 0, probeInterval
		return
	case st.nonce != 0:
		st.misses++
	}
	if st.misses >= probeMisses && pi.state.Swap(ipv6Incapable) != ipv6Incapable {
		p.r.log.Warn("Peer does not answer the IPv6 probe: refusing IPv6 to it with ICMPv6 unreachable until it does (an upstream flanneld's udp backend carries IPv4 only)",
			"peer", peer.Addr(), "unanswered", st.misses)
	}
	if st.misses <= 1 {
		// A first miss after answers (or the first ask) retries soon: one
		// lost datagram should not cost a peer its IPv6 for long.
		st.backoff = firstProbeBackoff
	} else {
		st.backoff = min(2*st.backoff, probeInterval)
	}
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

// run is the prober's loop, until done is closed.
func (p *prober) run(done <-chan struct{}) {
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-done:
			return
		case <-timer.C:
		case <-p.wake:
		}
		now := time.Since(start)
		next := p.step(p.r.table.Load(), now)
		timer.Reset(next - time.Since(start))
	}
}
