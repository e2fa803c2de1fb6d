// Package router is flannel-go's data plane: it carries inner IPv4 and IPv6
// packets between the TUN device and the other nodes, one packet per UDP
// datagram (the version nibble tells the families apart), byte-compatible
// with upstream flannel's udp backend. Each TUN queue gets
// a worker with its own SO_REUSEPORT socket (a udp.Conn); workers share
// nothing but an immutable route table they read without locks. The
// package decides what goes where; packages tun and udp move the bytes.
//
// With offloads, a worker reads 64 KB super-packets from the TUN (split
// into packets by package tun), hands each peer's run of packets to its
// connection, which sends it as UDP GSO trains, receives trains with UDP
// GRO and hands them to the TUN to be coalesced again. The kernel still puts one inner packet in each
// datagram on the wire, so peers running upstream flanneld interoperate.
package router

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/probe"
)

// Defaults for zero Config fields.
const (
	DefaultPort         = 8285
	DefaultSocketBuffer = 4 << 20
)

// ICMP error rate limit per worker.
const (
	icmpRate  = 100 // per second
	icmpBurst = 100
)

// Config configures a Router.
type Config struct {
	// Network is the whole IPv4 overlay network, e.g. 198.18.0.0/16;
	// zero (with SubnetLen and OwnSubnet) when the overlay carries no
	// IPv4. At least one of Network and IPv6Network is set.
	Network netip.Prefix
	// SubnetLen is the prefix length of every node's subnet, e.g. 24.
	SubnetLen int
	// OwnSubnet is this node's lease. Its network address is the TUN
	// address and the source of the ICMP errors the router sends.
	OwnSubnet netip.Prefix
	// IPv6Network is the whole IPv6 overlay network, e.g.
	// 2001:db8:100::/48; zero (with IPv6SubnetLen and OwnIPv6Subnet) when
	// the overlay carries no IPv6.
	IPv6Network netip.Prefix
	// IPv6SubnetLen is the prefix length of every node's IPv6 subnet, at
	// most 64 bits longer than IPv6Network's.
	IPv6SubnetLen int
	// OwnIPv6Subnet is this node's IPv6 lease; its network address is the
	// source of the ICMPv6 errors the router sends.
	OwnIPv6Subnet netip.Prefix
	// LocalAddr is the interface address the sockets bind; never
	// unspecified. Its family is the underlay's: an IPv6 LocalAddr (an
	// IPv6-only node with --public-ipv6) sends to the peers' PublicIPv6.
	LocalAddr netip.Addr
	// Port is the UDP port of every node (DefaultPort if 0).
	Port int
	// SocketBuffer is the receive and send buffer size of each socket in
	// bytes (DefaultSocketBuffer if 0).
	SocketBuffer int
	// AcceptUnknownPeers accepts datagrams from any source. By default a
	// datagram whose source is not a current route's Peer is dropped.
	AcceptUnknownPeers bool
	// StrictSource drops a datagram whose inner source address is not in a
	// subnet the sender holds. It stops a member from spoofing other nodes'
	// container addresses, but also drops traffic a node forwards with an
	// outside source preserved (NodePort-style), so it is off by default.
	StrictSource bool
	// MTU is the TUN MTU. It sizes the egress buffers after the first,
	// which take one packet each (0: unknown, every buffer takes 64 KB).
	// Receive buffers hold the largest datagram, so a peer with a larger
	// MTU is never truncated.
	MTU int
	// Logger receives the router's logs (slog.Default() if nil).
	Logger *slog.Logger
	// DisableOffloads sends one datagram per sendmmsg slot and receives
	// without UDP GRO. The TUN's offloads are chosen by tun.Open.
	DisableOffloads bool
	// BusyPoll is how long a worker that found its socket empty keeps
	// checking it without sleeping, counted from the last datagram it
	// received (0: sleep at once). Within it a datagram costs no wake-up.
	BusyPoll time.Duration
	// AQMTarget and AQMInterval drive CoDel on the queues in front of each
	// worker, the TUN queue and the socket's receive queue: once the delay
	// there stood above AQMTarget for AQMInterval, a bulk flow's packet is
	// marked CE or dropped. 0 turns it off.
	AQMTarget, AQMInterval time.Duration
}

