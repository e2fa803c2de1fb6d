//go:build linux

package dist

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/doccmd"
	"github.com/flannel-go/flannel-go/internal/image"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// initEnv carries a containerSpec to this test binary when it runs as a
// container's first process (see containerInit).
const initEnv = "FLANNEL_GO_TEST_CONTAINER_INIT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(initEnv); spec != "" {
		containerInit(spec)
	}
	os.Exit(m.Run())
}

// containerSpec is what a runtime takes from an unpacked image's bundle.
type containerSpec struct {
	Rootfs string
	Args   []string
	Env    []string
	Cwd    string
	Binds  [][2]string // host path, path in the container
}

// containerInit does what a runtime does between clone and exec, in the
// new mount and PID namespace this process was started in (as PID 1): a
// private mount tree, /proc of the new PID namespace, /sys, a /dev with
// the usual nodes and /dev/net/tun (as --privileged or --device gives),
// the bind mounts, chroot, then exec of the image's process with the
// image's environment alone. It never returns.
func containerInit(raw string) {
	var s containerSpec
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "container init:", err)
		os.Exit(127)
	}
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		fail(err)
	}
	r := s.Rootfs
	steps := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"", "/", "", unix.MS_REC | unix.MS_PRIVATE, ""},
		{"proc", r + "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"/sys", r + "/sys", "", unix.MS_BIND | unix.MS_REC, ""},
		{"tmpfs", r + "/dev", "tmpfs", unix.MS_NOSUID, "mode=755"},
	}
	for _, m := range steps {
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil {
			fail(fmt.Errorf("mount %s on %s: %w", m.src, m.dst, err))
		}
	}
	binds := s.Binds
	for _, d := range []string{"null", "zero", "full", "random", "urandom", "tty", "net/tun"} {
		binds = append(binds, [2]string{"/dev/" + d, "/dev/" + d})
	}
	for _, b := range binds {
		dst := r + b[1]
		st, err := os.Stat(b[0])
		if err != nil {
			fail(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			fail(err)
		}
		if st.IsDir() {
			err = os.MkdirAll(dst, 0o755)
		} else {
			err = os.WriteFile(dst, nil, 0o644)
		}
		if err != nil {
			fail(err)
		}
		if err := unix.Mount(b[0], dst, "", unix.MS_BIND, ""); err != nil {
			fail(fmt.Errorf("bind %s to %s: %w", b[0], dst, err))
		}
	}
	if err := unix.Chroot(r); err != nil {
		fail(err)
	}
	if err := os.Chdir(s.Cwd); err != nil {
		fail(err)
	}
	fail(syscall.Exec(s.Args[0], s.Args, s.Env))
}

// unpacked is an image unpacked as a runtime would: its bundle's root
// file system and process, and the image config they came from.
type unpacked struct {
	rootfs string
	args   []string
	env    []string
	cwd    string
	config image.Config
}

