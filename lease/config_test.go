package lease

import (
	"net/netip"
	"testing"
)

func TestParseConfigDerivations(t *testing.T) {
	tests := []struct {
		json     string
		network  string
		len      int
		min, max string
		backend  string
		port     int
	}{
		// Upstream's 10.3.0.0/16 example, moved to the test range.
		{`{"Network":"198.18.0.0/16"}`, "198.18.0.0/16", 24, "198.18.1.0", "198.18.255.0", "udp", 8285},
		// Upstream's 10.0.0.0/24 example.
		{`{"Network":"198.18.0.0/24"}`, "198.18.0.0/24", 26, "198.18.0.64", "198.18.0.192", "udp", 8285},
		{`{"Network":"198.18.0.0/15"}`, "198.18.0.0/15", 24, "198.18.1.0", "198.19.255.0", "udp", 8285},
		{`{"Network":"198.18.0.0/22"}`, "198.18.0.0/22", 24, "198.18.1.0", "198.18.3.0", "udp", 8285},
		{`{"Network":"198.18.0.0/23"}`, "198.18.0.0/23", 25, "198.18.0.128", "198.18.1.128", "udp", 8285},
		{`{"Network":"198.18.0.0/28"}`, "198.18.0.0/28", 30, "198.18.0.4", "198.18.0.12", "udp", 8285},
		{`{"Network":"198.18.2.3/16"}`, "198.18.0.0/16", 24, "198.18.1.0", "198.18.255.0", "udp", 8285},
		{`{"network":"198.18.0.0/16","subnetlen":20}`, "198.18.0.0/16", 20, "198.18.16.0", "198.18.240.0", "udp", 8285},
		{`{"Network":"198.18.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`, "198.18.0.0/16", 24, "198.18.1.0", "198.18.255.0", "udp", 8285},
		{`{"Network":"198.18.0.0/16","Backend":{"Type":"UDP","Port":9000}}`, "198.18.0.0/16", 24, "198.18.1.0", "198.18.255.0", "udp", 9000},
		{`{"Network":"198.18.0.0/16","Backend":{"type":"vxlan"}}`, "198.18.0.0/16", 24, "198.18.1.0", "198.18.255.0", "vxlan", 8285},
		{`{"Network":"198.18.0.0/16","Backend":{}}`, "198.18.0.0/16", 24, "198.18.1.0", "198.18.255.0", "", 8285},
		{`{"Network":"198.18.0.0/16","SubnetMin":"198.18.10.0","SubnetMax":"198.18.20.0","Unknown":1}`, "198.18.0.0/16", 24, "198.18.10.0", "198.18.20.0", "udp", 8285},
		// No check that min <= max (upstream): allocation says "out of subnets".
		{`{"Network":"198.18.0.0/16","SubnetMin":"198.18.20.0","SubnetMax":"198.18.10.0"}`, "198.18.0.0/16", 24, "198.18.20.0", "198.18.10.0", "udp", 8285},
		{`{"Network":"255.255.0.0/16"}`, "255.255.0.0/16", 24, "255.255.1.0", "255.255.255.0", "udp", 8285},
	}
	for _, tt := range tests {
		cfg, err := ParseConfig([]byte(tt.json))
		if err != nil {
			t.Errorf("ParseConfig(%s): %v", tt.json, err)
			continue
		}
		if cfg.Network != netip.MustParsePrefix(tt.network) || cfg.SubnetLen != tt.len ||
			cfg.SubnetMin != netip.MustParseAddr(tt.min) || cfg.SubnetMax != netip.MustParseAddr(tt.max) ||
			cfg.BackendType != tt.backend || cfg.Port != tt.port || !cfg.EnableIPv4 || cfg.EnableIPv6 {
			t.Errorf("ParseConfig(%s) = %+v, want network %s len %d min %s max %s backend %q port %d",
				tt.json, cfg, tt.network, tt.len, tt.min, tt.max, tt.backend, tt.port)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(ParseConfig(%s)): %v", tt.json, err)
		}
	}
}

