//go:build !linux

package fastpath

import "errors"

// monotonicNow has no counterpart off Linux, where no program runs.
func monotonicNow() (uint64, error) {
	return 0, errors.New("fast path: the kernel's coarse monotonic clock is Linux only")
}
