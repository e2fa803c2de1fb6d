//go:build linux

package main

import (
	"bytes"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// TestVersionOutput checks every line --version prints: the version alone
// first (upstream's output, which scripts read), then commit, Go version
// and the embedded fast path object.
func TestVersionOutput(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v9.8.7", "0123456789abcdef0123456789abcdef01234567"
	var out, errb bytes.Buffer
	if code := run([]string{"flanneld", "--version"}, func(string) string { return "" }, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	want := []*regexp.Regexp{
		regexp.MustCompile(`^v9\.8\.7$`),
		regexp.MustCompile(`^commit: 0123456789abcdef0123456789abcdef01234567$`),
		regexp.MustCompile(`^go: ` + regexp.QuoteMeta(runtime.Version()+" linux/"+runtime.GOARCH) + `$`),
		// The two programs of today, and any that join them.
		regexp.MustCompile(`^fast path: BPF object embedded \((\w+, )*flannel_egress, (\w+, )*flannel_ingress(, \w+)*; licence "[^"]+"\)$`),
	}
	if len(lines) != len(want) {
		t.Fatalf("--version printed %d lines, want %d:\n%s", len(lines), len(want), errb.String())
	}
	for i, re := range want {
		if !re.MatchString(lines[i]) {
			t.Errorf("line %d %q does not match %s", i+1, lines[i], re)
		}
	}
}
