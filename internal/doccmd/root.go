package doccmd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Root is a throwaway root file system for running documented install
// commands as root without touching the host: the host's /usr (read-only,
// with an empty /usr/local over it), /dev and /etc/alternatives (Debian's
// command links), and empty /etc, /run, /var, /tmp, /opt that the test
// reads afterwards under Dir.
type Root struct {
	Dir string
	// Stubs are commands put first on PATH inside the root, by name: a
	// stub records its arguments, one call per line, in /tmp/NAME.calls
	// and exits 0 (systemctl, which needs a running systemd).
	Stubs []string
}

// NewRoot makes an empty Root in a temporary directory of t.
func NewRoot(t testing.TB, stubs ...string) *Root {
	t.Helper()
	r := &Root{Dir: t.TempDir(), Stubs: stubs}
	for _, d := range []string{"usr", "usr-local", "dev", "etc", "run", "var", "tmp", "opt", "root", "stubs", "work"} {
		if err := os.MkdirAll(filepath.Join(r.Dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(r.Dir, l)); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range stubs {
		stub := fmt.Sprintf("#!/bin/sh\necho \"$*\" >>/tmp/%s.calls\n", s)
		if err := os.WriteFile(filepath.Join(r.Dir, "stubs", s), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// Path is the host path of p inside the root.
func (r *Root) Path(p string) string {
	if strings.HasPrefix(p, "/usr/local/") || p == "/usr/local" {
		return filepath.Join(r.Dir, "usr-local", strings.TrimPrefix(p, "/usr/local"))
	}
	return filepath.Join(r.Dir, p)
}

// Command returns a command that runs script with sh -e in the root,
// in a mount namespace of its own (the binds vanish with it), in workdir
// (a path inside the root), with env added to a minimal environment.
// netns, when not empty, is the named network namespace to run in.
func (r *Root) Command(ctx context.Context, netns, workdir, script string, env ...string) *exec.Cmd {
	setup := `set -e
R="$1"; shift
mount --make-rprivate /
mount --bind /usr "$R/usr"
mount -o remount,bind,ro "$R/usr"
mount --bind "$R/usr-local" "$R/usr/local"
mount --rbind /dev "$R/dev"
mkdir -p "$R/etc/alternatives"
mount --bind /etc/alternatives "$R/etc/alternatives"
exec chroot "$R" /usr/bin/env -i "$@"
`
	script = "cd " + shellQuote(workdir) + "\n" + script
	args := []string{"unshare", "--mount", "--fork", "sh", "-c", setup, "setup", r.Dir,
		"PATH=/stubs:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "HOME=/root"}
	args = append(args, env...)
	args = append(args, "/bin/sh", "-ec", script)
	if netns != "" {
		args = append([]string{"ip", "netns", "exec", netns}, args...)
	}
	return exec.CommandContext(ctx, args[0], args[1:]...)
}

// Calls returns what the stub name recorded, one call per element.
func (r *Root) Calls(name string) []string {
	b, _ := os.ReadFile(filepath.Join(r.Dir, "tmp", name+".calls"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
