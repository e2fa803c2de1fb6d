//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/kernelmatrix"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// The kernel matrix's transfers and deadlines: QEMU's TCG carries about
// 10 Mbit/s through the overlay and runs everything 10-50 times slower
// than the host, so the transfers are small and the deadlines only bound
// a hang.
const (
	matrixTransfer        = 4 << 20
	matrixRestartTransfer = 1 << 20
	matrixDeadline        = 2 * time.Minute
	matrixTransferTimeout = 5 * time.Minute
)

// TestKernelMatrix is make test-kernels' cluster test, run once per kernel
// of internal/kernelmatrix's table with that kernel's expectation:
// FLANNEL_EXPECT_PATH (kernel or userspace), FLANNEL_EXPECT_REASON (in the
// fallback's log line) and FLANNEL_EXPECT_ATTACH (the attach mode, when
// pinned); make test skips it. Two flanneld with default flags and a
// separate etcd move a SHA-256-checked transfer between their containers,
// and their counters say which path carried it. Then one flanneld is
// killed with SIGKILL: nothing of it may blackhole traffic, and a
// restarted one takes over. FLANNEL_FASTPATH_ATTACH and _VARIANT reach
// every flanneld through the environment it inherits. The findings go to
// $FLANNEL_MATRIX_REPORT as JSON, also when the test fails.
func TestKernelMatrix(t *testing.T) {
	want := kernelmatrix.Expectation{
		Path:   os.Getenv("FLANNEL_EXPECT_PATH"),
		Reason: os.Getenv("FLANNEL_EXPECT_REASON"),
		Attach: os.Getenv("FLANNEL_EXPECT_ATTACH"),
	}
	switch want.Path {
	case "":
		t.Skip("run by make test-kernels, which sets FLANNEL_EXPECT_PATH")
	case kernelmatrix.PathKernel, kernelmatrix.PathUserspace:
	default:
		t.Fatalf("FLANNEL_EXPECT_PATH=%q, want kernel or userspace", want.Path)
	}
	rep := &kernelmatrix.ClusterReport{TransferBytes: matrixTransfer, SIGKILL: "not reached", Restart: "not reached"}
	if f := os.Getenv("FLANNEL_MATRIX_REPORT"); f != "" {
		t.Cleanup(func() {
			if err := rep.WriteFile(f); err != nil {
				t.Errorf("write the report: %v", err)
			}
		})
	}
	start := time.Now()
	step := func(what string) { t.Logf("%s after %s", what, time.Since(start).Round(time.Millisecond)) }
	c := startWith(t, cluster.Options{Hosts: 2, EtcdMembers: 1, ReadyTimeout: matrixDeadline, Config: cluster.DualStackConfig})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if f := os.Getenv("FLANNEL_MATRIX_REPORT"); f != "" {
		// Every flanneld's and etcd's log beside the report, for a look
		// after a run that passed too.
		t.Cleanup(func() { os.WriteFile(strings.TrimSuffix(f, ".json")+"-logs.txt", []byte(c.Logs()), 0o644) })
	}
	step("cluster ready")
	matrixStartPath(t, want, rep, n1, n2)
	step("start checked: " + rep.FastPathLog)
	matrixTransferPath(t, want, rep, n1, n2)
	step(fmt.Sprintf("transfer intact on the %s path (kernel %.0f bytes, userspace %.0f)", rep.Path, rep.KernelBytes, rep.UserBytes))
	rep.IPv6 = matrixSecondTransfer(t, want, n1, n1.Container, n2.Container, n2.ContainerIPv6, 5902)
	rep.Host = matrixSecondTransfer(t, want, n1, n1.Host, n2.Host, n2.Env.Subnet.Addr(), 5903)
	step("inner IPv6 and host-to-host transfers intact on the " + rep.IPv6 + " and " + rep.Host + " paths")
	matrixSIGKILL(t, want, rep, n1, n2)
	step("SIGKILL clean (leftover: " + strings.Join(rep.Leftover, ", ") + ")")
	matrixRestart(t, want, rep, n1, n2)
	step("restart took over")
}

