package lease

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
)

const (
	dualConfig   = `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"udp"}}`
	ipv6Config   = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"udp"}}`
	dualStackKey = prefix + "/subnets/198.18.31.0-24&2001:db8:100:1a::-64"
)

var (
	nodeA6 = netip.MustParseAddr("2001:db8:ff::1")
	nodeB6 = netip.MustParseAddr("2001:db8:ff::2")
)

func putConfigDoc(t *testing.T, cli *clientv3.Client, doc string) *Config {
	t.Helper()
	put(t, cli, prefix+"/config", doc)
	cfg, err := ParseConfig([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newManager6(cli *clientv3.Client, ip, ip6 netip.Addr, opts Options) (*Manager, *logBuffer) {
	opts.PublicIPv6 = ip6
	return newManager(cli, ip, opts)
}

// TestDualStackKeysAndValues pins the bytes upstream writes for a dual-stack
// lease: the key with "&" and the IPv6 subnet, the value with PublicIPv6 null
// or, for a node with a public IPv6 address, that address.
func TestDualStackKeysAndValues(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfigDoc(t, cli, dualConfig)
		m, lb := newManager6(cli, nodeA, netip.Addr{}, Options{
			PrevSubnet:     netip.MustParsePrefix("198.18.31.0/24"),
			PrevIPv6Subnet: netip.MustParsePrefix("2001:db8:100:1a::/64"),
		})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet != netip.MustParsePrefix("198.18.31.0/24") || l.IPv6Subnet != netip.MustParsePrefix("2001:db8:100:1a::/64") ||
			l.PublicIP != nodeA || l.PublicIPv6.IsValid() {
			t.Fatalf("lease %+v, want the subnet file's subnets", l)
		}
		if d := time.Until(l.Expiration); d < 23*time.Hour {
			t.Errorf("expiration in %v, want about 24h", d)
		}
		v, id, found := getKVKey(t, cli, dualStackKey)
		if !found || v != `{"PublicIP":"192.0.2.1","PublicIPv6":null}` || id == 0 {
			t.Fatalf("key %s: %q lease %x found %v; want upstream's value on a lease", dualStackKey, v, id, found)
		}
		if !strings.Contains(lb.String(), "Allocated lease (ip: 198.18.31.0/24 ipv6: 2001:db8:100:1a::/64) to current node (192.0.2.1)") {
			t.Errorf("log lacks upstream's allocation line:\n%s", lb)
		}

		mb, _ := newManager6(cli, netip.MustParseAddr("192.0.2.2"), nodeB6, Options{})
		lbl, err := mb.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !compatible(cfg, lbl.subnets()) || lbl.Subnet == l.Subnet || lbl.IPv6Subnet == l.IPv6Subnet {
			t.Fatalf("second lease %+v overlaps %+v or does not fit", lbl, l)
		}
		key := prefix + "/subnets/" + SubnetKey(lbl.Subnet) + "&" + lbl.IPv6Subnet.Addr().String() + "-64"
		if v, _, found := getKVKey(t, cli, key); !found || v != `{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8:ff::2"}` {
			t.Fatalf("key %s: %q %v", key, v, found)
		}

		// A restart finds its dual-stack lease by PublicIP: the key it
		// wrote is its own, not a foreign one.
		m2, lb2 := newManager6(cli, nodeA, netip.Addr{}, Options{})
		l2, err := m2.Acquire(testCtx(t), cfg)
		if err != nil || l2.subnets() != l.subnets() {
			t.Fatalf("re-acquire = %+v, %v; want %+v", l2, err, l)
		}
		if _, id2, _ := getKVKey(t, cli, dualStackKey); id2 == id {
			t.Errorf("reused lease not refreshed onto a new etcd lease")
		}
		if !strings.Contains(lb2.String(), "Found lease (ip: 198.18.31.0/24 ipv6: 2001:db8:100:1a::/64) for current IP (192.0.2.1), reusing") {
			t.Errorf("log lacks upstream's reuse line:\n%s", lb2)
		}
		if n := countSubnets(t, cli); n != 2 {
			t.Errorf("%d keys, want 2", n)
		}
	})
}

