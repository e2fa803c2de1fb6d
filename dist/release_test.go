package dist

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/doccmd"
	"github.com/flannel-go/flannel-go/internal/image"
	"github.com/flannel-go/flannel-go/internal/release"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// The reproducibility tests run here, outside make test's race-detector
// run, where compressing 30 MB twice would take minutes.

// TestReleaseReproducible runs the release build of HEAD twice for
// linux/amd64, each from its own export in its own temporary directory,
// and compares the outputs byte for byte. It shares the Go build cache to
// stay within make test's budget; make release-check (run by .ci/run)
// repeats the comparison for both architectures with a fresh cache.
func TestReleaseReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds flanneld twice")
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not found")
	}
	repo := doccmd.ModuleRoot(t)
	ctx := context.Background()
	o := release.Options{Repo: repo, Arches: []string{"amd64"}}
	if err := release.Stamp(ctx, &o, true); err != nil {
		t.Fatal(err)
	}
	dirs := [2]string{t.TempDir(), t.TempDir()}
	var paths []string
	for _, d := range dirs {
		o.Out = d
		p, err := release.Build(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p...)
	}
	if err := release.Compare(dirs[0], dirs[1]); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	list := listTarball(t, data)
	top := o.Name("amd64") + "/"
	for _, want := range []string{"-rwxr-xr-x root/root " + top + "flanneld", "-rwxr-xr-x root/root " + top + "mk-docker-opts.sh",
		top + "LICENSE", top + "THIRD_PARTY_LICENSES", top + "INSTALL", top + "systemd/flanneld.service"} {
		if !strings.Contains(list, want+"\n") {
			t.Errorf("tarball lacks %q:\n%s", want, list)
		}
	}
	sums, err := os.ReadFile(filepath.Join(dirs[0], "SHA256SUMS"))
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(sums)), "  "+filepath.Base(paths[0])) {
		t.Errorf("SHA256SUMS %q (%v) does not name %s", sums, err, filepath.Base(paths[0]))
	}
	checkBinary(t, data, o)
}

// checkBinary runs the packaged flanneld --version: the stamps must be in.
func checkBinary(t *testing.T, tgz []byte, o release.Options) {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no flanneld in the tarball: %v", err)
		}
		if strings.HasSuffix(h.Name, "/flanneld") {
			break
		}
	}
	bin := filepath.Join(t.TempDir(), "flanneld")
	f, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, tr); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("flanneld --version: %v\n%s", err, out)
	}
	s := string(out)
	if !strings.HasPrefix(s, o.Version+"\n") || !strings.Contains(s, "commit: "+o.Commit+"\n") || !strings.Contains(s, "fast path: BPF object embedded") {
		t.Errorf("flanneld --version:\n%s\nwant version %s, commit %s and the fast path", s, o.Version, o.Commit)
	}
}

// listTarball lists a tarball, failing t where it is not reproducible.
func listTarball(t *testing.T, data []byte) string {
	t.Helper()
	list, err := release.List(data)
	if err != nil {
		t.Error(err)
	}
	return list
}

// lockedDebs returns the committed lock and the cache make image-debs
// fills, skipping (failing in CI) when the packages are not there.
func lockedDebs(t *testing.T) ([]image.Deb, string) {
	t.Helper()
	lock := os.Getenv("IMAGE_LOCK") // make exports the one make image used
	if lock == "" {
		lock = "dist/image/debs.lock"
	}
	f, err := os.Open(filepath.Join(doccmd.ModuleRoot(t), lock))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	debs, err := image.ReadLock(f)
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv("IMAGE_DEBS")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "flannel-go", "debs")
	}
	for _, d := range debs {
		if err := image.CheckFile(filepath.Join(dir, d.File()), d.SHA256); err != nil {
			if testbed.InCI() {
				t.Fatalf("%v: make image-debs fetches them (.ci/run does)", err)
			}
			t.Skipf("%v: run make image-debs", err)
		}
	}
	return debs, dir
}

// TestImageBuildReproducible builds the image twice from the locked packages
// and a stand-in flanneld, each into its own directory, and compares the
// archives byte for byte; it also checks what the layers hold.
func TestImageBuildReproducible(t *testing.T) {
	testbed.RequireTool(t, "dpkg-deb")
	debs, dir := lockedDebs(t)
	bin := filepath.Join(t.TempDir(), "flanneld")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := image.Options{Flanneld: bin, Debs: debs, DebsDir: dir, Version: "v0.0.0-test", Commit: "c0ffee", Arch: "amd64",
		Created: time.Unix(1700000000, 0), Docs: map[string][]byte{"LICENSE": []byte("license\n")}}
	var archives [2][]byte
	var last *image.Layout
	for i := range archives {
		l, err := image.Build(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "image.tar")
		if err := l.WriteArchive(p, o.Created); err != nil {
			t.Fatal(err)
		}
		if archives[i], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
		last = l
	}
	if !bytes.Equal(archives[0], archives[1]) {
		t.Fatal("two builds from the same inputs differ")
	}
	names := layerNames(t, last)
	for _, want := range []string{"usr/sbin/xtables-nft-multi", "usr/sbin/iptables", "usr/sbin/nft", "usr/sbin/ip6tables",
		"usr/lib/x86_64-linux-gnu/libc.so.6", "usr/share/doc/iptables/copyright", "lib64", "opt/bin/flanneld",
		"opt/bin/mk-docker-opts.sh", "usr/share/doc/flannel-go/debs.lock", "run/flannel/"} {
		if !names[want] {
			t.Errorf("image lacks %s", want)
		}
	}
	if names["usr/share/man/man8/iptables.8.gz"] {
		t.Error("manual pages are in the image")
	}
}

// layerNames lists every entry of every layer, with each entry's mtime
// and owner checked.
func layerNames(t *testing.T, l *image.Layout) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	for d, b := range l.Blobs {
		if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			continue // JSON
		}
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		tr := tar.NewReader(zr)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.ModTime.Unix() != 1700000000 || h.Uid != 0 || h.Gid != 0 {
				t.Errorf("%s: mtime %v uid %d gid %d", h.Name, h.ModTime, h.Uid, h.Gid)
			}
			names[h.Name] = true
		}
	}
	return names
}
