package fastpath

import (
	"testing"
	"time"
)

// TestProbeBackoff checks the waits between probes of one peer.
func TestProbeBackoff(t *testing.T) {
	const iv = 2 * time.Second
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		answered bool
		age      time.Duration
		prev     time.Duration
		first    bool
		want     time.Duration
	}{
		{"first ask", false, 0, 0, true, firstProbeBackoff},
		{"no answer yet, doubling", false, 0, 400 * ms, false, 800 * ms},
		{"no answer yet, capped", false, 0, 1600 * ms, false, iv},
		{"never answers: once per interval", false, 0, iv, false, iv},
		{"fresh answer", true, iv, iv, false, iv},
		{"answer just in", true, 50 * ms, 200 * ms, false, iv},
		{"last ask unanswered: quick retries", true, 2*iv - 10*ms, iv, false, firstProbeBackoff},
		{"still unanswered, doubling", true, 2*iv + 100*ms, firstProbeBackoff, false, 2 * firstProbeBackoff},
	} {
		if got := probeBackoff(tc.answered, tc.age, tc.prev, tc.first, iv); got != tc.want {
			t.Errorf("%s: probeBackoff(%v, %v, %v, %v) = %v, want %v", tc.name, tc.answered, tc.age, tc.prev, tc.first, got, tc.want)
		}
	}
}

// TestProbeRetriesBeforeExpiry plays the probe schedule of a peer that
// answered at time 0 and whose later answers are all lost: it must be
// asked several times before its answer expires (three intervals), not
// twice as with a fixed interval.
func TestProbeRetriesBeforeExpiry(t *testing.T) {
	const iv = 2 * time.Second
	validity := 3 * iv
	now, prev := iv, iv // the first periodic ask after the answer
	asks := 0
	for now <= validity {
		backoff := probeBackoff(true, now, prev, false, iv)
		asks++
		now += backoff
		prev = backoff
	}
	if asks < 5 {
		t.Errorf("%d asks before the answer expired, want at least 5", asks)
	}
}
