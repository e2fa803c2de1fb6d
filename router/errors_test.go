package router

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestErrnoCountsLogOncePerMinute(t *testing.T) {
	var c errnoCounts
	logged := 0
	for _, at := range []time.Duration{0, time.Second, 59 * time.Second, 61 * time.Second, 62 * time.Second} {
		if c.count(opRecvmmsg, unix.ENOBUFS, at) {
			logged++
		}
	}
	if logged != 2 {
		t.Errorf("logged %d times in 62 s, want 2", logged)
	}
	if !c.count(opRecvmmsg, unix.ENOMEM, 62*time.Second) {
		t.Error("another errno was not logged")
	}
	m := map[[2]string]uint64{}
	c.addTo(m)
	if m[[2]string{"recvmmsg", "ENOBUFS"}] != 5 || m[[2]string{"recvmmsg", "ENOMEM"}] != 1 {
		t.Errorf("counts %v", m)
	}
	if e := errnoOf(fmt.Errorf("wrapped: %w", unix.ECONNREFUSED)); e != unix.ECONNREFUSED {
		t.Errorf("errnoOf = %v", e)
	}
}
