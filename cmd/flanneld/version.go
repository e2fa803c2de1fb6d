//go:build linux

package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/flannel-go/flannel-go/fastpath"
)

// commit is set at build time with -ldflags "-X main.commit=..." (make
// build, make release); without it the Go toolchain's VCS stamp is used.
var commit = ""

// buildCommit is the commit flanneld was built from, "unknown" when
// neither the linker flag nor the toolchain recorded one.
func buildCommit() string {
	if commit != "" {
		return commit
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	rev, dirty := "", false
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "unknown"
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

// printVersion writes the version alone on the first line, as upstream
// does (scripts read it), then how the binary was built.
func printVersion(w io.Writer) {
	fmt.Fprintln(w, version)
	fmt.Fprintf(w, "commit: %s\n", buildCommit())
	fmt.Fprintf(w, "go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	e, err := fastpath.EmbeddedObject()
	if err != nil || len(e.Programs) == 0 {
		fmt.Fprintf(w, "fast path: not in this binary (%v): --fast-path=auto runs the userspace router alone\n", err)
		return
	}
	fmt.Fprintf(w, "fast path: BPF object embedded (%s; licence %q)\n", strings.Join(e.Programs, ", "), e.License)
}
