// Package release builds flanneld's release tarballs byte for byte the same
// from the same commit: static binaries built with -trimpath and an empty
// build ID, and tar.gz files whose entries have a fixed order, owner, mode
// and mtime, compressed without a gzip timestamp.
package release

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// Entry is one regular file of a tarball.
type Entry struct {
	Name string // path inside the tarball's top directory, slash-separated
	Data []byte
	Exec bool // mode 0755 instead of 0644
}

// WriteTarball writes a gzip-compressed tar of entries under the directory
// top: directories first where they are needed, everything sorted by name,
// owned by root, with mtime set to mtime. The same input gives the same
// bytes (Go's gzip writes no timestamp and no name when they are unset).
func WriteTarball(w io.Writer, top string, entries []Entry, mtime time.Time) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	if err := WriteTar(zw, top, entries, mtime); err != nil {
		return err
	}
	return zw.Close()
}

// WriteTar is WriteTarball without the compression; top may be empty.
func WriteTar(w io.Writer, top string, entries []Entry, mtime time.Time) error {
	tw := tar.NewWriter(w)
	sorted := append([]Entry(nil), entries...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	dirs := map[string]bool{}
	hdr := func(name string, mode int64, typ byte, size int64) *tar.Header {
		return &tar.Header{
			Typeflag: typ, Name: name, Mode: mode, Size: size,
			Uname: "root", Gname: "root", ModTime: mtime.UTC().Truncate(time.Second),
			Format: tar.FormatUSTAR,
		}
	}
	var addDir func(dir string) error
	addDir = func(dir string) error {
		if dir == "." || dirs[dir] {
			return nil
		}
		if err := addDir(path.Dir(dir)); err != nil {
			return err
		}
		dirs[dir] = true
		return tw.WriteHeader(hdr(dir+"/", 0o755, tar.TypeDir, 0))
	}
	for i, e := range sorted {
		if e.Name == "" || strings.HasPrefix(e.Name, "/") || strings.Contains(e.Name, "..") {
			return fmt.Errorf("tarball entry %q: not a relative path", e.Name)
		}
		if i > 0 && sorted[i-1].Name == e.Name {
			return fmt.Errorf("tarball entry %q given twice", e.Name)
		}
		name := path.Join(top, e.Name)
		if err := addDir(path.Dir(name)); err != nil {
			return err
		}
		mode := int64(0o644)
		if e.Exec {
			mode = 0o755
		}
		if err := tw.WriteHeader(hdr(name, mode, tar.TypeReg, int64(len(e.Data)))); err != nil {
			return err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return err
		}
	}
	return tw.Close()
}
