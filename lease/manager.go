package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options.
const (
	DefaultPrefix        = "/coreos.com/network"
	DefaultRenewMargin   = 60 * time.Minute
	DefaultRetryInterval = time.Minute
	DefaultCallTimeout   = 10 * time.Second
)

// acquireTries bounds the retries of a lost creation race.
const acquireTries = 20

// Options configures a Manager.
type Options struct {
	Prefix   string     // default "/coreos.com/network"
	PublicIP netip.Addr // this node's public (underlay) IPv4 address
	// PublicIPv6 is this node's public IPv6 address, may be invalid. It
	// goes into the lease value when the config enables IPv6, and it is
	// the node's identity in an IPv6-only network (EnableIPv4 false).
	PublicIPv6 netip.Addr
	// PrevSubnet and PrevIPv6Subnet are FLANNEL_SUBNET and
	// FLANNEL_IPV6_SUBNET from the subnet file; either may be invalid.
	PrevSubnet     netip.Prefix
	PrevIPv6Subnet netip.Prefix
	RenewMargin    time.Duration // default 60m
	// RetryInterval is the wait after a failed renewal or re-acquisition,
	// default 1 minute (upstream's).
	RetryInterval time.Duration
	// CallTimeout bounds each etcd request, default 10 s.
	CallTimeout time.Duration
	// Identity names this node to others in conflict messages, e.g. its
	// host name and interface address. When set, Acquire first claims the
	// PublicIP for this process, so that two nodes configured with the
	// same PublicIP cannot share a lease. Empty: no claim (upstream's
	// behaviour).
	Identity string
	Logger   *slog.Logger
	// Observer, when set, is told of acquisitions, renewals and resyncs.
	Observer Observer
}

// Manager acquires, keeps and watches subnet leases in etcd. The allocation
// policy lives here; all etcd I/O goes through its registry.
type Manager struct {
	reg           registry
	own           atomic.Pointer[subnets] // the lease held, left out of Watch
	publicIP      netip.Addr
	publicIPv6    netip.Addr
	claimIP       netip.Addr // the identity claimed: PublicIP, or PublicIPv6 when IPv4 is disabled
	prev          subnets
	renewMargin   time.Duration
	retryInterval time.Duration
	configRetry   time.Duration
	identity      string
	claimTTL      int64 // seconds
	obs           Observer
	log           *slog.Logger

	rndMu sync.Mutex
	rnd   *rand.Rand

	warnMu sync.Mutex
	warned map[string]string // malformed key -> value already warned about

	claimMu   sync.Mutex
	stopClaim context.CancelFunc // nil until the first claim
	claims    sync.WaitGroup     // the goroutines keeping the claim
}

