package dist

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/doccmd"
	"github.com/flannel-go/flannel-go/internal/release"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/lease"
)

const configKey = "/coreos.com/network/config"

// startEtcd runs Debian's etcd on the host's underlay address and returns
// its client URL and a client.
func startEtcd(t *testing.T, h *testbed.Host) (string, *clientv3.Client) {
	t.Helper()
	testbed.RequireTool(t, cluster.EtcdBinary)
	url := fmt.Sprintf("http://%s:%d", h.Addr, cluster.EtcdPort)
	var log bytes.Buffer
	cmd := h.Command(context.Background(), cluster.EtcdBinary, "--data-dir="+t.TempDir(),
		"--listen-client-urls="+url, "--advertise-client-urls="+url,
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=default=http://127.0.0.1:2380", "--log-level=warn", "--logger=zap")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	cli, err := cluster.NewEtcdClient(h, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	if err := cluster.WaitEtcd(context.Background(), cli, 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	return url, cli
}

func getConfig(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, configKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// stageTarball writes what the release tarball holds (release.PackageFiles,
// with a stand-in flanneld) into dir.
func stageTarball(t *testing.T, dir string) {
	t.Helper()
	entries, err := release.PackageFiles(doccmd.ModuleRoot(t))
	if err != nil {
		t.Fatal(err)
	}
	entries = append(entries, release.Entry{Name: "flanneld", Data: []byte("#!/bin/sh\nexit 0\n"), Exec: true})
	for _, e := range entries {
		p := filepath.Join(dir, e.Name)
		mode := os.FileMode(0o644)
		if e.Exec {
			mode = 0o755
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, e.Data, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// run runs script in the root, in the host's network namespace.
func run(t *testing.T, r *doccmd.Root, h *testbed.Host, workdir, script string, env ...string) string {
	t.Helper()
	out, err := r.Command(context.Background(), h.Name, workdir, script, env...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n--- script\n%s--- output\n%s", err, script, out)
	}
	return string(out)
}

// TestDocsInstallKeepsConfig installs the tarball as docs/install.md and
// dist/INSTALL say, into a throwaway root, on a host whose etcd already
// holds a network config and whose options.env exists, opts in to the
// example drop-ins, publishes the config as documented, then runs every
// ExecStartPre of the installed units the way systemd would: the existing
// config and options.env must be left as they were.
func TestDocsInstallKeepsConfig(t *testing.T) {
	testbed.RequireRoot(t)
	for _, tool := range []string{"unshare", "chroot", "etcdctl"} {
		testbed.RequireTool(t, tool)
	}
	bed := testbed.NewT(t, testbed.Options{Hosts: 1, Prefix: "fgoinst"})
	h := bed.Hosts[0]
	url, cli := startEtcd(t, h)
	existing := `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`
	if _, err := cli.Put(context.Background(), configKey, existing); err != nil {
		t.Fatal(err)
	}
	r := doccmd.NewRoot(t, "systemctl")
	stageTarball(t, filepath.Join(r.Dir, "work"))
	options := "FLANNELD_ETCD_ENDPOINTS=" + url + "\nFLANNELD_IFACE=eth0\n"
	if err := os.MkdirAll(r.Path("/etc/flannel"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.Path("/etc/flannel/options.env"), []byte(options), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"ETCDCTL_ENDPOINTS=" + url}
	run(t, r, h, "/work", doccmd.Script(t, "docs/install.md", "tarball"), env...)
	run(t, r, h, "/work", doccmd.Script(t, "dist/INSTALL", "tarball"), env...)
	run(t, r, h, "/work", doccmd.Script(t, "docs/install.md", "examples"), env...)
	if out := run(t, r, h, "/work", doccmd.Script(t, "docs/install.md", "network-config"), env...); !strings.Contains(out, "FAILURE") {
		t.Errorf("publishing over an existing config: etcdctl said %q, want FAILURE (nothing written)", out)
	}
	for _, f := range []string{"/usr/local/bin/flanneld", "/usr/local/bin/mk-docker-opts.sh", "/etc/systemd/system/flanneld.service",
		"/etc/systemd/system/docker.service.d/40-flannel.conf", "/etc/flannel/network-config.txn"} {
		if _, err := os.Stat(r.Path(f)); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if got, _ := os.ReadFile(r.Path("/etc/flannel/options.env")); string(got) != options {
		t.Errorf("options.env was changed to %q", got)
	}
	if calls := strings.Join(r.Calls("systemctl"), "\n"); !strings.Contains(calls, "enable --now flanneld") {
		t.Errorf("systemctl calls %q: flanneld not enabled", calls)
	}
	units := installedUnits(t, r, 1) // the opted-in example
	startPre(t, r, h, units, env)
	if got := getConfig(t, cli); got != existing {
		t.Fatalf("the network config was changed by installing and starting the units:\n got %s\nwant %s", got, existing)
	}
	// The check above could fail: where the key is absent, the same
	// ExecStartPre publishes the example config.
	if _, err := cli.Delete(context.Background(), configKey); err != nil {
		t.Fatal(err)
	}
	startPre(t, r, h, units, env)
	if got := getConfig(t, cli); !strings.Contains(got, `"Network": "10.1.0.0/16"`) {
		t.Errorf("with no config in etcd, the opt-in drop-in published %q, want the example's", got)
	}
	checkNoRequiredFiles(t, units)
}

// TestDocsQuickStart runs the README's quick start on host 1 of a bed,
// whose address and interface are the README's (192.0.2.1, eth0), with
// etcd where the README says: the config it publishes must be one
// flanneld accepts, the firewall rule must be in place, and the installed
// options must point flanneld at that etcd and interface.
func TestDocsQuickStart(t *testing.T) {
	testbed.RequireRoot(t)
	for _, tool := range []string{"unshare", "chroot", "etcdctl", "iptables"} {
		testbed.RequireTool(t, tool)
	}
	bed := testbed.NewT(t, testbed.Options{Hosts: 1, Prefix: "fgoqs"})
	h := bed.Hosts[0]
	url, cli := startEtcd(t, h)
	r := doccmd.NewRoot(t, "systemctl")
	stageTarball(t, filepath.Join(r.Dir, "work"))

	script := doccmd.Script(t, "README.md", "quickstart-config")
	if !strings.Contains(script, "--endpoints="+url+" ") {
		t.Fatalf("the README publishes the config to another etcd than the one at %s:\n%s", url, script)
	}
	run(t, r, h, "/", script)
	cfg, err := lease.ParseConfig([]byte(getConfig(t, cli)))
	if err != nil || cfg.BackendType != "udp" {
		t.Fatalf("the README's network config: %+v, %v", cfg, err)
	}

	run(t, r, h, "/", doccmd.Script(t, "README.md", "quickstart-firewall"))
	if out, err := h.Run(context.Background(), "iptables", "-S", "INPUT"); err != nil || !strings.Contains(out, "--dport 8285") {
		t.Errorf("iptables -S INPUT in %s: %v\n%s", h.Name, err, out)
	}

	run(t, r, h, "/work", doccmd.Script(t, "README.md", "quickstart-install"))
	want := "FLANNELD_ETCD_ENDPOINTS=" + url + "\nFLANNELD_IFACE=" + h.Iface + "\n"
	if got, _ := os.ReadFile(r.Path("/etc/flannel/options.env")); string(got) != want {
		t.Errorf("options.env %q, want %q", got, want)
	}
	calls := strings.Join(r.Calls("systemctl"), "\n")
	for _, c := range []string{"daemon-reload", "enable --now flanneld", "restart docker"} {
		if !strings.Contains(calls, c) {
			t.Errorf("systemctl calls %q: no %q", calls, c)
		}
	}
	checkNoRequiredFiles(t, installedUnits(t, r, 0))
}

// installedUnits returns the installed flanneld.service followed by its
// drop-ins, as systemd reads them.
func installedUnits(t *testing.T, r *doccmd.Root, wantDropins int) []string {
	t.Helper()
	dropins, err := filepath.Glob(r.Path("/etc/systemd/system/flanneld.service.d/*.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if len(dropins) != wantDropins {
		t.Errorf("installed drop-ins %v, want %d", dropins, wantDropins)
	}
	docker, _ := filepath.Glob(r.Path("/etc/systemd/system/docker.service.d/*.conf"))
	return append(append([]string{r.Path("/etc/systemd/system/flanneld.service")}, dropins...), docker...)
}

// startPre runs every ExecStartPre of the flanneld units in the root with
// their Environment= settings, as systemd would before flanneld starts.
func startPre(t *testing.T, r *doccmd.Root, h *testbed.Host, units []string, env []string) {
	t.Helper()
	var cmds []string
	for _, u := range units {
		if strings.Contains(u, "docker.service.d") {
			continue
		}
		env = append(env, directives(t, u, "Environment")...)
		for _, v := range directives(t, u, "ExecStartPre") {
			argv, err := splitExec(v)
			if err != nil {
				t.Fatalf("%s: %v", u, err)
			}
			cmds = append(cmds, strings.Join(argv, " "))
		}
	}
	if len(cmds) == 0 {
		t.Fatal("no ExecStartPre in the installed units: nothing would publish a config")
	}
	for _, c := range cmds {
		run(t, r, h, "/", c, env...)
	}
}

// splitExec turns an Exec line into shell-quoted words. It handles what
// the units use (an optional '-' prefix, single and double quotes) and
// refuses backslashes and specifiers, where systemd's rules differ from
// a shell's.
func splitExec(line string) ([]string, error) {
	if strings.ContainsAny(line, `\%$`) {
		return nil, fmt.Errorf("exec line %q: backslash, %% or $ need systemd's own unquoting", line)
	}
	line = strings.TrimLeft(line, "-@:+!")
	var words []string
	for _, m := range regexp.MustCompile(`'[^']*'|"[^"]*"|[^\s'"]+`).FindAllString(line, -1) {
		if len(m) >= 2 && (m[0] == '\'' || m[0] == '"') {
			m = m[1 : len(m)-1]
		}
		words = append(words, "'"+strings.ReplaceAll(m, "'", `'\''`)+"'")
	}
	return words, nil
}

// checkNoRequiredFiles fails for an EnvironmentFile= without '-' other than
// the one flanneld.service itself writes before docker.service reads it.
func checkNoRequiredFiles(t *testing.T, units []string) {
	t.Helper()
	for _, u := range units {
		for _, v := range directives(t, u, "EnvironmentFile") {
			if !strings.HasPrefix(v, "-") && v != "/run/flannel/flannel_docker_opts.env" {
				t.Errorf("%s: EnvironmentFile=%s is required to exist", u, v)
			}
		}
		b, _ := os.ReadFile(u)
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(l, "#") && strings.Contains(l, "/etc/ssl/") {
				t.Errorf("%s: %q refers to certificates: those drop-ins are opt-in", u, l)
			}
		}
	}
}

// TestDocsUnpackAndFirewall runs the documented unpack and firewall
// commands: sha256sum and tar on a small tarball made the release's way,
// and the iptables rules inside a namespace of the test's own.
func TestDocsUnpackAndFirewall(t *testing.T) {
	testbed.RequireRoot(t)
	for _, tool := range []string{"unshare", "chroot", "iptables", "ip6tables", "sha256sum"} {
		testbed.RequireTool(t, tool)
	}
	bed := testbed.NewT(t, testbed.Options{Hosts: 1, Prefix: "fgodoc"})
	h := bed.Hosts[0]
	r := doccmd.NewRoot(t)
	name := "flannel-go-v0.0.0-linux-amd64"
	var tgz bytes.Buffer
	if err := release.WriteTarball(&tgz, name, []release.Entry{{Name: "INSTALL", Data: []byte("x\n")}}, time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.Dir, "work", name+".tar.gz"), tgz.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	sums := "0000000000000000000000000000000000000000000000000000000000000000  other.tar.gz\n"
	if err := os.WriteFile(filepath.Join(r.Dir, "work", "SHA256SUMS"), []byte(sums), 0o644); err != nil {
		t.Fatal(err)
	}
	script := doccmd.Script(t, "docs/install.md", "unpack")
	// A SHA256SUMS that does not list the tarball must fail the check...
	if out, err := r.Command(context.Background(), h.Name, "/work", script, "VERSION=v0.0.0", "ARCH=amd64").CombinedOutput(); err == nil {
		t.Errorf("unpack passed without a checksum for the tarball:\n%s", out)
	}
	// ...and the right one passes and unpacks.
	cmd := r.Command(context.Background(), h.Name, "/work", "sha256sum "+name+".tar.gz >SHA256SUMS")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	run(t, r, h, "/work", script+"test -f INSTALL\n", "VERSION=v0.0.0", "ARCH=amd64")

	run(t, r, h, "/", doccmd.Script(t, "docs/install.md", "firewall"))
	for _, c := range []string{"iptables", "ip6tables"} {
		out, err := h.Run(context.Background(), c, "-S", "INPUT")
		if err != nil || !strings.Contains(out, "--dport 8285") {
			t.Errorf("%s -S INPUT in %s: %v\n%s", c, h.Name, err, out)
		}
	}
}

// TestDocsInstallImage runs the documented image install in a throwaway
// root with stand-ins for skopeo (the real one reads the same reference in
// TestImageRunsAsClusterNode) and systemctl: the archive name and tag are
// the ones make image writes, and the container unit is what gets
// installed, needing no file that is not there.
func TestDocsInstallImage(t *testing.T) {
	testbed.RequireRoot(t)
	for _, tool := range []string{"unshare", "chroot"} {
		testbed.RequireTool(t, tool)
	}
	bed := testbed.NewT(t, testbed.Options{Hosts: 1, Prefix: "fgodimg"})
	r := doccmd.NewRoot(t, "systemctl", "skopeo")
	stageTarball(t, filepath.Join(r.Dir, "work"))
	const version = "v1.2.3"
	run(t, r, bed.Hosts[0], "/work", doccmd.Script(t, "docs/install.md", "image"), "VERSION="+version)
	want := "copy oci-archive:flannel-go-image-" + version + ".tar:" + version + " containers-storage:localhost/flannel-go:" + version
	if calls := r.Calls("skopeo"); len(calls) != 1 || calls[0] != want {
		t.Errorf("skopeo calls %q, want %q", calls, want)
	}
	unit, err := os.ReadFile(r.Path("/etc/systemd/system/flanneld.service"))
	if err != nil || !strings.Contains(string(unit), "podman run") {
		t.Fatalf("installed flanneld.service is not the container variant (%v)", err)
	}
	opts, _ := os.ReadFile(r.Path("/etc/flannel/options.env"))
	if !strings.Contains(string(opts), "FLANNEL_IMAGE=localhost/flannel-go:"+version+"\n") {
		t.Errorf("options.env %q does not name the loaded image", opts)
	}
	checkNoRequiredFiles(t, installedUnits(t, r, 0))
}
