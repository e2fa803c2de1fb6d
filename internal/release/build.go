package release

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Options says what to release. Zero values are filled from the git
// repository by Stamp.
type Options struct {
	Repo    string   // the git work tree to release (its HEAD commit)
	Out     string   // where the tarballs and SHA256SUMS go
	Arches  []string // linux GOARCHes, default amd64 and arm64
	Version string   // default: git describe --tags --always
	Commit  string   // default: git rev-parse HEAD
	// Epoch is SOURCE_DATE_EPOCH: every mtime in the tarballs. Default:
	// the commit's time.
	Epoch time.Time
	// GoCache, when set, is the build cache for the builds (a fresh one
	// shows the bytes do not come from an earlier build).
	GoCache string
}

// Stamp fills Version, Commit and Epoch from the repository (Epoch from
// SOURCE_DATE_EPOCH when that is set) and fails when the work tree has
// changes: a tarball named after a commit must hold that commit.
func Stamp(ctx context.Context, o *Options, allowDirty bool) error {
	git := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "git", append([]string{"-C", o.Repo}, args...)...).Output()
		if err != nil {
			return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	status, err := git("status", "--porcelain", "--untracked-files=no")
	if err != nil {
		return err
	}
	if status != "" && !allowDirty {
		return fmt.Errorf("the work tree has uncommitted changes; a release is built from HEAD alone, commit or stash them first:\n%s", status)
	}
	if o.Commit == "" {
		if o.Commit, err = git("rev-parse", "HEAD"); err != nil {
			return err
		}
	}
	if o.Version == "" {
		if o.Version, err = git("describe", "--tags", "--always", o.Commit); err != nil {
			return err
		}
	}
	if o.Epoch.IsZero() {
		s := os.Getenv("SOURCE_DATE_EPOCH")
		if s == "" {
			if s, err = git("log", "-1", "--format=%ct", o.Commit); err != nil {
				return err
			}
		}
		sec, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
		}
		o.Epoch = time.Unix(sec, 0).UTC()
	}
	if len(o.Arches) == 0 {
		o.Arches = []string{"amd64", "arm64"}
	}
	return nil
}

// Name is the tarball's base name without extension for arch.
func (o *Options) Name(arch string) string {
	return fmt.Sprintf("flannel-go-%s-linux-%s", o.Version, arch)
}

// Build exports the commit into a temporary directory (so that nothing
// uncommitted gets in), builds flanneld for every arch there, writes one
// tarball per arch and SHA256SUMS into o.Out, and returns the tarball
// paths.
func Build(ctx context.Context, o Options) ([]string, error) {
	tmp, err := os.MkdirTemp("", "flannel-go-release-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	if err := export(ctx, o.Repo, o.Commit, src); err != nil {
		return nil, err
	}
	files, err := PackageFiles(src)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.Out, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	var sums strings.Builder
	for _, arch := range o.Arches {
		bin := filepath.Join(tmp, "flanneld-"+arch)
		if err := o.goBuild(ctx, src, arch, bin); err != nil {
			return nil, err
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			return nil, err
		}
		entries := append([]Entry{{Name: "flanneld", Data: data, Exec: true}}, files...)
		var buf bytes.Buffer
		if err := WriteTarball(&buf, o.Name(arch), entries, o.Epoch); err != nil {
			return nil, err
		}
		p := filepath.Join(o.Out, o.Name(arch)+".tar.gz")
		if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
			return nil, err
		}
		fmt.Fprintf(&sums, "%x  %s\n", sha256.Sum256(buf.Bytes()), filepath.Base(p))
		paths = append(paths, p)
	}
	return paths, os.WriteFile(filepath.Join(o.Out, "SHA256SUMS"), []byte(sums.String()), 0o644)
}

