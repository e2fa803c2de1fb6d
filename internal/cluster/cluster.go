// Package cluster runs real flanneld processes on a netns testbed: an
// embedded etcd on the first host (or separate etcd processes on hosts of
// their own), the network config, one "container" per host on the subnet
// flanneld leased. The demo, the integration tests and the benchmarks all
// build their overlays with it.
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/syncbuf"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/lease"
)

// Defaults of a test cluster.
const (
	DefaultPrefix = "/coreos.com/network"
	EtcdPort      = 2379
	HealthPort    = 8471
)

// DefaultNetwork is the overlay every test cluster uses.
var DefaultNetwork = netip.MustParsePrefix("198.18.0.0/16")

// Options shape a cluster.
type Options struct {
	Flanneld string          // path of the flanneld binary (required)
	Hosts    int             // number of hosts (default 3)
	Bed      testbed.Options // testbed shape; Hosts is taken from above
	Config   string          // network config JSON; default {"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}
	Args     []string        // extra flanneld flags for every node
	Environ  []string        // added to every flanneld's environment, e.g. FLANNEL_FASTPATH_ATTACH=clsact
	Dir      string          // working directory for etcd data, subnet files and logs (default: a new temp dir)
	Log      io.Writer       // flanneld output is copied here too when set
	// EtcdMembers > 0 runs etcd as separate processes (the etcd binary, one
	// member per extra testbed host after the flanneld hosts) instead of
	// inside flanneld on host 1; every flanneld gets all their endpoints.
	EtcdMembers int
	// Idle is how many of the last flanneld hosts are set up but not
	// started, for a test to start later with Node.Start.
	Idle int
	// ReadyTimeout bounds Start's wait for etcd and for each flanneld
	// (default 30s); slow machines such as a TCG guest need more.
	ReadyTimeout time.Duration
	// IPv6Underlay gives every flanneld host an IPv6 address of
	// IPv6Underlay beside its IPv4 one, and flanneld --public-ipv6 with it:
	// the underlay of an IPv6-only config (IPv6OnlyConfig). etcd stays on
	// IPv4.
	IPv6Underlay bool
	// Kube runs flanneld with --kube-subnet-mgr (see kube.go): no etcd,
	// Config written to each node's net-conf.json, and every node left
	// idle for the test to give it its API server credentials and start it.
	Kube bool
}

// Cluster is a running overlay.
type Cluster struct {
	Bed   *testbed.Bed
	Nodes []*Node
	Etcd  *clientv3.Client // reaches etcd from this process
	// EtcdMembers are the separate etcd processes (Options.EtcdMembers).
	EtcdMembers []*EtcdMember

	opts    Options
	ownDir  bool
	etcdDir string // separate members' data, removed by Close
	closeMu sync.Mutex
}

// Node is one host and its flanneld.
type Node struct {
	Index      int
	Host       *testbed.Host
	Dir        string
	SubnetFile string
	Args       []string
	Environ    []string           // added to flanneld's environment, e.g. FLANNELD_ETCD_PASSWORD=...
	Env        lease.SubnetFile   // what flanneld wrote, once ready
	Container  *testbed.Container // on the leased subnet, once added
	// ContainerIPv6 is Container's address on the IPv6 subnet, when the
	// lease has one.
	ContainerIPv6 netip.Addr
	// Addr6 is the host's IPv6 underlay address (Options.IPv6Underlay).
	Addr6 netip.Addr
	// Launch, when set, makes the command that runs flanneld with args
	// in the node's namespace, instead of running Options.Flanneld there
	// (the image test runs the container image's entrypoint).
	Launch func(ctx context.Context, args []string) *exec.Cmd

	cluster *Cluster
	cmd     *exec.Cmd
	done    chan struct{}
	logBuf  *syncbuf.Buffer
}

