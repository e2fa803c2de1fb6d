package main

import (
	"fmt"
	"io"
	"net/http"

	"github.com/VictoriaMetrics/metrics"

	"github.com/flannel-go/flannel-go/router"
)

func init() {
	metrics.ExposeMetadata(true)
}

// registerRouterMetrics exposes the router's counters. They are read from
// the per-worker counters at scrape time, so counting costs the packet path
// nothing beyond its own atomic adds.
func (d *daemon) registerRouterMetrics() {
	metrics.RegisterMetricsWriter(func(w io.Writer) {
		rt := d.router.Load()
		if rt == nil {
			return
		}
		writeRouterStats(w, rt.Stats())
		metrics.WriteGaugeUint64(w, "flannel_routes", uint64(d.routes.Load()))
	})
}

func writeRouterStats(w io.Writer, s router.Stats) {
	metrics.WriteCounterUint64(w, `flannel_router_packets_total{direction="tx"}`, s.TxPackets)
	metrics.WriteCounterUint64(w, `flannel_router_packets_total{direction="rx"}`, s.RxPackets)
	metrics.WriteCounterUint64(w, `flannel_router_bytes_total{direction="tx"}`, s.TxBytes)
	metrics.WriteCounterUint64(w, `flannel_router_bytes_total{direction="rx"}`, s.RxBytes)
	metrics.WriteCounterUint64(w, `flannel_router_batches_total{direction="tx"}`, s.TxBatches)
	metrics.WriteCounterUint64(w, `flannel_router_batches_total{direction="rx"}`, s.RxBatches)
	metrics.WriteCounterUint64(w, `flannel_router_icmp_errors_sent_total`, s.ICMPSent)
	metrics.WriteCounterUint64(w, `flannel_router_icmp_errors_rate_limited_total`, s.ICMPRateLimited)
	for _, d := range []struct {
		reason string
		n      uint64
	}{
		{"no_route", s.Drops.NoRoute},
		{"unknown_peer", s.Drops.UnknownPeer},
		{"ttl_exceeded", s.Drops.TTLExceeded},
		{"malformed", s.Drops.Malformed},
		{"oversize", s.Drops.Oversize},
		{"not_ipv4", s.Drops.NotIPv4},
		{"send_error", s.Drops.SendError},
		{"tun_write_error", s.Drops.TunWriteError},
	} {
		metrics.WriteCounterUint64(w, fmt.Sprintf(`flannel_router_dropped_packets_total{reason=%q}`, d.reason), d.n)
	}
}

func metricsHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	metrics.WritePrometheus(w, true)
}
