package main

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
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
		{[]string{"stray"}, `unexpected argument "stray"`},
	} {
		_, err := parse(t, tc.args, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestVersionAndHelpExitZero(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"flanneld", "--version"}, func(string) string { return "" }, &out, &errb); code != 0 || strings.TrimSpace(errb.String()) != version {
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
