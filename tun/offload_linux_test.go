package tun

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/google/gopacket/layers"
)

// readWithin is q.Read with a real deadline: a lost packet fails the test
// at the deadline instead of blocking until the global timeout. A timer
// closes the queue, which wakes the Read; the queue is useless after that,
// but the test has failed anyway.
func readWithin(t *testing.T, q Queue, bufs [][]byte, sizes []int, deadline time.Time) int {
	t.Helper()
	timer := time.AfterFunc(time.Until(deadline), func() { q.Close() })
	n, err := q.Read(bufs, sizes, Headroom)
	if !timer.Stop() {
		t.Fatal("timed out reading from the TUN")
	}
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return n
}

// readUntil reads from q until match accepts a packet or the deadline
// passes; it returns the segments of the Read that held the match.
func readUntil(t *testing.T, q Queue, bufs [][]byte, sizes []int, match func(p []byte) bool) [][]byte {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n := readWithin(t, q, bufs, sizes, deadline)
		var got [][]byte
		for i := range n {
			p := bufs[i][Headroom : Headroom+sizes[i]]
			if match(p) {
				got = append(got, bytes.Clone(p))
			}
		}
		if len(got) > 0 {
			return got
		}
	}
	t.Fatal("timed out reading from the TUN")
	return nil
}

// TestTCPThroughTUN plays the remote end of a TCP connection on the TUN:
// the kernel's TSO super-packets must come out of Read as valid segments,
// and segments coalesced by Write must reach the socket intact.
func TestTCPThroughTUN(t *testing.T) {
	withDevice(t, 1, func(d *Device, h *testbed.Host) {
		if !d.Offloads.TSO {
			t.Skip("the kernel refused TSO on the TUN")
		}
		q := d.Queues[0]
		bufs := make([][]byte, q.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, Headroom+65535)
		}
		sizes := make([]int, len(bufs))
		connc := make(chan net.Conn, 1)
		go func() {
			var c net.Conn
			err := h.Do(func() (err error) {
				c, err = net.DialTimeout("tcp4", "198.18.5.7:5201", 5*time.Second)
				return err
			})
			if err != nil {
				t.Errorf("dial: %v", err)
			}
			connc <- c
		}()
		toRemote := func(p []byte) bool {
			return len(p) >= 40 && p[0] == 0x45 && p[9] == protoTCP && [4]byte(p[16:20]) == [4]byte{198, 18, 5, 7}
		}
		syn := readUntil(t, q, bufs, sizes, toRemote)[0]
		local := [4]byte(syn[12:16])
		lport := binary.BigEndian.Uint16(syn[20:])
		isn := binary.BigEndian.Uint32(syn[24:])
		reply := func(seq uint32, flags uint8, data []byte) []byte {
			p := pkt{src: [4]byte{198, 18, 5, 7}, dst: local, sport: 5201, dport: lport, seq: seq, ack: isn + 1,
				flags: flags, win: 65535, ttl: 63, df: true, payload: data}
			if flags&tcpFlagSYN != 0 {
				p.opts = []layers.TCPOption{{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0x98}}}
			}
			p.id = uint16(seq / 1000) // consecutive for the data segments
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

		// Kernel to TUN: the first flight (initial window of 10) comes as
		// super-packets that Read splits.
		data := payload(40000, 3)
		go conn.Write(data)
		var segs [][]byte
		deadline := time.Now().Add(5 * time.Second)
		maxPerRead := 0
		for len(segs) < 10 && time.Now().Before(deadline) {
			got := readUntil(t, q, bufs, sizes, func(p []byte) bool { return toRemote(p) && len(p) > 52 })
			maxPerRead = max(maxPerRead, len(got))
			segs = append(segs, got...)
		}
		if maxPerRead < 2 {
			t.Errorf("no Read returned more than one segment: TSO super-packets not seen")
		}
		next := isn + 1
		for i, s := range segs {
			if !validIPv4(s) {
				t.Fatalf("segment %d has a wrong checksum or length: %x", i, s[:40])
			}
			hl := 20 + int(s[32]>>4)*4
			if seq := binary.BigEndian.Uint32(s[24:]); seq != next {
				t.Fatalf("segment %d: seq %d, want %d", i, seq, next)
			}
			if !bytes.Equal(s[hl:], data[next-isn-1:int(next-isn-1)+len(s)-hl]) {
				t.Fatalf("segment %d carries the wrong bytes", i)
			}
			next += uint32(len(s) - hl)
		}

		// TUN to kernel: three segments written at once are coalesced
		// into one super-packet, which the kernel must accept.
		var w [][]byte
		in := payload(3*1000, 9)
		for i := range 3 {
			f := uint8(tcpFlagACK)
			if i == 2 {
				f |= tcpFlagPSH
			}
			w = append(w, reply(1001+uint32(i*1000), f, in[i*1000:(i+1)*1000]))
		}
		var g groTable
		g.tcp = true
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

// TestUDPThroughTUN sends a UDP GSO burst into the TUN (USO read) and
// writes a UDP train back (USO write).
func TestUDPThroughTUN(t *testing.T) {
	withDevice(t, 1, func(d *Device, _ *testbed.Host) {
		q := d.Queues[0]
		bufs := make([][]byte, q.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, Headroom+65535)
		}
		sizes := make([]int, len(bufs))
		ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: tunAddr.AsSlice(), Port: 7777})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		// 10 datagrams of 1000 bytes in one sendmsg (UDP_SEGMENT).
		msg := payload(10*1000, 5)
		if err := sendGSO(ln, msg, 1000, &net.UDPAddr{IP: remote.AsSlice(), Port: 9999}); err != nil {
			t.Fatal(err)
		}
		var got [][]byte
		for len(got) < 10 {
			got = append(got, readUntil(t, q, bufs, sizes, func(p []byte) bool {
				return len(p) > 28 && p[0] == 0x45 && p[9] == protoUDP && binary.BigEndian.Uint16(p[22:]) == 9999
			})...)
		}
		for i, p := range got {
			if !validIPv4(p) || !bytes.Equal(p[28:], msg[i*1000:(i+1)*1000]) {
				t.Fatalf("datagram %d invalid or wrong: %x", i, p[:28])
			}
		}
		var w [][]byte
		for i := range 4 {
			p := udpFlow(uint16(i), payload(900, byte(i)))
			p.src, p.dst, p.sport, p.dport = remote.As4(), tunAddr.As4(), 9999, 7777
			w = append(w, append(make([]byte, Headroom), p.build(t)...))
		}
		if n, err := q.Write(w, Headroom); n != 4 || err != nil {
			t.Fatalf("Write: %d, %v", n, err)
		}
		ln.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2000)
		for i := range 4 {
			n, err := ln.Read(buf)
			if err != nil || !bytes.Equal(buf[:n], payload(900, byte(i))) {
				t.Fatalf("datagram %d: %d bytes, %v", i, n, err)
			}
		}
	})
}

