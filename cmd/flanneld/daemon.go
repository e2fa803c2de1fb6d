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
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/flannel-go/flannel-go/internal/etcdserver"
	"github.com/flannel-go/flannel-go/internal/ipmasq"
	"github.com/flannel-go/flannel-go/internal/routesync"
	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/router"
	"github.com/flannel-go/flannel-go/tun"
)

// tunName is upstream's device name; existing units and scripts expect it.
const tunName = "flannel0"

// encapOverhead is the outer IPv4 and UDP headers around each inner packet.
const encapOverhead = 28

// daemon is one flanneld run: lease, TUN, router, and the loops that keep
// them in step.
type daemon struct {
	o   *options
	log *slog.Logger

	ready    atomic.Bool
	router   atomic.Pointer[router.Router]
	routes   *routesync.Syncer
	rules    atomic.Pointer[ipmasq.Rules]
	ownNet   atomic.Pointer[netip.Prefix]
	subnetMu sync.Mutex // serialises subnet-file writes and TUN re-addressing
}

func (d *daemon) ownSubnet() netip.Prefix {
	if p := d.ownNet.Load(); p != nil {
		return *p
	}
	return netip.Prefix{}
}

// run brings flanneld up and blocks until a signal or a fatal error.
func (d *daemon) run(parent context.Context) error {
	o, log := d.o, d.log
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Unregister so that a second signal kills the process.
		stop()
		if parent.Err() == nil {
			log.Info("shutdownHandler sent cancel signal...")
		}
	}()

	if o.metricsAddr != "" {
		srv, err := d.startHTTP(o.metricsAddr, false)
		if err != nil {
			return err
		}
		defer srv.shutdown()
	}
	if o.healthzPort > 0 {
		srv, err := d.startHTTP(fmt.Sprintf("%s:%d", o.healthzIP, o.healthzPort), true)
		if err != nil {
			return err
		}
		defer srv.shutdown()
	}

	if o.etcdEmbedded != "" {
		srv, err := etcdserver.Start(ctx, etcdserver.Options{Dir: o.etcdEmbedded, ClientURLs: o.endpoints(), Logger: log})
		if err != nil {
			return fmt.Errorf("start embedded etcd in %s on %v: %w", o.etcdEmbedded, o.endpoints(), err)
		}
		defer srv.Close()
		log.Info("Embedded etcd started", "dir", o.etcdEmbedded, "endpoints", srv.Endpoints())
	}

	cli, err := newEtcdClient(o, os.Getenv, log)
	if err != nil {
		return err
	}
	defer cli.Close()

	prev, err := lease.ReadSubnetFile(o.subnetFile)
	if err != nil {
		log.Warn("Could not read the previous subnet", "file", o.subnetFile, "error", err)
	} else if prev.Subnet.IsValid() {
		log.Info(fmt.Sprintf("Previous Subnet: %s", prev.Subnet))
	}

	ext, err := chooseInterface(o, log)
	if err != nil {
		return err
	}
	log.Info("Using interface", "name", ext.Name, "iface_ip", ext.IfaceAddr, "public_ip", ext.ExtAddr, "mtu", ext.MTU)

	mgr := lease.NewManager(cli, lease.Options{
		Prefix:      o.etcdPrefix,
		PublicIP:    ext.ExtAddr,
		PrevSubnet:  prev.Subnet,
		RenewMargin: o.renewMargin(),
		Observer:    newLeaseMetrics(),
		Identity:    nodeIdentity(ext),
		Logger:      log,
	})
	cfg, err := mgr.WaitConfig(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if cfg.BackendType != "udp" {
		return fmt.Errorf("unknown backend type: %s (flannel-go implements only the udp backend)", cfg.BackendType)
	}
	if cfg.EnableIPv6 {
		return errors.New("EnableIPv6 is set in the network config, but the udp backend carries IPv4 only: remove EnableIPv6 or use another backend")
	}
	mtu := ext.MTU - encapOverhead

	l, err := mgr.Acquire(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("failed to acquire lease: %w", err)
	}
	d.ownNet.Store(&l.Subnet)

	raiseGOMAXPROCS(o.queues, log)
	dev, err := tun.Open(tunName, o.queues, tun.WithOffloads(o.offloads), tun.WithChecksumVerification(o.verifyChecksums), tun.WithBusyPoll(o.busyPoll), tun.WithLogger(log))
	if err != nil {
		return fmt.Errorf("open TUN device %s with %d queues: %w", tunName, o.queues, err)
	}
	defer dev.Close()
	if err := dev.Configure(l.Subnet.Addr(), mtu, o.tunTxQueueLen, cfg.Network); err != nil {
		return fmt.Errorf("configure %s: %w", tunName, err)
	}
	// The router's ICMP errors come from the TUN's own address; without
	// accept_local the kernel drops them as martians and traceroute, PMTU
	// and "net unreachable" never reach the sender.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+tunName+"/accept_local", []byte("1"), 0o644); err != nil {
		log.Warn("Could not set accept_local on the TUN; ICMP errors from the router will be dropped by the kernel", "error", err)
	}

	rt, err := router.New(router.Config{
		Network:            cfg.Network,
		SubnetLen:          cfg.SubnetLen,
		OwnSubnet:          l.Subnet,
		LocalAddr:          ext.IfaceAddr,
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
	}, dev.Queues)
	if err != nil {
		return err
	}

	d.router.Store(rt)
	if o.ipBlackholeRoute {
		if err := addBlackholeRoute(l.Subnet); err != nil {
			return err
		}
	}

	rules, err := d.setupRules(cfg, prev, l.Subnet)
	if err != nil {
		return err
	}
	subnetFileOK := d.writeSubnetFile(cfg, l.Subnet, mtu)

	var wg sync.WaitGroup
	errc := make(chan error, 3)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Go(func() {
		if err := rt.Run(runCtx); err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("data plane: %w", err)
		}
	})
	events := make(chan []lease.Event, 16)
	wg.Go(func() {
		if err := mgr.Watch(runCtx, d.ownSubnet, events); err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("watch subnets: %w", err)
		}
	})
	wg.Go(func() { d.routes.Run(runCtx, events, rt) })
	if rules != nil {
		wg.Go(func() { d.resyncRules(runCtx) })
	}
	wg.Go(func() {
		err := mgr.Keep(runCtx, cfg, l, func(nl lease.Lease) { d.leaseChanged(cfg, dev, rt, nl, mtu) })
		if err != nil && runCtx.Err() == nil {
			errc <- fmt.Errorf("keep lease: %w", err)
		}
	})

	if subnetFileOK {
		d.ready.Store(true)
	}
	if _, err := sd.SdNotify(false, sd.SdNotifyReady); err != nil {
		log.Warn("sd_notify failed", "error", err)
	}
	log.Info("flanneld is running", "subnet", l.Subnet, "network", cfg.Network, "mtu", mtu, "queues", o.queues)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	d.ready.Store(false)
	log.Info("Waiting for all goroutines to exit")
	cancel()
	wg.Wait()
	return runErr
}

