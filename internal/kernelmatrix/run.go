package kernelmatrix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The binaries a row runs, built on the host by Build.
const (
	FastPathTestBin = "fastpath.test"
	FlanneldTestBin = "flanneld.test"
	FlanneldBin     = "flanneld"
	HarnessBin      = "kernel-matrix"
)

// Test timeouts. TCG runs a guest 10-50 times slower than the host: these
// bound a hung test, they say nothing about speed.
const (
	fastPathTimeout = 10 * time.Minute
	clusterTimeout  = 20 * time.Minute
)

// RowConfig is what a run of a row needs to know, also inside the guest
// (as row.json in the shared directory).
type RowConfig struct {
	Name    string      `json:"name"`
	Package string      `json:"package,omitempty"`
	Expect  Expectation `json:"expect"`
	Env     []string    `json:"env,omitempty"`
	Modules []string    `json:"modules,omitempty"`
}

// Config returns the row's RowConfig for kernel package pkg.
func (r Row) Config(pkg string) RowConfig {
	c := RowConfig{Name: r.Name, Package: pkg, Expect: r.Expect, Env: r.Env}
	if r.VM() {
		c.Modules = GuestModules
	}
	return c
}

// Build compiles the binaries a row runs into dir, statically, so that a
// guest runs them whatever its kernel (the host's userspace is shared).
func Build(ctx context.Context, module, dir string) error {
	for _, b := range [][]string{
		{"test", "-c", "-o", filepath.Join(dir, FastPathTestBin), "./fastpath"},
		{"test", "-c", "-o", filepath.Join(dir, FlanneldTestBin), "./cmd/flanneld"},
		{"build", "-o", filepath.Join(dir, FlanneldBin), "./cmd/flanneld"},
		{"build", "-o", filepath.Join(dir, HarnessBin), "./cmd/kernel-matrix"},
	} {
		cmd := exec.CommandContext(ctx, "go", b...)
		cmd.Dir = module
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(b, " "), err, out)
		}
	}
	return nil
}

// RunTests runs a row's tests on the running kernel with the binaries in
// bin, keeping their output in dir and copying it to console.
func RunTests(ctx context.Context, cfg RowConfig, bin, dir string, console io.Writer) Result {
	res := Result{Row: cfg.Name, Package: cfg.Package, Kernel: Release(), Expect: cfg.Expect}
	res.runFastPathTests(ctx, cfg, bin, dir, console)
	res.runCluster(ctx, cfg, bin, dir, console)
	res.OK = len(res.Problems) == 0
	return res
}

// Release is the running kernel's release (uname -r).
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

var failLine = regexp.MustCompile(`(?m)^\s*--- FAIL: (\S+)`)

// runFastPathTests runs the fastpath package's tests. On a row that
// expects a fallback they may fail, but only for the expected reason.
func (res *Result) runFastPathTests(ctx context.Context, cfg RowConfig, bin, dir string, console io.Writer) {
	out, err := runTest(ctx, console, filepath.Join(dir, cfg.Name+"-fastpath.log"), fastPathTimeout, nil, dir,
		filepath.Join(bin, FastPathTestBin), "-test.v", "-test.count=1",
		// make test checks the objects, docs/metrics.md and the C headers
		// against their sources, which no kernel changes; the objects
		// need clang and go, which a guest would take minutes to run.
		"-test.skip=^(TestObjectsMatchSources|TestDocsKernelReasons|TestProbeWireFormat)$", "-test.timeout="+fastPathTimeout.String())
	res.FastPathTests = "pass"
	if err == nil {
		return
	}
	res.FastPathTests = "fail"
	for _, m := range failLine.FindAllStringSubmatch(out, -1) {
		res.FastPathFailed = append(res.FastPathFailed, m[1])
	}
	switch {
	case cfg.Expect.Path == PathKernel:
		res.problem("fastpath tests failed (%v): %s", err, strings.Join(res.FastPathFailed, ", "))
	case !strings.Contains(out, cfg.Expect.Reason):
		res.problem("fastpath tests failed (%v: %s) without the expected %q", err, strings.Join(res.FastPathFailed, ", "), cfg.Expect.Reason)
	}
}

// runCluster runs TestKernelMatrix with the row's expectation.
func (res *Result) runCluster(ctx context.Context, cfg RowConfig, bin, dir string, console io.Writer) {
	report := filepath.Join(dir, cfg.Name+"-cluster.json")
	os.Remove(report)
	env := append([]string{
		"FLANNEL_TEST_FLANNELD=" + filepath.Join(bin, FlanneldBin),
		"FLANNEL_EXPECT_PATH=" + cfg.Expect.Path,
		"FLANNEL_EXPECT_REASON=" + cfg.Expect.Reason,
		"FLANNEL_EXPECT_ATTACH=" + cfg.Expect.Attach,
		"FLANNEL_MATRIX_REPORT=" + report,
	}, cfg.Env...)
	out, err := runTest(ctx, console, filepath.Join(dir, cfg.Name+"-cluster.log"), clusterTimeout, env, dir,
		filepath.Join(bin, FlanneldTestBin), "-test.v", "-test.count=1", "-test.run=^TestKernelMatrix$",
		"-test.timeout="+clusterTimeout.String())
	res.ClusterTest = "pass"
	if err != nil || !strings.Contains(out, "--- PASS: TestKernelMatrix") {
		res.ClusterTest = "fail"
		msg := "cluster test failed"
		if err == nil {
			msg = "cluster test did not run (skipped?)"
		}
		var fails []string
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "kernelmatrix_test.go:") {
				fails = append(fails, strings.TrimSpace(l))
			}
		}
		res.problem("%s (%v): %s", msg, err, strings.Join(fails, "; "))
	}
	b, err := os.ReadFile(report)
	if err == nil {
		err = json.Unmarshal(b, &res.ClusterReport)
	}
	if err != nil {
		res.problem("cluster test report: %v", err)
	}
}

func (res *Result) problem(format string, args ...any) {
	res.Problems = append(res.Problems, fmt.Sprintf(format, args...))
}

// runTest runs a test binary as root with CI=true (a missing privilege or
// tool fails instead of skipping), its output to logFile and console.
func runTest(ctx context.Context, console io.Writer, logFile string, timeout time.Duration, env []string, dir string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Minute)
	defer cancel()
	f, err := os.Create(logFile)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var buf bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CI=true"), env...)
	cmd.Stdout = io.MultiWriter(&buf, f, console)
	cmd.Stderr = cmd.Stdout
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("%s ran over %s: %w", filepath.Base(name), timeout, err)
	}
	return buf.String(), err
}
