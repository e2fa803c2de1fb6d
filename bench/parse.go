package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// TCPResult is what a TCP iperf3 run reports.
type TCPResult struct {
	BitsPerSecond float64 // end.sum_received.bits_per_second
	Bytes         float64 // end.sum_received.bytes
	Retransmits   int     // end.sum_sent.retransmits
}

// UDPResult is what a UDP iperf3 run reports. Received counts come from the
// server side (the client's end.sum_received is the server's report).
type UDPResult struct {
	Sent      int     // datagrams the client sent
	Delivered int     // datagrams the server received
	Seconds   float64 // the server's measuring interval
	SentSecs  float64 // the client's sending interval
}

// SentPPS is the rate the client achieved, at most the offered rate.
func (r UDPResult) SentPPS() float64 {
	if r.SentSecs <= 0 {
		return 0
	}
	return float64(r.Sent) / r.SentSecs
}

// PPS is the delivered datagram rate.
func (r UDPResult) PPS() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Delivered) / r.Seconds
}

// LossPercent is the share of sent datagrams that never arrived, including
// the tail the server's sequence-number count misses.
func (r UDPResult) LossPercent() float64 {
	if r.Sent <= 0 {
		return 100
	}
	return 100 * float64(max(r.Sent-r.Delivered, 0)) / float64(r.Sent)
}

type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         float64 `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int     `json:"retransmits"`
	Packets       int     `json:"packets"`
	LostPackets   int     `json:"lost_packets"`
}

type iperfReport struct {
	Error string `json:"error"`
	End   struct {
		SumSent     *iperfSum `json:"sum_sent"`
		SumReceived *iperfSum `json:"sum_received"`
	} `json:"end"`
}

func parseIperf(data []byte) (*iperfReport, error) {
	var r iperfReport
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode iperf3 JSON: %w", err)
	}
	if r.Error != "" {
		return nil, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumSent == nil || r.End.SumReceived == nil {
		return nil, errors.New("iperf3 JSON has no end.sum_sent/end.sum_received")
	}
	return &r, nil
}

// ParseIperfTCP reads the client-side JSON (iperf3 -J) of a TCP test.
func ParseIperfTCP(data []byte) (TCPResult, error) {
	r, err := parseIperf(data)
	if err != nil {
		return TCPResult{}, err
	}
	return TCPResult{
		BitsPerSecond: r.End.SumReceived.BitsPerSecond,
		Bytes:         r.End.SumReceived.Bytes,
		Retransmits:   r.End.SumSent.Retransmits,
	}, nil
}

// ParseIperfUDP reads the client-side JSON (iperf3 -u -J) of a UDP test.
func ParseIperfUDP(data []byte) (UDPResult, error) {
	r, err := parseIperf(data)
	if err != nil {
		return UDPResult{}, err
	}
	recv := r.End.SumReceived
	return UDPResult{
		Sent:      r.End.SumSent.Packets,
		Delivered: max(recv.Packets-recv.LostPackets, 0),
		Seconds:   recv.Seconds,
		SentSecs:  r.End.SumSent.Seconds,
	}, nil
}

// PingResult holds the round-trip times of the replies, in microseconds.
type PingResult struct {
	Sent int
	RTTs []float64
}

// Stats returns the minimum, mean and 99th percentile RTT in microseconds.
func (p PingResult) Stats() (minimum, mean, p99 float64) {
	v := append([]float64(nil), p.RTTs...)
	p99 = Percentile(v, 99)
	if len(v) == 0 {
		return p99, p99, p99
	}
	return v[0], Mean(v), p99
}

// ParsePing reads iputils ping output: one "time=0.063 ms" per reply and the
// "N packets transmitted" summary.
func ParsePing(out string) (PingResult, error) {
	var res PingResult
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, "time="); i >= 0 && strings.Contains(line, "bytes from") {
			f := strings.Fields(line[i+len("time="):])
			if len(f) == 0 {
				return res, fmt.Errorf("ping: no time in %q", line)
			}
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return res, fmt.Errorf("ping: bad time in %q: %w", line, err)
			}
			scale := 1000.0 // ms
			if len(f) > 1 && f[1] == "us" {
				scale = 1
			}
			res.RTTs = append(res.RTTs, v*scale)
		}
		if f := strings.Fields(line); len(f) > 2 && f[1] == "packets" && f[2] == "transmitted," {
			n, err := strconv.Atoi(f[0])
			if err != nil {
				return res, fmt.Errorf("ping: bad summary %q: %w", line, err)
			}
			res.Sent = n
		}
	}
	if len(res.RTTs) == 0 {
		return res, errors.New("ping: no replies")
	}
	return res, nil
}

// CPUTimes is the first line of /proc/stat, in clock ticks.
type CPUTimes struct {
	Busy, Total uint64
	// Kernel is system, irq and softirq time: the kernel's share of Busy.
	Kernel uint64
	// Steal is time the hypervisor gave to other guests; not in Busy.
	Steal uint64
}

// ParseProcStat reads the aggregate "cpu" line of /proc/stat. Busy is
// everything but idle, iowait and steal (guest time is already part of
// user).
func ParseProcStat(data string) (CPUTimes, error) {
	line, _, _ := strings.Cut(data, "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return CPUTimes{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var t CPUTimes
	// user nice system idle iowait irq softirq steal [guest guest_nice]
	for i, s := range f[1:min(len(f), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return CPUTimes{}, fmt.Errorf("/proc/stat: field %d of %q: %w", i+1, line, err)
		}
		t.Total += v
		switch i {
		case 3, 4: // idle, iowait
		case 7:
			t.Steal += v
		case 2, 5, 6:
			t.Kernel += v
			t.Busy += v
		default:
			t.Busy += v
		}
	}
	return t, nil
}

// ParseProcPidStat returns a process's user and system time in clock ticks
// from its /proc/<pid>/stat line.
func ParseProcPidStat(data string) (utime, stime uint64, err error) {
	// The command name may hold spaces and parentheses: fields count from
	// the last ')'.
	i := strings.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/<pid>/stat: no command name in %q", data)
	}
	f := strings.Fields(data[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/<pid>/stat: %d fields after the command name", len(f))
	}
	if utime, err = strconv.ParseUint(f[11], 10, 64); err == nil {
		stime, err = strconv.ParseUint(f[12], 10, 64)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("/proc/<pid>/stat: %w", err)
	}
	return utime, stime, nil
}
