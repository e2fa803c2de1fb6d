// Package routesync keeps a router's route table equal to the set of the
// other nodes' leases: it folds the lease watch's events into routes and
// swaps the table once per burst of events.
package routesync

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/router"
)

// Table receives the full route set; *router.Router is one. Tests and
// benchmarks wrap it to see each swap.
type Table interface {
	SetRoutes(routes []router.Route)
}

// EventSink is a Table that also sees each burst's lease events, just
// before the table built from them.
type EventSink interface {
	LeaseEvents(events []lease.Event)
}

// Syncer folds lease events into routes.
type Syncer struct {
	log    *slog.Logger
	peers  map[netip.Prefix]netip.Addr
	routes atomic.Int64
	batch  []lease.Event
}

// New returns a Syncer that logs subnet changes to log.
func New(log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	return &Syncer{log: log, peers: map[netip.Prefix]netip.Addr{}}
}

// Routes is the number of routes in the last table handed to the Table.
func (s *Syncer) Routes() int { return int(s.routes.Load()) }

// Run applies the event batches from events to t until ctx is done. Batches
// already waiting when one arrives are applied with it, so a burst of
// changes (a snapshot, lease churn) costs one table rebuild, not one each.
func (s *Syncer) Run(ctx context.Context, events <-chan []lease.Event, t Table) {
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
		s.apply(s.batch)
		if es, ok := t.(EventSink); ok {
			es.LeaseEvents(s.batch)
		}
		t.SetRoutes(s.table())
	}
}

func (s *Syncer) apply(events []lease.Event) {
	for _, ev := range events {
		subnet, ip := ev.Lease.Subnet, ev.Lease.PublicIP
		if !subnet.IsValid() {
			// An IPv6-only lease: nothing to route over IPv4.
			continue
		}
		switch ev.Type {
		case lease.EventAdded:
			// Renewals arrive as Added again; only a new or moved subnet is news.
			if old, ok := s.peers[subnet]; !ok || old != ip {
				s.log.Info(fmt.Sprintf("Subnet added: %s", subnet), "public_ip", ip)
			}
			s.peers[subnet] = ip
		case lease.EventRemoved:
			if _, ok := s.peers[subnet]; ok {
				s.log.Info(fmt.Sprintf("Subnet removed: %s", subnet))
			}
			delete(s.peers, subnet)
		}
	}
}

// table lists the routes; the router indexes them by subnet, so their order
// does not matter.
func (s *Syncer) table() []router.Route {
	routes := make([]router.Route, 0, len(s.peers))
	for subnet, ip := range s.peers {
		routes = append(routes, router.Route{Subnet: subnet, Peer: ip})
	}
	s.routes.Store(int64(len(routes)))
	return routes
}
