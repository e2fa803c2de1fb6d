package lease

import (
	"net/netip"
	"strings"
	"testing"
)

func FuzzParseSubnetKey(f *testing.F) {
	for _, s := range []string{"198.18.32.0-24", "/coreos.com/network/subnets/198.18.68.0-24", "198.18.32.0-24&2001:db8:0:1::-64", "198.18.32.1-24", "1.2.3.4-99"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p, ok := ParseSubnetKey(key)
		if !ok {
			return
		}
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			t.Fatalf("ParseSubnetKey(%q) = %v: not a canonical IPv4 prefix", key, p)
		}
		k := SubnetKey(p)
		if !strings.Contains(key, k) {
			t.Fatalf("SubnetKey(%v) = %q is not part of %q", p, k, key)
		}
		if q, ok := ParseSubnetKey(k); !ok || q != p {
			t.Fatalf("round trip of %q: %v, %v", k, q, ok)
		}
	})
}

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
