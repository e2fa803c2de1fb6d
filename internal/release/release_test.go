package release

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
)

// TestTarballDeterministic writes the same entries twice, given in a
// different order, and checks bytes and metadata.
func TestTarballDeterministic(t *testing.T) {
	mtime := time.Unix(1700000000, 0)
	entries := []Entry{{Name: "b/x.conf", Data: []byte("x")}, {Name: "flanneld", Data: []byte("bin"), Exec: true}, {Name: "a", Data: nil}}
	var one, two bytes.Buffer
	if err := WriteTarball(&one, "top", entries, mtime); err != nil {
		t.Fatal(err)
	}
	rev := []Entry{entries[2], entries[1], entries[0]}
	if err := WriteTarball(&two, "top", rev, mtime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Fatal("same entries in another order gave other bytes")
	}
	got := listTarball(t, one.Bytes())
	want := "drwxr-xr-x root/root top/\n-rw-r--r-- root/root top/a\n" +
		"drwxr-xr-x root/root top/b/\n-rw-r--r-- root/root top/b/x.conf\n-rwxr-xr-x root/root top/flanneld\n"
	if got != want {
		t.Errorf("tarball:\n%s\nwant:\n%s", got, want)
	}
	if err := WriteTarball(io.Discard, "top", []Entry{{Name: "../etc/passwd"}}, mtime); err == nil {
		t.Error("an entry outside the top directory was accepted")
	}
}

// listTarball returns "mode owner/group name" lines and checks every
// entry's mtime and the gzip header.
func listTarball(t *testing.T, data []byte) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header has mtime %v, name %q: not reproducible", zr.ModTime, zr.Name)
	}
	tr := tar.NewReader(zr)
	var b strings.Builder
	var first time.Time
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if first.IsZero() {
			first = h.ModTime
		}
		if !h.ModTime.Equal(first) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want all the same and root", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		b.WriteString(h.FileInfo().Mode().String() + " " + h.Uname + "/" + h.Gname + " " + h.Name + "\n")
	}
	return b.String()
}

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
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	o := Options{Repo: repo, Arches: []string{"amd64"}}
	if err := Stamp(ctx, &o, true); err != nil {
		t.Fatal(err)
	}
	dirs := [2]string{t.TempDir(), t.TempDir()}
	var paths []string
	for _, d := range dirs {
		o.Out = d
		p, err := Build(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p...)
	}
	if err := Compare(dirs[0], dirs[1]); err != nil {
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
func checkBinary(t *testing.T, tgz []byte, o Options) {
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
