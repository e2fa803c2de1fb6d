package router

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/probe"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/tun"
)

// TestIPv6ProbeNetns runs a dual-stack router on real sockets: it asks
// its peers whether they carry IPv6 from its probe socket, learns it from
// an answer that reaches its workers' sockets, answers a peer's ask at
// the peer's cluster port, and after about a second counts a silent peer
// as not carrying IPv6.
func TestIPv6ProbeNetns(t *testing.T) {
	inHost(t, func(*testbed.Host) { testIPv6ProbeNetns(t) })
}

func testIPv6ProbeNetns(t *testing.T) {
	dev, err := tun.Open("flannel0", 1)
	if err != nil {
		t.Fatalf("tun.Open: %v", err)
	}
	t.Cleanup(func() { dev.Close() })
	if err := dev.Configure(netip.MustParseAddr("198.18.32.0"), 1472, 500, netip.MustParsePrefix("198.18.0.0/16")); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	r, err := New(Config{
		Network: netip.MustParsePrefix("198.18.0.0/16"), SubnetLen: 24, OwnSubnet: ownSubnet,
		IPv6Network: netip.MustParsePrefix("2001:db8:100::/48"), IPv6SubnetLen: 64, OwnIPv6Subnet: ownSubnet6,
		LocalAddr: netip.MustParseAddr("192.0.2.1"), MTU: 1472,
	}, dev.Queues)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	peer := listenUDP(t, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 2), Port: DefaultPort})
	r.SetRoutes([]dataplane.Route{
		{Subnet: netip.MustParsePrefix("2001:db8:100:5::/64"), Peer: peerA},
		{Subnet: netip.MustParsePrefix("2001:db8:100:44::/64"), Peer: peerB}, // 192.0.2.3: nobody listens
	})
	stop := runRouter(t, r)
	defer stop()

	// The router's ask reaches A; A answers at the router's cluster port.
	buf := make([]byte, 64)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("no ask reached the peer: %v", err)
	}
	if n != probe.Len || !isProbe(buf[:n]) || probe.Type(buf[7]) != probe.IPv6Ask || from.Addr() != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("peer got %x from %s, want an IPv6 ask from 192.0.2.1", buf[:n], from)
	}
	ans := probeMsg(probe.IPv6Answer, binary.BigEndian.Uint64(buf[8:16]))
	if _, err := peer.WriteToUDPAddrPort(ans[:], netip.MustParseAddrPort("192.0.2.1:8285")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the answering peer to count as IPv6-capable", func() bool {
		c, k := r.PeerIPv6Capable(peerA)
		return c && k
	})
	waitFor(t, "the silent peer to count as not carrying IPv6", func() bool {
		c, k := r.PeerIPv6Capable(peerB)
		return !c && k
	})

	// A's ask gets an answer with its nonce at A's cluster port.
	ask := probeMsg(probe.IPv6Ask, 0xfeedface)
	if _, err := peer.WriteToUDPAddrPort(ask[:], netip.MustParseAddrPort("192.0.2.1:8285")); err != nil {
		t.Fatal(err)
	}
	want := probeMsg(probe.IPv6Answer, 0xfeedface)
	for {
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no answer to the peer's ask: %v", err)
		}
		if n == probe.Len && [probe.Len]byte(buf[:n]) == want {
			break
		}
		// The router's own asks arrive in between.
		if n != probe.Len || probe.Type(buf[7]) != probe.IPv6Ask {
			t.Fatalf("peer got %x", buf[:n])
		}
	}
}
