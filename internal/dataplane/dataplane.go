// Package dataplane is the seam between the daemon and the engines that
// carry packets: the userspace router and the kernel fast path. It holds
// what they share (routes, directions, the capture tap, per-path
// counters) and the one interface both implement; Engines fans out to
// several. routesync and the daemon know engines only through it.
package dataplane

import (
	"errors"
	"net/netip"
)

// Route sends the packets for Subnet (an IPv4 or IPv6 subnet of the
// overlay) to the node at Peer, its address on the underlay.
type Route struct {
	Subnet netip.Prefix
	Peer   netip.Addr
}

// Direction says which way an inner packet travels.
type Direction uint8

const (
	// In is a packet from a peer, on its way into the TUN.
	In Direction = iota + 1
	// Out is a packet read from the TUN, on its way to a peer.
	Out
)

// String returns "in" or "out" (the words of /metrics and /debug/pcap).
func (d Direction) String() string {
	switch d {
	case In:
		return "in"
	case Out:
		return "out"
	}
	return "unknown"
}

// Tap receives a copy of the inner packets an engine carries, e.g. to
// write a pcap. Capture is called on the packet path, from several
// goroutines at once, with each inner packet as a whole IPv4 or IPv6
// packet; pkt is only valid during the call: Capture must copy what it
// keeps and must not modify it.
type Tap interface {
	Capture(dir Direction, pkt []byte)
}

// Reason counts packets by why something happened to them.
type Reason struct {
	Name  string // the metric's reason label
	Help  string
	Count uint64
}

// PathStats are the counters of one path: "user" (the userspace router)
// or "kernel" (the fast path).
type PathStats struct {
	Path string
	// Packets and Bytes count inner packets (outer headers excluded) by
	// Direction; a super-packet on the kernel path counts once.
	Packets, Bytes [Out + 1]uint64
	Dropped        []Reason // dropped, by reason
	Passed         []Reason // left to another engine, by reason
}

// Routes is the part of an engine that follows the leases (what
// routesync drives).
type Routes interface {
	// SetRoutes makes the engine's routes equal to routes.
	SetRoutes(routes []Route)
	// ForgetPeers comes before the SetRoutes that routes to peers that
	// took a lease they did not hold: what the engine learnt about them
	// from their packets may no longer hold.
	ForgetPeers(peers []netip.Addr)
}

// Engine carries packets between the TUN and the peers.
type Engine interface {
	Routes
	// SetTap starts copying the packets the engine carries into t, or
	// stops with nil.
	SetTap(t Tap) error
	// PathStats reads the engine's counters.
	PathStats() []PathStats
}

// Engines is several engines as one: each call goes to each, in order.
// The kernel fast path comes before the router, so that a subnet that
// moves is moved in the kernel first, where most of its packets go.
type Engines []Engine

// SetRoutes sets routes on every engine.
func (es Engines) SetRoutes(routes []Route) {
	for _, e := range es {
		e.SetRoutes(routes)
	}
}

// ForgetPeers tells every engine.
func (es Engines) ForgetPeers(peers []netip.Addr) {
	for _, e := range es {
		e.ForgetPeers(peers)
	}
}

// SetTap sets t on every engine; if one refuses, none keeps it.
func (es Engines) SetTap(t Tap) error {
	for i, e := range es {
		if err := e.SetTap(t); err != nil {
			var errs []error
			for _, done := range es[:i] {
				errs = append(errs, done.SetTap(nil))
			}
			return errors.Join(append([]error{err}, errs...)...)
		}
	}
	return nil
}

// PathStats lists every engine's paths.
func (es Engines) PathStats() []PathStats {
	var out []PathStats
	for _, e := range es {
		out = append(out, e.PathStats()...)
	}
	return out
}
