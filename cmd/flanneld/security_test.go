//go:build linux

package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
)

// TestSecurityAuthAndBind runs flanneld against an etcd with
// authentication on, as a user whose role reads <prefix>/config and
// read-writes <prefix>/subnets only, as upstream needs (password by flag on
// one node, by environment on the other): the nodes start, warning once
// that the PublicIP claim is not permitted. The credentials appear
// in no subnet file, log or /metrics, and the UDP socket is bound to the
// interface address, never 0.0.0.0 (upstream #394).
func TestSecurityAuthAndBind(t *testing.T) {
	t.Parallel()
	const (
		user   = "flannel-node"
		secret = "S3cr3t-etcd-pa55word-4f9a"
	)
	c := startWith(t, cluster.Options{Hosts: 3, EtcdMembers: 1, Idle: 3})
	ctx := t.Context()
	admin := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	_, err := c.Etcd.RoleAdd(ctx, "root")
	admin("role add root", err)
	_, err = c.Etcd.UserAdd(ctx, "root", "root-"+secret)
	admin("user add root", err)
	_, err = c.Etcd.UserGrantRole(ctx, "root", "root")
	admin("grant root", err)
	_, err = c.Etcd.RoleAdd(ctx, "flannel")
	admin("role add flannel", err)
	// Upstream's scope: read the config, read-write the subnets; the
	// PublicIP claim is refused and the nodes run without it.
	_, err = c.Etcd.RoleGrantPermission(ctx, "flannel", cluster.DefaultPrefix+"/config", "", clientv3.PermissionType(clientv3.PermRead))
	admin("grant flannel config", err)
	subnets := cluster.DefaultPrefix + "/subnets"
	_, err = c.Etcd.RoleGrantPermission(ctx, "flannel", subnets, clientv3.GetPrefixRangeEnd(subnets), clientv3.PermissionType(clientv3.PermReadWrite))
	admin("grant flannel subnets", err)
	_, err = c.Etcd.UserAdd(ctx, user, secret)
	admin("user add", err)
	_, err = c.Etcd.UserGrantRole(ctx, user, "flannel")
	admin("grant user", err)
	_, err = c.Etcd.AuthEnable(ctx)
	admin("auth enable", err)

	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	const wrong = "wrong-pa55word-77c1"
	n3.Args = []string{"--etcd-username=" + user, "--etcd-password=" + wrong}
	n1.Args = []string{"--etcd-username=" + user, "--etcd-password=" + secret}
	n2.Args = []string{"--etcd-username=" + user}
	n2.Environ = []string{"FLANNELD_ETCD_PASSWORD=" + secret}
	for _, n := range c.Nodes {
		if err := n.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A refused password fails start-up, saying so, without the password.
	waitFor(t, 20*time.Second, "the node with a wrong password exits", func() error {
		if n3.Running() {
			return fmt.Errorf("still running")
		}
		return nil
	})
	if code := n3.ExitCode(); code != 1 || !strings.Contains(n3.Log(), "authentication failed") || strings.Contains(n3.Log(), wrong) {
		t.Errorf("node with a wrong password: exit %d, want 1 with the authentication error and without the password:\n%s", code, n3.Log())
	}
	for _, n := range c.Nodes[:2] {
		if err := n.WaitReady(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if _, err := n.AddContainer(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	for _, n := range c.Nodes[:2] {
		if got := strings.Count(n.Log(), "PublicIP claim not permitted"); got != 1 {
			t.Errorf("%s: the refused PublicIP claim is logged %d times, want once:\n%s", n.Host.Name, got, n.Log())
		}
	}

	for _, n := range c.Nodes[:2] {
		raw, err := os.ReadFile(n.SubnetFile)
		if err != nil {
			t.Fatal(err)
		}
		_, metrics, err := n.HTTPGet(ctx, "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		for what, text := range map[string]string{"subnet file": string(raw), "log": n.Log(), "/metrics": metrics} {
			if strings.Contains(text, secret) {
				t.Errorf("%s: the etcd password appears in the %s", n.Host.Name, what)
			}
		}
		if strings.Contains(string(raw), user) {
			t.Errorf("%s: the etcd user name appears in the subnet file:\n%s", n.Host.Name, raw)
		}
		info, err := os.Stat(n.SubnetFile)
		if err != nil || info.Mode().Perm() != 0o644 {
			t.Errorf("%s: subnet file mode %v %v, want 0644", n.Host.Name, info.Mode(), err)
		}
	}

	// /proc/net/udp inside each host: port 8285 bound to the host's own
	// address only; nothing on the IPv6 wildcard either.
	for _, n := range c.Nodes[:2] {
		out, err := n.Host.Run(ctx, "cat", "/proc/net/udp", "/proc/net/udp6")
		if err != nil {
			t.Fatal(err)
		}
		var bound []netip.AddrPort
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 2 || !strings.Contains(f[1], ":") {
				continue
			}
			ap, ok := parseProcNetAddr(f[1])
			if ok && ap.Port() == 8285 {
				bound = append(bound, ap)
			}
		}
		if len(bound) == 0 {
			t.Fatalf("%s: nothing bound to port 8285:\n%s", n.Host.Name, out)
		}
		for _, ap := range bound {
			if ap.Addr() != n.Host.Addr {
				t.Errorf("%s: a UDP socket is bound to %s, want only %s:8285", n.Host.Name, ap, n.Host.Addr)
			}
		}
		t.Logf("MEASURED %s: UDP 8285 sockets bound to %v", n.Host.Name, bound)
		auditSockets(t, n)
	}
}

// auditSockets finds every UDP socket and TCP listener in the node's
// namespace (flanneld is the only program there, etcd runs elsewhere) in
// SECURITY.md's listener table, and none on a wildcard address but the
// fast path's handoff device.
func auditSockets(t *testing.T, n *cluster.Node) {
	t.Helper()
	doc, err := os.ReadFile("../../SECURITY.md")
	if err != nil {
		t.Fatal(err)
	}
	fastPath := fastPathOn(t, n)
	for _, proto := range []string{"udp", "udp6", "tcp", "tcp6"} {
		out, err := n.Host.Run(t.Context(), "cat", "/proc/net/"+proto)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(out, "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 4 || strings.HasPrefix(proto, "tcp") && f[3] != "0A" { // TCP: listeners only
				continue
			}
			ap, ok := parseProcNetAddr(f[1])
			if !ok {
				t.Fatalf("%s: cannot parse %q", proto, f[1])
			}
			row := socketRow(proto, ap, n, fastPath)
			if row == "" {
				t.Errorf("%s: %s socket %s is in no row of SECURITY.md's listener table", n.Host.Name, proto, ap)
				continue
			}
			if !strings.Contains(string(doc), "| "+row+" |") {
				t.Errorf("SECURITY.md's listener table has no row %q (for %s %s)", row, proto, ap)
			}
			t.Logf("MEASURED %s: %s %s: %s", n.Host.Name, proto, ap, row)
		}
	}
}

// socketRow names the listener-table row a socket of flanneld belongs to.
func socketRow(proto string, ap netip.AddrPort, n *cluster.Node, fastPath bool) string {
	switch {
	case proto == "udp" && ap.Addr() == n.Host.Addr && ap.Port() == 8285:
		return "UDP data plane"
	case proto == "udp" && ap.Addr() == n.Host.Addr && fastPath:
		return "fast-path probe socket"
	case proto == "udp" && ap == netip.MustParseAddrPort("0.0.0.0:8286") && fastPath:
		return "fast-path handoff device"
	case proto == "tcp" && ap.Port() == cluster.HealthPort && ap.Addr().IsLoopback():
		return "health listener"
	}
	return ""
}

// parseProcNetAddr parses a local_address of /proc/net/udp ("0102000C:205D",
// the address as the kernel's host-order dump of a big-endian word) or of
// /proc/net/udp6 (32 hex digits).
func parseProcNetAddr(s string) (netip.AddrPort, bool) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	var b [16]byte
	if len(hexAddr) != 8 && len(hexAddr) != 32 {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(hexAddr)/8; i++ {
		w, err := strconv.ParseUint(hexAddr[8*i:8*i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, false
		}
		// Each 32-bit word is printed in host (little-endian) order.
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
	}
	if len(hexAddr) == 8 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(port)), true
	}
	return netip.AddrPortFrom(netip.AddrFrom16(b), uint16(port)), true
}

func TestParseProcNetAddr(t *testing.T) {
	for in, want := range map[string]string{
		"010200C0:205D":                         "192.0.2.1:8285",
		"00000000:205D":                         "0.0.0.0:8285",
		"00000000000000000000000000000000:205D": "[::]:8285",
		"0000000000000000FFFF0000010200C0:0035": "[::ffff:192.0.2.1]:53",
	} {
		got, ok := parseProcNetAddr(in)
		if !ok || got.String() != want {
			t.Errorf("parseProcNetAddr(%q) = %v %v, want %s", in, got, ok, want)
		}
	}
	if _, ok := parseProcNetAddr("zz:1"); ok {
		t.Error("parsed garbage")
	}
}
