//go:build linux

package router

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/gopacket/layers"
)

// routesFor returns n /24 routes in 198.0.0.0/8 (n <= 65,536).
func routesFor(n int) []Route {
	routes := make([]Route, n)
	for i := range routes {
		routes[i] = Route{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, byte(i >> 8), byte(i), 0}), 24),
			Peer:   netip.AddrFrom4([4]byte{192, 0, 2, byte(1 + i%254)}),
		}
	}
	return routes
}

var sink uint32

func BenchmarkLookup(b *testing.B) {
	network := netip.MustParsePrefix("198.0.0.0/8")
	for _, n := range []int{1, 256, 65536} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			tab, _ := newTable(network, 24, routesFor(n))
			dsts := make([]uint32, 1024)
			for i := range dsts {
				dsts[i] = 0xc6000000 | uint32(i*7919%n)<<8 | 7
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				sink += tab.lookup(dsts[i&1023])
				i++
			}
		})
	}
}

func BenchmarkRebuild65536(b *testing.B) {
	network := netip.MustParsePrefix("198.0.0.0/8")
	routes := routesFor(65536)
	b.ReportAllocs()
	for b.Loop() {
		newTable(network, 24, routes)
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
	n := loadUDP(w, from, pkts)
	tab := w.r.table.Load()
	b.ReportAllocs()
	b.SetBytes(int64(n * len(pkt)))
	for b.Loop() {
		w.ingressBatch(tab, n)
	}
}
