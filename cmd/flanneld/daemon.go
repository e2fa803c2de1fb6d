//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/fastpath"
	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/etcdserver"
	"github.com/flannel-go/flannel-go/internal/extiface"
	"github.com/flannel-go/flannel-go/internal/hoststate"
	"github.com/flannel-go/flannel-go/internal/routesync"
	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/router"
	"github.com/flannel-go/flannel-go/tun"
)

// tunName is upstream's device name pattern: the kernel picks the lowest
// free number, flannel0 unless another flanneld (or a leftover) holds it.
const tunName = "flannel%d"

// encapOverhead is the outer IPv4 and UDP headers around each inner packet.
const encapOverhead = 28

// encapOverhead6 is the outer IPv6 and UDP headers around each inner packet
// on an IPv6 underlay, which an IPv6-only network uses.
const encapOverhead6 = 48

// daemon is one flanneld run: lease, TUN, router, and the loops that keep
// them in step.
type daemon struct {
	o   *options
	log *slog.Logger

	ready    atomic.Bool
	router   atomic.Pointer[router.Router]
	fast     atomic.Pointer[fastpath.Path]
	engines  atomic.Pointer[dataplane.Engines] // the fast path (when it runs) and the router
	routes   *routesync.Syncer
	host     *hoststate.State // the lease's addresses, blackhole routes and rules
	ownNet   atomic.Pointer[netip.Prefix]
	ownNet6  atomic.Pointer[netip.Prefix]
	subnetMu sync.Mutex // serialises subnet-file writes and TUN re-addressing
}

func (d *daemon) ownSubnet() netip.Prefix {
	if p := d.ownNet.Load(); p != nil {
		return *p
	}
	return netip.Prefix{}
}

func (d *daemon) ownIPv6Subnet() netip.Prefix {
	if p := d.ownNet6.Load(); p != nil {
		return *p
	}
	return netip.Prefix{}
}

// run brings flanneld up and blocks until a signal or a fatal error. Each
// phase returns what it opened with its closer; run defers the closers as
// it goes, so every error path closes everything opened before it, in
// reverse order: the lease manager's claim before the etcd client, the
// router's sockets and the TUN before the manager. The subnet manager is
// etcd's or, with --kube-subnet-mgr, Kubernetes' (openSource).
func (d *daemon) run(parent context.Context) error {
	ctx, stop := d.signalContext(parent)
	defer stop()

	stopHTTP, err := d.startServers()
	if err != nil {
		return err
	}
	defer stopHTTP()

	src, err := d.openSource(ctx)
	if err != nil {
		return err
	}
	defer src.Close()

	prev := d.previousSubnets()
	cfg, ext, err := d.configAndInterface(ctx, src)
	if err != nil || cfg == nil {
		return err
	}
	mgr := src.Manager(ext, prev)
	defer mgr.Close()
	l, err := d.acquireLease(ctx, mgr, cfg)
	if err != nil || !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
		return err
	}
	d.ownNet.Store(&l.Subnet)
	d.ownNet6.Store(&l.IPv6Subnet)
	// An IPv6-only network has no IPv4 underlay: its datagrams travel
	// between the nodes' IPv6 addresses, the peers' PublicIPv6.
	d.routes.SetFamilies(routesync.Families{IPv4: cfg.EnableIPv4, IPv6: cfg.EnableIPv6, IPv6Underlay: !cfg.EnableIPv4})

	dp, err := d.openDataPlane(cfg, prev, l, ext)
	if err != nil {
		return err
	}
	defer dp.close(d.log)

	subnetFileOK := d.writeSubnetFile(cfg, l, dp.mtu)
	return d.runLoops(ctx, mgr, cfg, l, dp, subnetFileOK)
}

// signalContext is parent until SIGINT or SIGTERM; a second signal kills
// the process.
func (d *daemon) signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
		if parent.Err() == nil {
			d.log.Info("shutdownHandler sent cancel signal...")
		}
	}()
	return ctx, stop
}

