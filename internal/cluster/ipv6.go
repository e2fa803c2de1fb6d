package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// IPv6Underlay is the hosts' IPv6 underlay network with Options.IPv6Underlay:
// host i gets IPv6Underlay.Addr()+i on its underlay interface.
var IPv6Underlay = netip.MustParsePrefix("2001:db8:1::/64")

// IPv6Network is the IPv6 overlay of the dual-stack and IPv6-only configs
// below.
var IPv6Network = netip.MustParsePrefix("2001:db8:100::/48")

// Network configs with IPv6: upstream's dual-stack config of issue 13 and
// its IPv6-only variant, in the test ranges.
const (
	DualStackConfig = `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"udp"}}`
	IPv6OnlyConfig  = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"udp"}}`
)

// noIPv4Bridge is the container bridge network of a node whose lease has
// no IPv4 subnet (an IPv6-only network): testbed containers always have an
// IPv4 address, and this one leads nowhere, as no flanneld routes it.
var noIPv4Bridge = netip.MustParsePrefix("198.19.255.1/24")

// setupIPv6 turns on IPv6 forwarding in every flanneld host, as Docker does
// with IPv6 enabled (the containers' IPv6 packets cross the host to
// flannel0), and with Options.IPv6Underlay gives each host its IPv6
// underlay address. DAD is skipped: the bed's addresses are unique.
func (c *Cluster) setupIPv6(ctx context.Context) error {
	for i, n := range c.Nodes {
		h := n.Host
		if err := h.Do(func() error {
			// The container bridge and veths created later skip DAD for
			// their link-local addresses: while one is tentative the host's
			// first neighbour solicitation to a new container waits for it.
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0o644); err != nil {
				return err
			}
			return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
		}); err != nil {
			return fmt.Errorf("cluster: enable IPv6 forwarding in %s: %w", h.Name, err)
		}
		if !c.opts.IPv6Underlay {
			continue
		}
		n.Addr6 = ipv6Add(IPv6Underlay.Addr(), uint64(i+1))
		pfx := netip.PrefixFrom(n.Addr6, IPv6Underlay.Bits()).String()
		if out, err := h.Run(ctx, "ip", "-6", "addr", "add", pfx, "dev", h.Iface, "nodad"); err != nil {
			return fmt.Errorf("cluster: IPv6 underlay address on %s: %w: %s", h.Name, err, out)
		}
	}
	return nil
}

// bridgeCIDR is the container bridge address of the node, from its subnet
// file as Docker's --bip: the subnet's first address.
func (n *Node) bridgeCIDR() netip.Prefix {
	if !n.Env.Subnet.IsValid() {
		return noIPv4Bridge
	}
	return netip.PrefixFrom(n.Env.Subnet.Addr().Next(), n.Env.Subnet.Bits())
}

// addIPv6 gives the container an address of the node's IPv6 subnet, as
// Docker with --ipv6 --fixed-cidr-v6=$FLANNEL_IPV6_SUBNET: the bridge holds
// the subnet's ::1 (added with the first container), the container the
// address at the same offset in the subnet as its IPv4 address in the
// bridge network, so ::2 for the first, and a default route via the bridge.
func (n *Node) addIPv6(ctx context.Context, ct *testbed.Container) error {
	sub := n.Env.IPv6Subnet
	gw := ipv6Add(sub.Masked().Addr(), 1)
	if n.Container == nil {
		out, err := n.Host.Run(ctx, "ip", "-6", "addr", "add", netip.PrefixFrom(gw, sub.Bits()).String(), "dev", testbed.ContainerBridge, "nodad")
		if err != nil {
			return fmt.Errorf("cluster: IPv6 bridge address on %s: %w: %s", n.Host.Name, err, out)
		}
	}
	addr := n.IPv6Addr(ct)
	for _, args := range [][]string{
		{"-6", "addr", "add", netip.PrefixFrom(addr, sub.Bits()).String(), "dev", ct.Iface, "nodad"},
		{"-6", "route", "add", "default", "via", gw.String(), "dev", ct.Iface},
	} {
		if out, err := ct.Run(ctx, "ip", args...); err != nil {
			return fmt.Errorf("cluster: IPv6 in container %s: %w: %s", ct.Name, err, out)
		}
	}
	return nil
}

// IPv6Addr is the IPv6 address AddContainer gave ct on the node's IPv6
// subnet; invalid when the node's lease has none.
func (n *Node) IPv6Addr(ct *testbed.Container) netip.Addr {
	if !n.Env.IPv6Subnet.IsValid() {
		return netip.Addr{}
	}
	base, a := ct.Prefix.Masked().Addr().As4(), ct.Addr.As4()
	off := uint64(a[2]-base[2])<<8 | uint64(a[3]-base[3])
	return ipv6Add(n.Env.IPv6Subnet.Masked().Addr(), off)
}

// ipv6Add adds k to the low 64 bits of a.
func ipv6Add(a netip.Addr, k uint64) netip.Addr {
	b := a.As16()
	lo := uint64(0)
	for _, x := range b[8:] {
		lo = lo<<8 | uint64(x)
	}
	lo += k
	for i := 15; i >= 8; i-- {
		b[i] = byte(lo)
		lo >>= 8
	}
	return netip.AddrFrom16(b)
}
