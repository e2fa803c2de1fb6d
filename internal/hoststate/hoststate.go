// Package hoststate keeps the node's host-side state in step with its
// lease: per subnet, the TUN's address, the addresses of the devices that
// carry it too (the fast path's handoff device), the blackhole route and
// the forward and masquerade rules. The policy (what is put in place at
// start, what moves with a lease, what a resync restores, which failure
// is fatal) is plain code with unit tests; netlink and iptables/nftables
// sit behind small interfaces, whose real implementations are tested in
// network namespaces.
package hoststate

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
)

// Addresses sets a device's address of one family: SetAddr adds a (with
// what the device needs to carry the overlay: MTU, route, up), RemoveAddr
// takes an old one away.
type Addresses interface {
	SetAddr(a netip.Addr) error
	RemoveAddr(a netip.Addr) error
}

// Routes adds and deletes the blackhole route of a subnet.
type Routes interface {
	AddBlackhole(subnet netip.Prefix) error
	DelBlackhole(subnet netip.Prefix) error
}

// Rules are one family's forward and masquerade rules for one subnet.
type Rules interface {
	// Ensure installs the rules, or restores them.
	Ensure() error
	// DeleteStale removes the masquerade rules of another network or
	// subnet (a previous run's, a moved lease's).
	DeleteStale(network, subnet netip.Prefix) error
}

// RuleMaker prepares the rules of subnet in network.
type RuleMaker func(network, subnet netip.Prefix) (Rules, error)

// Config says what the state is made of. A nil Blackhole or Rules means
// that part is off.
type Config struct {
	// Network and IPv6Network are the overlay's; a zero one is a family
	// the network does not carry.
	Network, IPv6Network netip.Prefix
	TUN                  Addresses
	Blackhole            Routes
	Rules                RuleMaker
	// RulesRequired makes a failure of the rules fatal (--ip-masq);
	// forward rules alone are a convenience, their failure a warning.
	RulesRequired bool
	Logger        *slog.Logger
}

// Subnets are a lease's subnets (zero in a family it does not hold).
type Subnets struct {
	V4, V6 netip.Prefix
}

func (s Subnets) of(v6 bool) netip.Prefix {
	if v6 {
		return s.V6
	}
	return s.V4
}

// Previous is what the previous run wrote in the subnet file: its
// masquerade rules go if they differ.
type Previous struct {
	Network, Subnet         netip.Prefix
	IPv6Network, IPv6Subnet netip.Prefix
}

// State is the host state of the node's current subnets.
type State struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	cur       Subnets
	rules     [2]Rules    // by family: IPv4, IPv6
	followers []Addresses // devices that carry the TUN's IPv4 address
}

// New returns the state of cfg, with nothing in place yet.
func New(cfg Config) *State {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &State{cfg: cfg, log: log}
}

func (s *State) network(v6 bool) netip.Prefix {
	if v6 {
		return s.cfg.IPv6Network
	}
	return s.cfg.Network
}

func family(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// Apply puts the state of sn in place at start, in each family the
// network carries: the TUN's address, the blackhole route, the rules
// (removing the previous run's stale masquerade rules). The first error
// is returned; the TUN's is always fatal, the rules' only when
// RulesRequired.
func (s *State) Apply(sn Subnets, prev Previous) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = sn
	for _, v6 := range []bool{false, true} {
		if !s.network(v6).IsValid() {
			continue
		}
		if err := s.cfg.TUN.SetAddr(sn.of(v6).Addr()); err != nil {
			return err
		}
	}
	if err := s.blackholes(sn, Subnets{}); err != nil {
		return err
	}
	for _, v6 := range []bool{false, true} {
		pn, ps := prev.Network, prev.Subnet
		if v6 {
			pn, ps = prev.IPv6Network, prev.IPv6Subnet
		}
		if err := s.setRules(v6, sn.of(v6), pn, ps); err != nil {
			return err
		}
	}
	return nil
}

// Follow adds a device that carries the TUN's IPv4 address, and gives it
// the current one.
func (s *State) Follow(d Addresses) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.followers = append(s.followers, d)
	if !s.cur.V4.IsValid() || !s.cfg.Network.IsValid() {
		return nil
	}
	return d.SetAddr(s.cur.V4.Addr())
}

// Move moves everything from the current subnets to sn, family by family
// where the subnet changed: addresses (the new one added before the old
// one goes), the blackhole route, the rules. It carries on past errors
// and returns them all.
func (s *State) Move(sn Subnets) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur
	s.cur = sn
	var errs []error
	for _, v6 := range []bool{false, true} {
		from, to := old.of(v6), sn.of(v6)
		if !s.network(v6).IsValid() || from == to {
			continue
		}
		devs := []Addresses{s.cfg.TUN}
		if !v6 {
			devs = append(devs, s.followers...)
		}
		for _, d := range devs {
			errs = append(errs, d.SetAddr(to.Addr()))
			if from.IsValid() {
				errs = append(errs, d.RemoveAddr(from.Addr()))
			}
		}
		errs = append(errs, s.setRules(v6, to, s.network(v6), from))
	}
	errs = append(errs, s.blackholes(sn, old))
	return errors.Join(errs...)
}

// blackholes gives each subnet of sn its blackhole route, taking away
// those of old that changed.
func (s *State) blackholes(sn, old Subnets) error {
	if s.cfg.Blackhole == nil {
		return nil
	}
	var errs []error
	for _, v6 := range []bool{false, true} {
		from, to := old.of(v6), sn.of(v6)
		if !s.network(v6).IsValid() || !to.IsValid() {
			continue
		}
		if from.IsValid() && from != to {
			errs = append(errs, s.cfg.Blackhole.DelBlackhole(from))
		}
		errs = append(errs, s.cfg.Blackhole.AddBlackhole(to))
	}
	return errors.Join(errs...)
}

// setRules installs the rules of subnet in one family, removing the
// stale masquerade rules of prevNetwork/prevSubnet. Without
// RulesRequired a failure is logged and the family runs without rules.
func (s *State) setRules(v6 bool, subnet, prevNetwork, prevSubnet netip.Prefix) error {
	network := s.network(v6)
	if s.cfg.Rules == nil || !network.IsValid() || !subnet.IsValid() {
		return nil
	}
	rules, err := s.cfg.Rules(network, subnet)
	if err == nil {
		err = rules.DeleteStale(prevNetwork, prevSubnet)
	}
	if err == nil {
		err = rules.Ensure()
	}
	if err != nil {
		if !s.cfg.RulesRequired {
			s.log.Warn("Could not add the FORWARD accept rules; give --iptables-forward-rules=false to silence this", "network", network, "error", err)
			s.rules[family(v6)] = nil
			return nil
		}
		return fmt.Errorf("failed to setup masq rules for %s: %w", network, err)
	}
	s.rules[family(v6)] = rules
	return nil
}

// Resync restores what someone else deleted: the rules and the blackhole
// routes of the current subnets (upstream's --iptables-resync).
func (s *State) Resync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, r := range s.rules {
		if r != nil {
			errs = append(errs, r.Ensure())
		}
	}
	errs = append(errs, s.blackholes(s.cur, s.cur))
	return errors.Join(errs...)
}

// Active tells whether Resync has anything to restore.
func (s *State) Active() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Blackhole != nil || s.rules[0] != nil || s.rules[1] != nil
}
