package testbed

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

func ping(t *testing.T, from interface {
	Run(context.Context, string, ...string) (string, error)
}, to netip.Addr) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := from.Run(ctx, "ping", "-c", "1", "-W", "2", to.String()); err != nil {
		t.Errorf("ping %s: %v", to, err)
	}
}

// listNamespaces returns the names in `ip netns list` that start with prefix.
func listNamespaces(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

func uniquePrefix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 2)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "fgt" + hex.EncodeToString(b)
}

func TestPingAllPairsAcrossBridge(t *testing.T) {
	RequireTool(t, "ping")
	b := NewT(t, Options{Hosts: 3})
	if len(b.Hosts) != 3 || b.Bridge == "" {
		t.Fatalf("got %d hosts, bridge %q", len(b.Hosts), b.Bridge)
	}
	for i, h := range b.Hosts {
		want := netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
		if h.Addr != want || h.Iface != "eth0" {
			t.Errorf("host %d: addr %s iface %s, want %s eth0", i, h.Addr, h.Iface, want)
		}
	}
	for _, from := range b.Hosts {
		for _, to := range b.Hosts {
			if from != to {
				ping(t, from, to.Addr)
			}
		}
	}
}

func TestDirect(t *testing.T) {
	RequireTool(t, "ping")
	b := NewT(t, Options{Hosts: 2, Direct: true, MTU: 9000, Underlay: netip.MustParsePrefix("198.51.100.0/24")})
	if b.Bridge != "" {
		t.Errorf("direct bed has bridge namespace %q", b.Bridge)
	}
	ping(t, b.Hosts[0], b.Hosts[1].Addr)
	ping(t, b.Hosts[1], b.Hosts[0].Addr)
	out, err := b.Hosts[0].Run(context.Background(), "ip", "link", "show", "eth0")
	if err != nil || !strings.Contains(out, "mtu 9000") {
		t.Errorf("eth0 of %s: %q, %v; want mtu 9000", b.Hosts[0].Name, out, err)
	}
	if got := len(b.Namespaces()); got != 2 {
		t.Errorf("direct bed has %d namespaces, want 2", got)
	}
}

