package kernelmatrix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultMirror is where kernel packages come from.
const DefaultMirror = "http://deb.debian.org"

// Archive fetches kernel packages from Debian's archive with apt-get, on
// sources, lists and a package cache of its own under Dir: the machine's
// apt configuration is not changed, and apt checks the archive's
// signatures and the packages' hashes as usual.
type Archive struct {
	Dir    string        // cache root, e.g. $HOME/.cache/flannel-kernels
	Mirror string        // DefaultMirror when empty
	MaxAge time.Duration // package lists older than this are refreshed
	Log    io.Writer

	updateErr error // the last Update's failure, for Newest's
}

func (a *Archive) mirror() string {
	if a.Mirror == "" {
		return DefaultMirror
	}
	return a.Mirror
}

// KernelTree is a kernel package unpacked in the cache, its modules
// decompressed and indexed by depmod.
type KernelTree struct {
	Package string
	Release string // the modules directory's name, uname -r in the guest
	Image   string // the vmlinuz file
	Modules string // the directory holding Release/ (lib/modules)
}

func (a *Archive) aptDir() string { return filepath.Join(a.Dir, "apt") }

func (a *Archive) aptArgs() []string {
	d := a.aptDir()
	return []string{
		"-o", "Dir::Etc::SourceList=" + filepath.Join(d, "sources.list"),
		"-o", "Dir::Etc::SourceParts=/dev/null",
		"-o", "Dir::State=" + filepath.Join(d, "state"),
		"-o", "Dir::State::status=" + filepath.Join(d, "status"),
		"-o", "Dir::Cache=" + filepath.Join(d, "cache"),
		"-o", "APT::Architecture=amd64",
		"-o", "APT::Architectures::=amd64",
		"-o", "Acquire::Languages=none",
		"-o", "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false",
		"-o", "Debug::NoLocking=true",
	}
}

// sourcesList is the apt sources for suites: security suites live in
// debian-security.
func (a *Archive) sourcesList(suites []string) string {
	mirror := a.mirror()
	var b strings.Builder
	for _, s := range suites {
		repo := "debian"
		if strings.HasSuffix(s, "-security") {
			repo = "debian-security"
		}
		fmt.Fprintf(&b, "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s/%s %s main\n", mirror, repo, s)
	}
	return b.String()
}

// Update refreshes the package lists of suites when they are older than
// MaxAge or the suites changed.
func (a *Archive) Update(ctx context.Context, suites []string) error {
	d := a.aptDir()
	for _, sub := range []string{"state/lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return err
		}
	}
	if err := writeIfMissing(filepath.Join(d, "status"), ""); err != nil {
		return err
	}
	src := a.sourcesList(suites)
	srcFile, stamp := filepath.Join(d, "sources.list"), filepath.Join(d, "updated")
	old, _ := os.ReadFile(srcFile)
	if st, err := os.Stat(stamp); err == nil && string(old) == src && time.Since(st.ModTime()) < a.MaxAge {
		return nil
	}
	if err := os.WriteFile(srcFile, []byte(src), 0o644); err != nil {
		return err
	}
	os.Remove(stamp)
	fmt.Fprintf(a.Log, "kernel-matrix: apt-get update (%s)\n", strings.Join(suites, " "))
	// --error-on=any: apt-get update otherwise exits 0 when it could
	// not fetch a list.
	if out, err := a.apt(ctx, "", "apt-get", "update", "--error-on=any"); err != nil {
		a.updateErr = fmt.Errorf("apt-get update of %s from %s: %w\n%s", strings.Join(suites, ", "), a.mirror(), err, tail(out, 15))
		return a.updateErr
	}
	return os.WriteFile(stamp, nil, 0o644)
}

