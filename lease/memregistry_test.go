package lease

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// memRegistry is a registry in memory: a revisioned key-value store with
// leases and watches, the part of etcd's model the Manager relies on. The
// policy tests run on it; every behaviour also has its test on real etcd.
type memRegistry struct {
	keys keys
	ttl  time.Duration // of the leases create and renew grant

	mu        sync.Mutex
	config    []byte
	rev       int64
	compacted int64
	kvs       map[string]memKV
	leases    map[leaseID]time.Time // expiry
	lastID    leaseID
	history   []memEvent
	changed   chan struct{} // closed and replaced on every write

	failRenew    int                // the next failRenew renewals fail
	beforeCreate func(netip.Prefix) // runs before each create, unlocked
	calls        map[string]int     // per method, for assertions
}

type memKV struct {
	value          string
	lease          leaseID
	createRev, mod int64
}

type memEvent struct {
	rev     int64
	key     string
	kv      memKV
	deleted bool
}

func newMemRegistry(ttl time.Duration) *memRegistry {
	return &memRegistry{
		keys: keys(DefaultPrefix), ttl: ttl,
		kvs: map[string]memKV{}, leases: map[leaseID]time.Time{},
		changed: make(chan struct{}), calls: map[string]int{},
	}
}

func (r *memRegistry) count(method string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[method]
}

// putLocked writes key at a new revision.
func (r *memRegistry) putLocked(key, value string, id leaseID) {
	r.rev++
	kv := memKV{value: value, lease: id, createRev: r.rev, mod: r.rev}
	if old, ok := r.kvs[key]; ok {
		kv.createRev = old.createRev
	}
	r.kvs[key] = kv
	r.history = append(r.history, memEvent{rev: r.rev, key: key, kv: kv})
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *memRegistry) deleteLocked(key string) {
	if _, ok := r.kvs[key]; !ok {
		return
	}
	r.rev++
	delete(r.kvs, key)
	r.history = append(r.history, memEvent{rev: r.rev, key: key, deleted: true})
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *memRegistry) grantLocked(ttl time.Duration) leaseID {
	r.lastID++
	r.leases[r.lastID] = time.Now().Add(ttl)
	return r.lastID
}

// revoke ends a lease and deletes its keys, as etcd does on expiry.
func (r *memRegistry) revoke(id leaseID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.leases, id)
	for _, k := range slices.Sorted(maps.Keys(r.kvs)) {
		if r.kvs[k].lease == id {
			r.deleteLocked(k)
		}
	}
}

// put and del are other nodes' (or an operator's) writes.
func (r *memRegistry) put(key, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.putLocked(key, value, noLease)
}

func (r *memRegistry) del(key string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deleteLocked(key)
}

func (r *memRegistry) compact() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.compacted = r.rev
}

func (r *memRegistry) kv(key string) (memKV, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kv, ok := r.kvs[key]
	return kv, ok
}

func (r *memRegistry) entryLocked(key string, kv memKV) (entry, bool) {
	return r.keys.parseEntry(key, []byte(kv.value), kv.lease, kv.mod)
}

func (r *memRegistry) getConfig(context.Context) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.config == nil {
		return nil, errConfigNotFound
	}
	return r.config, nil
}

