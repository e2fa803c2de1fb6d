//go:build linux

package main

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/extiface"
)

func parse(t *testing.T, args []string, env map[string]string) (*options, error) {
	t.Helper()
	var out bytes.Buffer
	return parseOptions("flanneld", args, func(k string) string { return env[k] }, &out, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestFlagDefaults(t *testing.T) {
	o, err := parse(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.etcdEndpoints != "http://127.0.0.1:4001,http://127.0.0.1:2379" || o.etcdPrefix != "/coreos.com/network" ||
		o.subnetFile != "/run/flannel/subnet.env" || o.subnetRenewMargin != 60 || o.iptablesResync != 5 ||
		!o.iptablesForwardRules || o.healthzIP != "0.0.0.0" || o.healthzPort != 0 || o.ipMasq {
		t.Fatalf("defaults differ from upstream: %+v", o)
	}
}

func TestSingleAndDoubleDash(t *testing.T) {
	o, err := parse(t, []string{"-iface=eth0", "--iface", "eth1", "--etcd-prefix=/x/network", "-ip-masq"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.ifaces, ",") != "eth0,eth1" || o.etcdPrefix != "/x/network" || !o.ipMasq {
		t.Fatalf("got %+v", o)
	}
}

func TestEnvFillsOnlyUnsetFlags(t *testing.T) {
	env := map[string]string{
		"FLANNELD_ETCD_ENDPOINTS":            "http://192.0.2.1:2379",
		"FLANNELD_ETCD_PREFIX":               "/from/env",
		"FLANNELD_IP_MASQ":                   "true",
		"FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "30",
		"FLANNELD_IFACE":                     "eth9",
		"FLANNELD_VERSION":                   "true",
	}
	o, err := parse(t, []string{"--etcd-prefix=/from/flag"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if o.etcdEndpoints != "http://192.0.2.1:2379" || o.etcdPrefix != "/from/flag" || !o.ipMasq ||
		o.subnetRenewMargin != 30 || strings.Join(o.ifaces, ",") != "eth9" || o.version {
		t.Fatalf("got %+v", o)
	}
}

func TestBadEnvValueIsNotFatal(t *testing.T) {
	o, err := parse(t, nil, map[string]string{"FLANNELD_HEALTHZ_PORT": "many"})
	if err != nil {
		t.Fatal(err)
	}
	if o.healthzPort != 0 {
		t.Fatalf("healthz-port = %d", o.healthzPort)
	}
}

func TestRangesNameTheFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--subnet-lease-renew-margin=0"}, "Invalid subnet-lease-renew-margin option, out of acceptable range"},
		{[]string{"--subnet-lease-renew-margin=1440"}, "Invalid subnet-lease-renew-margin option, out of acceptable range"},
		{[]string{"--queues=0"}, "--queues"},
		{[]string{"--socket-buffer=1"}, "--socket-buffer"},
		{[]string{"--tun-txqueuelen=0"}, "--tun-txqueuelen"},
		{[]string{"--healthz-port=70000"}, "--healthz-port"},
		{[]string{"--iptables-resync=0"}, "--iptables-resync"},
		{[]string{"--etcd-endpoints="}, "--etcd-endpoints"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		_, err := parse(t, tc.args, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestVersionAndHelpExitZero(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"flanneld", "--version"}, func(string) string { return "" }, &out, &errb); code != 0 || strings.Split(errb.String(), "\n")[0] != version {
		t.Fatalf("--version: code %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"flanneld", "-h"}, func(string) string { return "" }, &out, &errb); code != 0 || !strings.HasPrefix(errb.String(), "Usage: flanneld [OPTION]...") {
		t.Fatalf("-h: code %d, stderr %q", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"flanneld", "--subnet-lease-renew-margin=0"}, func(string) string { return "" }, &out, &errb); code != 1 {
		t.Fatalf("bad margin: code %d, want 1", code)
	}
}

// TestUpstreamFlagsAccepted gives every flag of upstream v0.28.9 that has no
// meaning here (and klog's), on the command line and through FLANNELD_*:
// parsing succeeds with one warning naming them all.
func TestUpstreamFlagsAccepted(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	args := []string{"--vmodule=main=4,registry=2", "--log_backtrace_at=main.go:120", "-v=3", "--public-ipv6=2001:db8::1",
		"--logtostderr", "-alsologtostderr=false", "--stderrthreshold=INFO", "--kube-subnet-mgr=false", "--iface=eth0"}
	env := map[string]string{"FLANNELD_LOG_DIR": "/var/log/flannel"}
	o, err := parseOptions("flanneld", args, func(k string) string { return env[k] }, &logs, log)
	if err != nil {
		t.Fatal(err)
	}
	if o.verbosity != 3 || logLevel(o.verbosity) != slog.LevelDebug || strings.Join(o.ifaces, ",") != "eth0" || o.publicIPv6 != "2001:db8::1" {
		t.Errorf("known flags not parsed along: %+v", o)
	}
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, out)
	}
	for _, w := range []string{"--vmodule", "--log_backtrace_at", "--logtostderr", "--alsologtostderr", "--stderrthreshold", "FLANNELD_LOG_DIR"} {
		if !strings.Contains(out, w) {
			t.Errorf("warning does not name %s:\n%s", w, out)
		}
	}
	if strings.Contains(out, "/var/log/flannel") {
		t.Errorf("the warning repeats a value:\n%s", out)
	}
	if strings.Contains(out, "kube-subnet-mgr") || strings.Contains(out, "-v=") || strings.Contains(out, "public-ipv6") {
		t.Errorf("--kube-subnet-mgr=false, -v or --public-ipv6 reported as ignored:\n%s", out)
	}
}

func TestLogLevels(t *testing.T) {
	for v, want := range map[int]slog.Level{-1: slog.LevelInfo, 0: slog.LevelInfo, 1: slog.LevelDebug, 10: slog.LevelDebug} {
		if got := logLevel(v); got != want {
			t.Errorf("-v=%d: %v, want %v", v, got, want)
		}
	}
}

// TestStrayArgumentsWarn: upstream ignores positional arguments (and every
// flag after them); flanneld starts too, with a warning.
func TestStrayArgumentsWarn(t *testing.T) {
	var logs bytes.Buffer
	o, err := parseOptions("flanneld", []string{"--iface=eth0", "stray", "--iface=eth1"}, func(string) string { return "" }, &logs, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.ifaces, ",") != "eth0" {
		t.Errorf("ifaces %v, want eth0 only (nothing after a positional argument is parsed)", o.ifaces)
	}
	if !strings.Contains(logs.String(), "Ignoring 2 command-line argument(s)") || !strings.Contains(logs.String(), "stray") {
		t.Errorf("no warning naming the argument:\n%s", logs.String())
	}
}

func TestPublicIPClaimFlag(t *testing.T) {
	ext := &extiface.Iface{Name: "eth0"}
	o, err := parse(t, nil, nil)
	if err != nil || !o.publicIPClaim || claimIdentity(o, ext) == "" {
		t.Fatalf("default: claim %v, identity %q, %v; want the claim on", o.publicIPClaim, claimIdentity(o, ext), err)
	}
	o, err = parse(t, nil, map[string]string{"FLANNELD_PUBLIC_IP_CLAIM": "false"})
	if err != nil || claimIdentity(o, ext) != "" {
		t.Fatalf("FLANNELD_PUBLIC_IP_CLAIM=false: identity %q, %v; want none (no claim)", claimIdentity(o, ext), err)
	}
}

func TestFastPathFlag(t *testing.T) {
	o, err := parse(t, nil, nil)
	if err != nil || o.fastPath != "auto" {
		t.Fatalf("default --fast-path = %q (%v), want auto", o.fastPath, err)
	}
	o, err = parse(t, nil, map[string]string{"FLANNELD_FAST_PATH": "off"})
	if err != nil || o.fastPath != "off" {
		t.Fatalf("FLANNELD_FAST_PATH=off gave %q (%v)", o.fastPath, err)
	}
	_, err = parse(t, []string{"--fast-path=yes"}, nil)
	if err == nil || !strings.Contains(err.Error(), "--fast-path must be auto, on or off") {
		t.Fatalf("--fast-path=yes: %v, want an error naming the choices", err)
	}
}

// TestPublicIPv6Flag: --public-ipv6 is a flag of ours now, filled from
// FLANNELD_PUBLIC_IPV6 like every other, and no warning names it.
func TestPublicIPv6Flag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--public-ipv6=2001:db8::7"}, nil, "2001:db8::7"},
		{nil, map[string]string{"FLANNELD_PUBLIC_IPV6": "2001:db8::8"}, "2001:db8::8"},
		{[]string{"-public-ipv6", "2001:db8::7"}, map[string]string{"FLANNELD_PUBLIC_IPV6": "2001:db8::8"}, "2001:db8::7"},
	} {
		var logs bytes.Buffer
		o, err := parseOptions("flanneld", tc.args, func(k string) string { return tc.env[k] }, &logs, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Errorf("%v %v: %v", tc.args, tc.env, err)
			continue
		}
		if o.publicIPv6 != tc.want {
			t.Errorf("%v %v: publicIPv6 %q, want %q", tc.args, tc.env, o.publicIPv6, tc.want)
		}
		if strings.Contains(logs.String(), "public-ipv6") || strings.Contains(logs.String(), "PUBLIC_IPV6") {
			t.Errorf("%v %v: warned about it:\n%s", tc.args, tc.env, logs.String())
		}
	}
}
