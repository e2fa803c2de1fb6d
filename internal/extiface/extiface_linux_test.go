//go:build linux

package extiface

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

func TestChooseInterface(t *testing.T) {
	b := testbed.NewT(t, testbed.Options{Hosts: 2})
	h := b.Hosts[0]
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	choose := func(o *Selection) (ext *Iface, err error) {
		if derr := h.Do(func() error {
			ext, err = Choose(*o, Stack{V4: true}, quiet)
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return ext, err
	}

	for _, tc := range []struct {
		name    string
		o       Selection
		iface   string
		addr    string
		ext     string
		wantErr string
	}{
		{name: "by name", o: Selection{Ifaces: []string{"eth0"}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "by IP", o: Selection{Ifaces: []string{"192.0.2.1"}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "first match wins", o: Selection{Ifaces: []string{"nosuch0", "192.0.2.99", "eth0", "lo"}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "regex on IP", o: Selection{IfaceRegexes: []string{`^192\.0\.2\.`}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "regex on name", o: Selection{IfaceRegexes: []string{`^nomatch$`, `^eth`}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "iface before regex", o: Selection{Ifaces: []string{"nosuch0"}, IfaceRegexes: []string{`^eth0$`}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "can reach", o: Selection{IfaceCanReach: "192.0.2.2"}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "public ip picks its interface", o: Selection{PublicIP: "192.0.2.1"}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "public ip advertised", o: Selection{Ifaces: []string{"eth0"}, PublicIP: "198.51.100.7"}, iface: "eth0", addr: "192.0.2.1", ext: "198.51.100.7"},
		{name: "no default route", o: Selection{}, wantErr: "unable to find default route"},
		{name: "public ip not local", o: Selection{PublicIP: "198.51.100.7"}, wantErr: "no interface with address 198.51.100.7"},
		{name: "bad public ip", o: Selection{PublicIP: "not-an-ip"}, wantErr: "invalid public IP address: not-an-ip"},
		{name: "nothing matches", o: Selection{Ifaces: []string{"nosuch0"}, IfaceRegexes: []string{`^nomatch$`}}, wantErr: "Failed to find interface to use that matches the interfaces and/or regexes provided"},
		{name: "lo has no usable address", o: Selection{Ifaces: []string{"lo"}}, wantErr: "Failed to find interface"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext, err := choose(&tc.o)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ext.Name != tc.iface || ext.IfaceAddr.String() != tc.addr || ext.ExtAddr.String() != tc.ext || ext.MTU != 1500 {
				t.Fatalf("got %+v, want %s %s ext %s mtu 1500", ext, tc.iface, tc.addr, tc.ext)
			}
		})
	}

	if out, err := h.Run(t.Context(), "ip", "route", "add", "default", "via", "192.0.2.2"); err != nil {
		t.Fatal(out, err)
	}
	ext, err := choose(&Selection{})
	if err != nil || ext.Name != "eth0" {
		t.Fatalf("default route interface: %+v %v, want eth0", ext, err)
	}
}

// TestChooseInterfaceIPv6 follows upstream's ipmatch for the IPv6 stacks:
// in a dual-stack network the IPv4 selection decides and only an explicit
// --public-ipv6 is advertised (upstream's udp backend advertises none); in
// an IPv6-only network the IPv6 addresses and the IPv6 default route
// decide, and the interface's IPv6 address is advertised by default.
func TestChooseInterfaceIPv6(t *testing.T) {
	b := testbed.NewT(t, testbed.Options{Hosts: 2})
	h := b.Hosts[0]
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	choose := func(o *Selection, st Stack) (ext *Iface, err error) {
		if derr := h.Do(func() error {
			ext, err = Choose(*o, st, quiet)
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return ext, err
	}
	dual, v6only := Stack{V4: true, V6: true}, Stack{V6: true}

	// No IPv6 address (not even the link-local one, which upstream would
	// take too): dual-stack still starts, PublicIPv6 stays null; IPv6-only
	// cannot.
	ctx := t.Context()
	if out, err := h.Run(ctx, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"); err != nil {
		t.Fatal(out, err)
	}
	if ext, err := choose(&Selection{Ifaces: []string{"eth0"}}, dual); err != nil || ext.ExtV6Addr.IsValid() || ext.ExtAddr.String() != "192.0.2.1" {
		t.Fatalf("dual-stack without IPv6 address: %+v %v", ext, err)
	}
	if _, err := choose(&Selection{Ifaces: []string{"eth0"}}, v6only); err == nil || !strings.Contains(err.Error(), "Failed to find interface") {
		t.Fatalf("IPv6-only without IPv6 address: %v", err)
	}
	for _, args := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"},
		{"ip", "-6", "addr", "add", "2001:db8:1::1/64", "dev", "eth0", "nodad"},
		{"ip", "-6", "addr", "add", "2001:db8:1::99/64", "dev", "lo"},
	} {
		if out, err := h.Run(ctx, args[0], args[1:]...); err != nil {
			t.Fatal(out, err)
		}
	}

	for _, tc := range []struct {
		name             string
		o                Selection
		st               Stack
		v4, ext4, v6, x6 string
		wantErr          string
	}{
		{name: "dual by name", o: Selection{Ifaces: []string{"eth0"}}, st: dual, v4: "192.0.2.1", ext4: "192.0.2.1", v6: "2001:db8:1::1"},
		{name: "dual public ipv6", o: Selection{Ifaces: []string{"eth0"}, PublicIPv6: "2001:db8:2::7"}, st: dual, v4: "192.0.2.1", ext4: "192.0.2.1", v6: "2001:db8:1::1", x6: "2001:db8:2::7"},
		{name: "ipv4 ignores ipv6", o: Selection{Ifaces: []string{"eth0"}, PublicIPv6: "2001:db8:2::7"}, st: Stack{V4: true}, v4: "192.0.2.1", ext4: "192.0.2.1"},
		{name: "v6 by name", o: Selection{Ifaces: []string{"eth0"}}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 by IP", o: Selection{Ifaces: []string{"2001:db8:1::1"}}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 regex on IP", o: Selection{IfaceRegexes: []string{`^2001:db8:1::1$`}}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 public ipv6 picks its interface", o: Selection{PublicIPv6: "2001:db8:1::1"}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 public ipv6 advertised", o: Selection{Ifaces: []string{"eth0"}, PublicIPv6: "2001:db8:2::7", PublicIP: "192.0.2.1"}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:2::7"},
		{name: "v6 no default route", o: Selection{}, st: v6only, wantErr: "unable to find default v6 route"},
		{name: "bad public ipv6", o: Selection{PublicIPv6: "192.0.2.1"}, st: dual, wantErr: "invalid public IPv6 address: 192.0.2.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext, err := choose(&tc.o, tc.st)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			str := func(a interface{ IsValid() bool }, s string) string {
				if !a.IsValid() {
					return ""
				}
				return s
			}
			got := []string{str(ext.IfaceAddr, ext.IfaceAddr.String()), str(ext.ExtAddr, ext.ExtAddr.String()), str(ext.IfaceV6Addr, ext.IfaceV6Addr.String()), str(ext.ExtV6Addr, ext.ExtV6Addr.String())}
			want := []string{tc.v4, tc.ext4, tc.v6, tc.x6}
			if ext.Name != "eth0" || strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("got %s %v, want eth0 %v", ext.Name, got, want)
			}
		})
	}

	if out, err := h.Run(ctx, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::2", "dev", "eth0"); err != nil {
		t.Fatal(out, err)
	}
	if ext, err := choose(&Selection{}, v6only); err != nil || ext.Name != "eth0" || ext.ExtV6Addr.String() != "2001:db8:1::1" {
		t.Fatalf("IPv6 default route interface: %+v %v, want eth0", ext, err)
	}
}
