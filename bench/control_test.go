package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flannel-go/flannel-go/internal/etcdserver"
	"github.com/flannel-go/flannel-go/internal/routesync"
	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/router"
	"github.com/flannel-go/flannel-go/tun"
)

var discard = slog.New(slog.DiscardHandler)

// idleQueue is a TUN queue that never carries a packet: the control-plane
// benchmarks need a Router only for its table swaps, never run it.
type idleQueue struct{ closed chan struct{} }

func (q idleQueue) Read([][]byte, []int, int) (int, error) {
	<-q.closed
	return 0, os.ErrClosed
}
func (q idleQueue) Write(bufs [][]byte, _ int) (int, error) { return len(bufs), nil }
func (q idleQueue) BatchSize() int                          { return tun.DefaultBatchSize }
func (q idleQueue) Offloads() tun.Offloads                  { return tun.Offloads{} }
func (q idleQueue) Close() error {
	select {
	case <-q.closed:
	default:
		close(q.closed)
	}
	return nil
}

// controlPlane is one watcher node: an etcd server, the node's lease.Manager
// watching the subnets and a Router whose table follows the events, wired
// as flanneld wires them.
type appliedEvent struct {
	subnet netip.Prefix
	at     time.Time
}

type controlPlane struct {
	cli     *clientv3.Client
	rt      *router.Router
	applied chan appliedEvent // every Added subnet, after its table swap
	ready   chan struct{}     // closed after the initial snapshot is applied
	stop    func()
}

func startControlPlane(tb testing.TB, network netip.Prefix, subnetLen int, capacity int) *controlPlane {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir, err := os.MkdirTemp("", "flannel-go-bench-etcd-")
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := etcdserver.Start(ctx, etcdserver.Options{Dir: dir, ClientURLs: []string{"http://127.0.0.1:0"}, Fast: true, Logger: discard})
	if err != nil {
		tb.Fatalf("start embedded etcd: %v", err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatalf("etcd client: %v", err)
	}
	own := netip.PrefixFrom(network.Addr(), subnetLen)
	// The router's sockets live on loopback at a port nobody else uses.
	l, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.LocalAddr().(*net.UDPAddr).Port
	l.Close()
	rt, err := router.New(router.Config{
		Network: network, SubnetLen: subnetLen, OwnSubnet: own,
		LocalAddr: netip.MustParseAddr("127.0.0.1"), Port: port, Logger: discard,
	}, []tun.Queue{idleQueue{closed: make(chan struct{})}})
	if err != nil {
		tb.Fatalf("router: %v", err)
	}
	cp := &controlPlane{cli: cli, rt: rt, applied: make(chan appliedEvent, capacity+1), ready: make(chan struct{})}
	mgr := lease.NewManager(cli, lease.Options{PublicIP: netip.MustParseAddr("192.0.2.1"), Logger: discard})
	events := make(chan []lease.Event, 16)
	var wg sync.WaitGroup
	wg.Go(func() { mgr.Watch(ctx, func() netip.Prefix { return own }, events) })
	rs := routesync.New(discard)
	first := true
	rs.OnApply = cp.onApply(&first)
	wg.Go(func() { rs.Run(ctx, events, rt) })
	var once sync.Once
	cp.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			rt.Close()
			cli.Close()
			srv.Close()
			os.RemoveAll(dir)
		})
	}
	tb.Cleanup(cp.stop)
	select {
	case <-cp.ready:
	case <-time.After(30 * time.Second):
		tb.Fatal("watcher sent no initial snapshot within 30 s")
	}
	return cp
}

// onApply announces each Added subnet once flanneld's own event loop
// (routesync) has swapped it into the router's table.
func (cp *controlPlane) onApply(first *bool) func([]lease.Event) {
	return func(batch []lease.Event) {
		now := time.Now()
		for _, ev := range batch {
			if ev.Type == lease.EventAdded {
				select {
				case cp.applied <- appliedEvent{ev.Lease.Subnet, now}:
				default: // nobody waits for it; never block the event loop
				}
			}
		}
		if *first {
			*first = false
			close(cp.ready)
		}
	}
}

// publicIP returns the i-th documentation address, so that simulated nodes
// have distinct underlay addresses for the first 762 of them.
func publicIP(i int) netip.Addr {
	nets := [3][3]byte{{192, 0, 2}, {198, 51, 100}, {203, 0, 113}}
	n := nets[(i/254)%3]
	return netip.AddrFrom4([4]byte{n[0], n[1], n[2], byte(1 + i%254)})
}

// subnetAt returns the i-th subnet of length bits in network.
func subnetAt(network netip.Prefix, bits, i int) netip.Prefix {
	v := addrIndex(network.Addr()) + uint32(i)<<(32-bits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits)
}

