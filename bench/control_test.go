//go:build linux

package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/etcdtest"
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

// etcdBackend is one way to run the etcd the control-plane benchmarks
// write to and watch.
type etcdBackend struct {
	name  string
	start func(testing.TB) *clientv3.Client
}

// etcdBackends: the embedded etcd without fsync shows flanneld's own cost;
// Debian's etcd binary as a child process, syncing its log to disk (ext4
// here), shows what a production etcd adds.
var etcdBackends = []etcdBackend{
	{"embedded-nofsync", etcdtest.Embedded},
	{"etcd3.4-fsync", etcdtest.External},
}

type appliedEvent struct {
	subnet netip.Prefix
	at     time.Time
}

// liveTable is the route table seam (dataplane.Routes): it passes each swap
// on to next, when set, and then reports every route that is new or moved
// to another peer, that is, live in the table just swapped in.
type liveTable struct {
	next   dataplane.Routes
	peers  map[netip.Prefix]netip.Addr
	first  chan struct{} // closed after the first swap: the snapshot
	once   sync.Once
	onLive func(subnet netip.Prefix, at time.Time)
}

func newLiveTable(next dataplane.Routes, onLive func(netip.Prefix, time.Time)) *liveTable {
	return &liveTable{next: next, peers: map[netip.Prefix]netip.Addr{}, first: make(chan struct{}), onLive: onLive}
}

// ForgetPeers passes the peers on to next, when set.
func (t *liveTable) ForgetPeers(peers []netip.Addr) {
	if t.next != nil {
		t.next.ForgetPeers(peers)
	}
}

// SetRoutes is called from the Syncer's goroutine only.
func (t *liveTable) SetRoutes(routes []dataplane.Route) {
	if t.next != nil {
		t.next.SetRoutes(routes)
	}
	now := time.Now()
	for _, r := range routes {
		if t.peers[r.Subnet] != r.Peer {
			t.peers[r.Subnet] = r.Peer
			t.onLive(r.Subnet, now)
		}
	}
	t.once.Do(func() { close(t.first) })
}

// runWatcher runs one node's control plane as flanneld wires it: the lease
// manager's watch feeding routesync, which swaps tables into t.
func runWatcher(ctx context.Context, wg *sync.WaitGroup, cli *clientv3.Client, t dataplane.Routes) {
	mgr := lease.NewManager(cli, lease.Options{PublicIP: netip.MustParseAddr("192.0.2.1"), Logger: discard})
	events := make(chan []lease.Event, 16)
	wg.Go(func() { mgr.Watch(ctx, events) })
	wg.Go(func() { routesync.New(discard).Run(ctx, events, t) })
}

// controlPlane is one watcher node on an etcd: its lease.Manager watching
// the subnets and a Router whose table follows the events.
type controlPlane struct {
	cli     *clientv3.Client
	applied chan appliedEvent // every new or moved route, after its table swap
	stop    func()
}

func startControlPlane(tb testing.TB, be etcdBackend, network netip.Prefix, subnetLen int, capacity int) *controlPlane {
	tb.Helper()
	cli := be.start(tb)
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
	cp := &controlPlane{cli: cli, applied: make(chan appliedEvent, capacity+1)}
	table := newLiveTable(rt, func(s netip.Prefix, at time.Time) {
		select {
		case cp.applied <- appliedEvent{s, at}:
		default: // nobody waits for it; never block the event loop
		}
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	runWatcher(ctx, &wg, cli, table)
	var once sync.Once
	cp.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			rt.Close()
		})
	}
	tb.Cleanup(cp.stop)
	select {
	case <-table.first:
	case <-time.After(30 * time.Second):
		tb.Fatal("watcher sent no initial snapshot within 30 s")
	}
	return cp
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
const eventsPerOp = 200

// BenchmarkLeaseEventToRoute measures, on each etcd backend, one lease write
// until one watcher (lease.Manager.Watch and routesync, as flanneld runs
// them) has swapped the router's table with the new route in. Writes are
// sequential: the latency of an idle control plane, one watcher, p50 and
// p99 over every write.
func BenchmarkLeaseEventToRoute(b *testing.B) {
	for _, be := range etcdBackends {
		b.Run("etcd="+be.name, func(b *testing.B) {
			network := netip.MustParsePrefix("198.18.0.0/16")
			cp := startControlPlane(b, be, network, 24, 1)
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
			key := "one_watcher_sequential_writes_" + be.name
			results.SetControl(key+"_p50_us", Percentile(lat, 50))
			results.SetControl(key+"_p99_us", Percentile(lat, 99))
			results.SetControl(key+"_samples", float64(len(lat)))
		})
	}
}

// scaleWriters is how many simulated nodes write at the same time.
const scaleWriters = 32

