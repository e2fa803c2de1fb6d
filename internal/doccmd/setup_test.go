package doccmd

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// kernelMatrixPackages are the packages .ci/run installs for make
// test-kernels alone (QEMU, the guests' busybox and modules, unpacking and
// verifying Debian's kernel packages): the README's make test line leaves
// them out. A package .ci/run adds for make test must go into the README.
var kernelMatrixPackages = []string{"qemu-system-x86", "busybox-static", "kmod", "xz-utils", "zstd", "debian-archive-keyring"}

var setupRe = regexp.MustCompile(`^apt-get update && apt-get install -y ([a-z0-9 .+-]+) && make (\w+)\n$`)

// readmeSetup parses one of the README's set-up lines into its packages
// and make target.
func readmeSetup(t *testing.T, script string) ([]string, string) {
	t.Helper()
	m := setupRe.FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("README set-up block %q: want one line apt-get update && apt-get install -y PACKAGES && make TARGET", script)
	}
	return strings.Fields(m[1]), m[2]
}

// ciPackages returns the packages .ci/run installs and whether it runs
// make test.
func ciPackages(t *testing.T) ([]string, bool) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(ModuleRoot(t), ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	s := strings.ReplaceAll(string(raw), "\\\n", " ")
	var pkgs []string
	runsTest := false
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "make" && slices.Contains(f[1:], "test") {
			runsTest = true
		}
		i := slices.Index(f, "install")
		if len(f) == 0 || f[0] != "apt-get" || i < 0 {
			continue
		}
		for _, w := range f[i+1:] {
			if strings.HasPrefix(w, ">") || strings.HasPrefix(w, "&") {
				break
			}
			if !strings.HasPrefix(w, "-") {
				pkgs = append(pkgs, w)
			}
		}
	}
	return pkgs, runsTest
}

// TestReadmeSetupCommands keeps the README's two set-up commands honest:
// the test line installs exactly what .ci/run installs for make test (its
// packages less the kernel matrix's) and runs make test, as .ci/run does;
// the demo line runs make demo with packages the test line also installs.
func TestReadmeSetupCommands(t *testing.T) {
	testPkgs, target := readmeSetup(t, Script(t, "README.md", "test"))
	if target != "test" {
		t.Errorf("README test line runs make %s, want make test", target)
	}
	ci, runsTest := ciPackages(t)
	if !runsTest {
		t.Error(".ci/run does not run make test")
	}
	for _, p := range ci {
		if !slices.Contains(testPkgs, p) && !slices.Contains(kernelMatrixPackages, p) {
			t.Errorf(".ci/run installs %s, the README's make test line does not: add it there (or to kernelMatrixPackages if only make test-kernels needs it)", p)
		}
	}
	for _, p := range testPkgs {
		if !slices.Contains(ci, p) {
			t.Errorf("the README's make test line installs %s, .ci/run does not", p)
		}
	}
	demoPkgs, target := readmeSetup(t, Script(t, "README.md", "demo"))
	if target != "demo" {
		t.Errorf("README demo line runs make %s, want make demo", target)
	}
	for _, p := range demoPkgs {
		if !slices.Contains(testPkgs, p) {
			t.Errorf("the demo line installs %s, which make test does not: the tests would not run the demo's tools", p)
		}
	}
	mk, err := os.ReadFile(filepath.Join(ModuleRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tgt := range []string{"demo", "test"} {
		if !regexp.MustCompile(`(?m)^` + tgt + `:`).Match(mk) {
			t.Errorf("the Makefile has no %s target", tgt)
		}
	}
}
