package lease

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
	"github.com/flannel-go/flannel-go/internal/syncbuf"
)

const (
	testConfig = `{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`
	prefix     = "/coreos.com/network"
	waitFor    = 15 * time.Second
)

var nodeA = netip.MustParseAddr("192.0.2.1")

// logBuffer collects log output from several goroutines.
type logBuffer = syncbuf.Buffer

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, cli *clientv3.Client, key, value string, opts ...clientv3.OpOption) *clientv3.PutResponse {
	t.Helper()
	resp, err := cli.Put(testCtx(t), key, value, opts...)
	if err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
	return resp
}

func putConfig(t *testing.T, cli *clientv3.Client) *Config {
	t.Helper()
	put(t, cli, prefix+"/config", testConfig)
	cfg, err := ParseConfig([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func newManager(cli *clientv3.Client, ip netip.Addr, opts Options) (*Manager, *logBuffer) {
	var lb logBuffer
	opts.PublicIP = ip
	opts.Logger = slog.New(slog.NewTextHandler(&lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.RetryInterval == 0 {
		opts.RetryInterval = 50 * time.Millisecond
	}
	m := NewManager(cli, opts)
	m.configRetry = 20 * time.Millisecond
	return m, &lb
}

// hookRegistry runs afterList after each list, to change the store between
// a Watch's snapshot and its watch.
type hookRegistry struct {
	registry
	afterList func()
}

func (h hookRegistry) list(ctx context.Context) ([]entry, []string, int64, error) {
	entries, bad, rev, err := h.registry.list(ctx)
	h.afterList()
	return entries, bad, rev, err
}

func getKV(t *testing.T, cli *clientv3.Client, subnet netip.Prefix) (value string, lease clientv3.LeaseID, found bool) {
	t.Helper()
	return getKVKey(t, cli, prefix+"/subnets/"+SubnetKey(subnet))
}

// getKVKey reads one key.
func getKVKey(t *testing.T, cli *clientv3.Client, key string) (value string, lease clientv3.LeaseID, found bool) {
	t.Helper()
	resp, err := cli.Get(testCtx(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, false
	}
	return string(resp.Kvs[0].Value), clientv3.LeaseID(resp.Kvs[0].Lease), true
}

func countSubnets(t *testing.T, cli *clientv3.Client) int {
	t.Helper()
	resp, err := cli.Get(testCtx(t), prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(resp.Count)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if !time.Now().Before(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWaitConfig(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		m, lb := newManager(cli, nodeA, Options{})
		type result struct {
			cfg *Config
			err error
		}
		done := make(chan result, 1)
		go func() {
			cfg, err := m.WaitConfig(testCtx(t))
			done <- result{cfg, err}
		}()
		notFound := "Couldn't fetch network config: flannel config not found in etcd store. Did you create your config using etcdv3 API?"
		eventually(t, "the not-found log line", func() bool { return strings.Contains(lb.String(), notFound) })
		put(t, cli, prefix+"/config", `{"Network":"198.18.0.0/29"}`)
		tooSmall := "Couldn't fetch network config: network is too small. Minimum useful network prefix is /28"
		eventually(t, "the invalid-config log line", func() bool { return strings.Contains(lb.String(), tooSmall) })
		put(t, cli, prefix+"/config", testConfig)
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.cfg.Network != netip.MustParsePrefix("198.18.0.0/16") || r.cfg.SubnetLen != 24 {
			t.Errorf("config = %+v", r.cfg)
		}
		logs := lb.String()
		if strings.Count(logs, notFound) != 1 || strings.Count(logs, tooSmall) != 1 {
			t.Errorf("each distinct error must be logged once:\n%s", logs)
		}

		ctx, cancel := context.WithCancel(context.Background())
		m2, _ := newManager(cli, nodeA, Options{Prefix: "/elsewhere"})
		go cancel()
		if _, err := m2.WaitConfig(ctx); err == nil {
			t.Error("WaitConfig with a cancelled context: want error")
		}
	})
}

func TestAcquire(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		m, lb := newManager(cli, nodeA, Options{})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !compatible(cfg, l.subnets()) || l.PublicIP != nodeA {
			t.Fatalf("lease %+v does not fit the config", l)
		}
		if d := time.Until(l.Expiration); d < 23*time.Hour || d > 24*time.Hour+time.Second {
			t.Errorf("expiration in %v, want about 24h", d)
		}
		value, id, found := getKV(t, cli, l.Subnet)
		if !found || value != `{"PublicIP":"192.0.2.1","PublicIPv6":null}` {
			t.Fatalf("stored value = %q (found %v)", value, found)
		}
		ttl, err := cli.TimeToLive(testCtx(t), id)
		if err != nil {
			t.Fatal(err)
		}
		if ttl.GrantedTTL != 86400 {
			t.Errorf("granted TTL = %d, want 86400", ttl.GrantedTTL)
		}
		for _, want := range []string{
			"Picking subnet in range 198.18.1.0 ... 198.18.255.0",
			fmt.Sprintf("Allocated lease (ip: %s ipv6: ::/0) to current node (192.0.2.1)", l.Subnet),
		} {
			if !strings.Contains(lb.String(), want) {
				t.Errorf("log lacks %q:\n%s", want, lb.String())
			}
		}
	})
}

func TestReuseAfterRestart(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		m1, _ := newManager(cli, nodeA, Options{})
		l1, err := m1.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, id1, _ := getKV(t, cli, l1.Subnet)
		m2, lb := newManager(cli, nodeA, Options{PrevSubnet: netip.MustParsePrefix("198.18.250.0/24")})
		l2, err := m2.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if l2.Subnet != l1.Subnet {
			t.Fatalf("restart got %s, want the same subnet %s", l2.Subnet, l1.Subnet)
		}
		if n := countSubnets(t, cli); n != 1 {
			t.Errorf("%d subnet keys, want 1", n)
		}
		if _, id2, _ := getKV(t, cli, l1.Subnet); id2 == id1 || id2 == clientv3.NoLease {
			t.Errorf("reuse must refresh onto a new lease: old %x new %x", id1, id2)
		}
		want := fmt.Sprintf("Found lease (ip: %s ipv6: ::/0) for current IP (192.0.2.1), reusing", l1.Subnet)
		if !strings.Contains(lb.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, lb.String())
		}
	})
}

func TestReuseFromSubnetFile(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		prev := netip.MustParsePrefix("198.18.77.0/24")
		m, lb := newManager(cli, nodeA, Options{PrevSubnet: prev})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if l.Subnet != prev {
			t.Fatalf("got %s, want the previous subnet %s", l.Subnet, prev)
		}
		if !strings.Contains(lb.String(), "Found previously leased subnet (198.18.77.0/24), reusing") {
			t.Errorf("log:\n%s", lb.String())
		}

		// Taken by another node: not stolen (the v2-era behaviour is not kept).
		nodeB := netip.MustParseAddr("192.0.2.2")
		mb, _ := newManager(cli, nodeB, Options{PrevSubnet: prev})
		lb2, err := mb.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if lb2.Subnet == prev {
			t.Fatalf("node B took node A's subnet %s", prev)
		}
		if v, _, _ := getKV(t, cli, prev); v != string(MarshalLeaseAttrs(nodeA)) {
			t.Errorf("node A's lease changed to %q", v)
		}

		// Incompatible previous subnet: ignored.
		nodeC := netip.MustParseAddr("192.0.2.3")
		mc, logc := newManager(cli, nodeC, Options{PrevSubnet: netip.MustParsePrefix("198.18.78.0/25")})
		lc, err := mc.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !compatible(cfg, lc.subnets()) || lc.Subnet == prev || lc.Subnet == lb2.Subnet {
			t.Errorf("node C got %s", lc.Subnet)
		}
		if !strings.Contains(logc.String(), "Found previously leased subnet (198.18.78.0/25) but not compatible with the Etcd network config, ignoring") {
			t.Errorf("log:\n%s", logc.String())
		}
	})
}