// TestReadBatches checks that with offloads one Read takes every packet
// already queued, and that a super-packet with more segments than the
// buffers left waits whole for the next Read instead of being dropped.
func TestReadBatches(t *testing.T) {
	withDevice(t, 1, func(d *Device, _ *testbed.Host) {
		if !d.Offloads.VnetHdr {
			t.Skip("the kernel refused IFF_VNET_HDR")
		}
		q := d.Queues[0]
		ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: tunAddr.AsSlice(), Port: 7777})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		to := &net.UDPAddr{IP: remote.AsSlice(), Port: 9999}
		ours := func(p []byte) bool {
			return len(p) > 28 && p[0] == 0x45 && p[9] == protoUDP && binary.BigEndian.Uint16(p[22:]) == 9999
		}

		// The datagrams are in the TUN's queue once WriteTo returns.
		const small = 20
		for i := range small {
			if _, err := ln.WriteTo(payload(64, byte(i)), to); err != nil {
				t.Fatal(err)
			}
		}
		// Buffers as the router sizes them: one for a super-packet read
		// in place, the others for one packet of the MTU (1472).
		bufs := make([][]byte, q.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, Headroom+1472)
		}
		bufs[0] = make([]byte, Headroom+65535)
		sizes := make([]int, len(bufs))
		got := readUntil(t, q, bufs, sizes, ours)
		if len(got) != small {
			t.Fatalf("first Read returned %d of the %d queued datagrams", len(got), small)
		}
		for i, p := range got {
			if !validIPv4(p) || !bytes.Equal(p[28:], payload(64, byte(i))) {
				t.Fatalf("datagram %d invalid or wrong: %x", i, p[:28])
			}
		}

		// Two datagrams, then a 10-segment train, read with 11 buffers:
		// with USO the train is one super-packet that no longer fits.
		const segs, size = 10, 1000
		for i := range 2 {
			if _, err := ln.WriteTo(payload(64, byte(100+i)), to); err != nil {
				t.Fatal(err)
			}
		}
		train := payload(segs*size, 7)
		if err := sendGSO(ln, train, size, to); err != nil {
			t.Fatal(err)
		}
		bufs, sizes = bufs[:segs+1], sizes[:segs+1]
		var reads [][][]byte
		for n := 0; n < 2+segs; {
			r := readUntil(t, q, bufs, sizes, ours)
			reads = append(reads, r)
			n += len(r)
		}
		var all [][]byte
		for _, r := range reads {
			all = append(all, r...)
		}
		if len(all) != 2+segs {
			t.Fatalf("read %d datagrams, want %d", len(all), 2+segs)
		}
		for i, p := range all {
			want := payload(64, byte(100+i))
			if i >= 2 {
				want = train[(i-2)*size : (i-1)*size]
			}
			if !validIPv4(p) || !bytes.Equal(p[28:], want) {
				t.Fatalf("datagram %d invalid or wrong: %x", i, p[:28])
			}
		}
		if d.Offloads.USO && (len(reads) != 2 || len(reads[0]) != 2) {
			t.Errorf("reads of %d datagrams each, want 2 and then the %d segments", lens(reads), segs)
		}

		// A datagram, then a train: the train, read after the first
		// packet, is a super-packet larger than the MTU-sized buffer it
		// would go to, and must come whole, split into the buffers left.
		if _, err := ln.WriteTo(payload(64, 200), to); err != nil {
			t.Fatal(err)
		}
		if err := sendGSO(ln, train, size, to); err != nil {
			t.Fatal(err)
		}
		bufs, sizes = bufs[:cap(bufs)], sizes[:cap(sizes)]
		all = all[:0]
		for len(all) < 1+segs {
			all = append(all, readUntil(t, q, bufs, sizes, ours)...)
		}
		for i, p := range all {
			want := payload(64, 200)
			if i >= 1 {
				want = train[(i-1)*size : i*size]
			}
			if !validIPv4(p) || !bytes.Equal(p[28:], want) {
				t.Fatalf("after a datagram: datagram %d invalid or wrong: %x", i, p[:min(len(p), 28)])
			}
		}
	})
}

func lens(reads [][][]byte) []int {
	var l []int
	for _, r := range reads {
		l = append(l, len(r))
	}
	return l
}
