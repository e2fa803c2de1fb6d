// Command flannel-demo builds a three-host overlay in network namespaces on
// an embedded etcd, shows the leases, pings every container from every
// other, moves 100 MB between two containers next to the same transfer over
// the bare veth, and tears everything down. With -ipv6 the network config
// is dual-stack: containers get IPv6 addresses too and are pinged over IPv6
// as well. It needs root.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

func main() {
	bin := flag.String("flanneld", "bin/flanneld", "path of the flanneld binary")
	hosts := flag.Int("hosts", 3, "number of hosts")
	size := flag.Int64("bytes", 100_000_000, "bytes to move between two containers")
	verbose := flag.Bool("v", false, "copy flanneld's logs to stderr")
	ipv6 := flag.Bool("ipv6", false, "dual-stack network config (EnableIPv6, IPv6Network "+cluster.IPv6Network.String()+"): ping over IPv6 too")
	flag.Parse()
	summary, err := run(*bin, *hosts, *size, *verbose, *ipv6)
	if err != nil {
		fmt.Printf("VERDICT: FAIL: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("VERDICT: PASS: %s\n", summary)
}

// run drives the demo and returns the one-line summary of what worked.
func run(bin string, hosts int, size int64, verbose, ipv6 bool) (summary string, err error) {
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("the demo creates network namespaces and TUN devices: run it as root")
	}
	if hosts < 2 {
		return "", fmt.Errorf("-hosts must be at least 2")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(abs); err != nil {
		return "", fmt.Errorf("flanneld binary: %w (run 'make build' first)", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	var logw io.Writer
	if verbose {
		logw = os.Stderr
	}
	config, overlay := "", cluster.DefaultNetwork.String()
	if ipv6 {
		config, overlay = cluster.DualStackConfig, overlay+" and "+cluster.IPv6Network.String()
	}
	fmt.Printf("flannel-go demo: %d hosts on a bridge (underlay 192.0.2.0/24), overlay %s, udp backend\n", hosts, overlay)
	step := func(n int, format string, args ...any) {
		fmt.Printf("\n[%d/6] %s\n", n, fmt.Sprintf(format, args...))
	}
	step(1, "building the testbed and starting flanneld on every host (h1 runs the embedded etcd)")
	start := time.Now()
	c, err := cluster.Start(ctx, cluster.Options{Flanneld: abs, Hosts: hosts, Log: logw, Config: config})
	if err != nil {
		return "", err
	}
	defer func() {
		step(6, "tearing down")
		if cerr := c.Close(); cerr != nil && err == nil {
			err = cerr
		}
		if left := c.Bed.Namespaces(); len(left) > 0 && err == nil {
			err = fmt.Errorf("namespaces left behind: %v", left)
		}
		fmt.Println("      all namespaces deleted")
	}()
	stopSig := testbed.CleanupOnSignal(c.Bed)
	defer stopSig()
	fmt.Printf("      %d flanneld ready in %s\n", hosts, time.Since(start).Round(time.Millisecond))

	step(2, "leases in etcd (etcdctl get --prefix %s)", cluster.DefaultPrefix)
	if err := showLeases(ctx, c, ipv6); err != nil {
		return "", err
	}

	step(3, "ping every container from every other")
	okPairs, pairs, rtts := pingFamilies(ctx, c, ipv6)
	if okPairs != pairs {
		return "", fmt.Errorf("%d of %d container pairs did not answer ping", pairs-okPairs, pairs)
	}

	step(4, "moving %d MB from %s to %s over the overlay", size/1_000_000, c.Nodes[0].Container.Addr, c.Nodes[1].Container.Addr)
	ov, err := cluster.Transfer(ctx, c.Nodes[0].Container, c.Nodes[1].Container, c.Nodes[1].Container.Addr, 5001, size)
	if err != nil {
		return "", fmt.Errorf("overlay transfer: %w", err)
	}
	match := "match"
	if !ov.Match() {
		match = "DIFFER"
	}
	fmt.Printf("      overlay:   %.0f Mbit/s (%s), SHA-256 at both ends %s\n", ov.Mbps(), ov.Duration.Round(time.Millisecond), match)

	step(5, "the same transfer over the bare veth, %s -> %s", c.Nodes[0].Host.Addr, c.Nodes[1].Host.Addr)
	raw, err := cluster.Transfer(ctx, c.Nodes[0].Host, c.Nodes[1].Host, c.Nodes[1].Host.Addr, 5002, size)
	if err != nil {
		return "", fmt.Errorf("bare veth transfer: %w", err)
	}
	fmt.Printf("      bare veth: %.0f Mbit/s (%s)\n", raw.Mbps(), raw.Duration.Round(time.Millisecond))
	fmt.Printf("      overlay / bare veth = %.2f\n", ov.Mbps()/raw.Mbps())
	if !ov.Match() {
		return "", fmt.Errorf("the overlay transfer arrived corrupted")
	}
	var sum float64
	for _, r := range rtts {
		sum += r
	}
	return fmt.Sprintf("%d hosts, %d/%d container pairs ping (avg %.3f ms), %d MB intact at %.0f Mbit/s (%.2fx bare veth)",
		hosts, okPairs, pairs, sum/float64(len(rtts)), size/1_000_000, ov.Mbps(), ov.Mbps()/raw.Mbps()), nil
}

// showLeases prints the leases in etcd, adds a container on every node and
// prints its subnet file's subnets and addresses.
func showLeases(ctx context.Context, c *cluster.Cluster, ipv6 bool) error {
	resp, err := c.Etcd.Get(ctx, cluster.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	for _, kv := range resp.Kvs {
		fmt.Printf("      %s\n      %s\n", kv.Key, kv.Value)
	}
	if err := c.AddContainers(ctx); err != nil {
		return err
	}
	for _, n := range c.Nodes {
		fmt.Printf("      %s: %s=%s/%d FLANNEL_MTU=%d -> container %s\n", n.Host.Name, "FLANNEL_SUBNET",
			n.Env.Subnet.Addr().Next(), n.Env.Subnet.Bits(), n.Env.MTU, n.Container.Addr)
		if ipv6 {
			fmt.Printf("      %s: FLANNEL_IPV6_SUBNET=%s/%d -> container %s\n", n.Host.Name,
				n.Env.IPv6Subnet.Addr().Next(), n.Env.IPv6Subnet.Bits(), n.ContainerIPv6)
		}
	}
	return nil
}

// pingFamilies runs pingAll over IPv4 and, with ipv6, over IPv6, and sums
// what it returns.
func pingFamilies(ctx context.Context, c *cluster.Cluster, ipv6 bool) (okPairs, pairs int, rtts []float64) {
	families := []func(*cluster.Node) netip.Addr{func(n *cluster.Node) netip.Addr { return n.Container.Addr }}
	if ipv6 {
		families = append(families, func(n *cluster.Node) netip.Addr { return n.ContainerIPv6 })
	}
	for _, addr := range families {
		ok, all, r := pingAll(ctx, c, addr)
		okPairs, pairs, rtts = okPairs+ok, pairs+all, append(rtts, r...)
	}
	return okPairs, pairs, rtts
}

// pingAll pings every container from every other at the address addr
// picks (IPv4 or IPv6) and prints each pair; it returns the pairs that
// answered, all pairs, and their average RTTs.
func pingAll(ctx context.Context, c *cluster.Cluster, addr func(*cluster.Node) netip.Addr) (okPairs, pairs int, rtts []float64) {
	for _, a := range c.Nodes {
		for _, b := range c.Nodes {
			if a == b {
				continue
			}
			pairs++
			out, perr := a.Container.Run(ctx, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", addr(b).String())
			avg := pingAvg(out)
			status := "ok"
			if perr != nil {
				status = "FAILED"
			} else {
				okPairs++
				rtts = append(rtts, avg)
			}
			fmt.Printf("      %-19s -> %-19s %s (avg %.3f ms)\n", addr(a), addr(b), status, avg)
		}
	}
	return okPairs, pairs, rtts
}

var rttRe = regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`)

// pingAvg extracts the average RTT in ms from ping's summary line.
func pingAvg(out string) float64 {
	m := rttRe.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}
