package router

import "github.com/flannel-go/flannel-go/internal/dataplane"

// The packets a tap sees: Out packets as read from the TUN after a
// super-packet was split (before routing and the TTL or hop-limit
// decrement, dropped ones included), In packets from a known peer (any
// sender with AcceptUnknownPeers) after a GRO train was split, before the
// packet checks and before coalescing. Probes are not inner packets and
// are not captured.

type tapHolder struct{ t dataplane.Tap }

// SetTap starts capturing into t, or stops capturing when t is nil.
// Without a tap the packet path pays one atomic load per batch.
func (r *Router) SetTap(t dataplane.Tap) error {
	if t == nil {
		r.tap.Store(nil)
		return nil
	}
	r.tap.Store(&tapHolder{t})
	return nil
}
