package ipmasq

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

var (
	network = netip.MustParsePrefix("198.18.0.0/16")
	subnet1 = netip.MustParsePrefix("198.18.74.0/24")
	subnet2 = netip.MustParsePrefix("198.18.75.0/24")
)

// wantMasq is FLANNEL-POSTRTG for network and subnet1 as iptables -S prints it.
func wantMasq(rf string) []string {
	return []string{
		`-N FLANNEL-POSTRTG`,
		`-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 198.18.74.0/24 -d 198.18.0.0/16 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 198.18.0.0/16 -d 198.18.74.0/24 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.74.0/24 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 198.18.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE` + rf,
		`-A FLANNEL-POSTRTG ! -s 198.18.0.0/16 -d 198.18.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE` + rf,
	}
}

func TestMasqChainSpecs(t *testing.T) {
	c := masqChain(network, subnet1, true)
	if c.table != "nat" || c.parent != "POSTROUTING" || c.name != "FLANNEL-POSTRTG" {
		t.Errorf("chain %s/%s/%s", c.table, c.parent, c.name)
	}
	want := wantMasq(" --random-fully")[1:]
	for i, spec := range c.rules {
		if got := "-A FLANNEL-POSTRTG " + quoteSpec(spec); got != want[i] {
			t.Errorf("rule %d:\n got %s\nwant %s", i+1, got, want[i])
		}
	}
	if got := quoteSpec(c.jump); got != `-j FLANNEL-POSTRTG -m comment --comment "flanneld masq"` {
		t.Errorf("jump %s", got)
	}
	f := forwardChain(network)
	if f.table != "filter" || f.parent != "FORWARD" || quoteSpec(f.rules[0]) != `-s 198.18.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT` ||
		quoteSpec(f.rules[1]) != `-d 198.18.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT` {
		t.Errorf("forward chain %+v", f)
	}
}

// bed is two hosts, each with a container: c1 198.18.74.2 on h1 and c2
// 198.18.75.2 on h2, and routes between the two subnets over the underlay,
// the way flanneld's routes would carry them.
type bed struct {
	*testbed.Bed
	c1, c2 *testbed.Container
}

