package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// List reads a release tarball and returns one "mode owner/group name"
// line per entry. It fails where the archive would not be reproducible:
// a gzip header with a time or a name, entries with differing times or
// not owned by root.
func List(data []byte) (string, error) {
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return "", err
	}
	var errs []error
	if !zr.ModTime.IsZero() || zr.Name != "" {
		errs = append(errs, fmt.Errorf("gzip header has mtime %v, name %q: not reproducible", zr.ModTime, zr.Name))
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
			return "", err
		}
		if first.IsZero() {
			first = h.ModTime
		}
		if !h.ModTime.Equal(first) || h.Uid != 0 || h.Gid != 0 {
			errs = append(errs, fmt.Errorf("%s: mtime %v uid %d gid %d, want all the same and root", h.Name, h.ModTime, h.Uid, h.Gid))
		}
		b.WriteString(h.FileInfo().Mode().String() + " " + h.Uname + "/" + h.Gname + " " + h.Name + "\n")
	}
	return b.String(), errors.Join(errs...)
}