func TestIncompatibleLeaseDeleted(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		old := netip.MustParsePrefix("198.18.5.0/25")
		grant, err := cli.Grant(testCtx(t), 86400)
		if err != nil {
			t.Fatal(err)
		}
		put(t, cli, prefix+"/subnets/"+SubnetKey(old), string(MarshalLeaseAttrs(nodeA)), clientv3.WithLease(grant.ID))
		m, lb := newManager(cli, nodeA, Options{})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !compatible(cfg, l.subnets()) {
			t.Errorf("got incompatible %s", l.Subnet)
		}
		if _, _, found := getKV(t, cli, old); found {
			t.Error("the incompatible lease was not deleted")
		}
		if n := countSubnets(t, cli); n != 1 {
			t.Errorf("%d subnet keys, want 1", n)
		}
		if !strings.Contains(lb.String(), "Found lease (ip: 198.18.5.0/25 ipv6: ::/0) for current IP (192.0.2.1) but not compatible with current config, deleting") {
			t.Errorf("log:\n%s", lb.String())
		}
	})
}

func TestReservationHonoured(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		res := netip.MustParsePrefix("198.18.200.0/24")
		value := `{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"udp"}`
		put(t, cli, prefix+"/subnets/"+SubnetKey(res), value)
		for i := 0; i < 2; i++ { // first start and a restart
			m, _ := newManager(cli, nodeA, Options{PrevSubnet: netip.MustParsePrefix("198.18.3.0/24")})
			l, err := m.Acquire(testCtx(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if l.Subnet != res || !l.Reservation() {
				t.Fatalf("got %+v, want the reservation %s with zero expiration", l, res)
			}
			got, id, found := getKV(t, cli, res)
			if !found || id != clientv3.NoLease || got != value {
				t.Fatalf("reservation changed: value %q lease %x found %v", got, id, found)
			}
		}
		if n := countSubnets(t, cli); n != 1 {
			t.Errorf("%d subnet keys, want 1", n)
		}

		// Keep never renews a reservation; a deleted one is re-acquired as a lease.
		m, _ := newManager(cli, nodeA, Options{RenewMargin: 24*time.Hour - time.Millisecond})
		l, _ := m.Acquire(testCtx(t), cfg)
		ctx, cancel := context.WithCancel(testCtx(t))
		changed := make(chan Lease, 4)
		kept := make(chan error, 1)
		go func() { kept <- m.Keep(ctx, cfg, l, func(l Lease) { changed <- l }) }()
		if _, err := cli.Delete(testCtx(t), prefix+"/subnets/"+SubnetKey(res)); err != nil {
			t.Fatal(err)
		}
		var nl Lease
		select {
		case nl = <-changed:
		case <-time.After(waitFor):
			t.Fatal("Keep did not re-acquire the deleted reservation")
		}
		if nl.Subnet != res || nl.Reservation() {
			t.Errorf("re-acquired %+v, want %s as an ordinary lease", nl, res)
		}
		cancel()
		if err := <-kept; err != nil {
			t.Errorf("Keep returned %v", err)
		}
	})
}

