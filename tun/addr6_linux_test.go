package tun

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var overlay6 = netip.MustParsePrefix("2001:db8:100::/48")

// ipv6State lists flannel0's IPv6 addresses (with "nodad" when set) and the
// destinations of its IPv6 routes, link-local ones included.
func ipv6State(t *testing.T) (addrs, routes []string) {
	t.Helper()
	link, err := netlink.LinkByName("flannel0")
	if err != nil {
		t.Fatal(err)
	}
	al, err := netlink.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range al {
		s := a.IPNet.String()
		if a.Flags&unix.IFA_F_NODAD != 0 {
			s += " nodad"
		}
		addrs = append(addrs, s)
	}
	rl, err := netlink.RouteList(link, netlink.FAMILY_V6)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rl {
		if r.Dst != nil && r.Type == unix.RTN_UNICAST {
			routes = append(routes, r.Dst.String())
		}
	}
	return addrs, routes
}

// TestConfigureIPv6DualStack adds the IPv6 address and route to a device
// Configure set up, and moves the address as a re-acquired lease does.
func TestConfigureIPv6DualStack(t *testing.T) {
	withDevice(t, 1, func(d *Device, _ *testbed.Host) {
		own := netip.MustParseAddr("2001:db8:100:1a::")
		if err := d.ConfigureIPv6(own, 1472, 1000, overlay6); err != nil {
			t.Fatal(err)
		}
		addrs, routes := ipv6State(t)
		if strings.Join(addrs, ",") != "2001:db8:100:1a::/128 nodad" {
			t.Errorf("IPv6 addresses %v, want only 2001:db8:100:1a::/128 nodad (no link-local)", addrs)
		}
		if !strings.Contains(strings.Join(routes, ","), "2001:db8:100::/48") {
			t.Errorf("IPv6 routes %v, want 2001:db8:100::/48 dev flannel0", routes)
		}
		next := netip.MustParseAddr("2001:db8:100:2b::")
		if err := d.ConfigureIPv6(next, 1472, 1000, overlay6); err != nil {
			t.Fatalf("second ConfigureIPv6: %v", err)
		}
		if err := d.RemoveIPv6Addr(own); err != nil {
			t.Fatal(err)
		}
		if addrs, _ := ipv6State(t); strings.Join(addrs, ",") != "2001:db8:100:2b::/128 nodad" {
			t.Errorf("IPv6 addresses after the move %v, want only the new one", addrs)
		}
		link, _ := netlink.LinkByName("flannel0")
		if v4, _ := netlink.AddrList(link, netlink.FAMILY_V4); len(v4) != 1 {
			t.Errorf("IPv4 addresses %v, want Configure's one kept", v4)
		}
	})
}

// TestConfigureIPv6Only sets up a device with IPv6 alone (an IPv6-only
// network) and refuses an MTU IPv6 cannot run on.
func TestConfigureIPv6Only(t *testing.T) {
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	testbed.RequireTUN(t)
	err := h.Do(func() error {
		d, err := Open("flannel0", 1)
		if err != nil {
			return err
		}
		defer d.Close()
		if err := d.ConfigureIPv6(netip.MustParseAddr("2001:db8:100:1a::"), 1279, 0, overlay6); err == nil || !strings.Contains(err.Error(), "1280") {
			t.Errorf("MTU 1279: %v, want an error naming IPv6's minimum", err)
		}
		if err := d.ConfigureIPv6(netip.MustParseAddr("198.18.0.0"), 1452, 0, overlay6); err == nil {
			t.Error("an IPv4 address was accepted")
		}
		if err := d.ConfigureIPv6(netip.MustParseAddr("2001:db8:100:1a::"), 1452, 0, overlay6); err != nil {
			return err
		}
		addrs, routes := ipv6State(t)
		if strings.Join(addrs, ",") != "2001:db8:100:1a::/128 nodad" || !strings.Contains(strings.Join(routes, ","), "2001:db8:100::/48") {
			t.Errorf("IPv6 addresses %v routes %v, want the /128 and a route for the network", addrs, routes)
		}
		link, err := netlink.LinkByName("flannel0")
		if err != nil {
			return err
		}
		if a := link.Attrs(); a.MTU != 1452 || a.OperState == netlink.OperDown {
			t.Errorf("MTU %d state %v, want 1452 and not down", a.MTU, a.OperState)
		}
		if v4, _ := netlink.AddrList(link, netlink.FAMILY_V4); len(v4) != 0 {
			t.Errorf("IPv4 addresses %v on an IPv6-only device", v4)
		}
		b, _ := os.ReadFile("/proc/sys/net/ipv6/conf/flannel0/addr_gen_mode")
		if strings.TrimSpace(string(b)) != "1" {
			t.Errorf("addr_gen_mode %q, want 1", b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
