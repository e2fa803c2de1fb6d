package hoststate

import (
	"log/slog"
	"net/netip"

	"github.com/flannel-go/flannel-go/internal/ipmasq"
)

// RuleSets says which of upstream's rule sets the node installs, and how.
type RuleSets struct {
	Masq        bool // --ip-masq
	Forward     bool // --iptables-forward-rules
	RandomFully bool // masquerade --random-fully (not --ip-masq-fully-random-disable)
	NFTables    bool // the network config's EnableNFTables
}

// IPMasq is the RuleMaker of upstream's iptables or nftables rules
// (internal/ipmasq), or nil when sets installs none. Each family's rules
// first remove what the other backend's runs left.
func IPMasq(sets RuleSets, log *slog.Logger) RuleMaker {
	var which ipmasq.Set
	if sets.Masq {
		which |= ipmasq.Masq
	}
	if sets.Forward {
		which |= ipmasq.Forward
	}
	if which == 0 {
		return nil
	}
	return func(network, subnet netip.Prefix) (Rules, error) {
		var r *ipmasq.Rules
		var err error
		if sets.NFTables {
			if err := ipmasq.CleanUpIPTables(); err != nil {
				log.Warn("Could not remove the iptables rules of a run without EnableNFTables", "error", err)
			}
			r, err = ipmasq.NewNFTables(network, subnet, sets.RandomFully, which)
		} else {
			if err := ipmasq.CleanUpNFTables(); err != nil {
				log.Warn("Could not remove the nftables tables of a run with EnableNFTables", "error", err)
			}
			r, err = ipmasq.New(network, subnet, sets.RandomFully, which)
		}
		if err != nil {
			return nil, err
		}
		return masqRules{r, sets.Masq}, nil
	}
}

// masqRules removes stale masquerade rules only where it masquerades.
type masqRules struct {
	*ipmasq.Rules
	masq bool
}

func (m masqRules) DeleteStale(network, subnet netip.Prefix) error {
	if !m.masq {
		return nil
	}
	return m.Rules.DeleteStale(network, subnet)
}