func (a *Archive) apt(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, append(a.aptArgs(), args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Newest returns the newest package in the lists whose name matches re.
// Without lists (no network) it falls back to the newest one in the cache.
func (a *Archive) Newest(ctx context.Context, re *regexp.Regexp) (string, error) {
	out, err := a.apt(ctx, "", "apt-cache", "pkgnames", "linux-image-")
	var names []string
	if err == nil {
		names = strings.Fields(out)
	} else if entries, rerr := os.ReadDir(a.Dir); rerr == nil {
		for _, e := range entries {
			names = append(names, e.Name())
		}
	}
	names = slices.DeleteFunc(names, func(n string) bool { return !re.MatchString(n) })
	if len(names) == 0 {
		return "", fmt.Errorf("no package matching %s in the package lists in %s nor in the cache (apt-cache: %v; %v)", re, a.aptDir(), err, a.updateErr)
	}
	slices.SortFunc(names, naturalCompare)
	return names[len(names)-1], nil
}

// naturalCompare orders names with their runs of digits compared as
// numbers: linux-image-6.1.0-9 before linux-image-6.1.0-10.
func naturalCompare(a, b string) int {
	for a != "" && b != "" {
		ra, rb := leadingRun(a), leadingRun(b)
		na, ea := strconv.ParseUint(ra, 10, 64)
		nb, eb := strconv.ParseUint(rb, 10, 64)
		var c int
		if ea == nil && eb == nil {
			c = cmpUint(na, nb)
		} else {
			c = strings.Compare(ra, rb)
		}
		if c != 0 {
			return c
		}
		a, b = a[len(ra):], b[len(rb):]
	}
	return cmpUint(uint64(len(a)), uint64(len(b)))
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// leadingRun is s's first run of digits or of non-digits.
func leadingRun(s string) string {
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	i := 1
	for i < len(s) && digit(s[i]) == digit(s[0]) {
		i++
	}
	return s[:i]
}

// Prepare returns the unpacked kernel of pkg, downloading and unpacking
// it into the cache first unless a previous run did.
func (a *Archive) Prepare(ctx context.Context, pkg string) (*KernelTree, error) {
	dir := filepath.Join(a.Dir, pkg)
	if k, err := openKernel(pkg, dir); err == nil {
		return k, nil
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(a.Log, "kernel-matrix: downloading %s\n", pkg)
	if out, err := a.apt(ctx, tmp, "apt-get", "download", pkg); err != nil {
		return nil, fmt.Errorf("download %s from %s: %w\n%s", pkg, a.mirror(), err, tail(out, 15))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("download %s: want one .deb, found %d", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", debs[0], root).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("unpack %s: %w\n%s", debs[0], err, out)
	}
	os.Remove(debs[0])
	if err := prepareModules(ctx, root); err != nil {
		return nil, fmt.Errorf("%s: %w", pkg, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	return openKernel(pkg, dir)
}

// openKernel finds the image and the modules of a prepared kernel.
func openKernel(pkg, dir string) (*KernelTree, error) {
	root := filepath.Join(dir, "root")
	mods, err := filepath.EvalSymlinks(filepath.Join(root, "lib", "modules"))
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(mods)
	if err != nil || len(entries) != 1 {
		return nil, fmt.Errorf("%s: want one kernel release in %s (%v)", pkg, mods, err)
	}
	k := &KernelTree{Package: pkg, Release: entries[0].Name(), Modules: mods}
	k.Image = filepath.Join(root, "boot", "vmlinuz-"+k.Release)
	for _, f := range []string{k.Image, filepath.Join(mods, k.Release, "modules.dep")} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("%s: %w", pkg, err)
		}
	}
	return k, nil
}

// prepareModules decompresses every module (busybox's insmod in the
// initramfs reads plain .ko files) and runs depmod.
func prepareModules(ctx context.Context, root string) error {
	// Debian 13 is usr-merged: modules under usr/lib/modules, no lib.
	if _, err := os.Lstat(filepath.Join(root, "lib")); errors.Is(err, os.ErrNotExist) {
		if err := os.Symlink("usr/lib", filepath.Join(root, "lib")); err != nil {
			return err
		}
	}
	byTool := map[string][]string{}
	err := filepath.WalkDir(filepath.Join(root, "lib", "modules")+"/", func(p string, d os.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case strings.HasSuffix(p, ".ko.xz"):
			byTool["xz"] = append(byTool["xz"], p)
		case strings.HasSuffix(p, ".ko.zst"):
			byTool["zstd"] = append(byTool["zstd"], p)
		case strings.HasSuffix(p, ".ko.gz"):
			byTool["gzip"] = append(byTool["gzip"], p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for tool, files := range byTool {
		if err := decompress(ctx, tool, files); err != nil {
			return err
		}
	}
	rels, err := os.ReadDir(filepath.Join(root, "lib", "modules"))
	if err != nil || len(rels) != 1 {
		return fmt.Errorf("want one kernel release under lib/modules (%v)", err)
	}
	if out, err := exec.CommandContext(ctx, "depmod", "-b", root, rels[0].Name()).CombinedOutput(); err != nil {
		return fmt.Errorf("depmod: %w\n%s", err, out)
	}
	return nil
}

// decompress runs tool -d on files in two parallel batches.
func decompress(ctx context.Context, tool string, files []string) error {
	args := []string{"-d", "-q", "-f"}
	if tool == "zstd" {
		args = append(args, "--rm")
	}
	errs := make(chan error, 2)
	half := (len(files) + 1) / 2
	for _, part := range [][]string{files[:half], files[half:]} {
		go func() {
			if len(part) == 0 {
				errs <- nil
				return
			}
			var out bytes.Buffer
			cmd := exec.CommandContext(ctx, tool, append(args, part...)...)
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				errs <- fmt.Errorf("%s -d of %d modules: %w\n%s", tool, len(part), err, tail(out.String(), 5))
				return
			}
			errs <- nil
		}()
	}
	return errors.Join(<-errs, <-errs)
}

func writeIfMissing(path, content string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return os.WriteFile(path, []byte(content), 0o644)
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
