package router

import (
	"encoding/binary"

	"github.com/flannel-go/flannel-go/internal/inet"
	"github.com/flannel-go/flannel-go/internal/probe"
	"net/netip"
	"testing"
	"unsafe"
)

// FuzzIngress feeds arbitrary datagrams from a known peer through the
// ingress checks: they must never panic, and whatever passes must be a
// sane IPv4 packet no longer than the datagram.
func FuzzIngress(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 63, 17, 0, 0, 198, 18, 5, 7, 198, 18, 32, 0})
	f.Add([]byte{0x4f, 0, 0, 20})
	w := testWorker(f, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxDatagram {
			return
		}
		n := loadUDP(t, w, []netip.Addr{peerA}, [][]byte{data})
		if k := w.ingressBatch(w.r.table.Load(), n); k == 1 {
			p := w.inWrite[0][off:]
			if len(p) > len(data) || len(p) < ipv4MinHeader || p[0]>>4 != 4 || int(p[0]&0xf)*4 > len(p) {
				t.Fatalf("passed a bad packet %x", p)
			}
		}
	})
}

// FuzzEgress feeds arbitrary TUN packets through the egress path; a packet
// that leaves must have its TTL lowered and a valid header checksum if it
// had one.
func FuzzEgress(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 32, 5, 198, 18, 5, 7})
	f.Add([]byte{0x46, 0, 0, 28, 0, 0, 0, 0, 1, 1, 0, 0, 198, 18, 32, 5, 198, 18, 99, 5, 1, 1, 1, 1, 3, 0, 0, 0})
	w := testWorker(f, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxDatagram {
			return
		}
		valid := len(data) >= 20 && int(data[0]&0xf)*4 <= len(data) && inet.Checksum(data[:max(20, int(data[0]&0xf)*4)]) == 0
		n := loadTUN(w, [][]byte{data})
		nout, nicmp := w.egressBatch(w.r.table.Load(), n)
		if nout == 1 {
			if w.outN != 1 || len(w.outMsgs[0].Buffers) != 1 {
				t.Fatalf("one packet became %d messages", w.outN)
			}
			p := w.outMsgs[0].Buffers[0]
			if p[8] != data[8]-1 {
				t.Fatalf("TTL %d -> %d", data[8], p[8])
			}
			if valid && inet.Checksum(p[:int(p[0]&0xf)*4]) != 0 {
				t.Fatalf("checksum broken: %x", p)
			}
		}
		if nicmp == 1 {
			p := w.icmpOut[0][off:]
			if inet.Checksum(p[:20]) != 0 || inet.Checksum(p[20:]) != 0 {
				t.Fatalf("ICMP checksums invalid: %x", p)
			}
		}
	})
}

// FuzzIngressGRO splits arbitrary UDP_GRO messages: never a panic, and
// every packet that passes lies inside the message and is a sane IPv4
// packet no longer than its segment.
func FuzzIngressGRO(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 63, 17, 0, 0, 198, 18, 5, 7, 198, 18, 32, 0,
		0x45, 0, 0, 20, 0, 0, 0, 0, 63, 17, 0, 0, 198, 18, 5, 7, 198, 18, 32, 0}, uint16(20))
	f.Add([]byte{0x45, 0, 0, 21, 0, 0, 0, 0, 63, 17, 0, 0, 198, 18, 5, 7, 198, 18, 32, 0, 9}, uint16(7))
	w := testWorker(f, false)
	f.Fuzz(func(t *testing.T, data []byte, gso uint16) {
		if len(data) > maxDatagram {
			return
		}
		pushGRO(w, peerA, int(gso), [][]byte{data})
		k := w.ingressBatch(w.r.table.Load(), readUDP(t, w))
		seg := int(gso)
		if seg == 0 {
			seg = len(data)
		}
		if seg > 0 && k > (len(data)+seg-1)/seg {
			t.Fatalf("%d packets from %d bytes in segments of %d", k, len(data), gso)
		}
		for i := range k {
			p := w.inWrite[i][off:]
			start := int(uintptr(unsafe.Pointer(&p[0])) - uintptr(unsafe.Pointer(&w.inBufs[0][off])))
			if start < 0 || start%seg != 0 || start+len(p) > len(data) || len(p) > seg ||
				len(p) < ipv4MinHeader || p[0]>>4 != 4 || int(p[0]&0xf)*4 > len(p) {
				t.Fatalf("passed a bad packet at %d: %x", start, p)
			}
		}
	})
}

