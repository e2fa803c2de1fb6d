package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flannel-go/flannel-go/internal/etcdserver"
	"github.com/flannel-go/flannel-go/internal/etcdtest"
)

// TestWaitConfigEtcdUnreachable starts WaitConfig against an endpoint where
// no etcd listens yet: it must log the outage once, keep retrying, and
// return by itself once etcd appears there with a config.
func TestWaitConfigEtcdUnreachable(t *testing.T) {
	t.Parallel()
	cli, startEtcd := lateEtcd(t)
	m, lb := newManager(cli, nodeA, Options{CallTimeout: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	type result struct {
		cfg *Config
		err error
	}
	done := make(chan result, 1)
	go func() {
		cfg, err := m.WaitConfig(ctx)
		done <- result{cfg, err}
	}()
	const unreachable = "etcd is unreachable, retrying with backoff up to 5s"
	eventually(t, "the unreachable log line", func() bool { return strings.Contains(lb.String(), unreachable) })
	// Several failed attempts (1 s each) later, still one line.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if n := strings.Count(lb.String(), unreachable); n != 1 {
			t.Fatalf("unreachable etcd logged %d times, want once:\n%s", n, lb.String())
		}
		select {
		case r := <-done:
			t.Fatalf("WaitConfig returned %+v with no etcd", r)
		case <-time.After(50 * time.Millisecond):
		}
	}

	appeared := time.Now()
	put(t, startEtcd(), prefix+"/config", testConfig)
	select {
	case r := <-done:
		if r.err != nil || r.cfg.Network != netip.MustParsePrefix("198.18.0.0/16") {
			t.Fatalf("WaitConfig = %+v, %v", r.cfg, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("WaitConfig still waiting 30 s after etcd appeared:\n%s", lb.String())
	}
	t.Logf("config read %s after etcd appeared", time.Since(appeared).Round(time.Millisecond))
	logs := lb.String()
	if strings.Count(logs, unreachable) != 1 || strings.Count(logs, "etcd is reachable again") != 1 {
		t.Errorf("want one line per state change:\n%s", logs)
	}
}

// lateEtcd returns a client for a loopback endpoint where no etcd listens
// yet, and a function that starts etcd there and returns a second client.
func lateEtcd(t *testing.T) (*clientv3.Client, func() *clientv3.Client) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close()
	// flanneld caps gRPC's reconnect backoff the same way (5 s there).
	fast := grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 500 * time.Millisecond}})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop(), DialOptions: []grpc.DialOption{fast}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, func() *clientv3.Client {
		srv, err := etcdserver.Start(context.Background(), etcdserver.Options{Dir: t.TempDir(), ClientURLs: []string{endpoint}, Fast: true, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Close)
		return etcdtest.NewClient(t, srv.Endpoints())
	}
}

