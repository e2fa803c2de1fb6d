package lease

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
)

func TestParseSubnetKeyParts(t *testing.T) {
	for key, want := range map[string]SubnetKeyParts{
		"198.18.3.0-24": {Subnet: netip.MustParsePrefix("198.18.3.0/24"), Canonical: true},
		"/coreos.com/network/subnets/198.18.3.0-24&2001:db8:100:3::-64": {Subnet: netip.MustParsePrefix("198.18.3.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:3::/64")},
		"198.18.3.0-24&2001:db8:100:3::-64":                             {Subnet: netip.MustParsePrefix("198.18.3.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:3::/64"), Canonical: true},
		"0.0.0.0-0&2001:db8:100:3::-64":                                 {Subnet: netip.MustParsePrefix("0.0.0.0/0"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:3::/64"), Canonical: true},
		"198.18.3.0-24&2001:db8:100:3::1-64":                            {Subnet: netip.MustParsePrefix("198.18.3.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:3::1/64")},
		"198.18.3.7-24":                                                 {Subnet: netip.MustParsePrefix("198.18.3.0/24")},
		"198.18.3.0-024":                                                {Subnet: netip.MustParsePrefix("198.18.3.0/24")},
		"198.18.3.0-0":                                                  {Subnet: netip.MustParsePrefix("0.0.0.0/0")},
		"198.18.3.0-24&2001:db8::5-0127":                                {Subnet: netip.MustParsePrefix("198.18.3.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8::5/127")},
		"x/y198.18.3.0-24":                                              {Subnet: netip.MustParsePrefix("198.18.3.0/24")},
		"11.18.3.0-24":                                                  {Subnet: netip.MustParsePrefix("11.18.3.0/24"), Canonical: true},
		// The pattern is anchored at the end only: upstream reads the last
		// match.
		"198.18.3.0-24&1.2.3.4-24":         {Subnet: netip.MustParsePrefix("1.2.3.0/24")},
		"subnets/2198.18.3.0-24&::-64":     {},
		"198.18.3.0-24&2001:db8:100:3::-1": {Subnet: netip.MustParsePrefix("198.18.3.0/24"), IPv6Subnet: netip.MustParsePrefix("2001:db8:100:3::/1")},
	} {
		got, ok := ParseSubnetKeyParts(key)
		if !want.Subnet.IsValid() {
			if ok {
				t.Errorf("%q parsed as %+v, want rejected", key, got)
			}
			continue
		}
		if !ok || got != want {
			t.Errorf("%q: %+v %v, want %+v", key, got, ok, want)
		}
	}
	for _, key := range []string{"198.18.3.0-32", "198.18.3.0-24&2001:db8::-128", "198.18.3.0-24&2001:DB8::-64", "198.018.3.0-24",
		"198.18.3.0-24&zz-64", "198.18.3.0-24/", "198.18.3-24", "2001:db8::-64", "198.18.3.0-24&::ffff:1.2.3.4-64", "256.18.3.0-24"} {
		if got, ok := ParseSubnetKeyParts(key); ok {
			t.Errorf("%q parsed as %+v; upstream rejects it", key, got)
		}
	}
}

func TestReadableSubnet(t *testing.T) {
	for key, want := range map[string]string{
		"198.18.3.0-32":                      "198.18.3.0/32",
		"198.18.5.0-24&2001:db8:100:5::-200": "198.18.5.0/24",
		"198.018.003.000-24":                 "198.18.3.0/24",
		"198.18.3.9":                         "198.18.3.9/32",
		"198.18.3.0-99":                      "198.18.3.0/32",
		"198.18.3.0-24&2001:DB8::-64":        "198.18.3.0/24",
		"junk":                               "",
		"300.18.3.0-24":                      "",
	} {
		got, ok := ReadableSubnet(key)
		if want == "" {
			if ok {
				t.Errorf("%q: readable as %v, want nothing", key, got)
			}
			continue
		}
		if !ok || got != netip.MustParsePrefix(want) {
			t.Errorf("%q: %v %v, want %s", key, got, ok, want)
		}
	}
}

// TestUpstreamKeyForms stores, in a real etcd, leases in every form an
// upstream node writes or accepts (dual-stack, host bits, zero-padded
// length) and keys nobody parses. The parseable ones route; all of them
// are taken, so the allocator hands out the one free subnet of the range
// and then none; each unparseable key is logged once.
func TestUpstreamKeyForms(t *testing.T) {
	cli := etcdtest.Embedded(t)
	const conf = `{"Network":"198.18.0.0/16","SubnetLen":24,"SubnetMin":"198.18.1.0","SubnetMax":"198.18.8.0","Backend":{"Type":"udp"}}`
	put(t, cli, prefix+"/config", conf)
	cfg, err := ParseConfig([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	routed := map[string]struct {
		subnet string
		ip     netip.Addr
	}{
		"198.18.1.0-24&2001:db8:100:1::-64": {"198.18.1.0/24", netip.MustParseAddr("192.0.2.11")},
		"198.18.2.7-24":                     {"198.18.2.0/24", netip.MustParseAddr("192.0.2.12")},
		"198.18.3.0-024":                    {"198.18.3.0/24", netip.MustParseAddr("192.0.2.13")},
	}
	for k, r := range routed {
		put(t, cli, prefix+"/subnets/"+k, string(MarshalLeaseAttrs(r.ip)))
	}
	unparseable := []string{"198.18.4.0-32", "198.18.5.0-24&2001:db8:100:5::-200", "198.018.6.0-24", "garbage"}
	for _, k := range unparseable {
		put(t, cli, prefix+"/subnets/"+k, string(MarshalLeaseAttrs(netip.MustParseAddr("192.0.2.14"))))
	}

	// Our own PublicIP in a dual-stack key (a dual-stack run on this host)
	// routes until this node acquires; under this IPv4-only config it is
	// then incompatible and deleted, as upstream deletes it.
	ownOld := prefix + "/subnets/198.18.7.0-24&2001:db8:100:7::-64"
	put(t, cli, ownOld, string(MarshalLeaseAttrs(nodeA)))
	m, lb := newManager(cli, nodeA, Options{Prefix: prefix})
	w := startWatch(t, m)
	w.until("the snapshot", func() bool { return len(w.batches) >= 1 })
	for k, r := range routed {
		p := netip.MustParsePrefix(r.subnet)
		if w.routes[p] != r.ip {
			t.Errorf("key %s: route %s via %v, want via %s", k, p, w.routes[p], r.ip)
		}
	}
	if len(w.routes) != len(routed)+1 {
		t.Errorf("routes %v: want the %d parseable keys and our own old dual-stack key only", w.routes, len(routed)+1)
	}

	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, found := getKVKey(t, cli, ownOld); found {
		t.Errorf("own dual-stack key %s kept under an IPv4-only config", ownOld)
	}
	free := map[netip.Prefix]bool{netip.MustParsePrefix("198.18.7.0/24"): true, netip.MustParsePrefix("198.18.8.0/24"): true}
	if !free[l.Subnet] {
		t.Fatalf("allocated %s, want one of %v, the subnets no key holds", l.Subnet, free)
	}
	delete(free, l.Subnet)
	m2, _ := newManager(cli, netip.MustParseAddr("192.0.2.2"), Options{Prefix: prefix})
	if l2, err := m2.Acquire(testCtx(t), cfg); err != nil || !free[l2.Subnet] {
		t.Fatalf("second node got %v, %v; want the last free subnet %v", l2.Subnet, err, free)
	}
	m3, _ := newManager(cli, netip.MustParseAddr("192.0.2.3"), Options{Prefix: prefix})
	if l3, err := m3.acquire(testCtx(t), cfg, subnets{V4: netip.MustParsePrefix("198.18.4.0/24")}); err == nil {
		t.Fatalf("a third node got %s: a taken subnet was handed out again", l3.Subnet)
	}
	logs := lb.String()
	for _, k := range unparseable {
		if n := strings.Count(logs+" ", "key="+prefix+"/subnets/"+k+" ") + strings.Count(logs, "key="+prefix+"/subnets/"+k+"\n"); n != 1 {
			t.Errorf("unparseable key %s logged %d times, want once:\n%s", k, n, logs)
		}
	}
}
