// Command mkimage builds the container image (make image): the locked
// Debian packages and a static flanneld, written to OUT/oci (an OCI image
// layout) and OUT/flannel-go-image-VERSION.tar (an OCI archive), both
// tagged VERSION. Every mtime is SOURCE_DATE_EPOCH (default: the commit's
// time), so the same inputs give the same bytes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/flannel-go/flannel-go/internal/image"
)

func main() {
	var o image.Options
	var lock, out string
	flag.StringVar(&o.Flanneld, "flanneld", "", "static flanneld for -arch (required)")
	flag.StringVar(&o.DebsDir, "debs", "", "directory with the locked .debs (make image-debs)")
	flag.StringVar(&lock, "lock", "dist/image/debs.lock", "the lock file")
	flag.StringVar(&out, "out", "bin/image", "output directory")
	flag.StringVar(&o.Version, "version", "", "tag (required)")
	flag.StringVar(&o.Commit, "commit", "", "commit flanneld was built from")
	flag.StringVar(&o.Arch, "arch", "amd64", "architecture")
	flag.Parse()
	if err := run(o, lock, out); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(o image.Options, lock, out string) error {
	if o.Flanneld == "" || o.Version == "" || o.DebsDir == "" {
		return fmt.Errorf("-flanneld, -version and -debs are required")
	}
	f, err := os.Open(lock)
	if err != nil {
		return err
	}
	o.Debs, err = image.ReadLock(f)
	f.Close()
	if err != nil {
		return err
	}
	if o.Created, err = epoch(); err != nil {
		return err
	}
	o.Docs = map[string][]byte{}
	for _, name := range []string{"LICENSE", "THIRD_PARTY_LICENSES"} {
		if o.Docs[name], err = os.ReadFile(name); err != nil {
			return err
		}
	}
	l, err := image.Build(context.Background(), o)
	if err != nil {
		return err
	}
	dir := filepath.Join(out, "oci")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := l.WriteDir(dir); err != nil {
		return err
	}
	archive := filepath.Join(out, "flannel-go-image-"+o.Version+".tar")
	if err := l.WriteArchive(archive, o.Created); err != nil {
		return err
	}
	fmt.Printf("%s (OCI layout) and %s, tag %s, manifest %s\n", dir, archive, o.Version, l.Manifest)
	return nil
}

// epoch is SOURCE_DATE_EPOCH, or the HEAD commit's time.
func epoch() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		b, err := exec.Command("git", "log", "-1", "--format=%ct").Output()
		if err != nil {
			return time.Time{}, fmt.Errorf("git log (set SOURCE_DATE_EPOCH outside a git tree): %w", err)
		}
		s = strings.TrimSpace(string(b))
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", s, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}
