package router

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"
)

// maxDenseBits is the largest number of subnet-index bits (SubnetLen minus
// the network's prefix length) indexed by a flat slice: 65,536 subnets,
// 256 KiB. Larger spaces use a map.
const maxDenseBits = 16

// table is an immutable route table snapshot. Workers load it with one
// atomic read per batch and never lock; SetRoutes builds a new one.
//
// Flannel's subnets all have the network's SubnetLen and never overlap, so
// a destination's subnet number (the address bits between the network
// prefix and SubnetLen) indexes the peer directly. Routes of any other
// length inside the network (left over from a changed SubnetLen) are kept
// in short lists so that lookup stays a longest-prefix match.
type table struct {
	netAddr uint32
	netMask uint32
	shift   uint   // 32 - SubnetLen
	idxMask uint32 // (1 << index bits) - 1

	dense  []uint32          // peer per subnet number, 0 = no route
	sparse map[uint32]uint32 // subnet number -> peer, when the index is wider than maxDenseBits

	longer  []prefixRoute // longer than SubnetLen, longest first
	shorter []prefixRoute // shorter than SubnetLen, longest first

	peers map[uint32]struct{} // PublicIPs allowed to send to us
}

type prefixRoute struct {
	addr, mask uint32
	bits       int
	peer       uint32
}

func be32(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

func mask32(bits int) uint32 {
	return uint32(uint64(0xffffffff) << (32 - bits))
}

// newTable builds the table for routes within network, whose subnets have
// subnetLen bits. Routes outside the network or with an unusable peer are
// returned as rejected and left out.
func newTable(network netip.Prefix, subnetLen int, routes []Route) (t *table, rejected []Route) {
	network = network.Masked()
	idxBits := subnetLen - network.Bits()
	t = &table{
		netAddr: be32(network.Addr().As4()),
		netMask: mask32(network.Bits()),
		shift:   uint(32 - subnetLen),
		idxMask: uint32(uint64(1)<<idxBits - 1),
		peers:   make(map[uint32]struct{}),
	}
	if idxBits <= maxDenseBits {
		t.dense = make([]uint32, 1<<idxBits)
	} else {
		t.sparse = make(map[uint32]uint32)
	}
	odd := make(map[netip.Prefix]int) // index in longer or shorter, so a later route for a prefix replaces it
	for _, r := range routes {
		peer := r.Peer.Unmap()
		if !r.Subnet.IsValid() || !r.Subnet.Addr().Unmap().Is4() || !peer.Is4() || peer.IsUnspecified() {
			rejected = append(rejected, r)
			continue
		}
		sub := netip.PrefixFrom(r.Subnet.Addr().Unmap(), r.Subnet.Bits()).Masked()
		if sub.Bits() < network.Bits() || !network.Contains(sub.Addr()) {
			rejected = append(rejected, r)
			continue
		}
		p := be32(peer.As4())
		a := be32(sub.Addr().As4())
		t.peers[p] = struct{}{}
		switch {
		case sub.Bits() == subnetLen:
			idx := (a >> t.shift) & t.idxMask
			if t.dense != nil {
				t.dense[idx] = p
			} else {
				t.sparse[idx] = p
			}
		default:
			list := &t.shorter
			if sub.Bits() > subnetLen {
				list = &t.longer
			}
			if i, ok := odd[sub]; ok {
				(*list)[i].peer = p
				continue
			}
			odd[sub] = len(*list)
			*list = append(*list, prefixRoute{a, mask32(sub.Bits()), sub.Bits(), p})
		}
	}
	byLength := func(x, y prefixRoute) int { return cmp.Compare(y.bits, x.bits) }
	slices.SortStableFunc(t.longer, byLength)
	slices.SortStableFunc(t.shorter, byLength)
	return t, rejected
}

// lookup returns the peer for destination dst, or 0 if there is no route.
func (t *table) lookup(dst uint32) uint32 {
	for i := range t.longer {
		if dst&t.longer[i].mask == t.longer[i].addr {
			return t.longer[i].peer
		}
	}
	if dst&t.netMask == t.netAddr {
		idx := (dst >> t.shift) & t.idxMask
		if t.dense != nil {
			if p := t.dense[idx]; p != 0 {
				return p
			}
		} else if p, ok := t.sparse[idx]; ok {
			return p
		}
	}
	for i := range t.shorter {
		if dst&t.shorter[i].mask == t.shorter[i].addr {
			return t.shorter[i].peer
		}
	}
	return 0
}

// isPeer reports whether src is the PublicIP of a current route.
func (t *table) isPeer(src uint32) bool {
	_, ok := t.peers[src]
	return ok
}