// Start builds the testbed, starts etcd and flanneld on every host (host 1
// runs the embedded etcd unless Options.EtcdMembers is set), publishes the
// config and waits until every started node is ready.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	if opts.Flanneld == "" {
		return nil, errors.New("cluster: Options.Flanneld is required")
	}
	if opts.Hosts == 0 {
		opts.Hosts = 3
	}
	if opts.Config == "" {
		opts.Config = `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	c := &Cluster{opts: opts}
	if opts.Dir == "" {
		if c.opts.Dir, err = os.MkdirTemp("", "flannel-go-cluster-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	// The embedded etcd runs in host 1's flanneld, which must start.
	minActive := 1
	if opts.EtcdMembers > 0 || opts.Kube {
		minActive = 0
	}
	if opts.Idle < 0 || opts.Hosts-opts.Idle < minActive {
		return nil, fmt.Errorf("cluster: Options.Idle %d out of range for %d hosts", opts.Idle, opts.Hosts)
	}
	bopts := opts.Bed
	bopts.Hosts = opts.Hosts + opts.EtcdMembers
	if c.Bed, err = testbed.New(ctx, bopts); err != nil {
		return nil, err
	}
	for i, h := range c.Bed.Hosts[:opts.Hosts] {
		n := &Node{Index: i + 1, Host: h, cluster: c, Dir: filepath.Join(c.opts.Dir, fmt.Sprintf("h%d", i+1))}
		n.SubnetFile = filepath.Join(n.Dir, "subnet.env")
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	if err := c.setupIPv6(ctx); err != nil {
		return nil, err
	}
	if opts.Kube {
		return c, c.writeNetConf()
	}
	active := c.Nodes[:opts.Hosts-opts.Idle]
	rest := active
	if opts.EtcdMembers > 0 {
		if err := c.startEtcdMembers(ctx, c.Bed.Hosts[opts.Hosts:]); err != nil {
			return nil, err
		}
		if c.Etcd, err = NewEtcdClient(c.etcdHost(), c.EtcdEndpoints()...); err != nil {
			return nil, err
		}
		if err := c.WaitEtcd(ctx, opts.ReadyTimeout); err != nil {
			return nil, fmt.Errorf("%w\n%s", err, c.Logs())
		}
	} else {
		if err := c.Nodes[0].Start(ctx); err != nil {
			return nil, err
		}
		if c.Etcd, err = NewEtcdClient(c.etcdHost(), c.EtcdEndpoint()); err != nil {
			return nil, err
		}
		rest = active[1:]
	}
	if err := c.PutConfig(ctx, opts.Config); err != nil {
		return nil, err
	}
	for _, n := range rest {
		if err := n.Start(ctx); err != nil {
			return nil, err
		}
	}
	for _, n := range active {
		if err := n.WaitReady(ctx, opts.ReadyTimeout); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// EtcdEndpoint is the client URL of the embedded etcd on host 1.
func (c *Cluster) EtcdEndpoint() string {
	return fmt.Sprintf("http://%s:%d", c.Bed.Hosts[0].Addr, EtcdPort)
}

// PutConfig publishes the network config.
func (c *Cluster) PutConfig(ctx context.Context, cfg string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := c.Etcd.Put(ctx, DefaultPrefix+"/config", cfg); err != nil {
		return fmt.Errorf("put network config: %w", err)
	}
	return nil
}

// Close stops every flanneld and deletes the testbed.
func (c *Cluster) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	for _, n := range c.Nodes {
		n.Stop(syscall.SIGTERM, 5*time.Second)
	}
	for _, m := range c.EtcdMembers {
		m.Kill()
	}
	if c.Etcd != nil {
		c.Etcd.Close()
		c.Etcd = nil
	}
	if c.etcdDir != "" {
		os.RemoveAll(c.etcdDir)
	}
	var err error
	if c.Bed != nil {
		err = c.Bed.Close()
	}
	if c.ownDir {
		os.RemoveAll(c.opts.Dir)
	}
	return err
}

// Logs returns every node's flanneld output, for test failure reports.
func (c *Cluster) Logs() string {
	var b bytes.Buffer
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "=== flanneld on %s (%s)\n%s\n", n.Host.Name, n.Host.Addr, n.Log())
	}
	for _, m := range c.EtcdMembers {
		fmt.Fprintf(&b, "=== etcd %s on %s (%s)\n%s\n", m.Name, m.Host.Name, m.Host.Addr, m.Log())
	}
	return b.String()
}

// Start runs flanneld on the node's host.
func (n *Node) Start(ctx context.Context) error {
	c := n.cluster
	args := append(n.subnetManagerArgs(),
		"--iface="+n.Host.Iface,
		"--subnet-file="+n.SubnetFile,
		"--healthz-ip=127.0.0.1",
		"--healthz-port="+strconv.Itoa(HealthPort),
	)
	if n.Addr6.IsValid() {
		args = append(args, "--public-ipv6="+n.Addr6.String())
	}
	args = append(args, c.opts.Args...)
	args = append(args, n.Args...)
	// The process must outlive the caller's context: it is stopped by Stop.
	cmd := n.Host.Command(context.WithoutCancel(ctx), c.opts.Flanneld, args...)
	if n.Launch != nil {
		cmd = n.Launch(context.WithoutCancel(ctx), args)
	}
	if n.logBuf == nil {
		n.logBuf = &syncbuf.Buffer{}
	}
	var out io.Writer = n.logBuf
	if c.opts.Log != nil {
		out = io.MultiWriter(n.logBuf, &prefixWriter{w: c.opts.Log, prefix: fmt.Sprintf("[h%d] ", n.Index)})
	}
	cmd.Stdout, cmd.Stderr = out, out
	if env := append(slices.Clone(c.opts.Environ), n.Environ...); len(env) > 0 {
		if cmd.Env == nil {
			cmd.Env = os.Environ()
		}
		cmd.Env = append(cmd.Env, env...)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start flanneld on %s: %w", n.Host.Name, err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		close(done)
	}(n.done)
	return nil
}

// Running reports whether the node's flanneld process is alive.
func (n *Node) Running() bool {
	if n.done == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Stop signals flanneld and waits up to timeout for it to exit, then kills it.
func (n *Node) Stop(sig os.Signal, timeout time.Duration) {
	if !n.Running() {
		return
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(timeout):
		n.cmd.Process.Kill()
		<-n.done
	}
}

// PID is the process id of the node's running flanneld, 0 when not running.
func (n *Node) PID() int {
	if !n.Running() {
		return 0
	}
	return n.cmd.Process.Pid
}

// ExitCode is the exit status of a stopped flanneld (-1 while running).
func (n *Node) ExitCode() int {
	if n.Running() || n.cmd == nil {
		return -1
	}
	return n.cmd.ProcessState.ExitCode()
}

// Log returns the node's flanneld output so far.
func (n *Node) Log() string {
	if n.logBuf == nil {
		return ""
	}
	return n.logBuf.String()
}

// HTTPGet fetches path from the node's health listener.
func (n *Node) HTTPGet(ctx context.Context, path string) (int, string, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := n.Host.Do(func() (err error) {
			var d net.Dialer
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", HealthPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// WaitReady waits until flanneld answers /readyz with 200, then reads the
// subnet file it wrote.
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if !n.Running() {
			return fmt.Errorf("flanneld on %s exited (code %d) before it was ready:\n%s", n.Host.Name, n.ExitCode(), n.Log())
		}
		code, _, err := n.HTTPGet(ctx, "/readyz")
		if err == nil && code == http.StatusOK {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flanneld on %s not ready after %s (last: %d %v):\n%s", n.Host.Name, timeout, code, err, n.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
	env, err := lease.ReadSubnetFile(n.SubnetFile)
	if err != nil {
		return fmt.Errorf("read %s: %w", n.SubnetFile, err)
	}
	n.Env = env
	return nil
}

// AddContainer puts a container on the node's leased subnet, as Docker would
// with --bip=$FLANNEL_SUBNET --mtu=$FLANNEL_MTU, and on its IPv6 subnet
// when the lease has one (see addIPv6).
func (n *Node) AddContainer(ctx context.Context, name string) (*testbed.Container, error) {
	ct, err := n.Host.AddContainer(ctx, name, n.bridgeCIDR(), n.Env.MTU)
	if err != nil {
		return nil, err
	}
	if n.Env.IPv6Subnet.IsValid() {
		if err := n.addIPv6(ctx, ct); err != nil {
			return nil, err
		}
	}
	if n.Container == nil {
		n.Container, n.ContainerIPv6 = ct, n.IPv6Addr(ct)
	}
	return ct, nil
}

// AddContainers puts one container ("c1") on every node.
func (c *Cluster) AddContainers(ctx context.Context) error {
	for _, n := range c.Nodes {
		if _, err := n.AddContainer(ctx, "c1"); err != nil {
			return err
		}
	}
	return nil
}

// prefixWriter prefixes every line with the node's name.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		if !p.mid {
			io.WriteString(p.w, p.prefix)
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.w.Write(b)
			p.mid = true
			break
		}
		p.w.Write(b[:i+1])
		p.mid = false
		b = b[i+1:]
	}
	return n, nil
}
