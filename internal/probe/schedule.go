package probe

import (
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// Timing shapes a schedule.
type Timing struct {
	// Interval is the time between asks to a peer that answers them.
	Interval time.Duration
	// AnswerWait is how long an answer may take: a peer that answered
	// before but not this ask is asked again then, not an interval later.
	AnswerWait time.Duration
	// FirstRetry is the wait after an unanswered ask, doubling with each
	// further one up to Interval.
	FirstRetry time.Duration
}

// Store is where a use of the probe keeps what the peers answered; the
// schedule calls it from the goroutine that runs Step.
type Store interface {
	// Asked records that peer is being sent an ask with nonce: its
	// answer must carry that nonce.
	Asked(peer netip.Addr, nonce uint64)
	// Answered tells whether peer answered its ask with nonce.
	Answered(peer netip.Addr, nonce uint64) bool
	// Missed gives, for each ask settled, the peer's unanswered asks in a
	// row: 0 when it answered.
	Missed(peer netip.Addr, misses int)
}

// Schedule decides when each peer is asked: a peer that answers once per
// Interval; a silent one (a peer without the capability, or a lost
// datagram: under load a full backlog drops probes like any packet) from
// FirstRetry on, doubling up to Interval.
type Schedule struct {
	typ    Type
	timing Timing
	store  Store
	send   func(peer netip.Addr, msg [Len]byte)

	state map[netip.Addr]*peerState
	nonce uint64
	round uint64

	mu      sync.Mutex
	recheck map[netip.Addr]bool
}

// peerState is the schedule's record of a peer.
type peerState struct {
	next    time.Duration // when the peer is asked next
	backoff time.Duration
	nonce   uint64 // of the outstanding ask, 0 if none
	asked   time.Duration
	misses  int    // unanswered asks in a row
	round   uint64 // the last round the peer was among the targets
}

// NewSchedule returns a schedule of asks of type typ (FastPathAsk or
// IPv6Ask) that send sends.
func NewSchedule(typ Type, timing Timing, store Store, send func(peer netip.Addr, msg [Len]byte)) *Schedule {
	return &Schedule{
		typ: typ, timing: timing, store: store, send: send,
		state: map[netip.Addr]*peerState{}, nonce: rand.Uint64(), recheck: map[netip.Addr]bool{},
	}
}

// Recheck makes the peers due at the next Step (they took a new lease:
// what they answered may no longer hold). It may be called from any
// goroutine.
func (s *Schedule) Recheck(peers []netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range peers {
		s.recheck[p] = true
	}
}

// Step asks the peers among targets that are due at now (the caller's
// monotonic clock), settles their previous asks, forgets peers no longer
// among the targets and returns when it wants to run again.
func (s *Schedule) Step(targets []netip.Addr, now time.Duration) (next time.Duration) {
	s.round++
	next = now + s.timing.Interval
	s.mu.Lock()
	recheck := s.recheck
	s.recheck = map[netip.Addr]bool{}
	s.mu.Unlock()
	for _, peer := range targets {
		st := s.state[peer]
		if st == nil {
			st = &peerState{}
			s.state[peer] = st
		}
		st.round = s.round
		if recheck[peer] {
			st.next = now
		}
		if due, at := s.due(peer, st, now); !due {
			next = min(next, at)
			continue
		}
		s.settle(peer, st)
		s.ask(peer, st, now)
		next = min(next, st.next)
		if st.misses == 0 {
			next = min(next, now+s.timing.AnswerWait)
		}
	}
	for peer, st := range s.state {
		if st.round != s.round {
			delete(s.state, peer)
		}
	}
	return next
}

// due tells whether peer is to be asked at now, else when. An ask to a
// peer that answered the one before is due back within AnswerWait: a
// node replaced at the same address by one without the capability is
// noticed an AnswerWait after its next ask, not a period later.
func (s *Schedule) due(peer netip.Addr, st *peerState, now time.Duration) (bool, time.Duration) {
	if st.nonce != 0 && st.misses == 0 && st.next-st.asked > s.timing.AnswerWait && !s.store.Answered(peer, st.nonce) {
		if now < st.asked+s.timing.AnswerWait {
			return false, st.asked + s.timing.AnswerWait
		}
		st.next = now
	}
	return now >= st.next, st.next
}

// settle accounts for the peer's outstanding ask and sets the wait
// before the next.
func (s *Schedule) settle(peer netip.Addr, st *peerState) {
	switch {
	case st.nonce != 0 && s.store.Answered(peer, st.nonce):
		st.misses, st.backoff = 0, s.timing.Interval
		s.store.Missed(peer, 0)
		return
	case st.nonce != 0:
		st.misses++
		s.store.Missed(peer, st.misses)
	}
	if st.misses <= 1 {
		// A first miss after answers (or the first ask) retries soon:
		// one lost datagram should not cost a peer for long.
		st.backoff = s.timing.FirstRetry
	} else {
		st.backoff = min(2*st.backoff, s.timing.Interval)
	}
}

func (s *Schedule) ask(peer netip.Addr, st *peerState, now time.Duration) {
	s.nonce++
	if s.nonce == 0 {
		s.nonce++
	}
	st.nonce, st.asked = s.nonce, now
	s.store.Asked(peer, st.nonce)
	st.next = now + st.backoff
	s.send(peer, Message{Type: s.typ, Nonce: st.nonce}.Marshal())
}

// Run steps the schedule until done is closed: targets lists the peers
// to ask each round, a value on wake (new peers, say) makes it step at
// once.
func (s *Schedule) Run(done, wake <-chan struct{}, targets func() []netip.Addr) {
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-done:
			return
		case <-timer.C:
		case <-wake:
		}
		next := s.Step(targets(), time.Since(start))
		timer.Reset(next - time.Since(start))
	}
}
