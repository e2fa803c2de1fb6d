package ipmasq

import (
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// wantNFTRuleset is upstream v0.28.9's EnableNFTables ruleset for network
// and subnet1 with --ip-masq and forward rules, as `nft list ruleset`
// prints it (upstream installs postrtg first, then forward).
func wantNFTRuleset(masq string) string {
	return `table ip flannel-ipv4 {
	comment "rules for flannel-ipv4"
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark 0x00004000 return
		ip saddr 198.18.74.0/24 ip daddr 198.18.0.0/16 return
		ip saddr 198.18.0.0/16 ip daddr 198.18.74.0/24 return
		ip saddr != 198.18.74.0/24 ip daddr 198.18.0.0/16 return
		ip saddr 198.18.0.0/16 ip daddr != 224.0.0.0/4 ` + masq + `
		ip saddr != 198.18.0.0/16 ip daddr 198.18.0.0/16 ` + masq + `
	}

	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 198.18.0.0/16 accept
		ip daddr 198.18.0.0/16 accept
	}
}
table ip6 flannel-ipv6 {
	comment "rules for flannel-ipv6"
}
`
}

// TestNFTables installs the nftables variant in a fresh namespace and
// compares `nft list ruleset` with upstream's, removes a rule and sees the
// resync restore it, moves to another subnet, and cleans up.
func TestNFTables(t *testing.T) {
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "nft")
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	ctx := t.Context()
	ruleset := func() string {
		t.Helper()
		out, err := h.Run(ctx, "nft", "list", "ruleset")
		if err != nil {
			t.Fatalf("nft list ruleset: %v\n%s", err, out)
		}
		return out
	}
	in := func(fn func() error) {
		t.Helper()
		if err := h.Do(fn); err != nil {
			t.Fatal(err)
		}
	}
	var r *Rules
	in(func() (err error) {
		if r, err = NewNFTables(network, subnet1, true, Masq|Forward); err != nil {
			return err
		}
		return r.Ensure()
	})
	want := wantNFTRuleset("masquerade fully-random")
	if got := ruleset(); got != want {
		t.Fatalf("nft list ruleset:\n%s\nwant upstream's:\n%s", got, want)
	}

	// Someone deletes a rule: the next Ensure (the resync) restores it.
	out, err := h.Run(ctx, "nft", "-a", "list", "chain", "ip", NFTTable4, NFTMasqChain)
	if err != nil {
		t.Fatal(err)
	}
	handle := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "224.0.0.0/4") {
			handle = line[strings.LastIndex(line, " ")+1:]
		}
	}
	if out, err := h.Run(ctx, "nft", "delete", "rule", "ip", NFTTable4, NFTMasqChain, "handle", handle); err != nil {
		t.Fatalf("delete rule %q: %v\n%s", handle, err, out)
	}
	if strings.Contains(ruleset(), "224.0.0.0/4") {
		t.Fatal("the rule was not deleted: the test proves nothing")
	}
	in(r.Ensure)
	if got := ruleset(); got != want {
		t.Errorf("after resync:\n%s\nwant:\n%s", got, want)
	}
	if _, err := h.Run(ctx, "nft", "delete", "table", "ip", NFTTable4); err != nil {
		t.Fatal(err)
	}
	in(r.Ensure)
	// Recreated, the table is listed after flannel-ipv6.
	want4 := want[:strings.Index(want, "table ip6")]
	if got := ruleset(); !strings.HasSuffix(got, want4) || !strings.HasPrefix(got, want[len(want4):]) {
		t.Errorf("after the table was deleted and resynced:\n%s\nwant:\n%s", got, want)
	}

	// A new subnet (lease moved): the chains hold only the new subnet.
	in(func() (err error) {
		if r, err = NewNFTables(network, subnet2, false, Masq|Forward); err != nil {
			return err
		}
		return r.Ensure()
	})
	got := ruleset()
	if strings.Contains(got, subnet1.String()) || !strings.Contains(got, "ip saddr "+subnet2.String()+" ip daddr 198.18.0.0/16 return") || strings.Contains(got, "fully-random") {
		t.Errorf("after moving to %s without fully-random:\n%s", subnet2, got)
	}

	// A node back on iptables removes the tables; a node moving to
	// nftables removes the iptables chains and their jumps.
	in(CleanUpNFTables)
	if got := strings.TrimSpace(ruleset()); got != "" {
		t.Errorf("after CleanUpNFTables: %q, want an empty ruleset", got)
	}
	testbed.RequireTool(t, "iptables")
	in(func() error {
		r, err := New(network, subnet1, true, Masq|Forward)
		if err != nil {
			return err
		}
		return r.Ensure()
	})
	saved := func() string {
		out, err := h.Run(ctx, "iptables-save")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if !strings.Contains(saved(), "FLANNEL-POSTRTG") {
		t.Fatal("iptables rules not installed: the clean-up check proves nothing")
	}
	in(CleanUpIPTables)
	if got := saved(); strings.Contains(got, "FLANNEL") {
		t.Errorf("after CleanUpIPTables:\n%s", got)
	}
}

// TestNFTablesIPv6 installs the IPv4 and the IPv6 rules with nftables: the
// IPv6 chains go into table ip6 flannel-ipv6, upstream's rules with ip6
// matches and ff00::/8, and survive the IPv4 rules' resync.
func TestNFTablesIPv6(t *testing.T) {
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "nft")
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	var r4 *Rules
	err := h.Do(func() (err error) {
		if r4, err = NewNFTables(network, subnet1, false, Masq|Forward); err != nil {
			return err
		}
		r6, err := NewNFTables(network6, subnet6, false, Masq|Forward)
		if err != nil {
			return err
		}
		if err := r4.Ensure(); err != nil {
			return err
		}
		if err := r6.Ensure(); err != nil {
			return err
		}
		return r4.Ensure()
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := h.Run(t.Context(), "nft", "list", "table", "ip6", NFTTable6)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ip6 saddr 2001:db8:100:1a::/64 ip6 daddr 2001:db8:100::/48 return",
		"ip6 saddr != 2001:db8:100:1a::/64 ip6 daddr 2001:db8:100::/48 return",
		"ip6 saddr 2001:db8:100::/48 ip6 daddr != ff00::/8 masquerade",
		"ip6 saddr != 2001:db8:100::/48 ip6 daddr 2001:db8:100::/48 masquerade",
		"ip6 daddr 2001:db8:100::/48 accept",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table ip6 %s lacks %q:\n%s", NFTTable6, want, out)
		}
	}
}
