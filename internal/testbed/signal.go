package testbed

import (
	"os"
	"os/signal"
	"syscall"
)

// CleanupOnSignal makes SIGINT, SIGTERM or SIGHUP delete the bed's
// namespaces and then exit the process with status 128+signal number, the
// shell's convention for a process killed by a signal. New installs no handler itself, because tests and
// programs own their signal handling; programs such as the demo call this
// right after New. The returned stop function removes the handler, without
// closing the bed.
func CleanupOnSignal(b *Bed) (stop func()) {
	sigs := []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}
	ch := make(chan os.Signal, 1)
	done := make(chan struct{})
	signal.Notify(ch, sigs...)
	go func() {
		select {
		case sig := <-ch:
			_ = b.Close()
			code := 1
			if s, ok := sig.(syscall.Signal); ok {
				code = 128 + int(s)
			}
			os.Exit(code)
		case <-done:
		}
	}()
	var stopped bool
	return func() {
		if stopped {
			return
		}
		stopped = true
		signal.Stop(ch)
		close(done)
	}
}
