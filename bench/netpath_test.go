package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/ipmasq"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// bedPrefix names the benchmarks' namespaces (testbed appends random hex).
const bedPrefix = "fgb"

// flannelVariants are the flanneld configurations measured, each in fresh
// namespaces, so that each technique's share is visible: the kernel fast
// path, the userspace router with its defaults, with busy-polling, without
// the AQM, and without offloads.
var flannelVariants = []struct {
	name string
	args []string
}{
	{"flannel-go fast path", []string{"--fast-path=on"}},
	{"flannel-go", []string{"--fast-path=off"}},
	{"busy-poll 200us", []string{"--fast-path=off", "--busy-poll=200us"}},
	{"no AQM", []string{"--fast-path=off", "--aqm-target=0"}},
	{"no offloads", []string{"--fast-path=off", "--offloads=false"}},
}

// fastPathVariants are the fast path as older kernels run it, forced on
// this kernel through flanneld's hidden FLANNEL_FASTPATH_* settings.
var fastPathVariants = []struct {
	name string
	env  []string
}{
	{"fast path, clsact", []string{"FLANNEL_FASTPATH_ATTACH=clsact"}},
	{"fast path, 6.1's variant", []string{"FLANNEL_FASTPATH_ATTACH=clsact", "FLANNEL_FASTPATH_VARIANT=no-decap-flags"}},
	{"fast path, 5.10's variant", []string{"FLANNEL_FASTPATH_ATTACH=clsact", "FLANNEL_FASTPATH_VARIANT=no-coarse-clock,no-decap-flags"}},
}

// udpRates are the offered rates of the 64-byte UDP workload, in packets/s.
var udpRates = []int{25_000, 50_000, 100_000, 200_000}

// node is a namespace the workloads run in: a testbed host or container.
type node interface {
	Command(ctx context.Context, name string, args ...string) *exec.Cmd
	Do(fn func() error) error
}

// pathEnv is one path under test: traffic goes from src to dstAddr on dst,
// from srcAddr when it is valid.
type pathEnv struct {
	src, dst         node
	srcAddr, dstAddr netip.Addr
	pids             []int // the path's flanneld processes
	close            func()
	// passed reads, for a fast-path env, what its nodes' programs left
	// to the userspace router so far, by reason (both nodes summed).
	passed func(ctx context.Context) (map[string]float64, error)
	// host is the same path host to host: a process in the first host's
	// namespace to the second host's overlay address (flannel0's or
	// flannel.1's); nil where the path has no such address.
	host *pathEnv
}

// hostPaths are the paths measured host to host as well (the "host"
// workload group): the kernel's, the fast path and the userspace router.
// Raw veth's rows are host to host already.
var hostPaths = []string{BaselinePath, "flannel-go fast path", "flannel-go"}

// prefixed is a metric's key and label for the host-to-host rows.
func prefixed(host bool, key, label string) (string, string) {
	if !host {
		return key, label
	}
	return "host_" + key, "host to host: " + label
}

type pathDef struct {
	name  string
	setup func(ctx context.Context, b *testing.B) (*pathEnv, error)
	// groups limits the workload groups measured on the path (nil: all).
	groups []string
}

// ipv6Groups are the workloads of the inner-IPv6 paths: TCP over IPv6
// beside TCP over IPv4, and the RTTs.
var ipv6Groups = []string{"rtt", "tcp"}

