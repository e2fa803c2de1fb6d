// Package fastpath carries flannel's udp wire format in the kernel: a TC
// egress program on the TUN encapsulates packets for peers and redirects
// them to the underlay interface, a TC ingress program on the underlay
// interface decapsulates datagrams from peers into the TUN. Whatever the
// programs do not handle reaches the userspace router unchanged, so the
// router remains the fallback for every packet.
//
// Inner checksums: packets leave the TUN with CHECKSUM_PARTIAL, and over
// veth (or between VMs of one host) nothing completes them. A receiver that
// decapsulates in its kernel accepts them; a userspace receiver (upstream
// flanneld, our router with the fast path off) would write packets with bad
// checksums into its TUN. So the egress program only takes a packet for a
// peer that recently answered a probe from its own ingress program: a
// 16-byte datagram to the flannel port, which upstream's proxy and the
// userspace router drop as too short to be an IPv4 packet. A datagram from
// the peer's own egress program (outer UDP checksum zero, which no UDP
// socket sends) counts as an answer too.
package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/flannel-go/flannel-go/internal/probe"

	"github.com/flannel-go/flannel-go/internal/dataplane"
)

// Config describes where the programs attach and what they check.
type Config struct {
	TUN                string     // the TUN device (flannel0)
	Underlay           string     // the interface the peers are reached through
	LocalAddr          netip.Addr // the underlay address the UDP sockets bind
	Port               int        // the flannel UDP port
	StrictSource       bool       // --strict-source
	AcceptUnknownPeers bool       // take datagrams from senders without a lease
	// CarryIPv6 says the network carries inner IPv6 (a dual-stack
	// config): the node must decapsulate it in the kernel too.
	CarryIPv6 bool
	// Handoff names the local VXLAN device the ingress program hands TCP
	// super-packets to (see handoff), listening on HandoffPort; empty for
	// none: the program then decapsulates them itself.
	Handoff     string
	HandoffPort int
	// ProbeInterval is how often peers are asked whether they decapsulate
	// in the kernel; an answer vouches for three intervals. Default 2 s.
	ProbeInterval time.Duration
	// Attach is AttachAuto (default), AttachTCX or AttachClsact.
	Attach string
	// Without turns off features the kernel has, to run (and measure)
	// the variant of an older kernel.
	Without Feature
	Logger  *slog.Logger
}

// Info says how the fast path runs: how it is attached, which variant of
// the programs runs, and why.
type Info struct {
	Attach  string   // AttachTCX or AttachClsact
	Variant string   // see Variant
	Why     []string // the features missing or turned off, the attach fallback
}

// heartbeatEvery is how often a clsact-attached fast path says it runs;
// the ingress program passes everything once it is heartbeatValid old.
const (
	heartbeatEvery = time.Second
	heartbeatValid = 5 * time.Second
)

// Path is the loaded and attached fast path.
type Path struct {
	cfg   Config
	info  Info
	objs  bpfObjects
	links []io.Closer
	sock  *net.UDPConn
	hand  *handoff

	mu     sync.Mutex
	routes map[netip.Prefix]netip.Addr
	peers  map[netip.Addr]int // routes per peer
	// askedAt is when each peer was last asked (the program's clock).
	askedAt map[netip.Addr]uint64
	probe   atomic.Pointer[probe.Schedule]
	tap     *capture

	wake chan struct{}
	done chan struct{}
	stop sync.Once
	wg   sync.WaitGroup
}