// Offloads says which offloads the data plane uses; the TUN ones come from
// the queues, the UDP ones from probing the sockets at New.
type Offloads struct {
	TUNVnetHdr bool // TUN packets carry a virtio-net header
	TUNTSO     bool // TUN reads may be TCP super-packets
	TUNUSO     bool // TUN reads may be UDP super-packets, writes coalesce UDP
	UDPGSO     bool // trains of datagrams leave with one sendmsg (UDP_SEGMENT); turned off at run time if the egress device refuses it
	UDPGRO     bool // trains of datagrams arrive with one recvmmsg slot (UDP_GRO)
}

// Router forwards packets between TUN queues and UDP sockets.
type Router struct {
	cfg       Config
	log       *slog.Logger
	table     atomic.Pointer[table]
	ownAddr   atomic.Uint32            // OwnSubnet.Addr(), big-endian
	ownAddr6  atomic.Pointer[[16]byte] // OwnIPv6Subnet.Addr()
	peerInfo  map[netip.Addr]*peerInfo // the current peers' probe state; setMu
	probe     *probe.Schedule          // asks peers whether they carry IPv6; nil without IPv6
	probeWake chan struct{}
	probeSock *net.UDPConn // the probe's socket, once New opened it
	// sendProbe sends a probe or an answer; New sets it to probeSock's.
	sendProbe func(b []byte, to netip.AddrPort) error

	setMu   sync.Mutex // serialises SetRoutes
	workers []*worker
	started atomic.Bool
	loops   sync.WaitGroup // the workers' goroutines, once Run started them
	tap     atomic.Pointer[tapHolder]

	offloads Offloads // as probed at New

	closeOnce sync.Once
	closeErr  error
}

func (c *Config) check() error {
	if c.Network == (netip.Prefix{}) && c.IPv6Network == (netip.Prefix{}) {
		return errors.New("neither an IPv4 Network nor an IPv6Network: the overlay must carry at least one family")
	}
	if c.Network != (netip.Prefix{}) {
		if err := c.check4(); err != nil {
			return err
		}
	}
	if c.IPv6Network != (netip.Prefix{}) {
		if err := c.check6(); err != nil {
			return err
		}
	}
	if !c.LocalAddr.IsValid() || c.LocalAddr.Is4In6() || c.LocalAddr.IsUnspecified() || c.LocalAddr.Zone() != "" {
		return fmt.Errorf("local address %s: want the IPv4 or IPv6 address of an interface (not unspecified, no zone)", c.LocalAddr)
	}
	if c.Port < 0 || c.Port > 65535 {
		return fmt.Errorf("port %d out of range", c.Port)
	}
	if c.SocketBuffer < 0 {
		return fmt.Errorf("socket buffer size %d is negative", c.SocketBuffer)
	}
	if c.MTU != 0 && c.MTU < 68 {
		return fmt.Errorf("MTU %d is below the IPv4 minimum of 68", c.MTU)
	}
	if c.MTU != 0 && c.IPv6Network.IsValid() && c.MTU < 1280 {
		return fmt.Errorf("MTU %d is below the IPv6 minimum of 1280; an overlay carrying IPv6 needs at least that", c.MTU)
	}
	return nil
}

func (c *Config) check4() error {
	if !c.Network.IsValid() || !c.Network.Addr().Is4() {
		return fmt.Errorf("network %s is not an IPv4 prefix", c.Network)
	}
	if c.SubnetLen < c.Network.Bits() || c.SubnetLen > 32 {
		return fmt.Errorf("SubnetLen %d must be between the network's prefix length %d and 32", c.SubnetLen, c.Network.Bits())
	}
	if !c.OwnSubnet.IsValid() || !c.OwnSubnet.Addr().Is4() {
		return fmt.Errorf("own subnet %s is not an IPv4 prefix", c.OwnSubnet)
	}
	return nil
}

