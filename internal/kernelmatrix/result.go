package kernelmatrix

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// ClusterReport is what the cluster test (TestKernelMatrix in
// cmd/flanneld) found on one kernel. It writes it as JSON to the file
// named by $FLANNEL_MATRIX_REPORT, also when it fails.
type ClusterReport struct {
	// Path is where the transfer's bytes went: "kernel", "userspace", or
	// "mixed" when the kernel path carried only part of them.
	Path    string `json:"path"`
	Attach  string `json:"attach,omitempty"`
	Variant string `json:"variant,omitempty"`
	// Reason is the fallback reason flanneld logged.
	Reason string `json:"reason,omitempty"`
	// FastPathLog is flanneld's log line about the fast path.
	FastPathLog   string  `json:"fast_path_log,omitempty"`
	TransferBytes int64   `json:"transfer_bytes"`
	TransferOK    bool    `json:"transfer_ok"`
	KernelBytes   float64 `json:"kernel_bytes"`    // sent on path="kernel" by the sender
	KernelBytesIn float64 `json:"kernel_bytes_in"` // received on path="kernel" by the receiver
	UserBytes     float64 `json:"user_bytes"`      // sent on path="user" by the sender
	// IPv6 and Host are the inner-IPv6 transfer between the containers
	// and the transfer from host to host (n1's namespace to n2's
	// flannel0 address), each "kernel", "userspace" or "mixed", or what
	// failed.
	IPv6 string `json:"ipv6"`
	Host string `json:"host"`
	// SIGKILL is "clean" when a killed flanneld left nothing that
	// blackholes traffic, else what was found.
	SIGKILL string `json:"sigkill"`
	// Leftover lists what a killed flanneld left that does no harm (a
	// clsact filter that fails open).
	Leftover []string `json:"leftover,omitempty"`
	// Restart is "ok" when a restarted flanneld took over and carried a
	// second transfer intact on the expected path.
	Restart string `json:"restart"`
}

// WriteFile writes the report as JSON.
func (r *ClusterReport) WriteFile(name string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(name, b, 0o644)
}

// Result is one row's outcome, one JSON line in the results file.
type Result struct {
	// Commit is the commit the binaries were built from.
	Commit  string      `json:"commit,omitempty"`
	Row     string      `json:"row"`
	Package string      `json:"package,omitempty"`
	Kernel  string      `json:"kernel"` // uname -r where the tests ran
	Expect  Expectation `json:"expect"`
	// FastPathTests is "pass" or "fail" for the fastpath package's tests,
	// FastPathFailed the tests that failed.
	FastPathTests  string   `json:"fastpath_tests"`
	FastPathFailed []string `json:"fastpath_failed,omitempty"`
	ClusterTest    string   `json:"cluster_test"`
	ClusterReport
	// OK is whether the row met its expectation; Problems says why not.
	OK       bool     `json:"ok"`
	Problems []string `json:"problems,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	Seconds  float64  `json:"seconds"`
}

// MarshalJSON keeps Expectation's fields lower-case in the results file.
func (e Expectation) MarshalJSON() ([]byte, error) {
	return json.Marshal(map[string]string{"path": e.Path, "attach": e.Attach, "reason": e.Reason})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (e *Expectation) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	*e = Expectation{Path: m["path"], Attach: m["attach"], Reason: m["reason"]}
	return nil
}

// FastPathLine returns flanneld's log line about the fast path ("Kernel
// fast path on", "... unavailable", "... off"), the last one when it
// started more than once.
func FastPathLine(log string) string {
	var line string
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `msg="Kernel fast path `) {
			line = sc.Text()
		}
	}
	return line
}

// LogAttrs parses a log/slog text line into its key=value attributes;
// quoted values are unquoted.
func LogAttrs(line string) map[string]string {
	attrs := map[string]string{}
	for line != "" {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq <= 0 {
			break
		}
		key, rest := line[:eq], line[eq+1:]
		if strings.ContainsRune(key, ' ') { // not a key: skip the word
			line = line[strings.IndexByte(line, ' ')+1:]
			continue
		}
		val := rest
		if q, err := strconv.QuotedPrefix(rest); err == nil {
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else if sp := strings.IndexByte(rest, ' '); sp >= 0 {
			val, rest = rest[:sp], rest[sp:]
		} else {
			rest = ""
		}
		attrs[key] = val
		line = rest
	}
	return attrs
}

// ReadResults reads a results file, one Result per line.
func ReadResults(r io.Reader) ([]Result, error) {
	var out []Result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var res Result
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			return nil, fmt.Errorf("results line %d: %w", len(out)+1, err)
		}
		out = append(out, res)
	}
	return out, sc.Err()
}

// WriteTable writes results as the Markdown table of docs/data-plane.md's Kernels section.
func WriteTable(w io.Writer, results []Result) {
	fmt.Fprintln(w, "| kernel | fast path | attach, variant or fallback reason | transfers (IPv4, inner IPv6, host to host) | kernel-path bytes | SIGKILL, restart |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range results {
		what := strings.Trim(strings.Join([]string{r.Attach, r.Variant}, ", "), ", ")
		if r.Path != PathKernel && r.Reason != "" {
			what = "`" + strings.ReplaceAll(r.Reason, "|", `\|`) + "`"
		}
		transfer := "broken"
		if r.TransferOK {
			transfer = "intact on " + strings.Join([]string{r.Path, r.IPv6, r.Host}, ", ")
		}
		fmt.Fprintf(w, "| %s (%s) | %s | %s | %s | %.0f | %s, %s |\n",
			r.Kernel, r.Row, r.Path, what, transfer, r.KernelBytes, r.SIGKILL, r.Restart)
	}
}
