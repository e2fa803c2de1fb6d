//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/probe"
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
	mixedCluster(t, "")
}

// TestFastPathMixedClusterClsact is TestFastPathMixedCluster with the
// fast path attached as cls_bpf filters, as on kernels without tcx.
func TestFastPathMixedClusterClsact(t *testing.T) {
	requireFastPath(t)
	t.Setenv("FLANNEL_FASTPATH_ATTACH", "clsact")
	mixedCluster(t, "clsact")
}

// mixedCluster runs the mixed cluster; attach is the attach mode the
// fast-path nodes must report ("" for any).
func mixedCluster(t *testing.T, attach string) {
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
		if a, v := fastPathInfo(t, n); a == "" || attach != "" && a != attach {
			t.Fatalf("flannel_fast_path_enabled on %s: attach %q variant %q, want 1 with attach %q", n.Host.Name, a, v, attach)
		}
	}
	if v := metricValue(t, n2, `flannel_fast_path_enabled{attach="none",variant="none"}`); v != 0 || fastPathOn(t, n2) {
		t.Fatalf("flannel_fast_path_enabled on the --fast-path=off node is not 0")
	}
	// Node 1 and 4 find each other through probes; nobody else answers.
	waitKernelPeers(t, 1, n1, n4)
	if !strings.Contains(n1.Log(), "Kernel fast path on") || !strings.Contains(n2.Log(), "Kernel fast path off (--fast-path=off)") {
		t.Errorf("the fast-path node and the --fast-path=off node must each log which data path runs")
	}

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
	// Between the two fast-path nodes the kernel carried the bulk, the
	// super-packets through the handoff device.
	for _, n := range []*cluster.Node{n1, n4} {
		out := metricValue(t, n, `flannel_router_bytes_total{direction="out",path="kernel"}`)
		in := metricValue(t, n, `flannel_router_bytes_total{direction="in",path="kernel"}`)
		if out < 8<<20 || in < 8<<20 {
			t.Errorf("%s: kernel path carried %v bytes out and %v in, want at least 8 MiB each", n.Host.Name, out, in)
		}
		if rx, ok := handoffRx(t, n.Host); !ok || rx == 0 {
			t.Errorf("%s: the handoff device received %d packets (present: %v), want the transfers' super-packets", n.Host.Name, rx, ok)
		}
	}
}

// linkAddrs4 lists the IPv4 addresses of device dev on host h.
func linkAddrs4(t *testing.T, h *testbed.Host, dev string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	if err := h.Do(func() error {
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
				out = append(out, ip)
			}
		}
		return err
	}); err != nil {
		t.Fatalf("addresses of %s on %s: %v", dev, h.Name, err)
	}
	return out
}

// handoffDev is the fast path's handoff device next to flannel0.
const handoffDev = "flannel0-fp"

// handoffRx is how many packets the host's handoff device received, and
// whether the device exists.
func handoffRx(t *testing.T, h *testbed.Host) (uint64, bool) {
	t.Helper()
	var rx uint64
	var found bool
	if err := h.Do(func() error {
		l, err := netlink.LinkByName(handoffDev)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return nil
		}
		if err != nil {
			return err
		}
		found = true
		if st := l.Attrs().Statistics; st != nil {
			rx = st.RxPackets
		}
		return nil
	}); err != nil {
		t.Fatalf("handoff device on %s: %v", h.Name, err)
	}
	return rx, found
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

// tcxPrograms counts the programs attached to the host's eth0 ingress.
func tcxPrograms(t *testing.T, h *testbed.Host) int {
	t.Helper()
	var n int
	if err := h.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		n = len(res.Programs)
		return nil
	}); err != nil {
		t.Fatalf("query tcx programs on %s: %v", h.Name, err)
	}
	return n
}

// ourFilters counts this project's cls_bpf filters on h's eth0 ingress.
func ourFilters(t *testing.T, h *testbed.Host) int {
	t.Helper()
	n := 0
	if err := h.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
		if err != nil {
			return nil // no clsact qdisc
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "flannel-go:") {
				n++
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("cls_bpf filters on %s: %v", h.Name, err)
	}
	return n
}