// Start loads the variant of the programs the kernel supports and
// attaches them: with tcx links, which belong to this process (when it
// exits, even by SIGKILL, the kernel detaches them and the TUN goes with
// it), or, where the kernel has no tcx, with cls_bpf filters, which stay
// after a SIGKILL on the underlay but pass every packet once the
// heartbeat stops, and which the next start removes.
func Start(cfg Config) (*Path, error) {
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if !cfg.LocalAddr.Is4() {
		return nil, fmt.Errorf("fast path: local address %s is not IPv4", cfg.LocalAddr)
	}
	tunIf, err := net.InterfaceByName(cfg.TUN)
	if err != nil {
		return nil, fmt.Errorf("fast path: %w", err)
	}
	underIf, err := net.InterfaceByName(cfg.Underlay)
	if err != nil {
		return nil, fmt.Errorf("fast path: %w", err)
	}
	info, feats, err := chooseVariant(cfg)
	if err != nil {
		return nil, err
	}
	// Filters a previous flanneld left (clsact, or a forced clsact run
	// before a tcx one) would run beside or before ours.
	if n, err := removeOurFilters(underIf.Index); err != nil {
		return nil, fmt.Errorf("fast path: %w", err)
	} else if n > 0 {
		cfg.Logger.Info("Fast path: removed the cls_bpf filters a previous flanneld left", "interface", cfg.Underlay, "filters", n)
	}
	hand, err := startHandoff(cfg, tunIf)
	if err != nil {
		return nil, err
	}
	if cfg.CarryIPv6 && feats&DecapFlags == 0 && hand == nil {
		return nil, errors.New("fast path: inner IPv6 cannot be decapsulated in the kernel: the programs run without " +
			"bpf_skb_adjust_room's BPF_F_ADJ_ROOM_DECAP_L3 flags (Linux 6.3), and the handoff device that would do it instead is missing")
	}
	p := &Path{
		cfg:     cfg,
		info:    info,
		hand:    hand,
		routes:  map[netip.Prefix]netip.Addr{},
		peers:   map[netip.Addr]int{},
		askedAt: map[netip.Addr]uint64{},
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if err := p.load(feats, tunIf.Index, underIf.Index); err != nil {
		hand.Close()
		return nil, err
	}
	if err := p.attach(tunIf.Index, underIf.Index); err != nil {
		p.Close()
		return nil, err
	}
	p.sock, err = net.ListenUDP("udp4", &net.UDPAddr{IP: cfg.LocalAddr.AsSlice()})
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("fast path: probe socket on %s: %w", cfg.LocalAddr, err)
	}
	p.wg.Go(p.runProbes)
	p.wg.Go(p.watchHandoff)
	if p.info.Attach == AttachClsact {
		p.wg.Go(p.heartbeatLoop)
	}
	return p, nil
}

// Info says how the fast path runs.
func (p *Path) Info() Info { return p.info }

// chooseVariant probes the kernel and applies cfg's overrides: the
// attach mode and the features the programs may use.
func chooseVariant(cfg Config) (Info, Feature, error) {
	feats, err := ProbeFeatures()
	if err != nil {
		return Info{}, 0, fmt.Errorf("fast path: %w", err)
	}
	info := Info{Why: missing(feats)}
	if off := cfg.Without & feats; off != 0 {
		feats &^= off
		for _, m := range missing(AllFeatures &^ off) {
			info.Why = append(info.Why, strings.Replace(m, "no ", "turned off: ", 1))
		}
	}
	info.Variant = Variant(feats)
	tcx, err := probeTCX()
	if err != nil {
		return Info{}, 0, fmt.Errorf("fast path: %w", err)
	}
	switch cfg.Attach {
	case AttachAuto:
		info.Attach = AttachTCX
		if !tcx {
			info.Attach = AttachClsact
			info.Why = append(info.Why, "no tcx links (Linux 6.6): clsact")
		}
	case AttachTCX:
		if !tcx {
			return Info{}, 0, errors.New("fast path: tcx attach asked for, and this kernel has no tcx links (Linux 6.6)")
		}
		info.Attach = AttachTCX
	case AttachClsact:
		info.Attach = AttachClsact
		info.Why = append(info.Why, "clsact attach asked for")
	default:
		return Info{}, 0, fmt.Errorf("fast path: unknown attach mode %q: want %s or %s", cfg.Attach, AttachTCX, AttachClsact)
	}
	return info, feats, nil
}