// startServers starts the /metrics and /healthz listeners that are
// configured; the closer shuts down those started.
func (d *daemon) startServers() (func(), error) {
	o := d.o
	var servers []*healthServer
	closeAll := func() {
		for _, srv := range slices.Backward(servers) {
			srv.shutdown()
		}
	}
	if o.metricsAddr != "" {
		srv, err := d.startHTTP(o.metricsAddr, false)
		if err != nil {
			return nil, err
		}
		servers = append(servers, srv)
	}
	if o.healthzPort > 0 {
		srv, err := d.startHTTP(fmt.Sprintf("%s:%d", o.healthzIP, o.healthzPort), true)
		if err != nil {
			closeAll()
			return nil, err
		}
		servers = append(servers, srv)
	}
	return closeAll, nil
}

// connectEtcd starts the embedded etcd when configured and opens the
// client; the closer closes the client, then the server.
func (d *daemon) connectEtcd(ctx context.Context) (*clientv3.Client, func(), error) {
	o, log := d.o, d.log
	closeSrv := func() {}
	if o.etcdEmbedded != "" {
		srv, err := etcdserver.Start(ctx, etcdserver.Options{Dir: o.etcdEmbedded, ClientURLs: o.endpoints(), Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("start embedded etcd in %s on %v: %w", o.etcdEmbedded, o.endpoints(), err)
		}
		closeSrv = srv.Close
		log.Info("Embedded etcd started", "dir", o.etcdEmbedded, "endpoints", srv.Endpoints())
	}
	cli, err := newEtcdClient(o, os.Getenv, log)
	if err != nil {
		closeSrv()
		return nil, nil, err
	}
	return cli, func() { cli.Close(); closeSrv() }, nil
}

// previousSubnets reads the subnet file the last run wrote.
func (d *daemon) previousSubnets() lease.SubnetFile {
	o, log := d.o, d.log
	prev, err := lease.ReadSubnetFile(o.subnetFile)
	if err != nil {
		log.Warn("Could not read the previous subnet", "file", o.subnetFile, "error", err)
	}
	if prev.Subnet.IsValid() {
		log.Info(fmt.Sprintf("Previous Subnet: %s", prev.Subnet))
	}
	if prev.IPv6Subnet.IsValid() {
		log.Info(fmt.Sprintf("Previous IPv6 Subnet: %s", prev.IPv6Subnet))
	}
	return prev
}

// configAndInterface waits for the network config, checks that this daemon
// can serve it and picks the external interface for the address families
// it enables, in upstream's order. A nil config and error means ctx ended
// first: a clean shutdown.
func (d *daemon) configAndInterface(ctx context.Context, src subnetSource) (*lease.Config, *extiface.Iface, error) {
	cfg, err := src.WaitConfig(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, nil
		}
		return nil, nil, err
	}
	if cfg.BackendType != "udp" {
		return nil, nil, fmt.Errorf("unknown backend type: %s (flannel-go implements only the udp backend)", cfg.BackendType)
	}
	if !cfg.EnableIPv4 && !cfg.EnableIPv6 {
		return nil, nil, errors.New("none defined stack: the network config disables IPv4 (EnableIPv4 false) and does not enable IPv6 (EnableIPv6)")
	}
	ext, err := extiface.Choose(d.o.ifaceSelection(), extiface.Stack{V4: cfg.EnableIPv4, V6: cfg.EnableIPv6}, d.log)
	if err != nil {
		return nil, nil, err
	}
	d.log.Info("Using interface", "name", ext.Name, "iface_ip", ext.IfaceAddr, "public_ip", ext.ExtAddr,
		"iface_ipv6", ext.IfaceV6Addr, "public_ipv6", ext.ExtV6Addr, "mtu", ext.MTU)
	return cfg, ext, nil
}

func (d *daemon) newManager(cli *clientv3.Client, ext *extiface.Iface, prev lease.SubnetFile) *lease.Manager {
	return lease.NewManager(cli, lease.Options{
		Prefix:         d.o.etcdPrefix,
		PublicIP:       ext.ExtAddr,
		PublicIPv6:     ext.ExtV6Addr,
		PrevSubnet:     prev.Subnet,
		PrevIPv6Subnet: prev.IPv6Subnet,
		RenewMargin:    d.o.renewMargin(),
		Observer:       newLeaseMetrics(),
		Identity:       claimIdentity(d.o, ext),
		Logger:         d.log,
	})
}

