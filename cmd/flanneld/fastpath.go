//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flannel-go/flannel-go/fastpath"
	"github.com/flannel-go/flannel-go/internal/extiface"
	"github.com/flannel-go/flannel-go/lease"
)

// startFastPath applies --fast-path once the TUN and the router exist. It
// logs one line saying whether the kernel fast path runs and why; only
// --fast-path=on turns a failure into an error.
func (d *daemon) startFastPath(cfg *lease.Config, ext *extiface.Iface, tunDev string, port int) (*fastpath.Path, error) {
	o, log := d.o, d.log
	if o.fastPath == "off" {
		log.Info("Kernel fast path off (--fast-path=off): the userspace router carries all packets")
		return nil, nil
	}
	if !cfg.EnableIPv4 {
		if o.fastPath == "on" {
			return nil, errors.New("--fast-path=on: the kernel fast path needs an IPv4 underlay; this network is IPv6-only")
		}
		log.Info("Kernel fast path off (--fast-path=auto): it needs an IPv4 underlay and this network is IPv6-only; the userspace router carries all packets")
		return nil, nil
	}
	fcfg := fastpath.Config{
		TUN:                tunDev,
		Underlay:           ext.Name,
		LocalAddr:          ext.IfaceAddr,
		Port:               port,
		StrictSource:       o.strictSource,
		AcceptUnknownPeers: o.acceptUnknownPeers,
		CarryIPv6:          cfg.EnableIPv6,
		Handoff:            handoffName(tunDev),
		HandoffPort:        port + 1,
		Logger:             log,
	}
	if err := forcedVariant(&fcfg, os.Getenv); err != nil {
		return nil, err
	}
	fp, err := fastpath.Start(fcfg)
	if err != nil {
		if o.fastPath == "on" {
			return nil, fmt.Errorf("--fast-path=on: %w", err)
		}
		log.Warn("Kernel fast path unavailable (--fast-path=auto): the userspace router carries all packets", "reason", err)
		return nil, nil
	}
	info := fp.Info()
	log.Info("Kernel fast path on: TC eBPF carries packets to peers that answer its probes, the userspace router the rest",
		"mode", o.fastPath, "attach", info.Attach, "variant", info.Variant, "why", strings.Join(info.Why, "; "),
		"tun", tunDev, "underlay", ext.Name)
	d.fast.Store(fp)
	return fp, nil
}

// forcedVariant applies FLANNEL_FASTPATH_ATTACH (tcx or clsact) and
// FLANNEL_FASTPATH_VARIANT (a variant's name: full, or features turned
// off such as no-coarse-clock,no-decap-flags) from getenv: hidden
// settings that run, on one kernel, what older kernels get, for the
// benchmarks and the tests. A variant cannot add what the kernel lacks.
func forcedVariant(c *fastpath.Config, getenv func(string) string) error {
	c.Attach = getenv("FLANNEL_FASTPATH_ATTACH")
	if v := getenv("FLANNEL_FASTPATH_VARIANT"); v != "" {
		f, err := fastpath.ParseVariant(v)
		if err != nil {
			return fmt.Errorf("FLANNEL_FASTPATH_VARIANT: %w", err)
		}
		c.Without = fastpath.AllFeatures &^ f
	}
	return nil
}

// handoffName names the fast path's handoff device after the TUN:
// "flannel0-fp", cut to the kernel's 15 characters.
func handoffName(tunDev string) string {
	name := tunDev + "-fp"
	if len(name) > 15 {
		name = name[len(name)-15:]
	}
	return name
}

// writeFastPathMetrics writes flannel_fast_path_enabled and, while the fast
// path runs, its counters.
func (d *daemon) writeFastPathMetrics(w io.Writer) {
	p := promWriter{w}
	p.family("flannel_fast_path_enabled", "gauge", "1 when the kernel TC eBPF fast path is attached (see --fast-path), with how (attach: tcx or clsact) and which variant of the programs runs.")
	fp := d.fast.Load()
	if fp == nil {
		p.sample("flannel_fast_path_enabled", `attach="none",variant="none"`, 0)
		return
	}
	info := fp.Info()
	p.sample("flannel_fast_path_enabled", fmt.Sprintf("attach=%q,variant=%q", info.Attach, info.Variant), 1)
	s, err := fp.Stats()
	if err != nil {
		d.log.Warn("Read the fast path counters", "error", err)
		return
	}
	p.family("flannel_fast_path_kernel_peers", "gauge", "Peers that answered the fast path's probe recently: packets to them stay in the kernel.")
	p.sample("flannel_fast_path_kernel_peers", "", uint64(len(fp.KernelPeers())))
	p.family("flannel_fast_path_probes_total", "counter", "Fast path probes: answered for peers (answered) and answers to this node's probes (received).")
	p.sample("flannel_fast_path_probes_total", `kind="answered"`, s.ProbesAnswered)
	p.sample("flannel_fast_path_probes_total", `kind="received"`, s.ProbeAnswers)
	p.family("flannel_fast_path_capture_lost_total", "counter", "Packets the kernel fast path could not add to a running capture (/debug/pcap) because its ring was full; the packets themselves were carried.")
	p.sample("flannel_fast_path_capture_lost_total", "", s.CaptureLost)
}
