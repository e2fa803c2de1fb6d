//go:build !linux

// Command flanneld runs on Linux only: its data plane is a Linux TUN
// device driven with recvmmsg/sendmmsg and UDP GSO/GRO.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "flanneld runs on Linux only")
	os.Exit(1)
}