func TestParseConfigIPv6(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.EnableIPv6 || cfg.IPv6Network != netip.MustParsePrefix("2001:db8::/48") || cfg.IPv6SubnetLen != 64 ||
		cfg.IPv6SubnetMin != netip.MustParseAddr("2001:db8:0:1::") || cfg.IPv6SubnetMax != netip.MustParseAddr("2001:db8:0:ffff::") {
		t.Errorf("got %+v", cfg)
	}
	cfg, err = ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/120"}`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EnableIPv4 || cfg.IPv6SubnetLen != 122 || cfg.IPv6SubnetMin != netip.MustParseAddr("2001:db8::40") ||
		cfg.IPv6SubnetMax != netip.MustParseAddr("2001:db8::c0") {
		t.Errorf("got %+v", cfg)
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct{ json, err string }{
		{`{}`, "please define a correct Network parameter in the flannel config"},
		{`{"Network":"0.0.0.0/0"}`, "please define a correct Network parameter in the flannel config"},
		{`{"Network":"198.18.0.0/16","SubnetLen":31}`, "SubnetLen must be less than /31"},
		{`{"Network":"198.18.0.0/16","SubnetLen":17}`, "network must be able to accommodate at least four subnets"},
		{`{"Network":"198.18.0.0/29"}`, "network is too small. Minimum useful network prefix is /28"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"198.19.0.0"}`, "SubnetMin is not in the range of the Network"},
		{`{"Network":"198.18.0.0/16","SubnetMax":"198.19.0.0"}`, "SubnetMax is not in the range of the Network"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.5"}`, "SubnetMin is not on a SubnetLen boundary: 198.18.1.5"},
		{`{"Network":"198.18.0.0/16","SubnetMax":"198.18.200.128"}`, "SubnetMax is not on a SubnetLen boundary: 198.18.200.128"},
		{`{"Network":"198.18.0.0/16","Backend":"udp"}`, "error decoding Backend property of config: json: cannot unmarshal string into Go value of type struct { Type string }"},
		{`{"Network":"198.18.0.0"}`, "invalid CIDR address: 198.18.0.0"},
		{`{"Network":"2001:db8::/48"}`, "invalid IPv4 CIDR format"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"bogus"}`, "invalid IP address format"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"2001:db8::1"}`, "invalid IPv4 address format"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true}`, "please define a correct IPv6Network parameter in the flannel config"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetLen":127}`, "SubnetLen must be less than /127"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetLen":49}`, "network must be able to accommodate at least four subnets"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/125"}`, "IPv6Network is too small. Minimum useful network prefix is /124"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db9::"}`, "IPv6SubnetMin is not in the range of the IPv6Network"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db8:0:1::1"}`, "IPv6SubnetMin is not on a SubnetLen boundary: 2001:db8:0:1::1"},
		{`{"Network":"198.18.0.0/16","Backend":{"Type":"udp","Port":"x"}}`, "error decoding UDP backend config: json: cannot unmarshal string into Go struct field .Port of type int"},
		{`not json`, "invalid character 'o' in literal null (expecting 'u')"},
	}
	for _, tt := range tests {
		_, err := ParseConfig([]byte(tt.json))
		if err == nil || err.Error() != tt.err {
			t.Errorf("ParseConfig(%s) error = %v, want %q", tt.json, err, tt.err)
		}
	}
}

func TestParseConfigEnableNFTables(t *testing.T) {
	for doc, want := range map[string]bool{
		`{"Network":"198.18.0.0/16"}`:                        false,
		`{"Network":"198.18.0.0/16","EnableNFTables":true}`:  true,
		`{"Network":"198.18.0.0/16","enablenftables":true}`:  true,
		`{"Network":"198.18.0.0/16","EnableNFTables":false}`: false,
	} {
		cfg, err := ParseConfig([]byte(doc))
		if err != nil || cfg.EnableNFTables != want {
			t.Errorf("%s: EnableNFTables %v %v, want %v", doc, cfg != nil && cfg.EnableNFTables, err, want)
		}
	}
	if _, err := ParseConfig([]byte(`{"Network":"198.18.0.0/16","EnableNFTables":"yes"}`)); err == nil {
		t.Error(`"EnableNFTables":"yes" accepted; upstream refuses the config`)
	}
}
