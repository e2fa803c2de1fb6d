package ipmasq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"sigs.k8s.io/knftables"
)

// Upstream v0.28.9's nftables names (EnableNFTables in the network config):
// one table per family, a filter chain on the forward hook and a nat chain
// on the postrouting hook.
const (
	NFTTable4       = "flannel-ipv4"
	NFTTable6       = "flannel-ipv6"
	NFTForwardChain = "forward"
	NFTMasqChain    = "postrtg"
	nftTimeout      = 10 * time.Second
)

// nftRules is the nftables variant of Rules. knftables drives the nft
// binary, like upstream, so the rules are upstream's own rule text and
// every change is one atomic nft transaction.
type nftRules struct {
	v4, v6 knftables.Interface
	chains []nftChain
	// built is set once this value installed its rules: the first ensure
	// rebuilds every chain, so a new subnet's rules replace the old ones.
	built bool
}

// nftChain is a base chain and its rules in order.
type nftChain struct {
	chain *knftables.Chain
	rules []string
}

// NewNFTables prepares the rule sets of New in nftables, as upstream
// installs them with EnableNFTables: table ip flannel-ipv4 with chain
// postrtg (--ip-masq) and chain forward (--iptables-forward-rules), and an
// empty table ip6 flannel-ipv6. randomFully masquerades with fully-random
// where the kernel supports it. Ensure installs them.
func NewNFTables(network, subnet netip.Prefix, randomFully bool, sets Set) (*Rules, error) {
	if !network.Addr().Is4() || !subnet.Addr().Is4() {
		return nil, fmt.Errorf("ip-masq: network %s and subnet %s must both be IPv4", network, subnet)
	}
	v4, err := knftables.New(knftables.IPv4Family, NFTTable4)
	if err != nil {
		return nil, fmt.Errorf("ip-masq: no nftables support (EnableNFTables needs the nft binary and nf_tables): %w", err)
	}
	v6, err := knftables.New(knftables.IPv6Family, NFTTable6)
	if err != nil {
		return nil, fmt.Errorf("ip-masq: no nftables support for IPv6: %w", err)
	}
	n := &nftRules{v4: v4, v6: v6}
	if sets&Masq != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
		defer cancel()
		n.chains = append(n.chains, nftMasqChain(network.Masked(), subnet.Masked(), randomFully && n.fullyRandomWorks(ctx)))
	}
	if sets&Forward != 0 {
		n.chains = append(n.chains, nftForwardChain(network.Masked()))
	}
	return &Rules{nft: n, log: slog.Default()}, nil
}

// nftMasqChain is upstream's postrtg chain, rule for rule like the
// iptables FLANNEL-POSTRTG (the kube-proxy mark is matched exactly, as
// upstream's nftables rule does).
func nftMasqChain(network, subnet netip.Prefix, randomFully bool) nftChain {
	n, s := network.String(), subnet.String()
	masq := "masquerade"
	if randomFully {
		masq = "masquerade fully-random"
	}
	return nftChain{
		chain: &knftables.Chain{
			Name:     NFTMasqChain,
			Comment:  knftables.PtrTo("chain to manage traffic masquerading by flannel"),
			Type:     knftables.PtrTo(knftables.NATType),
			Hook:     knftables.PtrTo(knftables.PostroutingHook),
			Priority: knftables.PtrTo(knftables.SNATPriority),
		},
		rules: []string{
			"meta mark 0x4000 return",
			knftables.Concat("ip saddr", s, "ip daddr", n, "return"),
			knftables.Concat("ip saddr", n, "ip daddr", s, "return"),
			knftables.Concat("ip saddr !=", s, "ip daddr", n, "return"),
			knftables.Concat("ip saddr", n, "ip daddr !=", multicastNet, masq),
			knftables.Concat("ip saddr !=", n, "ip daddr", n, masq),
		},
	}
}

func nftForwardChain(network netip.Prefix) nftChain {
	n := network.String()
	return nftChain{
		chain: &knftables.Chain{
			Name:     NFTForwardChain,
			Comment:  knftables.PtrTo("chain to accept flannel traffic"),
			Type:     knftables.PtrTo(knftables.FilterType),
			Hook:     knftables.PtrTo(knftables.ForwardHook),
			Priority: knftables.PtrTo(knftables.FilterPriority),
		},
		rules: []string{
			knftables.Concat("ip saddr", n, "accept"),
			knftables.Concat("ip daddr", n, "accept"),
		},
	}
}

