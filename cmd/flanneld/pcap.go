//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/flannel-go/flannel-go/internal/pcap"
	"github.com/flannel-go/flannel-go/router"
)

// pcapMain runs "flanneld pcap unwrap [--port N] IN OUT", which extracts
// the inner packets from an underlay capture. IN or OUT "-" is stdin or
// stdout.
func pcapMain(args []string, stdout, stderr io.Writer) int {
	usage := func() {
		fmt.Fprintln(stderr, "Usage: flanneld pcap unwrap [--port N] IN.pcap OUT.pcap")
		fmt.Fprintln(stderr, "  Writes the inner IPv4 packets of the flannel UDP datagrams in IN (a tcpdump -w capture")
		fmt.Fprintln(stderr, "  of the host interface: Ethernet, Linux cooked or raw IP) to OUT, keeping the timestamps.")
	}
	if len(args) == 0 || args[0] != "unwrap" {
		usage()
		return 2
	}
	fs := flag.NewFlagSet("flanneld pcap unwrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	port := fs.Int("port", router.DefaultPort, "UDP port of the flannel datagrams (the network config's Backend.Port)")
	fs.Usage = func() {
		usage()
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 2 {
		fs.Usage()
		return 2
	}
	if err := unwrapFile(fs.Arg(0), fs.Arg(1), *port, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "flanneld pcap unwrap: %v\n", err)
		return 1
	}
	return 0
}

func unwrapFile(inPath, outPath string, port int, stdout, stderr io.Writer) (err error) {
	var in io.Reader = os.Stdin
	if inPath != "-" {
		f, err := os.Open(inPath)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	out := stdout
	if outPath != "-" {
		// A capture holds container traffic: readable by its owner only.
		f, cerr := os.OpenFile(outPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if cerr != nil {
			return cerr
		}
		defer func() {
			if cerr := f.Close(); err == nil && cerr != nil {
				err = cerr
			}
			if err != nil {
				os.Remove(outPath)
			}
		}()
		out = f
	}
	st, err := pcap.Unwrap(in, out, port)
	if err != nil {
		return fmt.Errorf("%s: %w", inPath, err)
	}
	fmt.Fprintf(stderr, "%d frames read: %d inner packets written, %d other traffic skipped, %d fragments, %d malformed\n",
		st.Frames, st.Packets, st.Skipped, st.Fragments, st.Malformed)
	return nil
}

// attachPcap makes s the engines' tap until the returned function is
// called.
func (d *daemon) attachPcap(s *pcap.Sink) (func(), error) {
	es := d.engines.Load()
	if es == nil {
		return nil, pcap.ErrNotRunning
	}
	if err := es.SetTap(s); err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	return func() { es.SetTap(nil) }, nil
}
