package tun

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The IPv6 side of the real-TUN tests: flannel0 gets local6 and a route
// for 2001:db8::/32 here, in the test's namespace (Configure's IPv6 part
// is not this package's test subject); the test plays remote6.
var (
	local6  = [4]byte{198, 18, 32, 0} // 2001:db8::c612:2000, as pkt maps it
	remote6 = [4]byte{198, 18, 5, 7}  // 2001:db8::c612:507
)

// withDevice6 is withDevice with flannel0's IPv6 address and route.
func withDevice6(t *testing.T, fn func(d *Device, h *testbed.Host)) {
	withDevice(t, 1, func(d *Device, h *testbed.Host) {
		link, err := netlink.LinkByName(d.Name)
		if err != nil {
			t.Fatal(err)
		}
		// nodad: usable at once, no waiting for duplicate detection.
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr6(local6), Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(link, a); err != nil {
			t.Fatalf("add %s: %v", a, err)
		}
		_, dst, _ := net.ParseCIDR("2001:db8::/32")
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst}); err != nil {
			t.Fatalf("route 2001:db8::/32: %v", err)
		}
		// The kernel adds the address's local route asynchronously,
		// also with nodad: until then a packet to it is dropped
		// (Ip6InAddrErrors), though binding to it already works.
		deadline := time.Now().Add(5 * time.Second)
		for !routedLocal(addr6(local6)) {
			if time.Now().After(deadline) {
				t.Fatalf("%s not routed as local after 5 s", addr6(local6))
			}
			time.Sleep(5 * time.Millisecond)
		}
		fn(d, h)
	})
}

func is6To(p []byte, proto uint8, dst [4]byte) bool {
	return len(p) >= 48 && p[0]>>4 == 6 && p[6] == proto && [16]byte(p[24:40]) == [16]byte(addr6(dst))
}

// TestTCPThroughTUNIPv6 plays the remote end of a TCP connection over
// IPv6: the kernel's TSO6 super-packets come out of Read as valid
// segments, and segments coalesced by Write reach the socket intact.
func TestTCPThroughTUNIPv6(t *testing.T) {
	withDevice6(t, func(d *Device, h *testbed.Host) {
		if !d.Offloads.TSO {
			t.Skip("the kernel refused TSO on the TUN")
		}
		q := d.Queues[0]
		bufs := make([][]byte, q.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, Headroom+65535)
		}
		sizes := make([]int, len(bufs))
		raddr := netip.AddrPortFrom(netip.AddrFrom16([16]byte(addr6(remote6))), 5201).String()
		connc := make(chan net.Conn, 1)
		go func() {
			var c net.Conn
			err := h.Do(func() (err error) {
				c, err = net.DialTimeout("tcp6", raddr, 5*time.Second)
				return err
			})
			if err != nil {
				t.Errorf("dial: %v", err)
			}
			connc <- c
		}()
		toRemote := func(p []byte) bool { return is6To(p, protoTCP, remote6) }
		syn := readUntil(t, q, bufs, sizes, toRemote)[0]
		lport := binary.BigEndian.Uint16(syn[40:])
		isn := binary.BigEndian.Uint32(syn[44:])
		reply := func(seq uint32, flags uint8, data []byte) []byte {
			p := v6(pkt{src: remote6, dst: local6, sport: 5201, dport: lport, seq: seq, ack: isn + 1,
				flags: flags, win: 65535, ttl: 63, flow: 0x5a5a5, payload: data})
			if flags&tcpFlagSYN != 0 {
				p.opts = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0x84}}}
			}
			return append(make([]byte, Headroom), p.build(t)...)
		}
		if n, err := q.Write([][]byte{reply(1000, tcpFlagSYN|tcpFlagACK, nil)}, Headroom); n != 1 || err != nil {
			t.Fatalf("write SYN-ACK: %d, %v", n, err)
		}
		conn := <-connc
		if conn == nil {
			return
		}
		defer conn.Close()

		data := payload(40000, 3)
		go conn.Write(data)
		var segs [][]byte
		deadline := time.Now().Add(5 * time.Second)
		maxPerRead := 0
		for len(segs) < 10 && time.Now().Before(deadline) {
			got := readUntil(t, q, bufs, sizes, func(p []byte) bool { return toRemote(p) && len(p) > 72 })
			maxPerRead = max(maxPerRead, len(got))
			segs = append(segs, got...)
		}
		if maxPerRead < 2 {
			t.Errorf("no Read returned more than one segment: TSO6 super-packets not seen")
		}
		next := isn + 1
		for i, s := range segs {
			if !validIP(s) || len(s) > 1472 {
				t.Fatalf("segment %d (%d bytes) has a wrong checksum or length: %x", i, len(s), s[:60])
			}
			hl := 40 + int(s[52]>>4)*4
			if seq := binary.BigEndian.Uint32(s[44:]); seq != next {
				t.Fatalf("segment %d: seq %d, want %d", i, seq, next)
			}
			if !bytes.Equal(s[hl:], data[next-isn-1:int(next-isn-1)+len(s)-hl]) {
				t.Fatalf("segment %d carries the wrong bytes", i)
			}
			next += uint32(len(s) - hl)
		}

		// TUN to kernel: three segments written at once leave as one
		// TSO6 super-packet, which the kernel must accept.
		var w [][]byte
		in := payload(3*1000, 9)
		for i := range 3 {
			f := uint8(tcpFlagACK)
			if i == 2 {
				f |= tcpFlagPSH
			}
			w = append(w, reply(1001+uint32(i*1000), f, in[i*1000:(i+1)*1000]))
		}
		g := groTable{tcp: true}
		g.group(w, Headroom)
		if len(g.items) != 1 {
			t.Fatalf("test segments form %d groups, want 1", len(g.items))
		}
		if n, err := q.Write(w, Headroom); n != 3 || err != nil {
			t.Fatalf("Write of 3 segments: %d, %v", n, err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got := make([]byte, len(in))
		if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, in) {
			t.Fatalf("socket read %v; bytes equal %v", err, bytes.Equal(got, in))
		}
	})
}

