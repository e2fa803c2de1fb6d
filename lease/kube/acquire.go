package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flannel-go/flannel-go/lease"
)

// errNodeGone means this node's object disappeared under a patch.
var errNodeGone = errors.New("node object not found")

// Acquire returns this node's lease: its podCIDR(s) in the families the
// config enables, and the public addresses set by SetPublicAddrs. It
// writes the node's annotations first when they are not what peers need
// to see (upstream's AcquireLease). A podCIDR outside the config's
// network and a Forbidden answer are errors; an unreachable API server is
// retried with backoff.
func (m *Manager) Acquire(ctx context.Context, cfg *lease.Config) (lease.Lease, error) {
	at := m.publishes(cfg)
	for {
		n, err := m.waitPodCIDR(ctx)
		if err != nil {
			return lease.Lease{}, err
		}
		l, err := m.nodeLease(cfg, n, at)
		if err != nil {
			return lease.Lease{}, err
		}
		err = m.annotate(ctx, n, at)
		if errors.Is(err, errNodeGone) {
			continue
		}
		if err != nil {
			return lease.Lease{}, err
		}
		m.log.Info(fmt.Sprintf("Acquired lease for node %q from its podCIDR: %s", m.opts.NodeName, leaseSubnets(l)))
		if m.opts.Observer != nil {
			m.opts.Observer.LeaseAcquired(l)
		}
		return l, nil
	}
}

// publishes is what this node publishes under cfg: its IPv4 address where
// the config enables IPv4, its IPv6 address where it enables IPv6.
func (m *Manager) publishes(cfg *lease.Config) attrs {
	var at attrs
	if cfg.EnableIPv4 {
		at.PublicIP = m.at.PublicIP
	}
	if cfg.EnableIPv6 {
		at.PublicIPv6 = m.at.PublicIPv6
	}
	return at
}

// nodeLease is the lease node n holds under cfg.
func (m *Manager) nodeLease(cfg *lease.Config, n *corev1.Node, at attrs) (lease.Lease, error) {
	v4, v6, err := podCIDRs(n.Spec.PodCIDR, n.Spec.PodCIDRs)
	if err != nil {
		return lease.Lease{}, fmt.Errorf("node %q: %w", n.Name, err)
	}
	l, err := ownSubnets(n.Name, cfg, v4, v6)
	l.PublicIP, l.PublicIPv6 = at.PublicIP, at.PublicIPv6
	return l, err
}

// annotate writes the annotations node n lacks, through the nodes/status
// subresource as upstream (its ClusterRole grants patch on nodes/status
// only; the API server keeps metadata changes made there). Errors other
// than Forbidden and NotFound are retried with backoff until ctx is done.
func (m *Manager) annotate(ctx context.Context, n *corev1.Node, at attrs) error {
	patch := m.ann.annotationPatch(n.Annotations, at)
	if patch == nil {
		return nil
	}
	if ow := n.Annotations[m.ann.BackendPublicIPOverwrite]; ow != "" && n.Annotations[m.ann.BackendPublicIP] != ow {
		m.log.Info(fmt.Sprintf("Overriding public ip with '%s' from node annotation '%s'", ow, m.ann.BackendPublicIPOverwrite))
	}
	if ow := n.Annotations[m.ann.BackendPublicIPv6Overwrite]; ow != "" && at.PublicIPv6.IsValid() && n.Annotations[m.ann.BackendPublicIPv6] != ow {
		m.log.Info(fmt.Sprintf("Overriding public ipv6 with '%s' from node annotation '%s'", ow, m.ann.BackendPublicIPv6Overwrite))
	}
	body, err := patchBody(patch)
	if err != nil {
		return err
	}
	err = retry(ctx, m.log, "patch the annotations of node "+n.Name, func(ctx context.Context) error {
		return m.c.patchNodeStatus(ctx, n.Name, body)
	})
	switch {
	case apierrors.IsNotFound(err):
		return errNodeGone
	case err != nil:
		return fmt.Errorf("patch the annotations of node %q: %w", n.Name, rbacHint(err, "nodes/status", "patch"))
	}
	m.patchedFrom = n.ResourceVersion
	keys := make([]string, 0, len(patch))
	for k := range patch {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	m.log.Info(fmt.Sprintf("Wrote the annotations of node %q", n.Name), "keys", keys)
	return nil
}

// setNetworkAvailable sets the node's NetworkUnavailable condition to
// False, with upstream's reason, message and patch.
func (m *Manager) setNetworkAvailable(ctx context.Context) error {
	now := metav1.Now()
	cond := []corev1.NodeCondition{{
		Type:               corev1.NodeNetworkUnavailable,
		Status:             corev1.ConditionFalse,
		Reason:             "FlannelIsUp",
		Message:            "Flannel is running on this node",
		LastTransitionTime: now,
		LastHeartbeatTime:  now,
	}}
	raw, err := json.Marshal(cond)
	if err != nil {
		return err
	}
	body := []byte(fmt.Sprintf(`{"status":{"conditions":%s}}`, raw))
	err = retry(ctx, m.log, "set the NetworkUnavailable condition of node "+m.opts.NodeName, func(ctx context.Context) error {
		return m.c.patchNodeStatus(ctx, m.opts.NodeName, body)
	})
	if err != nil {
		return fmt.Errorf("set the NetworkUnavailable condition of node %q: %w", m.opts.NodeName, rbacHint(err, "nodes/status", "patch"))
	}
	return nil
}

// leaseSubnets names a lease's subnets for log lines.
func leaseSubnets(l lease.Lease) string {
	switch {
	case l.Subnet.IsValid() && l.IPv6Subnet.IsValid():
		return l.Subnet.String() + " and " + l.IPv6Subnet.String()
	case l.Subnet.IsValid():
		return l.Subnet.String()
	}
	return l.IPv6Subnet.String()
}
