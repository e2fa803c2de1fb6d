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
			ext, err = chooseInterface(o, quiet)
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