func putLease(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID, s netip.Prefix, ip netip.Addr) error {
	key := lease.DefaultPrefix + "/subnets/" + lease.SubnetKey(s)
	if _, err := cli.Put(ctx, key, string(lease.MarshalLeaseAttrs(ip)), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// eventsPerOp keeps one benchmark op meaningful under -benchtime 1x.
const eventsPerOp = 64

// BenchmarkLeaseEventToRoute measures one lease write in a real embedded etcd
// until the watcher (lease.Manager.Watch, as flanneld runs it) delivered it
// and the router's table with the new route is swapped in. Writes are
// sequential, so this is the latency of an idle control plane.
func BenchmarkLeaseEventToRoute(b *testing.B) {
	network := netip.MustParsePrefix("198.18.0.0/16")
	cp := startControlPlane(b, network, 24, 1)
	ctx := b.Context()
	grant, err := cp.cli.Grant(ctx, 24*3600)
	if err != nil {
		b.Fatal(err)
	}
	var lat []float64
	i := 0
	b.ResetTimer()
	for b.Loop() {
		for range eventsPerOp {
			// 255 subnets, the peer changing every round, so that every write is a real change.
			s := subnetAt(network, 24, 1+i%255)
			ip := publicIP(i / 255 % 2)
			start := time.Now()
			if err := putLease(ctx, cp.cli, grant.ID, s, ip); err != nil {
				b.Fatal(err)
			}
			for got := range cp.applied {
				if got.subnet == s {
					lat = append(lat, float64(got.at.Sub(start).Microseconds()))
					break
				}
			}
			i++
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(len(lat)), "ns/event")
	b.ReportMetric(Percentile(lat, 50), "p50-us")
	b.ReportMetric(Percentile(lat, 99), "p99-us")
	results.SetControl("lease_event_to_route_p50_us", Percentile(lat, 50))
	results.SetControl("lease_event_to_route_p99_us", Percentile(lat, 99))
}

// scaleWriters is how many simulated nodes write at the same time.
const scaleWriters = 32

// BenchmarkControlPlaneScale lets N simulated nodes (each with its own 24 h
// etcd lease, as flanneld acquires one) write their leases into one etcd,
// scaleWriters at a time, and measures until one watcher has every route
// live, and the p50/p99 delay from each write to its route being live.
func BenchmarkControlPlaneScale(b *testing.B) {
	network := netip.MustParsePrefix("198.18.0.0/15") // 8,192 subnets of /28
	const subnetLen = 28
	for _, n := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			var total time.Duration
			var p50, p99 float64
			for b.Loop() {
				b.StopTimer()
				cp := startControlPlane(b, network, subnetLen, n)
				ctx := b.Context()
				written := make([]time.Time, n)
				applied := make([]time.Time, n)
				jobs := make(chan int, n)
				for i := range n {
					jobs <- i
				}
				close(jobs)
				errc := make(chan error, scaleWriters)
				b.StartTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for range scaleWriters {
					wg.Go(func() {
						for i := range jobs {
							g, err := cp.cli.Grant(ctx, 24*3600)
							if err == nil {
								written[i] = time.Now()
								err = putLease(ctx, cp.cli, g.ID, subnetAt(network, subnetLen, i+1), publicIP(i))
							}
							if err != nil {
								errc <- err
								return
							}
						}
					})
				}
				deadline := time.After(5 * time.Minute)
				for got := 0; got < n; {
					select {
					case ev := <-cp.applied:
						i := int((addrIndex(ev.subnet.Addr())-addrIndex(network.Addr()))>>(32-subnetLen)) - 1
						if i >= 0 && i < n && applied[i].IsZero() {
							applied[i] = ev.at
							got++
						}
					case err := <-errc:
						b.Fatal(err)
					case <-deadline:
						b.Fatalf("watcher has %d of %d routes after 5 minutes", got, n)
					}
				}
				total += time.Since(start)
				b.StopTimer()
				wg.Wait()
				lat := make([]float64, n)
				for i := range n {
					lat[i] = float64(applied[i].Sub(written[i]).Microseconds()) / 1000
				}
				p50, p99 = Percentile(lat, 50), Percentile(lat, 99)
				cp.stop()
				b.StartTimer()
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "s-all-routes")
			b.ReportMetric(p50, "p50-ms")
			b.ReportMetric(p99, "p99-ms")
			results.SetControl(fmt.Sprintf("scale_%d_all_routes_s", n), total.Seconds()/float64(b.N))
			results.SetControl(fmt.Sprintf("scale_%d_p50_ms", n), p50)
			results.SetControl(fmt.Sprintf("scale_%d_p99_ms", n), p99)
		})
	}
}

func addrIndex(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
