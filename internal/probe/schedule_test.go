package probe

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// fakeStore answers the asks of the peers in answering.
type fakeStore struct {
	answering map[netip.Addr]bool
	asked     map[netip.Addr]uint64
	answered  map[netip.Addr]uint64
	misses    map[netip.Addr]int
}

func newFakeStore() *fakeStore {
	return &fakeStore{answering: map[netip.Addr]bool{}, asked: map[netip.Addr]uint64{},
		answered: map[netip.Addr]uint64{}, misses: map[netip.Addr]int{}}
}

func (f *fakeStore) Asked(p netip.Addr, n uint64)         { f.asked[p] = n }
func (f *fakeStore) Answered(p netip.Addr, n uint64) bool { return f.answered[p] == n }
func (f *fakeStore) Missed(p netip.Addr, m int)           { f.misses[p] = m }

var (
	peerA = netip.MustParseAddr("192.0.2.1")
	peerB = netip.MustParseAddr("192.0.2.2")
)

// play steps s from 0 to end and returns, per peer, when it was asked;
// a peer that answers answers each ask at once.
func play(t *testing.T, s *Schedule, f *fakeStore, targets []netip.Addr, from, end time.Duration) map[netip.Addr][]time.Duration {
	t.Helper()
	asks := map[netip.Addr][]time.Duration{}
	now := from
	s.send = func(p netip.Addr, msg [Len]byte) {
		m, ok := Parse(msg[:])
		if !ok || m.Type != s.typ || m.Nonce != f.asked[p] {
			t.Fatalf("sent %x to %s, want a %d ask with nonce %d", msg, p, s.typ, f.asked[p])
		}
		asks[p] = append(asks[p], now)
		if f.answering[p] {
			f.answered[p] = m.Nonce
		}
	}
	for now < end {
		next := s.Step(targets, now)
		if next <= now {
			t.Fatalf("step at %v wants to run again at %v", now, next)
		}
		now = next
	}
	return asks
}

var timing = Timing{Interval: 10 * time.Second, AnswerWait: time.Second, FirstRetry: 100 * time.Millisecond}

// TestScheduleTiming: a peer that answers is asked once an interval; a
// silent one from FirstRetry on, doubling up to the interval, its misses
// counted.
func TestScheduleTiming(t *testing.T) {
	f := newFakeStore()
	f.answering[peerB] = true
	s := NewSchedule(IPv6Ask, timing, f, nil)
	asks := play(t, s, f, []netip.Addr{peerA, peerB}, 0, 60*time.Second)
	for i := 1; i < len(asks[peerB]); i++ {
		if gap := asks[peerB][i] - asks[peerB][i-1]; i > 1 && gap != timing.Interval {
			t.Errorf("answering peer: asks %d and %d %v apart, want %v", i-1, i, gap, timing.Interval)
		}
	}
	a := asks[peerA]
	// The first ask and the first miss both retry after FirstRetry.
	want := []time.Duration{0, 100 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}
	for i := 1; i < len(want); i++ {
		if gap := a[i] - a[i-1]; gap != want[i] {
			t.Errorf("silent peer: asks %d and %d %v apart, want %v", i-1, i, gap, want[i])
		}
	}
	if last := a[len(a)-1] - a[len(a)-2]; last != timing.Interval {
		t.Errorf("silent peer asked every %v in the end, want %v", last, timing.Interval)
	}
	if f.misses[peerA] < 4 || f.misses[peerB] != 0 {
		t.Errorf("misses A %d B %d, want A counting up, B 0", f.misses[peerA], f.misses[peerB])
	}
}

// TestScheduleAnswerWait: a peer that answered and stops (replaced at its
// address) misses its next ask an AnswerWait after it, not an interval
// later.
func TestScheduleAnswerWait(t *testing.T) {
	f := newFakeStore()
	f.answering[peerA] = true
	s := NewSchedule(IPv6Ask, timing, f, nil)
	play(t, s, f, []netip.Addr{peerA}, 0, 15*time.Second)
	f.answering[peerA] = false
	asks := play(t, s, f, []netip.Addr{peerA}, 15*time.Second, 40*time.Second)
	if len(asks[peerA]) < 2 {
		t.Fatalf("asks after it stopped: %v", asks[peerA])
	}
	first := asks[peerA][0]
	if gap := asks[peerA][1] - first; gap != timing.AnswerWait {
		t.Errorf("the ask after an unanswered one came %v later, want AnswerWait %v", gap, timing.AnswerWait)
	}
	if f.misses[peerA] == 0 {
		t.Error("no miss counted")
	}
}

// TestScheduleRecheck: a peer to recheck is asked at the next step.
func TestScheduleRecheck(t *testing.T) {
	f := newFakeStore()
	f.answering[peerA] = true
	s := NewSchedule(FastPathAsk, timing, f, nil)
	play(t, s, f, []netip.Addr{peerA}, 0, 3*time.Second)
	var sent []netip.Addr
	s.send = func(p netip.Addr, _ [Len]byte) { sent = append(sent, p) }
	s.Step([]netip.Addr{peerA}, 3*time.Second)
	if len(sent) != 0 {
		t.Fatalf("asked %v before the interval was up", sent)
	}
	s.Recheck([]netip.Addr{peerA})
	s.Step([]netip.Addr{peerA}, 3*time.Second+time.Millisecond)
	if !slices.Equal(sent, []netip.Addr{peerA}) {
		t.Fatalf("after Recheck asked %v, want %s", sent, peerA)
	}
}

// TestScheduleForgets: a peer that leaves the targets is forgotten and,
// when it comes back, asked at once.
func TestScheduleForgets(t *testing.T) {
	f := newFakeStore()
	f.answering[peerA] = true
	s := NewSchedule(FastPathAsk, timing, f, nil)
	play(t, s, f, []netip.Addr{peerA, peerB}, 0, 3*time.Second)
	s.Step([]netip.Addr{peerB}, 3*time.Second)
	if _, ok := s.state[peerA]; ok {
		t.Fatal("a peer no longer among the targets is still scheduled")
	}
	var sent []netip.Addr
	s.send = func(p netip.Addr, _ [Len]byte) { sent = append(sent, p) }
	s.Step([]netip.Addr{peerA, peerB}, 3*time.Second+time.Millisecond)
	if !slices.Contains(sent, peerA) {
		t.Fatalf("a peer back among the targets was not asked at once (sent %v)", sent)
	}
}

// TestFastPathRetriesBeforeExpiry plays the fast path's timing (2 s,
// retries after 100 ms): a peer that answered at 0 and whose later
// answers are all lost is asked several times before its answer expires
// (three intervals), not twice as with a fixed interval.
func TestFastPathRetriesBeforeExpiry(t *testing.T) {
	fast := Timing{Interval: 2 * time.Second, AnswerWait: 100 * time.Millisecond, FirstRetry: 100 * time.Millisecond}
	f := newFakeStore()
	f.answering[peerA] = true
	s := NewSchedule(FastPathAsk, fast, f, nil)
	play(t, s, f, []netip.Addr{peerA}, 0, time.Millisecond)
	f.answering[peerA] = false
	asks := play(t, s, f, []netip.Addr{peerA}, time.Millisecond, 3*fast.Interval)
	if len(asks[peerA]) < 5 {
		t.Errorf("%d asks before the answer expired (%v), want at least 5", len(asks[peerA]), asks[peerA])
	}
}
