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
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/flannel-go/flannel-go/router"
)

// Config describes where the programs attach and what they check.
type Config struct {
	TUN                string     // the TUN device (flannel0)
	Underlay           string     // the interface the peers are reached through
	LocalAddr          netip.Addr // the underlay address the UDP sockets bind
	Port               int        // the flannel UDP port
	StrictSource       bool       // --strict-source
	AcceptUnknownPeers bool       // take datagrams from senders without a lease
	// Handoff names the local VXLAN device the ingress program hands TCP
	// super-packets to (see handoff), listening on HandoffPort; empty for
	// none: the program then decapsulates them itself.
	Handoff     string
	HandoffPort int
	// ProbeInterval is how often peers are asked whether they decapsulate
	// in the kernel; an answer vouches for three intervals. Default 2 s.
	ProbeInterval time.Duration
	Logger        *slog.Logger
}

// Path is the loaded and attached fast path.
type Path struct {
	cfg   Config
	objs  bpfObjects
	links []link.Link
	sock  *net.UDPConn
	hand  *handoff

	mu     sync.Mutex
	routes map[netip.Prefix]netip.Addr
	peers  map[netip.Addr]int // routes per peer
	nonce  uint64
	tap    *capture

	wake chan struct{}
	done chan struct{}
	stop sync.Once
	wg   sync.WaitGroup
}

// Start loads the programs and attaches them with tcx links. The links
// belong to this process: when it exits, even by SIGKILL, the kernel
// detaches them and the TUN goes with it, so nothing is left to blackhole
// traffic and the next start attaches afresh.
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
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("fast path: parse BPF objects: %w", err)
	}
	var port, handPort [2]byte
	binary.BigEndian.PutUint16(port[:], uint16(cfg.Port))
	hand, err := startHandoff(cfg, tunIf)
	if err != nil {
		return nil, err
	}
	if hand != nil {
		binary.BigEndian.PutUint16(handPort[:], uint16(cfg.HandoffPort))
	}
	for name, v := range map[string]any{
		"handoff_port":     binary.NativeEndian.Uint16(handPort[:]),
		"handoff_mac":      [6]byte(handoffMAC),
		"handoff_mark":     uint32(handoffMark),
		"local_addr":       be32(cfg.LocalAddr),
		"udp_port":         binary.NativeEndian.Uint16(port[:]),
		"underlay_ifindex": uint32(underIf.Index),
		"tun_ifindex":      uint32(tunIf.Index),
		"strict_source":    boolByte(cfg.StrictSource),
		"accept_unknown":   boolByte(cfg.AcceptUnknownPeers),
		"answer_valid_ns":  uint64(3 * cfg.ProbeInterval),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			hand.Close()
			return nil, fmt.Errorf("fast path: set %s: %w", name, err)
		}
	}
	p := &Path{
		cfg:    cfg,
		hand:   hand,
		routes: map[netip.Prefix]netip.Addr{},
		peers:  map[netip.Addr]int{},
		wake:   make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		hand.Close()
		return nil, fmt.Errorf("fast path: load BPF programs: %w", err)
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
	p.wg.Go(p.probeLoop)
	p.wg.Go(p.watchHandoff)
	return p, nil
}

func (p *Path) attach(tunIndex, underIndex int) error {
	for _, a := range []struct {
		prog  *ebpf.Program
		index int
		typ   ebpf.AttachType
		what  string
	}{
		{p.objs.FlannelIngress, underIndex, ebpf.AttachTCXIngress, "ingress of " + p.cfg.Underlay},
		{p.objs.FlannelEgress, tunIndex, ebpf.AttachTCXEgress, "egress of " + p.cfg.TUN},
	} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.index, Program: a.prog, Attach: a.typ})
		if err != nil {
			return fmt.Errorf("fast path: attach tcx program to the %s: %w", a.what, err)
		}
		p.links = append(p.links, l)
	}
	return nil
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

// SetTUNAddr gives the handoff device the TUN's new IPv4 address after a
// lease move (see handoff.configure for why it needs one).
func (p *Path) SetTUNAddr(a netip.Addr) error {
	if p.hand == nil || !a.Is4() {
		return nil
	}
	return p.hand.setAddrs([]netip.Addr{a})
}

