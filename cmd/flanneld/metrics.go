//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/router"
)

func init() {
	metrics.ExposeMetadata(true)
}

// promWriter writes the Prometheus text format. Each family gets its HELP
// and TYPE lines once, before its samples, as the format requires.
type promWriter struct{ w io.Writer }

func (p promWriter) family(name, typ, help string) {
	fmt.Fprintf(p.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
}

// byReason writes one sample per reason, after the labels in prefix.
func (p promWriter) byReason(name, prefix string, counts []dataplane.Reason) {
	for _, c := range counts {
		p.sample(name, prefix+`reason="`+c.Name+`"`, c.Count)
	}
}

func (p promWriter) sample(name, labels string, v uint64) {
	if labels != "" {
		fmt.Fprintf(p.w, "%s{%s} %d\n", name, labels, v)
		return
	}
	fmt.Fprintf(p.w, "%s %d\n", name, v)
}

// metricsHandler serves /metrics: the registered metrics (etcd client, Go
// runtime and process), then this daemon's data-plane state, read from the
// router's per-worker counters at scrape time so that counting costs the
// packet path nothing beyond its own atomic adds.
func (d *daemon) metricsHandler(w http.ResponseWriter, _ *http.Request) {
	var b bytes.Buffer
	metrics.WritePrometheus(&b, true)
	b = addHelp(b.Bytes())
	d.writeMetrics(&b)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Write(b.Bytes())
}

// registeredHelp is the HELP text of the families registered with the
// metrics package, which writes their HELP lines empty.
var registeredHelp = map[string]string{
	"flannel_etcd_request_duration_seconds":  "Duration of etcd client requests (each gRPC attempt), by method.",
	"flannel_etcd_streams_opened_total":      "etcd client streams opened (watches, lease keep-alives), by method.",
	"flannel_etcd_request_errors_total":      "Failed etcd client requests and stream opens, by method and gRPC code.",
	"flannel_lease_expiry_timestamp_seconds": "Unix time when this node's subnet lease expires; 0 for a reservation.",
	"flannel_lease_acquisitions_total":       "Subnet lease acquisitions: the first and each re-acquisition after the lease was lost.",
	"flannel_lease_renewals_total":           "Subnet lease renewals.",
	"flannel_lease_renewal_failures_total":   "Failed subnet lease renewals (each is retried).",
	"flannel_lease_watch_resyncs_total":      "Re-lists of all subnets after the watch fell behind an etcd compaction.",
	"flannel_tun_device_info":                "The TUN device this flanneld opened (the kernel picks flannel%d), as a label; always 1.",
}

// addHelp fills in the HELP lines of registeredHelp's families.
func addHelp(exposition []byte) bytes.Buffer {
	var out bytes.Buffer
	out.Grow(len(exposition) + 1024)
	for line := range bytes.Lines(exposition) {
		if rest, ok := bytes.CutPrefix(line, []byte("# HELP ")); ok {
			if help, ok := registeredHelp[string(bytes.TrimSpace(rest))]; ok {
				fmt.Fprintf(&out, "# HELP %s %s\n", bytes.TrimSpace(rest), help)
				continue
			}
		}
		out.Write(line)
	}
	return out
}

// writeMetrics writes the daemon's own metrics.
func (d *daemon) writeMetrics(w io.Writer) {
	p := promWriter{w}
	p.family("flannel_ready", "gauge", "1 when the subnet file is written and the data plane runs (the state /readyz reports).")
	ready := uint64(0)
	if d.ready.Load() {
		ready = 1
	}
	p.sample("flannel_ready", "", ready)
	rt, es := d.router.Load(), d.engines.Load()
	if rt == nil || es == nil {
		return
	}
	p.family("flannel_routes", "gauge", "Routes to other nodes' subnets in the router's table; a dual-stack lease gives two.")
	p.sample("flannel_routes", "", uint64(d.routes.Routes()))
	d.writeFastPathMetrics(w)
	writePathStats(w, es.PathStats())
	writeRouterStats(w, rt.Stats())
}

// writePathStats writes every engine's packets, bytes, drops and passes
// by path: "user" is the userspace router, "kernel" the fast path.
// Direction "in" is from peers into the TUN, "out" from the TUN to peers.
func writePathStats(w io.Writer, paths []dataplane.PathStats) {
	p := promWriter{w}
	for _, f := range []struct {
		name, help string
		v          func(dataplane.PathStats, dataplane.Direction) uint64
	}{
		{"flannel_router_packets_total", "Inner packets forwarded, by direction and path (a TSO super-packet on the kernel path counts once).",
			func(s dataplane.PathStats, d dataplane.Direction) uint64 { return s.Packets[d] }},
		{"flannel_router_bytes_total", "Bytes of inner packets forwarded (outer headers excluded), by direction and path.",
			func(s dataplane.PathStats, d dataplane.Direction) uint64 { return s.Bytes[d] }},
	} {
		p.family(f.name, "counter", f.help)
		for _, s := range paths {
			for _, d := range []dataplane.Direction{dataplane.In, dataplane.Out} {
				p.sample(f.name, fmt.Sprintf("direction=%q,path=%q", d, s.Path), f.v(s, d))
			}
		}
	}
	p.family("flannel_router_dropped_packets_total", "counter", "Packets dropped, by path and reason.")
	for _, s := range paths {
		p.byReason("flannel_router_dropped_packets_total", fmt.Sprintf("path=%q,", s.Path), s.Dropped)
	}
	for _, s := range paths {
		if len(s.Passed) > 0 {
			p.family("flannel_router_passed_to_userspace_total", "counter", "Packets the kernel fast path left to the userspace router, by reason.")
			p.byReason("flannel_router_passed_to_userspace_total", "", s.Passed)
		}
	}
}

// writeRouterStats writes the userspace router's own counters: batches,
// ICMP errors, stage times, syscall errors, ECN marks, batch sizes and
// offloads.
func writeRouterStats(w io.Writer, s router.Stats) {
	p := promWriter{w}
	p.family("flannel_router_batches_total", "counter", "Batches read: recvmmsg calls (in) and TUN reads (out).")
	p.sample("flannel_router_batches_total", `direction="in"`, s.RxBatches)
	p.sample("flannel_router_batches_total", `direction="out"`, s.TxBatches)
	p.family("flannel_router_icmp_errors_sent_total", "counter", "ICMP errors (unreachable, time exceeded, fragmentation needed) the router wrote into the TUN.")
	p.sample("flannel_router_icmp_errors_sent_total", "", s.ICMPSent)
	p.family("flannel_router_icmp_errors_rate_limited_total", "counter", "ICMP errors not sent because of the rate limit.")
	p.sample("flannel_router_icmp_errors_rate_limited_total", "", s.ICMPRateLimited)
	p.family("flannel_router_stage_seconds", "histogram", "Time per batch of each step of the data path: tun_backlog (how long the TUN queue has stood backlogged), route, send (sendmmsg), socket_queue (oldest datagram's wait in the socket), tun_write.")
	for st, h := range s.Stages {
		var cum uint64
		name := router.StageNames[st]
		for i, b := range h.Buckets {
			cum += b
			le := "+Inf"
			if i < len(router.StageBounds) {
				le = fmt.Sprintf("%g", float64(router.StageBounds[i])/1e6)
			}
			p.sample("flannel_router_stage_seconds_bucket", `stage="`+name+`",le="`+le+`"`, cum)
		}
		fmt.Fprintf(w, "flannel_router_stage_seconds_sum{stage=%q} %g\n", name, float64(h.SumNs)/1e9)
		p.sample("flannel_router_stage_seconds_count", `stage="`+name+`"`, cum)
	}
	p.family("flannel_router_syscall_errors_total", "counter", "Failed data-plane calls (recvmmsg, sendmmsg, tun_read, tun_write) by errno; transient errors are counted and the worker carries on.")
	for _, e := range s.SyscallErrors {
		p.sample("flannel_router_syscall_errors_total", fmt.Sprintf("call=%q,errno=%q", e.Op, e.Errno), e.Count)
	}
	p.family("flannel_router_ecn_ce_marked_total", "counter", "ECN-capable inner packets marked Congestion Experienced by the AQM instead of a drop, by direction.")
	p.sample("flannel_router_ecn_ce_marked_total", `direction="in"`, s.RxCEMarked)
	p.sample("flannel_router_ecn_ce_marked_total", `direction="out"`, s.TxCEMarked)

	p.family("flannel_router_batch_size", "histogram", "Packets per batch: per recvmmsg call (in), per TUN read after splitting super-packets (out).")
	p.histogram("flannel_router_batch_size", "in", &s.RxBatchSizes, s.RxBatchPackets)
	p.histogram("flannel_router_batch_size", "out", &s.TxBatchSizes, s.TxBatchPackets)

	p.family("flannel_offload_enabled", "gauge", "1 when the data plane uses the offload, 0 when the kernel lacks it or it is turned off.")
	for _, f := range []struct {
		name string
		on   bool
	}{
		{"tun_vnet_hdr", s.Offloads.TUNVnetHdr},
		{"tun_tso", s.Offloads.TUNTSO},
		{"tun_uso", s.Offloads.TUNUSO},
		{"udp_gso", s.Offloads.UDPGSO},
		{"udp_gro", s.Offloads.UDPGRO},
	} {
		v := uint64(0)
		if f.on {
			v = 1
		}
		p.sample("flannel_offload_enabled", `feature="`+f.name+`"`, v)
	}
}

// histogram writes one direction's cumulative batch-size buckets.
func (p promWriter) histogram(name, direction string, buckets *[len(router.BatchSizeBounds) + 1]uint64, sum uint64) {
	var cum uint64
	for i, b := range buckets {
		cum += b
		le := "+Inf"
		if i < len(router.BatchSizeBounds) {
			le = fmt.Sprint(router.BatchSizeBounds[i])
		}
		p.sample(name+"_bucket", `direction="`+direction+`",le="`+le+`"`, cum)
	}
	p.sample(name+"_sum", `direction="`+direction+`"`, sum)
	p.sample(name+"_count", `direction="`+direction+`"`, cum)
}

// etcdMetricsDialOptions instruments every gRPC call of the etcd client.
// clientv3's retry interceptor runs outside these, so each attempt is
// measured and every failed attempt counted.
func etcdMetricsDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(etcdUnaryMetrics),
		grpc.WithChainStreamInterceptor(etcdStreamMetrics),
	}
}