func (c *Config) check6() error {
	if !c.IPv6Network.IsValid() || !c.IPv6Network.Addr().Is6() || c.IPv6Network.Addr().Is4In6() {
		return fmt.Errorf("IPv6 network %s is not an IPv6 prefix", c.IPv6Network)
	}
	n := c.IPv6Network.Bits()
	if c.IPv6SubnetLen < n || c.IPv6SubnetLen > 128 || c.IPv6SubnetLen-n > maxIPv6IndexBits {
		return fmt.Errorf("IPv6SubnetLen %d must be between the IPv6 network's prefix length %d and %d", c.IPv6SubnetLen, n, min(128, n+maxIPv6IndexBits))
	}
	if !c.OwnIPv6Subnet.IsValid() || !c.OwnIPv6Subnet.Addr().Is6() || c.OwnIPv6Subnet.Addr().Is4In6() {
		return fmt.Errorf("own IPv6 subnet %s is not an IPv6 prefix", c.OwnIPv6Subnet)
	}
	return nil
}

func (c *Config) tableConfig() tableConfig {
	return tableConfig{
		net4: c.Network, len4: c.SubnetLen, net6: c.IPv6Network, len6: c.IPv6SubnetLen,
		underlay6: c.LocalAddr.Is6(), port: uint16(c.Port),
	}
}

func newRouter(cfg Config) (*Router, error) {
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.SocketBuffer == 0 {
		cfg.SocketBuffer = DefaultSocketBuffer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("router config: %w", err)
	}
	r := &Router{cfg: cfg, log: cfg.Logger, peerInfo: map[netip.Addr]*peerInfo{}, probeWake: make(chan struct{}, 1),
		sendProbe: func([]byte, netip.AddrPort) error { return nil }}
	t, _ := newTable(cfg.tableConfig(), nil, nil)
	r.table.Store(t)
	r.SetOwnSubnet(cfg.OwnSubnet)
	r.SetOwnIPv6Subnet(cfg.OwnIPv6Subnet)
	if cfg.IPv6Network.IsValid() {
		r.probe = newIPv6Probe(r)
	}
	return r, nil
}

// SetRoutes replaces the route table (and with it the set of peers allowed
// to send) by routes. Workers switch to the new table at their next batch.
// Routes outside both networks or whose peer is not an address of the
// underlay's family are logged and left out. A peer's IPv6 capability
// (PeerIPv6Capable) survives as long as it keeps a route.
func (r *Router) SetRoutes(routes []dataplane.Route) {
	r.setMu.Lock()
	defer r.setMu.Unlock()
	old := r.peerInfo
	r.peerInfo = make(map[netip.Addr]*peerInfo, len(old))
	info := func(a netip.Addr) *peerInfo {
		pi := old[a]
		if pi == nil {
			pi = &peerInfo{}
		}
		r.peerInfo[a] = pi
		return pi
	}
	t, rejected := newTable(r.cfg.tableConfig(), routes, info)
	for _, rt := range rejected {
		r.log.Warn("Ignoring route outside the networks or whose peer is not an address of the underlay's family",
			"subnet", rt.Subnet, "peer", rt.Peer, "network", r.cfg.Network, "ipv6_network", r.cfg.IPv6Network,
			"underlay", r.cfg.LocalAddr)
	}
	r.table.Store(t)
	r.pokeProbe()
}

// ForgetPeers asks the given peers at once whether they carry IPv6: each
// took a lease it did not hold (a restart, a replacement at the same
// address), so its earlier answer may no longer hold. Until it misses the
// asks, it keeps the capability it had.
func (r *Router) ForgetPeers(peers []netip.Addr) {
	if r.probe != nil && len(peers) > 0 {
		r.probe.Recheck(peers)
		r.pokeProbe()
	}
}

