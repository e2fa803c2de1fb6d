package router

import (
	"cmp"
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// maxDenseBits is the largest number of subnet-index bits (SubnetLen minus
// the network's prefix length) indexed by a flat slice: 65,536 subnets,
// 256 KiB. Larger spaces use a map.
const maxDenseBits = 16

// maxIPv6IndexBits is the widest IPv6 subnet index (IPv6SubnetLen minus
// the IPv6 network's prefix length): the index is one 64-bit word.
const maxIPv6IndexBits = 64

// table is an immutable route table snapshot. Workers load it with one
// atomic read per batch and never lock; SetRoutes builds a new one.
//
// Flannel's subnets all have the network's SubnetLen and never overlap, so
// a destination's subnet number (the address bits between the network
// prefix and SubnetLen) indexes the peer directly. Routes of any other
// length inside the network (left over from a changed SubnetLen) are kept
// in short lists so that lookup stays a longest-prefix match. IPv6 works
// the same way on IPv6Network and IPv6SubnetLen.
//
// A peer is a 1-based index into peers (0: no route), so that both
// underlay families fit the same uint32 and a run of packets to one peer
// is a run of equal indexes.
type table struct {
	v4on    bool // Network configured
	netAddr uint32
	netMask uint32
	shift   uint   // 32 - SubnetLen
	idxMask uint32 // (1 << index bits) - 1

	dense  []uint32          // peer per subnet number, 0 = no route
	sparse map[uint32]uint32 // subnet number -> peer, when the index is wider than maxDenseBits

	longer  []prefixRoute // longer than SubnetLen, longest first
	shorter []prefixRoute // shorter than SubnetLen, longest first

	v6 table6

	// peers are the current routes' peers at the cluster port, in order
	// of first appearance; info[i] is peers[i]'s shared probe state.
	peers []netip.AddrPort
	info  []*peerInfo
	// byAddr4 and byAddr6 map a peer's underlay address to its index:
	// the sender check (only the underlay family's map is filled).
	byAddr4 map[uint32]uint32
	byAddr6 map[[16]byte]uint32
	// v6Peers are the peers that hold an IPv6 subnet: the ones asked
	// whether they carry IPv6.
	v6Peers []uint32
}

type prefixRoute struct {
	addr, mask uint32
	bits       int
	peer       uint32
}

// table6 is the IPv6 half of a table; addresses are two 64-bit words.
type table6 struct {
	on             bool // IPv6Network configured
	netHi, netLo   uint64
	maskHi, maskLo uint64
	// The subnet number is v>>(128-IPv6SubnetLen) masked to the index
	// bits, done on the words with the three shifts below (a Go shift by
	// 64 or more gives 0, which makes it branch-free).
	shHi, shLo, shHiR uint
	idxMask           uint64

	dense  []uint32
	sparse map[uint64]uint32

	longer, shorter []prefixRoute6
}

type prefixRoute6 struct {
	hi, lo, mhi, mlo uint64
	bits             int
	peer             uint32
}

// tableConfig is what a table is built for: the networks, their subnet
// lengths, the underlay family and the cluster port.
type tableConfig struct {
	net4      netip.Prefix // invalid: no IPv4
	len4      int
	net6      netip.Prefix // invalid: no IPv6
	len6      int
	underlay6 bool
	port      uint16
}

func be32(a [4]byte) uint32 { return binary.BigEndian.Uint32(a[:]) }

func mask32(bits int) uint32 {
	return uint32(uint64(0xffffffff) << (32 - bits))
}

// words splits a 16-byte address into its big-endian halves.
func words(a [16]byte) (hi, lo uint64) {
	return binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
}

// mask128 is the mask of a bits-long IPv6 prefix as two words.
func mask128(bits int) (hi, lo uint64) {
	if bits <= 64 {
		return ^uint64(0) << (64 - bits), 0 // a shift by 64 gives 0
	}
	return ^uint64(0), ^uint64(0) << (128 - bits)
}

// newTable builds the table for routes. Routes outside both networks or
// whose peer is not a usable address of the underlay family are returned
// as rejected and left out. info returns the shared probe state of a peer
// (nil: fresh state per table, for tests).
func newTable(c tableConfig, routes []dataplane.Route, info func(netip.Addr) *peerInfo) (t *table, rejected []dataplane.Route) {
	t = &table{byAddr4: make(map[uint32]uint32), byAddr6: make(map[[16]byte]uint32)}
	t.init4(c.net4, c.len4)
	t.v6.init(c.net6, c.len6)
	odd4 := make(map[netip.Prefix]int) // index in longer or shorter, so a later route for a prefix replaces it
	odd6 := make(map[netip.Prefix]int)
	hasV6 := map[uint32]bool{}
	for _, r := range routes {
		peer := t.peerIndex(c, r.Peer, info)
		if peer == 0 || !r.Subnet.IsValid() {
			rejected = append(rejected, r)
			continue
		}
		sub := netip.PrefixFrom(r.Subnet.Addr().Unmap(), r.Subnet.Bits()).Masked()
		switch {
		case sub.Addr().Is4() && c.net4.IsValid() && sub.Bits() >= c.net4.Bits() && c.net4.Contains(sub.Addr()):
			t.add4(sub, c.len4, peer, odd4)
		case sub.Addr().Is6() && c.net6.IsValid() && sub.Bits() >= c.net6.Bits() && c.net6.Contains(sub.Addr()):
			t.v6.add(sub, c.len6, peer, odd6)
			if !hasV6[peer] {
				hasV6[peer] = true
				t.v6Peers = append(t.v6Peers, peer)
			}
		default:
			rejected = append(rejected, r)
		}
	}
	byLength := func(x, y prefixRoute) int { return cmp.Compare(y.bits, x.bits) }
	slices.SortStableFunc(t.longer, byLength)
	slices.SortStableFunc(t.shorter, byLength)
	byLength6 := func(x, y prefixRoute6) int { return cmp.Compare(y.bits, x.bits) }
	slices.SortStableFunc(t.v6.longer, byLength6)
	slices.SortStableFunc(t.v6.shorter, byLength6)
	return t, rejected
}

// peerIndex returns the index of peer a, adding it, or 0 if a is no usable
// address of the underlay family.
func (t *table) peerIndex(c tableConfig, a netip.Addr, info func(netip.Addr) *peerInfo) uint32 {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.Is6() != c.underlay6 || a.Zone() != "" {
		return 0
	}
	if a.Is4() {
		k := be32(a.As4())
		if i, ok := t.byAddr4[k]; ok {
			return i
		}
		t.peers = append(t.peers, netip.AddrPortFrom(a, c.port))
		t.byAddr4[k] = uint32(len(t.peers))
	} else {
		k := a.As16()
		if i, ok := t.byAddr6[k]; ok {
			return i
		}
		t.peers = append(t.peers, netip.AddrPortFrom(a, c.port))
		t.byAddr6[k] = uint32(len(t.peers))
	}
	pi := (*peerInfo)(nil)
	if info != nil {
		pi = info(a)
	}
	if pi == nil {
		pi = &peerInfo{}
	}
	t.info = append(t.info, pi)
	return uint32(len(t.peers))
}

func (t *table) init4(network netip.Prefix, subnetLen int) {
	if !network.IsValid() {
		// Nothing matches: the address 0.0.0.0 finds the empty slot.
		t.netMask, t.dense = 0xffffffff, make([]uint32, 1)
		return
	}
	network = network.Masked()
	idxBits := subnetLen - network.Bits()
	t.v4on = true
	t.netAddr = be32(network.Addr().As4())
	t.netMask = mask32(network.Bits())
	t.shift = uint(32 - subnetLen)
	t.idxMask = uint32(uint64(1)<<idxBits - 1)
	if idxBits <= maxDenseBits {
		t.dense = make([]uint32, 1<<idxBits)
	} else {
		t.sparse = make(map[uint32]uint32)
	}
}

func (t *table) add4(sub netip.Prefix, subnetLen int, p uint32, odd map[netip.Prefix]int) {
	a := be32(sub.Addr().As4())
	if sub.Bits() == subnetLen {
		idx := (a >> t.shift) & t.idxMask
		if t.dense != nil {
			t.dense[idx] = p
		} else {
			t.sparse[idx] = p
		}
		return
	}
	list := &t.shorter
	if sub.Bits() > subnetLen {
		list = &t.longer
	}
	if i, ok := odd[sub]; ok {
		(*list)[i].peer = p
		return
	}
	odd[sub] = len(*list)
	*list = append(*list, prefixRoute{a, mask32(sub.Bits()), sub.Bits(), p})
}

func (t *table6) init(network netip.Prefix, subnetLen int) {
	if !network.IsValid() {
		return
	}
	network = network.Masked()
	idxBits := subnetLen - network.Bits()
	t.on = true
	t.netHi, t.netLo = words(network.Addr().As16())
	t.maskHi, t.maskLo = mask128(network.Bits())
	s := uint(128 - subnetLen)
	t.shHi, t.shLo, t.shHiR = 64-s, s, s-64 // wrapping on purpose: see table6
	t.idxMask = ^uint64(0) >> (64 - idxBits)
	if idxBits == 0 {
		t.idxMask = 0
	}
	if idxBits <= maxDenseBits {
		t.dense = make([]uint32, 1<<idxBits)
	} else {
		t.sparse = make(map[uint64]uint32)
	}
}

func (t *table6) index(hi, lo uint64) uint64 {
	return (hi<<t.shHi | lo>>t.shLo | hi>>t.shHiR) & t.idxMask
}

func (t *table6) add(sub netip.Prefix, subnetLen int, p uint32, odd map[netip.Prefix]int) {
	hi, lo := words(sub.Addr().As16())
	if sub.Bits() == subnetLen {
		idx := t.index(hi, lo)
		if t.dense != nil {
			t.dense[idx] = p
		} else {
			t.sparse[idx] = p
		}
		return
	}
	list := &t.shorter
	if sub.Bits() > subnetLen {
		list = &t.longer
	}
	if i, ok := odd[sub]; ok {
		(*list)[i].peer = p
		return
	}
	odd[sub] = len(*list)
	mhi, mlo := mask128(sub.Bits())
	*list = append(*list, prefixRoute6{hi, lo, mhi, mlo, sub.Bits(), p})
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

// lookup6 returns the peer for the IPv6 destination in the 16 bytes a, or
// 0 if there is no route.
func (t *table) lookup6(a []byte) uint32 {
	v := &t.v6
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:16])
	for i := range v.longer {
		if r := &v.longer[i]; hi&r.mhi == r.hi && lo&r.mlo == r.lo {
			return r.peer
		}
	}
	if v.on && hi&v.maskHi == v.netHi && lo&v.maskLo == v.netLo {
		idx := v.index(hi, lo)
		if v.dense != nil {
			if p := v.dense[idx]; p != 0 {
				return p
			}
		} else if p, ok := v.sparse[idx]; ok {
			return p
		}
	}
	for i := range v.shorter {
		if r := &v.shorter[i]; hi&r.mhi == r.hi && lo&r.mlo == r.lo {
			return r.peer
		}
	}
	return 0
}

// sender returns the index of the peer whose underlay address is a, or 0
// if a holds no current route.
func (t *table) sender(a netip.Addr) uint32 {
	if a.Is4() {
		return t.byAddr4[be32(a.As4())]
	}
	if a.Is4In6() {
		return t.byAddr4[be32(a.Unmap().As4())]
	}
	return t.byAddr6[a.As16()]
}

// peer returns peer index i's address (i > 0).
func (t *table) peer(i uint32) netip.AddrPort { return t.peers[i-1] }
