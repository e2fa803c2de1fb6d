// Package dist holds the files operators install next to flanneld: systemd
// units and drop-ins, and the mk-docker-opts.sh compatibility wrapper. Its
// tests check them with systemd-analyze and sh.
package dist

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// execPaths are the programs the units run; the test replaces them with
// stubs so that systemd-analyze verify checks that every command exists.
var execPaths = []string{"/usr/local/bin/flanneld", "/usr/bin/etcdctl", "/usr/bin/dockerd", "/usr/bin/docker", "/usr/bin/podman"}

// unitFiles are the files under test, relative to dist/.
var unitFiles = []string{
	"flanneld.service",
	"examples/flanneld.service.d/40-etcd-ssl.conf",
	"examples/flanneld.service.d/50-network-config.conf",
	"docker.service.d/40-flannel.conf",
	"example-app.service",
}

func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found (apt-get install %s): %v", name, pkg, err)
	}
	t.Skipf("%s not found, install the %s package to run this test: %v", name, pkg, err)
	return ""
}

// stage copies the units into a temporary unit directory, pointing their
// commands at executable stubs, and adds a minimal docker.service for the
// drop-in to extend. It returns the unit directory.
func stage(t *testing.T, edit func(name, content string) string) string {
	t.Helper()
	root := t.TempDir()
	units := filepath.Join(root, "units")
	bin := filepath.Join(root, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	var pairs []string
	for _, p := range execPaths {
		stub := filepath.Join(bin, filepath.Base(p))
		if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		pairs = append(pairs, p, stub)
	}
	rewrite := strings.NewReplacer(pairs...)
	for _, f := range unitFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		content := rewrite.Replace(string(b))
		if edit != nil {
			content = edit(f, content)
		}
		// The opt-in examples are verified as installed: beside the unit.
		dst := filepath.Join(units, strings.TrimPrefix(f, "examples/"))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	docker := "[Unit]\nDescription=stand-in for the distribution's docker.service\n[Service]\nExecStart=" +
		filepath.Join(bin, "dockerd") + "\n"
	if err := os.WriteFile(filepath.Join(units, "docker.service"), []byte(docker), 0o644); err != nil {
		t.Fatal(err)
	}
	return units
}

// verify runs systemd-analyze verify on the staged units, with the unit
// directory first in the search path so that the drop-ins apply.
func verify(t *testing.T, analyze, units string) (string, error) {
	t.Helper()
	cmd := exec.Command(analyze, "verify",
		filepath.Join(units, "flanneld.service"),
		filepath.Join(units, "docker.service"),
		filepath.Join(units, "example-app.service"))
	// The trailing colon keeps the built-in search path after ours.
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+units+":", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestUnitsVerify(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	units := stage(t, nil)
	if out, err := verify(t, analyze, units); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestContainerUnitVerify checks the podman variant in place of
// flanneld.service, with the Docker drop-in, and its contract with the
// image: host network, privileged, /run/flannel shared, the image's own
// entrypoint with FLANNEL_OPTS as arguments, READY=1 passed on.
func TestContainerUnitVerify(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	units := stage(t, nil)
	b, err := os.ReadFile("container/flanneld.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(b), "/usr/bin/podman", filepath.Join(filepath.Dir(units), "bin", "podman"))
	if err := os.WriteFile(filepath.Join(units, "flanneld.service"), []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := verify(t, analyze, units); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	start := strings.Join(directives(t, "container/flanneld.service", "ExecStart"), "\n")
	for _, want := range []string{"podman run ", " --net=host ", " --privileged ", " --sdnotify=container ",
		" --volume /run/flannel:/run/flannel ", " --env FLANNELD_* ", " ${FLANNEL_IMAGE} $FLANNEL_OPTS"} {
		if !strings.Contains(start+" ", want) {
			t.Errorf("container unit ExecStart %q lacks %q", start, want)
		}
	}
	if strings.Contains(start, "--entrypoint") {
		t.Error("the container unit overrides the image's entrypoint")
	}
	for _, w := range []struct{ key, value string }{{"Type", "notify"}, {"NotifyAccess", "all"}, {"Restart", "always"},
		{"EnvironmentFile", "-/etc/flannel/options.env"}, {"RequiredBy", "docker.service"}} {
		if !slices.Contains(directives(t, "container/flanneld.service", w.key), w.value) {
			t.Errorf("container unit: no %s=%s", w.key, w.value)
		}
	}
	if after := strings.Join(directives(t, "container/flanneld.service", "After"), " "); !strings.Contains(after, "etcd.service") {
		t.Errorf("container unit After=%q: not ordered after etcd", after)
	}
}

// TestUnitsVerifyCatchesErrors makes sure the check above could fail: a
// missing command and an unknown directive must both be reported.
func TestUnitsVerifyCatchesErrors(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	for name, edit := range map[string]func(f, c string) string{
		"missing ExecStartPre binary": func(f, c string) string {
			if f == "examples/flanneld.service.d/50-network-config.conf" {
				return regexp.MustCompile(`ExecStartPre=\S+`).ReplaceAllString(c, "ExecStartPre=/nonexistent/etcdctl")
			}
			return c
		},
		"unknown directive in docker drop-in": func(f, c string) string {
			if f == "docker.service.d/40-flannel.conf" {
				return strings.Replace(c, "\nRequires=", "\nRequirez=", 1)
			}
			return c
		},
	} {
		out, _ := verify(t, analyze, stage(t, edit))
		if strings.TrimSpace(out) == "" {
			t.Errorf("%s: systemd-analyze verify reported nothing", name)
		}
	}
}

// directives returns the values of key in a unit file, in order.
func directives(t *testing.T, file, key string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && k == key {
			vals = append(vals, v)
		}
	}
	return vals
}

func TestUnitContract(t *testing.T) {
	want := []struct{ file, key, value string }{
		{"flanneld.service", "Type", "notify"},
		{"flanneld.service", "Restart", "always"},
		{"flanneld.service", "EnvironmentFile", "-/run/flannel/options.env"},
		{"docker.service.d/40-flannel.conf", "Requires", "flanneld.service"},
		{"docker.service.d/40-flannel.conf", "After", "flanneld.service"},
		{"docker.service.d/40-flannel.conf", "EnvironmentFile", "/run/flannel/flannel_docker_opts.env"},
		{"example-app.service", "Requires", "flanneld.service docker.service"},
		{"example-app.service", "After", "flanneld.service docker.service"},
		{"example-app.service", "Restart", "always"},
		{"examples/flanneld.service.d/40-etcd-ssl.conf", "Environment", "ETCD_SSL_DIR=/etc/ssl/etcd"},
	}
	for _, w := range want {
		found := false
		for _, v := range directives(t, w.file, w.key) {
			found = found || v == w.value
		}
		if !found {
			t.Errorf("%s: no %s=%s", w.file, w.key, w.value)
		}
	}
	// docker.service must read the file that flanneld.service writes.
	post := strings.Join(directives(t, "flanneld.service", "ExecStartPost"), "\n")
	if !strings.Contains(post, "mk-docker-opts") || !strings.Contains(post, "-d /run/flannel/flannel_docker_opts.env") {
		t.Errorf("flanneld.service ExecStartPost %q does not write /run/flannel/flannel_docker_opts.env", post)
	}
	// Publishing the config is opt-in, and never over an existing one.
	pre := strings.Join(directives(t, "examples/flanneld.service.d/50-network-config.conf", "ExecStartPre"), "\n")
	if !strings.Contains(pre, "etcdctl txn </etc/flannel/network-config.txn") || strings.Contains(pre, "etcdctl put") {
		t.Errorf("50-network-config.conf ExecStartPre %q does not publish through etcdctl txn", pre)
	}
	if _, err := os.Stat("flanneld.service.d"); err == nil {
		t.Error("dist/flanneld.service.d exists: drop-ins that publish the config or need certificates are opt-in, under examples/")
	}
}

// TestMkDockerOptsWrapper runs dist/mk-docker-opts.sh with a stub flanneld
// on PATH and checks that the arguments arrive unchanged.
func TestMkDockerOptsWrapper(t *testing.T) {
	sh := requireTool(t, "sh", "dash")
	dir := t.TempDir()
	argsFile := filepath.Join(dir, "args")
	stub := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > " + argsFile + "\nexit 7\n"
	if err := os.WriteFile(filepath.Join(dir, "flanneld"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh, "mk-docker-opts.sh", "-c", "-k", "MY KEY", "-d", "/run/x.env")
	cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("wrapper exit: %v (%s), want flanneld's status 7", err, out)
	}
	got, err := os.ReadFile(argsFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := "mk-docker-opts\n-c\n-k\nMY KEY\n-d\n/run/x.env\n"; string(got) != want {
		t.Errorf("flanneld got args %q, want %q", got, want)
	}
	if st, err := os.Stat("mk-docker-opts.sh"); err != nil || st.Mode()&0o111 == 0 {
		t.Errorf("mk-docker-opts.sh is not executable: %v %v", st.Mode(), err)
	}
}
