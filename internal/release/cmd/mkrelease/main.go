// Command mkrelease builds the release tarballs of the HEAD commit (make
// release): flanneld for linux/amd64 and linux/arm64 with the units, the
// licences and INSTALL, plus SHA256SUMS. With -check it builds a second
// time in a fresh Go build cache and fails unless the bytes are the same.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flannel-go/flannel-go/internal/release"
)

func main() {
	var o release.Options
	arches := flag.String("arch", "amd64,arm64", "comma-separated linux GOARCHes")
	allowDirty := flag.Bool("allow-dirty", false, "release HEAD even when the work tree has uncommitted changes (they are not included)")
	check := flag.String("check", "", "also build into this directory with a fresh Go build cache and compare the bytes")
	flag.StringVar(&o.Out, "out", "bin/release", "output directory")
	flag.StringVar(&o.Version, "version", "", "version to stamp (default: git describe --tags --always)")
	flag.Parse()
	o.Repo, o.Arches = ".", strings.Split(*arches, ",")
	if err := run(o, *allowDirty, *check); err != nil {
		fmt.Fprintln(os.Stderr, "mkrelease:", err)
		os.Exit(1)
	}
}

func run(o release.Options, allowDirty bool, check string) error {
	ctx := context.Background()
	if err := release.Stamp(ctx, &o, allowDirty); err != nil {
		return err
	}
	paths, err := release.Build(ctx, o)
	if err != nil {
		return err
	}
	for _, p := range paths {
		fmt.Println(p)
	}
	if check == "" {
		return nil
	}
	cache, err := os.MkdirTemp("", "flannel-go-gocache-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(cache)
	second := o
	second.Out, second.GoCache = check, cache
	if _, err := release.Build(ctx, second); err != nil {
		return err
	}
	if err := release.Compare(o.Out, check); err != nil {
		return err
	}
	fmt.Printf("%s and %s are byte-identical (second build in a fresh Go build cache)\n", o.Out, filepath.Clean(check))
	return nil
}