// settings are what the loader tells the programs.
type settings struct {
	localAddr         netip.Addr
	port, handoffPort uint16 // handoffPort 0: no handoff device
	underIndex        int
	tunIndex          int
	strict            bool
	acceptUnknown     bool
	carryIPv6         bool
	answerValid       time.Duration
	heartbeat         bool // attached as cls_bpf filters
	features          Feature
}

// load loads the programs with cfg's settings and the features' variant.
func (p *Path) load(feats Feature, tunIndex, underIndex int) error {
	cfg := p.cfg
	s := settings{
		localAddr:     cfg.LocalAddr,
		port:          uint16(cfg.Port),
		underIndex:    underIndex,
		tunIndex:      tunIndex,
		strict:        cfg.StrictSource,
		acceptUnknown: cfg.AcceptUnknownPeers,
		carryIPv6:     cfg.CarryIPv6,
		answerValid:   3 * cfg.ProbeInterval,
		heartbeat:     p.info.Attach == AttachClsact,
		features:      feats,
	}
	if p.hand != nil {
		s.handoffPort = uint16(cfg.HandoffPort)
	}
	if err := loadObjects(s, &p.objs); err != nil {
		return fmt.Errorf("fast path: %w (variant %s)", err, p.info.Variant)
	}
	// The ingress program acts only with a fresh heartbeat (clsact): from now.
	return p.beat()
}

// loadObjects loads the programs and maps into objs.
func loadObjects(s settings, objs *bpfObjects) error {
	if err := liftMemlock(); err != nil {
		return err
	}
	spec, err := loadBpf()
	if err != nil {
		return fmt.Errorf("parse BPF objects: %w", err)
	}
	var specs bpfSpecs
	if err := spec.Assign(&specs); err != nil {
		return fmt.Errorf("BPF objects: %w", err)
	}
	v := specs.bpfVariableSpecs
	for _, set := range []struct {
		v   *ebpf.VariableSpec
		val any
	}{
		{v.HandoffPort, netOrder16(s.handoffPort)},
		{v.HandoffMac, [6]byte(handoffMAC)},
		{v.HandoffMark, uint32(handoffMark)},
		{v.LocalAddr, be32(s.localAddr)},
		{v.UdpPort, netOrder16(s.port)},
		{v.UnderlayIfindex, uint32(s.underIndex)},
		{v.TunIfindex, uint32(s.tunIndex)},
		{v.StrictSource, boolByte(s.strict)},
		{v.AcceptUnknown, boolByte(s.acceptUnknown)},
		{v.CarryIpv6, boolByte(s.carryIPv6)},
		{v.AnswerValidNs, uint64(s.answerValid)},
		{v.HaveCoarseClock, boolByte(s.features&CoarseClock != 0)},
		{v.HaveDecapFlags, boolByte(s.features&DecapFlags != 0)},
		{v.HaveGsoSize, boolByte(s.features&GSOSize != 0)},
		{v.HaveRingbuf, boolByte(s.features&RingBuf != 0)},
		{v.NeedHeartbeat, boolByte(s.heartbeat)},
		{v.HeartbeatValidNs, uint64(heartbeatValid)},
	} {
		if err := set.v.Set(set.val); err != nil {
			return fmt.Errorf("set %s: %w", set.v.Name, err)
		}
	}
	if s.features&RingBuf == 0 {
		// The ring's calls are unreachable; the map only has to load.
		*specs.Ring = ebpf.MapSpec{Name: specs.Ring.Name, Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	}
	// Loaded for no attach type in particular: tcx takes such programs
	// as well as cls_bpf does.
	for _, ps := range []*ebpf.ProgramSpec{specs.FlannelEgress, specs.FlannelIngress} {
		ps.AttachType = ebpf.AttachNone
	}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		return fmt.Errorf("load BPF programs: %w", err)
	}
	return nil
}