// fuzzIPv6Seed is a valid IPv6 UDP packet from 2001:db8:100:20::5 to
// 2001:db8:100:5::7 (peer A's subnet), hop limit 64.
var fuzzIPv6Seed = []byte{
	0x60, 0, 0, 0, 0, 12, 17, 64,
	0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 5,
	0x20, 0x01, 0x0d, 0xb8, 0x01, 0, 0, 0x05, 0, 0, 0, 0, 0, 0, 0, 7,
	0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, 'p', 'i', 'n', 'g',
}

// FuzzEgress6 feeds arbitrary TUN packets through a dual-stack router's
// egress: an IPv6 packet that leaves has its hop limit lowered and nothing
// else changed, and every ICMPv6 error is at most 1280 bytes, to the
// offender's source, with a valid checksum.
func FuzzEgress6(f *testing.F) {
	f.Add(fuzzIPv6Seed)
	f.Add(append(append([]byte{}, fuzzIPv6Seed[:7]...), append([]byte{1}, fuzzIPv6Seed[8:]...)...)) // hop limit 1
	w, _ := dualWorker(f, false, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxDatagram {
			return
		}
		n := loadTUN(w, [][]byte{data})
		nout, nicmp := w.egressBatch(w.r.table.Load(), n)
		if nout == 1 && data[0]>>4 == 6 {
			p := w.outMsgs[0].Buffers[0]
			if p[7] != data[7]-1 || string(p[:7]) != string(data[:7]) || string(p[8:]) != string(data[8:len(p)]) {
				t.Fatalf("sent %x for %x", p, data)
			}
		}
		if nicmp == 1 && data[0]>>4 == 6 {
			p := w.icmpOut[0][off:]
			if len(p) > icmp6MaxLen || len(p) < ipv6Header+icmpHeaderLen || string(p[24:40]) != string(data[8:24]) {
				t.Fatalf("bad ICMPv6 error %x", p)
			}
			if inet.Fold(inet.Sum16(p[ipv6Header:], pseudoSum6(p, protoICMPv6, len(p)-ipv6Header))) != 0xffff {
				t.Fatalf("ICMPv6 checksum invalid: %x", p)
			}
		}
	})
}

// FuzzIngress6 feeds arbitrary datagrams from a known peer through a
// dual-stack router's ingress checks, probes included: never a panic, and
// whatever passes is a sane IPv4 or IPv6 packet no longer than the
// datagram.
func FuzzIngress6(f *testing.F) {
	f.Add(fuzzIPv6Seed)
	ask := probeMsg(probe.IPv6Ask, 42)
	f.Add(ask[:])
	w, _ := dualWorker(f, true, false)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxDatagram {
			return
		}
		n := loadUDP(t, w, []netip.Addr{peerA6}, [][]byte{data})
		if k := w.ingressBatch(w.r.table.Load(), n); k == 1 {
			p := w.inWrite[0][off:]
			switch {
			case len(p) > len(data):
				t.Fatalf("passed %d bytes of a %d-byte datagram", len(p), len(data))
			case p[0]>>4 == 6:
				if len(p) < ipv6Header || len(p) != ipv6Header+int(binary.BigEndian.Uint16(p[4:6])) {
					t.Fatalf("passed a bad IPv6 packet %x", p)
				}
			case p[0]>>4 != 4 || len(p) < ipv4MinHeader || int(p[0]&0xf)*4 > len(p):
				t.Fatalf("passed a bad packet %x", p)
			}
		}
	})
}