// fullyRandomWorks checks a masquerade fully-random rule with nft --check,
// as upstream does, without changing anything.
func (n *nftRules) fullyRandomWorks(ctx context.Context) bool {
	tx := n.v4.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{Name: "masqueradeTest", Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)})
	tx.Add(&knftables.Rule{Chain: "masqueradeTest", Rule: "ip saddr != 127.0.0.1 masquerade fully-random"})
	return n.v4.Check(ctx, tx) == nil
}

// ensure rebuilds, in one transaction, every chain that is missing or does
// not hold exactly its number of rules (someone deleted or added one), and
// creates the tables. A rebuild flushes the chain, so rules for a previous
// network or subnet go with it.
func (n *nftRules) ensure(log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	tx := n.v4.NewTransaction()
	stale := 0
	for _, c := range n.chains {
		if n.built {
			got, err := n.v4.ListRules(ctx, c.chain.Name)
			if err == nil && len(got) == len(c.rules) {
				continue
			}
			if err != nil && !knftables.IsNotFound(err) {
				return fmt.Errorf("ip-masq: list nftables chain %s %s: %w", NFTTable4, c.chain.Name, err)
			}
		}
		if stale == 0 {
			tx.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + NFTTable4)})
		}
		stale++
		log.Info("ip-masq: (re)building nftables chain", "table", NFTTable4, "chain", c.chain.Name)
		tx.Add(c.chain)
		tx.Flush(&knftables.Chain{Name: c.chain.Name})
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.chain.Name, Rule: r})
		}
	}
	if stale == 0 {
		return nil
	}
	if err := n.v4.Run(ctx, tx); err != nil {
		return fmt.Errorf("ip-masq: install nftables rules in %s: %w", NFTTable4, err)
	}
	n.built = true
	tx6 := n.v6.NewTransaction()
	tx6.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + NFTTable6)})
	if err := n.v6.Run(ctx, tx6); err != nil {
		return fmt.Errorf("ip-masq: create nftables table %s: %w", NFTTable6, err)
	}
	return nil
}

// CleanUpIPTables deletes the iptables chains of New and their jumps, for
// a node that runs with EnableNFTables, as upstream does at start. Without
// iptables there is nothing to delete.
func CleanUpIPTables() error {
	ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv4))
	if err != nil {
		return nil
	}
	var errs []error
	for _, c := range []chain{masqChain(netip.Prefix{}, netip.Prefix{}, false), forwardChain(netip.Prefix{})} {
		exists, err := ipt.ChainExists(c.table, c.name)
		if err != nil || !exists {
			continue
		}
		if err := ipt.DeleteIfExists(c.table, c.parent, c.jump...); err != nil {
			errs = append(errs, fmt.Errorf("ip-masq: delete jump %s %s -> %s: %w", c.table, c.parent, c.name, err))
			continue
		}
		if err := ipt.ClearAndDeleteChain(c.table, c.name); err != nil {
			errs = append(errs, fmt.Errorf("ip-masq: delete chain %s %s: %w", c.table, c.name, err))
		}
	}
	return errors.Join(errs...)
}

// CleanUpNFTables deletes the tables of the nftables variant, for a node
// that runs with iptables (EnableNFTables false), as upstream does at
// start. Without the nft binary or nf_tables there is nothing to delete.
func CleanUpNFTables() error {
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	var errs []error
	for _, t := range []struct {
		family knftables.Family
		name   string
	}{{knftables.IPv4Family, NFTTable4}, {knftables.IPv6Family, NFTTable6}} {
		nft, err := knftables.New(t.family, t.name)
		if err != nil {
			return nil
		}
		tx := nft.NewTransaction()
		tx.Delete(&knftables.Table{})
		if err := nft.Run(ctx, tx); err != nil && !knftables.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("ip-masq: delete nftables table %s: %w", t.name, err))
		}
	}
	return errors.Join(errs...)
}