// acquireLease acquires the lease: IPv4, dual-stack or IPv6-only as the
// config says. A zero lease and nil error means ctx ended first: a clean
// shutdown.
func (d *daemon) acquireLease(ctx context.Context, mgr subnetManager, cfg *lease.Config) (lease.Lease, error) {
	l, err := mgr.Acquire(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return lease.Lease{}, nil
		}
		return lease.Lease{}, fmt.Errorf("failed to acquire lease: %w", err)
	}
	switch {
	case cfg.EnableIPv6 && cfg.EnableIPv4:
		d.log.Info(fmt.Sprintf("Dual-stack lease: IPv6 subnet %s of %s next to %s; both families travel over the IPv4 underlay "+
			"(upstream's udp backend leases the IPv6 subnet but carries IPv4 only: its nodes get ICMPv6 unreachable)", l.IPv6Subnet, cfg.IPv6Network, l.Subnet))
	case cfg.EnableIPv6:
		d.log.Info(fmt.Sprintf("IPv6-only lease: IPv6 subnet %s of %s, carried over the IPv6 underlay between the nodes' PublicIPv6", l.IPv6Subnet, cfg.IPv6Network))
	}
	return l, nil
}

// dataPlane is the TUN device, the router on it and, when it runs, the
// kernel fast path beside the router; engines is both, as one.
type dataPlane struct {
	dev     *tun.Device
	rt      *router.Router
	fp      *fastpath.Path
	engines dataplane.Engines
	mtu     int
}

// close detaches the fast path, closes the router (its sockets, also when
// it never ran) and then the TUN device; all closes are idempotent. What
// the fast path could not remove is logged: it may be left on the host.
func (dp *dataPlane) close(log *slog.Logger) {
	if dp.fp != nil {
		if err := dp.fp.Close(); err != nil {
			log.Error("Fast path clean-up", "error", err)
		}
	}
	if dp.rt != nil {
		_ = dp.rt.Close()
	}
	_ = dp.dev.Close()
}

// openDataPlane opens the TUN, puts the lease's host state in place
// (addresses, blackhole routes, rules, replacing prev's stale ones) and
// opens the router's sockets on the underlay of the network's family
// (IPv6 for an IPv6-only network); on error it closes what it opened.
func (d *daemon) openDataPlane(cfg *lease.Config, prev lease.SubnetFile, l lease.Lease, ext *extiface.Iface) (_ *dataPlane, err error) {
	o, log := d.o, d.log
	local, mtu := ext.IfaceAddr, ext.MTU-encapOverhead
	if !cfg.EnableIPv4 {
		local, mtu = ext.IfaceV6Addr, ext.MTU-encapOverhead6
		if !local.IsValid() {
			return nil, fmt.Errorf("IPv6-only network: interface %s has no global IPv6 address for the underlay sockets", ext.Name)
		}
	}
	raiseGOMAXPROCS(o.queues, log)
	dev, err := tun.Open(tunName, o.queues, tun.WithOffloads(o.offloads), tun.WithChecksumVerification(o.verifyChecksums), tun.WithBusyPoll(o.busyPoll), tun.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("open TUN device %s with %d queues: %w", tunName, o.queues, err)
	}
	dp := &dataPlane{dev: dev, mtu: mtu}
	defer func() {
		if err != nil {
			dp.close(log)
		}
	}()
	reportTUN(dev.Name, log)
	d.host = d.newHostState(cfg, dev, mtu)
	if err := d.host.Apply(hoststate.Subnets{V4: l.Subnet, V6: l.IPv6Subnet}, hoststate.Previous{
		Network: prev.Network, Subnet: prev.Subnet, IPv6Network: prev.IPv6Network, IPv6Subnet: prev.IPv6Subnet,
	}); err != nil {
		return nil, err
	}
	rc := router.Config{
		LocalAddr:          local,
		Port:               cfg.Port,
		SocketBuffer:       o.socketBuffer,
		AcceptUnknownPeers: o.acceptUnknownPeers,
		StrictSource:       o.strictSource,
		MTU:                mtu,
		DisableOffloads:    !o.offloads,
		BusyPoll:           o.busyPoll,
		AQMTarget:          o.aqmTarget,
		AQMInterval:        o.aqmInterval,
		Logger:             log,
	}
	// Each family's fields stay zero unless the config enables it.
	if cfg.EnableIPv4 {
		rc.Network, rc.SubnetLen, rc.OwnSubnet = cfg.Network, cfg.SubnetLen, l.Subnet
	}
	if cfg.EnableIPv6 {
		rc.IPv6Network, rc.IPv6SubnetLen, rc.OwnIPv6Subnet = cfg.IPv6Network, cfg.IPv6SubnetLen, l.IPv6Subnet
	}
	if dp.rt, err = router.New(rc, dev.Queues); err != nil {
		return nil, err
	}
	d.router.Store(dp.rt)
	if dp.fp, err = d.startFastPath(cfg, ext, dev.Name, cfg.Port); err != nil {
		return nil, err
	}
	if dp.fp != nil {
		dp.engines = append(dp.engines, dp.fp)
		// The handoff device carries the TUN's IPv4 address too.
		if err := d.host.Follow(dp.fp); err != nil {
			return nil, err
		}
	}
	dp.engines = append(dp.engines, dp.rt)
	d.engines.Store(&dp.engines)
	return dp, nil
}

