package dockeropts

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// sampleEnv has the structure of upstream's dist/sample_subnet.env, moved
// into the project's overlay range.
const sampleEnv = `FLANNEL_NETWORK=198.18.0.0/16
FLANNEL_SUBNET=198.18.74.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=false
`

const (
	lineBIP      = `DOCKER_OPT_BIP="--bip=198.18.74.1/24"` + "\n"
	lineIPMasq   = `DOCKER_OPT_IPMASQ="--ip-masq=true"` + "\n"
	lineMTU      = `DOCKER_OPT_MTU="--mtu=1472"` + "\n"
	combinedOpts = ` --bip=198.18.74.1/24 --ip-masq=true --mtu=1472"` + "\n"
)

// noRoutes is a routing table without a conflicting route.
func noRoutes() ([]string, error) {
	return []string{
		"default via 192.0.2.254 dev eth0",
		"192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.1",
		"198.18.74.0/24 dev cbr0 proto kernel scope link src 198.18.74.1",
	}, nil
}

type result struct {
	code   int
	stderr string
	out    string // content of the -d file; "<absent>" when not written
}

// run calls Main with -f and -d pointing into a temp dir holding env.
func run(t *testing.T, env string, environ []string, routes func() ([]string, error), flags ...string) result {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "subnet.env")
	if env != "" {
		if err := os.WriteFile(in, []byte(env), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	outFile := filepath.Join(dir, "docker_opts.env")
	if routes == nil {
		routes = noRoutes
	}
	var stderr bytes.Buffer
	args := append([]string{"-f", in, "-d", outFile}, flags...)
	code := Run("mk-docker-opts.sh", args, environ, &stderr, routes)
	r := result{code: code, stderr: stderr.String(), out: "<absent>"}
	if b, err := os.ReadFile(outFile); err == nil {
		r.out = string(b)
	}
	return r
}

func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags []string
		want  string
	}{
		{"default", nil, lineBIP + lineIPMasq + lineMTU + `DOCKER_OPTS="` + combinedOpts},
		{"-i", []string{"-i"}, lineBIP + lineIPMasq + lineMTU},
		{"-c", []string{"-c"}, `DOCKER_OPTS="` + combinedOpts},
		{"-k CUSTOM_KEY", []string{"-k", "CUSTOM_KEY"}, lineBIP + lineIPMasq + lineMTU + `CUSTOM_KEY="` + combinedOpts},
		{"-kCUSTOM_KEY attached", []string{"-kCUSTOM_KEY"}, lineBIP + lineIPMasq + lineMTU + `CUSTOM_KEY="` + combinedOpts},
		{"-m", []string{"-m"}, lineBIP + lineMTU + `DOCKER_OPTS=" --bip=198.18.74.1/24 --mtu=1472"` + "\n"},
		{"-i -c", []string{"-i", "-c"}, lineBIP + lineIPMasq + lineMTU + `DOCKER_OPTS="` + combinedOpts},
		{"-ic clustered", []string{"-ic"}, lineBIP + lineIPMasq + lineMTU + `DOCKER_OPTS="` + combinedOpts},
		{"-c -m", []string{"-c", "-m"}, `DOCKER_OPTS=" --bip=198.18.74.1/24 --mtu=1472"` + "\n"},
		{"operand ends options", []string{"-c", "extra", "-i"}, `DOCKER_OPTS="` + combinedOpts},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, sampleEnv, nil, nil, tc.flags...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
			}
			if r.out != tc.want {
				t.Errorf("output:\n%s\nwant:\n%s", r.out, tc.want)
			}
		})
	}
}

func TestIPMasqTrueInverted(t *testing.T) {
	env := strings.Replace(sampleEnv, "FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=true", 1)
	r := run(t, env, nil, nil)
	want := lineBIP + `DOCKER_OPT_IPMASQ="--ip-masq=false"` + "\n" + lineMTU +
		`DOCKER_OPTS=" --bip=198.18.74.1/24 --ip-masq=false --mtu=1472"` + "\n"
	if r.code != 0 || r.out != want {
		t.Errorf("exit %d, output:\n%s\nwant:\n%s", r.code, r.out, want)
	}
}

