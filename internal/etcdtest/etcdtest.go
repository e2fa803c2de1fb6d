// Package etcdtest gives tests a real etcd server: one embedded in the test
// process, or the etcd binary (v3.4 on Debian) run as a child process.
// It is imported only by _test.go files.
package etcdtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flannel-go/flannel-go/internal/etcdserver"
	"github.com/flannel-go/flannel-go/internal/syncbuf"
)

// EtcdBinary is the external etcd server run by External.
const EtcdBinary = "etcd"

const startDeadline = 20 * time.Second

// Embedded starts a fast embedded etcd in a temporary directory and returns
// a client for it. Server and client are closed when the test ends. The
// endpoints are cli.Endpoints().
func Embedded(t testing.TB) *clientv3.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startDeadline)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Options{
		Dir:        t.TempDir(),
		ClientURLs: []string{"http://127.0.0.1:0"},
		Fast:       true,
		Logger:     discardLogger(),
	})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(srv.Close)
	return NewClient(t, srv.Endpoints())
}

// External runs the etcd binary on free loopback ports with a temporary
// data directory, waits until it answers, and returns a client. The process
// is killed when the test ends. Without the binary the test is skipped,
// or fails when CI=true.
func External(t testing.TB) *clientv3.Client {
	t.Helper()
	return startExternalRetry(t, lookEtcd(t), nil)
}

// TLSOptions makes ExternalTLS serve clients over TLS with client
// certificate authentication (etcd's --client-cert-auth).
type TLSOptions struct {
	CertFile      string      // server certificate (--cert-file)
	KeyFile       string      // its key (--key-file)
	TrustedCAFile string      // CA of the client certificates (--trusted-ca-file)
	Client        *tls.Config // how the returned client reaches the server
}

// ExternalTLS is External with an https client URL. The endpoint is
// cli.Endpoints()[0].
func ExternalTLS(t testing.TB, o TLSOptions) *clientv3.Client {
	t.Helper()
	return startExternalRetry(t, lookEtcd(t), &o)
}

// lookEtcd finds the etcd binary, or skips the test (fails it when CI=true).
func lookEtcd(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath(EtcdBinary)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("etcd binary not found on PATH (CI=true, so this is a failure): %v", err)
		}
		t.Skipf("etcd binary not found on PATH, skipping external etcd: %v", err)
	}
	return bin
}

func startExternalRetry(t testing.TB, bin string, tlsOpts *TLSOptions) *clientv3.Client {
	t.Helper()
	var lastErr error
	// Free ports are picked by binding and releasing them, so another process
	// can take one in between; a few attempts make that harmless.
	for attempt := 0; attempt < 3; attempt++ {
		cli, err := startExternal(t, bin, tlsOpts)
		if err == nil {
			return cli
		}
		lastErr = err
	}
	t.Fatalf("start external etcd: %v", lastErr)
	return nil
}

func startExternal(t testing.TB, bin string, tlsOpts *TLSOptions) (*clientv3.Client, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	scheme := "http"
	var tlsArgs []string
	var clientTLS *tls.Config
	if tlsOpts != nil {
		scheme = "https"
		tlsArgs = []string{
			"--cert-file=" + tlsOpts.CertFile,
			"--key-file=" + tlsOpts.KeyFile,
			"--trusted-ca-file=" + tlsOpts.TrustedCAFile,
			"--client-cert-auth",
		}
		clientTLS = tlsOpts.Client
	}
	client := scheme + "://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	dir := t.TempDir()
	cmd := exec.Command(bin, append([]string{
		"--name=etcdtest",
		"--data-dir=" + dir,
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=etcdtest=" + peer,
		"--initial-cluster-state=new",
		"--heartbeat-interval=10",
		"--election-timeout=100",
		"--log-level=error",
		"--logger=zap",
	}, tlsArgs...)...)
	var out syncbuf.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{client},
		DialTimeout: 2 * time.Second,
		TLS:         clientTLS,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		stop()
		return nil, fmt.Errorf("client for %s: %w", client, err)
	}
	deadline := time.Now().Add(startDeadline)
	for {
		select {
		case <-exited:
			cli.Close()
			return nil, fmt.Errorf("etcd exited during start-up: %s", out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			break
		}
		if !time.Now().Before(deadline) {
			cli.Close()
			stop()
			return nil, fmt.Errorf("etcd at %s not healthy after %v: %v; output: %s", client, startDeadline, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		cli.Close()
		stop()
	})
	return cli, nil
}

// NewClient returns a client for endpoints that is closed when the test ends.
func NewClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client for %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Backends runs fn as two subtests, "embedded" and "external", each with a
// fresh etcd server of that kind.
func Backends(t *testing.T, fn func(t *testing.T, cli *clientv3.Client)) {
	t.Helper()
	t.Run("embedded", func(t *testing.T) { fn(t, Embedded(t)) })
	t.Run("external", func(t *testing.T) { fn(t, External(t)) })
}

func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreePorts returns n loopback TCP ports that were free a moment ago, for
// other servers a test starts; retry on a bind failure.
func FreePorts(n int) ([]int, error) { return freePorts(n) }
