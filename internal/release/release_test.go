package release

import (
	"bytes"
	"io"
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

// listTarball lists a tarball, failing t where it is not reproducible.
func listTarball(t *testing.T, data []byte) string {
	t.Helper()
	list, err := List(data)
	if err != nil {
		t.Error(err)
	}
	return list
}
