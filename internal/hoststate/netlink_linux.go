package hoststate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// blackholeMetric is upstream's: the route upstream adds has no metric, so
// a blackhole route an upstream flanneld left behind is this one and is
// taken over as it is. The kernel stores an IPv6 route added without a
// metric at blackholeMetric6.
const (
	blackholeMetric  = 0
	blackholeMetric6 = 1024
)

// Netlink is the host's routing table (Routes), through netlink.
type Netlink struct{}

func blackholeRoute(subnet netip.Prefix) *netlink.Route {
	r := &netlink.Route{
		Dst:      &net.IPNet{IP: subnet.Addr().AsSlice(), Mask: net.CIDRMask(subnet.Bits(), subnet.Addr().BitLen())},
		Type:     unix.RTN_BLACKHOLE,
		Family:   netlink.FAMILY_V4,
		Priority: blackholeMetric,
	}
	if subnet.Addr().Is6() {
		r.Family, r.Priority = netlink.FAMILY_V6, blackholeMetric6
	}
	return r
}

// AddBlackhole makes sure the subnet has upstream's blackhole route:
// added unless one is there (one an upstream flanneld left is taken
// over), and one at another metric (flannel-go before it used
// upstream's) is replaced. The kernel lets a blackhole route at metric 0
// shadow a container bridge's connected route for the same subnet when
// the bridge comes up after it (upstream's route then drops every packet
// to the containers), so while any other route serves the subnet the
// blackhole route is removed instead; it comes back at the next resync
// once that route is gone.
func (Netlink) AddBlackhole(subnet netip.Prefix) error {
	want := blackholeRoute(subnet)
	routes, err := netlink.RouteListFiltered(want.Family, want, netlink.RT_FILTER_DST)
	if err != nil {
		return fmt.Errorf("list routes for %s: %w", subnet, err)
	}
	served := slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Type != unix.RTN_BLACKHOLE })
	have := false
	for _, r := range routes {
		if r.Type != unix.RTN_BLACKHOLE {
			continue
		}
		if r.Priority == want.Priority && !served {
			have = true
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete blackhole route for %s with metric %d: %w", subnet, r.Priority, err)
		}
	}
	if have || served {
		return nil
	}
	if err := netlink.RouteAdd(want); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add blackhole route for %s: %w", subnet, err)
	}
	return nil
}

// DelBlackhole removes subnet's blackhole route; a missing one is fine.
func (Netlink) DelBlackhole(subnet netip.Prefix) error {
	if err := netlink.RouteDel(blackholeRoute(subnet)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("delete blackhole route for %s: %w", subnet, err)
	}
	return nil
}