func TestInvalidIPMasq(t *testing.T) {
	env := strings.Replace(sampleEnv, "FLANNEL_IPMASQ=false", "FLANNEL_IPMASQ=yes", 1)
	r := run(t, env, nil, nil)
	if r.code != 1 || r.stderr != "Invalid value of FLANNEL_IPMASQ: yes\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if r.out != "<absent>" {
		t.Errorf("output file written before the IPMASQ check: %q", r.out)
	}
	// -m skips the check.
	if r := run(t, env, nil, nil, "-m"); r.code != 0 {
		t.Errorf("-m with invalid FLANNEL_IPMASQ: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestUsage(t *testing.T) {
	for _, flags := range [][]string{{"-h"}, {"-?"}, {"-x"}, {"-i", "-k"}, {"-ih"}} {
		r := run(t, sampleEnv, nil, nil, flags...)
		if r.code != 1 || !strings.Contains(r.stderr, "mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]") {
			t.Errorf("%v: exit %d, stderr %q; want usage and exit 1", flags, r.code, r.stderr)
		}
		if r.out != "<absent>" {
			t.Errorf("%v: output file written", flags)
		}
	}
	r := run(t, sampleEnv, nil, nil, "-x")
	if !strings.HasPrefix(r.stderr, "mk-docker-opts.sh: illegal option -- x\n") {
		t.Errorf("-x: stderr %q does not name the bad option", r.stderr)
	}
}

func TestRoutingTableConflict(t *testing.T) {
	routes := func() ([]string, error) {
		l, _ := noRoutes()
		return append(l, "198.18.74.0/24 via 192.0.2.2 dev eth0"), nil
	}
	r := run(t, sampleEnv, nil, routes)
	if r.code != 1 || r.stderr != "Your routing table already contains the subnet: 198.18.74.0/24 via 192.0.2.2 dev eth0\n" {
		t.Errorf("exit %d, stderr %q", r.code, r.stderr)
	}
	if want := lineBIP + lineIPMasq + lineMTU + `DOCKER_OPTS="` + combinedOpts; r.out != want {
		t.Errorf("output must be written before the route check; got:\n%s", r.out)
	}
}

func TestRoutesErrorDoesNotFail(t *testing.T) {
	r := run(t, sampleEnv, nil, func() ([]string, error) { return nil, errors.New("no ip") })
	if r.code != 0 || !strings.Contains(r.stderr, "no ip") {
		t.Errorf("exit %d, stderr %q; want 0 and a warning", r.code, r.stderr)
	}
}

func TestEnvironment(t *testing.T) {
	environ := []string{
		"DOCKER_OPTS=--log-level=warn",
		"DOCKER_OPT_AAA=--iptables=false",
		"DOCKER_OPT_ZZZ=--debug",
		"PATH=/usr/bin",
	}
	r := run(t, sampleEnv, environ, nil)
	want := `DOCKER_OPT_AAA="--iptables=false"` + "\n" + lineBIP + lineIPMasq + lineMTU +
		`DOCKER_OPT_ZZZ="--debug"` + "\n" +
		`DOCKER_OPTS="--log-level=warn  --iptables=false --bip=198.18.74.1/24 --ip-masq=true --mtu=1472 --debug"` + "\n"
	if r.code != 0 || r.out != want {
		t.Errorf("exit %d, stderr %q, output:\n%s\nwant:\n%s", r.code, r.stderr, r.out, want)
	}
}

func TestKeyFromSourcedFile(t *testing.T) {
	env := sampleEnv + "DOCKER_NETWORK_OPTIONS='--dns=192.0.2.53'\n"
	r := run(t, env, []string{"DOCKER_NETWORK_OPTIONS=ignored"}, nil, "-c", "-k", "DOCKER_NETWORK_OPTIONS")
	want := `DOCKER_NETWORK_OPTIONS="--dns=192.0.2.53  --bip=198.18.74.1/24 --ip-masq=true --mtu=1472"` + "\n"
	if r.code != 0 || r.out != want {
		t.Errorf("exit %d, output:\n%s\nwant:\n%s", r.code, r.out, want)
	}
}

func TestMissingEnvFile(t *testing.T) {
	r := run(t, "", []string{"FLANNEL_MTU=1400"}, func() ([]string, error) {
		t.Error("routing table read without FLANNEL_SUBNET")
		return nil, nil
	})
	want := `DOCKER_OPT_MTU="--mtu=1400"` + "\n" + `DOCKER_OPTS=" --mtu=1400"` + "\n"
	if r.code != 0 || r.out != want {
		t.Errorf("exit %d, output:\n%s\nwant:\n%s", r.code, r.out, want)
	}
}

func TestParseEnv(t *testing.T) {
	in := "# comment\n\nexport A=1\nB=\"two words\"\nC='x'\nD=\n1X=bad\nnot an assignment\n  E=spaced  \n"
	got := map[string]string{}
	if err := ParseEnv(strings.NewReader(in), got); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"A": "1", "B": "two words", "C": "x", "D": "", "E": "spaced"}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

func TestSubnetOf(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.74.1/24": "198.18.74.0/24",
		"198.18.0.17/28": "198.18.0.16/28",
	} {
		if got, err := subnetOf(in); err != nil || got != want {
			t.Errorf("subnetOf(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"198.18.74.1", "x/24", "198.18.74.x/24"} {
		if _, err := subnetOf(bad); err == nil {
			t.Errorf("subnetOf(%q) succeeded", bad)
		}
	}
}

// TestRealRoutingTable runs the default `ip route show` inside a testbed
// host whose routing table has a gateway route for the subnet.
func TestRealRoutingTable(t *testing.T) {
	b := testbed.NewT(t, testbed.Options{Hosts: 2})
	h := b.Hosts[0]
	ctx := context.Background()
	if _, err := h.Run(ctx, "ip", "route", "add", "198.18.74.0/24", "via", b.Hosts[1].Addr.String()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "subnet.env")
	if err := os.WriteFile(in, []byte(sampleEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	var code int
	err := h.Do(func() error {
		code = Main([]string{"-f", in, "-d", filepath.Join(dir, "out.env")}, os.Getenv, io.Discard, &stderr, nil)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := "Your routing table already contains the subnet: 198.18.74.0/24 via 192.0.2.2 dev eth0 \n"
	if code != 1 || stderr.String() != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", code, stderr.String(), want)
	}

	// Without the gateway route the check passes.
	c, err := b.Hosts[1].AddContainer(ctx, "c1", netip.MustParsePrefix("198.18.74.1/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	err = c.Host.Do(func() error {
		code = Main([]string{"-f", in, "-d", filepath.Join(dir, "out.env")}, os.Getenv, io.Discard, &stderr, nil)
		return nil
	})
	if err != nil || code != 0 {
		t.Errorf("host with only the bridge route: exit %d, stderr %q, %v", code, stderr.String(), err)
	}
}

// TestMainReadsProcessEnvironment checks that Main finds DOCKER_OPT_*
// variables of the process environment and reads values through getenv.
func TestMainReadsProcessEnvironment(t *testing.T) {
	t.Setenv("DOCKER_OPT_AAA", "--from-process")
	dir := t.TempDir()
	in := filepath.Join(dir, "subnet.env")
	if err := os.WriteFile(in, []byte(sampleEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.env")
	getenv := func(k string) string {
		if k == "DOCKER_OPT_AAA" {
			return "--via-getenv"
		}
		return os.Getenv(k)
	}
	var stderr bytes.Buffer
	if code := Main([]string{"-c", "-f", in, "-d", out}, getenv, io.Discard, &stderr, noRoutes); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if want := `DOCKER_OPTS=" --via-getenv` + combinedOpts; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestIPv6Lines: upstream's mk-docker-opts.sh reads no FLANNEL_IPV6_*
// variable, so a dual-stack file gives exactly the IPv4 output, and an
// IPv6-only file (no FLANNEL_SUBNET) gives no --bip and no route check.
func TestIPv6Lines(t *testing.T) {
	dual := "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.74.1/24\nFLANNEL_IPV6_NETWORK=2001:db8:100::/48\n" +
		"FLANNEL_IPV6_SUBNET=2001:db8:100:1a::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	if r := run(t, dual, nil, nil); r.code != 0 || r.out != lineBIP+lineIPMasq+lineMTU+`DOCKER_OPTS="`+combinedOpts {
		t.Errorf("dual-stack file: exit %d, stderr %q, output:\n%s", r.code, r.stderr, r.out)
	}
	v6 := "FLANNEL_IPV6_NETWORK=2001:db8:100::/48\nFLANNEL_IPV6_SUBNET=2001:db8:100:1a::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	r := run(t, v6, nil, func() ([]string, error) {
		t.Error("routing table read without FLANNEL_SUBNET")
		return nil, nil
	})
	if want := lineIPMasq + lineMTU + `DOCKER_OPTS=" --ip-masq=true --mtu=1472"` + "\n"; r.code != 0 || r.out != want {
		t.Errorf("IPv6-only file: exit %d, stderr %q, output:\n%s\nwant:\n%s", r.code, r.stderr, r.out, want)
	}
}