// matrixStartPath records what flanneld said about the fast path at start
// and checks both nodes against want.
func matrixStartPath(t *testing.T, want kernelmatrix.Expectation, rep *kernelmatrix.ClusterReport, nodes ...*cluster.Node) {
	t.Helper()
	rep.FastPathLog = kernelmatrix.FastPathLine(nodes[0].Log())
	attrs := kernelmatrix.LogAttrs(rep.FastPathLog)
	_, labels := metricFamily(t, nodes[0], "flannel_fast_path_enabled")
	rep.Attach, rep.Variant, rep.Reason = first(attrs["attach"], labels["attach"]), first(attrs["variant"], labels["variant"]), attrs["reason"]
	for _, n := range nodes {
		checkFastPathState(t, want, n)
	}
	if want.Path == kernelmatrix.PathUserspace && !strings.Contains(rep.FastPathLog, "Kernel fast path unavailable") {
		t.Fatalf("want a fallback to the userspace router on %s, flanneld logged: %q", kernelmatrix.Release(), rep.FastPathLog)
	}
	if want.Path == kernelmatrix.PathUserspace && !strings.Contains(rep.FastPathLog, want.Reason) {
		t.Fatalf("the fallback's log line does not name the expected reason %q (internal/kernelmatrix's table) on %s: %q", want.Reason, kernelmatrix.Release(), rep.FastPathLog)
	}
	if want.Attach != "" && rep.Attach != want.Attach {
		t.Fatalf("attach mode %q, want %q: %q", rep.Attach, want.Attach, rep.FastPathLog)
	}
	if want.Path == kernelmatrix.PathKernel {
		waitMatrixPeers(t, 1, nodes...)
	}
}

// checkFastPathState checks that n's fast path runs exactly when want
// says the kernel path.
func checkFastPathState(t *testing.T, want kernelmatrix.Expectation, n *cluster.Node) {
	t.Helper()
	enabled, _ := metricFamily(t, n, "flannel_fast_path_enabled")
	line := kernelmatrix.FastPathLine(n.Log())
	switch {
	case want.Path == kernelmatrix.PathKernel && enabled != 1:
		t.Fatalf("%s: the fast path did not start on %s, where internal/kernelmatrix's table expects it: %q", n.Host.Name, kernelmatrix.Release(), line)
	case want.Path == kernelmatrix.PathUserspace && enabled != 0:
		t.Fatalf("%s: the fast path runs on %s (%q), where internal/kernelmatrix's table expects a fallback: change the row to Kernel(...)", n.Host.Name, kernelmatrix.Release(), line)
	}
}

