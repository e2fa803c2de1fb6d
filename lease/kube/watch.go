package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"

	"github.com/flannel-go/flannel-go/lease"
)

// Watch sends the leases of the other managed nodes (those whose
// kube-subnet-manager annotation is "true") as one batch of Added events
// once the informer has delivered them, then every change: a node added
// or whose lease changed is Added (after a Removed of its old subnets
// when they moved), a node deleted or no longer a peer is Removed. A
// node whose annotations or podCIDRs do not parse is skipped with one
// warning. The informer re-lists after a broken watch (an API server
// restart) and every ResyncPeriod; Watch sends only what changed. It
// returns nil when ctx is done.
func (m *Manager) Watch(ctx context.Context, events chan<- []lease.Event) error {
	if m.cfg == nil {
		return errors.New("watch nodes: WaitConfig has not read the network config")
	}
	w := &watcher{m: m, cfg: m.cfg, known: map[string]lease.Lease{}, warned: map[string]string{}, wake: make(chan struct{}, 1), pending: map[string]bool{}}
	reg, err := m.inf.AddEventHandler(nameHandler(w.touch))
	if err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	defer func() { _ = m.inf.RemoveEventHandler(reg) }()
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return nil
	}
	for {
		if batch := w.batch(); len(batch) > 0 || !w.started {
			w.started = true
			select {
			case events <- batch:
			case <-ctx.Done():
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		}
	}
}

// watcher turns node names the informer reported into lease events.
type watcher struct {
	m       *Manager
	cfg     *lease.Config
	known   map[string]lease.Lease // node name -> lease last sent as Added
	warned  map[string]string      // node name -> the problem last warned about
	started bool

	mu      sync.Mutex
	pending map[string]bool
	wake    chan struct{}
}

// touch records that a node changed; it runs on the informer's handler
// goroutine and never blocks.
func (w *watcher) touch(name string) {
	if name == w.m.opts.NodeName {
		return
	}
	w.mu.Lock()
	w.pending[name] = true
	w.mu.Unlock()
	signal(w.wake)
}

// batch compares every pending node's current state with what was sent.
func (w *watcher) batch() []lease.Event {
	w.mu.Lock()
	names := w.pending
	w.pending = map[string]bool{}
	w.mu.Unlock()
	var out []lease.Event
	for name := range names {
		l, ok := w.current(name)
		old, had := w.known[name]
		switch {
		case ok && had && old == l:
		case ok:
			if had && (old.Subnet != l.Subnet || old.IPv6Subnet != l.IPv6Subnet) {
				out = append(out, lease.Event{Type: lease.EventRemoved, Lease: old})
			}
			w.known[name] = l
			out = append(out, lease.Event{Type: lease.EventAdded, Lease: l})
		case had:
			delete(w.known, name)
			out = append(out, lease.Event{Type: lease.EventRemoved, Lease: old})
		}
	}
	return out
}

// current is the lease node name holds now, ok false when it holds none:
// gone, not managed by flanneld, or malformed (warned about once).
func (w *watcher) current(name string) (lease.Lease, bool) {
	obj, exists, err := w.m.inf.GetStore().GetByKey(name)
	n, _ := obj.(*corev1.Node)
	if err != nil || !exists || n == nil {
		delete(w.warned, name)
		return lease.Lease{}, false
	}
	l, managed, err := w.m.ann.peerLease(w.cfg, n.Annotations, n.Spec.PodCIDR, n.Spec.PodCIDRs)
	if err != nil {
		if msg := err.Error(); w.warned[name] != msg {
			w.warned[name] = msg
			w.m.log.Warn(fmt.Sprintf("Ignoring node %q: %v", name, err))
		}
		return lease.Lease{}, false
	}
	delete(w.warned, name)
	return l, managed
}

// Keep keeps this node published: it sets the NetworkUnavailable
// condition to False (when so configured), and whenever the node's object
// changes it writes the annotations again if they are missing or differ
// (the node was deleted and re-registered, or someone edited them). When
// the re-registered node has another podCIDR, Keep calls onChange with the
// new lease. A deleted node is waited for. Keep returns nil when ctx is
// done; an error only for a Forbidden answer (RBAC), which retrying does
// not cure.
func (m *Manager) Keep(ctx context.Context, cfg *lease.Config, l lease.Lease, onChange func(lease.Lease)) error {
	at := m.publishes(cfg)
	avail := !m.opts.SetNodeNetworkUnavailable // condition set, or not wanted
	cur, gone := l, false
	var said string
	for {
		if !avail {
			err := m.setNetworkAvailable(ctx)
			switch {
			case err == nil:
				avail = true
			case ctx.Err() != nil:
				return nil
			case !apierrors.IsNotFound(err): // a deleted node is waited for below
				return err
			}
		}
		n := m.node()
		switch {
		case n == nil && !gone:
			gone = true
			m.log.Warn(fmt.Sprintf("Node %q was deleted: peers drop its routes until it is registered again; waiting for it", m.opts.NodeName))
		case n != nil:
			if gone {
				gone, avail = false, !m.opts.SetNodeNetworkUnavailable
				m.log.Info(fmt.Sprintf("Node %q is registered again", m.opts.NodeName))
				continue
			}
			nl, err := m.keepNode(ctx, cfg, n, at)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if apierrors.IsForbidden(err) {
					return err
				}
				if msg := err.Error(); msg != said {
					said = msg
					m.log.Error("Could not keep this node's lease", "error", err)
				}
				break
			}
			said = ""
			if nl.Subnet.IsValid() || nl.IPv6Subnet.IsValid() {
				if nl != cur {
					cur = nl
					onChange(nl)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.ownCh:
		}
	}
}

// keepNode re-writes node n's annotations when needed and returns the
// lease it holds now (zero while it has no podCIDR).
func (m *Manager) keepNode(ctx context.Context, cfg *lease.Config, n *corev1.Node, at attrs) (lease.Lease, error) {
	if n.Spec.PodCIDR == "" && len(n.Spec.PodCIDRs) == 0 {
		return lease.Lease{}, nil
	}
	nl, err := m.nodeLease(cfg, n, at)
	if err != nil {
		return lease.Lease{}, err
	}
	if n.ResourceVersion != m.patchedFrom && m.ann.annotationPatch(n.Annotations, at) != nil {
		m.log.Info(fmt.Sprintf("The annotations of node %q are missing or differ: writing them again", m.opts.NodeName))
		if err := m.annotate(ctx, n, at); err != nil && err != errNodeGone {
			return lease.Lease{}, err
		}
	}
	return nl, nil
}
