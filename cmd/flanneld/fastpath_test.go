package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/lease"
	"github.com/flannel-go/flannel-go/tun"
)

// upstreamProxy stands in for upstream flanneld's udp backend on a host: a
// TUN without offloads and one UDP socket on <host>:8285, copying one inner
// packet per datagram each way as upstream's C proxy does. It never
// completes a checksum: a packet that arrives with a partial inner checksum
// reaches the receiving TCP broken, as it would with upstream.
type upstreamProxy struct {
	dev  *tun.Device
	sock *net.UDPConn
}

func startUpstreamProxy(t *testing.T, h *testbed.Host, subnet netip.Prefix, peers map[netip.Prefix]netip.Addr) {
	t.Helper()
	var p upstreamProxy
	if err := h.Do(func() (err error) {
		if p.dev, err = tun.Open(tunName, 1, tun.WithOffloads(false)); err != nil {
			return err
		}
		if err = p.dev.Configure(subnet.Addr(), 1472, 500, cluster.DefaultNetwork); err != nil {
			return err
		}
		p.sock, err = net.ListenUDP("udp4", &net.UDPAddr{IP: h.Addr.AsSlice(), Port: 8285})
		return err
	}); err != nil {
		t.Fatalf("upstream stand-in on %s: %v", h.Name, err)
	}
	q := p.dev.Queues[0]
	go func() {
		bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
		for {
			n, err := q.Read(bufs, sizes, 0)
			if err != nil && !errors.Is(err, tun.ErrDropped) {
				return
			}
			for i := range n {
				pkt := bufs[i][:sizes[i]]
				if len(pkt) < 20 {
					continue
				}
				dst := netip.AddrFrom4([4]byte(pkt[16:20]))
				for sn, peer := range peers {
					if sn.Contains(dst) {
						p.sock.WriteToUDPAddrPort(pkt, netip.AddrPortFrom(peer, 8285))
					}
				}
			}
		}
	}()
	go func() {
		buf := make([]byte, 65535)
		for {
			n, err := p.sock.Read(buf)
			if err != nil {
				return
			}
			if n < 20 { // upstream drops these, probes included
				continue
			}
			q.Write([][]byte{buf[:n]}, 0)
		}
	}()
	t.Cleanup(func() { p.sock.Close(); p.dev.Close() })
}

// TestFastPathMixedCluster runs two fast-path nodes, a userspace-only node
// (--fast-path=off) and an upstream-style node and moves pings and
// SHA-256-checked TCP transfers between every pair. Only the two fast-path
// nodes may use the kernel path between them (checked by their counters);
// every other pair must work through a userspace end, with complete inner
// checksums.
func TestFastPathMixedCluster(t *testing.T) {
	requireFastPath(t)
	c := startWith(t, cluster.Options{Hosts: 4, Idle: 2, Args: []string{"--fast-path=on", "--metrics-addr=:9102"}})
	ctx := t.Context()
	// Host 1 and 2 run the fast path, host 3 is the upstream stand-in,
	// host 4 runs the userspace router alone.
	n1, n4, n3, n2 := c.Nodes[0], c.Nodes[1], c.Nodes[2], c.Nodes[3]
	n2.Args = []string{"--fast-path=off"}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := n2.AddContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	upSubnet := netip.MustParsePrefix("198.18.77.0/24")
	key := cluster.DefaultPrefix + "/subnets/" + lease.SubnetKey(upSubnet)
	if _, err := c.Etcd.Put(ctx, key, fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, n3.Host.Addr)); err != nil {
		t.Fatal(err)
	}
	peers := map[netip.Prefix]netip.Addr{}
	for _, n := range []*cluster.Node{n1, n2, n4} {
		peers[n.Env.Subnet] = n.Host.Addr
	}
	startUpstreamProxy(t, n3.Host, upSubnet, peers)
	upCt, err := n3.Host.AddContainer(ctx, "up1", netip.PrefixFrom(upSubnet.Addr().Next(), 24), 1472)
	if err != nil {
		t.Fatal(err)
	}

	for _, n := range []*cluster.Node{n1, n4} {
		if v := metricValue(t, n, "flannel_fast_path_enabled"); v != 1 {
			t.Fatalf("flannel_fast_path_enabled on %s = %v, want 1", n.Host.Name, v)
		}
	}
	if v := metricValue(t, n2, "flannel_fast_path_enabled"); v != 0 {
		t.Fatalf("flannel_fast_path_enabled on the --fast-path=off node = %v, want 0", v)
	}
	// Node 1 and 4 find each other through probes; nobody else answers.
	waitFor(t, 15*time.Second, "fast path peers", func() error {
		for _, n := range []*cluster.Node{n1, n4} {
			if v := metricValue(t, n, "flannel_fast_path_kernel_peers"); v != 1 {
				return fmt.Errorf("%s has %v kernel peers, want 1 (probes answered %v, answers received %v, passed in %v)", n.Host.Name, v,
					metricValue(t, n, `flannel_fast_path_probes_total{kind="answered"}`), metricValue(t, n, `flannel_fast_path_probes_total{kind="received"}`),
					metricValue(t, n, `flannel_router_passed_to_userspace_total{reason="to_socket"}`))
			}
		}
		return nil
	})

	type end struct {
		name string
		ct   *testbed.Container
	}
	ends := []end{{"fast-path", n1.Container}, {"userspace", n2.Container}, {"upstream", upCt}, {"fast-path-2", n4.Container}}
	port := 5201
	for _, a := range ends {
		for _, b := range ends {
			if a == b {
				continue
			}
			waitFor(t, 10*time.Second, fmt.Sprintf("ping %s -> %s", a.name, b.name), func() error {
				out, err := ping(ctx, a.ct, b.ct.Addr)
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
			port++
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			res, err := cluster.Transfer(tctx, a.ct, b.ct, b.ct.Addr, port, 8<<20)
			cancel()
			if err != nil {
				t.Fatalf("transfer %s -> %s: %v", a.name, b.name, err)
			}
			if !res.Match() {
				t.Fatalf("transfer %s -> %s: SHA-256 differs", a.name, b.name)
			}
		}
	}
	// Between the two fast-path nodes the kernel carried the bulk.
	for _, n := range []*cluster.Node{n1, n4} {
		out := metricValue(t, n, `flannel_router_bytes_total{direction="out",path="kernel"}`)
		in := metricValue(t, n, `flannel_router_bytes_total{direction="in",path="kernel"}`)
		if out < 8<<20 || in < 8<<20 {
			t.Errorf("%s: kernel path carried %v bytes out and %v in, want at least 8 MiB each", n.Host.Name, out, in)
		}
	}
}

// requireFastPath skips (fails under CI=true) where the kernel cannot run
// the fast path.
func requireFastPath(t *testing.T) {
	t.Helper()
	testbed.RequireRoot(t)
	testbed.RequireTUN(t)
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var rel strings.Builder
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		rel.WriteByte(byte(c))
	}
	var major, minor int
	fmt.Sscanf(rel.String(), "%d.%d", &major, &minor)
	if major < 6 || major == 6 && minor < 6 {
		if testbed.InCI() {
			t.Fatalf("kernel %s has no tcx (6.6+): the fast path cannot be tested", rel.String())
		}
		t.Skipf("kernel %s has no tcx (6.6+)", rel.String())
	}
}