// matrixTransferPath moves matrixTransfer bytes from n1's container to
// n2's and reads from the counters which path carried them.
func matrixTransferPath(t *testing.T, want kernelmatrix.Expectation, rep *kernelmatrix.ClusterReport, n1, n2 *cluster.Node) {
	t.Helper()
	waitFor(t, matrixDeadline, "ping from container to container", func() error {
		out, err := ping(t.Context(), n1.Container, n2.Container.Addr)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	kernelOut, userOut := `flannel_router_bytes_total{direction="out",path="kernel"}`, `flannel_router_bytes_total{direction="out",path="user"}`
	kernelIn := `flannel_router_bytes_total{direction="in",path="kernel"}`
	k0, u0, in0 := metricValue(t, n1, kernelOut), metricValue(t, n1, userOut), metricValue(t, n2, kernelIn)
	ctx, cancel := context.WithTimeout(t.Context(), matrixTransferTimeout)
	defer cancel()
	res, err := cluster.Transfer(ctx, n1.Container, n2.Container, n2.Container.Addr, 5901, matrixTransfer)
	rep.TransferOK = err == nil && res.Match()
	if !rep.TransferOK {
		t.Fatalf("transfer of %d bytes: %v (SHA-256 equal: %v)", matrixTransfer, err, err == nil && res.Match())
	}
	rep.KernelBytes = metricValue(t, n1, kernelOut) - k0
	rep.UserBytes = metricValue(t, n1, userOut) - u0
	rep.KernelBytesIn = metricValue(t, n2, kernelIn) - in0
	switch {
	case rep.KernelBytes >= matrixTransfer && rep.KernelBytesIn >= matrixTransfer:
		rep.Path = kernelmatrix.PathKernel
	case rep.KernelBytes == 0 && rep.KernelBytesIn == 0:
		rep.Path = kernelmatrix.PathUserspace
	default:
		rep.Path = "mixed"
	}
	if rep.Path != want.Path {
		t.Fatalf("the transfer took the %s path (kernel: %.0f bytes out, %.0f in; userspace: %.0f out), want %s",
			rep.Path, rep.KernelBytes, rep.KernelBytesIn, rep.UserBytes, want.Path)
	}
}

// matrixSecondTransfer moves a quarter of matrixTransfer from src to
// dstAddr on dst (inner IPv6 between the containers, or host to host) and
// returns the path n1 sent it on, which must be want's.
func matrixSecondTransfer(t *testing.T, want kernelmatrix.Expectation, n1 *cluster.Node, src, dst cluster.Endpoint, dstAddr netip.Addr, port int) string {
	t.Helper()
	const size = matrixTransfer / 4
	kernelOut := `flannel_router_bytes_total{direction="out",path="kernel"}`
	k0 := metricValue(t, n1, kernelOut)
	ctx, cancel := context.WithTimeout(t.Context(), matrixTransferTimeout)
	defer cancel()
	res, err := cluster.Transfer(ctx, src, dst, dstAddr, port, size)
	if err != nil || !res.Match() {
		t.Fatalf("transfer of %d bytes to %s: %v (SHA-256 equal: %v)", size, dstAddr, err, err == nil && res.Match())
	}
	path := kernelmatrix.PathUserspace
	switch k := metricValue(t, n1, kernelOut) - k0; {
	case k >= size:
		path = kernelmatrix.PathKernel
	case k > 0:
		path = "mixed"
	}
	if path != want.Path {
		t.Fatalf("the transfer to %s took the %s path, want %s", dstAddr, path, want.Path)
	}
	return path
}

// matrixSIGKILL kills n2's flanneld: its TUN, handoff device and tcx
// programs must go, a clsact filter it leaves must pass the underlay's
// datagrams to the stack, and n1 must stop finding a fast-path peer there.
// The handoff port stays closed by the guard's table, which the next
// start replaces (a window there would let strangers in).
func matrixSIGKILL(t *testing.T, want kernelmatrix.Expectation, rep *kernelmatrix.ClusterReport, n1, n2 *cluster.Node) {
	t.Helper()
	n2.Stop(syscall.SIGKILL, 10*time.Second)
	waitFor(t, matrixDeadline, "nothing of the killed flanneld left", func() error {
		var blocking []string
		blocking, rep.Leftover = matrixLeftovers(t, n2.Host)
		if len(blocking) > 0 {
			rep.SIGKILL = "left: " + strings.Join(blocking, "; ")
			return errors.New(rep.SIGKILL)
		}
		return nil
	})
	if _, err := cluster.UDPReach(t.Context(), n1.Host, n2.Host, n2.Host.Addr, 8285, []byte("after-sigkill"), 30*time.Second); err != nil {
		rep.SIGKILL = fmt.Sprintf("UDP to %s:8285 swallowed", n2.Host.Addr)
		t.Fatalf("after SIGKILL, UDP to %s:8285 does not reach a socket (leftover: %v): %v", n2.Host.Addr, rep.Leftover, err)
	}
	if want.Path == kernelmatrix.PathKernel && !guardPresent(t, n2.Host) {
		rep.SIGKILL = "the handoff guard went"
		t.Fatalf("after SIGKILL the handoff port's guard is gone: the next start would have a window")
	}
	if want.Path == kernelmatrix.PathKernel {
		rep.SIGKILL = "still answers probes"
		waitMatrixPeers(t, 0, n1)
	}
	rep.SIGKILL = "clean"
}

// matrixRestart starts n2's flanneld again: it must take over (one
// program of ours on the underlay where the fast path runs) and carry a
// transfer intact on the expected path.
func matrixRestart(t *testing.T, want kernelmatrix.Expectation, rep *kernelmatrix.ClusterReport, n1, n2 *cluster.Node) {
	t.Helper()
	rep.Restart = "failed"
	ctx := t.Context()
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, matrixDeadline); err != nil {
		t.Fatal(err)
	}
	checkFastPathState(t, want, n2)
	if want.Path == kernelmatrix.PathKernel {
		waitMatrixPeers(t, 1, n1, n2)
		if got := ourIngressPrograms(t, n2.Host); got != 1 {
			t.Fatalf("%d fast-path programs on %s's eth0 ingress after the restart, want 1", got, n2.Host.Name)
		}
	}
	kernelIn := `flannel_router_bytes_total{direction="in",path="kernel"}`
	in0 := metricValue(t, n2, kernelIn)
	tctx, cancel := context.WithTimeout(ctx, matrixTransferTimeout)
	defer cancel()
	res, err := cluster.Transfer(tctx, n1.Container, n2.Container, n2.Container.Addr, 5902, matrixRestartTransfer)
	if err != nil || !res.Match() {
		t.Fatalf("transfer after the restart: %v (SHA-256 equal: %v)", err, err == nil && res.Match())
	}
	if in := metricValue(t, n2, kernelIn) - in0; want.Path == kernelmatrix.PathKernel && in < matrixRestartTransfer {
		t.Fatalf("the restarted flanneld took %.0f bytes in on the kernel path, want the %d-byte transfer", in, matrixRestartTransfer)
	}
	rep.Restart = "ok"
}

// waitMatrixPeers waits until each node's fast path vouches for want peers.
func waitMatrixPeers(t *testing.T, want float64, nodes ...*cluster.Node) {
	t.Helper()
	waitFor(t, matrixDeadline, fmt.Sprintf("%v fast-path peers", want), func() error {
		for _, n := range nodes {
			if v := metricValue(t, n, "flannel_fast_path_kernel_peers"); v != want {
				return fmt.Errorf("%s has %v kernel peers, want %v", n.Host.Name, v, want)
			}
		}
		return nil
	})
}

// matrixLeftovers lists what a dead flanneld left on h: blocking is what
// must go with the process (TUN, handoff device, tcx programs); harmless
// are the cls_bpf filters on the underlay, which outlive it by design and
// must fail open (the caller checks that datagrams still get through).
func matrixLeftovers(t *testing.T, h *testbed.Host) (blocking, harmless []string) {
	t.Helper()
	if err := h.Do(func() error {
		for _, name := range []string{"flannel0", handoffDev} {
			if _, err := netlink.LinkByName(name); err == nil {
				blocking = append(blocking, "device "+name)
			}
		}
		for _, dir := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			ids, err := tcxProgramIDs(testbed.HostIface, dir)
			if err != nil {
				return err
			}
			for _, id := range ids {
				blocking = append(blocking, fmt.Sprintf("tcx program %d on %s (%v)", id, testbed.HostIface, dir))
			}
		}
		for _, f := range bpfFilters(testbed.HostIface) {
			harmless = append(harmless, "cls_bpf filter "+f+" on "+testbed.HostIface)
		}
		return nil
	}); err != nil {
		t.Fatalf("look for leftovers on %s: %v", h.Name, err)
	}
	return blocking, harmless
}

