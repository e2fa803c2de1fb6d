package router

// Direction says which way a captured packet travels.
type Direction uint8

const (
	// In is a packet from a peer, on its way into the TUN.
	In Direction = iota + 1
	// Out is a packet read from the TUN, on its way to a peer.
	Out
)

func (d Direction) String() string {
	switch d {
	case In:
		return "in"
	case Out:
		return "out"
	}
	return "unknown"
}

// Tap receives a copy of the data plane's inner packets, e.g. to write a
// pcap. Capture is called on the packet path, from several workers at
// once, with each inner packet as a whole IPv4 or IPv6 packet (what a
// LINKTYPE_RAW pcap holds): Out packets as read from the TUN after a
// super-packet was split (before routing and the TTL or hop-limit
// decrement, dropped ones included), In packets from a known peer (any
// sender with AcceptUnknownPeers) after a GRO train was split, before the
// packet checks and before coalescing. Probes are not inner packets and
// are not captured.
// pkt is only valid during the call: Capture must copy what it keeps and
// must not modify it.
type Tap interface {
	Capture(dir Direction, pkt []byte)
}

type tapHolder struct{ t Tap }

// SetTap starts capturing into t, or stops capturing when t is nil.
// Without a tap the packet path pays one atomic load per batch.
func (r *Router) SetTap(t Tap) {
	if t == nil {
		r.tap.Store(nil)
		return
	}
	r.tap.Store(&tapHolder{t})
}
