package fastpath

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

const testValidity = 6 * time.Second

// answered is what the peers map holds for ip.
func answered(t *testing.T, objs *bpfObjects, ip string) uint64 {
	t.Helper()
	var v bpfPeer
	if err := objs.Peers.Lookup(be32(netip.MustParseAddr(ip)), &v); err != nil {
		t.Fatal(err)
	}
	return v.Answered
}

func clock(t *testing.T) uint64 {
	t.Helper()
	now, err := monotonicNow()
	if err != nil {
		t.Fatal(err)
	}
	return now
}

// TestIngressVouches: a datagram whose outer UDP checksum is zero (what
// the egress program sends; no UDP socket does) renews its sender's
// answer, also one never given or reset; one with a checksum does not,
// and a fresh answer is not rewritten for every packet.
func TestIngressVouches(t *testing.T) {
	objs := loadPrograms(t, func(s *settings) { s.answerValid = testValidity })
	const sender = "192.0.2.1"
	key := be32(netip.MustParseAddr(sender))
	second := uint64(time.Second)
	for _, tc := range []struct {
		name     string
		age      uint64 // 0: no answer yet
		checksum uint16
		renewed  bool
	}{
		{"never answered, from its kernel", 0, 0, true},
		{"old answer, from its kernel", second, 0, true},
		{"old answer, from a socket", second, 0x1234, false},
		{"never answered, from a socket", 0, 0x1234, false},
		{"fresh answer, from its kernel", uint64(testValidity / 16), 0, false},
	} {
		var at uint64
		if tc.age != 0 {
			at = clock(t) - tc.age
		}
		if err := objs.Peers.Put(key, bpfPeer{Answered: at}); err != nil {
			t.Fatal(err)
		}
		frame, _ := datagram(8285)
		binary.BigEndian.PutUint16(frame[14+20+6:], tc.checksum)
		before := clock(t)
		if _, err := objs.FlannelIngress.Run(&ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+64)}); err != nil {
			t.Fatal(err)
		}
		got := answered(t, objs, sender)
		if renewed := got >= before; renewed != tc.renewed || !renewed && got != at {
			t.Errorf("%s: answer %d -> %d (clock %d before the packet), want renewed %v", tc.name, at, got, before, tc.renewed)
		}
	}
}

// TestEgressAnswerAge: the egress program takes packets for a peer whose
// answer is fresh, also one written after the program read its clock
// (another CPU renewing it), and leaves them to userspace once the answer
// is older than its validity. The test run has no underlay, so a packet
// the program takes ends at the FIB lookup.
func TestEgressAnswerAge(t *testing.T) {
	objs := loadPrograms(t, func(s *settings) {
		s.localAddr = netip.MustParseAddr("192.0.2.1")
		s.answerValid = testValidity
	})
	putRoute6(t, objs, "2001:db8:100:2::/64", "192.0.2.2")
	key := be32(netip.MustParseAddr("192.0.2.2"))
	// See TestEgressIPv6Passes for the source.
	pkt := packet6("2001:db8:86dd::2", "2001:db8:100:2::2", 6, 64)
	for _, tc := range []struct {
		name  string
		at    func(now uint64) uint64
		taken bool
	}{
		{"fresh", func(now uint64) uint64 { return now - uint64(time.Second) }, true},
		{"from the future", func(now uint64) uint64 { return now + uint64(time.Second) }, true},
		{"expired", func(now uint64) uint64 { return now - uint64(testValidity) - uint64(time.Second) }, false},
	} {
		if err := objs.Peers.Put(key, bpfPeer{Answered: tc.at(clock(t))}); err != nil {
			t.Fatal(err)
		}
		peer, fib := counter(t, objs, bpfCounterC_PASS_PEER), fibPasses(t, objs)
		if _, err := objs.FlannelEgress.Run(&ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+64)}); err != nil {
			t.Fatal(err)
		}
		peer, fib = counter(t, objs, bpfCounterC_PASS_PEER)-peer, fibPasses(t, objs)-fib
		if taken := fib == 1 && peer == 0; taken != tc.taken {
			t.Errorf("%s: passed for the peer %d, at the FIB lookup %d; want taken %v", tc.name, peer, fib, tc.taken)
		}
	}
}

// TestAnswerFresh checks the age and validity of an answer as userspace
// reads it.
func TestAnswerFresh(t *testing.T) {
	const iv = 2 * time.Second
	s := uint64(time.Second)
	for _, tc := range []struct {
		name          string
		answered, now uint64
		age           time.Duration
		ok            bool
	}{
		{"never", 0, 10 * s, 0, false},
		{"fresh", 9 * s, 10 * s, time.Second, true},
		{"at the limit", 4 * s, 10 * s, 3 * iv, true},
		{"expired", 3 * s, 10 * s, 0, false},
		{"written after the clock was read", 11 * s, 10 * s, 0, true},
	} {
		age, ok := answerFresh(tc.answered, tc.now, iv)
		if age != tc.age || ok != tc.ok {
			t.Errorf("%s: answerFresh(%d, %d) = %v, %v; want %v, %v", tc.name, tc.answered, tc.now, age, ok, tc.age, tc.ok)
		}
	}
}

// fibPasses counts the packets passed at the FIB lookup, which in a test
// run finds no neighbour or no route for the peer.
func fibPasses(t *testing.T, objs *bpfObjects) uint64 {
	t.Helper()
	return counter(t, objs, bpfCounterC_PASS_NO_NEIGH) + counter(t, objs, bpfCounterC_PASS_NO_UNDERLAY_ROUTE)
}
