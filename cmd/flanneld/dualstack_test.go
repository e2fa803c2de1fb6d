//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/lease"
)

// The config of upstream's dual-stack run in issue 13, in the test ranges.
const (
	dualStackConfig = cluster.DualStackConfig
	ipv6OnlyConfig  = cluster.IPv6OnlyConfig
)

var ipv6Network = cluster.IPv6Network

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
// form with upstream's value bytes, writes upstream's subnet file, gives
// flannel0 its IPv6 address and route, carries IPv4 and IPv6 between
// containers both ways (a TCP transfer over inner IPv6 arrives intact),
// and finds its lease again after a restart.
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
		checkTUNIPv6(t, n)
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
	waitPing(t, 10*time.Second, n1.Container, n2.ContainerIPv6)
	waitPing(t, 10*time.Second, n2.Container, n1.ContainerIPv6)
	transfer6(t, n1, n2, 5601)

	// A restart finds the dual-stack lease by PublicIP (and the subnet
	// file): same key, same subnets; IPv6 flows again.
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
	waitPing(t, 10*time.Second, n1.Container, n2.ContainerIPv6)
}

// checkTUNIPv6 checks flannel0's IPv6 state: the network address of the
// node's IPv6 subnet as /128 and a route for the IPv6 network.
func checkTUNIPv6(t *testing.T, n *cluster.Node) {
	t.Helper()
	out, err := n.Host.Run(t.Context(), "sh", "-c", "ip -6 -o addr show dev flannel0; ip -6 route show "+ipv6Network.String())
	if err != nil {
		t.Fatalf("%s: %v", n.Host.Name, err)
	}
	addr := n.Env.IPv6Subnet.Addr().String() + "/128"
	if !strings.Contains(out, "inet6 "+addr) || !strings.Contains(out, ipv6Network.String()+" dev flannel0") || strings.Contains(out, "fe80::") {
		t.Errorf("%s: flannel0's IPv6 state %q, want %s, a route for %s and no link-local address", n.Host.Name, out, addr, ipv6Network)
	}
}

