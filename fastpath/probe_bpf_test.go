package fastpath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/flannel-go/flannel-go/internal/probe"
)

// probeFrame is a probe of type typ from 192.0.2.1 to 192.0.2.2:8285.
func probeFrame(typ byte) []byte {
	payload := make([]byte, 16)
	copy(payload, probe.Magic[:])
	payload[7] = typ
	binary.BigEndian.PutUint64(payload[8:], 42)
	return udpFrame(8285, payload)
}

// runIngress runs the ingress program on frame and returns its verdict
// and output.
func runIngress(t *testing.T, objs *bpfObjects, frame []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+128)}
	ret, err := objs.FlannelIngress.Run(opts)
	if err != nil {
		t.Fatal(err)
	}
	return ret, opts.DataOut
}

// TestProbeAnswered: an ask comes back as an answer, addresses swapped,
// out of the interface it came in on.
func TestProbeAnswered(t *testing.T) {
	objs := ingressProgram(t)
	ret, out := runIngress(t, objs, probeFrame(byte(probe.FastPathAsk)))
	if ret != tcRedirect {
		t.Fatalf("ask: program returned %d, want TC_ACT_REDIRECT", ret)
	}
	if src, dst := netip.AddrFrom4([4]byte(out[26:30])), netip.AddrFrom4([4]byte(out[30:34])); src.String() != "192.0.2.2" || dst.String() != "192.0.2.1" {
		t.Errorf("answer from %s to %s, want 192.0.2.2 to 192.0.2.1", src, dst)
	}
	if probe.Type(out[42+7]) != probe.FastPathAnswer {
		t.Errorf("answer type %d, want %d", out[42+7], probe.FastPathAnswer)
	}
}

// TestNoKernelDecap: a node of a dual-stack network whose kernel lacks
// the decap flags decapsulates inner IPv6 only through the handoff
// device; once that is off, it answers no probe and sends nothing from
// the kernel (its datagrams would vouch for it), counting both.
func TestNoKernelDecap(t *testing.T) {
	objs := loadPrograms(t, func(s *settings) {
		s.carryIPv6 = true
		s.features &^= DecapFlags
		s.localAddr = netip.MustParseAddr("192.0.2.2")
	})
	if ret, _ := runIngress(t, objs, probeFrame(byte(probe.FastPathAsk))); ret != tcRedirect {
		t.Fatalf("with the handoff device: ask not answered (%d)", ret)
	}
	if err := objs.HandoffOff.Put(uint32(0), uint32(1)); err != nil {
		t.Fatal(err)
	}
	if ret, _ := runIngress(t, objs, probeFrame(byte(probe.FastPathAsk))); ret != tcOK {
		t.Errorf("without decapsulation of IPv6: ask answered (%d), want TC_ACT_OK", ret)
	}
	putRoute6(t, objs, "2001:db8:100:2::/64", "192.0.2.1")
	pkt := packet6("2001:db8:100:1::2", "2001:db8:100:2::2", 6, 64)
	ret, err := objs.FlannelEgress.Run(&ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+64)})
	if err != nil {
		t.Fatal(err)
	}
	if ret != tcOK {
		t.Errorf("egress without decapsulation of IPv6 returned %d, want TC_ACT_OK", ret)
	}
	if n := counter(t, objs, bpfCounterC_PASS_NO_KERNEL_DECAP); n != 2 {
		t.Errorf("no_kernel_decap counted %d, want 2 (the ask and the packet)", n)
	}
}

// TestHeartbeat: attached as cls_bpf filters, the programs act only while
// the heartbeat is fresh; with a stale one they pass every packet
// unchanged and answer no probe (flanneld died).
func TestHeartbeat(t *testing.T) {
	objs := loadPrograms(t, func(s *settings) { s.heartbeat = true })
	frame, _ := datagram(8285)
	for _, tc := range []struct {
		name  string
		beat  uint64
		alive bool
	}{
		{"never", 0, false},
		{"fresh", clock(t), true},
		{"stale", clock(t) - uint64(2*heartbeatValid), false},
	} {
		if err := objs.Heartbeat.Put(uint32(0), tc.beat); err != nil {
			t.Fatal(err)
		}
		ask, _ := runIngress(t, objs, probeFrame(byte(probe.FastPathAsk)))
		data, out := runIngress(t, objs, frame)
		if tc.alive {
			if ask != tcRedirect || len(out) == len(frame) {
				t.Errorf("%s heartbeat: ask %d, datagram out %d bytes; want answered and handed off", tc.name, ask, len(out))
			}
			continue
		}
		if ask != tcOK || data != tcOK || string(out) != string(frame) {
			t.Errorf("%s heartbeat: ask %d, datagram %d changed %v; want both passed unchanged", tc.name, ask, data, string(out) != string(frame))
		}
	}
}

// TestProbeAnswerNonce: an answer stamps its sender's entry only when it
// carries the nonce of this node's last ask to that sender; any other
// (late, or forged by a host that did not see the ask) is dropped and
// counted.
func TestProbeAnswerNonce(t *testing.T) {
	objs := ingressProgram(t)
	key := be32(netip.MustParseAddr("192.0.2.1"))
	if err := objs.Peers.Put(key, bpfPeer{}); err != nil {
		t.Fatal(err)
	}
	answer := func(nonce uint64) []byte {
		m := probe.Message{Type: probe.FastPathAnswer, Nonce: nonce}.Marshal()
		return udpFrame(8285, m[:])
	}
	if err := objs.Asks.Put(key, probe.WireNonce(41)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		nonce uint64
		stamp bool
	}{{42, false}, {41, true}} {
		if err := objs.Peers.Put(key, bpfPeer{}); err != nil {
			t.Fatal(err)
		}
		if ret, _ := runIngress(t, objs, answer(tc.nonce)); ret != 2 { // TC_ACT_SHOT
			t.Errorf("answer with nonce %d: program returned %d, want TC_ACT_SHOT", tc.nonce, ret)
		}
		if got := answered(t, objs, "192.0.2.1") != 0; got != tc.stamp {
			t.Errorf("answer with nonce %d (asked 41): stamped %v, want %v", tc.nonce, got, tc.stamp)
		}
	}
	if n := counter(t, objs, bpfCounterC_DROP_PROBE_ANSWER); n != 1 {
		t.Errorf("stale answers counted %d, want 1", n)
	}
}
