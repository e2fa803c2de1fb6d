package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/flannel-go/flannel-go/internal/syncbuf"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// EtcdBinary is the etcd server run by Options.EtcdMembers (Debian's etcd 3.4).
const EtcdBinary = "etcd"

// EtcdPeerPort is the peer port of a separate etcd member.
const EtcdPeerPort = 2380

// EtcdMember is one etcd server run as its own process on a testbed host
// that runs no flanneld, so that it can be killed and restarted while the
// overlay keeps running.
type EtcdMember struct {
	Name string
	Host *testbed.Host
	Dir  string // data directory, kept across Stop and Start
	// ClientURLs are listened on and advertised by the next Start; by
	// default the host's address on EtcdPort. A test may point it at
	// loopback to change etcd while no flanneld can reach it.
	ClientURLs []string
	PeerURL    string

	initialCluster string
	bin            string
	cmd            *exec.Cmd
	done           chan struct{}
	logBuf         *syncbuf.Buffer
}

// DefaultClientURL is the member's client URL on its underlay address.
func (m *EtcdMember) DefaultClientURL() string {
	return fmt.Sprintf("http://%s:%d", m.Host.Addr, EtcdPort)
}

// Start runs the member on its data directory; it does not wait until the
// member serves (see Cluster.WaitEtcd). The first start bootstraps the
// cluster, later ones rejoin it from the data directory.
func (m *EtcdMember) Start(ctx context.Context) error {
	if m.Running() {
		return fmt.Errorf("etcd member %s already running", m.Name)
	}
	urls := strings.Join(m.ClientURLs, ",")
	// Timings suit veths on a loaded 2-core machine: fast enough that a lost
	// leader is replaced within a second, slow enough not to flap.
	cmd := m.Host.Command(context.WithoutCancel(ctx), m.bin,
		"--name="+m.Name,
		"--data-dir="+m.Dir,
		"--listen-client-urls="+urls,
		"--advertise-client-urls="+urls,
		"--listen-peer-urls="+m.PeerURL,
		"--initial-advertise-peer-urls="+m.PeerURL,
		"--initial-cluster="+m.initialCluster,
		"--initial-cluster-state=new",
		"--initial-cluster-token=flannel-go-test",
		"--heartbeat-interval=50",
		"--election-timeout=500",
		"--log-level=warn",
		"--logger=zap",
	)
	if m.logBuf == nil {
		m.logBuf = &syncbuf.Buffer{}
	}
	cmd.Stdout, cmd.Stderr = m.logBuf, m.logBuf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd member %s on %s: %w", m.Name, m.Host.Name, err)
	}
	m.cmd, m.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		close(done)
	}(m.done)
	return nil
}

// Running reports whether the member's process is alive.
func (m *EtcdMember) Running() bool {
	if m.done == nil {
		return false
	}
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Kill stops the member at once (SIGKILL): connections are reset, as when
// a machine dies. The data directory is kept for Start.
func (m *EtcdMember) Kill() {
	if !m.Running() {
		return
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
}

// Log returns the member's output so far.
func (m *EtcdMember) Log() string {
	if m.logBuf == nil {
		return ""
	}
	return m.logBuf.String()
}

// startEtcdMembers creates the members on the last n testbed hosts and
// starts them all (a new cluster needs a quorum to elect a leader).
func (c *Cluster) startEtcdMembers(ctx context.Context, hosts []*testbed.Host) error {
	bin, err := exec.LookPath(EtcdBinary)
	if err != nil {
		return fmt.Errorf("cluster: Options.EtcdMembers needs the %s binary: %w", EtcdBinary, err)
	}
	// etcd fsyncs every commit; tmpfs keeps that cheap, which the lease
	// churn tests need.
	base := c.opts.Dir
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if base, err = os.MkdirTemp("/dev/shm", "flannel-go-etcd-"); err != nil {
			return err
		}
		c.etcdDir = base
	}
	var peers []string
	for i, h := range hosts {
		m := &EtcdMember{
			Name:    fmt.Sprintf("e%d", i+1),
			Host:    h,
			Dir:     filepath.Join(base, fmt.Sprintf("etcd%d", i+1)),
			PeerURL: fmt.Sprintf("http://%s:%d", h.Addr, EtcdPeerPort),
			bin:     bin,
		}
		m.ClientURLs = []string{m.DefaultClientURL()}
		peers = append(peers, m.Name+"="+m.PeerURL)
		c.EtcdMembers = append(c.EtcdMembers, m)
	}
	for _, m := range c.EtcdMembers {
		m.initialCluster = strings.Join(peers, ",")
		if err := m.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// EtcdEndpoints are the client URLs flanneld is given: the embedded etcd on
// host 1, or every separate member.
func (c *Cluster) EtcdEndpoints() []string {
	if len(c.EtcdMembers) == 0 {
		return []string{c.EtcdEndpoint()}
	}
	eps := make([]string, 0, len(c.EtcdMembers))
	for _, m := range c.EtcdMembers {
		eps = append(eps, m.DefaultClientURL())
	}
	return eps
}

// etcdHost is the namespace this process dials etcd from: host 1 for the
// embedded etcd, the first member's host otherwise (it reaches every
// member over the underlay bridge).
func (c *Cluster) etcdHost() *testbed.Host {
	if len(c.EtcdMembers) == 0 {
		return c.Bed.Hosts[0]
	}
	return c.EtcdMembers[0].Host
}

// NewEtcdClient connects this process to endpoints, opening every socket in
// h's namespace (e.g. loopback URLs of a member listening only there).
func NewEtcdClient(h *testbed.Host, endpoints ...string) (*clientv3.Client, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := h.Do(func() (err error) {
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
	})
}

// WaitEtcd waits until etcd answers a read through c.Etcd.
func (c *Cluster) WaitEtcd(ctx context.Context, timeout time.Duration) error {
	return WaitEtcd(ctx, c.Etcd, timeout)
}

// WaitEtcd waits until cli can read a key (a linearizable read needs a
// leader), or timeout passes.
func WaitEtcd(ctx context.Context, cli *clientv3.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = cli.Get(cctx, "health")
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	return errors.Join(fmt.Errorf("etcd not serving after %s", timeout), err)
}

// EtcdLeader returns the member that is the raft leader now.
func (c *Cluster) EtcdLeader(ctx context.Context) (*EtcdMember, error) {
	for _, m := range c.EtcdMembers {
		if !m.Running() {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := c.Etcd.Status(cctx, m.DefaultClientURL())
		cancel()
		if err != nil {
			continue
		}
		if st.Leader == st.Header.MemberId {
			return m, nil
		}
	}
	return nil, errors.New("no etcd member reports itself leader")
}