// newManagerOn returns a Manager on reg; opts.Prefix and CallTimeout are
// the registry's business.
func newManagerOn(reg registry, opts Options) *Manager {
	if opts.RenewMargin <= 0 {
		opts.RenewMargin = DefaultRenewMargin
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRetryInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	return &Manager{
		reg:           reg,
		publicIP:      opts.PublicIP,
		publicIPv6:    opts.PublicIPv6,
		claimIP:       opts.PublicIP,
		prev:          subnets{opts.PrevSubnet, opts.PrevIPv6Subnet},
		renewMargin:   opts.RenewMargin,
		retryInterval: opts.RetryInterval,
		configRetry:   time.Second,
		identity:      opts.Identity,
		claimTTL:      defaultClaimTTL,
		obs:           opts.Observer,
		log:           opts.Logger,
		rnd:           rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		warned:        map[string]string{},
	}
}

// WaitConfig reads <prefix>/config until it is present and valid or ctx is
// done. A missing or invalid config is re-read every second, as upstream,
// and each distinct error is logged once. An unreachable etcd is retried
// with backoff from 100 ms up to 5 s and logged once when it becomes
// unreachable and once when it answers again, however long the outage.
func (m *Manager) WaitConfig(ctx context.Context) (*Config, error) {
	var last string // the state logged last: an error text, or stateUnreachable
	backoff := minBackoff
	for {
		data, err := m.reg.getConfig(ctx)
		reachable := err == nil || !unreachable(err)
		var cfg *Config
		if err == nil {
			cfg, err = ParseConfig(data)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("wait for network config: %w", ctx.Err())
		}
		if reachable && last == stateUnreachable {
			m.log.Info("etcd is reachable again")
		}
		if err == nil {
			return cfg, nil
		}
		wait := m.configRetry
		state := err.Error()
		if reachable {
			backoff = minBackoff
		} else {
			state, wait = stateUnreachable, backoff
			backoff = min(2*backoff, maxBackoff)
		}
		if state != last {
			if reachable {
				m.log.Error("Couldn't fetch network config: " + state)
			} else {
				m.log.Error(fmt.Sprintf("Couldn't fetch network config: etcd is unreachable, retrying with backoff up to %s: %v", maxBackoff, err))
			}
			last = state
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("wait for network config: %w", err)
		}
	}
}

// stateUnreachable stands for every etcd error in WaitConfig's log-once
// state: their texts vary (deadline exceeded, connection refused) but they
// are one condition to the operator.
const stateUnreachable = "\x00unreachable"

// Acquire gets this node a lease, with an IPv4 subnet, an IPv6 subnet or
// both as the config enables them. In order: the lease already held by this
// node's PublicIP (PublicIPv6 when IPv4 is disabled; an incompatible lease
// is deleted), the previous subnets from the subnet file if free and
// compatible, or for each family a random free subnet among the first 100
// in [SubnetMin, SubnetMax]. A lost creation race is retried.
// Reservations held by this PublicIP are used as they are. An unreachable
// etcd is waited for (backoff 100 ms to 5 s, logged once). With
// Options.Identity, the PublicIP is claimed first: while another running
// node uses the same PublicIP, Acquire waits, having logged one error
// naming both nodes.
func (m *Manager) Acquire(ctx context.Context, cfg *Config) (Lease, error) {
	m.claimIP = m.nodeIP(cfg)
	if err := m.claim(m.claimContext(ctx)); err != nil {
		return Lease{}, fmt.Errorf("claim public IP %s: %w", m.claimIP, err)
	}
	backoff := minBackoff
	waited := false
	for {
		l, err := m.acquire(ctx, cfg, m.prev)
		if err == nil {
			if waited {
				m.log.Info("etcd is reachable again")
			}
			m.setOwn(l)
			m.obs.LeaseAcquired(l)
			return l, nil
		}
		if ctx.Err() != nil || !unreachable(err) {
			return Lease{}, fmt.Errorf("acquire lease for %s: %w", m.claimIP, err)
		}
		if !waited {
			waited = true
			m.log.Error(fmt.Sprintf("Couldn't acquire a lease: etcd is unreachable, retrying with backoff up to %s: %v", maxBackoff, err))
		}
		if err := sleep(ctx, backoff); err != nil {
			return Lease{}, fmt.Errorf("acquire lease for %s: %w", m.claimIP, err)
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

func (m *Manager) acquire(ctx context.Context, cfg *Config, prev subnets) (Lease, error) {
	if cfg.EnableIPv4 && !m.publicIP.Is4() {
		return Lease{}, fmt.Errorf("public IP %v is not an IPv4 address", m.publicIP)
	}
	if !cfg.EnableIPv4 && (!m.publicIPv6.Is6() || m.publicIPv6.Is4In6()) {
		return Lease{}, errors.New("the network config has EnableIPv4 false: this node needs a public IPv6 address (--public-ipv6, or an IPv6 address on its interface) to name its lease")
	}
	for try := 0; try < acquireTries; try++ {
		if try > 0 {
			// Jitter spreads out nodes that lost the same race.
			if err := sleep(ctx, time.Duration(m.intN(50)+10)*time.Millisecond); err != nil {
				return Lease{}, err
			}
		}
		l, err := m.tryAcquire(ctx, cfg, prev)
		if errors.Is(err, errSubnetExists) {
			m.log.Debug("lost a subnet creation race, retrying", "try", try+1)
			continue
		}
		return l, err
	}
	return Lease{}, errors.New("max retries reached trying to acquire a subnet")
}

func (m *Manager) tryAcquire(ctx context.Context, cfg *Config, prev subnets) (Lease, error) {
	entries, bad, _, err := m.reg.list(ctx)
	if err != nil {
		return Lease{}, fmt.Errorf("list subnets: %w", err)
	}
	var taken4, taken6 []netip.Prefix
	for _, k := range bad {
		if p, ok := m.badKey(k); ok {
			taken4 = append(taken4, p)
		}
	}
	attrs := m.attrs(cfg)
	for _, e := range entries {
		if e.Foreign || !m.owns(cfg, e) {
			if e.Subnet.IsValid() {
				taken4 = append(taken4, e.Subnet)
			}
			if e.IPv6Subnet.IsValid() {
				taken6 = append(taken6, e.IPv6Subnet)
			}
			continue
		}
		sn := subnets{e.Subnet, e.IPv6Subnet}
		if !compatible(cfg, sn) {
			m.log.Info(fmt.Sprintf("Found lease (%s) for current IP (%s) but not compatible with current config, deleting", sn, m.claimIP))
			if err := m.reg.deleteIfUnchanged(ctx, e.Key, e.ModRev); err != nil {
				return Lease{}, fmt.Errorf("delete incompatible lease %s: %w", e.Key, err)
			}
			continue
		}
		l := Lease{Subnet: sn.V4, IPv6Subnet: sn.V6, PublicIP: attrs.PublicIP, PublicIPv6: attrs.PublicIPv6}
		if e.LeaseID != noLease {
			exp, _, err := m.reg.renew(ctx, sn, attrs)
			if err != nil {
				return Lease{}, fmt.Errorf("refresh lease %s: %w", e.Key, err)
			}
			l.Expiration = exp
		}
		m.log.Info(fmt.Sprintf("Found lease (%s) for current IP (%s), reusing", sn, m.claimIP))
		return l, nil
	}

	sn, err := m.choose(cfg, prev, taken4, taken6)
	if err != nil {
		return Lease{}, err
	}
	exp, err := m.reg.create(ctx, sn, attrs)
	if err != nil {
		return Lease{}, err
	}
	m.log.Info(fmt.Sprintf("Allocated lease (%s) to current node (%s)", sn, m.claimIP))
	return Lease{Subnet: sn.V4, IPv6Subnet: sn.V6, PublicIP: attrs.PublicIP, PublicIPv6: attrs.PublicIPv6, Expiration: exp}, nil
}

// choose picks the subnets of a new lease: the previous ones when they fit
// the config and are free, otherwise a random free subnet of each family
// the config enables.
func (m *Manager) choose(cfg *Config, prev subnets, taken4, taken6 []netip.Prefix) (subnets, error) {
	if !cfg.EnableIPv4 {
		prev.V4 = netip.Prefix{}
	}
	if !cfg.EnableIPv6 {
		prev.V6 = netip.Prefix{}
	}
	if prev.V4.IsValid() || prev.V6.IsValid() {
		// Upstream names the IPv4 subnet only in these lines.
		shown := prev.V4
		if !shown.IsValid() {
			shown = prev.V6
		}
		switch {
		case !compatible(cfg, prev):
			m.log.Info(fmt.Sprintf("Found previously leased subnet (%s) but not compatible with the Etcd network config, ignoring", shown))
		case overlapsAny(prev.V4, taken4) || overlapsAny(prev.V6, taken6):
			m.log.Info(fmt.Sprintf("Previously leased subnet (%s) is taken by another node, picking a new one", shown))
		default:
			m.log.Info(fmt.Sprintf("Found previously leased subnet (%s), reusing", shown))
			return prev, nil
		}
	}
	var sn subnets
	var err error
	m.rndMu.Lock()
	defer m.rndMu.Unlock()
	if cfg.EnableIPv4 {
		m.log.Info(fmt.Sprintf("Picking subnet in range %s ... %s", cfg.SubnetMin, cfg.SubnetMax))
		if sn.V4, err = pickSubnet(cfg, taken4, m.rnd); err != nil {
			return subnets{}, err
		}
	}
	if cfg.EnableIPv6 {
		m.log.Info(fmt.Sprintf("Picking ipv6 subnet in range %s ... %s", cfg.IPv6SubnetMin, cfg.IPv6SubnetMax))
		if sn.V6, err = pickSubnet6(cfg, taken6, m.rnd); err != nil {
			return subnets{}, err
		}
	}
	return sn, nil
}

// attrs is the lease value this node writes under cfg: PublicIPv6 only
// where the config enables IPv6, PublicIP "0.0.0.0" where it disables IPv4.
func (m *Manager) attrs(cfg *Config) LeaseAttrs {
	var a LeaseAttrs
	if cfg.EnableIPv4 {
		a.PublicIP = m.publicIP
	}
	if cfg.EnableIPv6 {
		a.PublicIPv6 = m.publicIPv6
	}
	return a
}

// nodeIP is the address that names this node's lease under cfg: PublicIP,
// or PublicIPv6 in an IPv6-only network.
func (m *Manager) nodeIP(cfg *Config) netip.Addr {
	if cfg.EnableIPv4 {
		return m.publicIP
	}
	return m.publicIPv6
}

// owns reports whether an entry's value names this node under cfg.
// Upstream finds an IPv6-only node's lease by its PublicIP too, which is
// "0.0.0.0" for every such node, so each would take over the first one's
// lease; the PublicIPv6 names it here.
func (m *Manager) owns(cfg *Config, e entry) bool {
	if e.AttrsErr != nil {
		return false
	}
	if cfg.EnableIPv4 {
		return e.PublicIP == m.publicIP
	}
	return !e.PublicIP.IsValid() && e.PublicIPv6 == m.publicIPv6
}

// holder names the node an entry belongs to, for log lines.
func holder(e entry) netip.Addr {
	if e.PublicIP.IsValid() {
		return e.PublicIP
	}
	return e.PublicIPv6
}

// claimContext returns the context the PublicIP claim lives in: ctx until
// Close.
func (m *Manager) claimContext(ctx context.Context) context.Context {
	m.claimMu.Lock()
	defer m.claimMu.Unlock()
	cctx, cancel := context.WithCancel(ctx)
	if prev := m.stopClaim; prev != nil {
		m.stopClaim = func() { prev(); cancel() }
	} else {
		m.stopClaim = cancel
	}
	return cctx
}

// Close stops keeping the PublicIP claim and waits until its goroutines
// are gone; the claim then expires after its TTL, or a restart of this node
// takes it over. Close the Manager before its etcd client.
func (m *Manager) Close() {
	m.claimMu.Lock()
	if m.stopClaim != nil {
		m.stopClaim()
	}
	m.claimMu.Unlock()
	m.claims.Wait()
}

func (m *Manager) setOwn(l Lease) {
	sn := l.subnets()
	m.own.Store(&sn)
}

// ownSubnets are the subnets this Manager holds, zero before Acquire.
func (m *Manager) ownSubnets() subnets {
	if p := m.own.Load(); p != nil {
		return *p
	}
	return subnets{}
}

func (m *Manager) intN(n int) int {
	m.rndMu.Lock()
	defer m.rndMu.Unlock()
	return m.rnd.IntN(n)
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
