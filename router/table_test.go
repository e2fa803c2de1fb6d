package router

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

func addr(a uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], a)
	return netip.AddrFrom4(b)
}

// linearLookup is the obviously-correct reference: the longest prefix that
// contains dst wins; among routes for the same prefix the last one does,
// as SetRoutes is an upsert by subnet.
func linearLookup(network netip.Prefix, routes []dataplane.Route, dst uint32) uint32 {
	best, bestBits := uint32(0), -1
	d := addr(dst)
	for _, r := range routes {
		if !network.Contains(r.Subnet.Addr()) || r.Subnet.Bits() < network.Bits() {
			continue
		}
		if r.Subnet.Contains(d) && r.Subnet.Bits() >= bestBits {
			best, bestBits = be32(r.Peer.As4()), r.Subnet.Bits()
		}
	}
	return best
}

// newTable4 builds an IPv4-only table on an IPv4 underlay.
func newTable4(network netip.Prefix, subnetLen int, routes []dataplane.Route) (*table, []dataplane.Route) {
	return newTable(tableConfig{net4: network, len4: subnetLen, port: DefaultPort}, routes, nil)
}

// peerAt returns the address of peer index i, or the zero address for 0.
func (t *table) peerAt(i uint32) netip.Addr {
	if i == 0 {
		return netip.Addr{}
	}
	return t.peer(i).Addr()
}

// peer4 is peerAt as a big-endian IPv4 address (0 for none).
func (t *table) peer4(i uint32) uint32 {
	if i == 0 {
		return 0
	}
	return be32(t.peer(i).Addr().As4())
}

func TestTableRandomAgainstLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		network   string
		subnetLen int
		nroutes   int
		odd       bool // also routes of other lengths
	}{
		{"198.18.0.0/16", 24, 200, false},
		{"198.18.0.0/16", 24, 200, true},
		{"198.18.0.0/15", 28, 2000, true},
		{"198.0.0.0/8", 24, 5000, false},
		{"198.0.0.0/8", 28, 3000, true}, // 20 index bits: sparse map
		{"198.18.0.0/16", 16, 1, false},
		{"198.18.0.0/16", 32, 500, false},
	} {
		network := netip.MustParsePrefix(tc.network)
		base := be32(network.Addr().As4())
		span := uint32(1)<<(32-network.Bits()) - 1
		var routes []dataplane.Route
		for range tc.nroutes {
			bits := tc.subnetLen
			if tc.odd && rng.IntN(4) == 0 {
				bits = network.Bits() + rng.IntN(32-network.Bits()+1)
			}
			sub := netip.PrefixFrom(addr(base+rng.Uint32()&span), bits).Masked()
			peer := addr(0xc0000200 | rng.Uint32N(254) + 1) // 192.0.2.1-254
			routes = append(routes, dataplane.Route{Subnet: sub, Peer: peer})
		}
		tab, rejected := newTable4(network, tc.subnetLen, routes)
		if len(rejected) != 0 {
			t.Fatalf("%s/%d: rejected %v", tc.network, tc.subnetLen, rejected)
		}
		for range 3000 {
			var dst uint32
			switch rng.IntN(3) {
			case 0: // inside a random route
				r := routes[rng.IntN(len(routes))].Subnet
				dst = be32(r.Addr().As4()) | rng.Uint32()&(uint32(1)<<(32-r.Bits())-1)
			case 1: // anywhere in the network
				dst = base + rng.Uint32()&span
			default: // anywhere
				dst = rng.Uint32()
			}
			if got, want := tab.peer4(tab.lookup(dst)), linearLookup(network, routes, dst); got != want {
				t.Fatalf("%s/%d: lookup(%s) = %s, linear scan says %s", tc.network, tc.subnetLen, addr(dst), addr(got), addr(want))
			}
		}
	}
}

