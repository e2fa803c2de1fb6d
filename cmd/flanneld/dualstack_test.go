//go:build linux

package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/lease"
)

// The config of upstream's dual-stack run in issue 13, in the test ranges.
const (
	dualStackConfig = `{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"udp"}}`
	ipv6OnlyConfig  = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8:100::/48","Backend":{"Type":"udp"}}`
)

var ipv6Network = netip.MustParsePrefix("2001:db8:100::/48")

// subnetKVs reads every key under <prefix>/subnets.
func subnetKVs(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	resp, err := cli.Get(t.Context(), subnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string]string{}
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = string(kv.Value)
	}
	return kvs
}

// dumpState logs the subnet files and keys, sorted, as a closing note
// quotes them.
func dumpState(t *testing.T, nodes []*cluster.Node, kvs map[string]string) {
	t.Helper()
	for _, n := range nodes {
		b, _ := os.ReadFile(n.SubnetFile)
		t.Logf("%s subnet file:\n%s", n.Host.Name, b)
	}
	keys := make([]string, 0, len(kvs))
	for k := range kvs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		t.Logf("etcd %s = %s", k, kvs[k])
	}
}

// TestDualStackCluster runs two of our nodes on upstream's dual-stack
// config: each leases an IPv4 and an IPv6 subnet under upstream's key
// form with upstream's value bytes, writes upstream's subnet file, carries
// IPv4 between containers as before, gives flannel0 no IPv6 address or
// route (as upstream's udp backend), and finds its lease again after a
// restart.
func TestDualStackCluster(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, Config: dualStackConfig})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]

	want := map[string]string{}
	for _, n := range c.Nodes {
		env := n.Env
		if !env.Subnet.IsValid() || env.IPv6Subnet.Bits() != 64 || !ipv6Network.Contains(env.IPv6Subnet.Addr()) || env.IPv6Network != ipv6Network {
			t.Fatalf("%s: subnet file %+v, want an IPv4 and a /64 IPv6 subnet of %s", n.Host.Name, env, ipv6Network)
		}
		file := fmt.Sprintf("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_IPV6_NETWORK=2001:db8:100::/48\nFLANNEL_IPV6_SUBNET=%s/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
			env.Subnet.Addr().Next(), env.IPv6Subnet.Addr().Next())
		if b, err := os.ReadFile(n.SubnetFile); err != nil || string(b) != file {
			t.Errorf("%s: subnet file %q %v, want %q", n.Host.Name, b, err, file)
		}
		key := subnetsPrefix + env.Subnet.Addr().String() + "-24&" + env.IPv6Subnet.Addr().String() + "-64"
		want[key] = `{"PublicIP":"` + n.Host.Addr.String() + `","PublicIPv6":null}`
		if !strings.Contains(n.Log(), "Dual-stack lease: IPv6 subnet "+env.IPv6Subnet.String()) {
			t.Errorf("%s: the log does not say what the dual-stack lease gives:\n%s", n.Host.Name, n.Log())
		}
	}
	kvs := subnetKVs(t, c.Etcd)
	dumpState(t, c.Nodes, kvs)
	if !maps(kvs, want) {
		t.Errorf("etcd subnets %v, want %v", kvs, want)
	}
	if n1.Env.IPv6Subnet == n2.Env.IPv6Subnet || n1.Env.Subnet == n2.Env.Subnet {
		t.Errorf("both nodes hold %v / %v", n1.Env, n2.Env)
	}

	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	waitPing(t, 10*time.Second, n2.Container, n1.Container.Addr)

	for _, n := range c.Nodes {
		out, err := n.Host.Run(ctx, "sh", "-c", "ip -6 addr show dev flannel0 scope global; ip -6 route show 2001:db8:100::/48")
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s: flannel0 has IPv6 state (upstream's udp backend gives it none): %q %v", n.Host.Name, out, err)
		}
	}

	// A restart finds the dual-stack lease by PublicIP (and the subnet
	// file): same key, same subnets.
	before := n2.Env
	n2.Stop(syscall.SIGTERM, 10*time.Second)
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if n2.Env != before {
		t.Errorf("after restart %+v, want %+v", n2.Env, before)
	}
	if got := subnetKVs(t, c.Etcd); !maps(got, want) {
		t.Errorf("etcd subnets after restart %v, want %v", got, want)
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestIPv6OnlyCluster runs two of our nodes on an IPv6-only config: they
// start, lease IPv6 subnets under upstream's key form (0.0.0.0-0&...), write
// the subnet file's IPv6 lines only, say in the log that they carry no
// traffic yet, and open no TUN device.
func TestIPv6OnlyCluster(t *testing.T) {
	t.Parallel()
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "ip")
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Flanneld: flanneldBin, Dir: t.TempDir(), Hosts: 2, Idle: 1, Config: ipv6OnlyConfig})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs())
		}
		c.Close()
	})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	n2.Environ = []string{"FLANNELD_PUBLIC_IPV6=2001:db8:1::2"}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{}
	for _, n := range c.Nodes {
		env := n.Env
		if env.Subnet.IsValid() || env.Network.IsValid() || env.IPv6Subnet.Bits() != 64 || !ipv6Network.Contains(env.IPv6Subnet.Addr()) {
			t.Fatalf("%s: subnet file %+v, want only an IPv6 /64 of %s", n.Host.Name, env, ipv6Network)
		}
		file := fmt.Sprintf("FLANNEL_IPV6_NETWORK=2001:db8:100::/48\nFLANNEL_IPV6_SUBNET=%s/64\nFLANNEL_MTU=1452\nFLANNEL_IPMASQ=false\n", env.IPv6Subnet.Addr().Next())
		if b, err := os.ReadFile(n.SubnetFile); err != nil || string(b) != file {
			t.Errorf("%s: subnet file %q %v, want %q", n.Host.Name, b, err, file)
		}
		if log := n.Log(); !strings.Contains(log, "IPv6-only network (EnableIPv4 false)") || !strings.Contains(log, "carries NO traffic") {
			t.Errorf("%s: the log does not say what works:\n%s", n.Host.Name, log)
		}
		if out, err := n.Host.Run(ctx, "ip", "-o", "link", "show", "type", "tun"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s: TUN devices %q %v, want none", n.Host.Name, out, err)
		}
		want[subnetsPrefix+"0.0.0.0-0&"+env.IPv6Subnet.Addr().String()+"-64"] = ""
	}
	if n1.Env.IPv6Subnet == n2.Env.IPv6Subnet {
		t.Errorf("both nodes hold %s", n1.Env.IPv6Subnet)
	}
	kvs := subnetKVs(t, c.Etcd)
	dumpState(t, c.Nodes, kvs)
	if len(kvs) != len(want) {
		t.Fatalf("etcd subnets %v, want keys %v", kvs, want)
	}
	n2key := subnetsPrefix + "0.0.0.0-0&" + n2.Env.IPv6Subnet.Addr().String() + "-64"
	if v := kvs[n2key]; v != `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8:1::2"}` {
		t.Errorf("%s = %q, want FLANNELD_PUBLIC_IPV6 in upstream's value", n2key, v)
	}
	for k, v := range kvs {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected key %s", k)
		}
		if a, err := lease.ParseLeaseAttrs([]byte(v)); err != nil || a.PublicIP.IsValid() || !a.PublicIPv6.Is6() {
			t.Errorf("%s = %s: %+v %v, want PublicIP 0.0.0.0 and a PublicIPv6", k, v, a, err)
		}
	}
}