func paths() []pathDef {
	ps := []pathDef{
		{name: "raw veth", setup: setupRaw},
		{name: BaselinePath, setup: setupVXLAN},
	}
	for _, v := range flannelVariants {
		ps = append(ps, pathDef{v.name, func(ctx context.Context, b *testing.B) (*pathEnv, error) {
			return setupFlannel(ctx, b, flanneld(b), v.args)
		}, nil})
	}
	// What older kernels get, forced on this one: the attach and the
	// variant of the programs each runs (see docs/data-plane.md's kernel table).
	for _, v := range fastPathVariants {
		ps = append(ps, pathDef{v.name, func(ctx context.Context, b *testing.B) (*pathEnv, error) {
			return setupFlannelEnv(ctx, b, flanneld(b), []string{"--fast-path=on"}, v.env)
		}, []string{"tcp"}})
	}
	ps = append(ps,
		pathDef{VXLANIPv6Path, func(ctx context.Context, b *testing.B) (*pathEnv, error) {
			return setupVXLANInner(ctx, b, true)
		}, ipv6Groups},
		pathDef{FlannelIPv6Path, func(ctx context.Context, b *testing.B) (*pathEnv, error) {
			return setupFlannelIPv6(ctx, b, flanneld(b))
		}, ipv6Groups},
	)
	if *baselineFlag != "" {
		// The same defaults, built from another commit: a before/after
		// comparison measured in one run.
		ps = append(ps, pathDef{"flannel-go baseline", func(ctx context.Context, b *testing.B) (*pathEnv, error) {
			return setupFlannel(ctx, b, *baselineFlag, nil)
		}, nil})
	}
	if *pathsFlag == "" {
		return ps
	}
	re := regexp.MustCompile(*pathsFlag)
	kept := ps[:0]
	for _, p := range ps {
		if p.name == BaselinePath || re.MatchString(p.name) {
			kept = append(kept, p)
		}
	}
	return kept
}

func newBed(ctx context.Context, b *testing.B) (*testbed.Bed, error) {
	bed, err := testbed.New(ctx, testbed.Options{Hosts: 2, Direct: true, Prefix: bedPrefix})
	if err != nil {
		return nil, err
	}
	b.Cleanup(func() { bed.Close() })
	return bed, nil
}

// setupRaw measures the underlay itself, host to host: the ceiling.
func setupRaw(ctx context.Context, b *testing.B) (*pathEnv, error) {
	bed, err := newBed(ctx, b)
	if err != nil {
		return nil, err
	}
	h1, h2 := bed.Hosts[0], bed.Hosts[1]
	return &pathEnv{src: h1, dst: h2, srcAddr: h1.Addr, dstAddr: h2.Addr, close: func() { bed.Close() }}, nil
}

// vtepMAC is host i's flannel.1 address (locally administered).
func vtepMAC(i int) string { return fmt.Sprintf("02:00:c6:12:%02x:00", i) }

// setupVXLAN builds kernel VXLAN in flannel's vxlan layout, as flanneld's
// vxlan backend would: flannel.1 (VNI 1, port 8472, nolearning, MTU 1450)
// with the subnet's .0/32, and for the peer a static FDB entry, a permanent
// neighbour entry and an onlink route. Host i owns 198.18.i.0/24 and has one
// container on cbr0, as Docker would with --bip=198.18.i.1/24 --mtu=1450.
func setupVXLAN(ctx context.Context, b *testing.B) (*pathEnv, error) {
	return setupVXLANInner(ctx, b, false)
}

// vxlanIPv6 is host i's IPv6 container subnet on the VXLAN path:
// 2001:db8:100:i::/64, the bridge at ::1, the container at ::2.
func vxlanIPv6(i int, host uint64) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00, 0, byte(i), 15: byte(host)})
}

// vxlanIPv6Cmds add IPv6 to flannel's VXLAN layout for host me and its
// peer, as a dual-stack VXLAN on one device would: flannel.1 holds the
// subnet's ::/128, the peer's ::/64 goes via the peer's :: with a
// permanent neighbour entry.
func vxlanIPv6Cmds(me, peer int) [][]string {
	return [][]string{
		{"ip", "-6", "addr", "add", vxlanIPv6(me, 0).String() + "/128", "dev", "flannel.1", "nodad"},
		{"ip", "-6", "neigh", "replace", vxlanIPv6(peer, 0).String(), "lladdr", vtepMAC(peer),
			"dev", "flannel.1", "nud", "permanent"},
		{"ip", "-6", "route", "add", vxlanIPv6(peer, 0).String() + "/64", "via", vxlanIPv6(peer, 0).String(),
			"dev", "flannel.1", "onlink"},
	}
}

