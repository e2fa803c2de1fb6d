package fastpath

import "golang.org/x/sys/unix"

// monotonicNow is the clock of the programs' answer times
// (bpf_ktime_get_coarse_ns).
func monotonicNow() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Nano()), nil
}
