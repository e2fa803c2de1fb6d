package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The loopback addresses of both families: every socket test runs over
// the IPv4 and the IPv6 underlay.
var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.IPv6Loopback()
)

// forFamilies runs f once with each family's loopback address.
func forFamilies(t *testing.T, f func(t *testing.T, lo netip.Addr)) {
	for _, lo := range []netip.Addr{loopback4, loopback6} {
		t.Run(map[bool]string{true: "ipv4", false: "ipv6"}[lo.Is4()], func(t *testing.T) { f(t, lo) })
	}
}

// listen opens a Conn on a free port of lo, closed when the test ends.
func listen(t testing.TB, lo netip.Addr, cfg Config) (*conn, netip.AddrPort) {
	t.Helper()
	cfg.Addr = netip.AddrPortFrom(lo, 0)
	c, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*conn), localAddr(t, c.(*conn).fd)
}

// localAddr is the address the socket fd is bound to.
func localAddr(t testing.TB, fd int) netip.AddrPort {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	t.Fatalf("socket bound to %v", sa)
	return netip.AddrPort{}
}

// plainUDP opens an ordinary socket on lo (no GRO, like upstream
// flanneld's).
func plainUDP(t *testing.T, lo netip.Addr) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: lo.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	return pc, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// closeAfter closes c if the test is still running after 5 s, so that a
// lost datagram fails the test instead of hanging it.
func closeAfter(t *testing.T, c Conn) {
	timer := time.AfterFunc(5*time.Second, func() { c.Close() })
	t.Cleanup(func() { timer.Stop() })
}

// datagrams returns n datagrams of size bytes, each tagged with its index.
func datagrams(n, size int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = bytes.Repeat([]byte{byte(i)}, size)
	}
	return out
}

// readAll reads want datagrams from pc and checks them against sent.
func readAll(t *testing.T, pc *net.UDPConn, sent [][]byte) {
	t.Helper()
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	for i, want := range sent {
		n, err := pc.Read(buf)
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatalf("datagram %d: %d bytes starting %x, want %d starting %x", i, n, buf[:min(n, 4)], len(want), want[:4])
		}
	}
}

// recordSends wraps c's sendmmsg: it records each header's datagram count
// and fails the headers that carry a train with fail (0: none).
func recordSends(c *conn, fail unix.Errno) *[]int {
	var segs []int
	c.sendmmsg = func(fd int, hdrs []unix.Mmsghdr) (int, unix.Errno) {
		if fail != 0 {
			for i := range hdrs {
				if hdrs[i].Hdr.Iovlen > 1 {
					if i == 0 {
						return 0, fail
					}
					hdrs = hdrs[:i]
					break
				}
			}
		}
		for i := range hdrs {
			segs = append(segs, int(hdrs[i].Hdr.Iovlen))
		}
		return sendmmsg(fd, hdrs)
	}
	return &segs
}

// A message of many datagrams leaves as GSO trains, and a peer without GRO
// receives every datagram whole and in order: the wire format is one
// datagram per packet.
func TestWriteBatchGSO(t *testing.T) {
	forFamilies(t, func(t *testing.T, lo netip.Addr) {
		c, _ := listen(t, lo, Config{})
		if !c.Offloads().GSO {
			t.Fatal("no UDP GSO on this kernel (Linux 4.18 or later has it)")
		}
		pc, to := plainUDP(t, lo)
		segs := recordSends(c, 0)
		sent := append(datagrams(10, 1000), datagrams(1, 400)...)
		msgs := []Message{{Buffers: sent, Addr: to}}
		if n, err := c.WriteBatch(msgs); n != 1 || err != nil || msgs[0].N != len(sent) {
			t.Fatalf("WriteBatch = %d, %v (N %d), want 1, nil (N %d)", n, err, msgs[0].N, len(sent))
		}
		if !slices.Equal(*segs, []int{11}) {
			t.Errorf("headers carried %v datagrams, want one train of 11", *segs)
		}
		readAll(t, pc, sent)
	})
}

