//go:build linux

package main

import (
	"fmt"
	"log/slog"

	"github.com/VictoriaMetrics/metrics"
)

// reportTUN logs the TUN device the kernel named and exposes it as
// flannel_tun_device_info{device="..."} 1, so that scripts and dashboards
// find it when it is not flannel0.
func reportTUN(name string, log *slog.Logger) {
	log.Info("Opened TUN device", "device", name)
	metrics.GetOrCreateGauge(fmt.Sprintf("flannel_tun_device_info{device=%q}", name), func() float64 { return 1 })
}
