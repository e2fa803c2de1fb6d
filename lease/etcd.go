package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// NewManager returns a Manager using cli. It does no I/O. Close it before
// closing cli.
func NewManager(cli *clientv3.Client, opts Options) *Manager {
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.CallTimeout <= 0 {
		opts.CallTimeout = DefaultCallTimeout
	}
	return newManagerOn(&etcdRegistry{cli: cli, keys: keys(opts.Prefix), timeout: opts.CallTimeout}, opts)
}

// unreachable tells a failure to reach etcd (no connection, no leader, no
// answer in time) from an answer that is an error, such as a refused
// password or a missing config.
func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	code := status.Code(err)
	// clientv3 turns some statuses into typed errors (no leader, leader
	// changed) that keep the code but not the status.
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

// permissionDenied reports whether etcd refused an operation under its
// authentication.
func permissionDenied(err error) bool {
	if err == nil {
		return false
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.PermissionDenied
	}
	return status.Code(err) == codes.PermissionDenied
}

// etcdRegistry is the registry on an etcd v3 cluster. Every call has its
// own deadline so that nothing blocks forever on an unreachable etcd.
type etcdRegistry struct {
	cli     *clientv3.Client
	keys    keys
	timeout time.Duration
}

func (r *etcdRegistry) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.timeout)
}

// revoke gives a lease back; it runs even when ctx is what made the
// caller fail.
func (r *etcdRegistry) revoke(ctx context.Context, id clientv3.LeaseID) {
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
	_, _ = r.cli.Revoke(rctx, id)
	rcancel()
}

func (r *etcdRegistry) getConfig(ctx context.Context) ([]byte, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.keys.config())
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, errConfigNotFound
	}
	return resp.Kvs[0].Value, nil
}

func (r *etcdRegistry) parseKV(kv *mvccpb.KeyValue) (entry, bool) {
	return r.keys.parseEntry(string(kv.Key), kv.Value, leaseID(kv.Lease), kv.ModRevision)
}

func (r *etcdRegistry) list(ctx context.Context) (entries []entry, bad []string, rev int64, err error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.keys.subnetsDir(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, 0, err
	}
	for _, kv := range resp.Kvs {
		e, ok := r.parseKV(kv)
		if !ok {
			bad = append(bad, string(kv.Key))
			continue
		}
		entries = append(entries, e)
	}
	return entries, bad, resp.Header.Revision, nil
}

// expiration asks etcd for the remaining TTL of a key's lease. A lease etcd
// no longer knows (TTL -1) has expired: its key is about to be deleted.
func (r *etcdRegistry) expiration(ctx context.Context, id leaseID) (time.Time, error) {
	if id == noLease {
		return time.Time{}, nil
	}
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return time.Time{}, err
	}
	if resp.TTL <= 0 {
		return time.Now().Add(-time.Second), nil
	}
	return time.Now().Add(time.Duration(resp.TTL) * time.Second), nil
}

// create grants the lease first and revokes it on any failure.
func (r *etcdRegistry) create(ctx context.Context, sn subnets, attrs LeaseAttrs) (time.Time, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	grant, err := r.cli.Grant(cctx, int64(subnetTTL/time.Second))
	if err != nil {
		return time.Time{}, fmt.Errorf("grant lease: %w", err)
	}
	key := r.keys.lease(sn)
	resp, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(attrs.Bytes()), clientv3.WithLease(grant.ID))).
		Commit()
	if err == nil && resp.Succeeded {
		return time.Now().Add(time.Duration(grant.TTL) * time.Second), nil
	}
	r.revoke(ctx, grant.ID)
	if err != nil {
		return time.Time{}, fmt.Errorf("create %s: %w", key, err)
	}
	return time.Time{}, errSubnetExists
}

// renew puts the key on a new lease, as upstream does; the old lease
// expires on its own with no keys attached.
func (r *etcdRegistry) renew(ctx context.Context, sn subnets, attrs LeaseAttrs) (time.Time, leaseID, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	grant, err := r.cli.Grant(ctx, int64(subnetTTL/time.Second))
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("grant lease: %w", err)
	}
	key := r.keys.lease(sn)
	if _, err := r.cli.Put(ctx, key, string(attrs.Bytes()), clientv3.WithLease(grant.ID)); err != nil {
		return time.Time{}, 0, fmt.Errorf("put %s: %w", key, err)
	}
	return time.Now().Add(time.Duration(grant.TTL) * time.Second), leaseID(grant.ID), nil
}

func (r *etcdRegistry) deleteIfUnchanged(ctx context.Context, key string, modRev int64) error {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	_, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	return err
}

func (r *etcdRegistry) get(ctx context.Context, sn subnets) (e entry, found bool, rev int64, err error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.keys.lease(sn))
	if err != nil {
		return entry{}, false, 0, err
	}
	if len(resp.Kvs) == 0 {
		return entry{}, false, resp.Header.Revision, nil
	}
	e, _ = r.parseKV(resp.Kvs[0])
	return e, true, resp.Header.Revision, nil
}

func (r *etcdRegistry) watchSubnets(ctx context.Context, rev int64) <-chan watchBatch {
	return r.watch(ctx, r.cli.Watch(clientv3.WithRequireLeader(ctx), r.keys.subnetsDir(), clientv3.WithPrefix(), clientv3.WithRev(rev)))
}

func (r *etcdRegistry) watchKey(ctx context.Context, sn subnets, rev int64) <-chan watchBatch {
	return r.watch(ctx, r.cli.Watch(clientv3.WithRequireLeader(ctx), r.keys.lease(sn), clientv3.WithRev(rev)))
}

// watch converts etcd's watch responses until the stream or ctx ends.
func (r *etcdRegistry) watch(ctx context.Context, wch clientv3.WatchChan) <-chan watchBatch {
	out := make(chan watchBatch)
	go func() {
		defer close(out)
		for resp := range wch {
			b := watchBatch{Rev: resp.Header.Revision, Canceled: resp.Canceled}
			switch err := resp.Err(); {
			case resp.CompactRevision != 0 || err == rpctypes.ErrCompacted:
				b.Compacted = true
			case err != nil:
				b.Err = err
			}
			for _, ev := range resp.Events {
				e, ok := r.parseKV(ev.Kv)
				b.Events = append(b.Events, watchEvent{Deleted: ev.Type == mvccpb.DELETE, Valid: ok, Entry: e})
			}
			select {
			case out <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// claim creates or takes over the claim key in one transaction and keeps
// its lease alive.
func (r *etcdRegistry) claim(ctx context.Context, publicIP netip.Addr, identity string, ttl int64) (owner string, hold func(), err error) {
	key := r.keys.claim(publicIP)
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	grant, err := r.cli.Grant(cctx, ttl)
	if err != nil {
		return "", nil, fmt.Errorf("grant lease: %w", err)
	}
	put := clientv3.OpPut(key, identity, clientv3.WithLease(grant.ID))
	resp, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(put).
		Else(clientv3.OpGet(key)).
		Commit()
	if err == nil && !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 1 && string(kvs[0].Value) != identity {
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
		r.revoke(ctx, grant.ID)
		if permissionDenied(err) {
			err = &claimDeniedError{Prefix: r.keys.claimPrefix(), Err: err}
		}
		return owner, nil, err
	}
	ch, err := r.cli.KeepAlive(ctx, grant.ID)
	if err != nil {
		return "", nil, fmt.Errorf("keep claim %s alive: %w", key, err)
	}
	// The keep-alive channel closes when ctx is done or the lease is gone.
	return "", func() {
		for range ch {
		}
	}, nil
}