// trains cuts a message's datagrams where the kernel requires: 64
// segments, 65,507 bytes, a datagram larger than the first, and after a
// shorter one; each header carries the peer's address in the socket's
// family.
func TestTrains(t *testing.T) {
	for _, to := range []netip.AddrPort{
		netip.MustParseAddrPort("192.0.2.2:8285"),
		netip.MustParseAddrPort("[2001:db8::2]:8285"),
	} {
		c := newConn(1, 128, to.Addr().Is6())
		sizes := func(s ...int) [][]byte {
			var out [][]byte
			for _, n := range s {
				out = append(out, make([]byte, n))
			}
			return out
		}
		rep := func(n, size int) []int { return slices.Repeat([]int{size}, n) }
		for _, tc := range []struct {
			name  string
			sizes []int
			gso   bool
			want  []int
		}{
			{"bytes", append(rep(46, 1472), 500, 1472), true, []int{44, 3, 1}},
			{"segments", rep(70, 100), true, []int{64, 6}},
			{"larger after smaller", []int{100, 200, 200}, true, []int{1, 2}},
			{"without GSO", rep(3, 100), false, []int{1, 1, 1}},
		} {
			msgs := []Message{{Buffers: sizes(tc.sizes...), Addr: to}}
			nh, m, at := c.trains(msgs, 0, 0, tc.gso)
			var got []int
			for h := range nh {
				got = append(got, int(c.wsegs[h]))
				hdr := &c.whdrs[h].Hdr
				if int(hdr.Iovlen) != got[h] || (got[h] > 1) != (hdr.Controllen > 0) {
					t.Errorf("%s %s: header %d: iovlen %d, control %d", to, tc.name, h, hdr.Iovlen, hdr.Controllen)
				}
				if got[h] > 1 {
					ctl := unsafe.Slice(hdr.Control, hdr.Controllen)
					if seg := binary.NativeEndian.Uint16(ctl[unix.CmsgLen(0):]); int(seg) != len(msgs[0].Buffers[sum(got[:h])]) {
						t.Errorf("%s %s: header %d: segment size %d", to, tc.name, h, seg)
					}
				}
				if a := sockaddr(hdr); a != to {
					t.Errorf("%s %s: header %d addressed to %v", to, tc.name, h, a)
				}
			}
			if !slices.Equal(got, tc.want) || m != 1 || at != 0 {
				t.Errorf("%s %s: trains %v (stopped at %d/%d), want %v", to, tc.name, got, m, at, tc.want)
			}
		}
		// Iovecs run out: the next call goes on where this one stopped.
		small := newConn(4, 4, to.Addr().Is6())
		msgs := []Message{{Buffers: sizes(rep(6, 10)...), Addr: to}}
		if nh, m, at := small.trains(msgs, 0, 0, true); nh != 1 || small.wsegs[0] != 4 || m != 0 || at != 4 {
			t.Errorf("%s: 4 iovecs for 6 datagrams: %d headers, stopped at %d/%d", to, nh, m, at)
		}
	}
}

// sockaddr decodes the name of send header hdr byte by byte, checking its
// length against its family; an invalid AddrPort if it has neither.
func sockaddr(hdr *unix.Msghdr) netip.AddrPort {
	b := unsafe.Slice(hdr.Name, hdr.Namelen)
	fam := binary.NativeEndian.Uint16(b)
	switch {
	case fam == unix.AF_INET && len(b) == unix.SizeofSockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:]))
	case fam == unix.AF_INET6 && len(b) == unix.SizeofSockaddrInet6:
		if binary.NativeEndian.Uint32(b[4:]) != 0 || binary.NativeEndian.Uint32(b[24:]) != 0 {
			return netip.AddrPort{} // flow info and scope stay 0
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), binary.BigEndian.Uint16(b[2:]))
	}
	return netip.AddrPort{}
}

func sum(s []int) (n int) {
	for _, v := range s {
		n += v
	}
	return n
}

// A sender's GSO train reaches a GRO socket as one message with its
// segment size, the source address (plain IPv6 on an IPv6 socket, never
// IPv4-mapped) and a receive time; a socket without offloads gets one
// datagram per message.
func TestReadBatchGRO(t *testing.T) {
	forFamilies(t, func(t *testing.T, lo netip.Addr) {
		for _, off := range []bool{false, true} {
			c, addr := listen(t, lo, Config{Timestamps: true, DisableOffloads: off})
			if c.Offloads().GRO == off {
				t.Fatalf("DisableOffloads %v: GRO %v", off, c.Offloads().GRO)
			}
			closeAfter(t, c)
			pc, from := plainUDP(t, lo)
			sent := datagrams(10, 1000)
			sendGSO(t, pc, bytes.Join(sent, nil), 1000, addr)
			got := readDatagrams(t, c, len(sent), func(m *Message) {
				if m.Addr != from || m.Stamp == 0 || m.Truncated || m.Segment <= 0 {
					t.Fatalf("message from %s, stamp %d, truncated %v, segment %d; want from %s", m.Addr, m.Stamp, m.Truncated, m.Segment, from)
				}
				if !off && m.Segment != 1000 || off && m.N != 1000 {
					t.Errorf("DisableOffloads %v: %d bytes in segments of %d", off, m.N, m.Segment)
				}
			})
			if !slices.EqualFunc(got, sent, bytes.Equal) {
				t.Errorf("DisableOffloads %v: received datagrams differ from those sent", off)
			}
		}
	})
}

