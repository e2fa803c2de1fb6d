package lease

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/syncbuf"
)

// The allocation, renewal and re-acquire policy on the in-memory registry;
// etcd_test.go and reliability_test.go hold the same behaviours on etcd.

var nodeB = netip.MustParseAddr("192.0.2.2")

func memManager(t *testing.T, reg *memRegistry, ip netip.Addr, opts Options) (*Manager, *syncbuf.Buffer) {
	t.Helper()
	var lb syncbuf.Buffer
	opts.PublicIP = ip
	opts.Logger = slog.New(slog.NewTextHandler(&lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 20 * time.Millisecond
	}
	m := newManagerOn(reg, opts)
	t.Cleanup(m.Close)
	return m, &lb
}

func memConfig(t *testing.T, reg *memRegistry, js string) *Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	reg.config = []byte(js)
	reg.mu.Unlock()
	return cfg
}

func attrs(ip netip.Addr) string { return string(MarshalLeaseAttrs(ip)) }

func TestPolicyAcquireFresh(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	m, _ := memManager(t, reg, nodeA, Options{})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !compatible(cfg, l.subnets()) || l.PublicIP != nodeA || time.Until(l.Expiration) < subnetTTL-time.Minute {
		t.Fatalf("lease %+v", l)
	}
	// Upstream's policy: a random pick among the first 100 free subnets.
	if first := netip.MustParsePrefix("198.18.100.0/24"); l.Subnet.Addr().Compare(first.Addr()) >= 0 {
		t.Errorf("picked %s, beyond the first 100 subnets", l.Subnet)
	}
	kv, ok := reg.kv(reg.keys.subnet(l.Subnet))
	if !ok || kv.value != attrs(nodeA) || kv.lease == noLease {
		t.Errorf("stored %+v %v", kv, ok)
	}
	if m.ownSubnets() != l.subnets() {
		t.Errorf("own subnet %s, want %s", m.ownSubnets(), l.Subnet)
	}
}

func TestPolicyReusesOwnLeaseAndRenewsIt(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	own := netip.MustParsePrefix("198.18.7.0/24")
	reg.mu.Lock()
	id := reg.grantLocked(time.Minute)
	reg.putLocked(reg.keys.subnet(own), attrs(nodeA), id)
	reg.mu.Unlock()
	m, lb := memManager(t, reg, nodeA, Options{PrevSubnet: netip.MustParsePrefix("198.18.9.0/24")})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	kv, _ := reg.kv(reg.keys.subnet(own))
	if l.Subnet != own || kv.lease == id || time.Until(l.Expiration) < subnetTTL-time.Minute {
		t.Errorf("got %+v (stored lease %d, was %d), want %s on a fresh 24 h lease", l, kv.lease, id, own)
	}
	if !strings.Contains(lb.String(), "for current IP (192.0.2.1), reusing") {
		t.Errorf("log:\n%s", lb.String())
	}
}

func TestPolicyReservationUsedAsIs(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	own := netip.MustParsePrefix("198.18.7.0/24")
	reg.put(reg.keys.subnet(own), attrs(nodeA))
	before, _ := reg.kv(reg.keys.subnet(own))
	m, _ := memManager(t, reg, nodeA, Options{})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := reg.kv(reg.keys.subnet(own))
	if l.Subnet != own || !l.Reservation() || after != before || reg.count("renew") != 0 {
		t.Errorf("got %+v, key %+v -> %+v, %d renewals; want the reservation untouched", l, before, after, reg.count("renew"))
	}
}

func TestPolicyIncompatibleOwnLeaseDeleted(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	old := netip.MustParsePrefix("198.18.7.0/25")
	reg.put(reg.keys.subnet(old), attrs(nodeA))
	m, _ := memManager(t, reg, nodeA, Options{})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := reg.kv(reg.keys.subnet(old)); ok || l.Subnet.Bits() != 24 {
		t.Errorf("got %s, old key still there: %v", l.Subnet, ok)
	}
}

