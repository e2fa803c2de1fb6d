package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// BaselinePath is the path every other path is compared with.
const BaselinePath = "kernel VXLAN"

// The inner-IPv6 paths: kernel VXLAN and flannel-go's userspace router
// carrying IPv6 between containers over the same IPv4 underlay; compare
// each with its IPv4 row of the same run.
const (
	VXLANIPv6Path   = "kernel VXLAN, inner IPv6"
	FlannelIPv6Path = "flannel-go, inner IPv6"
)

// Metric names one row of the report.
type Metric struct {
	Key  string `json:"key"`  // stable identifier, e.g. "tcp1_gbps"
	Name string `json:"name"` // row label
	Unit string `json:"unit"`
	// Ratio says whether the ratio to the baseline means something: it
	// does for rates, times and costs, not for counts such as retransmits
	// or loss, which are often zero.
	Ratio bool `json:"ratio"`
}

// Results collects data-path measurements: per metric and path, one value
// per repetition. It is safe for concurrent use.
type Results struct {
	mu      sync.Mutex
	Meta    map[string]string               `json:"meta"`
	Paths   []string                        `json:"paths"`
	Metrics []Metric                        `json:"metrics"`
	Values  map[string]map[string][]float64 `json:"values"` // metric key -> path -> per-repetition values
	// Control holds control-plane figures by name (e.g. "scale_1000_p99_ms").
	Control map[string]float64 `json:"control,omitempty"`
	// Offered is the load of rate metrics, by metric key: a path whose
	// senders did not reach it is sender-bound.
	Offered map[string]Offered `json:"offered,omitempty"`
}

// Offered is the load a workload offered and the metric holding the rate
// its senders reached, in the same unit as the rate metric.
type Offered struct {
	Rate    float64 `json:"rate"`
	SentKey string  `json:"sent_key"`
}

// senderBoundShare is how close to the offered rate the senders must come
// for the path, not the load generator, to be what was measured.
const senderBoundShare = 0.95

// nearZeroLoss is the delivered share of what was sent above which a path
// is taken to have carried all it was given.
const nearZeroLoss = 0.99

// NewResults returns an empty collector.
func NewResults() *Results {
	return &Results{Meta: map[string]string{}, Values: map[string]map[string][]float64{}, Control: map[string]float64{}, Offered: map[string]Offered{}}
}

// SetOffered records that metric key measured a path at an offered rate,
// with the senders' reached rate in metric sentKey.
func (r *Results) SetOffered(key string, rate float64, sentKey string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Offered[key] = Offered{Rate: rate, SentKey: sentKey}
}

// senderBoundLocked reports whether path carried all the load its senders
// managed to offer for metric key, while they fell short of the offered
// rate (near-zero loss, fewer sent than offered): its rate then shows the
// load generator's limit, not the path's.
func (r *Results) senderBoundLocked(key, path string) bool {
	o, ok := r.Offered[key]
	if !ok {
		return false
	}
	sent := Summarize(r.Values[o.SentKey][path])
	got := Summarize(r.Values[key][path])
	return sent.N > 0 && got.N > 0 && sent.Median < senderBoundShare*o.Rate && got.Median >= nearZeroLoss*sent.Median
}

// RatioBase returns the baseline summary the ratios of metric m are taken
// against, or nil: for counts, without a baseline, or when the baseline
// was sender-bound (a ratio against a load it was never offered would
// flatter everyone else).
func (r *Results) RatioBase(m Metric) *Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ratioBaseLocked(m)
}

func (r *Results) ratioBaseLocked(m Metric) *Summary {
	v, ok := r.Values[m.Key][BaselinePath]
	if !ok || !m.Ratio || r.senderBoundLocked(m.Key, BaselinePath) {
		return nil
	}
	s := Summarize(v)
	if s.N == 0 || s.Median == 0 {
		return nil
	}
	return &s
}

// Add records one value of metric m on path (NaN for a failed run).
func (r *Results) Add(path string, m Metric, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !contains(r.Paths, path) {
		r.Paths = append(r.Paths, path)
	}
	if _, ok := r.Values[m.Key]; !ok {
		r.Metrics = append(r.Metrics, m)
		r.Values[m.Key] = map[string][]float64{}
	}
	r.Values[m.Key][path] = append(r.Values[m.Key][path], v)
}