// TestFastPathClsactSIGKILL kills a flanneld whose fast path is attached
// as cls_bpf filters, which outlive the process: once its heartbeat is
// stale (5 s) the filter passes every datagram to the stack and answers
// no probe, so a plain socket on the flannel port receives them; the
// next start replaces the filter (one left, its own) and takes the
// kernel path again.
func TestFastPathClsactSIGKILL(t *testing.T) {
	requireFastPath(t)
	t.Setenv("FLANNEL_FASTPATH_ATTACH", "clsact")
	c := startCluster(t, 2, "--fast-path=on")
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if got, tcx := ourFilters(t, n2.Host), tcxPrograms(t, n2.Host); got != 1 || tcx != 0 {
		t.Fatalf("%s's eth0 has %d filters of ours and %d tcx programs, want 1 and 0", n2.Host.Name, got, tcx)
	}
	waitKernelPeers(t, 1, n1, n2)
	n2.Stop(syscall.SIGKILL, 10*time.Second)
	if got := ourFilters(t, n2.Host); got != 1 {
		t.Fatalf("%d filters of ours after SIGKILL, want the one left behind", got)
	}
	// A datagram from the lease holder n1 (the filter's peer) and a probe
	// reach a plain socket once the heartbeat is stale.
	for _, payload := range [][]byte{[]byte("after-kill-from-a-peer"), probeAsk()} {
		if _, err := cluster.UDPReach(ctx, n1.Host, n2.Host, n2.Host.Addr, 8285, payload, 15*time.Second); err != nil {
			t.Fatalf("after SIGKILL, %q to %s:8285 does not reach a socket: %v", payload, n2.Host.Addr, err)
		}
	}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := ourFilters(t, n2.Host); got != 1 {
		t.Fatalf("%d filters of ours after the restart, want 1", got)
	}
	if !strings.Contains(n2.Log(), "removed the cls_bpf filters a previous flanneld left") {
		t.Errorf("the restart did not say it removed the old filter:\n%s", n2.Log())
	}
	waitKernelPeers(t, 1, n1, n2)
	res, err := cluster.Transfer(ctx, n1.Container, n2.Container, n2.Container.Addr, 5311, 8<<20)
	if err != nil || !res.Match() {
		t.Fatalf("transfer after the restart: %v (intact: %v)", err, err == nil && res.Match())
	}
	if v := metricValue(t, n2, `flannel_router_bytes_total{direction="in",path="kernel"}`); v < 8<<20 {
		t.Fatalf("restarted node took %v bytes in on the kernel path, want the 8 MiB transfer", v)
	}
	n2.Stop(syscall.SIGTERM, 10*time.Second)
	if got := ourFilters(t, n2.Host); got != 0 {
		t.Errorf("%d filters of ours after a clean exit, want 0", got)
	}
}

// probeAsk is a fast-path probe ask.
func probeAsk() []byte {
	b := probe.Message{Type: probe.FastPathAsk, Nonce: 42}.Marshal()
	return b[:]
}

