package routesync

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/lease"
)

type recorder struct {
	swaps   chan []dataplane.Route
	forgets chan []string // nil: not recorded
}

func (r recorder) SetRoutes(routes []dataplane.Route) { r.swaps <- slices.Clone(routes) }

func (r recorder) ForgetPeers(peers []netip.Addr) {
	if r.forgets == nil {
		return
	}
	var out []string
	for _, p := range peers {
		out = append(out, p.String())
	}
	slices.Sort(out)
	r.forgets <- out
}

func ev(typ lease.EventType, subnet, ip string) lease.Event {
	return lease.Event{Type: typ, Lease: lease.Lease{Subnet: netip.MustParsePrefix(subnet), PublicIP: netip.MustParseAddr(ip)}}
}

func sorted(routes []dataplane.Route) []string {
	var out []string
	for _, r := range routes {
		out = append(out, r.Subnet.String()+">"+r.Peer.String())
	}
	slices.Sort(out)
	return out
}

func TestRunFollowsEvents(t *testing.T) {
	events := make(chan []lease.Event, 8)
	rec := recorder{swaps: make(chan []dataplane.Route, 8)}
	s := New(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx, events, rec); close(done) }()
	defer func() { cancel(); <-done }()

	next := func() []string {
		t.Helper()
		select {
		case r := <-rec.swaps:
			return sorted(r)
		case <-time.After(5 * time.Second):
			t.Fatal("no table swap")
			return nil
		}
	}
	events <- []lease.Event{ev(lease.EventAdded, "198.18.1.0/24", "192.0.2.1"), ev(lease.EventAdded, "198.18.2.0/24", "192.0.2.2")}
	if got, want := next(), []string{"198.18.1.0/24>192.0.2.1", "198.18.2.0/24>192.0.2.2"}; !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	// An IPv6-only lease (no PublicIP) is unreachable over an IPv4 underlay:
	// no route.
	events <- []lease.Event{{Type: lease.EventAdded, Lease: lease.Lease{IPv6Subnet: netip.MustParsePrefix("2001:db8:100:2c::/64"), PublicIPv6: netip.MustParseAddr("2001:db8:ff::3")}}}
	if got, want := next(), []string{"198.18.1.0/24>192.0.2.1", "198.18.2.0/24>192.0.2.2"}; !slices.Equal(got, want) {
		t.Fatalf("routes %v after an IPv6-only lease, want %v", got, want)
	}
	// A moved subnet, a removal, and the removal of something unknown.
	events <- []lease.Event{ev(lease.EventAdded, "198.18.2.0/24", "192.0.2.9"), ev(lease.EventRemoved, "198.18.1.0/24", "192.0.2.1"), ev(lease.EventRemoved, "198.18.7.0/24", "192.0.2.7")}
	if got, want := next(), []string{"198.18.2.0/24>192.0.2.9"}; !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	if s.Routes() != 1 {
		t.Fatalf("Routes() = %d, want 1", s.Routes())
	}
}

func TestBurstIsOneSwap(t *testing.T) {
	events := make(chan []lease.Event, 100)
	for i := range 100 {
		events <- []lease.Event{ev(lease.EventAdded, netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i), 0}), 24).String(), "192.0.2.1")}
	}
	rec := recorder{swaps: make(chan []dataplane.Route, 100)}
	s := New(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx, events, rec); close(done) }()
	got := <-rec.swaps
	cancel()
	<-done
	if len(got) != 100 {
		t.Fatalf("first swap has %d routes, want all 100 queued batches in one swap", len(got))
	}
}

func dual(typ lease.EventType, subnet, subnet6, ip, ip6 string) lease.Event {
	l := lease.Lease{IPv6Subnet: netip.MustParsePrefix(subnet6)}
	if subnet != "" {
		l.Subnet = netip.MustParsePrefix(subnet)
	}
	if ip != "" {
		l.PublicIP = netip.MustParseAddr(ip)
	}
	if ip6 != "" {
		l.PublicIPv6 = netip.MustParseAddr(ip6)
	}
	return lease.Event{Type: typ, Lease: l}
}

// runSyncer runs s on a recorder and returns a function that waits for the
// next swap.
func runSyncer(t *testing.T, s *Syncer) (chan<- []lease.Event, func() []string) {
	t.Helper()
	events := make(chan []lease.Event, 8)
	rec := recorder{swaps: make(chan []dataplane.Route, 8)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx, events, rec); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return events, func() []string {
		t.Helper()
		select {
		case r := <-rec.swaps:
			return sorted(r)
		case <-time.After(5 * time.Second):
			t.Fatal("no table swap")
			return nil
		}
	}
}

