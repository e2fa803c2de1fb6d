//go:build linux

// Command flanneld is a flannel-compatible overlay network daemon: it leases
// a subnet per host from etcd, writes the subnet file for Docker, and carries
// the overlay's IPv4 packets between hosts in UDP with upstream flannel's
// udp wire format.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/flannel-go/flannel-go/internal/routesync"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args, os.Getenv, os.Stdout, os.Stderr))
}

// run dispatches on the program name and the first argument, so the same
// binary serves as flanneld, "flanneld mk-docker-opts" and mk-docker-opts.sh.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	name := filepath.Base(args[0])
	if name == "mk-docker-opts.sh" || name == "mk-docker-opts" {
		return mkDockerOpts(args[1:], getenv, stdout, stderr)
	}
	if len(args) > 1 {
		switch args[1] {
		case "mk-docker-opts":
			return mkDockerOpts(args[2:], getenv, stdout, stderr)
		case "pcap":
			return pcapMain(args[2:], stdout, stderr)
		}
	}

	log := newLogger(stderr, 0)
	o, err := parseOptions(name, args[1:], getenv, stderr, log)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if o.version {
		printVersion(stderr)
		return 0
	}
	log = newLogger(stderr, o.verbosity)
	slog.SetDefault(log)

	d := &daemon{o: o, log: log, routes: routesync.New(log)}
	if err := d.run(context.Background()); err != nil {
		log.Error(err.Error())
		return 1
	}
	log.Info("Exiting cleanly...")
	return 0
}

func newLogger(w io.Writer, verbosity int) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: logLevel(verbosity)}))
}
