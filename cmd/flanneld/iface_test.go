//go:build linux

package main

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
	choose := func(o *options) (ext *extIface, err error) {
		if derr := h.Do(func() error {
			ext, err = chooseInterface(o, stack{v4: true}, quiet)
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return ext, err
	}

	for _, tc := range []struct {
		name    string
		o       options
		iface   string
		addr    string
		ext     string
		wantErr string
	}{
		{name: "by name", o: options{ifaces: stringList{"eth0"}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "by IP", o: options{ifaces: stringList{"192.0.2.1"}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "first match wins", o: options{ifaces: stringList{"nosuch0", "192.0.2.99", "eth0", "lo"}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "regex on IP", o: options{ifaceRegexes: stringList{`^192\.0\.2\.`}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "regex on name", o: options{ifaceRegexes: stringList{`^nomatch$`, `^eth`}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "iface before regex", o: options{ifaces: stringList{"nosuch0"}, ifaceRegexes: stringList{`^eth0$`}}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "can reach", o: options{ifaceCanReach: "192.0.2.2"}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "public ip picks its interface", o: options{publicIP: "192.0.2.1"}, iface: "eth0", addr: "192.0.2.1", ext: "192.0.2.1"},
		{name: "public ip advertised", o: options{ifaces: stringList{"eth0"}, publicIP: "198.51.100.7"}, iface: "eth0", addr: "192.0.2.1", ext: "198.51.100.7"},
		{name: "no default route", o: options{}, wantErr: "unable to find default route"},
		{name: "public ip not local", o: options{publicIP: "198.51.100.7"}, wantErr: "no interface with address 198.51.100.7"},
		{name: "bad public ip", o: options{publicIP: "not-an-ip"}, wantErr: "invalid public IP address: not-an-ip"},
		{name: "nothing matches", o: options{ifaces: stringList{"nosuch0"}, ifaceRegexes: stringList{`^nomatch$`}}, wantErr: "Failed to find interface to use that matches the interfaces and/or regexes provided"},
		{name: "lo has no usable address", o: options{ifaces: stringList{"lo"}}, wantErr: "Failed to find interface"},
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
	ext, err := choose(&options{})
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
	choose := func(o *options, st stack) (ext *extIface, err error) {
		if derr := h.Do(func() error {
			ext, err = chooseInterface(o, st, quiet)
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return ext, err
	}
	dual, v6only := stack{v4: true, v6: true}, stack{v6: true}

	// No IPv6 address (not even the link-local one, which upstream would
	// take too): dual-stack still starts, PublicIPv6 stays null; IPv6-only
	// cannot.
	ctx := t.Context()
	if out, err := h.Run(ctx, "sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"); err != nil {
		t.Fatal(out, err)
	}
	if ext, err := choose(&options{ifaces: stringList{"eth0"}}, dual); err != nil || ext.ExtV6Addr.IsValid() || ext.ExtAddr.String() != "192.0.2.1" {
		t.Fatalf("dual-stack without IPv6 address: %+v %v", ext, err)
	}
	if _, err := choose(&options{ifaces: stringList{"eth0"}}, v6only); err == nil || !strings.Contains(err.Error(), "Failed to find interface") {
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
		o                options
		st               stack
		v4, ext4, v6, x6 string
		wantErr          string
	}{
		{name: "dual by name", o: options{ifaces: stringList{"eth0"}}, st: dual, v4: "192.0.2.1", ext4: "192.0.2.1", v6: "2001:db8:1::1"},
		{name: "dual public ipv6", o: options{ifaces: stringList{"eth0"}, publicIPv6: "2001:db8:2::7"}, st: dual, v4: "192.0.2.1", ext4: "192.0.2.1", v6: "2001:db8:1::1", x6: "2001:db8:2::7"},
		{name: "ipv4 ignores ipv6", o: options{ifaces: stringList{"eth0"}, publicIPv6: "2001:db8:2::7"}, st: stack{v4: true}, v4: "192.0.2.1", ext4: "192.0.2.1"},
		{name: "v6 by name", o: options{ifaces: stringList{"eth0"}}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 by IP", o: options{ifaces: stringList{"2001:db8:1::1"}}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 regex on IP", o: options{ifaceRegexes: stringList{`^2001:db8:1::1$`}}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 public ipv6 picks its interface", o: options{publicIPv6: "2001:db8:1::1"}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:1::1"},
		{name: "v6 public ipv6 advertised", o: options{ifaces: stringList{"eth0"}, publicIPv6: "2001:db8:2::7", publicIP: "192.0.2.1"}, st: v6only, v6: "2001:db8:1::1", x6: "2001:db8:2::7"},
		{name: "v6 no default route", o: options{}, st: v6only, wantErr: "unable to find default v6 route"},
		{name: "bad public ipv6", o: options{publicIPv6: "192.0.2.1"}, st: dual, wantErr: "invalid public IPv6 address: 192.0.2.1"},
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
	if ext, err := choose(&options{}, v6only); err != nil || ext.Name != "eth0" || ext.ExtV6Addr.String() != "2001:db8:1::1" {
		t.Fatalf("IPv6 default route interface: %+v %v, want eth0", ext, err)
	}
}
