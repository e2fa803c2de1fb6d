package kernelmatrix

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

func TestNaturalCompare(t *testing.T) {
	names := []string{
		"linux-image-6.1.0-10-amd64",
		"linux-image-6.1.0-9-amd64",
		"linux-image-6.1.0-57-amd64",
		"linux-image-6.12.118+deb13-amd64",
		"linux-image-6.12.41+deb13-amd64",
		"linux-image-5.10.0-46-amd64",
	}
	slices.SortFunc(names, naturalCompare)
	want := []string{
		"linux-image-5.10.0-46-amd64",
		"linux-image-6.1.0-9-amd64",
		"linux-image-6.1.0-10-amd64",
		"linux-image-6.1.0-57-amd64",
		"linux-image-6.12.41+deb13-amd64",
		"linux-image-6.12.118+deb13-amd64",
	}
	if !slices.Equal(names, want) {
		t.Fatalf("sorted:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	if naturalCompare("a-1", "a-1") != 0 || naturalCompare("a-1", "a-1x") >= 0 {
		t.Fatal("equal names or a prefix compare wrong")
	}
}

// TestRowPatterns checks that each VM row's pattern picks the stock image
// and none of its siblings (cloud, rt, unsigned, debug, backports).
func TestRowPatterns(t *testing.T) {
	names := map[string][]string{
		"5.10": {"linux-image-5.10.0-46-amd64"},
		"6.1":  {"linux-image-6.1.0-57-amd64"},
		"6.12": {"linux-image-6.12.118+deb13-amd64"},
	}
	others := []string{
		"linux-image-5.10.0-46-cloud-amd64", "linux-image-5.10.0-46-rt-amd64", "linux-image-6.1.0-57-amd64-unsigned",
		"linux-image-6.1.0-57-amd64-dbg", "linux-image-6.12.38+bpo-amd64", "linux-image-6.12.118+deb13-cloud-amd64",
		"linux-image-amd64", "linux-image-6.10.0-1-amd64",
	}
	for _, r := range Rows {
		if !r.VM() {
			continue
		}
		for _, n := range names[r.Name] {
			if !r.Package.MatchString(n) {
				t.Errorf("row %s does not match %s", r.Name, n)
			}
		}
		for _, n := range others {
			if r.Package.MatchString(n) {
				t.Errorf("row %s matches %s", r.Name, n)
			}
		}
	}
}

func TestRowsWellFormed(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range Rows {
		if seen[r.Name] {
			t.Errorf("row %s twice", r.Name)
		}
		seen[r.Name] = true
		switch {
		case r.Expect.Path == PathUserspace && r.Expect.Reason == "":
			t.Errorf("row %s expects a fallback without naming its reason", r.Name)
		case r.Expect.Path != PathUserspace && r.Expect.Path != PathKernel:
			t.Errorf("row %s expects path %q", r.Name, r.Expect.Path)
		case r.VM() && len(r.Suites) == 0:
			t.Errorf("row %s has no suites to find its kernel in", r.Name)
		}
	}
	if rows, unknown := Lookup([]string{"6.1", "nope"}); len(rows) != 1 || rows[0].Name != "6.1" || !slices.Equal(unknown, []string{"nope"}) {
		t.Errorf("Lookup: %v %v", rows, unknown)
	}
}

func TestLoadOrder(t *testing.T) {
	dep := `kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko kernel/fs/fscache/fscache.ko
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko
kernel/fs/fscache/fscache.ko:
kernel/drivers/net/vxlan/vxlan.ko: kernel/net/ipv4/udp_tunnel.ko kernel/net/ipv6/ip6_udp_tunnel.ko
kernel/net/ipv4/udp_tunnel.ko:
kernel/net/ipv6/ip6_udp_tunnel.ko:
`
	idx, err := parseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	idx.builtin["virtio"], idx.builtin["virtio_ring"], idx.builtin["virtio_pci"] = true, true, true
	got, err := idx.LoadOrder("virtio_pci", "9pnet_virtio", "9p", "vxlan")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/net/9p/9pnet.ko", "kernel/net/9p/9pnet_virtio.ko",
		"kernel/fs/fscache/fscache.ko", "kernel/fs/netfs/netfs.ko", "kernel/fs/9p/9p.ko",
		"kernel/net/ipv4/udp_tunnel.ko", "kernel/net/ipv6/ip6_udp_tunnel.ko", "kernel/drivers/net/vxlan/vxlan.ko",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("load order:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := idx.LoadOrder("nonexistent"); err == nil {
		t.Fatal("a module that is neither a file nor built in must be an error")
	}
	if moduleName("kernel/net/ipv6/ip6-udp_tunnel.ko.xz") != "ip6_udp_tunnel" {
		t.Fatal("moduleName must strip the suffixes and read '-' as '_'")
	}
}

func TestLogAttrs(t *testing.T) {
	line := `time=2026-12-08T03:17:53.398Z level=WARN msg="Kernel fast path unavailable (--fast-path=auto): the userspace router carries all packets" reason="fast path: load BPF programs: R3 min value is \"outside\" a=b"`
	got := LogAttrs(line)
	want := map[string]string{
		"time": "2026-12-08T03:17:53.398Z", "level": "WARN",
		"msg":    "Kernel fast path unavailable (--fast-path=auto): the userspace router carries all packets",
		"reason": `fast path: load BPF programs: R3 min value is "outside" a=b`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d attributes %v, want %d", len(got), got, len(want))
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	log := "time=1 level=INFO msg=\"Opened TUN device\"\n" +
		"time=2 level=INFO msg=\"Kernel fast path on: TC eBPF carries packets\" attach=tcx variant=full\n" +
		"time=3 level=INFO msg=\"flanneld is running\"\n"
	l := FastPathLine(log)
	if a := LogAttrs(l); a["attach"] != "tcx" || a["variant"] != "full" {
		t.Fatalf("FastPathLine %q: attributes %v", l, a)
	}
	if FastPathLine("time=1 msg=other\n") != "" {
		t.Fatal("FastPathLine found a line in a log without one")
	}
}

// TestResultsRoundTrip writes results as the harness does, reads them
// back and renders the README table from them.
func TestResultsRoundTrip(t *testing.T) {
	in := []Result{
		{Row: "6.1", Kernel: "6.1.0-57-amd64", Expect: Fallback("invalid access"), FastPathTests: "fail", ClusterTest: "pass", OK: true,
			ClusterReport: ClusterReport{Path: PathUserspace, Reason: "load: invalid access | x", TransferOK: true, IPv6: PathUserspace, Host: PathUserspace, SIGKILL: "clean", Restart: "ok"}},
		{Row: "host", Kernel: "6.18.44", Expect: Kernel("tcx"), FastPathTests: "pass", ClusterTest: "pass", OK: true,
			ClusterReport: ClusterReport{Path: PathKernel, Attach: "tcx", Variant: "full", TransferOK: true, IPv6: PathKernel, Host: PathKernel, KernelBytes: 4199720, SIGKILL: "clean", Restart: "ok"}},
	}
	var buf bytes.Buffer
	for _, r := range in {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(append(b, '\n'))
	}
	if !strings.Contains(buf.String(), `"expect":{"attach":"","path":"userspace","reason":"invalid access"}`) {
		t.Fatalf("expectation not in lower case: %s", buf.String())
	}
	out, err := ReadResults(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != 2 || out[0].Expect != in[0].Expect || out[1].Attach != "tcx" || out[1].KernelBytes != 4199720 {
		t.Fatalf("read back %+v", out)
	}
	var table bytes.Buffer
	WriteTable(&table, out)
	for _, want := range []string{"| 6.1.0-57-amd64 (6.1) | userspace | `load: invalid access \\| x` | intact on userspace, userspace, userspace | 0 | clean, ok |",
		"| 6.18.44 (host) | kernel | tcx, full | intact on kernel, kernel, kernel | 4199720 | clean, ok |"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}
