package router

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// linearLookup6 is linearLookup for IPv6.
func linearLookup6(network netip.Prefix, routes []dataplane.Route, dst netip.Addr) netip.Addr {
	var best netip.Addr
	bestBits := -1
	for _, r := range routes {
		if !network.Contains(r.Subnet.Addr()) || r.Subnet.Bits() < network.Bits() {
			continue
		}
		if r.Subnet.Contains(dst) && r.Subnet.Bits() >= bestBits {
			best, bestBits = r.Peer, r.Subnet.Bits()
		}
	}
	return best
}

// randIn returns a random address inside p.
func randIn(rng *rand.Rand, p netip.Prefix) netip.Addr {
	a := p.Addr().As16()
	var r [16]byte
	binary.BigEndian.PutUint64(r[:8], rng.Uint64())
	binary.BigEndian.PutUint64(r[8:], rng.Uint64())
	for i := range a {
		bits := p.Bits() - i*8
		m := byte(0xff)
		switch {
		case bits <= 0:
			m = 0
		case bits < 8:
			m = byte(0xff << (8 - bits))
		}
		a[i] = a[i]&m | r[i]&^m
	}
	return netip.AddrFrom16(a)
}

func TestTable6RandomAgainstLinear(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		network   string
		subnetLen int
		nroutes   int
		odd       bool
	}{
		{"2001:db8:100::/48", 64, 300, false},
		{"2001:db8:100::/48", 64, 300, true},
		{"2001:db8::/32", 64, 3000, true},    // 32 index bits: map
		{"2001:db8::/32", 96, 2000, true},    // 64 index bits, straddling the words
		{"2001:db8:100::/56", 60, 16, false}, // index inside the high word
		{"2001:db8:100::/120", 128, 200, true},
		{"2001:db8:100::/64", 64, 1, false}, // 0 index bits
		{"2001:db8:100:5::/64", 100, 500, true},
	} {
		network := netip.MustParsePrefix(tc.network)
		var routes []dataplane.Route
		for range tc.nroutes {
			bits := tc.subnetLen
			if tc.odd && rng.IntN(4) == 0 {
				bits = network.Bits() + rng.IntN(128-network.Bits()+1)
			}
			sub := netip.PrefixFrom(randIn(rng, network), bits).Masked()
			peer := netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + rng.IntN(254))})
			routes = append(routes, dataplane.Route{Subnet: sub, Peer: peer})
		}
		tab, rejected := newTable(tableConfig{net6: network, len6: tc.subnetLen, port: DefaultPort}, routes, nil)
		if len(rejected) != 0 {
			t.Fatalf("%s/%d: rejected %v", tc.network, tc.subnetLen, rejected)
		}
		for range 3000 {
			var dst netip.Addr
			switch rng.IntN(3) {
			case 0:
				dst = randIn(rng, routes[rng.IntN(len(routes))].Subnet)
			case 1:
				dst = randIn(rng, network)
			default:
				dst = randIn(rng, netip.MustParsePrefix("::/0"))
			}
			a := dst.As16()
			if got, want := tab.peerAt(tab.lookup6(a[:])), linearLookup6(network, routes, dst); got != want {
				t.Fatalf("%s/%d: lookup6(%s) = %s, linear scan says %s", tc.network, tc.subnetLen, dst, got, want)
			}
		}
	}
}

