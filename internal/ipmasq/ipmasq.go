// Package ipmasq installs flanneld's --ip-masq and forward iptables rules in
// upstream flannel v0.28.9's layout: a FLANNEL-POSTRTG chain in the nat
// table that masquerades traffic leaving the overlay, and a FLANNEL-FWD chain
// in the filter table that accepts overlay traffic in FORWARD. The IPv6
// network of a dual-stack or IPv6-only config gets the same chains from
// ip6tables (or in nftables' ip6 table), with IPv6's multicast range.
//
// iptables acts on the network namespace of the thread that runs it, and
// os/exec forks from the calling thread, so all methods act on the calling
// goroutine's namespace when it is locked to a thread in another one.
package ipmasq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Chain names, jump comments and the kube-proxy mark that upstream uses.
const (
	MasqChain      = "FLANNEL-POSTRTG"
	ForwardChain   = "FLANNEL-FWD"
	MasqComment    = "flanneld masq"
	ForwardComment = "flanneld forward"
	kubeProxyMark  = "0x4000/0x4000"
	multicastNet   = "224.0.0.0/4"
	multicastNet6  = "ff00::/8"
)

// multicast is the multicast range of network's family, which the
// masquerade rule leaves alone.
func multicast(network netip.Prefix) string {
	if network.Addr().Is6() {
		return multicastNet6
	}
	return multicastNet
}

// checkFamily accepts a network and subnet of one family and returns
// go-iptables' protocol for it.
func checkFamily(network, subnet netip.Prefix) (iptables.Protocol, error) {
	switch {
	case network.Addr().Is4() && subnet.Addr().Is4():
		return iptables.ProtocolIPv4, nil
	case network.Addr().Is6() && subnet.Addr().Is6() && !network.Addr().Is4In6() && !subnet.Addr().Is4In6():
		return iptables.ProtocolIPv6, nil
	}
	return 0, fmt.Errorf("ip-masq: network %s and subnet %s must be of one family", network, subnet)
}

// Set selects the rule sets a Rules value manages.
type Set uint8

// The rule sets: Masq for --ip-masq, Forward for --iptables-forward-rules.
const (
	Masq Set = 1 << iota
	Forward
)

// chain is one managed chain: a jump into it from a built-in chain, and its
// rules in order.
type chain struct {
	table, parent, name string
	jump                []string
	rules               [][]string
}

// Rules manages flanneld's iptables rules for one network and subnet.
type Rules struct {
	ipt     *iptables.IPTables
	restore string // path of iptables-restore
	chains  []chain
	log     *slog.Logger
	nft     *nftRules // the nftables variant (NewNFTables) instead of the above
}

// New prepares the rule sets for the overlay network and this host's
// subnet, both IPv4 (iptables) or both IPv6 (ip6tables). randomFully adds
// --random-fully to the MASQUERADE rules when the installed iptables
// supports it. New only probes iptables; Ensure installs the rules.
func New(network, subnet netip.Prefix, randomFully bool, sets Set) (*Rules, error) {
	proto, err := checkFamily(network, subnet)
	if err != nil {
		return nil, err
	}
	bin := "iptables"
	if proto == iptables.ProtocolIPv6 {
		bin = "ip6tables"
	}
	ipt, err := iptables.New(iptables.IPFamily(proto))
	if err != nil {
		return nil, fmt.Errorf("ip-masq: find %s: %w", bin, err)
	}
	restore, err := exec.LookPath(bin + "-restore")
	if err != nil {
		return nil, fmt.Errorf("ip-masq: find %s-restore: %w", bin, err)
	}
	r := &Rules{ipt: ipt, restore: restore, log: slog.Default()}
	if sets&Masq != 0 {
		r.chains = append(r.chains, masqChain(network.Masked(), subnet.Masked(), randomFully && ipt.HasRandomFully()))
	}
	if sets&Forward != 0 {
		r.chains = append(r.chains, forwardChain(network.Masked()))
	}
	return r, nil
}

// masqChain builds FLANNEL-POSTRTG. Order matters: traffic staying inside
// the overlay returns before the MASQUERADE rules see it.
func masqChain(network, subnet netip.Prefix, randomFully bool) chain {
	n, s, mc := network.String(), subnet.String(), multicast(network)
	masq := []string{"-j", "MASQUERADE"}
	if randomFully {
		masq = append(masq, "--random-fully")
	}
	c := func(spec ...string) []string { return append(spec, "-m", "comment", "--comment", MasqComment) }
	return chain{
		table: "nat", parent: "POSTROUTING", name: MasqChain,
		jump: c("-j", MasqChain),
		rules: [][]string{
			// Marked by kube-proxy for its own masquerading.
			append(c("-m", "mark", "--mark", kubeProxyMark), "-j", "RETURN"),
			append(c("-s", s, "-d", n), "-j", "RETURN"),
			append(c("-s", n, "-d", s), "-j", "RETURN"),
			append(c("!", "-s", n, "-d", s), "-j", "RETURN"),
			append(c("-s", n, "!", "-d", mc), masq...),
			append(c("!", "-s", n, "-d", n), masq...),
		},
	}
}

func forwardChain(network netip.Prefix) chain {
	n := network.String()
	c := func(spec ...string) []string {
		return append(spec, "-m", "comment", "--comment", ForwardComment)
	}
	return chain{
		table: "filter", parent: "FORWARD", name: ForwardChain,
		jump: c("-j", ForwardChain),
		rules: [][]string{
			append(c("-s", n), "-j", "ACCEPT"),
			append(c("-d", n), "-j", "ACCEPT"),
		},
	}
}