func TestRenew(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		// A margin just under the TTL makes renewal due almost at once.
		m, lb := newManager(cli, nodeA, Options{RenewMargin: 24*time.Hour - 300*time.Millisecond})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, id0, _ := getKV(t, cli, l.Subnet)
		ctx, cancel := context.WithCancel(testCtx(t))
		kept := make(chan error, 1)
		go func() {
			kept <- m.Keep(ctx, cfg, l, func(Lease) { t.Error("onChange called on a plain renewal") })
		}()
		eventually(t, "two renewals", func() bool { return strings.Count(lb.String(), "Lease renewed, new expiration: ") >= 2 })
		value, id, found := getKV(t, cli, l.Subnet)
		if !found || id == id0 || value != string(MarshalLeaseAttrs(nodeA)) {
			t.Errorf("after renewal: value %q lease %x (was %x) found %v", value, id, id0, found)
		}
		ttl, err := cli.TimeToLive(testCtx(t), id)
		if err != nil || ttl.GrantedTTL != 86400 {
			t.Errorf("renewed lease TTL %v, %v", ttl, err)
		}
		cancel()
		if err := <-kept; err != nil {
			t.Errorf("Keep returned %v", err)
		}
		if _, _, found := getKV(t, cli, l.Subnet); !found {
			t.Error("the lease must stay in etcd after shutdown")
		}
	})
}

func TestKeepReacquiresRevokedLease(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		m, lb := newManager(cli, nodeA, Options{})
		l, err := m.Acquire(testCtx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(testCtx(t))
		changed := make(chan Lease, 4)
		kept := make(chan error, 1)
		go func() { kept <- m.Keep(ctx, cfg, l, func(l Lease) { changed <- l }) }()
		next := func(what string) Lease {
			t.Helper()
			select {
			case nl := <-changed:
				return nl
			case <-time.After(waitFor):
				t.Fatalf("Keep did not re-acquire after %s; log:\n%s", what, lb.String())
			}
			return Lease{}
		}

		_, id, _ := getKV(t, cli, l.Subnet)
		if _, err := cli.Revoke(testCtx(t), id); err != nil {
			t.Fatal(err)
		}
		nl := next("revoke")
		if nl.Subnet != l.Subnet || nl.PublicIP != nodeA || nl.Reservation() {
			t.Errorf("after revoke got %+v, want %s", nl, l.Subnet)
		}
		if v, id2, found := getKV(t, cli, l.Subnet); !found || id2 == id || v != string(MarshalLeaseAttrs(nodeA)) {
			t.Errorf("after revoke: key %q lease %x found %v", v, id2, found)
		}

		if _, err := cli.Delete(testCtx(t), prefix+"/subnets/"+SubnetKey(l.Subnet)); err != nil {
			t.Fatal(err)
		}
		if nl := next("delete"); nl.Subnet != l.Subnet {
			t.Errorf("after delete got %s, want %s", nl.Subnet, l.Subnet)
		}

		// Another node overwrites the key: this node moves to a new subnet.
		put(t, cli, prefix+"/subnets/"+SubnetKey(l.Subnet), `{"PublicIP":"192.0.2.9","PublicIPv6":null}`)
		nl = next("takeover")
		if nl.Subnet == l.Subnet || !compatible(cfg, nl.subnets()) {
			t.Errorf("after takeover got %s", nl.Subnet)
		}
		cancel()
		if err := <-kept; err != nil {
			t.Errorf("Keep returned %v", err)
		}
	})
}