// SetOwnSubnet changes the source address of the router's ICMP errors
// after the node's lease moved to subnet p. The caller reconfigures the
// TUN address.
func (r *Router) SetOwnSubnet(p netip.Prefix) {
	if !p.IsValid() {
		return
	}
	r.ownAddr.Store(be32(p.Masked().Addr().Unmap().As4()))
}

// SetOwnIPv6Subnet changes the source address of the router's ICMPv6
// errors (the network address of p) after the node's IPv6 lease moved to
// p. The caller puts that address on the TUN.
func (r *Router) SetOwnIPv6Subnet(p netip.Prefix) {
	if !p.IsValid() {
		return
	}
	a := p.Masked().Addr().As16()
	r.ownAddr6.Store(&a)
}

// PeerIPv6Capable reports what the router knows of whether the node at
// underlay address peer carries IPv6: known once the peer answered the
// router's IPv6 probe (capable) or failed to answer it for about a second
// (not capable: IPv6 packets for its subnets get an ICMPv6 unreachable and
// count as peer_no_ipv6). While unknown, IPv6 is forwarded to it. A peer
// without a current route is unknown.
func (r *Router) PeerIPv6Capable(peer netip.Addr) (capable, known bool) {
	t := r.table.Load()
	i := t.sender(peer)
	if i == 0 {
		return false, false
	}
	switch t.info[i-1].state.Load() {
	case ipv6Capable:
		return true, true
	case ipv6Incapable:
		return false, true
	}
	return false, false
}

// Offloads returns the offloads in use now.
func (r *Router) Offloads() Offloads {
	o := r.offloads
	o.UDPGSO = o.UDPGSO && r.gsoInUse()
	return o
}

// PathStats returns the userspace path's counters (dataplane.Engine).
func (r *Router) PathStats() []dataplane.PathStats {
	s := r.Stats()
	ps := dataplane.PathStats{Path: "user"}
	ps.Packets[dataplane.Out], ps.Bytes[dataplane.Out] = s.TxPackets, s.TxBytes
	ps.Packets[dataplane.In], ps.Bytes[dataplane.In] = s.RxPackets, s.RxBytes
	for r := dropNone + 1; r < numDropReasons; r++ {
		d := dropTable[r]
		ps.Dropped = append(ps.Dropped, dataplane.Reason{Name: d.name, Help: d.help, Count: s.Drops[r]})
	}
	return []dataplane.PathStats{ps}
}

// Stats returns the counters summed over all workers.
func (r *Router) Stats() Stats {
	s := Stats{Offloads: r.Offloads()}
	for _, w := range r.workers {
		s.TxPackets += w.eg.packets.Load()
		s.TxBytes += w.eg.bytes.Load()
		s.TxBatches += w.eg.batches.Load()
		s.RxPackets += w.in.packets.Load()
		s.RxBytes += w.in.bytes.Load()
		s.RxBatches += w.in.batches.Load()
		s.TxBatchPackets += w.eg.batchPackets.Load()
		s.RxBatchPackets += w.in.batchPackets.Load()
		sumBatches(&s.TxBatchSizes, &w.eg)
		sumBatches(&s.RxBatchSizes, &w.in)
		s.TxCEMarked += w.eg.ceMarked.Load()
		s.RxCEMarked += w.in.ceMarked.Load()
		s.addDrops(&w.eg)
		s.addDrops(&w.in)
	}
	for _, w := range r.workers {
		w.stages.addTo(&s.Stages)
	}
	m := map[[2]string]uint64{}
	for _, w := range r.workers {
		w.egErr.addTo(m)
		w.inErr.addTo(m)
	}
	for k, v := range m {
		s.SyscallErrors = append(s.SyscallErrors, SyscallError{Op: k[0], Errno: k[1], Count: v})
	}
	slices.SortFunc(s.SyscallErrors, func(a, b SyscallError) int {
		return cmp.Or(cmp.Compare(a.Op, b.Op), cmp.Compare(a.Errno, b.Errno))
	})
	return s
}

// errStopped is returned by a worker loop whose queue or socket was closed.
var errStopped = errors.New("stopped")

var _ dataplane.Engine = (*Router)(nil)