// setupVXLANInner builds the VXLAN path; with ipv6 the containers also get
// IPv6 addresses and the traffic goes container to container over IPv6.
func setupVXLANInner(ctx context.Context, b *testing.B, ipv6 bool) (*pathEnv, error) {
	bed, err := newBed(ctx, b)
	if err != nil {
		return nil, err
	}
	var cts []*testbed.Container
	for i, h := range bed.Hosts {
		me, peer := i+1, 2-i
		peerHost := bed.Hosts[peer-1]
		cmds := [][]string{
			{"ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", h.Addr.String(),
				"dev", h.Iface, "dstport", "8472", "nolearning"},
			{"ip", "link", "set", "flannel.1", "address", vtepMAC(me), "mtu", "1450", "up"},
			{"ip", "addr", "add", fmt.Sprintf("198.18.%d.0/32", me), "dev", "flannel.1"},
			{"bridge", "fdb", "append", vtepMAC(peer), "dev", "flannel.1", "dst", peerHost.Addr.String()},
			{"ip", "neigh", "replace", fmt.Sprintf("198.18.%d.0", peer), "lladdr", vtepMAC(peer),
				"dev", "flannel.1", "nud", "permanent"},
			{"ip", "route", "add", fmt.Sprintf("198.18.%d.0/24", peer), "via", fmt.Sprintf("198.18.%d.0", peer),
				"dev", "flannel.1", "onlink"},
		}
		if ipv6 {
			if err := h.Do(func() error {
				return os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1"), 0o644)
			}); err != nil {
				bed.Close()
				return nil, fmt.Errorf("vxlan on %s: IPv6 forwarding: %w", h.Name, err)
			}
			cmds = append(cmds, vxlanIPv6Cmds(me, peer)...)
		}
		for _, c := range cmds {
			if _, err := h.Run(ctx, c[0], c[1:]...); err != nil {
				bed.Close()
				return nil, fmt.Errorf("vxlan on %s: %w", h.Name, err)
			}
		}
		if err := vxlanForwardRules(h, me, ipv6); err != nil {
			bed.Close()
			return nil, err
		}
		ct, err := h.AddContainer(ctx, "c1", netip.MustParsePrefix(fmt.Sprintf("198.18.%d.1/24", me)), 1450)
		if err != nil {
			bed.Close()
			return nil, err
		}
		if ipv6 {
			if err := addContainerIPv6(ctx, h, ct, me); err != nil {
				bed.Close()
				return nil, err
			}
		}
		cts = append(cts, ct)
	}
	env := &pathEnv{src: cts[0], dst: cts[1], dstAddr: cts[1].Addr, close: func() { bed.Close() }}
	env.host = &pathEnv{src: bed.Hosts[0], dst: bed.Hosts[1], dstAddr: netip.MustParseAddr("198.18.2.0")}
	if ipv6 {
		env.dstAddr = vxlanIPv6(2, 2)
	}
	if err := waitReachable(ctx, env, 10*time.Second); err != nil {
		bed.Close()
		return nil, err
	}
	return env, nil
}