// TestDualStackPrevious: the subnet file's pair is reused only when both
// fit and are free; a taken IPv6 subnet, or a file without one (IPv6 just
// enabled), gives a fresh pair, as upstream's check of both subnets does.
func TestDualStackPrevious(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfigDoc(t, cli, dualConfig)
		put(t, cli, dualStackKey, `{"PublicIP":"192.0.2.9","PublicIPv6":null}`)
		for _, prev := range []subnets{
			// The free halves lie beyond the first 100 free subnets, where
			// the random pick never lands, so a new pick differs from them.
			{netip.MustParsePrefix("198.18.200.0/24"), netip.MustParsePrefix("2001:db8:100:1a::/64")}, // IPv6 taken
			{netip.MustParsePrefix("198.18.31.0/24"), netip.MustParsePrefix("2001:db8:100:f0::/64")},  // IPv4 taken
			{V4: netip.MustParsePrefix("198.18.201.0/24")},                                            // no IPv6 in the file
			{netip.MustParsePrefix("198.18.202.0/24"), netip.MustParsePrefix("2001:db8:200:1::/64")},  // outside IPv6Network
		} {
			m, lb := newManager(cli, nodeA, Options{PrevSubnet: prev.V4, PrevIPv6Subnet: prev.V6})
			l, err := m.Acquire(testCtx(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if l.Subnet == prev.V4 || l.IPv6Subnet == prev.V6 || l.Subnet == netip.MustParsePrefix("198.18.31.0/24") ||
				l.IPv6Subnet == netip.MustParsePrefix("2001:db8:100:1a::/64") || !compatible(cfg, l.subnets()) {
				t.Errorf("previous %v: got %+v\n%s", prev, l, lb)
			}
			if _, err := cli.Delete(testCtx(t), prefix+"/subnets/"+l.subnets().key()); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestFamilySwitch: a lease that no longer fits after IPv6 was enabled or
// disabled is deleted and replaced, as upstream does.
func TestFamilySwitch(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		put(t, cli, subnetKeyPath("198.18.5.0/24"), string(MarshalLeaseAttrs(nodeA)))
		dual := putConfigDoc(t, cli, dualConfig)
		m, lb := newManager(cli, nodeA, Options{})
		l, err := m.Acquire(testCtx(t), dual)
		if err != nil || !l.IPv6Subnet.IsValid() {
			t.Fatalf("Acquire = %+v, %v", l, err)
		}
		if _, _, found := getKV(t, cli, netip.MustParsePrefix("198.18.5.0/24")); found {
			t.Errorf("IPv4-only lease kept under a dual-stack config")
		}
		if !strings.Contains(lb.String(), "Found lease (ip: 198.18.5.0/24 ipv6: ::/0) for current IP (192.0.2.1) but not compatible with current config, deleting") {
			t.Errorf("log:\n%s", lb)
		}
		v4 := putConfig(t, cli)
		m2, _ := newManager(cli, nodeA, Options{})
		l2, err := m2.Acquire(testCtx(t), v4)
		if err != nil || l2.IPv6Subnet.IsValid() || !compatible(v4, l2.subnets()) {
			t.Fatalf("Acquire under IPv4 only = %+v, %v", l2, err)
		}
		if _, _, found := getKVKey(t, cli, prefix+"/subnets/"+l.subnets().key()); found || countSubnets(t, cli) != 1 {
			t.Errorf("dual-stack lease kept under an IPv4-only config")
		}
	})
}

// TestIPv6Only: upstream's key for a lease without an IPv4 subnet
// ("0.0.0.0-0&..."), PublicIP "0.0.0.0" in the value, and the node found
// again by its PublicIPv6; two such nodes get distinct subnets.
func TestIPv6Only(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfigDoc(t, cli, ipv6Config)
		m, lb := newManager6(cli, nodeA, nodeA6, Options{PrevIPv6Subnet: netip.MustParsePrefix("2001:db8:100:1a::/64")})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet.IsValid() || l.IPv6Subnet != netip.MustParsePrefix("2001:db8:100:1a::/64") || l.PublicIP.IsValid() || l.PublicIPv6 != nodeA6 {
			t.Fatalf("lease %+v", l)
		}
		key := prefix + "/subnets/0.0.0.0-0&2001:db8:100:1a::-64"
		if v, _, found := getKVKey(t, cli, key); !found || v != `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:ff::1"}` {
			t.Fatalf("key %s: %q %v\n%s", key, v, found, lb)
		}
		mb, _ := newManager6(cli, netip.MustParseAddr("192.0.2.2"), nodeB6, Options{})
		lb2, err := mb.Acquire(testCtx(t), cfg)
		if err != nil || lb2.IPv6Subnet == l.IPv6Subnet || !compatible(cfg, lb2.subnets()) {
			t.Fatalf("second IPv6-only node: %+v, %v", lb2, err)
		}
		m2, _ := newManager6(cli, netip.MustParseAddr("192.0.2.99"), nodeA6, Options{})
		if again, err := m2.Acquire(testCtx(t), cfg); err != nil || again.subnets() != l.subnets() {
			t.Fatalf("restart = %+v, %v; want %+v found by PublicIPv6", again, err, l)
		}
		m3, _ := newManager(cli, nodeA, Options{})
		if _, err := m3.Acquire(testCtx(t), cfg); err == nil || !strings.Contains(err.Error(), "needs a public IPv6 address") {
			t.Errorf("IPv6-only without a public IPv6: %v", err)
		}
	})
}

