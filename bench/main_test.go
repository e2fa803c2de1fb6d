package bench

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	reportFlag    = flag.Bool("report", false, "after the benchmarks, print the markdown table and write results/<date>.json and .png")
	quickFlag     = flag.Bool("quick", false, "1 repetition and 3 s per workload instead of 3 repetitions of 10 s")
	flanneldFlag  = flag.String("flanneld", "", "flanneld binary to benchmark (default: build ../cmd/flanneld)")
	baselineFlag  = flag.String("baseline-flanneld", "", "also measure this flanneld binary (e.g. built from an older commit) as path \"flannel-go baseline\"")
	pathsFlag     = flag.String("paths", "", "regexp: measure only the paths it matches (kernel VXLAN, the baseline, is always measured)")
	workloadsFlag = flag.String("workloads", "", "comma-separated workload groups to run: rtt, tcp, udp, host (host-to-host TCP and RTT; default all)")
	repsFlag      = flag.Int("reps", 0, "repetitions (default 3, or 1 with -quick)")
	resultsDir    = flag.String("results", "results", "directory for the JSON and PNG reports")
)

// results collects what the benchmarks measured, for -report.
var results = NewResults()

var (
	buildOnce   sync.Once
	flanneldBin string
	buildErr    error
	tmpDir      string
)

// flanneld returns the binary under test, building it on first use.
func flanneld(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		if *flanneldFlag != "" {
			flanneldBin, buildErr = filepath.Abs(*flanneldFlag)
			return
		}
		flanneldBin = filepath.Join(tmpDir, "flanneld")
		cmd := exec.Command("go", "build", "-o", flanneldBin, "../cmd/flanneld")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ../cmd/flanneld: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		tb.Fatal(buildErr)
	}
	return flanneldBin
}

func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	if tmpDir, err = os.MkdirTemp("", "flannel-go-bench-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	// The report hashes the binary: it goes before the binary does.
	if *reportFlag && !results.Empty() {
		if err := writeReport(time.Now().UTC()); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			code = max(code, 1)
		}
	}
	os.RemoveAll(tmpDir)
	os.Exit(code)
}

func writeReport(now time.Time) error {
	results.Meta["date"] = now.Format(time.RFC3339)
	// The binary measured: flanneld for the data path; for in-process
	// benchmarks (control plane) this test binary.
	bin, _ := os.Executable()
	if flanneldBin != "" && buildErr == nil {
		bin = flanneldBin
	}
	for k, v := range Describe(bin, os.Args) {
		results.Meta[k] = v
	}
	if out, err := exec.Command("iperf3", "--version").Output(); err == nil {
		results.Meta["iperf3"], _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	}
	base := filepath.Join(*resultsDir, now.Format("2006-01-02T150405Z"))
	if len(results.Metrics) > 0 {
		fmt.Printf("\n## flannel-go data path, %s (%s reps, %s per workload)\n\n",
			now.Format(time.DateTime), results.Meta["reps"], results.Meta["duration"])
		if err := results.WriteMarkdown(os.Stdout); err != nil {
			return err
		}
	}
	if err := results.WriteControlMarkdown(os.Stdout); err != nil {
		return err
	}
	if err := results.WriteJSON(base + ".json"); err != nil {
		return err
	}
	if len(results.Metrics) > 0 {
		if err := results.WritePNG(base + ".png"); err != nil {
			return err
		}
		fmt.Printf("\nraw values: %s.json, chart: %s.png\n", base, base)
	} else {
		fmt.Printf("\nraw values: %s.json\n", base)
	}
	return nil
}
