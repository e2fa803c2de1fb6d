package kernelmatrix

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Matrix runs rows one after another: a VM row boots its kernel, a host
// row runs the tests on the host's kernel.
type Matrix struct {
	Archive *Archive
	Work    string // binaries (Build) and logs; shared with each guest
	MemMiB  int
	CPUs    int
	Timeout time.Duration // per guest, boot included
	Accel   string        // QEMU's -accel, DefaultAccel when empty
	Out     io.Writer     // progress and every console, prefixed by row
	Commit  string        // recorded in each result
}

// Run runs rows and writes each result as one JSON line to results.
func (m *Matrix) Run(ctx context.Context, rows []Row, results io.Writer) []Result {
	var suites []string
	for _, r := range rows {
		suites = append(suites, r.Suites...)
	}
	if len(suites) > 0 {
		if err := m.Archive.Update(ctx, slices.Compact(suites)); err != nil {
			fmt.Fprintf(m.Out, "kernel-matrix: warning: %v\nkernel-matrix: trying the package lists and kernels already cached\n", err)
		}
	}
	var all []Result
	for _, r := range rows {
		start := time.Now()
		fmt.Fprintf(m.Out, "kernel-matrix: === %s\n", r.Name)
		res := m.runRow(ctx, r)
		res.Seconds, res.Commit = time.Since(start).Seconds(), m.Commit
		line, _ := json.Marshal(res)
		fmt.Fprintf(results, "%s\n", line)
		fmt.Fprintln(m.Out, Summary(res))
		all = append(all, res)
	}
	return all
}

func (m *Matrix) runRow(ctx context.Context, r Row) Result {
	console := &prefixWriter{w: m.Out, prefix: r.Name, start: time.Now()}
	if !r.VM() {
		return RunTests(ctx, r.Config(""), m.Work, m.Work, console)
	}
	failed := func(pkg string, err error) Result {
		return Result{Row: r.Name, Package: pkg, Expect: r.Expect, FastPathTests: "not run", ClusterTest: "not run",
			Problems: []string{err.Error()}}
	}
	pkg, err := m.Archive.Newest(ctx, r.Package)
	if err != nil {
		return failed("", fmt.Errorf("kernel %s: cannot find its package in Debian's archive (%s): %w", r.Name, strings.Join(r.Suites, ", "), err))
	}
	k, err := m.Archive.Prepare(ctx, pkg)
	if err != nil {
		return failed(pkg, fmt.Errorf("kernel %s: %w", r.Name, err))
	}
	initrd := filepath.Join(m.Work, "initramfs-"+r.Name+".cpio")
	if err := BuildInitramfs(ctx, k, initrd); err != nil {
		return failed(pkg, err)
	}
	defer os.Remove(initrd)
	cfg, _ := json.Marshal(r.Config(pkg))
	os.Remove(filepath.Join(m.Work, "result.json"))
	if err := os.WriteFile(filepath.Join(m.Work, "row.json"), cfg, 0o644); err != nil {
		return failed(pkg, err)
	}
	// The whole console, boot included, stays beside the tests' logs.
	log, err := os.Create(filepath.Join(m.Work, r.Name+"-console.log"))
	if err != nil {
		return failed(pkg, err)
	}
	defer log.Close()
	vm := &VM{Kernel: k, Initrd: initrd, Work: m.Work, MemMiB: m.MemMiB, CPUs: m.CPUs, Timeout: m.Timeout, Accel: m.Accel,
		Console: io.MultiWriter(console, log)}
	res, err := vm.Run(ctx)
	if err != nil {
		return failed(pkg, err)
	}
	return res
}

// Summary is a row's result in one line for people.
func Summary(r Result) string {
	verdict := "ok"
	if !r.OK {
		verdict = "FAIL"
	}
	what := "attach=" + r.Attach + " variant=" + r.Variant
	if r.Path != PathKernel {
		what = fmt.Sprintf("reason=%q", r.Reason)
	}
	s := fmt.Sprintf("kernel-matrix: %s %s (%s): path=%s (expected %s) %s transfer_ok=%v kernel_bytes=%.0f fastpath_tests=%s sigkill=%s restart=%s (%.0fs)",
		verdict, r.Row, r.Kernel, r.Path, r.Expect.Path, what, r.TransferOK, r.KernelBytes, r.FastPathTests, r.SIGKILL, r.Restart, r.Seconds)
	for _, p := range r.Problems {
		s += "\n    problem: " + p
	}
	return s
}

// prefixWriter writes every line with a prefix and the seconds since start.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	start  time.Time
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Fprintf(p.w, "[%s %4.0fs] %s\n", p.prefix, time.Since(p.start).Seconds(), p.buf[:i])
		p.buf = p.buf[i+1:]
	}
}
