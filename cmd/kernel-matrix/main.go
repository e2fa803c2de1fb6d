// Command kernel-matrix runs the fast path's tests (the fastpath package's
// and a two-node cluster, TestKernelMatrix) on Debian's stock kernels
// booted in QEMU and on the host's kernel, one after another, and checks
// each against internal/kernelmatrix's table. Results go to a JSON-lines
// file; -table turns one into the Markdown table of docs/data-plane.md's Kernels section. It needs root,
// qemu-system-x86, busybox-static, kmod and go. `make test-kernels` runs it.
//
//	kernel-matrix [-rows 5.10,6.1,6.12,host,host-clsact] [-results FILE]
//	kernel-matrix -table FILE
//	kernel-matrix guest DIR   (inside a guest: run the row in DIR/row.json)
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/flannel-go/flannel-go/internal/kernelmatrix"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) == 3 && os.Args[1] == "guest" {
		os.Exit(kernelmatrix.Guest(ctx, os.Args[2], os.Stdout))
	}
	os.Exit(run(ctx))
}

func run(ctx context.Context) int {
	home, _ := os.UserHomeDir()
	cache := os.Getenv("FLANNEL_KERNEL_CACHE")
	if cache == "" {
		cache = filepath.Join(home, ".cache", "flannel-kernels")
	}
	rowNames := flag.String("rows", "", "comma-separated rows to run (default all: "+names()+")")
	flag.StringVar(&cache, "cache", cache, "kernel package cache, reused across runs ($FLANNEL_KERNEL_CACHE)")
	results := flag.String("results", "", "results file, one JSON line per row (default bench/results/<time>-kernels.jsonl)")
	mirror := flag.String("mirror", kernelmatrix.DefaultMirror, "Debian mirror")
	mem := flag.Int("mem", 4096, "guest memory in MiB")
	cpus := flag.Int("cpus", 2, "guest CPUs")
	accel := flag.String("accel", kernelmatrix.DefaultAccel, "QEMU's -accel")
	timeout := flag.Duration("timeout", 20*time.Minute, "per guest, boot included")
	workDir := flag.String("work", filepath.Join("bin", "kernel-matrix"), "directory for the test binaries and each row's logs, emptied first")
	table := flag.String("table", "", "print a results file as the Markdown table of docs/data-plane.md and exit")
	commit := flag.String("commit", "", "the commit the binaries are built from, recorded in the results")
	flag.Parse()
	if *table != "" {
		return printTable(*table)
	}
	var want []string
	if *rowNames != "" {
		want = strings.Split(*rowNames, ",")
	}
	rows, unknown := kernelmatrix.Lookup(want)
	if len(unknown) > 0 {
		fmt.Fprintf(os.Stderr, "kernel-matrix: unknown rows %v (rows: %s)\n", unknown, names())
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "kernel-matrix: needs root (network namespaces, BPF, QEMU's 9p shares of /)")
		return 2
	}
	// The binaries, then each row's logs; kept for a look after the run.
	work, err := filepath.Abs(*workDir)
	if err == nil {
		os.RemoveAll(work)
		err = os.MkdirAll(work, 0o755)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix:", err)
		return 1
	}
	start := time.Now()
	if err := kernelmatrix.Build(ctx, ".", work); err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix: build the test binaries (run from the repository root):", err)
		return 1
	}
	if *results == "" {
		*results = filepath.Join("bench", "results", time.Now().UTC().Format("2006-01-02T150405Z")+"-kernels.jsonl")
	}
	f, err := os.Create(*results)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix:", err)
		return 1
	}
	defer f.Close()
	m := &kernelmatrix.Matrix{
		Archive: &kernelmatrix.Archive{Dir: cache, Mirror: *mirror, MaxAge: 24 * time.Hour, Log: os.Stdout},
		Work:    work, MemMiB: *mem, CPUs: *cpus, Timeout: *timeout, Accel: *accel, Out: os.Stdout, Commit: *commit,
	}
	all := m.Run(ctx, rows, f)
	fmt.Printf("\nkernel-matrix: %d rows in %s, results in %s, logs in %s\n", len(all), time.Since(start).Round(time.Second), *results, work)
	code := 0
	for _, r := range all {
		fmt.Println(kernelmatrix.Summary(r))
		if !r.OK {
			code = 1
		}
	}
	return code
}

func names() string {
	var n []string
	for _, r := range kernelmatrix.Rows {
		n = append(n, r.Name)
	}
	return strings.Join(n, ",")
}

func printTable(file string) int {
	f, err := os.Open(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix:", err)
		return 1
	}
	defer f.Close()
	res, err := kernelmatrix.ReadResults(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernel-matrix:", err)
		return 1
	}
	kernelmatrix.WriteTable(os.Stdout, res)
	return 0
}
