package kube

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/lease"
)

func TestPodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		podCIDR string
		list    []string
		v4, v6  string // "" for invalid
		err     string
	}{
		{"198.18.1.0/24", nil, "198.18.1.0/24", "", ""},
		{"198.18.1.0/24", []string{"198.18.1.0/24"}, "198.18.1.0/24", "", ""},
		{"198.18.1.9/24", nil, "198.18.1.0/24", "", ""}, // host bits masked, as net.ParseCIDR
		{"198.18.1.0/24", []string{"198.18.1.0/24", "2001:db8:1::/64"}, "198.18.1.0/24", "2001:db8:1::/64", ""},
		{"2001:db8:1::/64", []string{"2001:db8:1::/64", "198.18.1.0/24"}, "198.18.1.0/24", "2001:db8:1::/64", ""},
		{"2001:db8:1::/64", nil, "", "2001:db8:1::/64", ""},
		{"::ffff:198.18.1.0/120", nil, "198.18.1.0/24", "", ""},
		{"", nil, "", "", "no podCIDR assigned"},
		{"bogus", nil, "", "", `podCIDR "bogus" is not a CIDR`},
		{"198.18.1.0/24", []string{"198.18.1.0/24", "198.18.2.0/24", "2001:db8::/64"}, "", "", "pod cidrs should be IPv4/IPv6 only or dualstack"},
		{"", []string{"fe80::%eth0/64"}, "", "", "is not a CIDR"},
	} {
		v4, v6, err := podCIDRs(tc.podCIDR, tc.list)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q %q: error %v, want %q", tc.podCIDR, tc.list, err, tc.err)
			}
			continue
		}
		if err != nil || prefixString(v4) != tc.v4 || prefixString(v6) != tc.v6 {
			t.Errorf("%q %q: %v %v %v, want %s %s", tc.podCIDR, tc.list, v4, v6, err, tc.v4, tc.v6)
		}
	}
	if _, _, err := podCIDRs("", nil); !errors.Is(err, errNoPodCIDR) {
		t.Errorf("no podCIDR: %v", err)
	}
}

