package fastpath

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestObjectsMatchSources regenerates the BPF objects and their Go
// bindings with gen.go's own go:generate command and compares them with
// the committed files: someone who edits bpf/fastpath.c must run go
// generate.
func TestObjectsMatchSources(t *testing.T) {
	testbed.RequireTool(t, "clang")
	testbed.RequireTool(t, "llvm-strip")
	args := generateArgs(t)
	out := t.TempDir()
	// Flags go before bpf2go's positional arguments: right after its path.
	var cmdArgs []string
	for _, a := range args[1:] {
		cmdArgs = append(cmdArgs, a)
		if strings.HasSuffix(a, "/cmd/bpf2go") {
			cmdArgs = append(cmdArgs, "-output-dir", out)
		}
	}
	cmd := exec.Command("go", cmdArgs...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, b)
	}
	for _, f := range []string{"bpf_bpfel.o", "bpf_bpfel.go"} {
		want, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what bpf/fastpath.c compiles to: run go generate ./fastpath/", f)
		}
	}
}

// generateArgs splits gen.go's go:generate line (double quotes group).
func generateArgs(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(src)) {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "//go:generate ")
		if !ok {
			continue
		}
		var args []string
		for i, part := range strings.Split(rest, `"`) {
			if i%2 == 1 {
				args = append(args, part)
				continue
			}
			args = append(args, strings.Fields(part)...)
		}
		return args
	}
	t.Fatal("no go:generate line in gen.go")
	return nil
}