// etcdMethod shortens "/etcdserverpb.KV/Range" to "KV/Range", a label with
// a small fixed set of values.
func etcdMethod(full string) string {
	full = strings.TrimPrefix(full, "/")
	if i := strings.IndexByte(full, '.'); i >= 0 {
		full = full[i+1:]
	}
	return full
}

func etcdUnaryMetrics(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start := time.Now()
	err := invoker(ctx, method, req, reply, cc, opts...)
	m := etcdMethod(method)
	metrics.GetOrCreatePrometheusHistogram(`flannel_etcd_request_duration_seconds{method="` + m + `"}`).UpdateDuration(start)
	countEtcdError(m, err)
	return err
}

func etcdStreamMetrics(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	m := etcdMethod(method)
	metrics.GetOrCreateCounter(`flannel_etcd_streams_opened_total{method="` + m + `"}`).Inc()
	cs, err := streamer(ctx, desc, cc, method, opts...)
	countEtcdError(m, err)
	return cs, err
}

func countEtcdError(method string, err error) {
	if err == nil {
		return
	}
	metrics.GetOrCreateCounter(`flannel_etcd_request_errors_total{method="` + method + `",code="` + status.Code(err).String() + `"}`).Inc()
}

// leaseMetrics turns the lease manager's reports into metrics. They are
// created at start so that they read 0, not absent, before anything happens.
type leaseMetrics struct {
	expiry                      *metrics.Gauge
	acquisitions, renewals      *metrics.Counter
	renewFailures, watchResyncs *metrics.Counter
}