// TestDualStackWatchAndKeep: events carry both subnets and both public
// addresses (an IPv6-only lease has no IPv4 subnet); the own lease is left
// out; renewals keep the key and value bytes; a deleted own lease comes back
// with the same subnets.
func TestDualStackWatchAndKeep(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfigDoc(t, cli, dualConfig)
		other := prefix + "/subnets/198.18.32.0-24&2001:db8:100:2b::-64"
		put(t, cli, other, `{"PublicIP":"192.0.2.2","PublicIPv6":"2001:db8:ff::2"}`)
		v6only := prefix + "/subnets/0.0.0.0-0&2001:db8:100:2c::-64"
		put(t, cli, v6only, `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:ff::3"}`)

		m, _ := newManager6(cli, nodeA, nodeA6, Options{
			PrevSubnet: netip.MustParsePrefix("198.18.31.0/24"), PrevIPv6Subnet: netip.MustParsePrefix("2001:db8:100:1a::/64"),
			RenewMargin: subnetTTL - 300*time.Millisecond,
		})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil || l.subnets().key() != "198.18.31.0-24&2001:db8:100:1a::-64" {
			t.Fatalf("Acquire = %+v, %v", l, err)
		}
		events := make(chan []Event, 16)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = m.Watch(ctx, events) }()
		changed := make(chan Lease, 4)
		keepDone := make(chan struct{})
		go func() { defer close(keepDone); _ = m.Keep(ctx, cfg, l, func(nl Lease) { changed <- nl }) }()
		t.Cleanup(func() { cancel(); <-done; <-keepDone })

		want := map[string]Lease{
			"198.18.32.0/24": {Subnet: netip.MustParsePrefix("198.18.32.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:2b::/64"),
				PublicIP: netip.MustParseAddr("192.0.2.2"), PublicIPv6: nodeB6},
			"invalid Prefix": {IPv6Subnet: netip.MustParsePrefix("2001:db8:100:2c::/64"), PublicIPv6: netip.MustParseAddr("2001:db8:ff::3")},
		}
		select {
		case b := <-events:
			if len(b) != len(want) {
				t.Fatalf("snapshot %+v, want %d leases without the own one", b, len(want))
			}
			for _, e := range b {
				if w, ok := want[e.Lease.Subnet.String()]; !ok || e.Type != EventAdded || e.Lease != w {
					t.Errorf("snapshot event %+v, want %+v", e, w)
				}
			}
		case <-time.After(waitFor):
			t.Fatal("no snapshot")
		}

		// Renewals: a new etcd lease each time, the same key and bytes.
		_, id0, _ := getKVKey(t, cli, dualStackKey)
		deadline := time.Now().Add(waitFor)
		for {
			v, id, found := getKVKey(t, cli, dualStackKey)
			if found && id != id0 {
				if v != `{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8:ff::1"}` {
					t.Fatalf("renewed value %q", v)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("lease never renewed")
			}
			time.Sleep(20 * time.Millisecond)
		}

		if _, err := cli.Delete(testCtx(t), v6only); err != nil {
			t.Fatal(err)
		}
		select {
		case b := <-events:
			if len(b) != 1 || b[0].Type != EventRemoved || b[0].Lease != want["invalid Prefix"] {
				t.Errorf("removal batch %+v", b)
			}
		case <-time.After(waitFor):
			t.Fatal("no removal event")
		}

		if _, err := cli.Delete(testCtx(t), dualStackKey); err != nil {
			t.Fatal(err)
		}
		select {
		case nl := <-changed:
			if nl.subnets() != l.subnets() {
				t.Errorf("re-acquired %+v, want the same subnets as %+v", nl, l)
			}
		case <-time.After(waitFor):
			t.Fatal("lease not re-acquired")
		}
		if v, _, found := getKVKey(t, cli, dualStackKey); !found || v != `{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8:ff::1"}` {
			t.Errorf("re-acquired key: %q %v", v, found)
		}
	})
}