func (p *Path) attach(tunIndex, underIndex int) error {
	for _, h := range []hook{
		{p.objs.FlannelIngress, "flannel_ingress", underIndex, true, "ingress of " + p.cfg.Underlay},
		{p.objs.FlannelEgress, "flannel_egress", tunIndex, false, "egress of " + p.cfg.TUN},
	} {
		var c io.Closer
		var err error
		if p.info.Attach == AttachClsact {
			c, err = attachClsact(h)
		} else {
			c, err = attachTCX(h)
		}
		if err != nil {
			return err
		}
		p.links = append(p.links, c)
	}
	return nil
}

// beat writes the heartbeat: the daemon runs.
func (p *Path) beat() error {
	now, err := monotonicNow()
	if err != nil {
		return err
	}
	if err := p.objs.Heartbeat.Put(uint32(0), now); err != nil {
		return fmt.Errorf("fast path: heartbeat: %w", err)
	}
	return nil
}

// heartbeatLoop keeps the clsact-attached ingress program acting while the
// process runs.
func (p *Path) heartbeatLoop() {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		if err := p.beat(); err != nil {
			p.cfg.Logger.Error("Fast path heartbeat; the ingress program passes every packet once it is 5 s old", "error", err)
		}
	}
}

// Close detaches the programs and frees the maps.
func (p *Path) Close() error {
	p.stop.Do(func() { close(p.done) })
	var errs []error
	if p.sock != nil {
		errs = append(errs, p.sock.Close())
	}
	p.wg.Wait()
	p.SetTap(nil)
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, p.objs.Close())
	// After the programs: nothing feeds the device any more.
	errs = append(errs, p.hand.Close())
	return errors.Join(errs...)
}

// startHandoff creates the handoff device when one is configured. Without
// it the fast path still works, at a lower rate: a failure is logged, not
// returned, unless the configuration is wrong.
func startHandoff(cfg Config, tun *net.Interface) (*handoff, error) {
	if cfg.Handoff == "" {
		return nil, nil
	}
	if cfg.HandoffPort <= 0 || cfg.HandoffPort > 65535 || cfg.HandoffPort == cfg.Port {
		return nil, fmt.Errorf("fast path: handoff port %d must be a UDP port other than %d", cfg.HandoffPort, cfg.Port)
	}
	var addrs []netip.Addr
	if as, err := tun.Addrs(); err == nil {
		for _, a := range as {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				ip, _ := netip.AddrFromSlice(n.IP.To4())
				addrs = append(addrs, ip)
			}
		}
	}
	h, err := newHandoff(cfg.Handoff, cfg.HandoffPort, tun, addrs)
	if err != nil {
		cfg.Logger.Warn("Fast path without its handoff device: received TCP super-packets are segmented on their way to containers", "error", err)
		return nil, nil
	}
	return h, nil
}

// SetAddr gives the handoff device the TUN's IPv4 address a, after a
// lease move, in place of any other (see handoff.configure for why it
// needs one); with RemoveAddr it follows the TUN (hoststate.Addresses).
func (p *Path) SetAddr(a netip.Addr) error {
	if p.hand == nil || !a.Is4() {
		return nil
	}
	return p.hand.setAddrs([]netip.Addr{a})
}

// RemoveAddr has nothing to do: SetAddr already replaced the address.
func (p *Path) RemoveAddr(netip.Addr) error { return nil }

