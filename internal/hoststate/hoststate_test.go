package hoststate

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"testing"
)

// journal records what the fakes were asked to do, in order.
type journal []string

func (j *journal) add(s string) { *j = append(*j, s) }

type fakeAddrs struct {
	name string
	j    *journal
}

func (f fakeAddrs) SetAddr(a netip.Addr) error    { f.j.add(f.name + " +" + a.String()); return nil }
func (f fakeAddrs) RemoveAddr(a netip.Addr) error { f.j.add(f.name + " -" + a.String()); return nil }

type fakeRoutes struct{ j *journal }

func (f fakeRoutes) AddBlackhole(p netip.Prefix) error {
	f.j.add("blackhole +" + p.String())
	return nil
}
func (f fakeRoutes) DelBlackhole(p netip.Prefix) error {
	f.j.add("blackhole -" + p.String())
	return nil
}

type fakeRules struct {
	subnet netip.Prefix
	j      *journal
	fail   bool
}

func (f fakeRules) Ensure() error {
	if f.fail {
		return errors.New("no iptables")
	}
	f.j.add("rules " + f.subnet.String())
	return nil
}

func (f fakeRules) DeleteStale(n, s netip.Prefix) error {
	if s.IsValid() && s != f.subnet {
		f.j.add("stale -" + s.String())
	}
	return nil
}

var (
	net4  = netip.MustParsePrefix("198.18.0.0/16")
	net6  = netip.MustParsePrefix("2001:db8:100::/48")
	sub4  = netip.MustParsePrefix("198.18.5.0/24")
	sub6  = netip.MustParsePrefix("2001:db8:100:5::/64")
	sub4b = netip.MustParsePrefix("198.18.9.0/24")
	sub6b = netip.MustParsePrefix("2001:db8:100:9::/64")
)

func newTest(j *journal, blackhole, failRules, required bool) *State {
	cfg := Config{
		Network: net4, IPv6Network: net6,
		TUN:           fakeAddrs{"tun", j},
		RulesRequired: required,
		Rules: func(n, s netip.Prefix) (Rules, error) {
			return fakeRules{subnet: s, j: j, fail: failRules}, nil
		},
		Logger: slog.New(slog.DiscardHandler),
	}
	if blackhole {
		cfg.Blackhole = fakeRoutes{j}
	}
	return New(cfg)
}

func TestApplyAndMove(t *testing.T) {
	var j journal
	s := newTest(&j, true, false, true)
	prev := Previous{Network: net4, Subnet: netip.MustParsePrefix("198.18.1.0/24")}
	if err := s.Apply(Subnets{sub4, sub6}, prev); err != nil {
		t.Fatal(err)
	}
	want := journal{"tun +198.18.5.0", "tun +2001:db8:100:5::", "blackhole +198.18.5.0/24", "blackhole +2001:db8:100:5::/64",
		"stale -198.18.1.0/24", "rules 198.18.5.0/24", "rules 2001:db8:100:5::/64"}
	if !slices.Equal(j, want) {
		t.Fatalf("Apply did\n%q\nwant\n%q", j, want)
	}
	j = nil
	if err := s.Follow(fakeAddrs{"handoff", &j}); err != nil || !slices.Equal(j, journal{"handoff +198.18.5.0"}) {
		t.Fatalf("Follow did %q (%v), want the handoff device on the current address", j, err)
	}
	// Both families move: every address, blackhole and rule follows, the
	// new address before the old one goes.
	j = nil
	if err := s.Move(Subnets{sub4b, sub6b}); err != nil {
		t.Fatal(err)
	}
	want = journal{"tun +198.18.9.0", "tun -198.18.5.0", "handoff +198.18.9.0", "handoff -198.18.5.0",
		"stale -198.18.5.0/24", "rules 198.18.9.0/24",
		"tun +2001:db8:100:9::", "tun -2001:db8:100:5::", "stale -2001:db8:100:5::/64", "rules 2001:db8:100:9::/64",
		"blackhole -198.18.5.0/24", "blackhole +198.18.9.0/24", "blackhole -2001:db8:100:5::/64", "blackhole +2001:db8:100:9::/64"}
	if !slices.Equal(j, want) {
		t.Fatalf("Move did\n%q\nwant\n%q", j, want)
	}
	// Only IPv4 moves: IPv6 is left alone but for its blackhole route,
	// which is restored.
	j = nil
	if err := s.Move(Subnets{sub4, sub6b}); err != nil {
		t.Fatal(err)
	}
	for _, e := range j {
		if e == "tun +2001:db8:100:9::" || e == "rules 2001:db8:100:9::/64" {
			t.Errorf("Move of IPv4 alone touched IPv6: %q", j)
		}
	}
	j = nil
	if err := s.Resync(); err != nil || !slices.Contains(j, "rules 198.18.5.0/24") || !slices.Contains(j, "blackhole +198.18.5.0/24") {
		t.Errorf("Resync did %q (%v), want the current rules and blackhole routes", j, err)
	}
}

// TestRulesFailure: forward rules alone are a convenience (a warning,
// no rules to resync); with --ip-masq the failure is fatal.
func TestRulesFailure(t *testing.T) {
	var j journal
	s := newTest(&j, false, true, false)
	if err := s.Apply(Subnets{V4: sub4}, Previous{}); err != nil {
		t.Fatalf("forward rules only: %v", err)
	}
	if s.Active() {
		t.Error("failed rules are resynced")
	}
	s = newTest(&j, false, true, true)
	if err := s.Apply(Subnets{V4: sub4}, Previous{}); err == nil {
		t.Fatal("--ip-masq: a failed rule set is not an error")
	}
}

// TestFamilies: an IPv4-only network touches no IPv6 state, and its
// followers move with the TUN's IPv4 address only.
func TestFamilies(t *testing.T) {
	var j journal
	s := New(Config{Network: net4, TUN: fakeAddrs{"tun", &j}, Blackhole: fakeRoutes{&j}, Logger: slog.New(slog.DiscardHandler)})
	if err := s.Apply(Subnets{V4: sub4}, Previous{}); err != nil {
		t.Fatal(err)
	}
	if want := (journal{"tun +198.18.5.0", "blackhole +198.18.5.0/24"}); !slices.Equal(j, want) {
		t.Fatalf("IPv4-only Apply did %q, want %q", j, want)
	}
	if !s.Active() {
		t.Error("blackhole routes are not resynced")
	}
}