// readDatagrams reads from c until want datagrams arrived, splitting GRO
// trains, and calls check on every message.
func readDatagrams(t *testing.T, c Conn, want int, check func(m *Message)) [][]byte {
	t.Helper()
	msgs := make([]Message, 16)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 65535)}
	}
	var got [][]byte
	for len(got) < want {
		n, err := c.ReadBatch(msgs)
		if err != nil {
			t.Fatalf("ReadBatch after %d datagrams: %v", len(got), err)
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			check(m)
			for at := 0; at < m.N; at += m.Segment {
				got = append(got, bytes.Clone(m.Buffers[0][at:min(at+m.Segment, m.N)]))
			}
		}
	}
	return got
}

// sendGSO sends b as a train of size-byte datagrams with one sendmsg.
func sendGSO(t *testing.T, pc *net.UDPConn, b []byte, size int, to netip.AddrPort) {
	t.Helper()
	oob := make([]byte, unix.CmsgSpace(2))
	initGSOCtl(oob)
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	if _, _, err := pc.WriteMsgUDPAddrPort(b, oob, to); err != nil {
		t.Fatalf("send GSO train: %v", err)
	}
}

// A train the kernel refuses is resent one datagram at a time: EIO (the
// device cannot segment) turns GSO off for good, EMSGSIZE only for the
// batch; any other errno is the caller's, with what was sent counted.
func TestWriteBatchFallback(t *testing.T) {
	forFamilies(t, func(t *testing.T, lo netip.Addr) {
		for _, tc := range []struct {
			err     unix.Errno
			gsoKept bool
			segs    []int
		}{
			{unix.EIO, false, []int{1, 1, 1, 1, 1, 1}},
			{unix.EMSGSIZE, true, []int{1, 1, 1, 1, 1, 1}},
			{unix.EINVAL, true, []int{1, 1, 1, 1, 1, 1}},
			{unix.EPERM, true, []int{1}},
		} {
			c, _ := listen(t, lo, Config{})
			pc, to := plainUDP(t, lo)
			segs := recordSends(c, tc.err)
			single, train := datagrams(1, 300), datagrams(5, 1000)
			msgs := []Message{{Buffers: single, Addr: to}, {Buffers: train, Addr: to}}
			n, err := c.WriteBatch(msgs)
			if tc.err == unix.EPERM {
				if n != 1 || !errors.Is(err, unix.EPERM) || msgs[0].N != 1 || msgs[1].N != 0 {
					t.Errorf("EPERM: WriteBatch = %d, %v (N %d, %d), want 1, EPERM (N 1, 0)", n, err, msgs[0].N, msgs[1].N)
				}
				readAll(t, pc, single)
				continue
			}
			if n != 2 || err != nil || msgs[1].N != 5 {
				t.Errorf("%v: WriteBatch = %d, %v (N %d)", tc.err, n, err, msgs[1].N)
			}
			if c.Offloads().GSO != tc.gsoKept || !slices.Equal(*segs, tc.segs) {
				t.Errorf("%v: GSO %v, headers %v; want %v, %v", tc.err, c.Offloads().GSO, *segs, tc.gsoKept, tc.segs)
			}
			readAll(t, pc, append(single, train...))
		}
	})
}

