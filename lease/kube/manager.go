// Package kube is flannel's Kubernetes subnet manager (upstream's
// --kube-subnet-mgr): each node's subnet is its spec.podCIDR(s), and a
// node publishes its public address in annotations of its Node object,
// named and written as upstream flanneld's pkg/subnet/kube writes them for
// the udp backend. Nodes are followed with a client-go informer. The
// Manager speaks the lease package's Lease and Event, so the daemon's
// route sync, router and fast path do not know which subnet manager feeds
// them.
package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"

	"github.com/flannel-go/flannel-go/lease"
)

// DefaultResyncPeriod is upstream's informer resync: every node is
// re-examined this often, which also re-writes this node's annotations
// when someone removed them without an update event reaching us.
const DefaultResyncPeriod = 5 * time.Minute

// Retry backoff for API calls that fail for a reason other than RBAC.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Options configures a Manager.
type Options struct {
	// NodeName is this node's Node object (required); see NodeName.
	NodeName string
	// AnnotationPrefix is --kube-annotation-prefix, default
	// DefaultAnnotationPrefix.
	AnnotationPrefix string
	// NetConfPath is --net-config-path, default DefaultNetConfPath.
	NetConfPath string
	// SetNodeNetworkUnavailable sets the node's NetworkUnavailable
	// condition to False once the node is up (Keep), as upstream's
	// --set-node-network-unavailable (default true there).
	SetNodeNetworkUnavailable bool
	// ResyncPeriod of the node informer, default DefaultResyncPeriod.
	ResyncPeriod time.Duration
	Logger       *slog.Logger
	// Observer, when set, is told of acquisitions.
	Observer lease.Observer
}

// Manager is the Kubernetes subnet manager of one node. WaitConfig starts
// its node informer; Close stops it.
type Manager struct {
	c    *Client
	opts Options
	ann  annotations
	log  *slog.Logger

	inf   cache.SharedIndexInformer
	ownCh chan struct{} // signalled on every event of this node's object

	startOnce sync.Once
	stop      context.CancelFunc
	done      chan struct{}
	apiErrs   apiErrors

	at  attrs         // what this node publishes; set by SetPublicAddrs before Acquire
	cfg *lease.Config // the network config WaitConfig read
	// patchedFrom is the resourceVersion of the node object the last
	// annotation patch was made from: while the cache still holds it,
	// the patch's own update has not arrived.
	patchedFrom string
}

// New returns a Manager on c. It does no I/O.
func New(c *Client, opts Options) (*Manager, error) {
	if opts.NodeName == "" {
		return nil, errors.New("kube subnet manager: no node name")
	}
	if opts.AnnotationPrefix == "" {
		opts.AnnotationPrefix = DefaultAnnotationPrefix
	}
	if opts.NetConfPath == "" {
		opts.NetConfPath = DefaultNetConfPath
	}
	if opts.ResyncPeriod <= 0 {
		opts.ResyncPeriod = DefaultResyncPeriod
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	ann, err := newAnnotations(opts.AnnotationPrefix)
	if err != nil {
		return nil, err
	}
	m := &Manager{c: c, opts: opts, ann: ann, log: opts.Logger, ownCh: make(chan struct{}, 1), done: make(chan struct{})}
	m.apiErrs.log = opts.Logger
	m.inf = cache.NewSharedIndexInformer(c.nodesListWatch(), &corev1.Node{}, opts.ResyncPeriod, cache.Indexers{})
	// managedFields are most of a node's bytes and of no use here.
	_ = m.inf.SetTransform(func(obj any) (any, error) {
		if n, ok := obj.(*corev1.Node); ok {
			n.ManagedFields = nil
		}
		return obj, nil
	})
	_ = m.inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) { m.apiErrs.report(err) })
	if _, err := m.inf.AddEventHandler(nameHandler(func(name string) {
		if name == opts.NodeName {
			signal(m.ownCh)
		}
	})); err != nil {
		return nil, fmt.Errorf("kube subnet manager: %w", err)
	}
	return m, nil
}

// SetPublicAddrs sets the addresses this node publishes: its IPv4 public
// address (invalid in an IPv6-only network) and its IPv6 one (published
// only where the config enables IPv6). Call it before Acquire.
func (m *Manager) SetPublicAddrs(v4, v6 netip.Addr) { m.at = attrs{PublicIP: v4, PublicIPv6: v6} }

// StoredPublicAddrs returns this node's node-public-ip and
// node-public-ipv6 annotations, which replace --public-ip and
// --public-ipv6 in upstream. Empty before WaitConfig or when unset.
func (m *Manager) StoredPublicAddrs() (v4, v6 string) {
	n := m.node()
	if n == nil {
		return "", ""
	}
	return n.Annotations[m.ann.BackendNodePublicIP], n.Annotations[m.ann.BackendNodePublicIPv6]
}