// Ensure installs whatever is missing. A chain whose rules are not exactly
// the expected ones is rebuilt in one iptables-restore transaction, so no
// packet sees it half-built; the jump into it is appended last.
func (r *Rules) Ensure() error {
	if r.nft != nil {
		return r.nft.ensure(r.log)
	}
	for _, c := range r.chains {
		ok, err := r.chainComplete(c)
		if err != nil {
			return err
		}
		if !ok {
			r.log.Info("ip-masq: (re)building iptables chain", "table", c.table, "chain", c.name)
			if err := r.rebuild(c); err != nil {
				return err
			}
		}
		if err := r.ipt.AppendUnique(c.table, c.parent, c.jump...); err != nil {
			return fmt.Errorf("ip-masq: add jump %s %s -> %s: %w", c.table, c.parent, c.name, err)
		}
	}
	return nil
}

// chainComplete reports whether c exists and holds exactly its rules.
func (r *Rules) chainComplete(c chain) (bool, error) {
	exists, err := r.ipt.ChainExists(c.table, c.name)
	if err != nil {
		return false, fmt.Errorf("ip-masq: look up chain %s %s: %w", c.table, c.name, err)
	}
	if !exists {
		return false, nil
	}
	list, err := r.ipt.List(c.table, c.name)
	if err != nil {
		return false, fmt.Errorf("ip-masq: list chain %s %s: %w", c.table, c.name, err)
	}
	// List returns "-N CHAIN" followed by one "-A CHAIN ..." per rule.
	if len(list)-1 != len(c.rules) {
		return false, nil
	}
	for _, spec := range c.rules {
		ok, err := r.ipt.Exists(c.table, c.name, spec...)
		if err != nil {
			return false, fmt.Errorf("ip-masq: check rule in %s %s: %w", c.table, c.name, err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// rebuild replaces the content of c atomically. Declaring a chain in
// iptables-restore input creates it or flushes it; --noflush leaves every
// other chain of the table alone.
func (r *Rules) rebuild(c chain) error {
	var in bytes.Buffer
	fmt.Fprintf(&in, "*%s\n:%s - [0:0]\n", c.table, c.name)
	for _, spec := range c.rules {
		fmt.Fprintf(&in, "-A %s %s\n", c.name, quoteSpec(spec))
	}
	in.WriteString("COMMIT\n")
	cmd := exec.Command(r.restore, "--noflush", "--wait")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip-masq: %s of %s %s: %w: %s", r.restore, c.table, c.name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// quoteSpec joins a rule spec for iptables-restore, quoting the words with
// spaces (the comments).
func quoteSpec(spec []string) string {
	words := make([]string, len(spec))
	for i, w := range spec {
		if strings.ContainsAny(w, " \t") {
			w = `"` + w + `"`
		}
		words[i] = w
	}
	return strings.Join(words, " ")
}

// Resync calls Ensure every interval until ctx is done, so rules deleted by
// someone else come back. It returns ctx.Err(). Failures are logged and
// retried at the next tick, as upstream does.
func (r *Rules) Resync(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := r.Ensure(); err != nil {
				r.log.Error("ip-masq: resync iptables rules", "err", err)
			}
		}
	}
}

// DeleteStale removes masquerade rules left for a previous network or
// subnet (from the old subnet.env), both in FLANNEL-POSTRTG and in the
// pre-v0.18 layout directly in POSTROUTING. It does nothing when they equal
// the current ones. Call it before Ensure. An invalid prefix means unknown
// and is skipped.
func (r *Rules) DeleteStale(oldNetwork, oldSubnet netip.Prefix) error {
	if r.nft != nil {
		// The first Ensure flushes and refills the chains.
		return nil
	}
	if !oldNetwork.IsValid() || !oldSubnet.IsValid() {
		return nil
	}
	if proto, err := checkFamily(oldNetwork, oldSubnet); err != nil || proto != r.ipt.Proto() {
		return nil
	}
	oldNetwork, oldSubnet = oldNetwork.Masked(), oldSubnet.Masked()
	var stale [][]string
	var cur *chain
	for i := range r.chains {
		if r.chains[i].name == MasqChain {
			cur = &r.chains[i]
		}
	}
	for _, rf := range []bool{false, true} {
		old := masqChain(oldNetwork, oldSubnet, rf)
		for _, spec := range old.rules {
			if cur == nil || !containsSpec(cur.rules, spec) {
				stale = append(stale, append([]string{MasqChain}, spec...))
			}
		}
	}
	n, s := oldNetwork.String(), oldSubnet.String()
	for _, spec := range [][]string{
		{"-s", n, "-d", n, "-j", "RETURN"},
		{"-s", n, "!", "-d", multicast(oldNetwork), "-j", "MASQUERADE"},
		{"!", "-s", n, "-d", s, "-j", "RETURN"},
		{"!", "-s", n, "-d", n, "-j", "MASQUERADE"},
	} {
		stale = append(stale, append([]string{"POSTROUTING"}, spec...))
	}

	exists, err := r.ipt.ChainExists("nat", MasqChain)
	if err != nil {
		return fmt.Errorf("ip-masq: look up chain nat %s: %w", MasqChain, err)
	}
	var errs []error
	for _, st := range stale {
		if st[0] == MasqChain && !exists {
			continue
		}
		if err := r.ipt.DeleteIfExists("nat", st[0], st[1:]...); err != nil {
			errs = append(errs, fmt.Errorf("ip-masq: delete stale rule nat %s %s: %w", st[0], strings.Join(st[1:], " "), err))
		}
	}
	return errors.Join(errs...)
}

func containsSpec(list [][]string, spec []string) bool {
	for _, s := range list {
		if strings.Join(s, "\x00") == strings.Join(spec, "\x00") {
			return true
		}
	}
	return false
}
