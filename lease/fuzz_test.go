package lease

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
)

func FuzzParseLeaseAttrs(f *testing.F) {
	for _, s := range []string{`{"PublicIP":"192.0.2.1","PublicIPv6":null}`, `{"publicip":"192.0.2.1"}`, `{"PublicIP":"2001:db8::1"}`, `{}`, `null`,
		`{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1"}`, `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseLeaseAttrs(b)
		if err != nil {
			return
		}
		if a.PublicIP.IsValid() && (!a.PublicIP.Is4() || a.PublicIP.IsUnspecified()) {
			t.Fatalf("ParseLeaseAttrs(%q): PublicIP %v", b, a.PublicIP)
		}
		if a.PublicIPv6.IsValid() && (!a.PublicIPv6.Is6() || a.PublicIPv6.Is4In6() || a.PublicIPv6.IsUnspecified() || a.PublicIPv6.Zone() != "") {
			t.Fatalf("ParseLeaseAttrs(%q): PublicIPv6 %v", b, a.PublicIPv6)
		}
		if !a.PublicIP.IsValid() && !a.PublicIPv6.IsValid() {
			t.Fatalf("ParseLeaseAttrs(%q) = %+v: no address", b, a)
		}
		if back, err := ParseLeaseAttrs(a.Bytes()); err != nil || back != a {
			t.Fatalf("round trip of %+v: %+v, %v", a, back, err)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`,
		`{"network":"198.18.0.0/24"}`,
		`{"Network":"198.18.0.0/16","SubnetMin":"198.18.10.0","SubnetMax":"198.18.20.0"}`,
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`,
		`{"Network":"198.18.0.0/29"}`,
		`{"Network":"198.18.0.0/16","Backend":"udp"}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:100::/48"}`,
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/120","IPv6SubnetLen":124,"IPv6SubnetMax":"2001:db8::f0"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseConfig(b)
		if err != nil {
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("ParseConfig(%q) = %+v, which does not re-validate: %v", b, cfg, err)
		}
		if cfg.EnableIPv4 {
			if !cfg.Network.Contains(cfg.SubnetMin) || !cfg.Network.Contains(cfg.SubnetMax) ||
				cfg.SubnetLen < cfg.Network.Bits()+2 || cfg.SubnetLen > 30 {
				t.Fatalf("ParseConfig(%q) = %+v: derived values out of range", b, cfg)
			}
			if compatible4(cfg, netip.PrefixFrom(cfg.SubnetMin, cfg.SubnetLen)) != (v4(cfg.SubnetMin) <= v4(cfg.SubnetMax)) {
				t.Fatalf("SubnetMin of %+v is not compatible", cfg)
			}
		}
		if cfg.EnableIPv6 {
			n := cfg.IPv6Network
			if !n.Addr().Is6() || n.Addr().Is4In6() || !n.Contains(cfg.IPv6SubnetMin) || !n.Contains(cfg.IPv6SubnetMax) ||
				cfg.IPv6SubnetLen < n.Bits()+2 || cfg.IPv6SubnetLen > 126 {
				t.Fatalf("ParseConfig(%q) = %+v: derived IPv6 values out of range", b, cfg)
			}
			if compatible6(cfg, netip.PrefixFrom(cfg.IPv6SubnetMin, cfg.IPv6SubnetLen)) != (cfg.IPv6SubnetMin.Compare(cfg.IPv6SubnetMax) <= 0) {
				t.Fatalf("IPv6SubnetMin of %+v is not compatible", cfg)
			}
		}
		if cfg.Port < 1 || cfg.Port > 65535 {
			t.Fatalf("port %d", cfg.Port)
		}
	})
}

// upstreamParse is an independent statement of upstream's key parsing
// with the net package (its IP parser), for comparison.
func upstreamParse(key string) (v4 net.IPNet, v6 *net.IPNet, ok bool) {
	m := subnetKeyRE.FindStringSubmatch(key)
	if m == nil {
		return v4, nil, false
	}
	ip := net.ParseIP(m[1]).To4()
	n, err := strconv.ParseUint(m[2], 10, 5)
	if ip == nil || err != nil {
		return v4, nil, false
	}
	v4 = net.IPNet{IP: ip.Mask(net.CIDRMask(int(n), 32)), Mask: net.CIDRMask(int(n), 32)}
	if m[3] != "" {
		ip6 := net.ParseIP(m[3])
		n6, err := strconv.ParseUint(m[4], 10, 7)
		if ip6 == nil || err != nil {
			return v4, nil, false
		}
		v6 = &net.IPNet{IP: ip6, Mask: net.CIDRMask(int(n6), 128)}
	}
	return v4, v6, true
}

func FuzzParseSubnetKeyParts(f *testing.F) {
	f.Fuzz(func(t *testing.T, key string) {
		k, ok := ParseSubnetKeyParts(key)
		v4, v6, uok := upstreamParse(key)
		if ok != uok {
			t.Fatalf("%q: parsed %v, upstream %v", key, ok, uok)
		}
		if p, rok := ReadableSubnet(key); rok && (!p.Addr().Is4() || p.Masked() != p) {
			t.Fatalf("ReadableSubnet(%q) = %v: not a masked IPv4 prefix", key, p)
		}
		if !ok {
			return
		}
		ones, _ := v4.Mask.Size()
		if !k.Subnet.Addr().Is4() || k.Subnet.Masked() != k.Subnet || k.Subnet.Bits() != ones || !v4.IP.Equal(k.Subnet.Addr().AsSlice()) {
			t.Fatalf("%q: subnet %v, upstream %v", key, k.Subnet, v4.String())
		}
		own := k.Subnet
		if own.Bits() == 0 && k.IPv6Subnet.IsValid() {
			own = netip.Prefix{}
		}
		if k.Canonical != (key == LeaseKey(own, k.IPv6Subnet.Masked())) {
			t.Fatalf("%q: canonical %v", key, k.Canonical)
		}
		if (v6 == nil) != !k.IPv6Subnet.IsValid() {
			t.Fatalf("%q: IPv6 part %v, upstream %v", key, k.IPv6Subnet, v6)
		}
		if v6 != nil {
			ones6, _ := v6.Mask.Size()
			if !k.IPv6Subnet.Addr().Is6() || k.IPv6Subnet.Bits() != ones6 || !v6.IP.Equal(k.IPv6Subnet.Addr().AsSlice()) {
				t.Fatalf("%q: IPv6 part %v, upstream %v", key, k.IPv6Subnet, v6)
			}
		}
	})
}
