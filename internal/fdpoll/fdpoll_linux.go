// Package fdpoll is the one place where the data plane's threads sleep: a
// poll(2) on a data fd and an eventfd that says "stop", preceded by a short
// busy-poll window after recent activity. tun and router use it for every
// blocking read and write, so none of them touches the Go netpoller.
package fdpoll

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrStopped is returned by Wait once the stop eventfd was signalled.
var ErrStopped = errors.New("fdpoll: stopped")

// Waiter waits for one fd to become ready, or for a stop eventfd. It is
// owned by one goroutine.
//
// A sleeping thread costs the next packet a wake-up: on a KVM guest an IPI
// and a VM entry, tens of microseconds, four per round trip through two
// forwarders. So for spin after the data plane's last activity, Wait checks
// the fd without sleeping (poll with timeout 0, a sched_yield in between so
// that the spin never keeps a runnable thread off the CPU) before it
// sleeps; between checks it yields its P to other goroutines (a spinning
// worker must not keep the woken one from running: GOMAXPROCS may be as
// small as the number of CPUs) and its CPU to other threads. Activity is process-wide, not per waiter: a packet sent out is
// what makes the answer likely, and the answer arrives on another thread
// (the socket's receiver, or the TUN reader after a TUN write). Once the
// window is over the waiter sleeps in poll(2): no traffic costs no CPU.
//
// A waiter asleep when activity starts would miss the window, and a
// request-response exchange (a ping every 10 ms) would pay every wake-up
// again. So the first Active after a quiet period kicks the sleeping
// waiters through a shared eventfd: they wake while the packet is still on
// its way and spin when the answer arrives, so that the wake-up is off the
// packet's path.
type Waiter struct {
	pfd  [3]unix.PollFd // the fd, the stop fd, the kick fd
	spin int64          // nanoseconds
}

var (
	// epoch makes activity times small monotonic nanosecond counts.
	epoch = time.Now()
	// lastActive is the time of the data plane's last activity.
	lastActive atomic.Int64
)

func now() int64 { return int64(time.Since(epoch)) }

// kickFD is the eventfd that wakes sleeping waiters when activity starts;
// -1 if it could not be made (waiters then only spin after their own
// activity).
var kickFD = sync.OnceValue(func() int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1
	}
	return fd
})

var kickOne = func() []byte {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	return b[:]
}()

// New returns a waiter on fd for events (unix.POLLIN or POLLOUT) that
// stops once stop (an eventfd, or -1 for none) is readable.
func New(fd int, events int16, stop int, spin time.Duration) *Waiter {
	w := &Waiter{spin: int64(spin)}
	w.pfd[0] = unix.PollFd{Fd: int32(fd), Events: events}
	w.pfd[1] = unix.PollFd{Fd: int32(stop), Events: unix.POLLIN}
	w.pfd[2] = unix.PollFd{Fd: -1} // poll ignores negative fds
	if spin > 0 {
		w.pfd[2] = unix.PollFd{Fd: int32(kickFD()), Events: unix.POLLIN}
	}
	return w
}

// Active records that the data plane just moved packets: every waiter with
// a spin window spins before it sleeps. Callers call it once per batch.
func (w *Waiter) Active() {
	if w.spin <= 0 {
		return
	}
	t := now()
	if t-lastActive.Swap(t) > w.spin {
		if fd := kickFD(); fd >= 0 {
			unix.Write(fd, kickOne)
		}
	}
}

// Wait returns nil once the fd is ready, ErrStopped once the stop fd was
// signalled, or poll's error.
func (w *Waiter) Wait() error {
	for {
		for w.spin > 0 && now()-lastActive.Load() < w.spin {
			ready, err := w.poll(0)
			if ready || err != nil {
				return err
			}
			runtime.Gosched()
			unix.Syscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		}
		ready, err := w.poll(-1)
		if ready || err != nil {
			return err
		}
		// Kicked: activity started elsewhere; reset the kick and spin.
		var b [8]byte
		unix.Read(int(w.pfd[2].Fd), b[:])
	}
}

// poll polls once; ready says the fd (not the stop fd) is ready.
func (w *Waiter) poll(timeout int) (ready bool, err error) {
	for {
		w.pfd[0].Revents, w.pfd[1].Revents, w.pfd[2].Revents = 0, 0, 0
		pfd := w.pfd[:]
		if timeout == 0 {
			pfd = pfd[:2] // a spinning waiter needs no kick
		}
		_, err := unix.Poll(pfd, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, err
		}
		if w.pfd[1].Revents != 0 {
			return false, ErrStopped
		}
		return w.pfd[0].Revents != 0, nil
	}
}
