package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"
)

// node is one entry of a layer.
type node struct {
	typ      byte // tar.TypeDir, TypeReg or TypeSymlink
	mode     int64
	data     []byte
	linkname string
	from     string // package or "image", for conflict messages
}

// Tree is the content of one layer by path (relative, no trailing slash).
type Tree map[string]*node

// usrMerged are the top directories Debian 12 keeps under /usr (usrmerge):
// package files there are put under usr/, and the top names become links.
var usrMerged = map[string]bool{"bin": true, "sbin": true, "lib": true, "lib32": true, "lib64": true, "libx32": true}

// clean turns a tar name into Tree's form, moving usrmerge directories
// under usr/.
func clean(name string) string {
	p := strings.Trim(path.Clean("/"+name), "/")
	if top, _, _ := strings.Cut(p, "/"); usrMerged[top] {
		p = "usr/" + p
	}
	return p
}

// dropped reports whether a package file stays out of the image:
// manuals, changelogs and other documentation (copyright files stay: they
// are the licences).
func dropped(p string) bool {
	for _, prefix := range []string{"usr/share/man/", "usr/share/info/", "usr/share/lintian/", "usr/share/bug/", "usr/share/locale/"} {
		if strings.HasPrefix(p+"/", prefix) && p+"/" != prefix {
			return true
		}
	}
	if rest, ok := strings.CutPrefix(p, "usr/share/doc/"); ok {
		_, file, deep := strings.Cut(rest, "/")
		return deep && file != "copyright"
	}
	return false
}

// AddDeb adds the files of one .deb (dpkg-deb --fsys-tarfile).
func (t Tree) AddDeb(ctx context.Context, deb, pkg string) error {
	data, err := fsysTar(ctx, deb)
	if err != nil {
		return err
	}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", deb, err)
		}
		p := clean(h.Name)
		if p == "" || dropped(p) {
			continue
		}
		n := &node{typ: h.Typeflag, mode: h.Mode & 0o7777, from: pkg}
		switch h.Typeflag {
		case tar.TypeDir:
		case tar.TypeReg:
			if n.data, err = io.ReadAll(tr); err != nil {
				return err
			}
		case tar.TypeSymlink:
			n.linkname = h.Linkname
		case tar.TypeLink:
			// A copy instead: in path order the link could come before
			// its target.
			target, ok := t[clean(h.Linkname)]
			if !ok || target.typ != tar.TypeReg {
				return fmt.Errorf("%s: hard link %s to %s, which is not a file before it", deb, h.Name, h.Linkname)
			}
			n.typ, n.data = tar.TypeReg, target.data
		default:
			return fmt.Errorf("%s: %s: unsupported tar entry type %q", deb, h.Name, h.Typeflag)
		}
		if err := t.add(p, n); err != nil {
			return err
		}
	}
}

// add puts n at p; the same directory twice is fine, and so is the same
// file or link with the same content.
func (t Tree) add(p string, n *node) error {
	old, ok := t[p]
	if !ok {
		t[p] = n
		return nil
	}
	if old.typ == n.typ && (n.typ == tar.TypeDir || old.linkname == n.linkname && bytes.Equal(old.data, n.data)) {
		return nil
	}
	return fmt.Errorf("%s is in %s and, differently, in %s", p, old.from, n.from)
}

// Dir adds a directory (and its parents, mode 0755).
func (t Tree) Dir(p string, mode int64) {
	if p == "." || p == "" {
		return
	}
	t.Dir(path.Dir(p), 0o755)
	if _, ok := t[p]; !ok {
		t[p] = &node{typ: tar.TypeDir, mode: mode, from: "image"}
	}
}

// File adds a regular file and its parent directories.
func (t Tree) File(p string, data []byte, mode int64) error {
	t.Dir(path.Dir(p), 0o755)
	return t.add(p, &node{typ: tar.TypeReg, mode: mode, data: data, from: "image"})
}

// Symlink adds a symbolic link and its parent directories.
func (t Tree) Symlink(p, target string) error {
	t.Dir(path.Dir(p), 0o755)
	return t.add(p, &node{typ: tar.TypeSymlink, mode: 0o777, linkname: target, from: "image"})
}

// WriteTar writes the tree as a tar in path order (parents before their
// contents), every entry owned by root with mtime mtime.
func (t Tree) WriteTar(w io.Writer, mtime time.Time) error {
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, p := range paths {
		n := t[p]
		h := &tar.Header{Typeflag: n.typ, Name: p, Mode: n.mode, Linkname: n.linkname,
			Uname: "root", Gname: "root", ModTime: mtime.UTC().Truncate(time.Second)}
		switch n.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			h.Size = int64(len(n.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if _, err := tw.Write(n.data); err != nil {
			return err
		}
	}
	return tw.Close()
}
