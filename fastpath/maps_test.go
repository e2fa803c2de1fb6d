package fastpath

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// loadedPath loads the programs without attaching them: enough to check
// what the route and peer maps hold.
func loadedPath(t *testing.T) *Path {
	t.Helper()
	testbed.RequireRoot(t)
	p := &Path{
		cfg:    Config{Logger: slog.New(slog.DiscardHandler)},
		routes: map[netip.Prefix]netip.Addr{},
		peers:  map[netip.Addr]int{},
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	if err := loadBpfObjects(&p.objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.objs.Close() })
	return p
}

func (p *Path) lookupRoute(t *testing.T, addr string) (netip.Addr, bool) {
	t.Helper()
	var peer uint32
	if err := p.objs.Routes.Lookup(routeKey(netip.PrefixFrom(netip.MustParseAddr(addr), 32)), &peer); err != nil {
		return netip.Addr{}, false
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], peer)
	return netip.AddrFrom4(b), true
}

func (p *Path) hasPeer(ip string) bool {
	var v bpfPeer
	return p.objs.Peers.Lookup(be32(netip.MustParseAddr(ip)), &v) == nil
}

func TestSetRoutesFollowsTable(t *testing.T) {
	p := loadedPath(t)
	r := func(subnet, peer string) dataplane.Route {
		return dataplane.Route{Subnet: netip.MustParsePrefix(subnet), Peer: netip.MustParseAddr(peer)}
	}
	p.SetRoutes([]dataplane.Route{r("198.18.1.0/24", "192.0.2.1"), r("198.18.2.0/24", "192.0.2.2"), r("198.18.3.0/24", "192.0.2.2")})
	if got, ok := p.lookupRoute(t, "198.18.2.77"); !ok || got != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("198.18.2.77 routes to %v (%v), want 192.0.2.2", got, ok)
	}
	if _, ok := p.lookupRoute(t, "198.18.9.1"); ok {
		t.Fatal("198.18.9.1 has a route, want none")
	}
	// Subnet 2 moves to a new peer, subnet 1 goes: peer 192.0.2.1 leaves
	// the sender set, 192.0.2.2 stays for subnet 3.
	p.SetRoutes([]dataplane.Route{r("198.18.2.0/24", "192.0.2.9"), r("198.18.3.0/24", "192.0.2.2")})
	if got, _ := p.lookupRoute(t, "198.18.2.77"); got != netip.MustParseAddr("192.0.2.9") {
		t.Fatalf("moved subnet routes to %v, want 192.0.2.9", got)
	}
	if _, ok := p.lookupRoute(t, "198.18.1.5"); ok {
		t.Fatal("removed subnet still routed")
	}
	for ip, want := range map[string]bool{"192.0.2.1": false, "192.0.2.2": true, "192.0.2.9": true} {
		if p.hasPeer(ip) != want {
			t.Errorf("peer %s in the sender set: %v, want %v", ip, !want, want)
		}
	}

	// Forgetting a peer forgets its answer, and only its answer.
	key, other := be32(netip.MustParseAddr("192.0.2.9")), be32(netip.MustParseAddr("192.0.2.2"))
	for _, k := range []uint32{key, other} {
		if err := p.objs.Peers.Put(k, bpfPeer{Answered: 12345}); err != nil {
			t.Fatal(err)
		}
	}
	p.ForgetPeers([]netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("192.0.2.77")})
	var v bpfPeer
	if err := p.objs.Peers.Lookup(key, &v); err != nil || v.Answered != 0 {
		t.Fatalf("after ForgetPeers the peer's answer is %d (%v), want 0", v.Answered, err)
	}
	if err := p.objs.Peers.Lookup(other, &v); err != nil || v.Answered != 12345 {
		t.Fatalf("ForgetPeers changed another peer's answer to %d (%v)", v.Answered, err)
	}
	if p.hasPeer("192.0.2.77") {
		t.Fatal("ForgetPeers added a peer without a route")
	}
}

func (p *Path) lookupRoute6(t *testing.T, addr string) (netip.Addr, bool) {
	t.Helper()
	var peer uint32
	if err := p.objs.Routes6.Lookup(route6Key(netip.PrefixFrom(netip.MustParseAddr(addr), 128)), &peer); err != nil {
		return netip.Addr{}, false
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], peer)
	return netip.AddrFrom4(b), true
}

// TestSetRoutesIPv6 keeps the IPv6 route map in step: IPv6 subnets route
// to the peer's IPv4 PublicIP, move and go like IPv4 ones, and a route to
// a peer without an IPv4 address is left to the router.
func TestSetRoutesIPv6(t *testing.T) {
	p := loadedPath(t)
	r := func(subnet, peer string) dataplane.Route {
		return dataplane.Route{Subnet: netip.MustParsePrefix(subnet), Peer: netip.MustParseAddr(peer)}
	}
	p.SetRoutes([]dataplane.Route{r("198.18.1.0/24", "192.0.2.1"), r("2001:db8:100:1::/64", "192.0.2.1"),
		r("2001:db8:100:2::/64", "192.0.2.2"), r("2001:db8:100:3::/64", "2001:db8:ffff::3")})
	if got, ok := p.lookupRoute6(t, "2001:db8:100:2::77"); !ok || got != netip.MustParseAddr("192.0.2.2") {
		t.Fatalf("2001:db8:100:2::77 routes to %v (%v), want 192.0.2.2", got, ok)
	}
	if got, ok := p.lookupRoute6(t, "2001:db8:100:3::1"); ok {
		t.Fatalf("a subnet of a peer without IPv4 routes to %v, want no route", got)
	}
	p.SetRoutes([]dataplane.Route{r("198.18.1.0/24", "192.0.2.1"), r("2001:db8:100:2::/64", "192.0.2.9")})
	if got, _ := p.lookupRoute6(t, "2001:db8:100:2::77"); got != netip.MustParseAddr("192.0.2.9") {
		t.Fatalf("moved IPv6 subnet routes to %v, want 192.0.2.9", got)
	}
	if _, ok := p.lookupRoute6(t, "2001:db8:100:1::5"); ok {
		t.Fatal("removed IPv6 subnet still routed")
	}
	for ip, want := range map[string]bool{"192.0.2.1": true, "192.0.2.2": false, "192.0.2.9": true} {
		if p.hasPeer(ip) != want {
			t.Errorf("peer %s in the sender set: %v, want %v", ip, !want, want)
		}
	}
}
