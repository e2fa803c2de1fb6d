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

var loopback = netip.MustParseAddr("127.0.0.1")

// listen opens a Conn on a free loopback port, closed when the test ends.
func listen(t testing.TB, cfg Config) (*conn, netip.AddrPort) {
	t.Helper()
	cfg.Addr = netip.AddrPortFrom(loopback, 0)
	c, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sa, err := unix.Getsockname(c.(*conn).fd)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*conn), netip.AddrPortFrom(loopback, uint16(sa.(*unix.SockaddrInet4).Port))
}

// plainUDP opens an ordinary socket (no GRO, like upstream flanneld's).
func plainUDP(t *testing.T) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: loopback.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc, pc.LocalAddr().(*net.UDPAddr).AddrPort()
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
	c, _ := listen(t, Config{})
	if !c.Offloads().GSO {
		t.Fatal("no UDP GSO on this kernel (Linux 4.18 or later has it)")
	}
	pc, to := plainUDP(t)
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
}

// trains cuts a message's datagrams where the kernel requires: 64
// segments, 65,507 bytes, a datagram larger than the first, and after a
// shorter one.
func TestTrains(t *testing.T) {
	c := newConn(1, 128)
	to := netip.MustParseAddrPort("192.0.2.2:8285")
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
				t.Errorf("%s: header %d: iovlen %d, control %d", tc.name, h, hdr.Iovlen, hdr.Controllen)
			}
			if got[h] > 1 {
				ctl := unsafe.Slice(hdr.Control, hdr.Controllen)
				if seg := binary.NativeEndian.Uint16(ctl[unix.CmsgLen(0):]); int(seg) != len(msgs[0].Buffers[sum(got[:h])]) {
					t.Errorf("%s: header %d: segment size %d", tc.name, h, seg)
				}
			}
			if sa := c.wnames[h]; netip.AddrFrom4(sa.Addr) != to.Addr() || binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:]) != to.Port() {
				t.Errorf("%s: header %d addressed to %v", tc.name, h, sa)
			}
		}
		if !slices.Equal(got, tc.want) || m != 1 || at != 0 {
			t.Errorf("%s: trains %v (stopped at %d/%d), want %v", tc.name, got, m, at, tc.want)
		}
	}
	// Iovecs run out: the next call goes on where this one stopped.
	small := newConn(4, 4)
	msgs := []Message{{Buffers: sizes(rep(6, 10)...), Addr: to}}
	if nh, m, at := small.trains(msgs, 0, 0, true); nh != 1 || small.wsegs[0] != 4 || m != 0 || at != 4 {
		t.Errorf("4 iovecs for 6 datagrams: %d headers, stopped at %d/%d", nh, m, at)
	}
}

func sum(s []int) (n int) {
	for _, v := range s {
		n += v
	}
	return n
}

// A sender's GSO train reaches a GRO socket as one message with its
// segment size, the source address and a receive time; a socket without
// offloads gets one datagram per message.
func TestReadBatchGRO(t *testing.T) {
	for _, off := range []bool{false, true} {
		c, addr := listen(t, Config{Timestamps: true, DisableOffloads: off})
		if c.Offloads().GRO == off {
			t.Fatalf("DisableOffloads %v: GRO %v", off, c.Offloads().GRO)
		}
		closeAfter(t, c)
		pc, from := plainUDP(t)
		sent := datagrams(10, 1000)
		sendGSO(t, pc, bytes.Join(sent, nil), 1000, addr)
		bufs := slices.Collect(func(yield func([]byte) bool) {
			for range 16 {
				yield(make([]byte, 65535))
			}
		})
		msgs := make([]Message, 16)
		for i := range msgs {
			msgs[i].Buffers = bufs[i : i+1]
		}
		var got [][]byte
		for len(got) < len(sent) {
			n, err := c.ReadBatch(msgs)
			if err != nil {
				t.Fatalf("DisableOffloads %v: ReadBatch after %d datagrams: %v", off, len(got), err)
			}
			for _, m := range msgs[:n] {
				if m.Addr != from || m.Stamp == 0 || m.Truncated || m.Segment <= 0 {
					t.Fatalf("message from %s, stamp %d, truncated %v, segment %d", m.Addr, m.Stamp, m.Truncated, m.Segment)
				}
				if !off && m.Segment != 1000 || off && m.N != 1000 {
					t.Errorf("DisableOffloads %v: %d bytes in segments of %d", off, m.N, m.Segment)
				}
				for at := 0; at < m.N; at += m.Segment {
					got = append(got, m.Buffers[0][at:min(at+m.Segment, m.N)])
				}
			}
		}
		if !slices.EqualFunc(got, sent, bytes.Equal) {
			t.Errorf("DisableOffloads %v: received datagrams differ from those sent", off)
		}
	}
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
		c, _ := listen(t, Config{})
		pc, to := plainUDP(t)
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
}

// Close wakes a ReadBatch sleeping on an empty socket, and later calls
// fail with ErrClosed.
func TestCloseWakesReader(t *testing.T) {
	c, _ := listen(t, Config{})
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
}

// A train out and back in costs no allocation.
func TestZeroAllocs(t *testing.T) {
	c, self := listen(t, Config{Timestamps: true})
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
				got += m.N
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per train sent and received", allocs)
	}
}