func prefixString(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func mustConfig(t testing.TB, s string) *lease.Config {
	t.Helper()
	cfg, err := lease.ParseConfig([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestOwnSubnets(t *testing.T) {
	v4 := mustConfig(t, `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`)
	dual := mustConfig(t, `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`)
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		cfg    *lease.Config
		v4, v6 netip.Prefix
		want   lease.Lease
		err    string
	}{
		{v4, p("198.18.1.0/24"), netip.Prefix{}, lease.Lease{Subnet: p("198.18.1.0/24")}, ""},
		{v4, p("198.18.1.0/24"), p("2001:db8::/64"), lease.Lease{Subnet: p("198.18.1.0/24")}, ""},
		{dual, p("198.18.1.0/24"), p("2001:db8:0:1::/64"), lease.Lease{Subnet: p("198.18.1.0/24"), IPv6Subnet: p("2001:db8:0:1::/64")}, ""},
		{v4, p("198.51.100.0/24"), netip.Prefix{}, lease.Lease{},
			`subnet "198.18.0.0/16" specified in the flannel net config doesn't contain "198.51.100.0/24" PodCIDR of the "n1" node`},
		{v4, p("198.18.0.0/15"), netip.Prefix{}, lease.Lease{}, "doesn't contain"},
		{v4, netip.Prefix{}, p("2001:db8::/64"), lease.Lease{}, `node "n1" has no IPv4 podCIDR but net-conf.json enables IPv4`},
		{dual, p("198.18.1.0/24"), netip.Prefix{}, lease.Lease{}, `node "n1" has no IPv6 podCIDR but net-conf.json enables IPv6`},
		{dual, p("198.18.1.0/24"), p("2001:db9::/64"), lease.Lease{}, `doesn't contain "2001:db9::/64" IPv6 PodCIDR of the "n1" node`},
	} {
		l, err := ownSubnets("n1", tc.cfg, tc.v4, tc.v6)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v %v: error %v, want %q", tc.v4, tc.v6, err, tc.err)
			}
			continue
		}
		if err != nil || l != tc.want {
			t.Errorf("%v %v: %+v %v, want %+v", tc.v4, tc.v6, l, err, tc.want)
		}
	}
}

func TestPeerLease(t *testing.T) {
	const p = "flannel.alpha.coreos.com/"
	a, _ := newAnnotations(DefaultAnnotationPrefix)
	v4 := mustConfig(t, `{"Network":"198.18.0.0/16"}`)
	dual := mustConfig(t, `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`)
	up := map[string]string{p + "backend-data": "null", p + "backend-type": "", p + "kube-subnet-manager": "true", p + "public-ip": "192.0.2.3"}
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	for _, tc := range []struct {
		name    string
		cfg     *lease.Config
		have    map[string]string
		podCIDR string
		list    []string
		want    lease.Lease
		managed bool
		err     string
	}{
		{"nil annotations", v4, nil, "198.18.3.0/24", nil, lease.Lease{}, false, ""},
		{"not managed", v4, map[string]string{p + "public-ip": "192.0.2.3"}, "198.18.3.0/24", nil, lease.Lease{}, false, ""},
		{"upstream udp node", v4, up, "198.18.3.0/24", nil, lease.Lease{Subnet: pfx("198.18.3.0/24"), PublicIP: addr("192.0.2.3")}, true, ""},
		{"mapped public-ip", v4, with(up, p+"public-ip", "::ffff:192.0.2.3"), "198.18.3.0/24", nil, lease.Lease{Subnet: pfx("198.18.3.0/24"), PublicIP: addr("192.0.2.3")}, true, ""},
		{"no podCIDR", v4, up, "", nil, lease.Lease{}, true, "no podCIDR assigned"},
		{"no public-ip", v4, with(up, p+"public-ip", ""), "198.18.3.0/24", nil, lease.Lease{}, true, `annotation flannel.alpha.coreos.com/public-ip: "" is not an IP address`},
		{"public-ip 0.0.0.0", v4, with(up, p+"public-ip", "0.0.0.0"), "198.18.3.0/24", nil, lease.Lease{}, true, "not a usable IPv4 address"},
		{"IPv6 public-ip", v4, with(up, p+"public-ip", "2001:db8::3"), "198.18.3.0/24", nil, lease.Lease{}, true, "not a usable IPv4 address"},
		{"dual-stack peer", dual, with(up, p+"public-ipv6", "2001:db8:ff::3"), "198.18.3.0/24", []string{"198.18.3.0/24", "2001:db8:0:3::/64"},
			lease.Lease{Subnet: pfx("198.18.3.0/24"), IPv6Subnet: pfx("2001:db8:0:3::/64"), PublicIP: addr("192.0.2.3"), PublicIPv6: addr("2001:db8:ff::3")}, true, ""},
		{"IPv4-only peer in a dual-stack network", dual, up, "198.18.3.0/24", nil,
			lease.Lease{Subnet: pfx("198.18.3.0/24"), PublicIP: addr("192.0.2.3")}, true, ""},
		{"bad public-ipv6", dual, with(up, p+"public-ipv6", "192.0.2.3"), "198.18.3.0/24", nil, lease.Lease{}, true, "public-ipv6"},
		{"IPv6 podCIDR only in an IPv4 network", v4, up, "2001:db8:0:3::/64", nil, lease.Lease{}, true, "no podCIDR of a family the network config enables"},
	} {
		l, managed, err := a.peerLease(tc.cfg, tc.have, tc.podCIDR, tc.list)
		if managed != tc.managed {
			t.Errorf("%s: managed %v, want %v", tc.name, managed, tc.managed)
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || l != tc.want {
			t.Errorf("%s: %+v %v, want %+v", tc.name, l, err, tc.want)
		}
	}
}

func with(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// FuzzPeerLease feeds annotation values and podCIDRs as the API server
// could hold them: no panic, and a lease that is returned holds masked
// subnets of the enabled families and an address to reach it at.
func FuzzPeerLease(f *testing.F) {
	f.Add("true", "192.0.2.3", "", "198.18.3.0/24", "", "", false)
	f.Add("true", "192.0.2.3", "2001:db8::3", "198.18.3.0/24", "198.18.3.0/24", "2001:db8:0:3::/64", true)
	f.Add("true", "::ffff:192.0.2.3", "x", "::ffff:198.18.3.0/120", "", "", false)
	f.Add("false", "", "", "", "", "", true)
	f.Fuzz(func(t *testing.T, managed, ip, ip6, podCIDR, c1, c2 string, dual bool) {
		const p = "flannel.alpha.coreos.com/"
		a, _ := newAnnotations(DefaultAnnotationPrefix)
		cfg := mustConfig(t, `{"Network":"198.18.0.0/16"}`)
		if dual {
			cfg = mustConfig(t, `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`)
		}
		var list []string
		for _, c := range []string{c1, c2} {
			if c != "" {
				list = append(list, c)
			}
		}
		have := map[string]string{p + "kube-subnet-manager": managed, p + "public-ip": ip, p + "public-ipv6": ip6}
		l, ok, err := a.peerLease(cfg, have, podCIDR, list)
		if !ok || err != nil {
			if (l != lease.Lease{}) {
				t.Fatalf("not a peer (%v, %v) but lease %+v", ok, err, l)
			}
			return
		}
		if !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() || !l.PublicIP.IsValid() && !l.PublicIPv6.IsValid() {
			t.Fatalf("lease %+v without a subnet or an address", l)
		}
		if l.Subnet.IsValid() && (!l.Subnet.Addr().Is4() || l.Subnet.Masked() != l.Subnet) {
			t.Fatalf("IPv4 subnet %v", l.Subnet)
		}
		if l.IPv6Subnet.IsValid() && (!cfg.EnableIPv6 || l.IPv6Subnet.Addr().Is4() || l.IPv6Subnet.Masked() != l.IPv6Subnet) {
			t.Fatalf("IPv6 subnet %v", l.IPv6Subnet)
		}
		if l.PublicIP.IsValid() && (!l.PublicIP.Is4() || l.PublicIP.IsUnspecified()) {
			t.Fatalf("public IP %v", l.PublicIP)
		}
		if l.PublicIPv6.IsValid() && (!l.PublicIPv6.Is6() || l.PublicIPv6.Is4In6() || l.PublicIPv6.IsUnspecified() || l.PublicIPv6.Zone() != "") {
			t.Fatalf("public IPv6 %v", l.PublicIPv6)
		}
	})
}