func TestPolicyPreviousSubnet(t *testing.T) {
	prev := netip.MustParsePrefix("198.18.42.0/24")
	for _, taken := range []bool{false, true} {
		t.Run(fmt.Sprintf("taken=%v", taken), func(t *testing.T) {
			reg := newMemRegistry(subnetTTL)
			cfg := memConfig(t, reg, testConfig)
			if taken {
				reg.put(reg.keys.subnet(prev), attrs(nodeB))
			}
			m, _ := memManager(t, reg, nodeA, Options{PrevSubnet: prev})
			l, err := m.Acquire(testCtx(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if (l.Subnet == prev) == taken {
				t.Errorf("got %s with the previous subnet %s taken=%v", l.Subnet, prev, taken)
			}
		})
	}
}

func TestPolicyLostCreationRaceRetried(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	var lost netip.Prefix
	reg.beforeCreate = func(p netip.Prefix) {
		if !lost.IsValid() {
			lost = p
			reg.put(reg.keys.subnet(p), attrs(nodeB)) // another node is faster
		}
	}
	m, lb := memManager(t, reg, nodeA, Options{})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if l.Subnet == lost || reg.count("create") != 2 || !strings.Contains(lb.String(), "lost a subnet creation race") {
		t.Errorf("got %s after losing %s, %d creates; log:\n%s", l.Subnet, lost, reg.count("create"), lb.String())
	}
}

func TestPolicyOutOfSubnets(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, `{"Network":"198.18.0.0/28","SubnetLen":30,"Backend":{"Type":"udp"}}`)
	for i := range 4 {
		reg.put(reg.keys.subnet(netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(4 * i)}), 30)), attrs(nodeB))
	}
	m, _ := memManager(t, reg, nodeA, Options{})
	if _, err := m.Acquire(testCtx(t), cfg); err == nil || !strings.Contains(err.Error(), "out of subnets") {
		t.Errorf("Acquire in a full network: %v, want out of subnets", err)
	}
}

// keepMem runs Keep until the test ends and returns the leases it moved to.
func keepMem(t *testing.T, m *Manager, cfg *Config, l Lease) <-chan Lease {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	changed := make(chan Lease, 8)
	done := make(chan error, 1)
	go func() { done <- m.Keep(ctx, cfg, l, func(nl Lease) { changed <- nl }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Keep returned %v", err)
		}
	})
	return changed
}

func TestPolicyRenewsBeforeExpiryAndRetriesFailures(t *testing.T) {
	reg := newMemRegistry(400 * time.Millisecond)
	cfg := memConfig(t, reg, testConfig)
	obs := &countingObserver{}
	// Renewal falls due 100 ms into each 400 ms lease.
	m, lb := memManager(t, reg, nodeA, Options{RenewMargin: 300 * time.Millisecond, Observer: obs})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg.mu.Lock()
	reg.failRenew = 2
	reg.mu.Unlock()
	changed := keepMem(t, m, cfg, l)
	eventually(t, "two failed renewals, then two good ones", func() bool {
		_, renewed, _ := obs.counts()
		return renewed >= 2
	})
	obs.mu.Lock()
	failed := obs.failed
	obs.mu.Unlock()
	if failed != 2 || strings.Count(lb.String(), "Error renewing lease (trying again in 20ms)") != 2 {
		t.Errorf("%d failed renewals, want 2; log:\n%s", failed, lb.String())
	}
	kv, _ := reg.kv(reg.keys.subnet(l.Subnet))
	if exp, _ := reg.expiration(context.Background(), kv.lease); !exp.After(time.Now()) {
		t.Errorf("the stored lease expired at %v", exp)
	}
	select {
	case nl := <-changed:
		t.Errorf("a renewal moved the node to %+v", nl)
	default:
	}
}