// vxlanForwardRules installs on host me the FORWARD rules that flanneld
// installs by default whatever its backend (--iptables-forward-rules,
// upstream's FLANNEL-FWD chain, the same code as flannel-go's), so that
// the kernel path pays for the same firewall as flannel-go's paths: every
// forwarded packet crosses it twice, once on each host.
func vxlanForwardRules(h *testbed.Host, me int, ipv6 bool) error {
	nets := [][2]netip.Prefix{{cluster.DefaultNetwork, netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", me))}}
	if ipv6 {
		nets = append(nets, [2]netip.Prefix{netip.PrefixFrom(vxlanIPv6(0, 0), 48), netip.PrefixFrom(vxlanIPv6(me, 0), 64)})
	}
	for _, n := range nets {
		err := h.Do(func() error {
			r, err := ipmasq.New(n[0], n[1], false, ipmasq.Forward)
			if err != nil {
				return err
			}
			return r.Ensure()
		})
		if err != nil {
			return fmt.Errorf("vxlan on %s: forward rules for %s: %w", h.Name, n[0], err)
		}
	}
	return nil
}

// addContainerIPv6 gives host me's container ::2 of its IPv6 subnet, the
// bridge ::1 and the container a default route via the bridge, as Docker
// with --fixed-cidr-v6 would.
func addContainerIPv6(ctx context.Context, h *testbed.Host, ct *testbed.Container, me int) error {
	steps := []struct {
		n    node
		args []string
	}{
		{h, []string{"-6", "addr", "add", vxlanIPv6(me, 1).String() + "/64", "dev", testbed.ContainerBridge, "nodad"}},
		{ct, []string{"-6", "addr", "add", vxlanIPv6(me, 2).String() + "/64", "dev", ct.Iface, "nodad"}},
		{ct, []string{"-6", "route", "add", "default", "via", vxlanIPv6(me, 1).String(), "dev", ct.Iface}},
	}
	for _, st := range steps {
		if out, err := st.n.Command(ctx, "ip", st.args...).CombinedOutput(); err != nil {
			return fmt.Errorf("IPv6 for container %s: ip %s: %w: %s", ct.Name, strings.Join(st.args, " "), err, out)
		}
	}
	return nil
}

// setupFlannelIPv6 runs flanneld with upstream's dual-stack config and the
// userspace router (--fast-path=off, so that it compares with the
// "flannel-go" path's IPv4) and sends the traffic container to container
// over inner IPv6.
func setupFlannelIPv6(ctx context.Context, b *testing.B, bin string) (*pathEnv, error) {
	c, err := cluster.Start(ctx, cluster.Options{
		Flanneld: bin,
		Hosts:    2,
		Bed:      testbed.Options{Direct: true, Prefix: bedPrefix},
		Config:   cluster.DualStackConfig,
		Args:     []string{"--fast-path=off"},
	})
	if err != nil {
		return nil, err
	}
	b.Cleanup(func() { c.Close() })
	return flannelEnv(ctx, c, true)
}

// setupFlannel runs this project's flanneld (udp backend, default settings
// plus args) on two hosts with one container each; traffic goes container to
// container, as in a deployment.
func setupFlannel(ctx context.Context, b *testing.B, bin string, args []string) (*pathEnv, error) {
	return setupFlannelEnv(ctx, b, bin, args, nil)
}

// setupFlannelEnv is setupFlannel with environ added to flanneld's
// environment.
func setupFlannelEnv(ctx context.Context, b *testing.B, bin string, args, environ []string) (*pathEnv, error) {
	c, err := cluster.Start(ctx, cluster.Options{
		Flanneld: bin,
		Hosts:    2,
		Bed:      testbed.Options{Direct: true, Prefix: bedPrefix},
		Args:     args,
		Environ:  environ,
	})
	if err != nil {
		return nil, err
	}
	if err := checkForced(c, environ); err != nil {
		c.Close()
		return nil, err
	}
	b.Cleanup(func() { c.Close() })
	return flannelEnv(ctx, c, false)
}

// passedReasons sums flannel_router_passed_to_userspace_total by reason
// over c's nodes.
func passedReasons(ctx context.Context, c *cluster.Cluster) (map[string]float64, error) {
	out := map[string]float64{}
	for _, n := range c.Nodes {
		code, body, err := n.HTTPGet(ctx, "/metrics")
		if err != nil || code != 200 {
			return nil, fmt.Errorf("GET /metrics on %s: %d %v", n.Host.Name, code, err)
		}
		for line := range strings.Lines(body) {
			var reason string
			var v float64
			if _, err := fmt.Sscanf(line, "flannel_router_passed_to_userspace_total{reason=%q} %g", &reason, &v); err == nil {
				out[reason] += v
			}
		}
	}
	return out, nil
}

// checkForced makes sure every node runs the attach and variant environ
// forces: a typo would measure the default instead.
func checkForced(c *cluster.Cluster, environ []string) error {
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		want := map[string]string{"FLANNEL_FASTPATH_ATTACH": "attach=", "FLANNEL_FASTPATH_VARIANT": "variant="}[k]
		for _, n := range c.Nodes {
			if want != "" && !strings.Contains(n.Log(), want+v+" ") {
				return fmt.Errorf("%s: flanneld does not run with %s:\n%s", n.Host.Name, kv, n.Log())
			}
		}
	}
	return nil
}

// flannelEnv adds a container on each node of c and returns the path
// between them, over inner IPv6 with ipv6.
func flannelEnv(ctx context.Context, c *cluster.Cluster, ipv6 bool) (*pathEnv, error) {
	if err := c.AddContainers(ctx); err != nil {
		c.Close()
		return nil, err
	}
	src, dst := c.Nodes[0].Container, c.Nodes[1].Container
	env := &pathEnv{src: src, dst: dst, dstAddr: dst.Addr, close: func() { c.Close() }}
	env.host = &pathEnv{src: c.Nodes[0].Host, dst: c.Nodes[1].Host, dstAddr: c.Nodes[1].Env.Subnet.Addr()}
	env.passed = func(ctx context.Context) (map[string]float64, error) { return passedReasons(ctx, c) }
	if ipv6 {
		env.dstAddr = c.Nodes[1].ContainerIPv6
	}
	for _, n := range c.Nodes {
		env.pids = append(env.pids, n.PID())
	}
	if err := waitReachable(ctx, env, 20*time.Second); err != nil {
		logs := c.Logs()
		c.Close()
		return nil, fmt.Errorf("%w\n%s", err, logs)
	}
	return env, nil
}

// waitReachable pings until the path carries a packet both ways.
func waitReachable(ctx context.Context, env *pathEnv, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var out []byte
	var err error
	for time.Now().Before(deadline) {
		args := []string{"-c", "1", "-W", "1"}
		if env.srcAddr.IsValid() {
			args = append(args, "-I", env.srcAddr.String())
		}
		out, err = env.src.Command(ctx, "ping", append(args, env.dstAddr.String())...).CombinedOutput()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return fmt.Errorf("%s not reachable after %s: %v\n%s", env.dstAddr, timeout, err, out)
}

// listening reports whether a TCP socket listens on port in n's namespace.
func listening(n node, port int) bool {
	suffix := fmt.Sprintf(":%04X", port)
	found := false
	_ = n.Do(func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(data), "\n")[1:] {
				fs := strings.Fields(line)
				if len(fs) > 3 && strings.HasSuffix(fs[1], suffix) && fs[3] == "0A" {
					found = true
				}
			}
		}
		return nil
	})
	return found
}

