package lease

import (
	"context"
	"errors"
	"fmt"
)

// defaultClaimTTL is the life of a PublicIP claim once its flanneld is
// gone, in seconds: a node restarted on another machine with the same
// PublicIP waits this long.
const defaultClaimTTL = 15

// claim makes this process the one flanneld using its PublicIP, so that two
// nodes configured with the same PublicIP do not share one lease (each
// would take the other's for its own). The claim is a key on a short etcd
// lease kept alive until ctx is done. A claim by the same Identity is a
// previous run of this node and is taken over. A claim by another Identity
// is waited out, with one error naming both nodes: the other node keeps
// its lease and its routes, nothing flaps. An unreachable etcd is waited
// for; a claim etcd refuses (a role scoped to <prefix>/config and
// <prefix>/subnets, as upstream needs) is logged once and skipped; other
// etcd errors are returned.
func (m *Manager) claim(ctx context.Context) error {
	if m.identity == "" {
		return nil
	}
	backoff := minBackoff
	var logged string
	waited := false
	for {
		owner, err := m.tryClaim(ctx)
		if err == nil && owner == "" {
			if logged != "" {
				m.log.Info(fmt.Sprintf("PublicIP %s is free again, claimed by this node (%s)", m.claimIP, m.identity))
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if denied := (*claimDeniedError)(nil); errors.As(err, &denied) {
			m.warnOnce(denied.Prefix+m.claimIP.String(), "\x00denied", fmt.Sprintf("PublicIP claim not permitted by etcd (%v): running without it, as upstream does. "+
				"The claim stops a second node configured with the same PublicIP (%s) from sharing this node's lease. "+
				"To enable it, let this node's etcd role read and write the prefix %s (etcdctl role grant-permission ROLE --prefix=true readwrite %s); "+
				"to silence this, give --public-ip-claim=false", denied.Err, m.claimIP, denied.Prefix, denied.Prefix))
			return nil
		}
		if err != nil && !unreachable(err) {
			return err
		}
		if err != nil {
			if !waited {
				waited = true
				m.log.Error(fmt.Sprintf("Couldn't claim PublicIP %s: etcd is unreachable, retrying with backoff up to %s: %v", m.claimIP, maxBackoff, err))
			}
		} else if owner != logged {
			logged = owner
			m.log.Error(fmt.Sprintf("PublicIP %s is already used by the running flanneld on %s; this node (%s) is configured with the same PublicIP. "+
				"Give every node its own --public-ip (or --iface). Waiting until the other node stops.", m.claimIP, owner, m.identity))
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// tryClaim creates or takes over the claim and keeps it alive in a
// goroutine the Manager owns (Close stops it); it returns the other
// claimant's identity when another node holds it.
func (m *Manager) tryClaim(ctx context.Context) (owner string, err error) {
	owner, hold, err := m.reg.claim(ctx, m.claimIP, m.identity, m.claimTTL)
	if err != nil || owner != "" {
		return owner, err
	}
	m.claims.Go(func() { m.holdClaim(ctx, hold) })
	return "", nil
}

// holdClaim keeps the claim; should it be lost all the same (deleted, or
// expired after a long partition), it claims again.
func (m *Manager) holdClaim(ctx context.Context, hold func()) {
	hold()
	if ctx.Err() != nil {
		return
	}
	m.log.Warn("PublicIP claim lost, claiming again", "public_ip", m.claimIP)
	_ = m.claim(ctx)
}
