package fdpoll

import (
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func pipe(t *testing.T) (r, w int) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0], p[1]
}

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// waitResult runs Wait in a goroutine and returns its result channel.
func waitResult(w *Waiter) chan error {
	c := make(chan error, 1)
	go func() { c <- w.Wait() }()
	return c
}

func TestWaitReadyWhileSpinningAndAsleep(t *testing.T) {
	for _, spin := range []time.Duration{0, time.Hour} {
		r, wr := pipe(t)
		w := New(r, unix.POLLIN, eventfd(t), spin)
		w.Active()
		c := waitResult(w)
		select {
		case err := <-c:
			t.Fatalf("spin %s: Wait returned %v before the fd was ready", spin, err)
		case <-time.After(20 * time.Millisecond): // must still be waiting
		}
		if _, err := unix.Write(wr, []byte{1}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-c:
			if err != nil {
				t.Fatalf("spin %s: Wait = %v", spin, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("spin %s: Wait did not return once the fd was ready", spin)
		}
	}
}

func TestWaitStops(t *testing.T) {
	r, _ := pipe(t)
	stop := eventfd(t)
	w := New(r, unix.POLLIN, stop, 50*time.Microsecond)
	w.Active()
	c := waitResult(w)
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(stop, one[:]); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c:
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("Wait = %v, want ErrStopped", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return once stopped")
	}
}

// An idle waiter must sleep, not spin: its thread uses (almost) no CPU
// once the spin window after the last activity is over.
func TestIdleWaiterSleeps(t *testing.T) {
	r, wr := pipe(t)
	w := New(r, unix.POLLIN, eventfd(t), time.Millisecond)
	w.Active()
	c := make(chan float64, 1)
	go func() {
		runtime.LockOSThread() // RUSAGE_THREAD must see the waiting thread
		defer runtime.UnlockOSThread()
		var before, after unix.Rusage
		unix.Getrusage(unix.RUSAGE_THREAD, &before)
		start := time.Now()
		w.Wait()
		unix.Getrusage(unix.RUSAGE_THREAD, &after)
		cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
		c <- float64(cpu) / float64(time.Since(start))
	}()
	time.Sleep(300 * time.Millisecond) // the idle period being measured
	if _, err := unix.Write(wr, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if share := <-c; share > 0.05 {
		t.Fatalf("an idle waiter used %.1f%% of a CPU", 100*share)
	}
}
