//go:build linux

package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestUpstreamUnitStarts starts a node the way an upstream unit would on a
// host where flannel0 is already taken (a leftover TUN): with upstream's
// klog flags, --public-ipv6 (no ignored flag: it is ours, unused in an
// IPv4-only network as upstream's), --kube-subnet-mgr=false and a stray argument.
// It starts with one warning about the ignored flags and one about the
// argument, takes flannel1 as upstream's "flannel%d" does, reports it in the
// log and /metrics, carries traffic to the other node, and routes to an
// upstream node that holds a dual-stack key.
func TestUpstreamUnitStarts(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, Idle: 1})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if out, err := n2.Host.Run(ctx, "ip", "tuntap", "add", "dev", "flannel0", "mode", "tun"); err != nil {
		t.Fatalf("leftover flannel0: %v\n%s", err, out)
	}
	n2.Args = []string{"--vmodule=main=2", "--log_backtrace_at=main.go:1", "--logtostderr", "--public-ipv6=2001:db8::2",
		"--kube-subnet-mgr=false", "-v=2", "stray-argument", "--iface=nonexistent0"}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := n2.AddContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	waitPing(t, 10*time.Second, n2.Container, n1.Container.Addr)

	// An upstream node of a dual-stack cluster holds its lease in the
	// dual-stack key form: both nodes route to it.
	if _, err := c.Etcd.Put(ctx, subnetsPrefix+"198.18.250.0-24&2001:db8:100:fa::-64", `{"PublicIP":"192.0.2.250","PublicIPv6":"2001:db8::fa"}`); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, 10*time.Second, 2, n1, n2)

	log := n2.Log()
	if !strings.Contains(log, "Opened TUN device") || !strings.Contains(log, "device=flannel1") {
		t.Errorf("the log does not name flannel1:\n%s", log)
	}
	if out, err := n2.Host.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "flannel1"); err != nil || !strings.Contains(out, n2.Env.Subnet.Addr().String()+"/32") {
		t.Errorf("flannel1: %q %v, want address %s/32", out, err, n2.Env.Subnet.Addr())
	}
	_, metrics, err := n2.HTTPGet(ctx, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, `flannel_tun_device_info{device="flannel1"} 1`) {
		t.Errorf("/metrics does not report flannel1:\n%s", metrics)
	}
	if n := strings.Count(log, "Ignoring flags that have no meaning"); n != 1 || !strings.Contains(log, "--vmodule") || strings.Contains(log, "--public-ipv6") {
		t.Errorf("%d warnings about ignored flags, want one naming them:\n%s", n, log)
	}
	if !strings.Contains(log, "stray-argument") {
		t.Errorf("no warning about the stray argument:\n%s", log)
	}
	if !strings.Contains(log, "level=DEBUG") {
		t.Errorf("-v=2 did not enable debug logs")
	}
}

// TestNFTablesCluster runs two nodes with EnableNFTables and --ip-masq:
// the rules are upstream's nftables table (and no iptables chain), a rule
// deleted by hand is back within --iptables-resync, and containers reach
// each other.
func TestNFTablesCluster(t *testing.T) {
	t.Parallel()
	testbed.RequireTool(t, "nft")
	c := startWith(t, cluster.Options{Hosts: 2, Args: []string{"--ip-masq", "--iptables-resync=1"},
		Config: `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"},"EnableNFTables":true}`})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	for _, n := range c.Nodes {
		out, err := n.Host.Run(ctx, "nft", "list", "table", "ip", "flannel-ipv4")
		if err != nil {
			t.Fatalf("%s: %v\n%s", n.Host.Name, err, out)
		}
		for _, want := range []string{"type nat hook postrouting priority srcnat", "type filter hook forward priority filter",
			"ip saddr " + n.Env.Subnet.String() + " ip daddr 198.18.0.0/16 return", "ip daddr 198.18.0.0/16 accept"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: flannel-ipv4 lacks %q:\n%s", n.Host.Name, want, out)
			}
		}
		if out, err := n.Host.Run(ctx, "iptables-save"); err == nil && strings.Contains(out, "FLANNEL") {
			t.Errorf("%s: iptables rules next to the nftables ones:\n%s", n.Host.Name, out)
		}
	}
	if out, err := n1.Host.Run(ctx, "nft", "flush", "chain", "ip", "flannel-ipv4", "postrtg"); err != nil {
		t.Fatalf("flush: %v\n%s", err, out)
	}
	waitFor(t, 10*time.Second, "the flushed chain is rebuilt", func() error {
		out, err := n1.Host.Run(ctx, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg")
		if err != nil || !strings.Contains(out, "masquerade") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}