// unpackImage copies the OCI archive make image wrote into an OCI layout
// with skopeo (the reference form docs/install.md uses), checks it is the
// layout make image wrote, and unpacks it with umoci: its layers in order,
// and a runtime config.json made from the image config.
func unpackImage(t *testing.T) (unpacked, string) {
	t.Helper()
	for _, tool := range []string{"skopeo", "umoci"} {
		testbed.RequireTool(t, tool)
	}
	dir := filepath.Join(doccmd.ModuleRoot(t), "bin", "image")
	var idx image.Index
	b, err := os.ReadFile(filepath.Join(dir, "oci", "index.json"))
	if err == nil {
		err = json.Unmarshal(b, &idx)
	}
	if err != nil || len(idx.Manifests) != 1 {
		msg := fmt.Sprintf("no image in %s (%v): run make image first (make test does it before the tests)", dir, err)
		if testbed.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	tag := idx.Manifests[0].Annotations[image.RefName]
	tmp := t.TempDir()
	layout := filepath.Join(tmp, "layout")
	archive := filepath.Join(dir, "flannel-go-image-"+tag+".tar")
	if out, err := exec.Command("skopeo", "copy", "-q", "oci-archive:"+archive+":"+tag, "oci:"+layout+":"+tag).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	var copied image.Index
	if b, err := os.ReadFile(filepath.Join(layout, "index.json")); err != nil || json.Unmarshal(b, &copied) != nil ||
		len(copied.Manifests) != 1 || copied.Manifests[0].Digest != idx.Manifests[0].Digest {
		t.Fatalf("the archive's manifest %v is not the layout's %s (%v)", copied.Manifests, idx.Manifests[0].Digest, err)
	}
	bundle := filepath.Join(tmp, "bundle")
	if out, err := exec.Command("umoci", "unpack", "--image", layout+":"+tag, bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	var rt struct {
		Process struct {
			Args []string `json:"args"`
			Env  []string `json:"env"`
			Cwd  string   `json:"cwd"`
		} `json:"process"`
	}
	if b, err := os.ReadFile(filepath.Join(bundle, "config.json")); err != nil || json.Unmarshal(b, &rt) != nil {
		t.Fatalf("bundle config.json: %v", err)
	}
	u := unpacked{rootfs: filepath.Join(bundle, "rootfs"), args: rt.Process.Args, env: rt.Process.Env, cwd: rt.Process.Cwd}
	u.config = readConfig(t, layout, copied.Manifests[0].Digest)
	return u, tag
}

// readConfig reads the image config of a manifest from a layout.
func readConfig(t *testing.T, layout, manifest string) image.Config {
	t.Helper()
	blob := func(d string, v any) {
		b, err := os.ReadFile(filepath.Join(layout, "blobs", "sha256", strings.TrimPrefix(d, "sha256:")))
		if err == nil {
			err = json.Unmarshal(b, v)
		}
		if err != nil {
			t.Fatalf("blob %s: %v", d, err)
		}
	}
	var m image.Manifest
	blob(manifest, &m)
	var c image.Config
	blob(m.Config.Digest, &c)
	return c
}

// launcher runs the unpacked image's process for a node as the podman
// unit does: in the node's network namespace (--net=host there), in a new
// mount and PID namespace, with the node's directory as /run/flannel.
func launcher(t *testing.T, u unpacked, n *cluster.Node) func(context.Context, []string) *exec.Cmd {
	return func(ctx context.Context, args []string) *exec.Cmd {
		var rewritten []string
		for _, a := range args {
			if strings.HasPrefix(a, "--subnet-file=") {
				a = "--subnet-file=/run/flannel/subnet.env"
			}
			rewritten = append(rewritten, a)
		}
		spec, err := json.Marshal(containerSpec{Rootfs: u.rootfs, Args: append(append([]string(nil), u.args...), rewritten...),
			Env: u.env, Cwd: u.cwd, Binds: [][2]string{{n.Dir, "/run/flannel"}}})
		if err != nil {
			t.Error(err)
		}
		cmd := n.Host.Command(ctx, os.Args[0])
		cmd.Env = append(os.Environ(), initEnv+"="+string(spec))
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID}
		return cmd
	}
}

// TestImageRunsAsClusterNode unpacks the image from its own layers and
// runs its entrypoint, arguments and environment in that root file system
// as node 2 of a two-node cluster whose node 1 is the plain binary: ping
// and a SHA-256-checked transfer each way between their containers.
func TestImageRunsAsClusterNode(t *testing.T) {
	testbed.RequireRoot(t)
	testbed.RequireTUN(t)
	u, tag := unpackImage(t)
	if strings.Join(u.config.Config.Entrypoint, " ") != image.Entrypoint || len(u.args) == 0 || u.args[0] != image.Entrypoint {
		t.Fatalf("entrypoint %q, bundle args %q: want %s", u.config.Config.Entrypoint, u.args, image.Entrypoint)
	}
	if u.config.Config.Labels["org.opencontainers.image.version"] != tag {
		t.Errorf("version label %q, tag %q", u.config.Config.Labels["org.opencontainers.image.version"], tag)
	}
	plain := filepath.Join(doccmd.ModuleRoot(t), "bin", "image", "flanneld")
	c, err := cluster.Start(t.Context(), cluster.Options{Flanneld: plain, Hosts: 2, Idle: 1,
		Bed: testbed.Options{Prefix: "fgoimg"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := c.Nodes[1]
	n.Launch = launcher(t, u, n)
	ctx := t.Context()
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, c.Logs())
	}
	checkContained(t, n.PID(), u.rootfs)
	if out, err := n.Host.Run(ctx, "iptables", "-S", "FLANNEL-FWD"); err != nil || !strings.Contains(out, n.Env.Network.String()) {
		t.Errorf("FORWARD rules the image's iptables should have added for %s: %v\n%s", n.Env.Network, err, out)
	}
	if err := c.AddContainers(ctx); err != nil {
		t.Fatal(err)
	}
	a, b := c.Nodes[0].Container, n.Container
	for _, p := range [][2]*testbed.Container{{a, b}, {b, a}} {
		waitPing(t, p[0], p[1].Addr)
		res, err := cluster.Transfer(ctx, p[0], p[1], p[1].Addr, 5001, 16<<20)
		if err != nil {
			t.Fatalf("transfer %s -> %s: %v\n%s", p[0].Name, p[1].Addr, err, c.Logs())
		}
		if !res.Match() || res.Bytes != 16<<20 {
			t.Fatalf("transfer %s -> %s: %d bytes, sha256 sent %x received %x", p[0].Name, p[1].Addr, res.Bytes, res.SentSum, res.RecvSum)
		}
	}
}

// waitPing pings until a reply comes or 10 s pass.
func waitPing(t *testing.T, from *testbed.Container, to netip.Addr) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := from.Run(t.Context(), "ping", "-n", "-c", "1", "-W", "1", to.String())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping %s from %s: %v\n%s", to, from.Name, err, out)
		}
	}
}

// checkContained makes sure the node's flanneld runs as in a container:
// PID 1 of its own PID namespace, rooted in the unpacked file system.
func checkContained(t *testing.T, pid int, rootfs string) {
	t.Helper()
	root, err := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
	if err != nil || root != rootfs {
		t.Errorf("flanneld's root is %q (%v), want the unpacked image %s", root, err, rootfs)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "NSpid:" {
			if f[len(f)-1] != "1" || len(f) < 3 {
				t.Errorf("flanneld %s: want PID 1 in a PID namespace of its own", l)
			}
			return
		}
	}
	t.Error("no NSpid in /proc/PID/status")
}
