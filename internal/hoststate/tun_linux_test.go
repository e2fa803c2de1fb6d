//go:build linux

package hoststate

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestIPv6ForwardingWarning: with IPv6 forwarding off the TUN says what
// to turn on; with it on it says nothing.
func TestIPv6ForwardingWarning(t *testing.T) {
	testbed.RequireRoot(t)
	h := testbed.NewT(t, testbed.Options{Hosts: 1}).Hosts[0]
	for _, v := range []string{"0", "1"} {
		var buf bytes.Buffer
		tun := TUN{Logger: slog.New(slog.NewTextHandler(&buf, nil))}
		if err := h.Do(func() error {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte(v), 0o644); err != nil {
				return err
			}
			tun.checkIPv6Forwarding()
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
