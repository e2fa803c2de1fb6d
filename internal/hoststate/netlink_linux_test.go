//go:build linux

package hoststate

import (
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// nopAddrs stands in for the TUN where only routes are tested.
type nopAddrs struct{}

func (nopAddrs) SetAddr(netip.Addr) error    { return nil }
func (nopAddrs) RemoveAddr(netip.Addr) error { return nil }

// TestBlackholeRoute works in a fresh network namespace: a blackhole route
// an upstream flanneld left (metric 0) is taken over as it is, one at
// flannel-go's former metric 1000 is replaced, a container bridge's
// connected route for the subnet makes it step aside, a deleted route comes back
// at the next Resync, and a lease move removes the old one.
func TestBlackholeRoute(t *testing.T) {
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "ip")
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	ctx := t.Context()
	run := func(args ...string) string {
		t.Helper()
		out, err := h.Run(ctx, "ip", args...)
		if err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
		return out
	}
	blackholes := func() string { return strings.TrimSpace(run("-4", "route", "show", "type", "blackhole")) }
	in := func(fn func() error) {
		t.Helper()
		if err := h.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
	upstream := netip.MustParsePrefix("198.18.3.0/24")
	older := netip.MustParsePrefix("198.18.5.0/24")
	bridged := netip.MustParsePrefix("198.18.4.0/24")

	run("route", "add", "blackhole", upstream.String())
	in(func() error { return Netlink{}.AddBlackhole(upstream) })
	if got := blackholes(); got != "blackhole "+upstream.String() {
		t.Errorf("after taking over upstream's route: %q, want that one route, metric 0", got)
	}

	run("route", "add", "blackhole", older.String(), "metric", "1000")
	in(func() error { return Netlink{}.AddBlackhole(older) })
	if got := blackholes(); strings.Contains(got, "metric 1000") || !strings.Contains(got+"\n", "blackhole "+older.String()+"\n") {
		t.Errorf("the metric-1000 route was not replaced by upstream's: %q", got)
	}
	in(func() error { return Netlink{}.DelBlackhole(older) })

	// A bridge whose address comes after the blackhole route is shadowed
	// by it (route get fails); the next sync removes the blackhole.
	in(func() error { return Netlink{}.AddBlackhole(bridged) })
	run("link", "add", "cbr0", "type", "veth", "peer", "name", "cbr0p")
	run("link", "set", "cbr0p", "up")
	run("link", "set", "cbr0", "up")
	run("addr", "add", "198.18.4.1/24", "dev", "cbr0")
	if out, err := h.Run(ctx, "ip", "route", "get", "198.18.4.2"); err == nil {
		t.Logf("the kernel no longer lets the blackhole route shadow the bridge: %s", out)
	}
	in(func() error { return Netlink{}.AddBlackhole(bridged) })
	if got := blackholes(); strings.Contains(got, bridged.String()) {
		t.Errorf("the blackhole route stays next to the bridge's route: %q", got)
	}
	if out := run("route", "get", "198.18.4.2"); !strings.Contains(out, "dev cbr0") {
		t.Errorf("container address not routed to the bridge: %q", out)
	}
	in(func() error { return Netlink{}.AddBlackhole(bridged) })
	if got := blackholes(); strings.Contains(got, bridged.String()) {
		t.Errorf("a blackhole route was added next to the bridge's: %q", got)
	}

	// Resync restores a route someone deleted.
	st := New(Config{Network: netip.MustParsePrefix("198.18.0.0/16"), TUN: nopAddrs{}, Blackhole: Netlink{}, Logger: slog.New(slog.DiscardHandler)})
	in(func() error { return st.Apply(Subnets{V4: upstream}, Previous{}) })
	run("route", "del", "blackhole", upstream.String())
	in(st.Resync)
	if got := blackholes(); got != "blackhole "+upstream.String() {
		t.Fatalf("the deleted blackhole route is not back after a resync: %q", got)
	}

	in(func() error { return Netlink{}.DelBlackhole(upstream) })
	if got := blackholes(); got != "" {
		t.Errorf("after the lease moved: %q, want no blackhole route", got)
	}
}

// TestBlackholeRouteIPv6: the IPv6 subnet gets its blackhole route the way
// upstream adds it (no metric given: the kernel's 1024), which a second
// sync keeps, the resync restores, and a lease move removes.
func TestBlackholeRouteIPv6(t *testing.T) {
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "ip")
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	ctx := t.Context()
	blackholes := func() string {
		t.Helper()
		out, err := h.Run(ctx, "ip", "-6", "route", "show", "type", "blackhole")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	in := func(fn func() error) {
		t.Helper()
		if err := h.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
	subnet := netip.MustParsePrefix("2001:db8:100:1a::/64")
	want := "blackhole " + subnet.String() + " dev lo metric 1024 pref medium"
	in(func() error { return Netlink{}.AddBlackhole(subnet) })
	in(func() error { return Netlink{}.AddBlackhole(subnet) })
	if got := blackholes(); got != want {
		t.Errorf("after two syncs: %q, want %q", got, want)
	}

	st := New(Config{IPv6Network: netip.MustParsePrefix("2001:db8:100::/48"), TUN: nopAddrs{}, Blackhole: Netlink{}, Logger: slog.New(slog.DiscardHandler)})
	in(func() error { return st.Apply(Subnets{V6: subnet}, Previous{}) })
	in(func() error { return Netlink{}.DelBlackhole(subnet) })
	if blackholes() != "" {
		t.Fatal("the route was not deleted: the resync check proves nothing")
	}
	in(st.Resync)
	if got := blackholes(); got != want {
		t.Errorf("after the resync: %q, want %q", got, want)
	}
	in(func() error { return Netlink{}.DelBlackhole(subnet) })
	if got := blackholes(); got != "" {
		t.Errorf("after the lease moved: %q, want no blackhole route", got)
	}
}
