package testbed

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// newTimeout bounds New inside NewT.
const newTimeout = time.Minute

// InCI reports whether the environment variable CI is "true". There, a
// missing privilege or tool fails a test instead of skipping it.
func InCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail skips t, or fails it when running in CI.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf(format+" (CI=true: failing instead of skipping)", args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot skips t unless the process runs as root; with CI=true it
// fails t instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "test needs root to create network namespaces (euid %d)", os.Geteuid())
	}
}

// RequireTool skips t unless the named executable is on PATH; with CI=true
// it fails t instead.
func RequireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		skipOrFail(t, "test needs %q on PATH: %v", name, err)
	}
}

// RequireTUN skips t unless /dev/net/tun exists; with CI=true it fails t
// instead.
func RequireTUN(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		skipOrFail(t, "test needs /dev/net/tun: %v", err)
	}
}

// NewT builds a bed for a test: it requires root and ip(8), fails t if New
// fails, and registers Close with t.Cleanup.
func NewT(t testing.TB, opts Options) *Bed {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip")
	ctx, cancel := context.WithTimeout(context.Background(), newTimeout)
	defer cancel()
	b, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("build testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("delete testbed %s: %v", b.Prefix, err)
		}
	})
	return b
}
