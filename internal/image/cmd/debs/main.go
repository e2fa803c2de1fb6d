// Command debs pins and fetches the Debian packages of the container
// image: -resolve writes the lock from apt-cache (make image-lock), -fetch
// DIR downloads the locked .debs into DIR with apt-get download, keeping
// those already there with the right checksum (make image-debs).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/flannel-go/flannel-go/internal/image"
)

func main() {
	lock := flag.String("lock", "dist/image/debs.lock", "the lock file")
	resolve := flag.Bool("resolve", false, "write the lock from apt-cache's candidates")
	fetch := flag.String("fetch", "", "download the locked packages into this directory")
	flag.Parse()
	if err := run(*lock, *resolve, *fetch); err != nil {
		fmt.Fprintln(os.Stderr, "debs:", err)
		os.Exit(1)
	}
}

func run(lock string, resolve bool, fetch string) error {
	ctx := context.Background()
	if resolve {
		debs, err := image.Resolve(ctx, image.Roots)
		if err != nil {
			return err
		}
		var b bytes.Buffer
		if err := image.WriteLock(&b, debs); err != nil {
			return err
		}
		if err := os.WriteFile(lock, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	if fetch == "" {
		return nil
	}
	f, err := os.Open(lock)
	if err != nil {
		return err
	}
	defer f.Close()
	debs, err := image.ReadLock(f)
	if err != nil {
		return err
	}
	return image.Fetch(ctx, debs, fetch)
}
