// Package routesync keeps a router's route table equal to the set of the
// other nodes' leases: it folds the lease watch's events into routes and
// swaps the table once per burst of events. A lease gives a route for each
// of its subnets in the families the network carries, IPv4 and IPv6, both
// to the peer's address in the underlay's family: PublicIP on an IPv4
// underlay, PublicIPv6 on the IPv6 underlay of an IPv6-only network.
package routesync

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/lease"
)

// Syncer folds lease events into routes.
type Syncer struct {
	log    *slog.Logger
	fam    Families
	peers  map[netip.Prefix]netip.Addr
	routes atomic.Int64
	batch  []lease.Event
	// fresh is, per burst, the peers that took a lease.
	fresh map[netip.Addr]bool
}

// Families says which subnets get routes, and to which of the peers'
// addresses.
type Families struct {
	// IPv4 and IPv6 route the leases' subnets of that family; an IPv4-only
	// network ignores the IPv6 part of an upstream node's dual-stack key.
	IPv4, IPv6 bool
	// IPv6Underlay routes to the peers' PublicIPv6 instead of their
	// PublicIP, for a node whose sockets speak IPv6 (an IPv6-only
	// network): the routes' Peer must be in the family of the router's
	// LocalAddr.
	IPv6Underlay bool
}

// New returns a Syncer that logs subnet changes to log. It routes IPv4
// subnets to the peers' PublicIP until SetFamilies says otherwise.
func New(log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	return &Syncer{log: log, fam: Families{IPv4: true}, peers: map[netip.Prefix]netip.Addr{},
		fresh: map[netip.Addr]bool{}}
}

// SetFamilies sets what the routes cover. Call it before Run: the daemon
// learns the families from the network config, after its metrics already
// read the Syncer.
func (s *Syncer) SetFamilies(f Families) { s.fam = f }

// Routes is the number of routes in the last table handed to the Table.
func (s *Syncer) Routes() int { return int(s.routes.Load()) }

// Run applies the event batches from events to t until ctx is done. Batches
// already waiting when one arrives are applied with it, so a burst of
// changes (a snapshot, lease churn) costs one table rebuild, not one each.
func (s *Syncer) Run(ctx context.Context, events <-chan []lease.Event, t dataplane.Routes) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-events:
			s.batch = append(s.batch[:0], b...)
		}
	drain:
		for {
			select {
			case b := <-events:
				s.batch = append(s.batch, b...)
			default:
				break drain
			}
		}
		t.ForgetPeers(s.apply(s.batch))
		t.SetRoutes(s.table())
	}
}

// apply folds a burst of events into the routes and returns the peers
// that took a lease they did not hold (see Table.ForgetPeers).
func (s *Syncer) apply(events []lease.Event) []netip.Addr {
	clear(s.fresh)
	for _, ev := range events {
		peer := ev.Lease.PublicIP
		if s.fam.IPv6Underlay {
			peer = ev.Lease.PublicIPv6
		}
		for _, subnet := range [2]netip.Prefix{ev.Lease.Subnet, ev.Lease.IPv6Subnet} {
			if !subnet.IsValid() || subnet.Addr().Is4() && !s.fam.IPv4 || subnet.Addr().Is6() && !s.fam.IPv6 {
				// A family the lease does not hold or the network does not carry.
				continue
			}
			s.applyOne(ev.Type, subnet, peer)
		}
	}
	var out []netip.Addr
	for ip := range s.fresh {
		out = append(out, ip)
	}
	return out
}

// applyOne applies one event to one of the lease's subnets. A lease
// without an address in the underlay's family (an IPv6-only peer seen from
// an IPv4 underlay, a peer with "PublicIPv6":null from an IPv6 one) is
// unreachable: its subnet gets no route, and a route it had goes.
func (s *Syncer) applyOne(typ lease.EventType, subnet netip.Prefix, peer netip.Addr) {
	switch {
	case typ == lease.EventAdded && peer.IsValid():
		// Renewals arrive as Added again; only a new or moved subnet is
		// news (one removed earlier in the burst is new again).
		if old, ok := s.peers[subnet]; !ok || old != peer {
			s.log.Info(fmt.Sprintf("Subnet added: %s", subnet), "public_ip", peer)
			s.fresh[peer] = true
		}
		s.peers[subnet] = peer
	case typ == lease.EventAdded:
		if _, ok := s.peers[subnet]; ok {
			s.log.Info(fmt.Sprintf("Subnet removed: %s", subnet), "reason", "no public address in the underlay's family")
		}
		delete(s.peers, subnet)
	case typ == lease.EventRemoved:
		if _, ok := s.peers[subnet]; ok {
			s.log.Info(fmt.Sprintf("Subnet removed: %s", subnet))
		}
		delete(s.peers, subnet)
	}
}

// table lists the routes; the engines index them by subnet, so their
// order does not matter.
func (s *Syncer) table() []dataplane.Route {
	routes := make([]dataplane.Route, 0, len(s.peers))
	for subnet, ip := range s.peers {
		routes = append(routes, dataplane.Route{Subnet: subnet, Peer: ip})
	}
	s.routes.Store(int64(len(routes)))
	return routes
}