// TestFastPathSIGKILL kills a fast-path flanneld: the kernel must detach
// its programs (nothing left on the underlay to swallow datagrams), and
// the next start attaches afresh and takes the kernel path again.
func TestFastPathSIGKILL(t *testing.T) {
	requireFastPath(t)
	c := startCluster(t, 2, "--fast-path=on")
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if got := tcxPrograms(t, n2.Host); got != 1 {
		t.Fatalf("%d tcx programs on %s's eth0, want 1", got, n2.Host.Name)
	}
	waitKernelPeers(t, 1, n1, n2)
	// Only the ingress program feeds the handoff device: a datagram for
	// its port from the underlay is dropped and counted.
	if err := n1.Host.Do(func() error {
		conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: n2.Host.Addr.AsSlice(), Port: 8286})
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = conn.Write([]byte("not-from-the-fast-path"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "handoff port datagram dropped", func() error {
		if v := metricValue(t, n2, `flannel_router_dropped_packets_total{path="kernel",reason="handoff_port"}`); v != 1 {
			return fmt.Errorf("%v handoff_port drops on %s, want 1", v, n2.Host.Name)
		}
		return nil
	})

	n2.Stop(syscall.SIGKILL, 10*time.Second)
	waitFor(t, 5*time.Second, "programs and handoff device gone after SIGKILL", func() error {
		if got := tcxPrograms(t, n2.Host); got != 0 {
			return fmt.Errorf("%d tcx programs still on %s's eth0", got, n2.Host.Name)
		}
		// The kernel deletes the device with its lower device, the TUN.
		if _, ok := handoffRx(t, n2.Host); ok {
			return fmt.Errorf("%s still has %s", n2.Host.Name, handoffDev)
		}
		return nil
	})
	// The underlay stays usable: a datagram to the flannel port reaches a
	// plain socket there.
	if _, err := cluster.UDPReach(ctx, n1.Host, n2.Host, n2.Host.Addr, 8285, []byte("after-kill-plain-udp"), 5*time.Second); err != nil {
		t.Fatalf("after SIGKILL, UDP to %s:8285 does not reach a socket: %v", n2.Host.Addr, err)
	}

	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := tcxPrograms(t, n2.Host); got != 1 {
		t.Fatalf("%d tcx programs on %s's eth0 after the restart, want 1", got, n2.Host.Name)
	}
	waitKernelPeers(t, 1, n1, n2)
	res, err := cluster.Transfer(ctx, n1.Container, n2.Container, n2.Container.Addr, 5301, 8<<20)
	if err != nil || !res.Match() {
		t.Fatalf("transfer after the restart: %v (intact: %v)", err, err == nil && res.Match())
	}
	if v := metricValue(t, n2, `flannel_router_bytes_total{direction="in",path="kernel"}`); v < 8<<20 {
		t.Fatalf("restarted node took %v bytes in on the kernel path, want the 8 MiB transfer", v)
	}
	if rx, ok := handoffRx(t, n2.Host); !ok || rx == 0 {
		t.Fatalf("restarted node's handoff device received %d packets (present: %v), want the transfer's super-packets", rx, ok)
	}
}

// waitKernelPeers waits until each node's fast path vouches for want peers.
func waitKernelPeers(t *testing.T, want float64, nodes ...*cluster.Node) {
	t.Helper()
	waitFor(t, 15*time.Second, "fast path peers", func() error {
		for _, n := range nodes {
			if v := metricValue(t, n, "flannel_fast_path_kernel_peers"); v != want {
				return fmt.Errorf("%s has %v kernel peers, want %v", n.Host.Name, v, want)
			}
		}
		return nil
	})
}

// TestFastPathPcap captures pings the kernel path carries: they reach
// /debug/pcap through the programs' ring buffer.
func TestFastPathPcap(t *testing.T) {
	requireFastPath(t)
	c := startCluster(t, 2, "--fast-path=on", "--debug-pcap")
	waitKernelPeers(t, 1, c.Nodes...)
	before := metricValue(t, c.Nodes[0], `flannel_router_packets_total{direction="out",path="kernel"}`)
	checkPcapPing(t, c)
	if after := metricValue(t, c.Nodes[0], `flannel_router_packets_total{direction="out",path="kernel"}`); after <= before {
		t.Fatalf("the kernel path carried no packet during the capture (%v -> %v)", before, after)
	}
}

// TestFastPathHandoffFirewalled drops the handoff port on the receiving
// host's input, as a firewall admitting only the flannel port would: the
// fast path notices that the device receives nothing, says so, and
// decapsulates in TC again, so transfers complete intact.
func TestFastPathHandoffFirewalled(t *testing.T) {
	requireFastPath(t)
	testbed.RequireTool(t, "iptables")
	c := startCluster(t, 2, "--fast-path=on")
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	waitKernelPeers(t, 1, n1, n2)
	if out, err := n2.Host.Run(ctx, "iptables", "-I", "INPUT", "-p", "udp", "--dport", "8286", "-j", "DROP"); err != nil {
		t.Fatalf("firewall the handoff port: %v: %s", err, out)
	}
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := cluster.Transfer(tctx, n1.Container, n2.Container, n2.Container.Addr, 5401, 8<<20)
	if err != nil || !res.Match() {
		t.Fatalf("transfer with the handoff port firewalled: %v (intact: %v)", err, err == nil && res.Match())
	}
	if !strings.Contains(n2.Log(), "the handoff device received too little") {
		t.Errorf("no log line says that the handoff was turned off:\n%s", n2.Log())
	}
	if v := metricValue(t, n2, `flannel_router_bytes_total{direction="in",path="kernel"}`); v < 8<<20 {
		t.Errorf("the kernel path took %v bytes in, want the 8 MiB transfer", v)
	}
}

// TestFastPathDualStack runs two fast-path nodes on a dual-stack network
// and an upstream-style node (IPv4 proxy, dual-stack lease, never answers
// a probe). Inner IPv6 between the fast-path nodes must take the kernel
// path (ping -6 and SHA-256-checked TCP both ways, the kernel counters grow
// by the transfers), while the upstream node still gets its IPv4 and IPv6
// toward it is refused by userspace with ICMPv6 unreachable.
func TestFastPathDualStack(t *testing.T) {
	requireFastPath(t)
	c := startWith(t, cluster.Options{Hosts: 3, Idle: 1, Config: dualStackConfig, Args: []string{"--fast-path=on", "--metrics-addr=:9102", "--debug-pcap"}})
	ctx := t.Context()
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]

	upSubnet := netip.MustParsePrefix("198.18.77.0/24")
	key := subnetsPrefix + "198.18.77.0-24&2001:db8:100:4d::-64"
	if _, err := c.Etcd.Put(ctx, key, `{"PublicIP":"`+n3.Host.Addr.String()+`","PublicIPv6":null}`); err != nil {
		t.Fatal(err)
	}
	startUpstreamProxy(t, n3.Host, upSubnet, map[netip.Prefix]netip.Addr{n1.Env.Subnet: n1.Host.Addr, n2.Env.Subnet: n2.Host.Addr})
	upCt, err := n3.Host.AddContainer(ctx, "up1", netip.PrefixFrom(upSubnet.Addr().Next(), 24), 1472)
	if err != nil {
		t.Fatal(err)
	}
	waitKernelPeers(t, 1, n1, n2)
	// The handoff device takes IPv6 but has no address of its own to send from.
	if out, err := n1.Host.Run(ctx, "ip", "-6", "-o", "addr", "show", "dev", handoffDev); err != nil || strings.Contains(out, "inet6") {
		t.Errorf("IPv6 addresses of %s: %q %v, want none", handoffDev, out, err)
	}

	series := func(dir string) string {
		return `flannel_router_bytes_total{direction="` + dir + `",path="kernel"}`
	}
	type counts struct{ out, in, pkts float64 }
	read := func(n *cluster.Node) counts {
		return counts{metricValue(t, n, series("out")), metricValue(t, n, series("in")),
			metricValue(t, n, `flannel_router_packets_total{direction="out",path="kernel"}`)}
	}
	before := map[*cluster.Node]counts{n1: read(n1), n2: read(n2)}
	// 64 from the container, one hop per router: host 2, the crossing,
	// host 1; a crossing that forgot its decrement shows 62.
	if out, err := ping(ctx, n1.Container, n2.ContainerIPv6, "-W", "5"); err != nil || !strings.Contains(out, "ttl=61") {
		t.Errorf("ping -6 %s: %v, want a reply with hop limit 61:\n%s", n2.ContainerIPv6, err, out)
	}
	checkPcapPing6(t, n1, n2)
	rx1, _ := handoffRx(t, n1.Host)
	rx2, _ := handoffRx(t, n2.Host)
	handedBefore := map[*cluster.Node]uint64{n1: rx1, n2: rx2}
	waitPing(t, 10*time.Second, n1.Container, n2.ContainerIPv6)
	waitPing(t, 10*time.Second, n2.Container, n1.ContainerIPv6)
	transfer6(t, n1, n2, 5701)
	for _, n := range []*cluster.Node{n1, n2} {
		now := read(n)
		out, in := now.out-before[n].out, now.in-before[n].in
		t.Logf("%s: kernel path carried %v bytes out, %v in, %v packets out during the IPv6 pings, capture and transfers", n.Host.Name, out, in, now.pkts-before[n].pkts)
		if out < 8<<20 || in < 8<<20 {
			t.Errorf("%s: the kernel path carried %v bytes out and %v in over inner IPv6, want at least 8 MiB each", n.Host.Name, out, in)
		}
		// The received IPv6 went through the handoff device, which the
		// watchdog would have turned off had the device dropped it.
		if rx, _ := handoffRx(t, n.Host); rx <= handedBefore[n] || strings.Contains(n.Log(), "handoff device received too little") {
			t.Errorf("%s: the handoff device received %d packets, %d before the IPv6 transfers, or was turned off:\n%s", n.Host.Name, rx, handedBefore[n], n.Log())
		}
	}

	// The upstream-style node: IPv4 both ways through userspace, IPv6
	// refused by the router.
	waitPing(t, 10*time.Second, n1.Container, upCt.Addr)
	waitPing(t, 10*time.Second, upCt, n2.Container.Addr)
	dst := netip.MustParseAddr("2001:db8:100:4d::2")
	waitUnreachable(t, 15*time.Second, n1.Container, dst)
	if v := metricValue(t, n1, `flannel_router_dropped_packets_total{path="user",reason="peer_no_ipv6"}`); v == 0 {
		t.Errorf("peer_no_ipv6 drops on %s = 0: the refused IPv6 did not go through userspace", n1.Host.Name)
	}
}

