// Command benchmeta prints the Go benchmark-format configuration lines that
// head a committed result file: commit, binary hash, command and machine
// (see bench.Describe). make bench runs it before the micro-benchmarks.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/flannel-go/flannel-go/bench"
)

func main() {
	bin := flag.String("binary", "", "binary whose sha256 to record")
	command := flag.String("command", "", "the benchmark command line to record")
	flag.Parse()
	if err := bench.WriteConfig(os.Stdout, bench.Describe(*bin, []string{*command})); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
