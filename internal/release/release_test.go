package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
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
