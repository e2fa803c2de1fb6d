// Command thirdparty writes THIRD_PARTY_LICENSES: the licences of every
// module linked into flanneld. Run it from the module root (make licenses).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/flannel-go/flannel-go/internal/licenses"
)

func main() {
	out := flag.String("o", "THIRD_PARTY_LICENSES", "file to write")
	flag.Parse()
	if err := run(*out); err != nil {
		fmt.Fprintln(os.Stderr, "thirdparty:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	mods, err := licenses.List(context.Background(), ".", "./cmd/flanneld")
	if err != nil {
		return err
	}
	if err := licenses.Check(mods); err != nil {
		return err
	}
	goLicense, err := licenses.GoLicense(context.Background())
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if err := licenses.Render(&b, mods, goLicense); err != nil {
		return err
	}
	return os.WriteFile(out, b.Bytes(), 0o644)
}