func (r *memRegistry) list(context.Context) (entries []entry, bad []string, rev int64, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls["list"]++
	var ks []string
	for k := range r.kvs {
		if strings.HasPrefix(k, r.keys.subnetsDir()) {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	for _, k := range ks {
		if e, ok := r.entryLocked(k, r.kvs[k]); ok {
			entries = append(entries, e)
		} else {
			bad = append(bad, k)
		}
	}
	return entries, bad, r.rev, nil
}

func (r *memRegistry) get(_ context.Context, sn subnets) (entry, bool, int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	kv, ok := r.kvs[r.keys.lease(sn)]
	if !ok {
		return entry{}, false, r.rev, nil
	}
	e, _ := r.entryLocked(r.keys.lease(sn), kv)
	return e, true, r.rev, nil
}

func (r *memRegistry) create(_ context.Context, sn subnets, attrs LeaseAttrs) (time.Time, error) {
	if r.beforeCreate != nil {
		r.beforeCreate(sn.V4)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls["create"]++
	key := r.keys.lease(sn)
	if _, ok := r.kvs[key]; ok {
		return time.Time{}, errSubnetExists
	}
	id := r.grantLocked(r.ttl)
	r.putLocked(key, string(attrs.Bytes()), id)
	return r.leases[id], nil
}

func (r *memRegistry) renew(_ context.Context, sn subnets, attrs LeaseAttrs) (time.Time, leaseID, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls["renew"]++
	if r.failRenew > 0 {
		r.failRenew--
		return time.Time{}, 0, errors.New("injected renewal failure")
	}
	id := r.grantLocked(r.ttl)
	r.putLocked(r.keys.lease(sn), string(attrs.Bytes()), id)
	return r.leases[id], id, nil
}

func (r *memRegistry) expiration(_ context.Context, id leaseID) (time.Time, error) {
	if id == noLease {
		return time.Time{}, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if exp, ok := r.leases[id]; ok {
		return exp, nil
	}
	return time.Now().Add(-time.Second), nil
}

func (r *memRegistry) deleteIfUnchanged(_ context.Context, key string, modRev int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if kv, ok := r.kvs[key]; ok && kv.mod == modRev {
		r.deleteLocked(key)
	}
	return nil
}

func (r *memRegistry) watchSubnets(ctx context.Context, rev int64) <-chan watchBatch {
	return r.watch(ctx, rev, func(k string) bool { return strings.HasPrefix(k, r.keys.subnetsDir()) })
}

func (r *memRegistry) watchKey(ctx context.Context, sn subnets, rev int64) <-chan watchBatch {
	key := r.keys.lease(sn)
	return r.watch(ctx, rev, func(k string) bool { return k == key })
}

// watch sends the history from rev on, then every change, one batch per
// write or per backlog.
func (r *memRegistry) watch(ctx context.Context, rev int64, match func(string) bool) <-chan watchBatch {
	out := make(chan watchBatch)
	go func() {
		defer close(out)
		next := rev
		for {
			r.mu.Lock()
			if next <= r.compacted {
				r.mu.Unlock()
				select {
				case out <- watchBatch{Compacted: true}:
				case <-ctx.Done():
				}
				return
			}
			b := watchBatch{Rev: r.rev}
			for _, ev := range r.history {
				if ev.rev >= next && match(ev.key) {
					e, ok := r.entryLocked(ev.key, ev.kv)
					b.Events = append(b.Events, watchEvent{Deleted: ev.deleted, Valid: ok, Entry: e})
				}
			}
			next = r.rev + 1
			changed := r.changed
			r.mu.Unlock()
			if len(b.Events) > 0 {
				select {
				case out <- b:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func (r *memRegistry) claim(ctx context.Context, publicIP netip.Addr, identity string, ttl int64) (string, func(), error) {
	key := r.keys.claim(publicIP)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls["claim"]++
	if kv, ok := r.kvs[key]; ok && kv.value != identity {
		if exp, live := r.leases[kv.lease]; live && time.Now().Before(exp) {
			return kv.value, nil, nil
		}
	}
	// Kept alive while held: no expiry until hold returns.
	id := r.grantLocked(24 * time.Hour)
	r.putLocked(key, identity, id)
	hold := func() {
		for {
			r.mu.Lock()
			kv, ok := r.kvs[key]
			changed := r.changed
			if !ok || kv.lease != id {
				r.mu.Unlock()
				return
			}
			r.mu.Unlock()
			select {
			case <-changed:
			case <-ctx.Done():
				r.mu.Lock()
				r.leases[id] = time.Now().Add(time.Duration(ttl) * time.Second)
				r.mu.Unlock()
				return
			}
		}
	}
	return "", hold, nil
}

// subnet is the key of an IPv4-only lease.
func (k keys) subnet(p netip.Prefix) string { return k.lease(subnets{V4: p}) }