func TestContainers(t *testing.T) {
	RequireTool(t, "ping")
	ctx := context.Background()
	b := NewT(t, Options{Hosts: 2})
	h1, h2 := b.Hosts[0], b.Hosts[1]
	br1 := netip.MustParsePrefix("198.18.32.1/24")
	c1, err := h1.AddContainer(ctx, "c1", br1, 1472)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := h1.AddContainer(ctx, "c2", br1, 1472)
	if err != nil {
		t.Fatal(err)
	}
	c3, err := h2.AddContainer(ctx, "c1", netip.MustParsePrefix("198.18.33.1/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if c1.Addr.String() != "198.18.32.2" || c2.Addr.String() != "198.18.32.3" || c3.Addr.String() != "198.18.33.2" {
		t.Errorf("container addresses %s %s %s, want 198.18.32.2 198.18.32.3 198.18.33.2", c1.Addr, c2.Addr, c3.Addr)
	}
	if c1.Gateway.String() != "198.18.32.1" || c1.Prefix.String() != "198.18.32.0/24" {
		t.Errorf("c1 gateway %s prefix %s", c1.Gateway, c1.Prefix)
	}
	if _, err := h1.AddContainer(ctx, "c9", netip.MustParsePrefix("198.18.40.1/24"), 0); err == nil {
		t.Error("AddContainer with a second bridge CIDR succeeded")
	}
	ping(t, c1, c1.Gateway)
	ping(t, c1, c2.Addr)
	ping(t, c1, h1.Addr) // via the default route into the host
	ping(t, h2, c3.Addr)
	out, err := c1.Run(ctx, "ip", "link", "show", "eth0")
	if err != nil || !strings.Contains(out, "mtu 1472") {
		t.Errorf("c1 eth0: %q, %v; want mtu 1472", out, err)
	}
	out, err = h1.Run(ctx, "ip", "link", "show", "cbr0")
	if err != nil || !strings.Contains(out, "mtu 1472") {
		t.Errorf("cbr0: %q, %v; want mtu 1472", out, err)
	}
}

func TestContainerBridgeFull(t *testing.T) {
	b := NewT(t, Options{Hosts: 1})
	ctx := context.Background()
	br := netip.MustParsePrefix("198.18.5.1/30") // room for .2 only
	if _, err := b.Hosts[0].AddContainer(ctx, "a", br, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Hosts[0].AddContainer(ctx, "b", br, 0); err == nil {
		t.Fatal("second container on a /30 got an address")
	}
}

func TestDo(t *testing.T) {
	b := NewT(t, Options{Hosts: 2})
	h := b.Hosts[0]
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	want, err := netns.GetFromName(h.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()

	err = h.Do(func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(want) {
			return errors.New("thread is not in the host namespace")
		}
		v, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(v)) != "1" {
			return errors.New("ip_forward is " + string(v))
		}
		// The underlay address only exists inside the namespace.
		l, err := net.ListenPacket("udp4", net.JoinHostPort(h.Addr.String(), "0"))
		if err != nil {
			return err
		}
		return l.Close()
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Error("Do did not restore the thread's namespace")
	}

	sentinel := errors.New("sentinel")
	if err := h.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want the error of fn", err)
	}
}

func TestCloseDeletesEverything(t *testing.T) {
	RequireRoot(t)
	RequireTool(t, "sleep")
	prefix := uniquePrefix(t)
	ctx := context.Background()
	b, err := New(ctx, Options{Hosts: 3, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	if !strings.HasPrefix(b.Prefix, prefix) || len(b.Prefix) != len(prefix)+6 {
		t.Errorf("bed prefix %q does not extend %q with 6 hex digits", b.Prefix, prefix)
	}
	if _, err := b.Hosts[1].AddContainer(ctx, "c1", netip.MustParsePrefix("198.18.7.1/24"), 0); err != nil {
		t.Fatal(err)
	}
	// A process left running must not keep the namespace alive.
	sleeper := b.Hosts[0].Command(ctx, "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sleeper.Wait() }()

	if got := listNamespaces(t, prefix); len(got) != 5 {
		t.Fatalf("namespaces before Close: %v, want 3 hosts, bridge and container", got)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := listNamespaces(t, prefix); len(got) != 0 {
		t.Errorf("namespaces left after Close: %v", got)
	}
	if got := b.Namespaces(); len(got) != 0 {
		t.Errorf("Namespaces() after Close: %v", got)
	}
	select {
	case err := <-waited:
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Errorf("sleep in the namespace ended with %v, want killed", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("process in the namespace survived Close")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNewCleansUpAfterFailure(t *testing.T) {
	RequireRoot(t)
	RequireTool(t, "ip")
	prefix := uniquePrefix(t)
	// The kernel refuses this MTU on a bridge after the namespaces exist.
	_, err := New(context.Background(), Options{Hosts: 2, Prefix: prefix, MTU: 1 << 20})
	if err == nil {
		t.Fatal("New with MTU 1048576 succeeded")
	}
	if got := listNamespaces(t, prefix); len(got) != 0 {
		t.Errorf("namespaces left after failed New: %v", got)
	}
}

func TestOptionErrors(t *testing.T) {
	for name, o := range map[string]Options{
		"no hosts":           {},
		"direct 3":           {Hosts: 3, Direct: true},
		"ipv6 underlay":      {Hosts: 2, Underlay: netip.MustParsePrefix("2001:db8::/64")},
		"underlay too small": {Hosts: 3, Underlay: netip.MustParsePrefix("192.0.2.0/30")},
		"tiny mtu":           {Hosts: 1, MTU: 10},
	} {
		if _, err := New(context.Background(), o); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
}

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.32.1/24": "198.18.32.255",
		"198.18.0.0/15":  "198.19.255.255",
		"192.0.2.5/30":   "192.0.2.7",
	} {
		if got := lastAddr(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("lastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestCleanupOnSignal runs a child copy of the test binary that builds a bed
// and waits; SIGINT must delete the namespaces and exit with 130.
func TestCleanupOnSignal(t *testing.T) {
	if os.Getenv("TESTBED_SIGNAL_CHILD") == "1" {
		signalChild()
		return
	}
	RequireRoot(t)
	RequireTool(t, "ip")
	prefix := uniquePrefix(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCleanupOnSignal$")
	cmd.Env = append(os.Environ(), "TESTBED_SIGNAL_CHILD=1", "TESTBED_PREFIX="+prefix)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for _, n := range listNamespaces(t, prefix) {
			_ = exec.Command("ip", "netns", "del", n).Run()
		}
	})
	sc := bufio.NewScanner(stdout)
	ready := false
	for sc.Scan() {
		if sc.Text() == "READY" {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatalf("child did not build its bed (scan error %v)", sc.Err())
	}
	if got := listNamespaces(t, prefix); len(got) != 3 {
		t.Fatalf("child namespaces: %v, want 3", got)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("child exit: %v, want status 130", err)
	}
	if got := listNamespaces(t, prefix); len(got) != 0 {
		t.Errorf("namespaces left after SIGINT: %v", got)
	}
}

func signalChild() {
	b, err := New(context.Background(), Options{Hosts: 2, Prefix: os.Getenv("TESTBED_PREFIX")})
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(3)
	}
	CleanupOnSignal(b)
	os.Stdout.WriteString("READY\n")
	select {}
}