// ourIngressPrograms counts the fast path's programs on h's underlay
// ingress, tcx and cls_bpf.
func ourIngressPrograms(t *testing.T, h *testbed.Host) int {
	t.Helper()
	var n int
	if err := h.Do(func() error {
		ids, err := tcxProgramIDs(testbed.HostIface, ebpf.AttachTCXIngress)
		for _, f := range bpfFilters(testbed.HostIface) {
			if strings.HasPrefix(f, "ingress:") {
				n++
			}
		}
		n += len(ids)
		return err
	}); err != nil {
		t.Fatalf("count the programs on %s: %v", h.Name, err)
	}
	return n
}

// tcxProgramIDs lists the tcx programs on ifname; none where the kernel
// has no tcx (before 6.6).
func tcxProgramIDs(ifname string, dir ebpf.AttachType) ([]ebpf.ProgramID, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: dir})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, ebpf.ErrNotSupported) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("query the tcx programs on %s: %w", ifname, err)
	}
	var ids []ebpf.ProgramID
	for _, p := range res.Programs {
		ids = append(ids, p.ID)
	}
	return ids, nil
}

// bpfFilters names the cls_bpf filters on ifname's clsact hooks, as
// "ingress:NAME" or "egress:NAME"; none without a clsact qdisc.
func bpfFilters(ifname string) []string {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return nil
	}
	var out []string
	for dir, parent := range map[string]uint32{"ingress": netlink.HANDLE_MIN_INGRESS, "egress": netlink.HANDLE_MIN_EGRESS} {
		filters, _ := netlink.FilterList(l, parent)
		for _, f := range filters {
			if b, ok := f.(*netlink.BpfFilter); ok {
				out = append(out, dir+":"+b.Name)
			}
		}
	}
	return out
}

// metricFamily returns the first sample of family on n's /metrics and its
// labels, 0 and none when absent.
func metricFamily(t *testing.T, n *cluster.Node, family string) (float64, map[string]string) {
	t.Helper()
	code, body, err := n.HTTPGet(t.Context(), "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics on %s: %d %v", n.Host.Name, code, err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		series, val, ok := strings.Cut(sc.Text(), " ")
		name, labels, _ := strings.Cut(series, "{")
		if !ok || name != family {
			continue
		}
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("metric %s: %v", series, err)
		}
		return v, kernelmatrix.LogAttrs(strings.ReplaceAll(strings.TrimSuffix(labels, "}"), ",", " "))
	}
	return 0, nil
}

func first(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
