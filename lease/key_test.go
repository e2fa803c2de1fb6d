package lease

import (
	"bytes"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestParseSubnetKey(t *testing.T) {
	good := map[string]string{
		"198.18.32.0-24": "198.18.32.0/24",
		"/coreos.com/network/subnets/198.18.68.0-24":            "198.18.68.0/24",
		"198.18.32.0-24&2001:db8:0:1::-64":                      "198.18.32.0/24",
		"198.18.0.64-26":                                        "198.18.0.64/26",
		"0.0.0.0-0":                                             "0.0.0.0/0",
		"/coreos.com/network/subnets/198.19.255.0-24":           "198.19.255.0/24",
		"/coreos.com/network/subnets/198.18.1.128-25&fd00::-64": "198.18.1.128/25",
	}
	for key, want := range good {
		k, ok := ParseSubnetKeyParts(key)
		if !ok || k.Subnet != netip.MustParsePrefix(want) {
			t.Errorf("ParseSubnetKeyParts(%q) = %v, %v; want %s", key, k, ok, want)
		}
	}
	bad := []string{
		"", "198.18.32.0", "198.18.32.0-", "198.18.32.0-32", "198.18.32.0-99",
		"198.18.256.0-24", "198.018.32.0-24", "198.18.32.0-24x",
		"198.18.32.0/24", "2001:db8::-64", "198.18.32.0-24&2001:DB8::-64",
	}
	for _, key := range bad {
		if k, ok := ParseSubnetKeyParts(key); ok {
			t.Errorf("ParseSubnetKeyParts(%q) = %v, want failure", key, k)
		}
	}
	if got := SubnetKey(netip.MustParsePrefix("198.18.32.0/24")); got != "198.18.32.0-24" {
		t.Errorf("SubnetKey = %q", got)
	}
}

func TestLeaseAttrsIPv6(t *testing.T) {
	v4, v6 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")
	for _, tt := range []struct {
		attrs LeaseAttrs
		bytes string
	}{
		// Upstream's json.Marshal of LeaseAttrs, as its vxlan backend
		// writes it for a dual-stack and an IPv6-only node.
		{LeaseAttrs{PublicIP: v4, PublicIPv6: v6}, `{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1"}`},
		{LeaseAttrs{PublicIPv6: v6}, `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1"}`},
		{LeaseAttrs{PublicIP: v4}, `{"PublicIP":"192.0.2.1","PublicIPv6":null}`},
	} {
		if got := string(tt.attrs.Bytes()); got != tt.bytes {
			t.Errorf("%+v.Bytes() = %s, want %s", tt.attrs, got, tt.bytes)
		}
		if back, err := ParseLeaseAttrs([]byte(tt.bytes)); err != nil || back != tt.attrs {
			t.Errorf("ParseLeaseAttrs(%s) = %+v, %v; want %+v", tt.bytes, back, err, tt.attrs)
		}
	}
	got, err := ParseLeaseAttrs([]byte(`{"publicip":"192.0.2.1","publicipv6":"2001:DB8:0::1","BackendV6Data":{"VNI":1}}`))
	if err != nil || got != (LeaseAttrs{PublicIP: v4, PublicIPv6: v6}) {
		t.Errorf("ParseLeaseAttrs of a vxlan value = %+v, %v", got, err)
	}
}

func TestLeaseAttrs(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.1")
	if got, want := MarshalLeaseAttrs(ip), []byte(`{"PublicIP":"192.0.2.1","PublicIPv6":null}`); !bytes.Equal(got, want) {
		t.Errorf("MarshalLeaseAttrs = %s, want %s", got, want)
	}
	good := []string{
		`{"PublicIP":"192.0.2.1","PublicIPv6":null}`,
		`{"PublicIP":"192.0.2.1"}`,
		`{"publicip":"192.0.2.1"}`,
		`{"PUBLICIP":"192.0.2.1","BackendType":"udp","BackendData":{"x":1}}`,
		`{"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
		` { "PublicIP" : "192.0.2.1" } `,
		`{"PublicIP":"::ffff:192.0.2.1"}`,
	}
	for _, s := range good {
		got, err := ParseLeaseAttrs([]byte(s))
		if err != nil || got.PublicIP != ip {
			t.Errorf("ParseLeaseAttrs(%s) = %v, %v; want %v", s, got, err, ip)
		}
	}
	bad := []string{
		``, `null`, `{}`, `[]`, `{"PublicIP":null}`, `{"PublicIP":1}`, `{"PublicIP":""}`,
		`{"PublicIP":"2001:db8::1"}`, `{"PublicIP":"0.0.0.0"}`, `{"PublicIP":"224.0.0.1"}`,
		`{"PublicIP":"255.255.255.255"}`, `{"PublicIP":"192.0.2.1"`, `{"PublicIP":"192.0.2.01"}`,
		`{"PublicIP":"fe80::1%eth0"}`,
		`{"PublicIP":"0.0.0.0","PublicIPv6":null}`, `{"PublicIP":"192.0.2.1","PublicIPv6":"192.0.2.2"}`,
		`{"PublicIP":"192.0.2.1","PublicIPv6":"::ffff:192.0.2.2"}`, `{"PublicIP":"192.0.2.1","PublicIPv6":"ff02::1"}`,
		`{"PublicIP":"192.0.2.1","PublicIPv6":"::"}`, `{"PublicIP":"192.0.2.1","PublicIPv6":1}`,
		`{"PublicIP":"0.0.0.0","PublicIPv6":"fe80::1%eth0"}`,
	}
	for _, s := range bad {
		if got, err := ParseLeaseAttrs([]byte(s)); err == nil {
			t.Errorf("ParseLeaseAttrs(%s) = %v, want error", s, got)
		}
	}
}

func TestSubnetFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "run", "flannel", "subnet.env")
	sf := SubnetFile{
		Network: netip.MustParsePrefix("198.18.0.0/16"),
		Subnet:  netip.MustParsePrefix("198.18.32.0/24"),
		MTU:     1472,
	}
	if err := WriteSubnetFile(path, sf); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.32.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	if string(got) != want {
		t.Errorf("subnet file = %q, want %q", got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode = %v, want 0644", st.Mode().Perm())
	}
	pst, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if pst.Mode().Perm() != 0o755 {
		t.Errorf("parent mode = %v, want 0755", pst.Mode().Perm())
	}
	back, err := ReadSubnetFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if back != sf {
		t.Errorf("ReadSubnetFile = %+v, want %+v", back, sf)
	}

	// Rewrite: replaced atomically, no temporary files left behind.
	sf.IPMasq = true
	sf.Subnet = netip.MustParsePrefix("198.18.68.0/24")
	if err := WriteSubnetFile(path, sf); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(path)
	want = "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.68.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
	if string(got) != want {
		t.Errorf("rewritten subnet file = %q, want %q", got, want)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries, want only subnet.env", len(ents))
	}

	if b := (SubnetFile{MTU: 1472}).Bytes(); string(b) != "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n" {
		t.Errorf("IPv4-less file = %q", b)
	}
}

func TestReadSubnetFileTolerant(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	content := "# written by hand\n\nexport FLANNEL_NETWORK=\"198.18.0.0/16\"\n FLANNEL_SUBNET = 198.18.74.1/24 \nFLANNEL_MTU=abc\nFLANNEL_IPMASQ=true\nOTHER=1\ngarbage\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sf, err := ReadSubnetFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := SubnetFile{Network: netip.MustParsePrefix("198.18.0.0/16"), Subnet: netip.MustParsePrefix("198.18.74.0/24"), IPMasq: true}
	if sf != want {
		t.Errorf("got %+v, want %+v", sf, want)
	}
	if err := os.WriteFile(path, []byte("FLANNEL_SUBNET=198.18.74.1/24,198.18.75.1/24\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if sf, err := ReadSubnetFile(path); err != nil || sf.Subnet.IsValid() {
		t.Errorf("comma list: got %+v, %v; want no subnet", sf, err)
	}
	if _, err := ReadSubnetFile(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file: want error")
	}
}

func TestPickSubnet(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"Network":"198.18.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	seen := map[netip.Prefix]bool{}
	for i := 0; i < 2000; i++ {
		p, err := pickSubnet(cfg, nil, rnd)
		if err != nil {
			t.Fatal(err)
		}
		if !compatible4(cfg, p) {
			t.Fatalf("picked %s outside the range", p)
		}
		seen[p] = true
	}
	// Only the first 100 free subnets (198.18.1.0 .. 198.18.100.0) are candidates.
	if len(seen) != 100 || !seen[netip.MustParsePrefix("198.18.1.0/24")] || !seen[netip.MustParsePrefix("198.18.100.0/24")] {
		t.Errorf("picked %d distinct subnets, want exactly the first 100", len(seen))
	}

	// Taken subnets, including one of another length that covers several, are skipped.
	taken := []netip.Prefix{netip.MustParsePrefix("198.18.0.0/17")}
	for i := 0; i < 200; i++ {
		p, err := pickSubnet(cfg, taken, rnd)
		if err != nil {
			t.Fatal(err)
		}
		if p.Addr().As4()[2] < 128 {
			t.Fatalf("picked %s inside the taken 198.18.0.0/17", p)
		}
	}

	small, _ := ParseConfig([]byte(`{"Network":"198.18.0.0/28"}`))
	var all []netip.Prefix
	for {
		p, err := pickSubnet(small, all, rnd)
		if err != nil {
			if err.Error() != "out of subnets" {
				t.Fatalf("err = %v", err)
			}
			break
		}
		all = append(all, p)
	}
	if len(all) != 3 {
		t.Errorf("a /28 with /30 subnets gave %d subnets, want 3 (%v)", len(all), all)
	}

	inverted, _ := ParseConfig([]byte(`{"Network":"198.18.0.0/16","SubnetMin":"198.18.20.0","SubnetMax":"198.18.10.0"}`))
	if _, err := pickSubnet(inverted, nil, rnd); err == nil {
		t.Error("inverted range: want out of subnets")
	}
	top, _ := ParseConfig([]byte(`{"Network":"255.255.0.0/16"}`))
	if p, err := pickSubnet(top, []netip.Prefix{}, rnd); err != nil || !compatible4(top, p) {
		t.Errorf("range ending at the top of the address space: %v, %v", p, err)
	}
}

func TestCompatible(t *testing.T) {
	cfg, _ := ParseConfig([]byte(`{"Network":"198.18.0.0/16","SubnetMin":"198.18.10.0","SubnetMax":"198.18.20.0"}`))
	for s, want := range map[string]bool{
		"198.18.10.0/24": true, "198.18.20.0/24": true, "198.18.15.0/24": true,
		"198.18.9.0/24": false, "198.18.21.0/24": false, "198.18.15.0/25": false, "198.19.15.0/24": false,
	} {
		if got := compatible4(cfg, netip.MustParsePrefix(s)); got != want {
			t.Errorf("compatible(%s) = %v, want %v", s, got, want)
		}
	}
}

// TestSubnetFileIPv6 checks the dual-stack and IPv6-only files against
// golden files in upstream's line order (main.go's WriteSubnetFile).
func TestSubnetFileIPv6(t *testing.T) {
	v6net, v6sub := netip.MustParsePrefix("2001:db8:100::/48"), netip.MustParsePrefix("2001:db8:100:1a::/64")
	for name, sf := range map[string]SubnetFile{
		"dualstack.env": {Network: netip.MustParsePrefix("198.18.0.0/16"), Subnet: netip.MustParsePrefix("198.18.31.0/24"),
			IPv6Network: v6net, IPv6Subnet: v6sub, MTU: 1472},
		"ipv6only.env": {IPv6Network: v6net, IPv6Subnet: v6sub, MTU: 1452, IPMasq: true},
	} {
		want, err := os.ReadFile(filepath.Join("testdata", "subnetenv", name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(t.TempDir(), "subnet.env")
		if err := WriteSubnetFile(path, sf); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if string(got) != string(want) {
			t.Errorf("%s: wrote %q, want %q", name, got, want)
		}
		back, err := ReadSubnetFile(path)
		if err != nil || back != sf {
			t.Errorf("%s: read back %+v, %v; want %+v", name, back, err, sf)
		}
	}
}

// TestReadSubnetFileIPv6Tolerant: a value of the wrong family, a list and
// junk leave the field unset, as upstream's reader leaves its subnet empty.
func TestReadSubnetFileIPv6Tolerant(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	content := "export FLANNEL_IPV6_NETWORK=\"2001:db8:100::/48\"\nFLANNEL_IPV6_SUBNET=2001:db8:100:1a::1/64,2001:db8:100:1b::1/64\n" +
		"FLANNEL_SUBNET=2001:db8:100:1c::1/64\nFLANNEL_NETWORK=junk\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	sf, err := ReadSubnetFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := (SubnetFile{IPv6Network: netip.MustParsePrefix("2001:db8:100::/48")}); sf != want {
		t.Errorf("read %+v, want %+v", sf, want)
	}
	if err := os.WriteFile(path, []byte("FLANNEL_IPV6_SUBNET=198.18.3.1/24\nFLANNEL_IPV6_NETWORK=::ffff:198.18.0.0/112\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if sf, _ := ReadSubnetFile(path); sf.IPv6Subnet.IsValid() || sf.IPv6Network.IsValid() {
		t.Errorf("IPv4 values read as IPv6: %+v", sf)
	}
}
