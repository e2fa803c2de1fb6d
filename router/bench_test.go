package router

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// routesFor returns n /24 routes in 198.0.0.0/8 (n <= 65,536).
func routesFor(n int) []dataplane.Route { return routesIn(netip.MustParsePrefix("198.0.0.0/8"), 24, n) }

// routesIn returns the first n subnets of length bits in network, each with
// a peer.
func routesIn(network netip.Prefix, bits, n int) []dataplane.Route {
	routes := make([]dataplane.Route, n)
	base := be32(network.Addr().As4())
	for i := range routes {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], base|uint32(i)<<(32-bits))
		routes[i] = dataplane.Route{
			Subnet: netip.PrefixFrom(netip.AddrFrom4(a), bits),
			Peer:   netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%254)}),
		}
	}
	return routes
}

var sink uint32

// BenchmarkLookup looks up random destinations spread over the whole table
// (random subnet, random host bits), so that a large table's misses in
// the CPU cache count. Up to 2^16 subnets the table is a slice indexed by
// subnet number ("dense"); beyond, a map ("map": 198.0.0.0/8 in /28s).
func BenchmarkLookup(b *testing.B) {
	cases := []struct {
		kind string
		bits int
		n    int
	}{
		{"dense", 24, 1}, {"dense", 24, 256}, {"dense", 24, 65536},
		{"map", 28, 1 << 17}, {"map", 28, 1 << 20},
	}
	network := netip.MustParsePrefix("198.0.0.0/8")
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/subnets=%d", c.kind, c.n), func(b *testing.B) {
			tab, _ := newTable4(network, c.bits, routesIn(network, c.bits, c.n))
			if (tab.dense != nil) != (c.kind == "dense") {
				b.Fatalf("%d subnets of /%d: dense=%v, want the %s path", c.n, c.bits, tab.dense != nil, c.kind)
			}
			rnd := rand.New(rand.NewPCG(1, 2))
			const nDst = 1 << 16
			dsts := make([]uint32, nDst)
			for i := range dsts {
				host := rnd.Uint32() & (1<<(32-c.bits) - 1)
				dsts[i] = be32(network.Addr().As4()) | uint32(rnd.IntN(c.n))<<(32-c.bits) | host
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				sink += tab.lookup(dsts[i&(nDst-1)])
				i++
			}
			if sink == 0 && c.n > 0 {
				b.Fatal("no lookup found a route")
			}
		})
	}
}

func BenchmarkRebuild65536(b *testing.B) {
	network := netip.MustParsePrefix("198.0.0.0/8")
	routes := routesFor(65536)
	b.ReportAllocs()
	for b.Loop() {
		newTable4(network, 24, routes)
	}
}

func BenchmarkEgressBatch(b *testing.B) {
	w := testWorker(b, false)
	pkt := ipv4Packet(b, srcPod, [4]byte{198, 18, 5, 7}, layers.IPProtocolUDP, 64, 0, make([]byte, 1400))
	pkts := make([][]byte, w.q.BatchSize())
	for i := range pkts {
		pkts[i] = pkt
	}
	n := loadTUN(w, pkts)
	tab := w.r.table.Load()
	b.ReportAllocs()
	b.SetBytes(int64(n * len(pkt)))
	for b.Loop() {
		for i := range n {
			w.tunBufs[i][off+8] = 64 // keep the TTL from running out
		}
		w.egressBatch(tab, n)
	}
}

func BenchmarkIngressBatch(b *testing.B) {
	w := testWorker(b, false)
	pkt := ipv4Packet(b, [4]byte{198, 18, 5, 7}, srcPod, layers.IPProtocolUDP, 63, 0, make([]byte, 1400))
	pkts := make([][]byte, udpBatch)
	from := make([]netip.Addr, udpBatch)
	for i := range pkts {
		pkts[i], from[i] = pkt, peerA
	}
	n := loadUDP(b, w, from, pkts)
	tab := w.r.table.Load()
	b.ReportAllocs()
	b.SetBytes(int64(n * len(pkt)))
	for b.Loop() {
		w.ingressBatch(tab, n)
	}
}