// TestAcquireWaitsForEtcd: etcd gone between reading the config and
// acquiring is waited for (logged once), not a fatal error.
func TestAcquireWaitsForEtcd(t *testing.T) {
	t.Parallel()
	cli, startEtcd := lateEtcd(t)
	cfg, err := ParseConfig([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	m, lb := newManager(cli, nodeA, Options{CallTimeout: time.Second, Identity: "host a"})
	done := make(chan error, 1)
	go func() {
		_, err := m.Acquire(testCtx(t), cfg)
		done <- err
	}()
	eventually(t, "the unreachable log line", func() bool { return strings.Contains(lb.String(), "etcd is unreachable") })
	select {
	case err := <-done:
		t.Fatalf("Acquire returned %v with no etcd", err)
	default:
	}
	other := startEtcd()
	if err := <-done; err != nil {
		t.Fatalf("Acquire after etcd appeared: %v\n%s", err, lb.String())
	}
	if countSubnets(t, other) != 1 {
		t.Errorf("want one lease in etcd")
	}
}

// TestUnreachable: which errors count as an unreachable etcd.
func TestUnreachable(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{fmt.Errorf("grant lease: %w", context.DeadlineExceeded), true},
		{status.Error(codes.Unavailable, "connection refused"), true},
		{fmt.Errorf("list subnets: %w", status.Error(codes.DeadlineExceeded, "slow")), true},
		{rpctypes.ErrNoLeader, true},
		{rpctypes.ErrAuthFailed, false},
		{rpctypes.ErrPermissionDenied, false},
		{errConfigNotFound, false},
		{errors.New("network is too small. Minimum useful network prefix is /28"), false},
	} {
		if got := unreachable(tt.err); got != tt.want {
			t.Errorf("unreachable(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// TestConcurrentLeaseEvents runs three nodes' Watch and Keep against one
// etcd while writers add, change and delete other leases, revoke etcd
// leases and compact, all at once (run it with -race). In the end every
// watcher's view equals etcd's and every node still holds its lease.
func TestConcurrentLeaseEvents(t *testing.T) {
	cli := etcdtest.Embedded(t)
	cfg := putConfig(t, cli)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	type node struct {
		m     *Manager
		lb    *logBuffer
		lease Lease
		mu    sync.Mutex
		view  map[netip.Prefix]netip.Addr
	}
	var nodes []*node
	var wg sync.WaitGroup
	runCtx, stop := context.WithCancel(ctx)
	for i := range 3 {
		m, lb := newManager(cli, netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), Options{})
		l, err := m.Acquire(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		n := &node{m: m, lb: lb, lease: l, view: map[netip.Prefix]netip.Addr{}}
		nodes = append(nodes, n)
		events := make(chan []Event)
		wg.Go(func() {
			if err := m.Watch(runCtx, events); err != nil {
				t.Errorf("Watch: %v", err)
			}
		})
		wg.Go(func() {
			for {
				select {
				case <-runCtx.Done():
					return
				case b := <-events:
					n.mu.Lock()
					for _, e := range b {
						if e.Type == EventAdded {
							n.view[e.Lease.Subnet] = e.Lease.PublicIP
						} else {
							delete(n.view, e.Lease.Subnet)
						}
					}
					n.mu.Unlock()
				}
			}
		})
		wg.Go(func() {
			if err := m.Keep(runCtx, cfg, l, func(nl Lease) { t.Errorf("node %d moved to %v", i, nl) }); err != nil {
				t.Errorf("Keep: %v", err)
			}
		})
	}
	own := map[netip.Prefix]bool{}
	for _, n := range nodes {
		own[n.lease.Subnet] = true
	}

	// Writers churn 64 subnets the nodes do not hold.
	var churn []netip.Prefix
	for i := 100; len(churn) < 64; i++ {
		p := netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i))
		if !own[p] {
			churn = append(churn, p)
		}
	}
	writeEnd := time.Now().Add(2 * time.Second)
	var writers sync.WaitGroup
	var ops, compactions sync.Map
	for w := range 8 {
		writers.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(w), 1))
			n := 0
			for time.Now().Before(writeEnd) {
				p := churn[rnd.IntN(len(churn))]
				key := subnetKeyPath(p.String())
				var err error
				switch rnd.IntN(4) {
				case 0, 1:
					ip := netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + rnd.IntN(50))})
					var g *clientv3.LeaseGrantResponse
					if g, err = cli.Grant(ctx, 3600); err == nil {
						_, err = cli.Put(ctx, key, string(MarshalLeaseAttrs(ip)), clientv3.WithLease(g.ID))
					}
				case 2:
					_, err = cli.Delete(ctx, key)
				case 3:
					var r *clientv3.GetResponse
					if r, err = cli.Get(ctx, key); err == nil && len(r.Kvs) == 1 && r.Kvs[0].Lease != 0 {
						// Another writer may have revoked it first.
						if _, err = cli.Revoke(ctx, clientv3.LeaseID(r.Kvs[0].Lease)); errors.Is(err, rpctypes.ErrLeaseNotFound) {
							err = nil
						}
					}
				}
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
				n++
			}
			ops.Store(w, n)
		})
	}
	writers.Go(func() {
		n := 0
		for time.Now().Before(writeEnd) {
			r, err := cli.Get(ctx, "/unrelated")
			if err == nil {
				_, err = cli.Compact(ctx, r.Header.Revision)
			}
			if err != nil {
				t.Errorf("compact: %v", err)
				return
			}
			n++
			time.Sleep(200 * time.Millisecond) // pacing the compactions, not synchronisation
		}
		compactions.Store(0, n)
	})
	writers.Wait()
	total := 0
	ops.Range(func(_, v any) bool { total += v.(int); return true })
	nc, _ := compactions.Load(0)
	t.Logf("%d lease operations and %v compactions in 2 s", total, nc)

	resp, err := cli.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	final := map[netip.Prefix]netip.Addr{}
	for _, kv := range resp.Kvs {
		k, _ := ParseSubnetKeyParts(string(kv.Key))
		p := k.Subnet
		a, _ := ParseLeaseAttrs(kv.Value)
		final[p] = a.PublicIP
	}
	for i, n := range nodes {
		want := map[netip.Prefix]netip.Addr{}
		for p, ip := range final {
			if p != n.lease.Subnet {
				want[p] = ip
			}
		}
		eventually(t, fmt.Sprintf("node %d's view equals etcd", i), func() bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			return fmt.Sprint(n.view) == fmt.Sprint(want)
		})
		if ip, ok := final[n.lease.Subnet]; !ok || ip != n.m.publicIP {
			t.Errorf("node %d lost its lease %s", i, n.lease.Subnet)
		}
	}
	stop()
	wg.Wait()
}

