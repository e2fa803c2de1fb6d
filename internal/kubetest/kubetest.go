// Package kubetest runs a real kube-apiserver for tests: built from
// k8s.io/kubernetes by `make test-kube` (tools/kube), on an etcd the test
// starts (the etcd binary, Debian's 3.4), serving on 127.0.0.1 only with
// a CA of its own, static token authentication for the test's
// administrator and RBAC for everyone else. It is imported only by
// _test.go files.
package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
	"github.com/flannel-go/flannel-go/internal/syncbuf"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// BinEnv names the directory holding kube-apiserver and kubectl; `make
// test-kube` sets it.
const BinEnv = "FLANNEL_KUBE_BIN"

// readyTimeout bounds the API server's start-up (about 4 s on an idle
// 2-core machine).
const readyTimeout = 90 * time.Second

// Server is a running kube-apiserver.
type Server struct {
	// URL is https://127.0.0.1:<Port>.
	URL  string
	Port int
	// CAFile is the CA of the serving certificate.
	CAFile string
	// AdminToken authenticates as a member of system:masters.
	AdminToken string
	// Admin is a client with AdminToken.
	Admin *kubernetes.Clientset

	bin, kubectl string
	args         []string
	dir          string
	cmd          *exec.Cmd
	done         chan struct{}
	log          syncbuf.Buffer
}

// Binaries returns the paths of kube-apiserver and kubectl from
// FLANNEL_KUBE_BIN, or skips t (fails it with CI=true).
func Binaries(t testing.TB) (apiserver, kubectl string) {
	t.Helper()
	dir := os.Getenv(BinEnv)
	apiserver, kubectl = filepath.Join(dir, "kube-apiserver"), filepath.Join(dir, "kubectl")
	for _, p := range []string{apiserver, kubectl} {
		if _, err := os.Stat(p); dir == "" || err != nil {
			msg := fmt.Sprintf("test needs kube-apiserver and kubectl in $%s (%q): run `make test-kube`, which builds them once "+
				"(tools/kube/build.sh) and sets it", BinEnv, dir)
			if testbed.InCI() {
				t.Fatal(msg + " (CI=true: failing instead of skipping)")
			}
			t.Skip(msg)
		}
	}
	return apiserver, kubectl
}

// Start runs an etcd and a kube-apiserver on it for the test; both stop
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, kubectl := Binaries(t)
	etcd := etcdtest.External(t)
	dir := t.TempDir()
	p, err := newPKI(dir)
	if err != nil {
		t.Fatalf("kubetest: keys and certificates: %v", err)
	}
	s := &Server{bin: bin, kubectl: kubectl, dir: dir, CAFile: p.CAFile, AdminToken: p.AdminToken}
	t.Cleanup(s.Stop)
	var lastErr error
	// A free port may be taken between picking and binding it.
	for range 3 {
		ports, err := etcdtest.FreePorts(1)
		if err != nil {
			t.Fatal(err)
		}
		s.Port, s.URL = ports[0], "https://127.0.0.1:"+strconv.Itoa(ports[0])
		s.args = serverArgs(etcd.Endpoints()[0], s.Port, p)
		if lastErr = s.start(); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("kubetest: %v", lastErr)
	}
	s.Admin, err = kubernetes.NewForConfig(s.RESTConfig(s.AdminToken))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serverArgs are the API server's flags: loopback only, the test's PKI,
// static tokens for the administrator, service account tokens signed with
// the test's key, RBAC. No kubelet or controller runs; nothing reconciles
// the "kubernetes" endpoints.
func serverArgs(etcd string, port int, p *pki) []string {
	return []string{
		"--etcd-servers=" + etcd,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + p.CertFile,
		"--tls-private-key-file=" + p.KeyFile,
		"--token-auth-file=" + p.TokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.SAPubFile,
		"--service-account-signing-key-file=" + p.SAKeyFile,
		"--service-cluster-ip-range=198.19.255.0/24",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--cert-dir=" + filepath.Join(filepath.Dir(p.CertFile), "certs"),
	}
}

// start runs the API server and waits until /readyz answers ok.
func (s *Server) start() error {
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	s.done = done
	go func() { _ = s.cmd.Wait(); close(done) }()
	tr, err := rest.TransportFor(s.RESTConfig(s.AdminToken))
	if err != nil {
		s.Stop()
		return err
	}
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for !ready(ctx, hc, s.URL+"/readyz") {
		select {
		case <-done:
			return fmt.Errorf("kube-apiserver exited during start-up:\n%s", s.Log())
		case <-ctx.Done():
			s.Stop()
			return fmt.Errorf("kube-apiserver not ready after %s:\n%s", readyTimeout, s.Log())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// ready reports whether url answers 200 "ok".
func ready(ctx context.Context, hc *http.Client, url string) bool {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode == http.StatusOK && b.String() == "ok"
}

// Stop stops the API server (SIGTERM, then SIGKILL after 10 s) and waits
// for it; etcd keeps running.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Restart stops the API server and starts it again on the same port and
// etcd, waiting until it is ready.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		t.Fatalf("kubetest: restart: %v", err)
	}
}

// Log is the API server's output so far.
func (s *Server) Log() string { return s.log.String() }

// RESTConfig reaches the server with token.
func (s *Server) RESTConfig(token string) *rest.Config {
	return &rest.Config{Host: s.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile}}
}

// Kubectl runs kubectl as the administrator with args; stdin, when not
// nil, is its input.
func (s *Server) Kubectl(ctx context.Context, stdin []byte, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.kubectl, append([]string{"--server=" + s.URL, "--token=" + s.AdminToken,
		"--certificate-authority=" + s.CAFile}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %v: %w: %s", args, err, out)
	}
	return string(out), nil
}