// routes6In returns the first n subnets of length bits in the IPv6 network
// network, each with a peer.
func routes6In(network netip.Prefix, bits, n int) []dataplane.Route {
	routes := make([]dataplane.Route, n)
	hi, lo := words(network.Addr().As16())
	for i := range routes {
		h, l := hi, lo
		if s := 128 - bits; s >= 64 {
			h |= uint64(i) << (s - 64)
		} else {
			l |= uint64(i) << s
			h |= uint64(i) >> (64 - s)
		}
		var a [16]byte
		binary.BigEndian.PutUint64(a[:8], h)
		binary.BigEndian.PutUint64(a[8:], l)
		routes[i] = dataplane.Route{
			Subnet: netip.PrefixFrom(netip.AddrFrom16(a), bits),
			Peer:   netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%254)}),
		}
	}
	return routes
}

// BenchmarkLookup6 is BenchmarkLookup for IPv6: 2001:db8:100::/48 in /64s
// is a slice ("dense"), 2001:db8::/32 in /64s a map.
func BenchmarkLookup6(b *testing.B) {
	cases := []struct {
		kind    string
		network string
		n       int
	}{
		{"dense", "2001:db8:100::/48", 1}, {"dense", "2001:db8:100::/48", 256}, {"dense", "2001:db8:100::/48", 65536},
		{"map", "2001:db8::/32", 1 << 17}, {"map", "2001:db8::/32", 1 << 20},
	}
	for _, c := range cases {
		b.Run(fmt.Sprintf("%s/subnets=%d", c.kind, c.n), func(b *testing.B) {
			network := netip.MustParsePrefix(c.network)
			routes := routes6In(network, 64, c.n)
			tab, rejected := newTable(tableConfig{net6: network, len6: 64, port: DefaultPort}, routes, nil)
			if len(rejected) != 0 || (tab.v6.dense != nil) != (c.kind == "dense") {
				b.Fatalf("%d subnets: rejected %d, dense=%v, want the %s path", c.n, len(rejected), tab.v6.dense != nil, c.kind)
			}
			rnd := rand.New(rand.NewPCG(1, 2))
			const nDst = 1 << 16
			dsts := make([][16]byte, nDst)
			for i := range dsts {
				dsts[i] = routes[rnd.IntN(c.n)].Subnet.Addr().As16()
				binary.BigEndian.PutUint64(dsts[i][8:], rnd.Uint64())
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				sink += tab.lookup6(dsts[i&(nDst-1)][:])
				i++
			}
			if sink == 0 && c.n > 0 {
				b.Fatal("no lookup found a route")
			}
		})
	}
}

func BenchmarkEgressBatch6(b *testing.B) {
	w, _ := dualWorker(b, false, false)
	pkt := ipv6Packet(b, src6, dstA6, layers.IPProtocolUDP, 64, 0, make([]byte, 1400))
	pkts := make([][]byte, w.q.BatchSize())
	for i := range pkts {
		pkts[i] = pkt
	}
	n := loadTUN(w, pkts)
	tab := w.r.table.Load()
	b.ReportAllocs()
	b.SetBytes(int64(n * len(pkt)))
	for b.Loop() {
		for i := range n {
			w.tunBufs[i][off+7] = 64 // keep the hop limit from running out
		}
		w.egressBatch(tab, n)
	}
}

func BenchmarkIngressBatch6(b *testing.B) {
	w, _ := dualWorker(b, false, false)
	pkt := ipv6Packet(b, dstA6, src6, layers.IPProtocolUDP, 63, 0, make([]byte, 1400))
	pkts := make([][]byte, udpBatch)
	from := make([]netip.Addr, udpBatch)
	for i := range pkts {
		pkts[i], from[i] = pkt, peerA
	}
	n := loadUDP(b, w, from, pkts)
	tab := w.r.table.Load()
	b.ReportAllocs()
	b.SetBytes(int64(n * len(pkt)))
	for b.Loop() {
		w.ingressBatch(tab, n)
	}
}
