package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"testing"
	"time"
)

// pingSamples is the number of pings per RTT workload, one every 10 ms.
const pingSamples = 500

// rttMetrics names the figures of one RTT workload: idle (streams 0) or
// while that many TCP streams run on the same path, container to
// container, or host to host with the hostPrefix.
func rttMetrics(host bool, streams int) (p50, avg, p99, hi, loss Metric) {
	key, label := "rtt", "idle RTT"
	if streams > 0 {
		key, label = fmt.Sprintf("rtt_tcp%d", streams), fmt.Sprintf("RTT under %d TCP stream", streams)
		if streams > 1 {
			label += "s"
		}
	}
	key, label = prefixed(host, key, label)
	return Metric{key + "_p50_us", label + " p50", "us", true},
		Metric{key + "_avg_us", label + " avg", "us", true},
		Metric{key + "_p99_us", label + " p99", "us", true},
		Metric{key + "_max_us", label + " max", "us", true},
		Metric{key + "_loss", label + " loss", "%", false}
}

// mLoadOverIdle is the done-when figure of the latency work: the p99 RTT
// under one TCP stream over the same path's idle p99, same repetition.
var mLoadOverIdle = Metric{"rtt_tcp1_p99_over_idle", "RTT p99 under 1 TCP stream / idle p99", "x", false}

var (
	mIdleCPU = Metric{"flanneld_idle_cpu_pct", "flanneld idle CPU, both hosts", "%", false}
	// mPingCPU is what light traffic costs: both flanneld processes
	// while the idle-RTT pings (100 a second) run.
	mPingCPU = Metric{"flanneld_ping_cpu_pct", "flanneld CPU during 100 pings/s, both hosts", "%", false}
)

// ping sends pingSamples pings, one every 10 ms, and returns the replies.
func (r *runner) ping(ctx context.Context) (PingResult, error) {
	args := []string{"-c", strconv.Itoa(pingSamples), "-i", "0.01", "-W", "1"}
	if r.env.srcAddr.IsValid() {
		args = append(args, "-I", r.env.srcAddr.String())
	}
	out, err := r.env.src.Command(ctx, "ping", append(args, r.env.dstAddr.String())...).CombinedOutput()
	p, perr := ParsePing(string(out))
	if perr != nil {
		return p, fmt.Errorf("%v %w: %s", err, perr, out)
	}
	return p, nil
}

// rtt measures the path's RTT, idle or while streams TCP streams run: the
// pings start once the streams had 1.5 s to fill their queues and end
// before the streams do.
func (r *runner) rtt(ctx context.Context, b *testing.B, path string, streams int) {
	p50, avg, p99, hi, loss := rttMetrics(r.host, streams)
	var iperfErr chan error
	if streams > 0 {
		iperfErr = make(chan error, 1)
		lr := *r
		lr.dur = time.Duration(pingSamples)*12*time.Millisecond + 4*time.Second
		r.port += 10 // the load's server port stays out of the runner's way
		go func() {
			out, err := lr.iperf(ctx, "-P", strconv.Itoa(streams))
			if err == nil {
				_, err = ParseIperfTCP(out)
			}
			iperfErr <- err
		}()
		time.Sleep(1500 * time.Millisecond) // the load's ramp-up, not a synchronisation
	}
	before, cpuErr := procTicks(r.env.pids)
	start := time.Now()
	p, err := r.ping(ctx)
	if streams == 0 && len(r.env.pids) > 0 && !r.host {
		after, cpuErr2 := procTicks(r.env.pids)
		cpu := math.NaN()
		if cpuErr == nil && cpuErr2 == nil {
			cpu = 100 * float64(after-before) / clockTicks / time.Since(start).Seconds()
		}
		results.Add(path, mPingCPU, cpu)
	}
	if iperfErr != nil {
		if lerr := <-iperfErr; lerr != nil && err == nil {
			err = fmt.Errorf("load of %d TCP streams: %w", streams, lerr)
		}
	}
	if err != nil {
		b.Errorf("%s, RTT with %d streams: %v", path, streams, err)
		for _, m := range []Metric{p50, avg, p99, hi, loss} {
			results.Add(path, m, math.NaN())
		}
		return
	}
	v := append([]float64(nil), p.RTTs...)
	results.Add(path, p50, Percentile(v, 50))
	results.Add(path, avg, Mean(v))
	results.Add(path, p99, Percentile(v, 99))
	switch {
	case streams == 0:
		r.idleP99 = Percentile(v, 99)
	case streams == 1 && !r.host:
		results.Add(path, mLoadOverIdle, Percentile(v, 99)/r.idleP99)
	}
	results.Add(path, hi, v[len(v)-1])
	results.Add(path, loss, 100*float64(max(p.Sent-len(v), 0))/float64(max(p.Sent, 1)))
}

// idleCPU records the CPU the path's flanneld processes use with no
// traffic, in percent of one CPU, over 5 s.
func (r *runner) idleCPU(b *testing.B, path string) {
	if len(r.env.pids) == 0 {
		return
	}
	const window = 5 * time.Second
	before, err := procTicks(r.env.pids)
	start := time.Now()
	time.Sleep(window) // the measuring window itself
	after, err2 := procTicks(r.env.pids)
	if err != nil || err2 != nil {
		b.Errorf("%s, idle CPU: %v %v", path, err, err2)
		results.Add(path, mIdleCPU, math.NaN())
		return
	}
	secs := float64(after-before) / clockTicks
	results.Add(path, mIdleCPU, 100*secs/time.Since(start).Seconds())
}

// procTicks sums utime and stime of the processes, in clock ticks.
func procTicks(pids []int) (uint64, error) {
	var sum uint64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		u, st, err := ParseProcPidStat(string(data))
		if err != nil {
			return 0, err
		}
		sum += u + st
	}
	return sum, nil
}