// TestPickSubnet6 checks the IPv6 pick against a plain statement of
// upstream's policy: a free subnet among the first 100 free ones from
// IPv6SubnetMin, never a taken or overlapping one.
func TestPickSubnet6(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:100::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	taken := []netip.Prefix{
		netip.MustParsePrefix("2001:db8:100:1::/64"),
		netip.MustParsePrefix("2001:db8:100:3::/64"),
		netip.MustParsePrefix("2001:db8:100:8::/61"),    // covers :8:: to :f::
		netip.MustParsePrefix("2001:db8:100:10::1/128"), // inside :10::/64
	}
	var first100 []netip.Prefix
	for i := 1; len(first100) < maxCandidates; i++ {
		p := netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00, byte(i >> 8), byte(i)}), 64)
		if !overlapsAny(p, taken) {
			first100 = append(first100, p)
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	seen := map[netip.Prefix]bool{}
	for range 2000 {
		p, err := pickSubnet6(cfg, taken, rnd)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(first100, p) {
			t.Fatalf("picked %s, not among the first 100 free subnets", p)
		}
		seen[p] = true
	}
	if len(seen) < 90 {
		t.Errorf("only %d distinct subnets in 2000 picks", len(seen))
	}

	small, err := ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:100::/124"}`))
	if err != nil {
		t.Fatal(err)
	}
	all := []netip.Prefix{netip.MustParsePrefix("2001:db8:100::4/126"), netip.MustParsePrefix("2001:db8:100::8/126")}
	if p, err := pickSubnet6(small, all, rnd); err != nil || p != netip.MustParsePrefix("2001:db8:100::c/126") {
		t.Errorf("last free /126: %v %v", p, err)
	}
	all = append(all, netip.MustParsePrefix("2001:db8:100::c/126"))
	if p, err := pickSubnet6(small, all, rnd); err != errOutOfSubnets {
		t.Errorf("full range: %v %v, want out of subnets", p, err)
	}
}

// TestDualStackOutOfSubnets: a dual-stack lease needs both families free,
// as upstream's allocateSubnet; a full IPv6 range stops allocation although
// IPv4 subnets are left.
func TestDualStackOutOfSubnets(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfigDoc(t, cli, `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/124"}`)
		got := map[netip.Prefix]bool{}
		for i := range 3 {
			m, _ := newManager(cli, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}), Options{})
			l, err := m.Acquire(testCtx(t), cfg)
			if err != nil || got[l.IPv6Subnet] || !compatible(cfg, l.subnets()) {
				t.Fatalf("node %d: %+v %v", i, l, err)
			}
			got[l.IPv6Subnet] = true
		}
		m, _ := newManager(cli, netip.MustParseAddr("192.0.2.20"), Options{})
		if l, err := m.Acquire(testCtx(t), cfg); err == nil || !strings.Contains(err.Error(), "out of subnets") {
			t.Fatalf("fourth node: %+v %v, want out of subnets", l, err)
		}
	})
}
