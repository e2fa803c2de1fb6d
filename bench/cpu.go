package bench

import (
	"os"
	"path/filepath"
)

// CPUSample is what CPU-per-GB counts, in clock ticks: the machine's
// kernel time (system, irq, softirq: the forwarding in the kernel, the
// TUN, the veths and the sockets of every process) and the user time of
// the processes running one binary (flanneld). iperf3's own user time and
// steal are left out: they are the load generator's and the hypervisor's.
type CPUSample struct {
	Kernel, ExeUser uint64
}

// CPUPerGBCovers is the report's note on what the CPU-per-GB row counts.
const CPUPerGBCovers = "flanneld user time + all kernel time (system, irq, softirq) during the transfer; iperf3 user time and steal excluded"

// SampleCPU reads /proc/stat and the user time of every process whose
// executable is exe (none when exe is empty).
func SampleCPU(exe string) (CPUSample, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUSample{}, err
	}
	t, err := ParseProcStat(string(data))
	if err != nil {
		return CPUSample{}, err
	}
	s := CPUSample{Kernel: t.Kernel}
	if exe == "" {
		return s, nil
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		if target, err := os.Readlink(filepath.Join(d, "exe")); err != nil || target != exe {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(d, "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		if u, _, err := ParseProcPidStat(string(stat)); err == nil {
			s.ExeUser += u
		}
	}
	return s, nil
}

// CPUSeconds is the CPU time between two samples.
func CPUSeconds(before, after CPUSample) float64 {
	ticks := after.Kernel - before.Kernel
	if after.ExeUser > before.ExeUser { // a process that exited takes its time along
		ticks += after.ExeUser - before.ExeUser
	}
	return float64(ticks) / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/stat (100 on every Linux ABI Go supports).
const clockTicks = 100
