package router

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/inet"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/tun"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// inHost runs fn inside a fresh one-host testbed (192.0.2.1 on eth0) whose
// loopback also holds a peer's (192.0.2.2) and a stranger's (192.0.2.3)
// underlay address. Goroutines fn starts run outside the namespace; they
// only use descriptors opened inside it.
func inHost(t *testing.T, fn func(h *testbed.Host)) {
	t.Helper()
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	testbed.RequireTUN(t)
	err := h.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range []string{"192.0.2.2/32", "192.0.2.3/32"} {
			nl, _ := netlink.ParseAddr(a)
			if err := netlink.AddrAdd(lo, nl); err != nil {
				return fmt.Errorf("add %s: %w", a, err)
			}
		}
		fn(h)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRouterNetns(t *testing.T) {
	inHost(t, func(*testbed.Host) { testRouterNetns(t) })
}

func testRouterNetns(t *testing.T) {

	tunAddr := netip.MustParseAddr("198.18.32.0")
	dev, r := newTestRouter(t, tunAddr, 2)

	peer := listenUDP(t, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 2), Port: DefaultPort})
	stranger := listenUDP(t, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 3), Port: DefaultPort})
	inner := listenUDP(t, &net.UDPAddr{IP: tunAddr.AsSlice(), Port: 7777})
	app := listenUDP(t, &net.UDPAddr{IP: tunAddr.AsSlice(), Port: 9999})

	stop := runRouter(t, r)

	// Egress: a datagram to a remote pod leaves as one UDP datagram to the
	// peer whose payload is the inner packet with its TTL decremented.
	if _, err := app.WriteToUDP([]byte("hello"), &net.UDPAddr{IP: net.IPv4(198, 18, 5, 7), Port: 4242}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := peer.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("peer did not receive the datagram: %v", err)
	}
	if from.String() != "192.0.2.1:8285" {
		t.Errorf("datagram from %v, want 192.0.2.1:8285", from)
	}
	got := buf[:n]
	pkt := gopacket.NewPacket(got, layers.LayerTypeIPv4, gopacket.Default)
	ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
	udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if ip == nil || udp == nil {
		t.Fatalf("payload %x is not an IPv4/UDP packet", got)
	}
	if ip.TTL != 63 || int(ip.Length) != n || !ip.SrcIP.Equal(tunAddr.AsSlice()) || !ip.DstIP.Equal(net.IPv4(198, 18, 5, 7)) ||
		udp.SrcPort != 9999 || udp.DstPort != 4242 || string(udp.Payload) != "hello" {
		t.Errorf("inner packet %x: ttl %d len %d %v:%d -> %v:%d %q", got, ip.TTL, ip.Length, ip.SrcIP, udp.SrcPort, ip.DstIP, udp.DstPort, udp.Payload)
	}
	if inet.Checksum(got[:ip.IHL*4]) != 0 {
		t.Errorf("inner header checksum invalid: %x", got[:20])
	}
	// The kernel's original differs only in TTL and header checksum.
	orig := bytes.Clone(got)
	orig[8] = 64
	binary.BigEndian.PutUint16(orig[10:12], 0)
	binary.BigEndian.PutUint16(orig[10:12], inet.Checksum(orig[:20]))
	back := bytes.Clone(orig)
	decrementTTL(back)
	if !bytes.Equal(back, got) {
		t.Errorf("datagram %x is not the TUN packet with TTL-1 (%x)", got, back)
	}

	// Ingress: a peer's datagram comes out of the TUN unchanged.
	in := udpOver(t, [4]byte{198, 18, 5, 7}, tunAddr.As4(), 4242, 7777, []byte("world"))
	if _, err := peer.WriteToUDP(in, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: DefaultPort}); err != nil {
		t.Fatal(err)
	}
	inner.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err = inner.ReadFromUDP(buf)
	if err != nil {
		t.Fatalf("inner socket did not receive the packet: %v", err)
	}
	if string(buf[:n]) != "world" || from.String() != "198.18.5.7:4242" {
		t.Errorf("inner socket got %q from %v", buf[:n], from)
	}

	// A datagram from an address that is no peer is dropped and counted.
	if _, err := stranger.WriteToUDP(in, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: DefaultPort}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "UnknownPeer drop", func() bool { return r.Stats().Drops[dropUnknownPeer] == 1 })

	// No route: dropped, counted, and an ICMP net unreachable goes into
	// the TUN (the kernel then drops it as a martian: its source is ours).
	if _, err := app.WriteToUDP([]byte("nobody"), &net.UDPAddr{IP: net.IPv4(198, 18, 99, 5), Port: 4242}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NoRoute drop and ICMP", func() bool {
		s := r.Stats()
		return s.Drops[dropNoRoute] == 1 && s.ICMPSent == 1
	})

	s := r.Stats()
	if s.TxPackets != 1 || s.TxBytes != uint64(len(got)) || s.RxPackets != 1 || s.RxBytes != uint64(len(in)) {
		t.Errorf("Stats %+v: want 1 packet each way", s)
	}

	stop()
	if err := dev.Close(); err != nil {
		t.Errorf("dev.Close after Run: %v", err)
	}
	waitFor(t, "flannel0 to disappear", func() bool {
		_, err := netlink.LinkByName("flannel0")
		return err != nil
	})
}

