package kube

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/flannel-go/flannel-go/lease"
)

// errNoPodCIDR means the node has no podCIDR yet: kube-controller-manager
// (--allocate-node-cidrs) or the operator has not assigned one.
var errNoPodCIDR = errors.New("no podCIDR assigned")

// podCIDRs returns a node's IPv4 and IPv6 pod subnets, read as upstream
// reads them: spec.podCIDRs when it has one or two entries, else
// spec.podCIDR; more than two entries is an error. Host bits are masked.
// A family the node has no subnet of is left invalid.
func podCIDRs(podCIDR string, list []string) (v4, v6 netip.Prefix, err error) {
	switch {
	case len(list) > 2:
		return v4, v6, fmt.Errorf("pod cidrs should be IPv4/IPv6 only or dualstack, got %d (%s)", len(list), strings.Join(list, ", "))
	case len(list) == 0 && podCIDR == "":
		return v4, v6, errNoPodCIDR
	case len(list) == 0:
		list = []string{podCIDR}
	}
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Zone() != "" {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("podCIDR %q is not a CIDR", s)
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			// Go's net.ParseCIDR, upstream's parser, reads these as IPv4.
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		if p.Addr().Is4() {
			v4 = p.Masked()
		} else {
			v6 = p.Masked()
		}
	}
	return v4, v6, nil
}

// contains reports whether subnet lies inside network, as upstream's
// containsCIDR.
func contains(network, subnet netip.Prefix) bool {
	return network.IsValid() && network.Bits() <= subnet.Bits() && network.Contains(subnet.Addr())
}

// ownSubnets checks this node's pod subnets against the config: each
// family the config enables needs a podCIDR of that family inside its
// network (upstream's error text when it is outside). Families the config
// does not enable are dropped.
func ownSubnets(node string, cfg *lease.Config, v4, v6 netip.Prefix) (lease.Lease, error) {
	var l lease.Lease
	if cfg.EnableIPv4 {
		if !v4.IsValid() {
			return l, fmt.Errorf("node %q has no IPv4 podCIDR but net-conf.json enables IPv4 (EnableIPv4 defaults to true): "+
				"give the cluster an IPv4 --cluster-cidr or set \"EnableIPv4\": false", node)
		}
		if !contains(cfg.Network, v4) {
			return l, fmt.Errorf("subnet %q specified in the flannel net config doesn't contain %q PodCIDR of the %q node", cfg.Network, v4, node)
		}
		l.Subnet = v4
	}
	if cfg.EnableIPv6 {
		if !v6.IsValid() {
			return l, fmt.Errorf("node %q has no IPv6 podCIDR but net-conf.json enables IPv6: "+
				"give the cluster a dual-stack --cluster-cidr or set \"EnableIPv6\": false", node)
		}
		if !contains(cfg.IPv6Network, v6) {
			return l, fmt.Errorf("subnet %q specified in the flannel net config doesn't contain %q IPv6 PodCIDR of the %q node", cfg.IPv6Network, v6, node)
		}
		l.IPv6Subnet = v6
	}
	return l, nil
}

// peerLease turns another node's annotations and pod subnets into the
// lease routes are built from, for the families the config enables.
// ok is false for a node no flanneld manages (no kube-subnet-manager
// "true"): not a peer, and nothing to warn about. A managed node whose
// annotations or podCIDRs do not parse, or that holds no subnet with an
// address to reach it at, is an error.
func (a annotations) peerLease(cfg *lease.Config, have map[string]string, podCIDR string, list []string) (l lease.Lease, ok bool, err error) {
	if have[a.SubnetKubeManaged] != managedValue {
		return l, false, nil
	}
	v4, v6, err := podCIDRs(podCIDR, list)
	if err != nil {
		return l, true, err
	}
	if l.PublicIP, l.PublicIPv6, err = a.publicAddrs(have); err != nil {
		return lease.Lease{}, true, err
	}
	if cfg.EnableIPv4 {
		l.Subnet = v4
	}
	if cfg.EnableIPv6 {
		l.IPv6Subnet = v6
	}
	switch {
	case !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid():
		return lease.Lease{}, true, errors.New("no podCIDR of a family the network config enables")
	case !l.PublicIP.IsValid() && !l.PublicIPv6.IsValid():
		return lease.Lease{}, true, fmt.Errorf("no public address: annotation %s is missing", a.BackendPublicIP)
	}
	return l, true, nil
}