func TestConcurrentAcquire(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		const n = 200
		leases := make([]Lease, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
				m, _ := newManager(cli, ip, Options{CallTimeout: 20 * time.Second})
				leases[i], errs[i] = m.Acquire(testCtx(t), cfg)
			}()
		}
		wg.Wait()
		seen := map[netip.Prefix]int{}
		for i, l := range leases {
			if errs[i] != nil {
				t.Errorf("manager %d: %v", i, errs[i])
				continue
			}
			if !compatible(cfg, l.subnets()) {
				t.Errorf("manager %d got %s outside the range", i, l.Subnet)
			}
			if j, dup := seen[l.Subnet]; dup {
				t.Errorf("managers %d and %d both got %s", j, i, l.Subnet)
			}
			seen[l.Subnet] = i
		}
		if c := countSubnets(t, cli); c != n {
			t.Errorf("%d subnet keys, want %d", c, n)
		}
	})
}

// collect reads event batches until cond holds on the accumulated state.
type watchState struct {
	t       *testing.T
	events  chan []Event
	routes  map[netip.Prefix]netip.Addr
	batches [][]Event
}

func (w *watchState) until(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.After(waitFor)
	for !cond() {
		select {
		case b := <-w.events:
			w.batches = append(w.batches, b)
			for _, e := range b {
				switch e.Type {
				case EventAdded:
					w.routes[e.Lease.Subnet] = e.Lease.PublicIP
				case EventRemoved:
					if w.routes[e.Lease.Subnet] != e.Lease.PublicIP {
						w.t.Errorf("removed %s via %s, known via %s", e.Lease.Subnet, e.Lease.PublicIP, w.routes[e.Lease.Subnet])
					}
					delete(w.routes, e.Lease.Subnet)
				}
			}
		case <-deadline:
			w.t.Fatalf("timed out waiting for %s; routes %v", what, w.routes)
		}
	}
}

func startWatch(t *testing.T, m *Manager) *watchState {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchState{t: t, events: make(chan []Event), routes: map[netip.Prefix]netip.Addr{}}
	done := make(chan error, 1)
	go func() { done <- m.Watch(ctx, w.events) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch returned %v", err)
		}
	})
	return w
}

func subnetKeyPath(s string) string {
	return prefix + "/subnets/" + SubnetKey(netip.MustParsePrefix(s))
}