// export writes the tree of commit into dir with git archive.
func export(ctx context.Context, repo, commit, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	archive := exec.CommandContext(ctx, "git", "-C", repo, "archive", "--format=tar", commit)
	untar := exec.CommandContext(ctx, "tar", "-x", "-C", dir)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		return err
	}
	untar.Stdin = pipe
	var errb bytes.Buffer
	archive.Stderr, untar.Stderr = &errb, &errb
	if err := untar.Start(); err != nil {
		return err
	}
	if err := archive.Run(); err != nil {
		untar.Wait()
		return fmt.Errorf("git archive %s: %w\n%s", commit, err, errb.String())
	}
	if err := untar.Wait(); err != nil {
		return fmt.Errorf("unpack git archive: %w\n%s", err, errb.String())
	}
	return nil
}

// goBuild builds a static, trimmed flanneld with an empty build ID and the
// version and commit stamped in, so that its bytes depend only on the
// source, the Go toolchain and the module versions.
func (o *Options) goBuild(ctx context.Context, src, arch, out string) error {
	ldflags := fmt.Sprintf("-s -w -buildid= -X main.version=%s -X main.commit=%s", o.Version, o.Commit)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, "./cmd/flanneld")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=-mod=readonly")
	if o.GoCache != "" {
		cmd.Env = append(cmd.Env, "GOCACHE="+o.GoCache)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build for linux/%s: %w\n%s", arch, err, b)
	}
	return nil
}

// PackageFiles reads what goes beside flanneld, from the exported tree:
// LICENSE, THIRD_PARTY_LICENSES, INSTALL, mk-docker-opts.sh and the
// systemd units of dist/ (under systemd/, keeping dist/'s layout).
func PackageFiles(src string) ([]Entry, error) {
	read := func(rel, name string, exec bool) (Entry, error) {
		b, err := os.ReadFile(filepath.Join(src, rel))
		return Entry{Name: name, Data: b, Exec: exec}, err
	}
	var entries []Entry
	for _, f := range []struct {
		rel, name string
		exec      bool
	}{
		{"LICENSE", "LICENSE", false},
		{"THIRD_PARTY_LICENSES", "THIRD_PARTY_LICENSES", false},
		{"dist/INSTALL", "INSTALL", false},
		{"dist/mk-docker-opts.sh", "mk-docker-opts.sh", true},
	} {
		e, err := read(f.rel, f.name, f.exec)
		if err != nil {
			return nil, err
		}
		entries = append(entries, e)
	}
	dist := filepath.Join(src, "dist")
	err := filepath.WalkDir(dist, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dist, p)
		if !isUnit(rel) {
			return nil
		}
		e, err := read(filepath.Join("dist", rel), filepath.ToSlash(filepath.Join("systemd", rel)), false)
		entries = append(entries, e)
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name < entries[j].Name })
	return entries, nil
}

// isUnit reports whether a file of dist/ is a systemd unit or drop-in, or
// the etcdctl txn input of the example drop-in.
func isUnit(rel string) bool {
	return strings.HasSuffix(rel, ".service") || strings.HasSuffix(rel, ".conf") || strings.HasSuffix(rel, ".txn")
}

// ErrMismatch is returned by Compare when two release directories differ.
var ErrMismatch = errors.New("release outputs differ")

// Compare checks that two release directories hold the same files with the
// same bytes.
func Compare(a, b string) error {
	list := func(dir string) (map[string][32]byte, error) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		sums := map[string][32]byte{}
		for _, e := range ents {
			data, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				return nil, err
			}
			sums[e.Name()] = sha256.Sum256(data)
		}
		return sums, nil
	}
	sa, err := list(a)
	if err != nil {
		return err
	}
	sb, err := list(b)
	if err != nil {
		return err
	}
	var diffs []string
	for name, sum := range sa {
		if other, ok := sb[name]; !ok {
			diffs = append(diffs, name+" only in "+a)
		} else if other != sum {
			diffs = append(diffs, name+" differs")
		}
	}
	for name := range sb {
		if _, ok := sa[name]; !ok {
			diffs = append(diffs, name+" only in "+b)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		return fmt.Errorf("%w: %s", ErrMismatch, strings.Join(diffs, "; "))
	}
	return nil
}