func TestPolicyReacquire(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	m, _ := memManager(t, reg, nodeA, Options{})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	changed := keepMem(t, m, cfg, l)
	next := func(what string) Lease {
		t.Helper()
		select {
		case nl := <-changed:
			return nl
		case <-time.After(waitFor):
			t.Fatalf("no re-acquisition after %s", what)
		}
		return Lease{}
	}
	key := reg.keys.subnet(l.Subnet)
	kv, _ := reg.kv(key)
	reg.revoke(kv.lease)
	if nl := next("the lease expired"); nl.Subnet != l.Subnet || nl.Reservation() {
		t.Errorf("after expiry got %+v, want %s again", nl, l.Subnet)
	}
	reg.del(key)
	if nl := next("the key was deleted"); nl.Subnet != l.Subnet {
		t.Errorf("after delete got %s, want %s again", nl.Subnet, l.Subnet)
	}
	// A malformed value is nobody's lease: not this node's, not free.
	reg.put(key, `{"PublicIP":"nonsense"}`)
	moved := next("a malformed value")
	if moved.Subnet == l.Subnet || !compatible(cfg, moved.subnets()) {
		t.Errorf("after a malformed value got %s, want another subnet", moved.Subnet)
	}
	// Taken by another node: it keeps the subnet and this node moves.
	key = reg.keys.subnet(moved.Subnet)
	reg.put(key, attrs(nodeB))
	nl := next("a takeover")
	if nl.Subnet == moved.Subnet || !compatible(cfg, nl.subnets()) || m.ownSubnets() != nl.subnets() {
		t.Errorf("after takeover got %s (own %s), want another subnet", nl.Subnet, m.ownSubnets())
	}
	if kv, _ := reg.kv(key); kv.value != attrs(nodeB) {
		t.Errorf("the other node's key became %q", kv.value)
	}
}

func TestPolicyWatchLeavesOutOwnLease(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	m, _ := memManager(t, reg, nodeA, Options{})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := netip.MustParsePrefix("198.18.200.0/24")
	reg.put(reg.keys.subnet(other), attrs(nodeB))
	w := startWatch(t, m)
	w.until("the other lease", func() bool { return w.routes[other] == nodeB })
	reg.put(reg.keys.subnet(l.Subnet), attrs(nodeA)) // own: left out
	reg.del(reg.keys.subnet(other))
	w.until("the other lease removed", func() bool { return len(w.routes) == 0 })
	for _, b := range w.batches {
		for _, e := range b {
			if e.Lease.Subnet == l.Subnet {
				t.Errorf("own lease in the stream: %+v", e)
			}
		}
	}
	// After a compaction the watch re-lists and carries on.
	reg.compact()
	reg.put(reg.keys.subnet(other), attrs(nodeB))
	w.until("the other lease after a compaction", func() bool { return w.routes[other] == nodeB })
}

func TestPolicyClaimWaitsAndCloseStopsIt(t *testing.T) {
	reg := newMemRegistry(subnetTTL)
	cfg := memConfig(t, reg, testConfig)
	a, _ := memManager(t, reg, nodeA, Options{Identity: "host a"})
	a.claimTTL = 0 // expires at once when a stops holding it
	if _, err := a.Acquire(testCtx(t), cfg); err != nil {
		t.Fatal(err)
	}
	b, lbB := memManager(t, reg, nodeA, Options{Identity: "host b"})
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(testCtx(t), cfg)
		done <- err
	}()
	eventually(t, "the conflict", func() bool { return strings.Contains(lbB.String(), "already used by the running flanneld on host a") })
	select {
	case err := <-done:
		t.Fatalf("b acquired (%v) while a holds the claim", err)
	default:
	}
	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(waitFor):
		t.Fatal("Close did not stop the claim goroutine")
	}
	if err := <-done; err != nil {
		t.Fatalf("b after a closed: %v", err)
	}
	if kv, _ := reg.kv(reg.keys.claim(nodeA)); kv.value != "host b" {
		t.Errorf("claim held by %q, want host b", kv.value)
	}
}
