package lease

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
)

func FuzzParseLeaseAttrs(f *testing.F) {
	for _, s := range []string{`{"PublicIP":"192.0.2.1","PublicIPv6":null}`, `{"publicip":"192.0.2.1"}`, `{"PublicIP":"2001:db8::1"}`, `{}`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ip, err := ParseLeaseAttrs(b)
		if err != nil {
			return
		}
		if !ip.Is4() || ip.IsUnspecified() {
			t.Fatalf("ParseLeaseAttrs(%q) = %v", b, ip)
		}
		if back, err := ParseLeaseAttrs(MarshalLeaseAttrs(ip)); err != nil || back != ip {
			t.Fatalf("round trip of %v: %v, %v", ip, back, err)
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
			if compatible(cfg, netip.PrefixFrom(cfg.SubnetMin, cfg.SubnetLen)) != (v4(cfg.SubnetMin) <= v4(cfg.SubnetMax)) {
				t.Fatalf("SubnetMin of %+v is not compatible", cfg)
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
		if k.Canonical != (key == SubnetKey(k.Subnet)) {
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