// checkPcapPing6 pings -6 from a's container to b's while fetching
// /debug/pcap from a, and looks for both echo packets in the pcap: carried
// by the kernel, they reach it only through the programs' ring.
func checkPcapPing6(t *testing.T, a, b *cluster.Node) {
	t.Helper()
	ctx := t.Context()
	src, dst := a.ContainerIPv6, b.ContainerIPv6
	before := metricValue(t, a, `flannel_router_packets_total{direction="out",path="kernel"}`)
	pingCtx, stopPing := context.WithCancel(ctx)
	defer stopPing()
	go func() {
		for pingCtx.Err() == nil {
			ping(pingCtx, a.Container, dst)
		}
	}()
	code, body, err := a.HTTPGet(ctx, "/debug/pcap?seconds=2&dir=both")
	stopPing()
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /debug/pcap: %d %v: %s", code, err, body)
	}
	if after := metricValue(t, a, `flannel_router_packets_total{direction="out",path="kernel"}`); after <= before {
		t.Errorf("the kernel path carried no packet during the capture (%v -> %v)", before, after)
	}
	r, err := pcapgo.NewReader(strings.NewReader(body))
	if err != nil {
		t.Fatalf("response is not a pcap: %v", err)
	}
	var request, reply bool
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		p := gopacket.NewPacket(data, layers.LayerTypeIPv6, gopacket.Default)
		ip, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
		icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
		if ip == nil || icmp == nil {
			continue
		}
		from, to := netip.AddrFrom16([16]byte(ip.SrcIP)), netip.AddrFrom16([16]byte(ip.DstIP))
		switch {
		case icmp.TypeCode.Type() == layers.ICMPv6TypeEchoRequest && from == src && to == dst:
			request = true
		case icmp.TypeCode.Type() == layers.ICMPv6TypeEchoReply && from == dst && to == src:
			reply = true
		}
	}
	if !request || !reply {
		t.Errorf("pcap of %d bytes: IPv6 echo request seen %v, reply seen %v", len(body), request, reply)
	}
}