// runner runs the workloads of one path.
type runner struct {
	env  *pathEnv
	dur  time.Duration
	port int
	// exe is the forwarder binary whose user time CPU-per-GB counts
	// (empty for kernel paths); cpu is the last iperf3 client's window.
	exe string
	cpu struct {
		before, after CPUSample
		err           error
	}
	// idleP99 is the idle RTT p99 of this repetition, in microseconds.
	idleP99 float64
	// groups limits the workload groups (pathDef.groups).
	groups []string
	// host marks the runner of the host-to-host rows (env is pathEnv.host).
	host bool
}

// want reports whether the workload group (rtt, tcp, udp) is selected
// and measured on the path.
func (r *runner) want(group string) bool {
	if r.groups != nil && !slices.Contains(r.groups, group) {
		return false
	}
	return *workloadsFlag == "" || slices.Contains(strings.Split(*workloadsFlag, ","), group)
}

// iperf runs one iperf3 test: a one-shot server on dst, then the client on
// src. It returns the client's JSON.
func (r *runner) iperf(ctx context.Context, args ...string) ([]byte, error) {
	r.port++
	port := strconv.Itoa(r.port)
	ctx, cancel := context.WithTimeout(ctx, r.dur+60*time.Second)
	defer cancel()
	srv := r.env.dst.Command(ctx, "iperf3", "-s", "-1", "-p", port)
	var srvOut bytes.Buffer
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("start iperf3 server: %w", err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	defer func() {
		select {
		case <-srvDone:
		case <-time.After(5 * time.Second):
			srv.Process.Kill()
			<-srvDone
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !listening(r.env.dst, r.port) {
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("iperf3 server not listening on port %s after 10 s: %s", port, srvOut.String())
		}
		select {
		case err := <-srvDone:
			srvDone <- err
			return nil, fmt.Errorf("iperf3 server exited: %v: %s", err, srvOut.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	cargs := []string{"-c", r.env.dstAddr.String(), "-p", port, "-J", "-t", strconv.Itoa(int(r.dur.Seconds()))}
	if r.env.srcAddr.IsValid() {
		cargs = append(cargs, "-B", r.env.srcAddr.String())
	}
	cli := r.env.src.Command(ctx, "iperf3", append(cargs, args...)...)
	var stderr bytes.Buffer
	cli.Stderr = &stderr
	var cerr, cerr2 error
	r.cpu.before, cerr = SampleCPU(r.exe)
	out, err := cli.Output()
	r.cpu.after, cerr2 = SampleCPU(r.exe)
	r.cpu.err = errors.Join(cerr, cerr2)
	if err != nil {
		// iperf3 -J reports its error in the JSON; the parser surfaces it.
		if len(out) > 0 {
			return out, nil
		}
		return nil, fmt.Errorf("iperf3 client: %w: %s", err, stderr.String())
	}
	return out, nil
}

// tcpMetrics names the throughput and retransmits of streams TCP
// streams, container to container or host to host.
func tcpMetrics(host bool, streams int) (gbps, retrans Metric) {
	key, label := fmt.Sprintf("tcp%d", streams), fmt.Sprintf("TCP %d stream", streams)
	if streams > 1 {
		label += "s"
	}
	key, label = prefixed(host, key, label)
	return Metric{key + "_gbps", label, "Gbit/s", true}, Metric{key + "_retrans", label + " retransmits", "count", false}
}

var (
	mCPUPerGB  = Metric{"cpu_s_per_gb", "CPU per GB, TCP 1 stream (flanneld user + kernel)", "CPU-s/GB", true}
	metricUnit = map[string]string{"Gbit/s": "Gbit/s", "count": "retrans", "CPU-s/GB": "CPU-s/GB", "us": "us", "x": "x", "kpps": "kpps", "%": "loss%"}
)

// udpMetrics names the figures of one offered rate. "sent" shows where
// iperf3's single-threaded sender, not the path, is the limit.
func udpMetrics(rate int) (sent, pps, loss Metric) {
	k := rate / 1000
	return Metric{fmt.Sprintf("udp%dk_sent_kpps", k), fmt.Sprintf("UDP 64 B at %dk pps, sent", k), "kpps", false},
		Metric{fmt.Sprintf("udp%dk_kpps", k), fmt.Sprintf("UDP 64 B at %dk pps, delivered", k), "kpps", true},
		Metric{fmt.Sprintf("udp%dk_loss", k), fmt.Sprintf("UDP 64 B at %dk pps, loss", k), "%", false}
}

// udpSenderRate is the rate one iperf3 sender reliably offers on these
// machines (one iperf3 tops out near 80k pps of 64-byte datagrams).
const udpSenderRate = 50_000

// udpLoad offers rate pps of 64-byte datagrams from as many iperf3 senders
// in parallel as it takes, each with its own server, and sums what they
// sent and what arrived.
func (r *runner) udpLoad(ctx context.Context, rate int) (UDPResult, error) {
	n := max(1, (rate+udpSenderRate-1)/udpSenderRate)
	outs := make([][]byte, n)
	errs := make([]error, n)
	base := r.port
	r.port += n
	var wg sync.WaitGroup
	for i := range n {
		sender := &runner{env: r.env, dur: r.dur, port: base + i}
		wg.Go(func() {
			outs[i], errs[i] = sender.iperf(ctx, "-u", "-l", "64", "-b", strconv.Itoa(rate/n*64*8))
		})
	}
	wg.Wait()
	var sum UDPResult
	for i := range n {
		if errs[i] != nil {
			return UDPResult{}, fmt.Errorf("sender %d of %d: %w", i+1, n, errs[i])
		}
		res, err := ParseIperfUDP(outs[i])
		if err != nil {
			return UDPResult{}, fmt.Errorf("sender %d of %d: %w", i+1, n, err)
		}
		sum.Sent += res.Sent
		sum.Delivered += res.Delivered
		sum.Seconds = max(sum.Seconds, res.Seconds)
		sum.SentSecs = max(sum.SentSecs, res.SentSecs)
	}
	return sum, nil
}

// run measures every workload on the path and records the figures; a
// failed workload is logged and recorded as NaN.
func (r *runner) run(ctx context.Context, b *testing.B, path string) {
	if r.want("rtt") {
		r.idleCPU(b, path)
		for _, streams := range []int{0, 1, 4} {
			r.rtt(ctx, b, path, streams)
		}
	}
	if r.want("tcp") {
		r.tcp(ctx, b, path)
	}
	if r.env.host != nil && r.want("host") && slices.Contains(hostPaths, path) {
		hr := &runner{env: r.env.host, dur: r.dur, port: r.port + 100, exe: r.exe, host: true}
		hr.env.pids = r.env.pids
		for _, streams := range []int{0, 1, 4} {
			hr.rtt(ctx, b, path, streams)
		}
		hr.tcp(ctx, b, path)
		r.port = hr.port
	}
	r.recordPassed(ctx, b, path)
	for _, rate := range udpRates {
		if !r.want("udp") {
			break
		}
		ms, mp, ml := udpMetrics(rate)
		results.SetOffered(mp.Key, float64(rate)/1000, ms.Key)
		res, err := r.udpLoad(ctx, rate)
		if err != nil {
			failed(b, path, fmt.Sprintf("UDP %d pps", rate), err, ms, mp, ml)
			continue
		}
		results.Add(path, ms, res.SentPPS()/1000)
		results.Add(path, mp, res.PPS()/1000)
		results.Add(path, ml, res.LossPercent())
	}
}

// Packets the fast path's programs left to userspace during the TCP and
// RTT workloads, both nodes: the kernel path should keep them all.
var (
	mPassedAll   = Metric{"passed_userspace", "fast path: packets passed to userspace during the TCP and RTT workloads", "count", false}
	mPassedNeigh = Metric{"passed_no_neighbour", "fast path: of them for no_neighbour", "count", false}
)

// recordPassed records what the fast path passed to userspace so far.
func (r *runner) recordPassed(ctx context.Context, b *testing.B, path string) {
	if r.env.passed == nil || !strings.Contains(path, "fast path") {
		return
	}
	m, err := r.env.passed(ctx)
	if err != nil {
		failed(b, path, "passed to userspace", err, mPassedAll, mPassedNeigh)
		return
	}
	var all float64
	for _, v := range m {
		all += v
	}
	results.Add(path, mPassedAll, all)
	results.Add(path, mPassedNeigh, m["no_neighbour"])
	b.Logf("%s: passed to userspace by reason: %v", path, m)
}

// failed logs a failed workload and records its figures as NaN.
func failed(b *testing.B, path, what string, err error, ms ...Metric) {
	b.Errorf("%s, %s: %v", path, what, err)
	for _, m := range ms {
		results.Add(path, m, math.NaN())
	}
}

// tcp measures 1 and 4 TCP streams, and the CPU per GB of one stream
// container to container.
func (r *runner) tcp(ctx context.Context, b *testing.B, path string) {
	for _, streams := range []int{1, 4} {
		mg, mr := tcpMetrics(r.host, streams)
		cpuRow := streams == 1 && !r.host
		out, err := r.iperf(ctx, "-P", strconv.Itoa(streams))
		var res TCPResult
		if err == nil {
			res, err = ParseIperfTCP(out)
		}
		if err != nil {
			ms := []Metric{mg, mr}
			if cpuRow {
				ms = append(ms, mCPUPerGB)
			}
			failed(b, path, mg.Name, err, ms...)
			continue
		}
		results.Add(path, mg, res.BitsPerSecond/1e9)
		results.Add(path, mr, float64(res.Retransmits))
		if cpuRow {
			cpu := math.NaN()
			if r.cpu.err == nil && res.Bytes > 0 {
				cpu = CPUSeconds(r.cpu.before, r.cpu.after) / (res.Bytes / 1e9)
			}
			results.Add(path, mCPUPerGB, cpu)
		}
	}
}

// BenchmarkDataPath measures every path with every workload, each path in
// fresh namespaces, the paths interleaved within each repetition so that
// the machine's drift hits them alike. It then reports each median as a
// sub-benchmark, also as a ratio to kernel VXLAN ("x-vxlan").
func BenchmarkDataPath(b *testing.B) {
	testbed.RequireRoot(b)
	for _, tool := range []string{"ip", "bridge", "iperf3", "ping"} {
		testbed.RequireTool(b, tool)
	}
	reps, dur := 3, 10*time.Second
	if *quickFlag {
		reps, dur = 1, 3*time.Second
	}
	if *repsFlag > 0 {
		reps = *repsFlag
	}
	results.Meta["reps"] = strconv.Itoa(reps)
	results.Meta["duration"] = dur.String()
	results.Meta["endpoints"] = "raw veth: host to host; other paths: container to container, and in the host_* rows a process in host 1's namespace to host 2's flannel0 (VXLAN: flannel.1) address"
	results.Meta["cpu_per_gb"] = CPUPerGBCovers
	ctx := b.Context()
	ps := paths()
	results.Meta["flanneld_version"] = binaryVersion(flanneld(b))
	if *baselineFlag != "" {
		results.Meta["baseline_flanneld_version"] = binaryVersion(*baselineFlag)
	}
	for rep := range reps {
		for i := range ps {
			// Rotating the order spreads slow phases of the machine over paths.
			p := ps[(i+rep)%len(ps)]
			start := time.Now()
			env, err := p.setup(ctx, b)
			if err != nil {
				b.Errorf("rep %d, %s: setup: %v", rep+1, p.name, err)
				continue
			}
			r := &runner{env: env, dur: dur, port: 5200, exe: flanneld(b), groups: p.groups}
			r.run(ctx, b, p.name)
			env.close()
			b.Logf("rep %d, %s: %s", rep+1, p.name, time.Since(start).Round(time.Second))
		}
	}
	for _, m := range results.Metrics {
		base := results.RatioBase(m)
		for _, p := range results.Paths {
			s := results.Summary(m.Key, p)
			if s.N == 0 {
				continue
			}
			b.Run(strings.ReplaceAll(p, " ", "_")+"/"+m.Key, func(b *testing.B) {
				b.ReportMetric(0, "ns/op")
				b.ReportMetric(s.Median, metricUnit[m.Unit])
				if base != nil && p != BaselinePath {
					b.ReportMetric(s.Median/base.Median, "x-vxlan")
				}
			})
		}
	}
}

// binaryVersion is what the flanneld binary says it is (its commit when
// built by make), for the result file.
func binaryVersion(bin string) string {
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		return "unknown: " + err.Error()
	}
	return strings.TrimSpace(string(out))
}
