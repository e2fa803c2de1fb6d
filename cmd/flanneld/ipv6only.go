//go:build linux

package main

import (
	"context"
	"fmt"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/flannel-go/flannel-go/lease"
)

// encapOverhead6 is the outer IPv6 and UDP headers around each inner packet
// on an IPv6 underlay, which an IPv6-only network uses.
const encapOverhead6 = 48

// runIPv6Only serves an IPv6-only network (EnableIPv4 false) as far as this
// version can: it holds and renews the lease (upstream's key
// 0.0.0.0-0&<IPv6 subnet>) and writes the subnet file's IPv6 lines, so
// that the node keeps its subnet and tools reading the file work, but it
// opens no TUN and forwards nothing. Upstream's udp backend cannot run such
// a network at all (it has no IPv4 public address to lease with).
func (d *daemon) runIPv6Only(ctx context.Context, mgr *lease.Manager, cfg *lease.Config, l lease.Lease, ext *extIface) error {
	mtu := ext.MTU - encapOverhead6
	d.log.Warn(fmt.Sprintf("IPv6-only network (EnableIPv4 false): this node holds IPv6 subnet %s of %s and writes it to %s, "+
		"but carries NO traffic: the udp backend's IPv6 data plane is not implemented in this version; "+
		"no TUN device, no routes, no masquerade or forward rules", l.IPv6Subnet, cfg.IPv6Network, d.o.subnetFile))
	d.subnetMu.Lock()
	d.ready.Store(d.writeSubnetFile(cfg, l, mtu))
	d.subnetMu.Unlock()
	if _, err := sd.SdNotify(false, sd.SdNotifyReady); err != nil {
		d.log.Warn("sd_notify failed", "error", err)
	}
	d.log.Info("flanneld is running (lease only)", "ipv6_subnet", l.IPv6Subnet, "ipv6_network", cfg.IPv6Network, "mtu", mtu)
	err := mgr.Keep(ctx, cfg, l, func(nl lease.Lease) {
		d.subnetMu.Lock()
		defer d.subnetMu.Unlock()
		d.log.Info("Lease re-acquired", "ipv6_subnet", nl.IPv6Subnet)
		d.ready.Store(d.writeSubnetFile(cfg, nl, mtu))
	})
	d.ready.Store(false)
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("keep lease: %w", err)
	}
	return nil
}