// WaitConfig reads the network config from --net-config-path, starts the
// node informer and waits until it has listed the nodes and this node has
// a podCIDR. The config's SubnetLen (IPv6SubnetLen) becomes the length of
// the node's podCIDR, which kube-controller-manager chose
// (--node-cidr-mask-size). A file that is missing or does not parse, or a
// Forbidden answer to the node list, is an error; an unreachable API
// server is waited for.
func (m *Manager) WaitConfig(ctx context.Context) (*lease.Config, error) {
	cfg, err := ReadNetConf(m.opts.NetConfPath)
	if err != nil {
		return nil, err
	}
	m.start()
	m.log.Info("Waiting for the node informer to sync with the API server")
	if err := m.waitSynced(ctx); err != nil {
		return nil, err
	}
	m.log.Info("Node informer synced")
	n, err := m.waitPodCIDR(ctx)
	if err != nil {
		return nil, err
	}
	v4, v6, err := podCIDRs(n.Spec.PodCIDR, n.Spec.PodCIDRs)
	if err != nil {
		return nil, fmt.Errorf("node %q: %w", m.opts.NodeName, err)
	}
	if cfg.EnableIPv4 && contains(cfg.Network, v4) {
		cfg.SubnetLen = v4.Bits()
	}
	if cfg.EnableIPv6 && contains(cfg.IPv6Network, v6) {
		cfg.IPv6SubnetLen = v6.Bits()
	}
	m.cfg = cfg
	return cfg, nil
}

// start runs the informer until Close.
func (m *Manager) start() {
	m.startOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		m.stop = cancel
		go func() {
			defer close(m.done)
			m.inf.RunWithContext(ctx)
		}()
	})
}

// waitSynced waits until the informer has listed the nodes. A Forbidden
// answer ends the wait with an error saying what to grant.
func (m *Manager) waitSynced(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !m.inf.HasSynced() {
		if err := m.apiErrs.forbidden(); err != nil {
			return fmt.Errorf("list and watch nodes: %w", rbacHint(err, "nodes", "list", "watch"))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the node informer to sync: %w", ctx.Err())
		case <-t.C:
		}
	}
	m.apiErrs.setSynced()
	return nil
}

// waitPodCIDR waits until this node's object exists and has a podCIDR,
// saying once what it waits for.
func (m *Manager) waitPodCIDR(ctx context.Context) (*corev1.Node, error) {
	var said string
	for {
		n := m.node()
		switch {
		case n != nil && (n.Spec.PodCIDR != "" || len(n.Spec.PodCIDRs) > 0):
			return n, nil
		case n == nil && said != "missing":
			said = "missing"
			m.log.Warn(fmt.Sprintf("Node %q does not exist: waiting for it to be registered (by its kubelet; NODE_NAME, or the pod's "+
				"spec.nodeName, must be the Node object's name)", m.opts.NodeName))
		case n != nil && said != "no podCIDR":
			said = "no podCIDR"
			m.log.Warn(fmt.Sprintf("Node %q has no podCIDR yet (spec.podCIDR is empty): waiting for one to be assigned, by "+
				"kube-controller-manager with --allocate-node-cidrs and --cluster-cidr, or by the operator", m.opts.NodeName))
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for node %q to have a podCIDR: %w", m.opts.NodeName, ctx.Err())
		case <-m.ownCh:
		}
	}
}

// node is this node's object from the informer's cache, nil when absent.
func (m *Manager) node() *corev1.Node {
	obj, ok, err := m.inf.GetStore().GetByKey(m.opts.NodeName)
	if err != nil || !ok {
		return nil
	}
	n, _ := obj.(*corev1.Node)
	return n
}

// Close stops the informer and waits for it. The node's annotations stay,
// as upstream leaves them.
func (m *Manager) Close() {
	m.startOnce.Do(func() { close(m.done) })
	if m.stop != nil {
		m.stop()
	}
	<-m.done
}

// nameHandler calls fn with the name of every node added, updated
// (resyncs included) or deleted.
func nameHandler(fn func(name string)) cache.ResourceEventHandlerFuncs {
	call := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			fn(key)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { call(obj) },
		UpdateFunc: func(_, obj any) { call(obj) },
		DeleteFunc: call,
	}
}

// signal wakes the reader of ch without blocking: one pending wake-up is
// enough, the reader looks at the current state.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// apiErrors logs the informer's list and watch errors, each distinct text
// once in a row, and keeps the last Forbidden one. Until the informer has
// synced once, a Forbidden answer is WaitConfig's error to return, not a
// line to log.
type apiErrors struct {
	log    *slog.Logger
	mu     sync.Mutex
	last   string
	forb   error
	synced bool
}

func (a *apiErrors) report(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return // a watch the server closed; the informer re-opens it
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if apierrors.IsForbidden(err) {
		a.forb = err
		if !a.synced {
			return
		}
	}
	if s := err.Error(); s != a.last {
		a.last = s
		a.log.Error("Kubernetes API: list or watch of nodes failed, retrying with backoff", "error", rbacHint(err, "nodes", "list", "watch"))
	}
}

func (a *apiErrors) forbidden() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.forb
}

// setSynced marks the end of start-up: from now on every error is logged.
func (a *apiErrors) setSynced() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.synced = true
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