// SetRoutes makes the programs' route tables (IPv4 and IPv6 subnets) equal
// to routes, with one map update per changed subnet: a moved subnet is
// replaced in one update, so no packet sees a stale peer. Routes to a peer
// without an IPv4 address are left to the router: the fast path crosses an
// IPv4 underlay only. It implements dataplane.Engine.
func (p *Path) SetRoutes(routes []dataplane.Route) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next := make(map[netip.Prefix]netip.Addr, len(routes))
	for _, r := range routes {
		if r.Peer.Is4() {
			next[r.Subnet] = r.Peer
		}
	}
	for subnet, peer := range next {
		if old, ok := p.routes[subnet]; ok && old == peer {
			continue
		}
		p.addPeer(peer)
		if err := p.updateRoute(subnet, peer); err != nil {
			p.cfg.Logger.Error("Fast path: add route", "subnet", subnet, "peer", peer, "error", err)
			continue
		}
		if old, ok := p.routes[subnet]; ok {
			p.delPeer(old)
		}
		p.routes[subnet] = peer
	}
	for subnet, peer := range p.routes {
		if _, ok := next[subnet]; ok {
			continue
		}
		if err := p.deleteRoute(subnet); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			p.cfg.Logger.Error("Fast path: remove route", "subnet", subnet, "error", err)
		}
		delete(p.routes, subnet)
		p.delPeer(peer)
	}
	p.poke()
}

// updateRoute points subnet at peer in the map of subnet's family.
func (p *Path) updateRoute(subnet netip.Prefix, peer netip.Addr) error {
	if subnet.Addr().Is4() {
		return p.objs.Routes.Update(routeKey(subnet), be32(peer), ebpf.UpdateAny)
	}
	return p.objs.Routes6.Update(route6Key(subnet), be32(peer), ebpf.UpdateAny)
}

func (p *Path) deleteRoute(subnet netip.Prefix) error {
	if subnet.Addr().Is4() {
		return p.objs.Routes.Delete(routeKey(subnet))
	}
	return p.objs.Routes6.Delete(route6Key(subnet))
}

// ForgetPeers forgets what the given peers answered: each took a lease it
// did not hold (a restart, or a replacement at the same address that may
// lack the fast path). Packets for them go through userspace until they
// answer a probe again, asked at once, or send from their own fast path.
// A peer without a route is not in the map; its entry starts empty when
// SetRoutes adds it.
func (p *Path) ForgetPeers(peers []netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ip := range peers {
		if !ip.Is4() || p.peers[ip] == 0 {
			continue
		}
		if err := p.objs.Peers.Update(be32(ip), bpfPeer{}, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			p.cfg.Logger.Error("Fast path: reset peer", "peer", ip, "error", err)
			continue
		}
		p.cfg.Logger.Info("Fast path: peer took a new lease; its packets go through userspace until it answers a probe again", "peer", ip)
	}
	if s := p.probe.Load(); s != nil {
		s.Recheck(peers)
	}
	p.poke()
}

func (p *Path) addPeer(ip netip.Addr) {
	p.peers[ip]++
	if p.peers[ip] > 1 {
		return
	}
	err := p.objs.Peers.Update(be32(ip), bpfPeer{}, ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		p.cfg.Logger.Error("Fast path: add peer", "peer", ip, "error", err)
	}
}

