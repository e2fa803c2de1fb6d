//go:build linux

package main

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestIPv6ForwardingWarning: with IPv6 forwarding off the daemon says what
// to turn on; with it on it says nothing.
func TestIPv6ForwardingWarning(t *testing.T) {
	testbed.RequireRoot(t)
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	for _, v := range []string{"0", "1"} {
		var buf bytes.Buffer
		d := &daemon{o: &options{}, log: slog.New(slog.NewTextHandler(&buf, nil))}
		if err := h.Do(func() error {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte(v), 0o644); err != nil {
				return err
			}
			d.checkIPv6Forwarding()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		warned := strings.Contains(buf.String(), "net.ipv6.conf.all.forwarding=1")
		if warned != (v == "0") {
			t.Errorf("forwarding %s: log %q", v, buf.String())
		}
	}
}