// A dual-stack lease on an IPv4 underlay routes both subnets to PublicIP,
// whatever its PublicIPv6; a move of the IPv6 subnet and the removal follow.
func TestDualStackRoutesOverIPv4(t *testing.T) {
	s := New(slog.New(slog.DiscardHandler))
	s.SetFamilies(Families{IPv4: true, IPv6: true})
	events, next := runSyncer(t, s)
	events <- []lease.Event{
		dual(lease.EventAdded, "198.18.1.0/24", "2001:db8:100:1::/64", "192.0.2.1", ""),
		dual(lease.EventAdded, "198.18.2.0/24", "2001:db8:100:2::/64", "192.0.2.2", "2001:db8:1::2"),
	}
	want := []string{"198.18.1.0/24>192.0.2.1", "198.18.2.0/24>192.0.2.2", "2001:db8:100:1::/64>192.0.2.1", "2001:db8:100:2::/64>192.0.2.2"}
	if got := next(); !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	events <- []lease.Event{
		dual(lease.EventRemoved, "198.18.1.0/24", "2001:db8:100:1::/64", "192.0.2.1", ""),
		dual(lease.EventAdded, "198.18.2.0/24", "2001:db8:100:2::/64", "192.0.2.9", ""),
	}
	want = []string{"198.18.2.0/24>192.0.2.9", "2001:db8:100:2::/64>192.0.2.9"}
	if got := next(); !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
}

// On an IPv6 underlay (an IPv6-only network) IPv6 subnets route to
// PublicIPv6; a lease whose PublicIPv6 goes null loses its route.
func TestIPv6OnlyRoutesOverIPv6(t *testing.T) {
	s := New(slog.New(slog.DiscardHandler))
	s.SetFamilies(Families{IPv6: true, IPv6Underlay: true})
	events, next := runSyncer(t, s)
	events <- []lease.Event{
		dual(lease.EventAdded, "", "2001:db8:100:1::/64", "", "2001:db8:1::1"),
		dual(lease.EventAdded, "", "2001:db8:100:2::/64", "", "2001:db8:1::2"),
		dual(lease.EventAdded, "", "2001:db8:100:3::/64", "", ""),
	}
	want := []string{"2001:db8:100:1::/64>2001:db8:1::1", "2001:db8:100:2::/64>2001:db8:1::2"}
	if got := next(); !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
	events <- []lease.Event{dual(lease.EventAdded, "", "2001:db8:100:2::/64", "", "")}
	want = []string{"2001:db8:100:1::/64>2001:db8:1::1"}
	if got := next(); !slices.Equal(got, want) {
		t.Fatalf("routes %v after PublicIPv6 went null, want %v", got, want)
	}
	if s.Routes() != 1 {
		t.Fatalf("Routes() = %d, want 1", s.Routes())
	}
}

// An IPv4-only network routes the IPv4 subnet of an upstream node's
// dual-stack key and ignores its IPv6 subnet.
func TestIPv4OnlyIgnoresIPv6Subnets(t *testing.T) {
	events, next := runSyncer(t, New(slog.New(slog.DiscardHandler)))
	events <- []lease.Event{dual(lease.EventAdded, "198.18.250.0/24", "2001:db8:100:fa::/64", "192.0.2.250", "2001:db8::fa")}
	if got, want := next(), []string{"198.18.250.0/24>192.0.2.250"}; !slices.Equal(got, want) {
		t.Fatalf("routes %v, want %v", got, want)
	}
}

// TestForgetPeers: the peers that take a lease they did not hold are
// forgotten before the table that routes to them; a renewal forgets
// nobody.
func TestForgetPeers(t *testing.T) {
	events := make(chan []lease.Event, 8)
	rec := recorder{swaps: make(chan []dataplane.Route, 8), forgets: make(chan []string, 8)}
	s := New(slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx, events, rec); close(done) }()
	defer func() { cancel(); <-done }()
	for _, step := range []struct {
		name  string
		batch []lease.Event
		want  []string
	}{
		{"first snapshot", []lease.Event{ev(lease.EventAdded, "198.18.1.0/24", "192.0.2.1"), ev(lease.EventAdded, "198.18.2.0/24", "192.0.2.2")}, []string{"192.0.2.1", "192.0.2.2"}},
		{"renewal", []lease.Event{ev(lease.EventAdded, "198.18.1.0/24", "192.0.2.1")}, nil},
		{"subnet moved to a known peer", []lease.Event{ev(lease.EventAdded, "198.18.2.0/24", "192.0.2.1")}, []string{"192.0.2.1"}},
		{"lease expired and granted again in one burst", []lease.Event{ev(lease.EventRemoved, "198.18.1.0/24", "192.0.2.1"), ev(lease.EventAdded, "198.18.1.0/24", "192.0.2.1")}, []string{"192.0.2.1"}},
		{"removal alone", []lease.Event{ev(lease.EventRemoved, "198.18.2.0/24", "192.0.2.1")}, nil},
	} {
		events <- step.batch
		select {
		case got := <-rec.forgets:
			if !slices.Equal(got, step.want) {
				t.Errorf("%s: forgot %v, want %v", step.name, got, step.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no ForgetPeers", step.name)
		}
		select {
		case <-rec.swaps:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no table swap", step.name)
		}
	}
}