func TestWatch(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		putConfig(t, cli)
		b := netip.MustParseAddr("192.0.2.2")
		c := netip.MustParseAddr("192.0.2.3")
		own := netip.MustParsePrefix("198.18.10.0/24")
		put(t, cli, subnetKeyPath("198.18.10.0/24"), string(MarshalLeaseAttrs(nodeA)))
		put(t, cli, subnetKeyPath("198.18.11.0/24"), string(MarshalLeaseAttrs(b)))
		put(t, cli, prefix+"/subnets/198.18.12.0-32", string(MarshalLeaseAttrs(c)))
		put(t, cli, subnetKeyPath("198.18.13.0/24"), `{"PublicIP":"nonsense"}`)

		m, lb := newManager(cli, nodeA, Options{})
		// The Manager leaves out the lease it holds: 198.18.10.0/24, a
		// reservation for nodeA.
		if l, err := m.Acquire(testCtx(t), putConfig(t, cli)); err != nil || l.Subnet != own {
			t.Fatalf("Acquire = %v, %v; want the reservation %s", l, err, own)
		}
		w := startWatch(t, m)
		w.until("the snapshot", func() bool { return len(w.batches) >= 1 })
		if len(w.batches[0]) != 1 || w.batches[0][0].Type != EventAdded || w.batches[0][0].Lease.Subnet != netip.MustParsePrefix("198.18.11.0/24") || w.batches[0][0].Lease.PublicIP != b {
			t.Fatalf("snapshot batch = %+v, want only 198.18.11.0/24 via %s", w.batches[0], b)
		}
		if !strings.Contains(lb.String(), "198.18.12.0-32") || !strings.Contains(lb.String(), "198.18.13.0-24") {
			t.Errorf("malformed entries were not warned about:\n%s", lb.String())
		}

		grant, err := cli.Grant(testCtx(t), 86400)
		if err != nil {
			t.Fatal(err)
		}
		put(t, cli, subnetKeyPath("198.18.14.0/24"), string(MarshalLeaseAttrs(c)), clientv3.WithLease(grant.ID))
		put(t, cli, subnetKeyPath("198.18.10.0/24"), string(MarshalLeaseAttrs(nodeA))) // own: filtered
		w.until("198.18.14.0/24 added", func() bool { return w.routes[netip.MustParsePrefix("198.18.14.0/24")] == c })

		if _, err := cli.Revoke(testCtx(t), grant.ID); err != nil {
			t.Fatal(err)
		}
		w.until("198.18.14.0/24 removed", func() bool { _, ok := w.routes[netip.MustParsePrefix("198.18.14.0/24")]; return !ok })
		if _, err := cli.Delete(testCtx(t), subnetKeyPath("198.18.11.0/24")); err != nil {
			t.Fatal(err)
		}
		w.until("198.18.11.0/24 removed", func() bool { return len(w.routes) == 0 })

		// A value turning malformed removes the route rather than keeping a stale one.
		put(t, cli, subnetKeyPath("198.18.15.0/24"), string(MarshalLeaseAttrs(b)))
		w.until("198.18.15.0/24 added", func() bool { return len(w.routes) == 1 })
		put(t, cli, subnetKeyPath("198.18.15.0/24"), `{"PublicIP":"0.0.0.0"}`)
		w.until("198.18.15.0/24 removed", func() bool { return len(w.routes) == 0 })
		for _, b := range w.batches {
			for _, e := range b {
				if e.Lease.Subnet == own {
					t.Errorf("own subnet leaked into the stream: %+v", e)
				}
			}
		}
	})
}

func TestWatchRecoversFromCompaction(t *testing.T) {
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		putConfig(t, cli)
		b := netip.MustParseAddr("192.0.2.2")
		c := netip.MustParseAddr("192.0.2.3")
		put(t, cli, subnetKeyPath("198.18.20.0/24"), string(MarshalLeaseAttrs(b)))
		put(t, cli, subnetKeyPath("198.18.21.0/24"), string(MarshalLeaseAttrs(c)))

		m, lb := newManager(cli, nodeA, Options{})
		// Between the snapshot and the watch, change the data and compact
		// past the snapshot: the watch must start from a compacted revision.
		var once sync.Once
		m.reg = hookRegistry{registry: m.reg, afterList: func() {
			once.Do(func() {
				put(t, cli, subnetKeyPath("198.18.22.0/24"), string(MarshalLeaseAttrs(c)))
				put(t, cli, subnetKeyPath("198.18.20.0/24"), string(MarshalLeaseAttrs(netip.MustParseAddr("192.0.2.4"))))
				if _, err := cli.Delete(testCtx(t), subnetKeyPath("198.18.21.0/24")); err != nil {
					t.Error(err)
				}
				resp := put(t, cli, "/unrelated", "x")
				if _, err := cli.Compact(testCtx(t), resp.Header.Revision); err != nil {
					t.Error(err)
				}
			})
		}}
		w := startWatch(t, m)
		want := map[netip.Prefix]netip.Addr{
			netip.MustParsePrefix("198.18.20.0/24"): netip.MustParseAddr("192.0.2.4"),
			netip.MustParsePrefix("198.18.22.0/24"): c,
		}
		w.until("the state after compaction", func() bool { return fmt.Sprint(w.routes) == fmt.Sprint(want) })
		if !strings.Contains(lb.String(), "compaction") {
			t.Errorf("the watch did not hit the compaction:\n%s", lb.String())
		}
		// The stream keeps working after the re-list.
		put(t, cli, subnetKeyPath("198.18.23.0/24"), string(MarshalLeaseAttrs(b)))
		w.until("198.18.23.0/24 added", func() bool { return w.routes[netip.MustParsePrefix("198.18.23.0/24")] == b })
	})
}