// SetRoutes makes the programs' route tables (IPv4 and IPv6 subnets) equal
// to routes, with one map update per changed subnet: a moved subnet is
// replaced in one update, so no packet sees a stale peer. Routes to a peer
// without an IPv4 address are left to the router: the fast path crosses an
// IPv4 underlay only. It implements routesync.Table.
func (p *Path) SetRoutes(routes []router.Route) {
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
	if err := p.objs.Peers.Delete(be32(ip)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		p.cfg.Logger.Error("Fast path: remove peer", "peer", ip, "error", err)
	}
}

// poke makes the prober ask the peers now rather than at the next tick.
func (p *Path) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Probe payload: probeMagic, a type byte, a nonce.
var probeMagic = [7]byte{0x00, 'f', 'l', 'g', 'o', 'f', 'p'}

const probeAsk = 1

// firstProbeBackoff is the first retry for a peer that has not answered:
// right after start the peer may not have our lease yet and drops the
// probe, so it is asked again soon, then at doubling intervals up to
// ProbeInterval (upstream and userspace-only peers never answer).
const firstProbeBackoff = 100 * time.Millisecond

// probeState is when a peer is asked next and the current retry interval.
type probeState struct {
	next    time.Time
	backoff time.Duration
	round   uint64 // the last round the peer was in the table
}

func (p *Path) probeLoop() {
	var msg [16]byte
	copy(msg[:], probeMagic[:])
	msg[7] = probeAsk
	state := map[netip.Addr]*probeState{}
	var targets []netip.Addr
	var round uint64
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-timer.C:
		case <-p.wake:
			// New peers or reset answers: ask them from the first backoff.
			for _, st := range state {
				st.next = time.Time{}
			}
		}
		now := time.Now()
		p.mu.Lock()
		targets = targets[:0]
		for ip := range p.peers {
			targets = append(targets, ip)
		}
		p.nonce++
		binary.BigEndian.PutUint64(msg[8:], p.nonce)
		p.mu.Unlock()
		next := now.Add(p.cfg.ProbeInterval)
		round++
		for _, ip := range targets {
			st := state[ip]
			if st == nil {
				st = &probeState{}
				state[ip] = st
			}
			st.round = round
			if now.Before(st.next) {
				next = minTime(next, st.next)
				continue
			}
			age, ok := p.answerAge(ip)
			st.backoff = probeBackoff(ok, age, st.backoff, st.next.IsZero(), p.cfg.ProbeInterval)
			st.next = now.Add(st.backoff)
			next = minTime(next, st.next)
			// A lost probe only delays the fast path; the next one retries.
			p.sock.WriteToUDPAddrPort(msg[:], netip.AddrPortFrom(ip, uint16(p.cfg.Port)))
		}
		for ip, st := range state {
			if st.round != round {
				delete(state, ip)
			}
		}
		timer.Reset(time.Until(next))
	}
}

// answerAge is how long ago ip's last answer arrived; ok is false when
// no answer vouches for it (none yet, or older than its validity).
func (p *Path) answerAge(ip netip.Addr) (age time.Duration, ok bool) {
	var v bpfPeer
	if p.objs.Peers.Lookup(be32(ip), &v) != nil {
		return 0, false
	}
	now, err := monotonicNow()
	if err != nil {
		return 0, false
	}
	return answerFresh(v.Answered, now, p.cfg.ProbeInterval)
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

// probeBackoff is how long to wait before asking a peer again, given
// whether an answer vouches for it and how old that answer is, the
// previous wait and whether this is the first ask. A peer with a fresh
// answer (younger than one and a half intervals: the answer to the last
// periodic ask) is asked once per interval. One whose last ask went
// unanswered is asked again from firstProbeBackoff on, doubling, while
// its answer is still valid (three intervals): under load a full veth
// backlog drops probes like any packet, and waiting a whole interval
// twice let the answer expire and its packets fall back to userspace
// (seen: 1,631 packets in one 4-stream run). A peer that never answers
// (upstream, userspace-only) stays at one ask per interval.
func probeBackoff(answered bool, age, prev time.Duration, first bool, interval time.Duration) time.Duration {
	switch {
	case answered && age < interval+interval/2:
		return interval
	case first || prev == 0 || (answered && prev >= interval):
		return firstProbeBackoff
	default:
		return min(2*prev, interval)
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
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

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}