func TestTableLookup(t *testing.T) {
	network := netip.MustParsePrefix("198.18.0.0/16")
	p1, p2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	tab, rejected := newTable4(network, 24, []dataplane.Route{
		{Subnet: netip.MustParsePrefix("198.18.68.0/24"), Peer: p1},
		{Subnet: netip.MustParsePrefix("198.18.5.0/24"), Peer: p2},
		{Subnet: netip.MustParsePrefix("198.19.5.0/24"), Peer: p2},           // outside the network
		{Subnet: netip.MustParsePrefix("198.18.6.0/24"), Peer: netip.Addr{}}, // no peer
		{Subnet: netip.MustParsePrefix("198.18.7.0/24"), Peer: netip.IPv4Unspecified()},
		{Subnet: netip.MustParsePrefix("2001:db8::/64"), Peer: p1},
	})
	if len(rejected) != 4 {
		t.Errorf("rejected %v, want the 4 unusable routes", rejected)
	}
	for _, tc := range []struct {
		dst  string
		want netip.Addr
	}{
		{"198.18.68.0", p1}, {"198.18.68.255", p1}, {"198.18.5.7", p2},
		{"198.18.69.1", netip.Addr{}}, {"198.19.5.7", netip.Addr{}}, {"198.18.6.1", netip.Addr{}},
		{"192.0.2.1", netip.Addr{}},
	} {
		got := tab.peerAt(tab.lookup(be32(netip.MustParseAddr(tc.dst).As4())))
		if got != tc.want {
			t.Errorf("lookup(%s) = %s, want %v", tc.dst, got, tc.want)
		}
	}
	if tab.sender(p1) == 0 || tab.sender(p2) == 0 || tab.sender(netip.AddrFrom4([4]byte{192, 0, 2, 3})) != 0 {
		t.Error("peer set wrong")
	}
}

func TestSetRoutesSwaps(t *testing.T) {
	r, err := newRouter(Config{
		Network: netip.MustParsePrefix("198.18.0.0/16"), SubnetLen: 24,
		OwnSubnet: netip.MustParsePrefix("198.18.32.0/24"), LocalAddr: netip.MustParseAddr("192.0.2.1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	dst := be32([4]byte{198, 18, 5, 7})
	if r.table.Load().lookup(dst) != 0 {
		t.Fatal("route before SetRoutes")
	}
	old := r.table.Load()
	r.SetRoutes([]dataplane.Route{{Subnet: netip.MustParsePrefix("198.18.5.0/24"), Peer: netip.MustParseAddr("192.0.2.2")}})
	if got := r.table.Load().lookup(dst); r.table.Load().peerAt(got) != netip.MustParseAddr("192.0.2.2") {
		t.Errorf("after SetRoutes lookup = %d", got)
	}
	if old.lookup(dst) != 0 {
		t.Error("the old snapshot changed: tables must be immutable")
	}
	r.SetRoutes(nil)
	if r.table.Load().lookup(dst) != 0 || r.table.Load().sender(netip.MustParseAddr("192.0.2.2")) != 0 {
		t.Error("route or peer left after SetRoutes(nil)")
	}
}

func TestConfigCheck(t *testing.T) {
	good := Config{
		Network: netip.MustParsePrefix("198.18.0.0/16"), SubnetLen: 24,
		OwnSubnet: netip.MustParsePrefix("198.18.32.0/24"), LocalAddr: netip.MustParseAddr("192.0.2.1"),
	}
	if _, err := newRouter(good); err != nil {
		t.Fatalf("good config: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"unspecified local": func(c *Config) { c.LocalAddr = netip.IPv4Unspecified() },
		"ipv6 network":      func(c *Config) { c.Network = netip.MustParsePrefix("2001:db8::/64") },
		"subnetlen short":   func(c *Config) { c.SubnetLen = 8 },
		"subnetlen long":    func(c *Config) { c.SubnetLen = 33 },
		"bad port":          func(c *Config) { c.Port = 70000 },
		"tiny mtu":          func(c *Config) { c.MTU = 40 },
	} {
		c := good
		mod(&c)
		if _, err := newRouter(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
