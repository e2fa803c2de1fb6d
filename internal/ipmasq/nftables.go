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
	nft   knftables.Interface // the table of the network's family
	table string
	ip    string // "ip" or "ip6", the rules' address match
	// empty is upstream's empty flannel-ipv6 table, which the IPv4 rules
	// create beside their own; nil for the IPv6 rules.
	empty  knftables.Interface
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
// installs them with EnableNFTables: for an IPv4 network, table ip
// flannel-ipv4 with chain postrtg (--ip-masq) and chain forward
// (--iptables-forward-rules), and an empty table ip6 flannel-ipv6; for an
// IPv6 network the same chains in table ip6 flannel-ipv6. randomFully
// masquerades with fully-random where the kernel supports it. Ensure
// installs them.
func NewNFTables(network, subnet netip.Prefix, randomFully bool, sets Set) (*Rules, error) {
	proto, err := checkFamily(network, subnet)
	if err != nil {
		return nil, err
	}
	v6, err := knftables.New(knftables.IPv6Family, NFTTable6)
	if err != nil {
		return nil, fmt.Errorf("ip-masq: no nftables support (EnableNFTables needs the nft binary and nf_tables): %w", err)
	}
	n := &nftRules{nft: v6, table: NFTTable6, ip: "ip6"}
	if proto == iptables.ProtocolIPv4 {
		v4, err := knftables.New(knftables.IPv4Family, NFTTable4)
		if err != nil {
			return nil, fmt.Errorf("ip-masq: no nftables support (EnableNFTables needs the nft binary and nf_tables): %w", err)
		}
		n = &nftRules{nft: v4, table: NFTTable4, ip: "ip", empty: v6}
	}
	if sets&Masq != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
		defer cancel()
		n.chains = append(n.chains, nftMasqChain(n.ip, network.Masked(), subnet.Masked(), randomFully && n.fullyRandomWorks(ctx)))
	}
	if sets&Forward != 0 {
		n.chains = append(n.chains, nftForwardChain(n.ip, network.Masked()))
	}
	return &Rules{nft: n, log: slog.Default()}, nil
}

// nftMasqChain is upstream's postrtg chain, rule for rule like the
// iptables FLANNEL-POSTRTG (the kube-proxy mark is matched exactly, as
// upstream's nftables rule does); ip is "ip" or "ip6".
func nftMasqChain(ip string, network, subnet netip.Prefix, randomFully bool) nftChain {
	n, s := network.String(), subnet.String()
	saddr, daddr := ip+" saddr", ip+" daddr"
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
			knftables.Concat(saddr, s, daddr, n, "return"),
			knftables.Concat(saddr, n, daddr, s, "return"),
			knftables.Concat(saddr, "!=", s, daddr, n, "return"),
			knftables.Concat(saddr, n, daddr, "!=", multicast(network), masq),
			knftables.Concat(saddr, "!=", n, daddr, n, masq),
		},
	}
}

func nftForwardChain(ip string, network netip.Prefix) nftChain {
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
			knftables.Concat(ip+" saddr", n, "accept"),
			knftables.Concat(ip+" daddr", n, "accept"),
		},
	}
}

// fullyRandomWorks checks a masquerade fully-random rule with nft --check,
// as upstream does, without changing anything.
func (n *nftRules) fullyRandomWorks(ctx context.Context) bool {
	loopback := "127.0.0.1"
	if n.ip == "ip6" {
		loopback = "::1"
	}
	tx := n.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{Name: "masqueradeTest", Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority)})
	tx.Add(&knftables.Rule{Chain: "masqueradeTest", Rule: knftables.Concat(n.ip, "saddr !=", loopback, "masquerade fully-random")})
	return n.nft.Check(ctx, tx) == nil
}

// ensure rebuilds, in one transaction, every chain that is missing or does
// not hold exactly its number of rules (someone deleted or added one), and
// creates the tables. A rebuild flushes the chain, so rules for a previous
// network or subnet go with it.
func (n *nftRules) ensure(log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	tx := n.nft.NewTransaction()
	stale := 0
	for _, c := range n.chains {
		if n.built {
			got, err := n.nft.ListRules(ctx, c.chain.Name)
			if err == nil && len(got) == len(c.rules) {
				continue
			}
			if err != nil && !knftables.IsNotFound(err) {
				return fmt.Errorf("ip-masq: list nftables chain %s %s: %w", n.table, c.chain.Name, err)
			}
		}
		if stale == 0 {
			tx.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + n.table)})
		}
		stale++
		log.Info("ip-masq: (re)building nftables chain", "table", n.table, "chain", c.chain.Name)
		tx.Add(c.chain)
		tx.Flush(&knftables.Chain{Name: c.chain.Name})
		for _, r := range c.rules {
			tx.Add(&knftables.Rule{Chain: c.chain.Name, Rule: r})
		}
	}
	if stale == 0 {
		return nil
	}
	if err := n.nft.Run(ctx, tx); err != nil {
		return fmt.Errorf("ip-masq: install nftables rules in %s: %w", n.table, err)
	}
	n.built = true
	if n.empty == nil {
		return nil
	}
	tx6 := n.empty.NewTransaction()
	tx6.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + NFTTable6)})
	if err := n.empty.Run(ctx, tx6); err != nil {
		return fmt.Errorf("ip-masq: create nftables table %s: %w", NFTTable6, err)
	}
	return nil
}

// CleanUpIPTables deletes the iptables and ip6tables chains of New and
// their jumps, for a node that runs with EnableNFTables, as upstream does at
// start. Without iptables there is nothing to delete.
func CleanUpIPTables() error {
	var errs []error
	for _, proto := range []iptables.Protocol{iptables.ProtocolIPv4, iptables.ProtocolIPv6} {
		ipt, err := iptables.New(iptables.IPFamily(proto))
		if err != nil {
			continue
		}
		errs = append(errs, cleanUpChains(ipt))
	}
	return errors.Join(errs...)
}

// cleanUpChains deletes New's chains and their jumps from one family.
func cleanUpChains(ipt *iptables.IPTables) error {
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