// TestUDPThroughTUNIPv6 sends a UDP GSO burst over IPv6 into the TUN (a
// USO read) and writes a UDP train back (a USO write), with a datagram
// carrying a destination options header in the middle: it passes whole,
// in order, and the socket receives every datagram.
func TestUDPThroughTUNIPv6(t *testing.T) {
	withDevice6(t, func(d *Device, _ *testbed.Host) {
		q := d.Queues[0]
		bufs := make([][]byte, q.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, Headroom+65535)
		}
		sizes := make([]int, len(bufs))
		ln, err := net.ListenUDP("udp6", &net.UDPAddr{IP: addr6(local6), Port: 7777})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		msg := payload(10*1000, 5)
		if err := sendGSO(ln, msg, 1000, &net.UDPAddr{IP: addr6(remote6), Port: 9999}); err != nil {
			t.Fatal(err)
		}
		var got [][]byte
		for len(got) < 10 {
			got = append(got, readUntil(t, q, bufs, sizes, func(p []byte) bool {
				return is6To(p, protoUDP, remote6) && binary.BigEndian.Uint16(p[42:]) == 9999
			})...)
		}
		for i, p := range got {
			if !validIP(p) || !bytes.Equal(p[48:], msg[i*1000:(i+1)*1000]) {
				t.Fatalf("datagram %d invalid or wrong: %x", i, p[:48])
			}
		}
		var w [][]byte
		for i := range 5 {
			p := v6(udpFlow(uint16(i), payload(900, byte(i))))
			p.src, p.dst, p.sport, p.dport = remote6, local6, 9999, 7777
			p.ext = i == 2
			w = append(w, append(make([]byte, Headroom), p.build(t)...))
		}
		if d.Offloads.USO {
			g := groTable{udp: true}
			g.group(w, Headroom)
			if len(g.items) != 3 || g.items[0].count != 2 || g.items[2].count != 2 {
				t.Fatalf("test datagrams form %d writes, want a train, the datagram with options, a train", len(g.items))
			}
		}
		if n, err := q.Write(w, Headroom); n != 5 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2000)
		for i := range 5 {
			n, err := ln.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], payload(900, byte(i))) {
				t.Fatalf("datagram %d: %d bytes, %v", i, n, err)
			}
		}
	})
}

// routedLocal reports whether the kernel delivers packets to ip locally.
func routedLocal(ip net.IP) bool {
	rs, err := netlink.RouteGet(ip)
	return err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL
}