// Close wakes a ReadBatch sleeping on an empty socket, and later calls
// fail with ErrClosed.
func TestCloseWakesReader(t *testing.T) {
	forFamilies(t, func(t *testing.T, lo netip.Addr) {
		c, _ := listen(t, lo, Config{})
		done := make(chan error, 1)
		go func() {
			msgs := []Message{{Buffers: [][]byte{make([]byte, 100)}}}
			_, err := c.ReadBatch(msgs)
			done <- err
		}()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != ErrClosed {
				t.Fatalf("ReadBatch after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ReadBatch still asleep 5 s after Close")
		}
		if _, err := c.WriteBatch(nil); err != ErrClosed {
			t.Errorf("WriteBatch after Close: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}

// A train out and back in costs no allocation.
func TestZeroAllocs(t *testing.T) {
	forFamilies(t, func(t *testing.T, lo netip.Addr) {
		c, self := listen(t, lo, Config{Timestamps: true})
		closeAfter(t, c)
		out := []Message{{Buffers: datagrams(8, 1200), Addr: self}}
		buf := make([][]byte, 8)
		in := make([]Message, 8)
		for i := range in {
			buf[i] = make([]byte, 65535)
			in[i].Buffers = buf[i : i+1]
		}
		allocs := testing.AllocsPerRun(100, func() {
			if _, err := c.WriteBatch(out); err != nil {
				t.Fatal(err)
			}
			for got := 0; got < 8*1200; {
				n, err := c.ReadBatch(in)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range in[:n] {
					if m.Addr != self {
						t.Fatalf("message from %s, want %s", m.Addr, self)
					}
					got += m.N
				}
			}
		})
		if allocs != 0 {
			t.Errorf("%v allocations per train sent and received", allocs)
		}
	})
}

// Both underlays coexist: an IPv4 and an IPv6 Conn bind the same port,
// on the wildcard addresses as on loopback, and each receives only its
// family's datagrams.
func TestFamiliesShareAPort(t *testing.T) {
	for _, pair := range [][2]netip.Addr{
		{loopback4, loopback6},
		{netip.IPv4Unspecified(), netip.IPv6Unspecified()},
	} {
		c4, a4 := listen(t, pair[0], Config{})
		c6, err := Listen(Config{Addr: netip.AddrPortFrom(pair[1], a4.Port())})
		if err != nil {
			t.Fatalf("IPv6 Conn on the IPv4 Conn's port %d: %v", a4.Port(), err)
		}
		t.Cleanup(func() { c6.Close() })
		closeAfter(t, c4)
		closeAfter(t, c6)
		if v, err := unix.GetsockoptInt(c6.(*conn).fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v != 1 || err != nil {
			t.Errorf("IPV6_V6ONLY = %d, %v", v, err)
		}
		for _, tc := range []struct {
			c  Conn
			lo netip.Addr
		}{{c4, loopback4}, {c6, loopback6}} {
			pc, from := plainUDP(t, tc.lo)
			dst := netip.AddrPortFrom(tc.lo, a4.Port())
			if _, err := pc.WriteToUDPAddrPort([]byte(tc.lo.String()), dst); err != nil {
				t.Fatal(err)
			}
			got := readDatagrams(t, tc.c, 1, func(m *Message) {
				if m.Addr != from {
					t.Errorf("datagram to %s from %s, want from %s", dst, m.Addr, from)
				}
			})
			if string(got[0]) != tc.lo.String() {
				t.Errorf("Conn of %s received %q", dst, got[0])
			}
		}
	}
}

// A message to an address of the other family (or none) fails alone,
// with the kernel's errno, and never reaches this host through a mapped
// or unspecified address; the batch goes on after it.
func TestWriteBatchWrongFamily(t *testing.T) {
	forFamilies(t, func(t *testing.T, lo netip.Addr) {
		c, _ := listen(t, lo, Config{})
		pc, to := plainUDP(t, lo)
		other := netip.MustParseAddrPort("[::1]:9")
		want := unix.EAFNOSUPPORT
		if lo.Is6() {
			other, want = netip.AddrPortFrom(netip.AddrFrom16(loopback4.As16()), to.Port()), unix.ENETUNREACH
		}
		for _, bad := range []netip.AddrPort{other, {}} {
			msgs := []Message{
				{Buffers: datagrams(2, 100), Addr: to},
				{Buffers: datagrams(2, 100), Addr: bad},
				{Buffers: datagrams(1, 50), Addr: to},
			}
			n, err := c.WriteBatch(msgs)
			if n != 1 || !errors.Is(err, want) || msgs[1].N != 0 {
				t.Errorf("to %v: WriteBatch = %d, %v (N %d), want 1, %v", bad, n, err, msgs[1].N, want)
			}
			if n, err := c.WriteBatch(msgs[n+1:]); n != 1 || err != nil {
				t.Errorf("after %v: WriteBatch = %d, %v", bad, n, err)
			}
			readAll(t, pc, append(datagrams(2, 100), datagrams(1, 50)...))
		}
	})
}

// Listen says what is wrong with an address it cannot use.
func TestListenRefuses(t *testing.T) {
	for _, a := range []netip.AddrPort{
		{},
		netip.AddrPortFrom(netip.AddrFrom16(loopback4.As16()), 0),
	} {
		if c, err := Listen(Config{Addr: a}); err == nil {
			c.Close()
			t.Errorf("Listen(%v) succeeded", a)
		}
	}
}
