package tun

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var (
	tunAddr = netip.MustParseAddr("198.18.32.0")
	overlay = netip.MustParsePrefix("198.18.0.0/16")
	remote  = netip.MustParseAddr("198.18.5.7")
)

// udpPacket builds an IPv4/UDP packet with valid checksums.
func udpPacket(t *testing.T, src, dst netip.Addr, sport, dport int, payload []byte) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// withDevice runs fn inside a fresh testbed host h (goroutines fn starts
// are not in it: they enter with h.Do), with flannel0 opened
// (with opts) and configured there.
func withDevice(t *testing.T, queues int, fn func(d *Device, h *testbed.Host), opts ...Option) {
	t.Helper()
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	testbed.RequireTUN(t)
	err := h.Do(func() error {
		d, err := Open("flannel0", queues, opts...)
		if err != nil {
			return fmt.Errorf("Open: %w", err)
		}
		defer d.Close()
		if err := d.Configure(tunAddr, 1472, 1000, overlay); err != nil {
			return fmt.Errorf("Configure: %w", err)
		}
		fn(d, h)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenConfigure(t *testing.T) {
	withDevice(t, 2, func(d *Device, _ *testbed.Host) { testOpenConfigure(t, d) })
}

func testOpenConfigure(t *testing.T, d *Device) {
	if len(d.Queues) != 2 {
		t.Fatalf("got %d queues, want 2", len(d.Queues))
	}
	link, err := netlink.LinkByName("flannel0")
	if err != nil {
		t.Fatal(err)
	}
	a := link.Attrs()
	if a.MTU != 1472 || a.TxQLen != 1000 || a.Flags&net.FlagUp == 0 {
		t.Errorf("link attrs: mtu %d txqlen %d flags %v, want 1472, 1000, up", a.MTU, a.TxQLen, a.Flags)
	}
	if tt, ok := link.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TUN || tt.Flags&netlink.TUNTAP_MULTI_QUEUE == 0 {
		t.Errorf("link is %#v, want a multi-queue tun", link)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != "198.18.32.0/32" {
		t.Errorf("addresses %v, want [198.18.32.0/32]", addrs)
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == "198.18.0.0/16" && r.Scope == netlink.SCOPE_UNIVERSE && r.Gw == nil {
			found = true
		}
	}
	if !found {
		t.Errorf("routes %v: no 198.18.0.0/16 dev flannel0 scope global", routes)
	}

	// Configuring again (a re-acquired lease) is not an error: the route
	// exists already and the new address is added next to the old one.
	next := netip.MustParseAddr("198.18.33.0")
	if err := d.Configure(next, 1472, 1000, overlay); err != nil {
		t.Fatalf("second Configure: %v", err)
	}
	if err := d.RemoveAddr(tunAddr); err != nil {
		t.Fatalf("RemoveAddr: %v", err)
	}
	addrs, _ = netlink.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "198.18.33.0/32" {
		t.Errorf("addresses after re-acquire %v, want [198.18.33.0/32]", addrs)
	}

	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := netlink.LinkByName("flannel0"); err == nil {
		t.Error("flannel0 still exists after Close")
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOpenRefusesExistingName(t *testing.T) {
	withDevice(t, 1, func(*Device, *testbed.Host) {
		_, err := Open("flannel0", 1)
		if err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("Open of an existing name: err %v, want 'already exists'", err)
		}
	})
}

func TestOpenArgs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		queues int
	}{{"", 1}, {"x", 0}, {"abcdefghijklmnopq", 1}} {
		if _, err := Open(tc.name, tc.queues); err == nil {
			t.Errorf("Open(%q, %d) succeeded", tc.name, tc.queues)
		}
	}
}

func TestReadWrite(t *testing.T) {
	for _, off := range []bool{true, false} {
		t.Run(fmt.Sprintf("offloads=%v", off), func(t *testing.T) {
			withDevice(t, 1, func(d *Device, _ *testbed.Host) {
				if d.Offloads.VnetHdr != off || d.Queues[0].Offloads() != d.Offloads {
					t.Errorf("offloads %+v, queue %+v; want VnetHdr %v", d.Offloads, d.Queues[0].Offloads(), off)
				}
				testReadWrite(t, d.Queues[0])
			}, WithOffloads(off))
		})
	}
}

func testReadWrite(t *testing.T, q Queue) {

	// Host to overlay: the kernel routes the datagram into the TUN.
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: remote.AsSlice(), Port: 9999})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const sent = 5
	for i := range sent {
		if _, err := c.Write([]byte{'p', byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	bs := q.BatchSize()
	bufs := make([][]byte, bs)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65535)
	}
	sizes := make([]int, bs)
	got := 0
	deadline := time.Now().Add(5 * time.Second)
	for got < sent && time.Now().Before(deadline) {
		n := readWithin(t, q, bufs, sizes, deadline)
		for i := range n {
			p := gopacket.NewPacket(bufs[i][Headroom:Headroom+sizes[i]], layers.LayerTypeIPv4, gopacket.Default)
			udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
			if !ok || udp.DstPort != 9999 {
				continue // e.g. nothing else is expected, but be tolerant
			}
			if want := []byte{'p', byte(got)}; !bytes.Equal(udp.Payload, want) {
				t.Errorf("packet %d payload %q, want %q", got, udp.Payload, want)
			}
			got++
		}
	}
	if got != sent {
		t.Fatalf("read %d packets, want %d", got, sent)
	}

	// Overlay to host: packets written into the TUN reach a local socket.
	ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: tunAddr.AsSlice(), Port: 7777})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var wbufs [][]byte
	for i := range 3 {
		pkt := udpPacket(t, remote, tunAddr, 9999, 7777, []byte{'w', byte(i)})
		wbufs = append(wbufs, append(make([]byte, Headroom), pkt...))
	}
	n, err := q.Write(wbufs, Headroom)
	if err != nil || n != len(wbufs) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(wbufs))
	}
	ln.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 100)
	for i := range 3 {
		m, from, err := ln.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("receive written packet %d: %v", i, err)
		}
		if want := []byte{'w', byte(i)}; !bytes.Equal(buf[:m], want) || from.Port != 9999 {
			t.Errorf("packet %d: %q from %v, want %q from port 9999", i, buf[:m], from, want)
		}
	}

	// A malformed packet fails at its index; the ones before it are written.
	bad := [][]byte{wbufs[0], make([]byte, Headroom)}
	n, err = q.Write(bad, Headroom)
	if err == nil || n != 1 {
		t.Errorf("Write with a bad second packet = %d, %v; want 1 and an error", n, err)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	withDevice(t, 1, func(d *Device, _ *testbed.Host) { testCloseUnblocksRead(t, d) })
}

func testCloseUnblocksRead(t *testing.T, d *Device) {
	q := d.Queues[0]
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		bufs := [][]byte{make([]byte, Headroom+65535)}
		close(started)
		for {
			// The kernel may queue its own packets (IPv6 multicast
			// listener reports) once the link is up; read past them.
			if _, err := q.Read(bufs, []int{0}, Headroom); err != nil {
				errc <- err
				return
			}
		}
	}()
	<-started
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked 5 s after Close")
	}
	if _, err := q.Write([][]byte{make([]byte, 20)}, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v, want os.ErrClosed", err)
	}
}

// sendGSO sends b from c to to as datagrams of size bytes with one
// sendmsg and a UDP_SEGMENT control message.
func sendGSO(c *net.UDPConn, b []byte, size int, to *net.UDPAddr) error {
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	_, _, err := c.WriteMsgUDP(b, oob, to)
	return err
}