// transfer6 moves 8 MB over TCP over inner IPv6 from a's container to b's
// and back, each with matching SHA-256 at both ends.
func transfer6(t *testing.T, a, b *cluster.Node, port int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for _, p := range [][2]*cluster.Node{{a, b}, {b, a}} {
		from, to := p[0], p[1]
		res, err := cluster.Transfer(ctx, from.Container, to.Container, to.ContainerIPv6, port, 8<<20)
		if err != nil {
			t.Fatalf("TCP over IPv6 %s -> [%s]:%d: %v", from.Host.Name, to.ContainerIPv6, port, err)
		}
		if !res.Match() {
			t.Fatalf("TCP over IPv6 %s -> %s: SHA-256 sent %x, received %x", from.Host.Name, to.Host.Name, res.SentSum, res.RecvSum)
		}
		t.Logf("TCP over inner IPv6 %s -> %s: %d bytes, SHA-256 %x at both ends, %.0f Mbit/s", from.Host.Name, to.Host.Name, res.Bytes, res.RecvSum, res.Mbps())
	}
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

// TestIPv6OnlyCluster runs two of our nodes on an IPv6-only config over an
// IPv6 underlay (--public-ipv6): they lease IPv6 subnets under upstream's
// key form (0.0.0.0-0&...) with their PublicIPv6, write the subnet file's
// IPv6 lines only with the IPv6 underlay's MTU, address flannel0 for IPv6
// alone, and carry ping -6 and TCP between containers both ways in
// datagrams between the hosts' IPv6 addresses.
func TestIPv6OnlyCluster(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, Config: ipv6OnlyConfig, IPv6Underlay: true})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]

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
		want[subnetsPrefix+"0.0.0.0-0&"+env.IPv6Subnet.Addr().String()+"-64"] = `{"PublicIP":"0.0.0.0","PublicIPv6":"` + n.Addr6.String() + `"}`
		checkTUNIPv6(t, n)
		if out, err := n.Host.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "flannel0"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("%s: flannel0 IPv4 addresses %q %v, want none", n.Host.Name, out, err)
		}
		if !strings.Contains(n.Log(), "IPv6-only lease: IPv6 subnet "+env.IPv6Subnet.String()) {
			t.Errorf("%s: the log does not say what the IPv6-only lease gives:\n%s", n.Host.Name, n.Log())
		}
	}
	if n1.Env.IPv6Subnet == n2.Env.IPv6Subnet {
		t.Errorf("both nodes hold %s", n1.Env.IPv6Subnet)
	}
	kvs := subnetKVs(t, c.Etcd)
	dumpState(t, c.Nodes, kvs)
	if !maps(kvs, want) {
		t.Errorf("etcd subnets %v, want %v", kvs, want)
	}
	for k, v := range kvs {
		if a, err := lease.ParseLeaseAttrs([]byte(v)); err != nil || a.PublicIP.IsValid() || !a.PublicIPv6.Is6() {
			t.Errorf("%s = %s: %+v %v, want PublicIP 0.0.0.0 and a PublicIPv6", k, v, a, err)
		}
	}

	waitPing(t, 10*time.Second, n1.Container, n2.ContainerIPv6)
	waitPing(t, 10*time.Second, n2.Container, n1.ContainerIPv6)
	transfer6(t, n1, n2, 5602)
	// The datagrams crossed the IPv6 underlay: the router's sockets are
	// bound to the hosts' IPv6 addresses.
	if out, err := n1.Host.Run(ctx, "ss", "-uanH", "sport", "= :8285"); err != nil || !strings.Contains(out, "["+n1.Addr6.String()+"]:8285") {
		t.Errorf("%s: UDP sockets on port 8285 %q %v, want one bound to [%s]:8285", n1.Host.Name, out, err, n1.Addr6)
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

// TestDualStackUpstreamPeer: a dual-stack node facing an upstream node
// (its dual-stack lease, and a socket on its PublicIP:8285 that, like
// upstream's udp backend, never answers the IPv6 probe) refuses IPv6 for
// it with ICMPv6 destination unreachable instead of silence, and counts
// the drops in /metrics.
func TestDualStackUpstreamPeer(t *testing.T) {
	t.Parallel()
	// Host 3 never runs our flanneld: its address never answered a probe.
	c := startWith(t, cluster.Options{Hosts: 3, Idle: 1, Config: dualStackConfig})
	ctx := t.Context()
	ours, up := c.Nodes[0], c.Nodes[2]

	// Subnets the running nodes did not lease (they pick at random).
	k := 77
	for slices.ContainsFunc(c.Nodes[:2], func(n *cluster.Node) bool {
		return n.Env.Subnet.Addr().As4()[2] == byte(k) || n.Env.IPv6Subnet.Addr().As16()[7] == byte(k)
	}) {
		k++
	}
	key := subnetsPrefix + fmt.Sprintf("198.18.%d.0-24&2001:db8:100:%x::-64", k, k)
	if _, err := c.Etcd.Put(ctx, key, `{"PublicIP":"`+up.Host.Addr.String()+`","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	var sock net.PacketConn
	if err := up.Host.Do(func() (err error) {
		sock, err = net.ListenPacket("udp4", netip.AddrPortFrom(up.Host.Addr, 8285).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()

	series := `flannel_router_dropped_packets_total{path="user",reason="peer_no_ipv6"}`
	before := metricValue(t, ours, series)
	dst := netip.MustParseAddr(fmt.Sprintf("2001:db8:100:%x::2", k))
	waitUnreachable(t, 15*time.Second, ours.Container, dst)
	if v := metricValue(t, ours, series); v <= before {
		t.Errorf("%s = %v, was %v: the refused packets are not counted", series, v, before)
	}
	// IPv6 to our own peer still flows.
	waitPing(t, 10*time.Second, ours.Container, c.Nodes[1].ContainerIPv6)
}

// TestDualStackLeaseMoved: another node takes a dual-stack node's key; the
// node moves to new IPv4 and IPv6 subnets, and its IPv6 state follows:
// flannel0's /128, the router's own IPv6 subnet (the new address answers
// ping -6 from the other node's container) and the ip6tables masquerade
// rules.
func TestDualStackLeaseMoved(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, Config: dualStackConfig, Args: []string{"--ip-masq"}})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	old := n2.Env
	key := subnetsPrefix + old.Subnet.Addr().String() + "-24&" + old.IPv6Subnet.Addr().String() + "-64"
	if _, err := c.Etcd.Put(ctx, key, `{"PublicIP":"192.0.2.250","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	var moved lease.SubnetFile
	waitFor(t, 15*time.Second, "node 2 on new subnets", func() error {
		env, err := lease.ReadSubnetFile(n2.SubnetFile)
		if err != nil || env.IPv6Subnet == old.IPv6Subnet || !env.IPv6Subnet.IsValid() {
			return fmt.Errorf("subnet file %+v %v", env, err)
		}
		moved = env
		return nil
	})
	t.Logf("node 2 moved %s %s -> %s %s", old.Subnet, old.IPv6Subnet, moved.Subnet, moved.IPv6Subnet)
	n2.Env = moved
	waitFor(t, 10*time.Second, "flannel0 holds only the new IPv6 address", func() error {
		out, err := n2.Host.Run(ctx, "ip", "-6", "-o", "addr", "show", "dev", "flannel0")
		if err != nil || !strings.Contains(out, moved.IPv6Subnet.Addr().String()+"/128") || strings.Contains(out, old.IPv6Subnet.Addr().String()+"/128") {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	waitPing(t, 15*time.Second, n1.Container, moved.IPv6Subnet.Addr())
	out, err := n2.Host.Run(ctx, "ip6tables-save", "-t", "nat")
	if err != nil || !strings.Contains(out, "-d "+moved.IPv6Subnet.String()) || strings.Contains(out, old.IPv6Subnet.String()) {
		t.Errorf("ip6tables nat after the move, want rules for %s only:\n%s %v", moved.IPv6Subnet, out, err)
	}
}