// nodeIdentity names this node in PublicIP conflict messages.
func nodeIdentity(ext *extIface) string {
	host, _ := os.Hostname()
	return fmt.Sprintf("host %s, interface %s %s", host, ext.Name, ext.IfaceAddr)
}

// writeSubnetFile writes the subnet file; a failure is only a warning, as
// upstream, but the daemon then never reports ready.
func (d *daemon) writeSubnetFile(cfg *lease.Config, subnet netip.Prefix, mtu int) bool {
	err := lease.WriteSubnetFile(d.o.subnetFile, lease.SubnetFile{
		Network: cfg.Network,
		Subnet:  subnet,
		MTU:     mtu,
		IPMasq:  d.o.ipMasq,
	})
	if err != nil {
		d.log.Warn("Failed to write the subnet file", "file", d.o.subnetFile, "error", err)
		return false
	}
	return true
}

// leaseChanged moves the node to a re-acquired lease: the TUN address, the
// router's own subnet and the subnet file follow it.
func (d *daemon) leaseChanged(cfg *lease.Config, dev *tun.Device, rt *router.Router, nl lease.Lease, mtu int) {
	d.subnetMu.Lock()
	defer d.subnetMu.Unlock()
	old := d.ownSubnet()
	d.ownNet.Store(&nl.Subnet)
	if old == nl.Subnet {
		d.log.Info("Lease re-acquired", "subnet", nl.Subnet)
		return
	}
	d.log.Warn("Lease re-acquired with a different subnet; containers on the old subnet must be restarted",
		"old", old, "new", nl.Subnet)
	if err := dev.Configure(nl.Subnet.Addr(), mtu, d.o.tunTxQueueLen, cfg.Network); err != nil {
		d.log.Error("Reconfigure TUN for the new subnet", "error", err)
	}
	if err := dev.RemoveAddr(old.Addr()); err != nil {
		d.log.Warn("Remove the old TUN address", "addr", old.Addr(), "error", err)
	}
	rt.SetOwnSubnet(nl.Subnet)
	if d.o.ipBlackholeRoute {
		if err := delBlackholeRoute(old); err != nil {
			d.log.Warn("Remove the old blackhole route", "error", err)
		}
		if err := addBlackholeRoute(nl.Subnet); err != nil {
			d.log.Error("Add the blackhole route for the new subnet", "error", err)
		}
	}
	if d.rules.Load() != nil {
		if _, err := d.setupRules(cfg, lease.SubnetFile{Network: cfg.Network, Subnet: old}, nl.Subnet); err != nil {
			d.log.Error("Update iptables rules for the new subnet", "error", err)
		}
	}
	d.ready.Store(d.writeSubnetFile(cfg, nl.Subnet, mtu))
}

// setupRules installs the --ip-masq and --iptables-forward-rules rules for
// subnet, removing masquerade rules left for the previous network or subnet.
// Forward rules alone are a convenience: without iptables they are skipped
// with a warning, while --ip-masq without iptables is an error.
func (d *daemon) setupRules(cfg *lease.Config, prev lease.SubnetFile, subnet netip.Prefix) (*ipmasq.Rules, error) {
	var sets ipmasq.Set
	if d.o.ipMasq {
		sets |= ipmasq.Masq
	}
	if d.o.iptablesForwardRules {
		sets |= ipmasq.Forward
	}
	if sets == 0 {
		return nil, nil
	}
	rules, err := ipmasq.New(cfg.Network, subnet, !d.o.ipMasqFullyRandomDisable, sets)
	if err == nil && d.o.ipMasq {
		err = rules.DeleteStale(prev.Network, prev.Subnet)
	}
	if err == nil {
		err = rules.Ensure()
	}
	if err != nil {
		if !d.o.ipMasq {
			d.log.Warn("Could not add the FORWARD accept rules; give --iptables-forward-rules=false to silence this", "error", err)
			return nil, nil
		}
		return nil, fmt.Errorf("failed to setup masq rules: %w", err)
	}
	d.rules.Store(rules)
	return rules, nil
}

// resyncRules re-adds rules someone else deleted, every --iptables-resync
// seconds, always for the current subnet's rule set.
func (d *daemon) resyncRules(ctx context.Context) {
	t := time.NewTicker(time.Duration(d.o.iptablesResync) * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r := d.rules.Load(); r != nil {
			if err := r.Ensure(); err != nil {
				d.log.Error("Resync iptables rules", "error", err)
			}
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
