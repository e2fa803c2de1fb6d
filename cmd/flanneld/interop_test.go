//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/lease"
)

// TestInteropWithUpstreamPeer stands in for an upstream flanneld (udp
// backend) on host 3: a lease written the way upstream writes it, and a
// plain socket on <PublicIP>:8285 that sends and receives raw inner IPv4
// packets, one per datagram, as upstream's C proxy does. It checks the
// bytes flannel-go puts on the wire and that it delivers upstream's.
func TestInteropWithUpstreamPeer(t *testing.T) {
	c := startCluster(t, 3)
	ctx := t.Context()
	ours, up := c.Nodes[0], c.Nodes[2]
	up.Stop(syscall.SIGTERM, 10*time.Second)

	// Upstream's exact lease value, here without an etcd lease, as the
	// reference accepted in flannel-observed.md.
	upSubnet := netip.MustParsePrefix("198.18.77.0/24")
	key := cluster.DefaultPrefix + "/subnets/" + lease.SubnetKey(upSubnet)
	if _, err := c.Etcd.Put(ctx, key, fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, up.Host.Addr)); err != nil {
		t.Fatal(err)
	}
	upAddr := upSubnet.Addr() // upstream's flannel0 address, 198.18.77.0

	// The upstream proxy's socket, and a raw socket that sees the outer
	// IPv4 header of what arrives.
	var sock net.PacketConn
	var raw *net.IPConn
	if err := up.Host.Do(func() (err error) {
		if sock, err = net.ListenPacket("udp4", netip.AddrPortFrom(up.Host.Addr, 8285).String()); err != nil {
			return err
		}
		raw, err = net.ListenIP("ip4:udp", &net.IPAddr{IP: up.Host.Addr.AsSlice()})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	defer raw.Close()

	// flannel-go -> upstream: a container pings upstream's flannel0 address.
	// Until the lease reaches flannel-go's route table the pings get net
	// unreachable; keep pinging until one is carried.
	inner := waitInner(t, ctx, ours, upAddr, sock)
	ip4 := decodeIPv4(t, inner)
	if ip4.SrcIP.String() != ours.Container.Addr.String() || ip4.DstIP.String() != upAddr.String() || ip4.Protocol != layers.IPProtocolICMPv4 {
		t.Fatalf("inner packet %s -> %s proto %s, want ICMP %s -> %s", ip4.SrcIP, ip4.DstIP, ip4.Protocol, ours.Container.Addr, upAddr)
	}
	// 64 from the container, -1 for host 1's kernel forwarding it, -1 in
	// the tunnel.
	if ip4.TTL != 62 {
		t.Errorf("inner TTL on the wire = %d, want 62", ip4.TTL)
	}
	if binary.BigEndian.Uint16(inner[10:12]) != 0 && checksum16(inner[:ip4.IHL*4]) != 0 {
		t.Errorf("inner IPv4 header checksum is wrong after the TTL decrement")
	}
	if int(ip4.Length) != len(inner) {
		t.Errorf("datagram carries %d bytes, inner total length says %d: the payload must be exactly the inner packet", len(inner), ip4.Length)
	}
	checkOuterHeader(t, raw, ours.Host.Addr, up.Host.Addr, len(inner))

	// upstream -> flannel-go: an echo request from upstream's flannel0
	// address to the container, sent as upstream does (one raw inner
	// packet per datagram, from port 8285); the container's reply must come
	// back the same way.
	req := icmpEcho(t, upAddr, ours.Container.Addr, 0x4242, []byte("from-upstream"))
	dst := &net.UDPAddr{IP: ours.Host.Addr.AsSlice(), Port: 8285}
	deadline := time.Now().Add(5 * time.Second)
	buf := make([]byte, 65535)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no echo reply from the container to upstream's request")
		}
		if _, err := sock.WriteTo(req, dst); err != nil {
			t.Fatal(err)
		}
		sock.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := sock.ReadFrom(buf)
		if err != nil {
			continue
		}
		p := gopacket.NewPacket(buf[:n], layers.LayerTypeIPv4, gopacket.Default)
		if ic, ok := p.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4); ok &&
			ic.TypeCode.Type() == layers.ICMPv4TypeEchoReply && ic.Id == 0x4242 && bytes.Equal(ic.Payload, []byte("from-upstream")) {
			break
		}
	}
}

// waitInner pings to from node's container until a datagram arrives on
// sock, and returns its payload.
func waitInner(t *testing.T, ctx context.Context, n *cluster.Node, to netip.Addr, sock net.PacketConn) []byte {
	t.Helper()
	buf := make([]byte, 65535)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		go n.Container.Run(ctx, "ping", "-n", "-c", "1", "-W", "1", to.String())
		sock.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		m, from, err := sock.ReadFrom(buf)
		if err != nil {
			continue
		}
		if m < 20 {
			// Upstream's proxy drops these unread, as it does the fast
			// path's probes.
			continue
		}
		if ua := from.(*net.UDPAddr); ua.Port != 8285 || !ua.IP.Equal(n.Host.Addr.AsSlice()) {
			t.Fatalf("datagram from %s, want %s:8285 (the socket bound to the interface address and the cluster port)", ua, n.Host.Addr)
		}
		return append([]byte(nil), buf[:m]...)
	}
	t.Fatalf("no datagram from %s reached the upstream peer:\n%s", n.Host.Name, n.Log())
	return nil
}

// checkOuterHeader reads the outer IPv4 header of a datagram carrying
// innerLen bytes (or several such, below) from src to dst: no options, TOS
// 0, TTL 64, DF, ports 8285, as upstream's capture shows. Two pings that
// reach the router in one batch leave as one UDP GSO super-datagram, which
// the raw socket sees whole (the UDP socket gets them cut apart): a loaded
// machine starts the pings late enough to bunch them.
func checkOuterHeader(t *testing.T, raw *net.IPConn, src, dst netip.Addr, innerLen int) {
	t.Helper()
	buf := make([]byte, 65535)
	raw.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		n, err := raw.Read(buf)
		if err != nil {
			t.Fatalf("no outer packet seen on the raw socket: %v", err)
		}
		ip := decodeIPv4(t, buf[:n])
		udp, ok := gopacket.NewPacket(buf[:n], layers.LayerTypeIPv4, gopacket.Default).Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok || ip.SrcIP.String() != src.String() || udp.DstPort != 8285 || len(udp.Payload) == 0 || len(udp.Payload)%innerLen != 0 {
			continue
		}
		if ip.IHL != 5 || ip.TOS != 0 || ip.TTL != 64 || ip.Flags&layers.IPv4DontFragment == 0 || udp.SrcPort != 8285 || ip.DstIP.String() != dst.String() {
			t.Fatalf("outer header IHL %d TOS %d TTL %d flags %v ports %d->%d, want 5, 0, 64, DF, 8285->8285", ip.IHL, ip.TOS, ip.TTL, ip.Flags, udp.SrcPort, udp.DstPort)
		}
		return
	}
}

func decodeIPv4(t *testing.T, b []byte) *layers.IPv4 {
	t.Helper()
	var ip layers.IPv4
	if err := ip.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		t.Fatalf("decode IPv4: %v", err)
	}
	return &ip
}

func icmpEcho(t *testing.T, src, dst netip.Addr, id uint16, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 63, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Flags: layers.IPv4DontFragment}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: id, Seq: 1}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, icmp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checksum16 is the Internet checksum of b; 0 means a header with a valid
// checksum field.
func checksum16(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