// runLoops runs the data plane, the lease watch, the route sync, the rule
// resync and the lease keeper until ctx is done or one of them fails, and
// waits for all of them.
func (d *daemon) runLoops(ctx context.Context, mgr subnetManager, cfg *lease.Config, l lease.Lease, dp *dataPlane, subnetFileOK bool) error {
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		if err := dp.rt.Run(runCtx); err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("data plane: %w", err)
		}
	})
	events := make(chan []lease.Event, 16)
	wg.Go(func() {
		if err := mgr.Watch(runCtx, events); err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("watch subnets: %w", err)
		}
	})
	wg.Go(func() { d.routes.Run(runCtx, events, dp.engines) })
	if d.host.Active() {
		wg.Go(func() { d.resync(runCtx) })
	}
	wg.Go(func() {
		err := mgr.Keep(runCtx, cfg, l, func(nl lease.Lease) { d.leaseChanged(cfg, dp, nl) })
		if err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("keep lease: %w", err)
		}
	})

	if subnetFileOK {
		d.ready.Store(true)
	}
	if _, err := sd.SdNotify(false, sd.SdNotifyReady); err != nil {
		d.log.Warn("sd_notify failed", "error", err)
	}
	d.log.Info("flanneld is running", "subnet", l.Subnet, "network", cfg.Network, "ipv6_subnet", l.IPv6Subnet,
		"ipv6_network", cfg.IPv6Network, "mtu", dp.mtu, "queues", d.o.queues)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	d.ready.Store(false)
	d.log.Info("Waiting for all goroutines to exit")
	cancel()
	wg.Wait()
	return runErr
}

// nodeIdentity names this node in PublicIP conflict messages.
func nodeIdentity(ext *extiface.Iface) string {
	host, _ := os.Hostname()
	addr := ext.IfaceAddr
	if !addr.IsValid() {
		addr = ext.IfaceV6Addr
	}
	return fmt.Sprintf("host %s, interface %s %s", host, ext.Name, addr)
}

// writeSubnetFile writes the subnet file with the lines of the families
// the config enables; a failure is only a warning, as upstream, but the
// daemon then never reports ready.
func (d *daemon) writeSubnetFile(cfg *lease.Config, l lease.Lease, mtu int) bool {
	sf := lease.SubnetFile{MTU: mtu, IPMasq: d.o.ipMasq}
	if cfg.EnableIPv4 {
		sf.Network, sf.Subnet = cfg.Network, l.Subnet
	}
	if cfg.EnableIPv6 {
		sf.IPv6Network, sf.IPv6Subnet = cfg.IPv6Network, l.IPv6Subnet
	}
	err := lease.WriteSubnetFile(d.o.subnetFile, sf)
	if err != nil {
		d.log.Warn("Failed to write the subnet file", "file", d.o.subnetFile, "error", err)
		return false
	}
	return true
}

