// Package pcap turns overlay traffic into pcap files that tcpdump and
// Wireshark read: a non-blocking capture sink the router's tap feeds while
// an HTTP client downloads the capture, and an unwrapper that extracts the
// inner packets from an underlay capture of flannel's UDP datagrams.
//
// Every pcap written here has link type LINKTYPE_RAW (101): the same as
// `tcpdump -i flannel0 -w`, and the raw-IP link type that every libpcap
// and Wireshark version reads (LINKTYPE_IPV4, 228, needs libpcap 1.3+).
package pcap

import (
	"fmt"

	"github.com/google/gopacket/layers"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// LinkType is the link type of every pcap this package writes.
const LinkType = layers.LinkTypeRaw

// Direction says which way a packet crossed the data plane.
type Direction = dataplane.Direction

// Directions, named from the TUN device's point of view.
const (
	In  = dataplane.In  // from a peer into the TUN
	Out = dataplane.Out // from the TUN to a peer
)

// Filter is a set of directions to capture.
type Filter uint8

// Filters.
const (
	FilterIn   Filter = 1 << In
	FilterOut  Filter = 1 << Out
	FilterBoth        = FilterIn | FilterOut
)

// Has reports whether f captures packets going in direction d.
func (f Filter) Has(d Direction) bool { return f&(1<<d) != 0 }

// String returns "in", "out" or "both".
func (f Filter) String() string {
	switch f {
	case FilterIn:
		return "in"
	case FilterOut:
		return "out"
	}
	return "both"
}

// ParseFilter parses "in", "out" or "both"; empty means both.
func ParseFilter(s string) (Filter, error) {
	switch s {
	case "", "both":
		return FilterBoth, nil
	case "in":
		return FilterIn, nil
	case "out":
		return FilterOut, nil
	}
	return 0, fmt.Errorf("direction %q: want in, out or both", s)
}
