package fastpath

import (
	"fmt"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// counterKind says what a counter of the programs counts.
type counterKind int

const (
	kindTraffic counterKind = iota // packets and bytes carried
	kindPassed                     // packets left to the userspace router
	kindDropped                    // packets the programs dropped
	kindEvent                      // probes, handoffs, capture records lost
)

// counterDef names one value of the programs' enum counter. counters
// holds one per value, in the enum's order (TestCounterTable checks it):
// a new reason is a line in the C enum and a line here, and /metrics and
// docs/metrics.md's list follow.
type counterDef struct {
	id     bpfCounter
	kind   counterKind
	reason string // the metric's reason label (passed and dropped)
	help   string
}

var counters = [...]counterDef{
	{bpfCounterC_OUT_PACKETS, kindTraffic, "", "inner packets encapsulated and sent to peers"},
	{bpfCounterC_OUT_BYTES, kindTraffic, "", "their bytes"},
	{bpfCounterC_IN_PACKETS, kindTraffic, "", "inner packets decapsulated towards the TUN"},
	{bpfCounterC_IN_BYTES, kindTraffic, "", "their bytes"},
	{bpfCounterC_PASS_NO_ROUTE, kindPassed, "no_route", "no peer owns the destination (the router answers ICMP net unreachable)"},
	{bpfCounterC_PASS_TTL, kindPassed, "ttl_exceeded", "the TTL or hop limit would reach 0 (the router answers time exceeded)"},
	{bpfCounterC_PASS_NOT_SIMPLE, kindPassed, "not_simple", "IP options, a fragment, an IPv6 extension header, or not IP"},
	{bpfCounterC_PASS_PEER, kindPassed, "peer_not_kernel", "the peer has not shown that it decapsulates in its kernel (no recent probe answer)"},
	{bpfCounterC_PASS_NO_NEIGH, kindPassed, "no_neighbour", "the underlay has no neighbour entry for the peer or its gateway yet"},
	{bpfCounterC_PASS_NO_UNDERLAY_ROUTE, kindPassed, "no_underlay_route", "the underlay's routing table has no usable route to the peer"},
	{bpfCounterC_PASS_TOO_BIG, kindPassed, "too_big", "not a super-packet, and too big for the underlay's MTU once encapsulated"},
	{bpfCounterC_PASS_OVERSIZE, kindPassed, "oversize", "a super-packet longer than the outer headers' length fields can hold"},
	{bpfCounterC_PASS_ENCAP, kindPassed, "encap_refused", "the kernel refused to make room for the outer headers (bpf_skb_adjust_room)"},
	{bpfCounterC_PASS_UNKNOWN_SENDER, kindPassed, "unknown_sender", "a datagram from an address that holds no lease (the router applies the sender check)"},
	{bpfCounterC_PASS_NOT_ONE_PACKET, kindPassed, "not_one_packet", "a datagram whose payload is not one whole IPv4 or IPv6 packet (for example several datagrams merged by UDP GRO)"},
	{bpfCounterC_PASS_DECAP, kindPassed, "decap_refused", "the kernel refused to remove or rewrite the outer headers (bpf_skb_adjust_room)"},
	{bpfCounterC_PASS_ROUTER_PROBE, kindPassed, "router_probe", "the userspace router's own probes (IPv6 capability)"},
	{bpfCounterC_PASS_NO_KERNEL_DECAP, kindPassed, "no_kernel_decap", "this node cannot decapsulate inner IPv6 in the kernel (no BPF_F_ADJ_ROOM_DECAP_L3 flags, no handoff device), so it neither answers probes nor sends from the kernel"},
	{bpfCounterC_DROP_STRICT, kindDropped, "strict_source", "--strict-source: the inner source is outside the sender's subnets"},
	{bpfCounterC_DROP_ENCAP, kindDropped, "encap_error", "the packet could not be written after it was grown or shrunk"},
	{bpfCounterC_PROBES_ANSWERED, kindEvent, "", "probes from peers this node answered"},
	{bpfCounterC_PROBE_ANSWERS, kindEvent, "", "answers from peers to this node's probes"},
	{bpfCounterC_CAPTURE_LOST, kindEvent, "", "capture records lost to a full ring"},
	{bpfCounterC_DROP_HANDOFF, kindDropped, "handoff_port", "a datagram for the handoff device's port that the ingress program did not hand over"},
	{bpfCounterC_HANDOFF, kindEvent, "", "packets handed to the handoff device (part of the packets in)"},
	{bpfCounterC_DROP_PROBE_ANSWER, kindDropped, "stale_probe_answer", "a probe answer that does not carry the nonce of this node's last ask to its sender (late, or forged)"},
}

const numCounters = int(bpfCounterC_MAX)

// Reason is a reason a program passed a packet to the userspace router or
// dropped it, with its count.
type Reason = dataplane.Reason

// Stats are the programs' counters summed over CPUs. Packets and bytes
// count inner packets; a TSO super-packet counts once.
type Stats struct {
	TxPackets, TxBytes uint64 // encapsulated and sent to peers
	RxPackets, RxBytes uint64 // decapsulated towards the TUN

	Passed  []Reason // left to the userspace router, by reason
	Dropped []Reason // dropped, by reason

	Handoff        uint64 // packets handed to the handoff device (part of RxPackets)
	ProbesAnswered uint64 // probes from peers this node answered
	ProbeAnswers   uint64 // answers from peers to this node's probes
	CaptureLost    uint64 // capture records lost to a full ring
}

// PassReasons and DropReasons are the reasons the programs count, in
// the order Stats lists them.
func PassReasons() []Reason { return reasons(kindPassed, nil) }

// DropReasons: see PassReasons.
func DropReasons() []Reason { return reasons(kindDropped, nil) }

func reasons(k counterKind, sum *[numCounters]uint64) []Reason {
	var out []Reason
	for _, c := range counters {
		if c.kind != k {
			continue
		}
		r := Reason{Name: c.reason, Help: c.help}
		if sum != nil {
			r.Count = sum[c.id]
		}
		out = append(out, r)
	}
	return out
}

// PassedFor is the count of one pass reason, 0 if s has none of that name.
func (s Stats) PassedFor(reason string) uint64 {
	for _, r := range s.Passed {
		if r.Name == reason {
			return r.Count
		}
	}
	return 0
}

// PathStats returns the kernel path's counters (dataplane.Engine).
func (p *Path) PathStats() []dataplane.PathStats {
	s, err := p.Stats()
	if err != nil {
		p.cfg.Logger.Warn("Read the fast path counters", "error", err)
		return nil
	}
	ps := dataplane.PathStats{Path: "kernel", Dropped: s.Dropped, Passed: s.Passed}
	ps.Packets[dataplane.Out], ps.Bytes[dataplane.Out] = s.TxPackets, s.TxBytes
	ps.Packets[dataplane.In], ps.Bytes[dataplane.In] = s.RxPackets, s.RxBytes
	return []dataplane.PathStats{ps}
}

// Stats reads the counters.
func (p *Path) Stats() (Stats, error) {
	var sum [numCounters]uint64
	var vals []uint64
	for i := range uint32(numCounters) {
		if err := p.objs.Stats.Lookup(i, &vals); err != nil {
			return Stats{}, fmt.Errorf("fast path: read counter %d: %w", i, err)
		}
		for _, v := range vals {
			sum[i] += v
		}
	}
	return Stats{
		TxPackets: sum[bpfCounterC_OUT_PACKETS], TxBytes: sum[bpfCounterC_OUT_BYTES],
		RxPackets: sum[bpfCounterC_IN_PACKETS], RxBytes: sum[bpfCounterC_IN_BYTES],
		Passed:         reasons(kindPassed, &sum),
		Dropped:        reasons(kindDropped, &sum),
		Handoff:        sum[bpfCounterC_HANDOFF],
		ProbesAnswered: sum[bpfCounterC_PROBES_ANSWERED],
		ProbeAnswers:   sum[bpfCounterC_PROBE_ANSWERS],
		CaptureLost:    sum[bpfCounterC_CAPTURE_LOST],
	}, nil
}
