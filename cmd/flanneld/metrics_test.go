//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/dataplane"
	"github.com/flannel-go/flannel-go/internal/etcdtest"
	"github.com/flannel-go/flannel-go/internal/syncbuf"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/router"
)

// checkExposition checks the Prometheus text format strictly enough to
// catch what Prometheus rejects: a sample without a TYPE line before it, a
// family whose TYPE appears twice, names that break the conventions.
func checkExposition(t *testing.T, body string) map[string]string {
	t.Helper()
	types := map[string]string{}
	sample := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$`)
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(rest, " ")
			if _, dup := types[name]; dup {
				t.Errorf("second TYPE line for %s", name)
			}
			types[name] = typ
			continue
		}
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("malformed sample line %q", line)
			continue
		}
		family := m[1]
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(family, suf); ok && (types[base] == "histogram" || types[base] == "summary") {
				family = base
			}
		}
		typ, ok := types[family]
		if !ok {
			t.Errorf("sample %q has no TYPE line before it", line)
		}
		if strings.HasPrefix(family, "flannel_") && typ == "counter" && !strings.HasSuffix(family, "_total") {
			t.Errorf("counter %s does not end in _total", family)
		}
	}
	return types
}

// promtoolCheck runs Prometheus' linter on an exposition and fails the
// test for every problem it reports in a flannel_* family (the Go runtime
// and process families are the metrics package's).
func promtoolCheck(t *testing.T, body string) {
	t.Helper()
	testbed.RequireTool(t, "promtool")
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("promtool: %v", err)
	}
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "flannel_") {
			t.Errorf("promtool check metrics: %s", strings.TrimSpace(line))
		}
	}
	if !strings.Contains(body, "# HELP flannel_") {
		t.Errorf("no flannel_* family in the exposition:\n%s", body)
	}
}

func TestAddHelp(t *testing.T) {
	in := "# HELP flannel_lease_renewals_total\n# TYPE flannel_lease_renewals_total counter\nflannel_lease_renewals_total 0\n# HELP go_goroutines\n"
	got := addHelp([]byte(in))
	want := "# HELP flannel_lease_renewals_total Subnet lease renewals.\n# TYPE flannel_lease_renewals_total counter\nflannel_lease_renewals_total 0\n# HELP go_goroutines\n"
	if got.String() != want {
		t.Errorf("addHelp:\n%s\nwant:\n%s", got.String(), want)
	}
}

func TestWriteRouterStats(t *testing.T) {
	var b bytes.Buffer
	const in, out = dataplane.In, dataplane.Out
	writePathStats(&b, []dataplane.PathStats{
		{Path: "kernel", Packets: [3]uint64{out: 31, in: 33}, Bytes: [3]uint64{out: 32, in: 34},
			Dropped: []dataplane.Reason{{Name: "strict_source", Count: 35}}, Passed: []dataplane.Reason{{Name: "no_route", Count: 36}}},
		{Path: "user", Packets: [3]uint64{out: 1, in: 3}, Bytes: [3]uint64{out: 2, in: 4},
			Dropped: []dataplane.Reason{{Name: "no_route", Count: 9}, {Name: "unknown_peer", Count: 10}, {Name: "codel", Count: 18}}},
	})
	writeRouterStats(&b, router.Stats{
		TxBatches: 5, RxBatches: 6,
		ICMPSent: 7, ICMPRateLimited: 8,
		TxCEMarked: 19, RxCEMarked: 20,
		SyscallErrors:  []router.SyscallError{{Op: "recvmmsg", Errno: "ENOBUFS", Count: 21}},
		TxBatchSizes:   [len(router.BatchSizeBounds) + 1]uint64{0, 0, 0, 0, 0, 1, 0, 2, 1},
		TxBatchPackets: 400,
		RxBatchSizes:   [len(router.BatchSizeBounds) + 1]uint64{3},
		RxBatchPackets: 3,
		Offloads:       router.Offloads{TUNVnetHdr: true, UDPGRO: true},
	})
	text := b.String()
	types := checkExposition(t, text)
	for _, want := range []string{
		`flannel_router_packets_total{direction="out",path="user"} 1`,
		`flannel_router_bytes_total{direction="out",path="user"} 2`,
		`flannel_router_packets_total{direction="in",path="user"} 3`,
		`flannel_router_bytes_total{direction="in",path="user"} 4`,
		`flannel_router_batches_total{direction="out"} 5`,
		`flannel_router_batches_total{direction="in"} 6`,
		`flannel_router_icmp_errors_sent_total 7`,
		`flannel_router_icmp_errors_rate_limited_total 8`,
		`flannel_router_dropped_packets_total{path="user",reason="no_route"} 9`,
		`flannel_router_dropped_packets_total{path="user",reason="unknown_peer"} 10`,
		`flannel_router_packets_total{direction="out",path="kernel"} 31`,
		`flannel_router_bytes_total{direction="out",path="kernel"} 32`,
		`flannel_router_packets_total{direction="in",path="kernel"} 33`,
		`flannel_router_bytes_total{direction="in",path="kernel"} 34`,
		`flannel_router_dropped_packets_total{path="kernel",reason="strict_source"} 35`,
		`flannel_router_passed_to_userspace_total{reason="no_route"} 36`,
		`flannel_router_dropped_packets_total{path="user",reason="codel"} 18`,
		`flannel_router_ecn_ce_marked_total{direction="out"} 19`,
		`flannel_router_ecn_ce_marked_total{direction="in"} 20`,
		`flannel_router_syscall_errors_total{call="recvmmsg",errno="ENOBUFS"} 21`,
		`flannel_router_stage_seconds_bucket{stage="send",le="+Inf"} 0`,
		`flannel_router_batch_size_bucket{direction="out",le="16"} 0`,
		`flannel_router_batch_size_bucket{direction="out",le="32"} 1`,
		`flannel_router_batch_size_bucket{direction="out",le="128"} 3`,
		`flannel_router_batch_size_bucket{direction="out",le="+Inf"} 4`,
		`flannel_router_batch_size_sum{direction="out"} 400`,
		`flannel_router_batch_size_count{direction="out"} 4`,
		`flannel_router_batch_size_bucket{direction="in",le="1"} 3`,
		`flannel_router_batch_size_count{direction="in"} 3`,
		`flannel_offload_enabled{feature="tun_vnet_hdr"} 1`,
		`flannel_offload_enabled{feature="tun_tso"} 0`,
		`flannel_offload_enabled{feature="udp_gro"} 1`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("missing %q in\n%s", want, text)
		}
	}
	for name, typ := range types {
		want := "counter"
		switch name {
		case "flannel_router_batch_size", "flannel_router_stage_seconds":
			want = "histogram"
		case "flannel_offload_enabled":
			want = "gauge"
		}
		if typ != want {
			t.Errorf("%s has type %s, want %s", name, typ, want)
		}
	}
}

// TestSecretsStayOutOfLogsAndMetrics runs flanneld's etcd setup against an
// etcd with authentication, with the right and a wrong password, and looks
// for the passwords in everything flanneld logged and in /metrics.
func TestSecretsStayOutOfLogsAndMetrics(t *testing.T) {
	const secret = "S3cret-f1annel-pw-7d1c"
	const wrong = "S3cret-wrong-pw-93ab"
	admin := etcdtest.Embedded(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := admin.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserAdd(ctx, "root", secret); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	ep := admin.Endpoints()[0]

	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	env := func(k string) string {
		if k == "FLANNELD_ETCD_PASSWORD" {
			return wrong // the flag wins over the environment
		}
		return ""
	}
	for _, pw := range []string{secret, wrong} {
		o, err := parseOptions("flanneld", []string{"--etcd-endpoints=" + ep, "--etcd-username=root", "--etcd-password=" + pw, "-v=10"}, env, &logs, log)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := newEtcdClient(o, env, log)
		if err == nil {
			_, err = cli.Put(ctx, "/coreos.com/network/config", `{"Network":"198.18.0.0/16"}`)
			cli.Close()
		}
		if pw == secret && err != nil {
			t.Fatalf("put with the right password: %v", err)
		}
		if pw == wrong && err == nil {
			t.Fatal("a wrong password was accepted")
		}
		if err != nil {
			log.Error(err.Error()) // as run() reports a fatal error
		}
	}
	d := &daemon{o: &options{}, log: log}
	rec := httptest.NewRecorder()
	d.metricsHandler(rec, httptest.NewRequest("GET", "/metrics", nil))
	scrape := rec.Body.String()
	checkExposition(t, scrape)
	promtoolCheck(t, scrape)
	if !strings.Contains(scrape, `flannel_etcd_request_duration_seconds_bucket{method="KV/Put"`) {
		t.Errorf("no etcd request latency in /metrics:\n%s", scrape)
	}
	if !strings.Contains(scrape, `flannel_etcd_request_errors_total{method="Auth/Authenticate",code="InvalidArgument"}`) {
		t.Errorf("the failed authentication is not counted in /metrics:\n%s", scrape)
	}
	for _, s := range []string{secret, wrong} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("password %s appears in the logs:\n%s", s, logs.String())
		}
		if strings.Contains(scrape, s) {
			t.Errorf("password %s appears in /metrics", s)
		}
	}
}

func TestDaemonMetricsBeforeRouter(t *testing.T) {
	d := &daemon{o: &options{}, log: slog.New(slog.DiscardHandler)}
	var b bytes.Buffer
	d.writeMetrics(&b)
	if got := b.String(); !strings.Contains(got, "# TYPE flannel_ready gauge\nflannel_ready 0\n") || strings.Contains(got, "flannel_router_") {
		t.Errorf("before the router exists: %q", got)
	}
	d.ready.Store(true)
	b.Reset()
	d.writeMetrics(&b)
	if !strings.Contains(b.String(), "flannel_ready 1\n") {
		t.Errorf("ready daemon: %q", b.String())
	}
}