func newBed(t *testing.T) bed {
	testbed.RequireTool(t, "iptables")
	testbed.RequireTool(t, "iptables-restore")
	b := testbed.NewT(t, testbed.Options{Hosts: 2})
	ctx := context.Background()
	h1, h2 := b.Hosts[0], b.Hosts[1]
	c1, err := h1.AddContainer(ctx, "c1", netip.MustParsePrefix("198.18.74.1/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h2.AddContainer(ctx, "c2", netip.MustParsePrefix("198.18.75.1/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h1.Run(ctx, "ip", "route", "add", subnet2.String(), "via", h2.Addr.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := h2.Run(ctx, "ip", "route", "add", subnet1.String(), "via", h1.Addr.String()); err != nil {
		t.Fatal(err)
	}
	return bed{b, c1, c2}
}

// list runs iptables -S for a chain inside host h.
func list(t *testing.T, h *testbed.Host, table, chain string) []string {
	t.Helper()
	var out []string
	err := h.Do(func() error {
		ipt, err := iptables.New()
		if err != nil {
			return err
		}
		out, err = ipt.List(table, chain)
		return err
	})
	if err != nil {
		t.Fatalf("list %s %s in %s: %v", table, chain, h.Name, err)
	}
	return out
}

func ensure(t *testing.T, h *testbed.Host, sets Set) *Rules {
	t.Helper()
	var r *Rules
	err := h.Do(func() (err error) {
		if r, err = New(network, subnet1, true, sets); err != nil {
			return err
		}
		return r.Ensure()
	})
	if err != nil {
		t.Fatalf("Ensure in %s: %v", h.Name, err)
	}
	return r
}

// source sends a UDP datagram from one container to dst and returns the
// source address the receiving namespace sees.
func source(t *testing.T, from *testbed.Container, recvNS interface{ Do(func() error) error }, dst netip.Addr) netip.Addr {
	t.Helper()
	var conn *net.UDPConn
	err := recvNS.Do(func() (err error) {
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 0)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	err = from.Do(func() error {
		s, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer s.Close()
		_, err = s.Write([]byte("masq?"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_, src, err := conn.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("receive datagram from %s at %s: %v", from.Addr, to, err)
	}
	return src.Addr()
}

func TestEnsureLayoutAndTraffic(t *testing.T) {
	b := newBed(t)
	h1, h2 := b.Hosts[0], b.Hosts[1]

	// Without rules nothing is rewritten: the check below can fail.
	if got := source(t, b.c1, h2, h2.Addr); got != b.c1.Addr {
		t.Fatalf("before Ensure: source %s, want %s", got, b.c1.Addr)
	}

	r := ensure(t, h1, Masq|Forward)
	rf := ""
	if r.ipt.HasRandomFully() {
		rf = " --random-fully"
	}
	if got, want := list(t, h1, "nat", MasqChain), wantMasq(rf); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("FLANNEL-POSTRTG:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if got := list(t, h1, "nat", "POSTROUTING"); !contains(got, `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`) {
		t.Errorf("POSTROUTING has no jump: %q", got)
	}
	wantFwd := []string{
		`-N FLANNEL-FWD`,
		`-A FLANNEL-FWD -s 198.18.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT`,
		`-A FLANNEL-FWD -d 198.18.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT`,
	}
	if got := list(t, h1, "filter", ForwardChain); strings.Join(got, "\n") != strings.Join(wantFwd, "\n") {
		t.Errorf("FLANNEL-FWD: %q", got)
	}
	if got := list(t, h1, "filter", "FORWARD"); !contains(got, `-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD`) {
		t.Errorf("FORWARD has no jump: %q", got)
	}

	// Leaving the overlay: masqueraded to h1's underlay address. The
	// conntrack entry of the first datagram is gone with a new source port.
	if got := source(t, b.c1, h2, h2.Addr); got != h1.Addr {
		t.Errorf("container to underlay host: source %s, want masqueraded to %s", got, h1.Addr)
	}
	// Overlay to overlay: unchanged.
	if got := source(t, b.c1, b.c2, b.c2.Addr); got != b.c1.Addr {
		t.Errorf("container to remote container: source %s, want %s", got, b.c1.Addr)
	}

	// A second Ensure changes nothing.
	before := list(t, h1, "nat", "POSTROUTING")
	ensure(t, h1, Masq|Forward)
	if after := list(t, h1, "nat", "POSTROUTING"); len(after) != len(before) {
		t.Errorf("second Ensure: POSTROUTING %q, was %q", after, before)
	}
}

func TestResyncRestoresDeletedRule(t *testing.T) {
	b := newBed(t)
	h := b.Hosts[0]
	r := ensure(t, h, Masq)
	want := list(t, h, "nat", MasqChain)

	// Someone deletes rule 3 and flushes the jump.
	err := h.Do(func() error {
		if err := r.ipt.DeleteById("nat", MasqChain, 3); err != nil {
			return err
		}
		return r.ipt.ClearChain("nat", "POSTROUTING")
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := list(t, h, "nat", MasqChain); len(got) == len(want) {
		t.Fatalf("rule was not deleted: %q", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Do(func() error { return r.Resync(ctx, 10*time.Millisecond) }) }()
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for time.Now().Before(deadline) {
		got = list(t, h, "nat", MasqChain)
		if strings.Join(got, "\n") == strings.Join(want, "\n") &&
			contains(list(t, h, "nat", "POSTROUTING"), `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`) {
			break
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Resync returned %v, want context.Canceled", err)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after Resync:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDeleteStale(t *testing.T) {
	b := newBed(t)
	h := b.Hosts[0]
	oldNet, oldSub := netip.MustParsePrefix("198.19.0.0/16"), netip.MustParsePrefix("198.19.5.0/24")
	legacy := [][]string{
		{"-s", "198.19.0.0/16", "-d", "198.19.0.0/16", "-j", "RETURN"},
		{"-s", "198.19.0.0/16", "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"},
		{"!", "-s", "198.19.0.0/16", "-d", "198.19.5.0/24", "-j", "RETURN"},
		{"!", "-s", "198.19.0.0/16", "-d", "198.19.0.0/16", "-j", "MASQUERADE"},
	}
	err := h.Do(func() error {
		old, err := New(oldNet, oldSub, false, Masq)
		if err != nil {
			return err
		}
		if err := old.Ensure(); err != nil {
			return err
		}
		for _, spec := range legacy {
			if err := old.ipt.Append("nat", "POSTROUTING", spec...); err != nil {
				return err
			}
		}
		cur, err := New(network, subnet1, false, Masq)
		if err != nil {
			return err
		}
		if err := cur.DeleteStale(oldNet, oldSub); err != nil {
			return fmt.Errorf("DeleteStale: %w", err)
		}
		return cur.Ensure()
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := list(t, h, "nat", MasqChain); strings.Join(got, "\n") != strings.Join(wantMasq(""), "\n") {
		t.Errorf("FLANNEL-POSTRTG:\n%s", strings.Join(got, "\n"))
	}
	post := list(t, h, "nat", "POSTROUTING")
	if strings.Contains(strings.Join(post, "\n"), "198.19.") {
		t.Errorf("stale legacy rules left in POSTROUTING: %q", post)
	}
	if n := len(post); n != 2 { // -P POSTROUTING ACCEPT and the jump
		t.Errorf("POSTROUTING: %q", post)
	}
}

func TestNewRejectsMixedFamilies(t *testing.T) {
	if _, err := New(network6, subnet1, false, Masq); err == nil {
		t.Error("New accepted an IPv6 network with an IPv4 subnet")
	}
	if _, err := NewNFTables(network, subnet6, false, Masq); err == nil {
		t.Error("NewNFTables accepted an IPv4 network with an IPv6 subnet")
	}
}

var (
	network6 = netip.MustParsePrefix("2001:db8:100::/48")
	subnet6  = netip.MustParsePrefix("2001:db8:100:1a::/64")
)

// wantMasq6 is FLANNEL-POSTRTG for network6 and subnet6 as ip6tables -S
// prints it: upstream's IPv6 rules, IPv4's with ff00::/8 for multicast.
func wantMasq6(rf string) []string {
	return []string{
		`-N FLANNEL-POSTRTG`,
		`-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 2001:db8:100:1a::/64 -d 2001:db8:100::/48 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 2001:db8:100::/48 -d 2001:db8:100:1a::/64 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG ! -s 2001:db8:100::/48 -d 2001:db8:100:1a::/64 -m comment --comment "flanneld masq" -j RETURN`,
		`-A FLANNEL-POSTRTG -s 2001:db8:100::/48 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE` + rf,
		`-A FLANNEL-POSTRTG ! -s 2001:db8:100::/48 -d 2001:db8:100::/48 -m comment --comment "flanneld masq" -j MASQUERADE` + rf,
	}
}

// TestIPv6Rules installs the IPv6 chains with ip6tables in a fresh
// namespace, next to the IPv4 ones, compares them with upstream's, removes
// stale rules of a previous IPv6 subnet and cleans both families up.
func TestIPv6Rules(t *testing.T) {
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "ip6tables")
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	ctx := t.Context()
	save := func(bin string) string {
		t.Helper()
		out, err := h.Run(ctx, bin+"-save")
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	var r6 *Rules
	err := h.Do(func() (err error) {
		if _, err := New(network, subnet1, true, Masq|Forward); err != nil {
			return err
		}
		if r6, err = New(network6, subnet6, true, Masq|Forward); err != nil {
			return err
		}
		return r6.Ensure()
	})
	if err != nil {
		t.Fatal(err)
	}
	rf := ""
	if r6.ipt.HasRandomFully() {
		rf = " --random-fully"
	}
	var got, fwd []string
	if err := h.Do(func() error {
		ipt, err := iptables.New(iptables.IPFamily(iptables.ProtocolIPv6))
		if err != nil {
			return err
		}
		if got, err = ipt.List("nat", MasqChain); err != nil {
			return err
		}
		fwd, err = ipt.List("filter", ForwardChain)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if want := wantMasq6(rf); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("ip6tables FLANNEL-POSTRTG:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if want := `-A FLANNEL-FWD -d 2001:db8:100::/48 -m comment --comment "flanneld forward" -j ACCEPT`; !contains(fwd, want) {
		t.Errorf("ip6tables FLANNEL-FWD %q lacks %s", fwd, want)
	}
	if strings.Contains(save("iptables"), "FLANNEL") {
		t.Error("the IPv6 rules went into iptables")
	}

	// A moved IPv6 subnet: the old subnet's rules go.
	moved := netip.MustParsePrefix("2001:db8:100:2b::/64")
	if err := h.Do(func() error {
		r, err := New(network6, moved, true, Masq)
		if err != nil {
			return err
		}
		if err := r.DeleteStale(network6, subnet6); err != nil {
			return err
		}
		return r.Ensure()
	}); err != nil {
		t.Fatal(err)
	}
	if s := save("ip6tables"); strings.Contains(s, subnet6.String()) || !strings.Contains(s, moved.String()) {
		t.Errorf("after the move:\n%s", s)
	}
	if err := h.Do(CleanUpIPTables); err != nil {
		t.Fatal(err)
	}
	if s := save("ip6tables"); strings.Contains(s, "FLANNEL") {
		t.Errorf("after CleanUpIPTables:\n%s", s)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}
