package fastpath

import "fmt"

// Counter indexes, as enum counter in fastpath.c.
const (
	cOutPackets = iota
	cOutBytes
	cInPackets
	cInBytes
	cPassNoRoute
	cPassTTL
	cPassNotSimple
	cPassPeer
	cPassFIB
	cPassIn
	cDropStrict
	cDropEncap
	cProbesAnswered
	cProbeAnswers
	cCaptureLost
	cDropHandoff
	cHandoff
	numCounters
)

// Stats are the programs' counters summed over CPUs. Packets and bytes
// count inner packets; a TSO super-packet counts once.
type Stats struct {
	TxPackets, TxBytes uint64 // encapsulated and sent to peers
	RxPackets, RxBytes uint64 // decapsulated into the TUN

	// Packets handed to the userspace router, by reason.
	PassNoRoute   uint64 // no peer owns the destination (ICMP net unreachable is userspace's)
	PassTTL       uint64 // TTL would reach 0 (time exceeded is userspace's)
	PassNotSimple uint64 // IP options, fragments or not IPv4
	PassPeer      uint64 // peer not known to decapsulate in the kernel
	PassFIB       uint64 // no route or neighbour entry for the peer yet
	PassIn        uint64 // datagrams to the port left to the socket

	DropStrictSource uint64 // --strict-source
	DropEncap        uint64 // the skb could not be grown or written
	DropHandoff      uint64 // datagrams from outside for the handoff device's port
	Handoff          uint64 // super-packets handed to the handoff device (part of RxPackets)

	ProbesAnswered uint64 // probes from peers this node answered
	ProbeAnswers   uint64 // answers from peers to this node's probes
	CaptureLost    uint64 // capture records lost to a full ring
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
		TxPackets: sum[cOutPackets], TxBytes: sum[cOutBytes],
		RxPackets: sum[cInPackets], RxBytes: sum[cInBytes],
		PassNoRoute: sum[cPassNoRoute], PassTTL: sum[cPassTTL], PassNotSimple: sum[cPassNotSimple],
		PassPeer: sum[cPassPeer], PassFIB: sum[cPassFIB], PassIn: sum[cPassIn],
		DropStrictSource: sum[cDropStrict], DropEncap: sum[cDropEncap], DropHandoff: sum[cDropHandoff], Handoff: sum[cHandoff],
		ProbesAnswered: sum[cProbesAnswered], ProbeAnswers: sum[cProbeAnswers],
		CaptureLost: sum[cCaptureLost],
	}, nil
}