func newLeaseMetrics() *leaseMetrics {
	return &leaseMetrics{
		expiry:        metrics.GetOrCreateGauge("flannel_lease_expiry_timestamp_seconds", nil),
		acquisitions:  metrics.GetOrCreateCounter("flannel_lease_acquisitions_total"),
		renewals:      metrics.GetOrCreateCounter("flannel_lease_renewals_total"),
		renewFailures: metrics.GetOrCreateCounter("flannel_lease_renewal_failures_total"),
		watchResyncs:  metrics.GetOrCreateCounter("flannel_lease_watch_resyncs_total"),
	}
}

func (m *leaseMetrics) setExpiry(l lease.Lease) {
	if l.Expiration.IsZero() {
		m.expiry.Set(0)
		return
	}
	m.expiry.Set(float64(l.Expiration.UnixNano()) / 1e9)
}

func (m *leaseMetrics) LeaseAcquired(l lease.Lease) { m.acquisitions.Inc(); m.setExpiry(l) }
func (m *leaseMetrics) LeaseRenewed(l lease.Lease)  { m.renewals.Inc(); m.setExpiry(l) }
func (m *leaseMetrics) RenewFailed(error)           { m.renewFailures.Inc() }
func (m *leaseMetrics) WatchResynced()              { m.watchResyncs.Inc() }