// TestClaimPublicIP: a second node with the same PublicIP waits, naming
// both nodes once, while the first runs; a restart of the first (same
// identity) takes its claim over at once; once the holders are gone and
// the claim expired, the waiting node proceeds.
func TestClaimPublicIP(t *testing.T) {
	t.Parallel()
	etcdtest.Backends(t, func(t *testing.T, cli *clientv3.Client) {
		cfg := putConfig(t, cli)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		first := func(ctx context.Context) Lease {
			m, _ := newManager(cli, nodeA, Options{Identity: "host a, interface eth0 192.0.2.1"})
			m.claimTTL = 1
			l, err := m.Acquire(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			return l
		}
		ctx1, stop1 := context.WithCancel(ctx)
		l1 := first(ctx1)

		m2, lb2 := newManager(cli, nodeA, Options{Identity: "host b, interface eth0 192.0.2.9"})
		done := make(chan error, 1)
		var l2 Lease
		go func() {
			var err error
			l2, err = m2.Acquire(ctx, cfg)
			done <- err
		}()
		const conflict = "PublicIP 192.0.2.1 is already used by the running flanneld on host a, interface eth0 192.0.2.1; this node (host b, interface eth0 192.0.2.9)"
		eventually(t, "the conflict error", func() bool { return strings.Contains(lb2.String(), conflict) })

		// The first node restarts: its claim is taken over, not waited for.
		stop1()
		ctx3, stop3 := context.WithCancel(ctx)
		if l3 := first(ctx3); l3.Subnet != l1.Subnet {
			t.Errorf("restarted node got %s, want its %s", l3.Subnet, l1.Subnet)
		}
		select {
		case err := <-done:
			t.Fatalf("the second node acquired (%v) while the first runs", err)
		default:
		}
		stop3()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if strings.Count(lb2.String(), conflict) != 1 || !strings.Contains(lb2.String(), "is free again") {
			t.Errorf("want the conflict once, then its end:\n%s", lb2.String())
		}
		// With the same PublicIP it reuses the same lease, as upstream:
		// the first node is gone.
		if l2.Subnet != l1.Subnet {
			t.Errorf("second node got %s, want the lease of its PublicIP %s", l2.Subnet, l1.Subnet)
		}
	})
}