// TestDualStackMigration replaces an upstream node of a dual-stack cluster:
// the lease upstream left in etcd (its key form and value bytes, on a 24 h
// etcd lease) is found by PublicIP and kept, key and subnets unchanged, and
// IPv4 flows to the other node.
func TestDualStackMigration(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, Idle: 1, Config: dualStackConfig})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	key := subnetsPrefix + "198.18.77.0-24&2001:db8:100:4d::-64"
	value := `{"PublicIP":"` + n2.Host.Addr.String() + `","PublicIPv6":null}`
	grant, err := c.Etcd.Grant(ctx, 86400)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Etcd.Put(ctx, key, value, clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if n2.Env.Subnet != netip.MustParsePrefix("198.18.77.0/24") || n2.Env.IPv6Subnet != netip.MustParsePrefix("2001:db8:100:4d::/64") {
		t.Fatalf("took %+v, want upstream's lease 198.18.77.0/24 and 2001:db8:100:4d::/64", n2.Env)
	}
	resp, err := c.Etcd.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != value || resp.Kvs[0].Lease == int64(grant.ID) {
		t.Fatalf("%s after the takeover: %v %v; want the same value on a fresh etcd lease", key, resp, err)
	}
	if kvs := subnetKVs(t, c.Etcd); len(kvs) != 2 {
		t.Errorf("etcd subnets %v, want upstream's key and node 1's", kvs)
	}
	if !strings.Contains(n2.Log(), "Found lease (ip: 198.18.77.0/24 ipv6: 2001:db8:100:4d::/64) for current IP ("+n2.Host.Addr.String()+"), reusing") {
		t.Errorf("log lacks upstream's reuse line:\n%s", n2.Log())
	}
	if _, err := n2.AddContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	waitPing(t, 10*time.Second, n2.Container, n1.Container.Addr)
}