func (p *Path) delPeer(ip netip.Addr) {
	p.peers[ip]--
	if p.peers[ip] > 0 {
		return
	}
	delete(p.peers, ip)
	delete(p.askedAt, ip)
	for _, m := range []*ebpf.Map{p.objs.Peers, p.objs.Asks} {
		if err := m.Delete(be32(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			p.cfg.Logger.Error("Fast path: remove peer", "peer", ip, "map", m, "error", err)
		}
	}
}

// poke makes the prober ask the peers now rather than at the next tick.
func (p *Path) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// probeStore is the fast-path probe's probe.Store: the asks map tells
// the ingress program which nonce each peer's answer must carry, and the
// program stamps the peer's entry when it does (or when the peer vouches
// for itself, see vouch in probe.h).
type probeStore struct{ p *Path }

func (s probeStore) Asked(peer netip.Addr, nonce uint64) {
	p := s.p
	now, _ := monotonicNow()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.peers[peer] == 0 {
		return // its routes went while it was being asked
	}
	p.askedAt[peer] = now
	if err := p.objs.Asks.Put(be32(peer), probe.WireNonce(nonce)); err != nil {
		p.cfg.Logger.Error("Fast path: record a probe", "peer", peer, "error", err)
	}
}

// Answered tells whether the peer's entry was stamped since the ask.
func (s probeStore) Answered(peer netip.Addr, nonce uint64) bool {
	p := s.p
	var v bpfPeer
	if p.objs.Peers.Lookup(be32(peer), &v) != nil {
		return false
	}
	p.mu.Lock()
	at, ok := p.askedAt[peer]
	p.mu.Unlock()
	return ok && v.Answered >= at
}

func (probeStore) Missed(netip.Addr, int) {}

// probeTiming is the fast path's schedule: a peer that answers is asked
// every interval, its answer vouching for three; an unanswered ask is
// repeated from 100 ms on, doubling, because under load a full veth
// backlog drops probes like any packet, and two lost asks would let the
// answer expire and the peer's packets fall back to userspace (seen:
// 1,631 packets in one 4-stream run).
func probeTiming(interval time.Duration) probe.Timing {
	return probe.Timing{Interval: interval, AnswerWait: 100 * time.Millisecond, FirstRetry: 100 * time.Millisecond}
}

// runProbes asks the peers, from the probe socket, until Close.
func (p *Path) runProbes() {
	s := probe.NewSchedule(probe.FastPathAsk, probeTiming(p.cfg.ProbeInterval), probeStore{p}, func(peer netip.Addr, msg [probe.Len]byte) {
		// A lost probe only delays the fast path; the next one retries.
		p.sock.WriteToUDPAddrPort(msg[:], netip.AddrPortFrom(peer, uint16(p.cfg.Port)))
	})
	p.probe.Store(s)
	s.Run(p.done, p.wake, p.probeTargets)
}

// probeTargets lists the peers: those the routes point at.
func (p *Path) probeTargets() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]netip.Addr, 0, len(p.peers))
	for ip := range p.peers {
		out = append(out, ip)
	}
	return out
}

// answerFresh is the age of an answer given at answered (0: never) at time
// now, and whether it still vouches: for three probe intervals. The
// programs may write an answer after now was read; it is fresh.
func answerFresh(answered, now uint64, interval time.Duration) (age time.Duration, ok bool) {
	switch {
	case answered == 0:
		return 0, false
	case now <= answered:
		return 0, true
	case now-answered > uint64(3*interval):
		return 0, false
	}
	return time.Duration(now - answered), true
}

// KernelPeers lists the peers whose answers currently vouch for them.
func (p *Path) KernelPeers() []netip.Addr {
	now, err := monotonicNow()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	var k uint32
	var v bpfPeer
	it := p.objs.Peers.Iterate()
	for it.Next(&k, &v) {
		if _, ok := answerFresh(v.Answered, now, p.cfg.ProbeInterval); ok {
			var b [4]byte
			binary.NativeEndian.PutUint32(b[:], k)
			out = append(out, netip.AddrFrom4(b))
		}
	}
	return out
}

func routeKey(p netip.Prefix) bpfRouteKey {
	return bpfRouteKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Masked().Addr())}
}

func route6Key(p netip.Prefix) bpfRoute6Key {
	return bpfRoute6Key{Prefixlen: uint32(p.Bits()), Addr: p.Masked().Addr().As16()}
}

// be32 is ip as the programs read it from a packet: network byte order in
// memory.
func be32(ip netip.Addr) uint32 {
	b := ip.As4()
	return binary.NativeEndian.Uint32(b[:])
}

// liftMemlock lifts the memlock rlimit where the kernel still charges BPF
// memory to it (before 5.11); elsewhere it does nothing.
func liftMemlock() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("lift the memlock rlimit for BPF maps: %w", err)
	}
	return nil
}

// netOrder16 is port as the programs read it from a packet.
func netOrder16(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

var _ dataplane.Engine = (*Path)(nil)