func TestTableDualStack(t *testing.T) {
	p1, p2 := netip.MustParseAddr("2001:db8:1::1"), netip.MustParseAddr("2001:db8:1::2")
	c := tableConfig{
		net4: netip.MustParsePrefix("198.18.0.0/16"), len4: 24,
		net6: netip.MustParsePrefix("2001:db8:100::/48"), len6: 64,
		underlay6: true, port: 8285,
	}
	tab, rejected := newTable(c, []dataplane.Route{
		{Subnet: netip.MustParsePrefix("198.18.5.0/24"), Peer: p1},
		{Subnet: netip.MustParsePrefix("2001:db8:100:5::/64"), Peer: p1},
		{Subnet: netip.MustParsePrefix("2001:db8:100:6::/64"), Peer: p2},
		{Subnet: netip.MustParsePrefix("198.18.6.0/24"), Peer: netip.MustParseAddr("192.0.2.3")},        // IPv4 peer on an IPv6 underlay
		{Subnet: netip.MustParsePrefix("2001:db8:200::/64"), Peer: p2},                                  // outside
		{Subnet: netip.MustParsePrefix("2001:db8:100:7::/64"), Peer: netip.MustParseAddr("fe80::1%e0")}, // zoned
		{Subnet: netip.MustParsePrefix("2001:db8:100:8::/64"), Peer: netip.IPv6Unspecified()},
	}, nil)
	if len(rejected) != 4 {
		t.Errorf("rejected %v, want the 4 unusable routes", rejected)
	}
	if len(tab.peers) != 2 || tab.peer(tab.sender(p1)) != netip.AddrPortFrom(p1, 8285) || tab.sender(netip.MustParseAddr("192.0.2.3")) != 0 {
		t.Errorf("peers %v", tab.peers)
	}
	if tab.lookup(be32([4]byte{198, 18, 5, 9})) != tab.sender(p1) {
		t.Error("IPv4 subnet not routed to its IPv6-underlay peer")
	}
	d := netip.MustParseAddr("2001:db8:100:6::77").As16()
	if tab.lookup6(d[:]) != tab.sender(p2) {
		t.Error("IPv6 subnet not routed")
	}
	if len(tab.v6Peers) != 2 {
		t.Errorf("v6Peers %v, want both peers", tab.v6Peers)
	}

	// Without IPv4, no IPv4 destination matches, 0.0.0.0 included.
	tab, _ = newTable(tableConfig{net6: c.net6, len6: 64, port: 8285}, nil, nil)
	if tab.lookup(0) != 0 || tab.lookup(be32([4]byte{198, 18, 5, 9})) != 0 {
		t.Error("an IPv6-only table routes IPv4")
	}
	// Without IPv6 no IPv6 destination matches.
	tab, _ = newTable(tableConfig{net4: c.net4, len4: 24, port: 8285}, nil, nil)
	var zero [16]byte
	if tab.lookup6(zero[:]) != 0 || tab.lookup6(d[:]) != 0 || tab.v6.on {
		t.Error("an IPv4-only table routes IPv6")
	}
}

func TestConfigCheckIPv6(t *testing.T) {
	v6only := Config{
		IPv6Network: netip.MustParsePrefix("2001:db8:100::/48"), IPv6SubnetLen: 64,
		OwnIPv6Subnet: netip.MustParsePrefix("2001:db8:100:20::/64"), LocalAddr: netip.MustParseAddr("2001:db8:1::1"),
	}
	if _, err := newRouter(v6only); err != nil {
		t.Fatalf("IPv6-only config: %v", err)
	}
	dual := v6only
	dual.Network, dual.SubnetLen, dual.OwnSubnet = netip.MustParsePrefix("198.18.0.0/16"), 24, netip.MustParsePrefix("198.18.32.0/24")
	dual.LocalAddr = netip.MustParseAddr("192.0.2.1")
	if _, err := newRouter(dual); err != nil {
		t.Fatalf("dual-stack config: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"no family":         func(c *Config) { c.IPv6Network, c.IPv6SubnetLen, c.OwnIPv6Subnet = netip.Prefix{}, 0, netip.Prefix{} },
		"ipv4 ipv6network":  func(c *Config) { c.IPv6Network = netip.MustParsePrefix("198.18.0.0/16") },
		"subnetlen short":   func(c *Config) { c.IPv6SubnetLen = 40 },
		"subnetlen long":    func(c *Config) { c.IPv6SubnetLen = 129 },
		"index too wide":    func(c *Config) { c.IPv6Network = netip.MustParsePrefix("2001:db8::/32"); c.IPv6SubnetLen = 100 },
		"no own subnet":     func(c *Config) { c.OwnIPv6Subnet = netip.Prefix{} },
		"mapped local":      func(c *Config) { c.LocalAddr = netip.MustParseAddr("::ffff:192.0.2.1") },
		"unspecified local": func(c *Config) { c.LocalAddr = netip.IPv6Unspecified() },
		"mtu below 1280":    func(c *Config) { c.MTU = 1200 },
	} {
		c := v6only
		mod(&c)
		if _, err := newRouter(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
