//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// blackholeMetric puts the blackhole route behind the container bridge's
// connected route for the same prefix (metric 0): the two coexist, and the
// blackhole catches the subnet's traffic only while no bridge serves it.
const blackholeMetric = 1000

// blackholeRoute is the --ip-blackhole-route route for subnet.
func blackholeRoute(subnet netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Dst:      &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), 32)},
		Type:     unix.RTN_BLACKHOLE,
		Priority: blackholeMetric,
	}
}

func addBlackholeRoute(subnet netip.Prefix) error {
	if err := netlink.RouteAdd(blackholeRoute(subnet)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add blackhole route for %s: %w", subnet, err)
	}
	return nil
}

func delBlackholeRoute(subnet netip.Prefix) error {
	if err := netlink.RouteDel(blackholeRoute(subnet)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete blackhole route for %s: %w", subnet, err)
	}
	return nil
}