// SetControl records one control-plane figure.
func (r *Results) SetControl(name string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Control[name] = v
}

// Empty reports whether nothing was recorded.
func (r *Results) Empty() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.Metrics) == 0 && len(r.Control) == 0
}

// Summary returns the summary of metric key on path.
func (r *Results) Summary(key, path string) Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Summarize(r.Values[key][path])
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// formatValue prints v with three significant digits, without exponent.
func formatValue(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "n/a"
	case a == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

// Cell renders a summary as "median (min-max)", the range left out for a
// single run, and the ratio to the baseline summary when base is given.
func Cell(s Summary, base *Summary) string {
	if s.N == 0 {
		return "n/a"
	}
	var b strings.Builder
	b.WriteString(formatValue(s.Median))
	if s.N > 1 {
		fmt.Fprintf(&b, " (%s-%s)", formatValue(s.Min), formatValue(s.Max))
	}
	if base != nil && base.N > 0 && base.Median != 0 {
		fmt.Fprintf(&b, " **%.2fx**", s.Median/base.Median)
	}
	return b.String()
}

// WriteMarkdown writes one table: a row per metric, a column per path, each
// cell "median (min-max)" and, except for the baseline, the ratio of the
// medians to the baseline measured in the same run. A cell whose senders
// did not reach the offered load says "sender-bound"; no ratio is taken
// against a sender-bound baseline.
func (r *Results) WriteMarkdown(w io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	b.WriteString("| workload |")
	for _, p := range r.Paths {
		fmt.Fprintf(&b, " %s |", p)
	}
	b.WriteString("\n|---|")
	b.WriteString(strings.Repeat("---|", len(r.Paths)))
	b.WriteString("\n")
	for _, m := range r.Metrics {
		fmt.Fprintf(&b, "| %s [%s] |", m.Name, m.Unit)
		base := r.ratioBaseLocked(m)
		for _, p := range r.Paths {
			bp := base
			if p == BaselinePath {
				bp = nil
			}
			cell := Cell(Summarize(r.Values[m.Key][p]), bp)
			if r.senderBoundLocked(m.Key, p) {
				cell += " (sender-bound)"
			}
			fmt.Fprintf(&b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteControlMarkdown writes the control-plane figures, one row each in
// name order (nothing when there are none).
func (r *Results) WriteControlMarkdown(w io.Writer) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.Control) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("\n## flannel-go control plane\n\n| figure | value |\n|---|---|\n")
	for _, k := range slices.Sorted(maps.Keys(r.Control)) {
		fmt.Fprintf(&b, "| %s | %s |\n", k, formatValue(r.Control[k]))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the raw values (NaN, i.e. failed runs, as null).
func (r *Results) WriteJSON(path string) error {
	r.mu.Lock()
	type out struct {
		Meta    map[string]string                `json:"meta"`
		Paths   []string                         `json:"paths"`
		Metrics []Metric                         `json:"metrics"`
		Values  map[string]map[string][]*float64 `json:"values"`
		Summary map[string]map[string]Summary    `json:"summary"`
		Control map[string]float64               `json:"control,omitempty"`
		Offered map[string]Offered               `json:"offered,omitempty"`
	}
	o := out{Meta: r.Meta, Paths: r.Paths, Metrics: r.Metrics, Control: r.Control, Offered: r.Offered,
		Values: map[string]map[string][]*float64{}, Summary: map[string]map[string]Summary{}}
	for k, byPath := range r.Values {
		o.Values[k] = map[string][]*float64{}
		o.Summary[k] = map[string]Summary{}
		for p, vs := range byPath {
			ptrs := make([]*float64, len(vs))
			for i := range vs {
				if !math.IsNaN(vs[i]) {
					ptrs[i] = &vs[i]
				}
			}
			o.Values[k][p] = ptrs
			s := Summarize(vs)
			if s.N == 0 {
				s = Summary{}
			}
			o.Summary[k][p] = s
		}
	}
	data, err := json.MarshalIndent(o, "", "  ")
	r.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}