// TestFastPathDualStackHandoffOff firewalls the handoff port on a
// dual-stack node: once the watchdog turns the handoff off, inner IPv6 is
// decapsulated in TC straight into flannel0 and TCP over it stays intact.
func TestFastPathDualStackHandoffOff(t *testing.T) {
	requireFastPath(t)
	testbed.RequireTool(t, "iptables")
	c := startWith(t, cluster.Options{Hosts: 2, Config: dualStackConfig, Args: []string{"--fast-path=on", "--metrics-addr=:9102"}})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	waitKernelPeers(t, 1, n1, n2)
	if out, err := n2.Host.Run(ctx, "iptables", "-I", "INPUT", "-p", "udp", "--dport", "8286", "-j", "DROP"); err != nil {
		t.Fatalf("firewall the handoff port: %v: %s", err, out)
	}
	// The watchdog judges from the first handed packets, which are lost:
	// TCP's (single ICMPv6 packets skip the device).
	waitFor(t, 15*time.Second, "the handoff turned off", func() error {
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		cluster.Transfer(tctx, n1.Container, n2.Container, n2.ContainerIPv6, 5800, 64<<10)
		cancel()
		if !strings.Contains(n2.Log(), "the handoff device received too little") {
			return errors.New("no log line says that the handoff was turned off")
		}
		return nil
	})
	series := `flannel_router_bytes_total{direction="in",path="kernel"}`
	before := metricValue(t, n2, series)
	waitPing(t, 10*time.Second, n1.Container, n2.ContainerIPv6)
	tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := cluster.Transfer(tctx, n1.Container, n2.Container, n2.ContainerIPv6, 5801, 8<<20)
	if err != nil || !res.Match() {
		t.Fatalf("TCP over inner IPv6 with the handoff off: %v (intact: %v)", err, err == nil && res.Match())
	}
	if v := metricValue(t, n2, series) - before; v < 8<<20 {
		t.Errorf("the kernel path took %v bytes in over inner IPv6, want the 8 MiB transfer", v)
	}
}

