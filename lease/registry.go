package lease

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// subnetTTL is flannel's hard-coded lease TTL.
const subnetTTL = 24 * time.Hour

var (
	errConfigNotFound = errors.New("flannel config not found in etcd store. Did you create your config using etcdv3 API?")
	// errSubnetExists is a lost creation race: someone else created the key.
	errSubnetExists = errors.New("subnet already exists")
)

// registry does all etcd I/O for the lease manager. Every call has its own
// deadline so that nothing blocks forever on an unreachable etcd.
type registry struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
}

// entry is one key under <prefix>/subnets. Subnet is valid when the key
// parses; PublicIP is valid when the value parses too.
type entry struct {
	Key    string
	Subnet netip.Prefix
	// IPv6Subnet is a dual-stack key's IPv6 part; Foreign marks a key not
	// in the form this node writes (dual-stack, host bits, zero-padded
	// length): it routes and is taken, but is never this node's own lease.
	IPv6Subnet netip.Prefix
	Foreign    bool
	PublicIP   netip.Addr
	AttrsErr   error
	Raw        string // the value, kept only when it is malformed (for log-once)
	LeaseID    clientv3.LeaseID
	ModRev     int64
}

func (r *registry) configKey() string  { return path.Join(r.prefix, "config") }
func (r *registry) subnetsDir() string { return path.Join(r.prefix, "subnets") + "/" }
func (r *registry) subnetKey(p netip.Prefix) string {
	return path.Join(r.prefix, "subnets", SubnetKey(p))
}

func (r *registry) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.timeout)
}

func (r *registry) getConfig(ctx context.Context) ([]byte, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.configKey())
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, errConfigNotFound
	}
	return resp.Kvs[0].Value, nil
}

// parseEntry turns a key-value pair into an entry; ok is false when the key
// is not a subnet key.
func (r *registry) parseEntry(key string, value []byte, lease int64, modRev int64) (entry, bool) {
	e := entry{Key: key, LeaseID: clientv3.LeaseID(lease), ModRev: modRev}
	rest, found := cutPrefix(key, r.subnetsDir())
	if !found {
		return e, false
	}
	k, ok := ParseSubnetKeyParts(rest)
	if !ok {
		return e, false
	}
	e.Subnet, e.IPv6Subnet, e.Foreign = k.Subnet, k.IPv6Subnet, !k.Canonical
	e.PublicIP, e.AttrsErr = ParseLeaseAttrs(value)
	if e.AttrsErr != nil {
		e.Raw = string(value)
	}
	return e, true
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || s[:len(prefix)] != prefix {
		return s, false
	}
	return s[len(prefix):], true
}

// list returns every key under <prefix>/subnets in ascending key order, the
// keys that are not subnet keys separately, and the snapshot revision.
func (r *registry) list(ctx context.Context) (entries []entry, bad []string, rev int64, err error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.subnetsDir(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, 0, err
	}
	for _, kv := range resp.Kvs {
		e, ok := r.parseEntry(string(kv.Key), kv.Value, kv.Lease, kv.ModRevision)
		if !ok {
			bad = append(bad, string(kv.Key))
			continue
		}
		entries = append(entries, e)
	}
	return entries, bad, resp.Header.Revision, nil
}

// expiration asks etcd for the remaining TTL of a key's lease. A key without
// a lease is a reservation (zero time). A lease etcd no longer knows (TTL -1)
// has expired: its key is about to be deleted.
func (r *registry) expiration(ctx context.Context, id clientv3.LeaseID) (time.Time, error) {
	if id == clientv3.NoLease {
		return time.Time{}, nil
	}
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.TimeToLive(ctx, id)
	if err != nil {
		return time.Time{}, err
	}
	if resp.TTL <= 0 {
		return time.Now().Add(-time.Second), nil
	}
	return time.Now().Add(time.Duration(resp.TTL) * time.Second), nil
}

// create atomically creates the key for subnet on a fresh 24 h lease. It
// returns errSubnetExists when the key already exists; the granted lease is
// revoked on any failure.
func (r *registry) create(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) (time.Time, error) {
	cctx, cancel := r.ctx(ctx)
	defer cancel()
	grant, err := r.cli.Grant(cctx, int64(subnetTTL/time.Second))
	if err != nil {
		return time.Time{}, fmt.Errorf("grant lease: %w", err)
	}
	key := r.subnetKey(subnet)
	resp, err := r.cli.Txn(cctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(MarshalLeaseAttrs(publicIP)), clientv3.WithLease(grant.ID))).
		Commit()
	if err == nil && resp.Succeeded {
		return time.Now().Add(time.Duration(grant.TTL) * time.Second), nil
	}
	// The revoke must run even when ctx is what made the txn fail.
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
	_, _ = r.cli.Revoke(rctx, grant.ID)
	rcancel()
	if err != nil {
		return time.Time{}, fmt.Errorf("create %s: %w", key, err)
	}
	return time.Time{}, errSubnetExists
}

// renew attaches the key to a new 24 h lease with an unconditional put, as
// upstream does; the old lease expires on its own with no keys attached.
func (r *registry) renew(ctx context.Context, subnet netip.Prefix, publicIP netip.Addr) (time.Time, clientv3.LeaseID, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	grant, err := r.cli.Grant(ctx, int64(subnetTTL/time.Second))
	if err != nil {
		return time.Time{}, 0, fmt.Errorf("grant lease: %w", err)
	}
	key := r.subnetKey(subnet)
	if _, err := r.cli.Put(ctx, key, string(MarshalLeaseAttrs(publicIP)), clientv3.WithLease(grant.ID)); err != nil {
		return time.Time{}, 0, fmt.Errorf("put %s: %w", key, err)
	}
	return time.Now().Add(time.Duration(grant.TTL) * time.Second), grant.ID, nil
}

// deleteIfUnchanged deletes a key unless it changed since modRev was read.
func (r *registry) deleteIfUnchanged(ctx context.Context, key string, modRev int64) error {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	_, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
		Then(clientv3.OpDelete(key)).
		Commit()
	return err
}

// get reads one subnet key; found is false when it does not exist.
func (r *registry) get(ctx context.Context, subnet netip.Prefix) (e entry, found bool, rev int64, err error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	resp, err := r.cli.Get(ctx, r.subnetKey(subnet))
	if err != nil {
		return entry{}, false, 0, err
	}
	if len(resp.Kvs) == 0 {
		return entry{}, false, resp.Header.Revision, nil
	}
	kv := resp.Kvs[0]
	e, _ = r.parseEntry(string(kv.Key), kv.Value, kv.Lease, kv.ModRevision)
	return e, true, resp.Header.Revision, nil
}

// watchSubnets watches every subnet key from rev on. Closing ctx ends it.
func (r *registry) watchSubnets(ctx context.Context, rev int64) clientv3.WatchChan {
	return r.cli.Watch(clientv3.WithRequireLeader(ctx), r.subnetsDir(), clientv3.WithPrefix(), clientv3.WithRev(rev))
}

// watchKey watches one subnet key from rev on.
func (r *registry) watchKey(ctx context.Context, subnet netip.Prefix, rev int64) clientv3.WatchChan {
	return r.cli.Watch(clientv3.WithRequireLeader(ctx), r.subnetKey(subnet), clientv3.WithRev(rev))
}
