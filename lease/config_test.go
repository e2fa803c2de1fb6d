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

// TestParseConfigIPv6Derivations follows upstream's CheckNetworkConfig for
// IPv6: /64 up to a /62 network, prefix+2 above, the second and the last
// subnet as the range.
func TestParseConfigIPv6Derivations(t *testing.T) {
	for _, tt := range []struct {
		json     string
		len      int
		min, max string
		v4       bool
	}{
		// Upstream's fc00::/48 example, moved into the documentation range.
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48"}`, 64, "2001:db8:100:1::", "2001:db8:100:ffff::", true},
		{`{"Network":"198.18.0.0/16","enableipv6":true,"ipv6network":"2001:db8:100:1a::7/62"}`, 64, "2001:db8:100:19::", "2001:db8:100:1b::", true},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/63"}`, 65, "2001:db8:0:0:8000::", "2001:db8:0:1:8000::", false},
		{`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/124"}`, 126, "2001:db8::4", "2001:db8::c", false},
		{`{"EnableIPv6":true,"IPv6Network":"2001:db8::/32","IPv6SubnetLen":56,"IPv6SubnetMin":"2001:db8:0:100::","IPv6SubnetMax":"2001:db8:0:1000::","Network":"198.18.0.0/16"}`, 56, "2001:db8:0:100::", "2001:db8:0:1000::", true},
		// "::" is upstream's empty IPv6SubnetMin: the default.
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","IPv6SubnetMin":"::"}`, 64, "2001:db8:100:1::", "2001:db8:100:ffff::", true},
	} {
		cfg, err := ParseConfig([]byte(tt.json))
		if err != nil {
			t.Errorf("%s: %v", tt.json, err)
			continue
		}
		if !cfg.EnableIPv6 || cfg.EnableIPv4 != tt.v4 || cfg.IPv6SubnetLen != tt.len ||
			cfg.IPv6SubnetMin != netip.MustParseAddr(tt.min) || cfg.IPv6SubnetMax != netip.MustParseAddr(tt.max) {
			t.Errorf("%s = %+v, want len %d min %s max %s", tt.json, cfg, tt.len, tt.min, tt.max)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("Validate(%s): %v", tt.json, err)
		}
	}
}

// TestParseConfigIPv6Disabled: upstream parses the IPv6 fields whatever
// their family and looks at them only with EnableIPv6, so IPv4 values there
// do not stop an IPv4-only config; with EnableIPv6 they fail.
func TestParseConfigIPv6Disabled(t *testing.T) {
	for _, doc := range []string{
		`{"Network":"198.18.0.0/16","IPv6Network":"198.19.0.0/16","IPv6SubnetMin":"198.19.1.0","IPv6SubnetLen":3}`,
		`{"Network":"198.18.0.0/16","EnableIPv6":false,"IPv6Network":"2001:db8::/127"}`,
	} {
		if cfg, err := ParseConfig([]byte(doc)); err != nil || cfg.EnableIPv6 {
			t.Errorf("%s: %+v, %v; upstream accepts it", doc, cfg, err)
		}
	}
	for doc, want := range map[string]string{
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"198.19.0.0/16"}`:                                           "invalid IPv6 CIDR format: IPv6Network 198.19.0.0/16 is not an IPv6 network",
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"198.19.1.0"}`:              "IPv6SubnetMin is not in the range of the IPv6Network",
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMax":"2001:db9::"}`:              "IPv6SubnetMax is not in the range of the IPv6Network",
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMax":"2001:db8::1"}`:             "IPv6SubnetMax is not on a SubnetLen boundary: 2001:db8::1",
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"bogus"}`:                   "invalid IP address format",
		`{"Network":"198.18.0.0/16","IPv6Network":"2001:db8::"}`:                                                                "invalid CIDR address: 2001:db8::",
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"::/0"}`:                                                           "please define a correct IPv6Network parameter in the flannel config",
		`{"EnableIPv4":false,"Network":"198.18.0.0/16"}`:                                                                        "",
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":null,"IPv6SubnetMax":null}`: "",
		// Compared with upstream v0.28.9's own ParseConfig and
		// CheckNetworkConfig: null reaches its CIDR parsers, the type
		// errors name its struct.
		`{"Network":"198.18.0.0/16","IPv6Network":null}`: "invalid CIDR address: null",
		`{"Network":null}`: "invalid CIDR address: null",
		`{"Network":"198.18.0.0/16","SubnetMin":null}`:                                                   "invalid IP address format",
		`{"Network":"198.18.0.0/16","EnableIPv6":"yes","IPv6Network":"2001:db8::/48"}`:                   "json: cannot unmarshal string into Go struct field Config.EnableIPv6 of type bool",
		`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetLen":-1}`: "json: cannot unmarshal number -1 into Go struct field Config.IPv6SubnetLen of type uint",
	} {
		_, err := ParseConfig([]byte(doc))
		if want == "" {
			// Accepted as upstream accepts it; with neither family
			// enabled the daemon stops at "none defined stack".
			if err != nil {
				t.Errorf("%s: %v, want accepted", doc, err)
			}
			continue
		}
		if err == nil || err.Error() != want {
			t.Errorf("%s: error %v, want %q", doc, err, want)
		}
	}
}