// TestFastPathLeaseRenewal renews a peer's lease (a new etcd lease and the
// same value, as the keeper does) in the middle of a transfer to it: the
// sender must keep every packet of it on the kernel path, and forget
// nothing it learnt about the peer.
func TestFastPathLeaseRenewal(t *testing.T) {
	requireFastPath(t)
	c := startCluster(t, 2, "--fast-path=on")
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	waitKernelPeers(t, 1, n1, n2)
	const passed = `flannel_router_passed_to_userspace_total{reason="peer_not_kernel"}`
	const kernelOut = `flannel_router_bytes_total{direction="out",path="kernel"}`
	before, sentBefore := metricValue(t, n1, passed), metricValue(t, n1, kernelOut)
	done := make(chan error, 1)
	go func() {
		res, err := cluster.Transfer(ctx, n1.Container, n2.Container, n2.Container.Addr, 5601, 256<<20)
		if err == nil && !res.Match() {
			err = errors.New("the bytes received differ from those sent")
		}
		done <- err
	}()
	waitFor(t, 10*time.Second, "the transfer under way", func() error {
		if v := metricValue(t, n1, kernelOut); v < sentBefore+1<<20 {
			return fmt.Errorf("%v bytes out on the kernel path", v)
		}
		return nil
	})
	key := subnetsPrefix + lease.SubnetKey(n2.Env.Subnet)
	grant, err := c.Etcd.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Etcd.Put(ctx, key, string(lease.MarshalLeaseAttrs(n2.Host.Addr)), clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}
	// A lease put after the renewal: once node 1 routes it, it has seen
	// the renewal too (one watch, in order).
	putLease(t, c.Etcd, "198.18.250.0/24", "192.0.2.250")
	waitRoutes(t, 10*time.Second, 2, n1)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("transfer: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("transfer not done after 60 s")
	}
	if after := metricValue(t, n1, passed); after != before {
		t.Errorf("the renewal sent %v packets for the peer through userspace", after-before)
	}
	if strings.Contains(n1.Log(), "peer took a new lease") {
		t.Errorf("the renewal made node 1 forget the peer:\n%s", n1.Log())
	}
}
