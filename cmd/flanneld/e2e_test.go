//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/lease"
)

var flanneldBin string

func TestMain(m *testing.M) {
	// make test-kernels builds flanneld on the host: a guest has no
	// writable Go cache and would take minutes to compile it.
	if flanneldBin = os.Getenv("FLANNEL_TEST_FLANNELD"); flanneldBin != "" {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "flanneld-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	flanneldBin = filepath.Join(dir, "flanneld")
	out, err := exec.Command("go", "build", "-o", flanneldBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build flanneld: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCluster builds a cluster of n hosts with a container on each and
// tears it down when the test ends; on failure it prints every log.
func startCluster(t *testing.T, n int, args ...string) *cluster.Cluster {
	t.Helper()
	return startWith(t, cluster.Options{Hosts: n, Args: args})
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s: %v", what, timeout, err)
}

func ping(ctx context.Context, from *testbed.Container, to netip.Addr, extra ...string) (string, error) {
	args := append([]string{"-n", "-c", "1", "-W", "1"}, extra...)
	return from.Run(ctx, "ping", append(args, to.String())...)
}

func TestClusterEndToEnd(t *testing.T) {
	c := startCluster(t, 3)
	ctx := t.Context()

	t.Run("leases in upstream format", func(t *testing.T) {
		resp, err := c.Etcd.Get(ctx, cluster.DefaultPrefix+"/subnets/", clientv3WithPrefix()...)
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 3 {
			t.Fatalf("got %d leases, want 3", len(resp.Kvs))
		}
		// What an operator sees with etcdctl, from host 2 (not the host
		// running the embedded etcd).
		testbed.RequireTool(t, "etcdctl")
		listing, err := c.Nodes[1].Host.Run(ctx, "etcdctl", "--endpoints="+c.EtcdEndpoint(), "get", "--prefix", cluster.DefaultPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("etcdctl get --prefix %s:\n%s", cluster.DefaultPrefix, listing)
		for _, n := range c.Nodes {
			key := cluster.DefaultPrefix + "/subnets/" + lease.SubnetKey(n.Env.Subnet)
			if want := fmt.Sprintf("%s\n{\"PublicIP\":\"%s\",\"PublicIPv6\":null}\n", key, n.Host.Addr); !strings.Contains(listing, want) {
				t.Errorf("etcdctl listing lacks\n%s", want)
			}
			want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, n.Host.Addr)
			found := false
			for _, kv := range resp.Kvs {
				if string(kv.Key) == key {
					found = true
					if string(kv.Value) != want {
						t.Errorf("%s = %s, want %s", key, kv.Value, want)
					}
					if kv.Lease == 0 {
						t.Errorf("%s has no etcd lease", key)
					}
				}
			}
			if !found {
				t.Errorf("no key %s", key)
			}
			raw, err := os.ReadFile(n.SubnetFile)
			if err != nil {
				t.Fatal(err)
			}
			wantEnv := fmt.Sprintf("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=%s/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n", n.Env.Subnet.Addr().Next())
			if string(raw) != wantEnv {
				t.Errorf("%s:\n%s\nwant:\n%s", n.SubnetFile, raw, wantEnv)
			}
			if v := metricValue(t, n, "flannel_lease_acquisitions_total"); v != 1 {
				t.Errorf("flannel_lease_acquisitions_total on %s = %v, want 1", n.Host.Name, v)
			}
			if exp := time.Unix(int64(metricValue(t, n, "flannel_lease_expiry_timestamp_seconds")), 0); time.Until(exp) < 23*time.Hour {
				t.Errorf("flannel_lease_expiry_timestamp_seconds on %s = %v, want about 24 h ahead", n.Host.Name, exp)
			}
			// The live daemon's /metrics, held to Prometheus' own linter.
			if code, body, err := n.HTTPGet(ctx, "/metrics"); err != nil || code != 200 {
				t.Errorf("GET /metrics on %s: %d %v", n.Host.Name, code, err)
			} else {
				promtoolCheck(t, body)
			}
			out, err := n.Host.Run(ctx, "ip", "-4", "-o", "addr", "show", "dev", "flannel0")
			if err != nil || !strings.Contains(out, n.Env.Subnet.Addr().String()+"/32") {
				t.Errorf("flannel0 on %s: %q %v, want address %s/32", n.Host.Name, out, err, n.Env.Subnet.Addr())
			}
		}
	})

	t.Run("all pairs ping", func(t *testing.T) {
		for _, a := range c.Nodes {
			for _, b := range c.Nodes {
				if a == b {
					continue
				}
				waitFor(t, 5*time.Second, fmt.Sprintf("ping %s -> %s", a.Container.Name, b.Container.Addr), func() error {
					out, err := ping(ctx, a.Container, b.Container.Addr)
					if err != nil {
						return fmt.Errorf("%v: %s", err, out)
					}
					return nil
				})
			}
		}
	})

	t.Run("100 MB transfer intact", func(t *testing.T) {
		a, b := c.Nodes[0].Container, c.Nodes[1].Container
		res, err := cluster.Transfer(ctx, a, b, b.Addr, 5001, 100<<20)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Match() {
			t.Fatalf("SHA-256 differs: sent %x, received %x", res.SentSum, res.RecvSum)
		}
		t.Logf("100 MiB in %s (%.0f Mbit/s)", res.Duration.Round(time.Millisecond), res.Mbps())
		// The kernel here has TSO on TUNs and UDP GSO/GRO: the defaults use them.
		n1 := c.Nodes[0]
		for _, f := range []string{"tun_vnet_hdr", "tun_tso", "udp_gso", "udp_gro"} {
			if v := metricValue(t, n1, `flannel_offload_enabled{feature="`+f+`"}`); v != 1 {
				t.Errorf("offload %s = %v, want 1", f, v)
			}
		}
		if fastPathOn(t, n1) {
			// Both ends run the fast path (the default where the kernel
			// has it): the kernel carried the transfer, not the router.
			if v := metricValue(t, n1, `flannel_router_bytes_total{direction="out",path="kernel"}`); v < 100<<20 {
				t.Errorf("fast path on: the kernel path carried %v bytes out, want the 100 MiB", v)
			}
			return
		}
		batches := metricValue(t, n1, `flannel_router_batch_size_count{direction="out"}`)
		packets := metricValue(t, n1, `flannel_router_batch_size_sum{direction="out"}`)
		if batches == 0 || packets/batches < 2 {
			t.Errorf("sender made %v batches of %v packets: TSO super-packets should make batches of many", batches, packets)
		}
		t.Logf("sender: %.1f packets per TUN read", packets/batches)
	})

	t.Run("TTL expiry answers time exceeded", func(t *testing.T) {
		// TTL 2 leaves the container, is decremented to 1 by host 1's kernel,
		// and would reach 0 in the tunnel.
		out, _ := ping(ctx, c.Nodes[0].Container, c.Nodes[2].Container.Addr, "-t", "2")
		want := "From " + c.Nodes[0].Env.Subnet.Addr().String()
		if !strings.Contains(out, "Time to live exceeded") || !strings.Contains(out, want) {
			t.Fatalf("ping -t 2 printed:\n%s\nwant 'Time to live exceeded' %s", out, want)
		}
	})

	t.Run("unknown sender dropped and counted", func(t *testing.T) {
		h1, h2 := c.Nodes[0], c.Nodes[1]
		// An address on host 2 that holds no lease.
		if out, err := h2.Host.Run(ctx, "ip", "addr", "add", "192.0.2.200/24", "dev", h2.Host.Iface); err != nil {
			t.Fatal(out, err)
		}
		before := metricValue(t, h1, `flannel_router_dropped_packets_total{path="user",reason="unknown_peer"}`)
		dst := h1.Container.Addr
		inner := udpPacket(t, h2.Container.Addr, dst, 7777, []byte("forged"))
		var pc net.PacketConn
		if err := h1.Container.Do(func() (err error) {
			pc, err = net.ListenPacket("udp4", netip.AddrPortFrom(dst, 7777).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		send := func(src string) {
			var conn net.PacketConn
			if err := h2.Host.Do(func() (err error) {
				conn, err = net.ListenPacket("udp4", src+":0")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.WriteTo(inner, &net.UDPAddr{IP: h1.Host.Addr.AsSlice(), Port: 8285}); err != nil {
				t.Fatal(err)
			}
		}
		send("192.0.2.200")
		waitFor(t, 5*time.Second, "unknown_peer drop counted", func() error {
			if v := metricValue(t, h1, `flannel_router_dropped_packets_total{path="user",reason="unknown_peer"}`); v <= before {
				return fmt.Errorf("counter %v, was %v", v, before)
			}
			return nil
		})
		// The same datagram from a lease holder is delivered: the drop above
		// was the sender check, not a broken packet.
		send(h2.Host.Addr.String())
		buf := make([]byte, 100)
		pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := pc.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "forged" {
			t.Fatalf("datagram from a lease holder: %q %v", buf[:n], err)
		}
		pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, _, err := pc.ReadFrom(buf); err == nil {
			t.Fatalf("a second datagram %q arrived: the unknown sender's got through", buf[:n])
		}
	})

	t.Run("peer leaves and rejoins", func(t *testing.T) {
		n1, n3 := c.Nodes[0], c.Nodes[2]
		n3.Stop(syscall.SIGKILL, 5*time.Second)
		key := cluster.DefaultPrefix + "/subnets/" + lease.SubnetKey(n3.Env.Subnet)
		if _, err := c.Etcd.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "route to the removed peer gone", func() error {
			out, _ := ping(ctx, n1.Container, n3.Container.Addr)
			if !strings.Contains(out, "Destination Net Unreachable") {
				return fmt.Errorf("ping printed %q", out)
			}
			return nil
		})
		n3.Args = []string{"--ip-blackhole-route"}
		if err := n3.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n3.WaitReady(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if got, want := n3.Env.Subnet, n3.Container.Prefix.Masked(); got != want {
			t.Errorf("rejoined with subnet %s, want its old %s (from the subnet file)", got, want)
		}
		// The container bridge serves the subnet: upstream's blackhole
		// route (metric 0) would shadow it, so there is none.
		if out, err := n3.Host.Run(ctx, "ip", "route", "show", "type", "blackhole"); err != nil || strings.Contains(out, n3.Env.Subnet.String()) {
			t.Errorf("--ip-blackhole-route with a bridge on the subnet: blackhole routes %q %v, want none for %s", out, err, n3.Env.Subnet)
		}
		waitFor(t, 5*time.Second, "rejoined peer reachable", func() error {
			if out, err := ping(ctx, n1.Container, n3.Container.Addr); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	})

	t.Run("graceful shutdown keeps the lease", func(t *testing.T) {
		n2 := c.Nodes[1]
		n2.Stop(syscall.SIGTERM, 10*time.Second)
		if code := n2.ExitCode(); code != 0 {
			t.Fatalf("exit code %d after SIGTERM, want 0", code)
		}
		if !strings.Contains(n2.Log(), "Exiting cleanly") {
			t.Errorf("log lacks 'Exiting cleanly'")
		}
		if out, err := n2.Host.Run(ctx, "ip", "link", "show", "flannel0"); err == nil {
			t.Errorf("flannel0 still exists after shutdown: %s", out)
		}
		key := cluster.DefaultPrefix + "/subnets/" + lease.SubnetKey(n2.Env.Subnet)
		resp, err := c.Etcd.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("lease %s after shutdown: %v %v, want it kept", key, resp, err)
		}
	})
}