// udpOver builds an IPv4/UDP packet with valid checksums and TTL 63.
func udpOver(t *testing.T, src, dst [4]byte, sport, dport int, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolUDP, SrcIP: net.IP(src[:]), DstIP: net.IP(dst[:])}
	u := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	if err := u.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	b := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(b, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// sendGSO sends b from c to to as datagrams of size bytes with one
// sendmsg and a UDP_SEGMENT control message.
func sendGSO(t *testing.T, c *net.UDPConn, b []byte, size int, to *net.UDPAddr) {
	t.Helper()
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	if _, _, err := c.WriteMsgUDP(b, oob, to); err != nil {
		t.Fatalf("send GSO burst: %v", err)
	}
}

// TestRouterWireFormat checks what an upstream flanneld peer sees: its
// socket has no UDP_GRO, so every datagram must be exactly one complete
// inner packet with valid checksums, even when the TUN hands over a UDP
// super-packet and the router sends it as one GSO train. (The EIO
// fallback is package udp's test, with an injected error: since Linux 6.2
// a device without checksum offload no longer makes UDP GSO fail, and
// this kernel has no IPsec to make it fail otherwise.)
func TestRouterWireFormat(t *testing.T) {
	inHost(t, func(*testbed.Host) {
		tunAddr := netip.MustParseAddr("198.18.32.0")
		_, r := newTestRouter(t, tunAddr, 1)
		peer := listenUDP(t, &net.UDPAddr{IP: peerA.AsSlice(), Port: DefaultPort})
		app := listenUDP(t, &net.UDPAddr{IP: tunAddr.AsSlice(), Port: 9999})
		stop := runRouter(t, r)

		const n, size = 10, 1000
		burst := func(tag byte) {
			t.Helper()
			msg := bytes.Repeat([]byte{tag}, n*size)
			for i := range n {
				msg[i*size] = byte(i)
			}
			sendGSO(t, app, msg, size, &net.UDPAddr{IP: net.IPv4(198, 18, 5, 7), Port: 4242})
			buf := make([]byte, 65535)
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			for i := range n {
				m, err := peer.Read(buf)
				if err != nil {
					t.Fatalf("burst %d: datagram %d: %v", tag, i, err)
				}
				d := buf[:m]
				pkt := gopacket.NewPacket(d, layers.LayerTypeIPv4, gopacket.Default)
				ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if ip == nil || udp == nil || int(ip.Length) != m || ip.TTL != 63 || udp.DstPort != 4242 ||
					!bytes.Equal(udp.Payload, msg[i*size:(i+1)*size]) {
					t.Fatalf("burst %d: datagram %d (%d bytes) is not inner packet %d: %x", tag, i, m, i, d[:min(m, 40)])
				}
				// Serialising the decoded layers again with fresh checksums
				// must give the same bytes.
				udp.SetNetworkLayerForChecksum(ip)
				sb := gopacket.NewSerializeBuffer()
				if err := gopacket.SerializeLayers(sb, gopacket.SerializeOptions{ComputeChecksums: true}, ip, udp, gopacket.Payload(udp.Payload)); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(sb.Bytes(), d) {
					t.Fatalf("burst %d: datagram %d has wrong checksums", tag, i)
				}
			}
		}
		burst(1)
		waitTxPackets(r, n)
		o := r.Offloads()
		if o.TUNUSO && o.UDPGSO {
			// Other batches are the kernel's IPv6 chatter on the new
			// link, which a batch with the burst may also carry.
			if s := r.Stats(); s.TxPackets != n || s.TxBatches == 0 || s.TxBatches > 1+s.Drops[dropNotIPv4] {
				t.Errorf("USO burst: %d packets in %d TUN reads (%d not IPv4), want %d in 1", s.TxPackets, s.TxBatches, s.Drops[dropNotIPv4], n)
			}
		}
		burst(2)
		waitTxPackets(r, 2*n)
		if s := r.Stats(); s.Drops[dropSendError] != 0 || s.TxPackets != 2*n {
			t.Errorf("%d packets sent, %d send errors; want %d and 0", s.TxPackets, s.Drops[dropSendError], 2*n)
		}
		stop()
	})
}

// waitTxPackets waits up to 5 s until r counted want sent packets: the
// peer may read a datagram before the sending thread, back from sendmmsg,
// has counted it.
func waitTxPackets(r *Router, want uint64) {
	for deadline := time.Now().Add(5 * time.Second); r.Stats().TxPackets < want && time.Now().Before(deadline); {
		runtime.Gosched()
	}
}

// listenUDP opens a UDP socket in the calling thread's namespace, closed
// when the test ends.
func listenUDP(t *testing.T, addr *net.UDPAddr) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newTestRouter opens flannel0 with queues queues in the calling thread's
// namespace, addressed tunAddr in 198.18.0.0/16, and a Router on it bound to
// 192.0.2.1 with a route for 198.18.5.0/24 to peerA (192.0.2.2).
func newTestRouter(t *testing.T, tunAddr netip.Addr, queues int) (*tun.Device, *Router) {
	t.Helper()
	network := netip.MustParsePrefix("198.18.0.0/16")
	dev, err := tun.Open("flannel0", queues)
	if err != nil {
		t.Fatalf("tun.Open: %v", err)
	}
	t.Cleanup(func() { dev.Close() })
	if err := dev.Configure(tunAddr, 1472, 500, network); err != nil {
		t.Fatalf("Configure: %v", err)
	}
	r, err := New(Config{
		Network: network, SubnetLen: 24, OwnSubnet: netip.PrefixFrom(tunAddr, 24),
		LocalAddr: netip.MustParseAddr("192.0.2.1"), MTU: 1472,
	}, dev.Queues)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	r.SetRoutes([]dataplane.Route{{Subnet: netip.MustParsePrefix("198.18.5.0/24"), Peer: peerA}})
	return dev, r
}

// runRouter runs r until the returned stop is called; stop cancels Run and
// checks that it returns cleanly within 5 s.
func runRouter(t *testing.T, r *Router) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	t.Cleanup(cancel)
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return 5 s after cancel")
		}
	}
}
