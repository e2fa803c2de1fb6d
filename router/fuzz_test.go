//go:build linux

package router

import (
	"github.com/flannel-go/flannel-go/internal/inet"
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