// leaseChanged moves the node to a re-acquired lease: the TUN addresses,
// the router's own subnets and the subnet file follow it.
func (d *daemon) leaseChanged(cfg *lease.Config, dp *dataPlane, nl lease.Lease) {
	d.subnetMu.Lock()
	defer d.subnetMu.Unlock()
	old, old6 := d.ownSubnet(), d.ownIPv6Subnet()
	d.ownNet.Store(&nl.Subnet)
	d.ownNet6.Store(&nl.IPv6Subnet)
	if old == nl.Subnet && old6 == nl.IPv6Subnet {
		d.log.Info("Lease re-acquired", "subnet", nl.Subnet, "ipv6_subnet", nl.IPv6Subnet)
		if cfg.EnableIPv6 {
			d.ready.Store(d.writeSubnetFile(cfg, nl, dp.mtu))
		}
		return
	}
	d.log.Warn("Lease re-acquired with a different subnet; containers on the old subnet must be restarted",
		"old", old, "new", nl.Subnet, "old_ipv6", old6, "new_ipv6", nl.IPv6Subnet)
	if err := d.host.Move(hoststate.Subnets{V4: nl.Subnet, V6: nl.IPv6Subnet}); err != nil {
		d.log.Error("Move the host state to the new subnet", "error", err)
	}
	dp.rt.SetOwnSubnet(nl.Subnet)
	dp.rt.SetOwnIPv6Subnet(nl.IPv6Subnet)
	d.ready.Store(d.writeSubnetFile(cfg, nl, dp.mtu))
}

// newHostState is the host state of this node's lease: the TUN's
// addresses and what the flags add.
func (d *daemon) newHostState(cfg *lease.Config, dev *tun.Device, mtu int) *hoststate.State {
	hc := hoststate.Config{
		TUN: hoststate.TUN{Dev: dev, MTU: mtu, TxQueueLen: d.o.tunTxQueueLen, Network: cfg.Network, IPv6Network: cfg.IPv6Network, Logger: d.log},
		Rules: hoststate.IPMasq(hoststate.RuleSets{
			Masq: d.o.ipMasq, Forward: d.o.iptablesForwardRules,
			RandomFully: !d.o.ipMasqFullyRandomDisable, NFTables: cfg.EnableNFTables,
		}, d.log),
		RulesRequired: d.o.ipMasq,
		Logger:        d.log,
	}
	if cfg.EnableIPv4 {
		hc.Network = cfg.Network
	}
	if cfg.EnableIPv6 {
		hc.IPv6Network = cfg.IPv6Network
	}
	if d.o.ipBlackholeRoute {
		hc.Blackhole = hoststate.Netlink{}
	}
	return hoststate.New(hc)
}

// resync restores the rules and the blackhole routes someone else
// deleted, every --iptables-resync seconds (as upstream), always for the
// current subnets.
func (d *daemon) resync(ctx context.Context) {
	t := time.NewTicker(time.Duration(d.o.iptablesResync) * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := d.host.Resync(); err != nil {
			d.log.Error("Resync iptables rules and blackhole routes", "error", err)
		}
	}
}

// raiseGOMAXPROCS gives the Go scheduler a P for each of the data plane's
// threads (two per queue, in blocking syscalls) plus one. With fewer, the
// runtime takes the P from a thread in a long syscall and wakes another
// thread to run it, and the returning thread waits for a P again: on a
// 2-vCPU machine that cost about 15 % of single-stream throughput
// (4.9 -> 5.7 Gbit/s). An explicit GOMAXPROCS in the environment is kept,
// and so is one the runtime derived from a cgroup CPU limit (below the
// CPUs in our affinity mask): the container's CPU budget is the operator's.
func raiseGOMAXPROCS(queues int, log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" || startGOMAXPROCS < runtime.NumCPU() {
		return
	}
	if want := 2*queues + 1; runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
		log.Debug("Raised GOMAXPROCS for the data plane threads", "gomaxprocs", want)
	}
}
