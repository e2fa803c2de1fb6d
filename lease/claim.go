package lease

import (
	"context"
	"errors"
	"fmt"
	"path"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// defaultClaimTTL is the life of a PublicIP claim once its flanneld is
// gone, in seconds: a node restarted on another machine with the same
// PublicIP waits this long.
const defaultClaimTTL = 15

// claimKey is where the running flanneld that uses a PublicIP names
// itself. It lies outside <prefix>/subnets, so upstream nodes never see it.
func (r *registry) claimKey(m *Manager) string {
	return r.claimPrefix() + m.publicIP.String()
}

// claimPrefix is the prefix of every claim key, the one a scoped etcd role
// must grant for claims to work.
func (r *registry) claimPrefix() string {
	return path.Join(r.prefix, "flannel-go", "public-ips") + "/"
}

// permissionDenied reports whether etcd refused an operation under its
// authentication.
func permissionDenied(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.PermissionDenied
	}
	return status.Code(err) == codes.PermissionDenied
}

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
	key := m.reg.claimKey(m)
	backoff := minBackoff
	var logged string
	waited := false
	for {
		owner, err := m.tryClaim(ctx, key)
		if err == nil && owner == "" {
			if logged != "" {
				m.log.Info(fmt.Sprintf("PublicIP %s is free again, claimed by this node (%s)", m.publicIP, m.identity))
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && permissionDenied(err) {
			m.warnOnce(key, "\x00denied", fmt.Sprintf("PublicIP claim not permitted by etcd (%v): running without it, as upstream does. "+
				"The claim stops a second node configured with the same PublicIP (%s) from sharing this node's lease. "+
				"To enable it, let this node's etcd role read and write the prefix %s (etcdctl role grant-permission ROLE --prefix=true readwrite %s); "+
				"to silence this, give --public-ip-claim=false", err, m.publicIP, m.reg.claimPrefix(), m.reg.claimPrefix()))
			return nil
		}
		if err != nil && !unreachable(err) {
			return err
		}
		if err != nil {
			if !waited {
				waited = true
				m.log.Error(fmt.Sprintf("Couldn't claim PublicIP %s: etcd is unreachable, retrying with backoff up to %s: %v", m.publicIP, maxBackoff, err))
			}
		} else if owner != logged {
			logged = owner
			m.log.Error(fmt.Sprintf("PublicIP %s is already used by the running flanneld on %s; this node (%s) is configured with the same PublicIP. "+
				"Give every node its own --public-ip (or --iface). Waiting until the other node stops.", m.publicIP, owner, m.identity))
		}
		if err := sleep(ctx, backoff); err != nil {
			return err
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// tryClaim creates or takes over the claim and keeps it alive; it returns
// the other claimant's identity when another node holds it.
func (m *Manager) tryClaim(ctx context.Context, key string) (owner string, err error) {
	r := &m.reg
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	grant, err := r.cli.Grant(cctx, m.claimTTL)
	if err != nil {
		return "", fmt.Errorf("grant lease: %w", err)
	}
	put := clientv3.OpPut(key, m.identity, clientv3.WithLease(grant.ID))
	resp, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(put).
		Else(clientv3.OpGet(key)).
		Commit()
	if err == nil && !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 && string(kvs[0].Value) != m.identity {
			owner = string(kvs[0].Value)
		} else {
			// Our own earlier run (or the key just expired): take it over,
			// unless it changed since read.
			var rev int64
			if len(kvs) == 1 {
				rev = kvs[0].ModRevision
			}
			var tresp *clientv3.TxnResponse
			tresp, err = r.cli.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).Then(put).Commit()
			if err == nil && !tresp.Succeeded {
				err = fmt.Errorf("claim %s changed while taking it over", key)
			}
		}
	}
	if err != nil || owner != "" {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
		_, _ = r.cli.Revoke(rctx, grant.ID)
		rcancel()
		return owner, err
	}
	ch, err := r.cli.KeepAlive(ctx, grant.ID)
	if err != nil {
		return "", fmt.Errorf("keep claim %s alive: %w", key, err)
	}
	go m.holdClaim(ctx, key, ch)
	return "", nil
}

// holdClaim drains the keep-alive responses; should the claim be lost all
// the same (deleted, or expired after a long partition), it claims again.
func (m *Manager) holdClaim(ctx context.Context, key string, ch <-chan *clientv3.LeaseKeepAliveResponse) {
	for range ch {
	}
	if ctx.Err() != nil {
		return
	}
	m.log.Warn("PublicIP claim lost, claiming again", "key", key)
	_ = m.claim(ctx)
}