// BenchmarkControlPlaneScale lets N simulated nodes (each with its own 24 h
// etcd lease, as flanneld acquires one) write their leases into one etcd,
// scaleWriters at a time, and measures, for one watcher, until it has every
// route live, and the p50/p99 delay from each write to its route being
// live (N samples).
func BenchmarkControlPlaneScale(b *testing.B) {
	network := netip.MustParsePrefix("198.18.0.0/15") // 8,192 subnets of /28
	const subnetLen = 28
	for _, be := range etcdBackends {
		for _, n := range []int{100, 1000, 5000} {
			b.Run(fmt.Sprintf("etcd=%s/nodes=%d", be.name, n), func(b *testing.B) {
				var total time.Duration
				var p50, p99 float64
				for b.Loop() {
					b.StopTimer()
					cp := startControlPlane(b, be, network, subnetLen, n)
					b.StartTimer()
					d, lat := writeLeases(b, cp, network, subnetLen, n)
					total += d
					b.StopTimer()
					p50, p99 = Percentile(lat, 50), Percentile(lat, 99)
					cp.stop()
					b.StartTimer()
				}
				b.ReportMetric(total.Seconds()/float64(b.N), "s-all-routes")
				b.ReportMetric(p50, "p50-ms")
				b.ReportMetric(p99, "p99-ms")
				key := fmt.Sprintf("scale_%s_%d_nodes_one_watcher", be.name, n)
				results.SetControl(key+"_all_routes_s", total.Seconds()/float64(b.N))
				results.SetControl(key+"_p50_ms", p50)
				results.SetControl(key+"_p99_ms", p99)
				results.SetControl(key+"_samples", float64(n))
			})
		}
	}
}

// writeLeases writes n leases, scaleWriters at a time, and returns the time
// until the watcher had all of them live and each one's delay in ms.
func writeLeases(b *testing.B, cp *controlPlane, network netip.Prefix, subnetLen, n int) (time.Duration, []float64) {
	ctx := b.Context()
	written := make([]time.Time, n)
	applied := make([]time.Time, n)
	jobs := make(chan int, n)
	for i := range n {
		jobs <- i
	}
	close(jobs)
	errc := make(chan error, scaleWriters)
	start := time.Now()
	var wg sync.WaitGroup
	defer wg.Wait()
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
	total := time.Since(start)
	wg.Wait()
	lat := make([]float64, n)
	for i := range n {
		lat[i] = float64(applied[i].Sub(written[i]).Microseconds()) / 1000
	}
	return total, lat
}

// Many watchers: what 1,000 nodes' watches cost one etcd. Each watcher has
// its own client connection and watch stream, as a node would; all of them
// run in this process, so their CPU competes with etcd's on the same cores
// (about 400 MB and 20 s for both backends on 2 cores).
const (
	manyWatchers = 1000
	manyClients  = 1000
	manyWrites   = 50
)

// BenchmarkManyWatchers runs manyWatchers node control planes (lease watch
// and routesync, without routers) on one etcd, writes manyWrites leases one
// after another, and measures each write until the route is live at the
// last of the watchers: p50 and max over manyWrites samples.
func BenchmarkManyWatchers(b *testing.B) {
	network := netip.MustParsePrefix("198.18.0.0/16")
	for _, be := range etcdBackends {
		b.Run(fmt.Sprintf("etcd=%s/watchers=%d", be.name, manyWatchers), func(b *testing.B) {
			cli := be.start(b)
			lat, setup := watchFanOut(b, cli, network)
			b.ReportMetric(Percentile(lat, 50), "p50-ms-last-watcher")
			b.ReportMetric(Percentile(lat, 100), "max-ms-last-watcher")
			key := fmt.Sprintf("many_watchers_%s_%d_watchers_sequential_writes", be.name, manyWatchers)
			results.SetControl(key+"_last_watcher_p50_ms", Percentile(lat, 50))
			results.SetControl(key+"_last_watcher_max_ms", Percentile(lat, 100))
			results.SetControl(key+"_samples", float64(len(lat)))
			results.SetControl(key+"_setup_s", setup.Seconds())
		})
	}
}

// watchFanOut starts the watchers, waits for their snapshots, then writes
// and times; it returns each write's delay to the last watcher in ms and
// the time the watchers took to start.
func watchFanOut(b *testing.B, cli *clientv3.Client, network netip.Prefix) ([]float64, time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	clients := make([]*clientv3.Client, manyClients)
	for i := range clients {
		clients[i] = etcdtest.NewClient(b, cli.Endpoints())
	}
	subnets := make([]netip.Prefix, manyWrites)
	live := map[netip.Prefix]*atomic.Int32{}
	for i := range subnets {
		subnets[i] = subnetAt(network, 24, 1+i)
		live[subnets[i]] = new(atomic.Int32)
	}
	done := make(chan appliedEvent, manyWrites)
	onLive := func(s netip.Prefix, at time.Time) {
		if c, ok := live[s]; ok && c.Add(1) == manyWatchers {
			done <- appliedEvent{s, at}
		}
	}
	start := time.Now()
	tables := make([]*liveTable, manyWatchers)
	for i := range tables {
		tables[i] = newLiveTable(nil, onLive)
		wctx := metadata.AppendToOutgoingContext(ctx, "watcher", strconv.Itoa(i))
		runWatcher(wctx, &wg, clients[i%manyClients], tables[i])
	}
	for _, t := range tables {
		select {
		case <-t.first:
		case <-time.After(2 * time.Minute):
			b.Fatal("a watcher sent no snapshot within 2 minutes")
		}
	}
	setup := time.Since(start)
	grant, err := cli.Grant(b.Context(), 24*3600)
	if err != nil {
		b.Fatal(err)
	}
	var lat []float64
	b.ResetTimer()
	for i, s := range subnets {
		t0 := time.Now()
		if err := putLease(b.Context(), cli, grant.ID, s, publicIP(i)); err != nil {
			b.Fatal(err)
		}
		select {
		case ev := <-done:
			lat = append(lat, float64(ev.at.Sub(t0).Microseconds())/1000)
		case <-time.After(time.Minute):
			b.Fatalf("write %d not live at all %d watchers after a minute", i, manyWatchers)
		}
	}
	b.StopTimer()
	return lat, setup
}

func addrIndex(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
