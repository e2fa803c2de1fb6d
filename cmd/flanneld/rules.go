//go:build linux

package main

import (
	"net/netip"

	"github.com/flannel-go/flannel-go/internal/ipmasq"
	"github.com/flannel-go/flannel-go/lease"
)

// newRules builds the --ip-masq and forward rules for network and subnet
// (both IPv4 or both IPv6) with nftables when the network config has
// EnableNFTables, else with iptables or ip6tables, and removes the other
// variant's rules (a previous run with the other setting), as upstream does
// at start.
func (d *daemon) newRules(cfg *lease.Config, network, subnet netip.Prefix, randomFully bool, sets ipmasq.Set) (*ipmasq.Rules, error) {
	if cfg.EnableNFTables {
		if err := ipmasq.CleanUpIPTables(); err != nil {
			d.log.Warn("Could not remove the iptables rules of a run without EnableNFTables", "error", err)
		}
		return ipmasq.NewNFTables(network, subnet, randomFully, sets)
	}
	if err := ipmasq.CleanUpNFTables(); err != nil {
		d.log.Warn("Could not remove the nftables tables of a run with EnableNFTables", "error", err)
	}
	return ipmasq.New(network, subnet, randomFully, sets)
}
