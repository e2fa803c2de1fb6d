// Package bench holds flannel-go's end-to-end benchmarks: netns testbeds that
// measure raw veth, kernel VXLAN and flanneld in the same run, the control
// plane's lease-to-route latency, and the parsers, statistics and report
// writers they share. Data-path figures are reported as ratios to kernel
// VXLAN measured in the same run, because the machines are shared and noisy.
//
// Run it with `make bench` or `make bench-quick` (as root).
package bench

import (
	"math"
	"slices"
)

// Summary is the median and range of repeated measurements.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Summarize returns the median (mean of the middle two for an even count),
// minimum and maximum of values; NaNs (failed runs) are left out.
func Summarize(values []float64) Summary {
	v := make([]float64, 0, len(values))
	for _, x := range values {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Summary{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	s := Summary{N: len(v), Min: v[0], Max: v[len(v)-1]}
	if m := len(v) / 2; len(v)%2 == 1 {
		s.Median = v[m]
	} else {
		s.Median = (v[m-1] + v[m]) / 2
	}
	return s
}

// Percentile returns the p-th percentile (0 <= p <= 100) of values by the
// nearest-rank method, so p99 of 50 samples is the largest one but for none.
// It sorts values in place and returns NaN for an empty slice.
func Percentile(values []float64, p float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	slices.Sort(values)
	rank := int(math.Ceil(p / 100 * float64(len(values))))
	return values[min(max(rank, 1), len(values))-1]
}

// Mean returns the arithmetic mean of values (NaN when empty).
func Mean(values []float64) float64 {
	if len(values) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, v := range values {
		sum += v
	}
	return sum / float64(len(values))
}
