package lease

import (
	"context"
	"errors"
	"net/netip"
	"path"
	"time"
)

// subnetTTL is flannel's hard-coded lease TTL.
const subnetTTL = 24 * time.Hour

var (
	errConfigNotFound = errors.New("flannel config not found in etcd store. Did you create your config using etcdv3 API?")
	// errSubnetExists is a lost creation race: someone else created the key.
	errSubnetExists = errors.New("subnet already exists")
)

// registry is all the store I/O of the lease manager: etcd in production
// (etcdRegistry), a map in the policy tests. The manager holds the policy
// (which subnet, when to renew, what to do when the lease is lost); a
// registry only reads and writes keys. Every call that can block returns
// when ctx is done.
type registry interface {
	// getConfig returns <prefix>/config, or errConfigNotFound.
	getConfig(ctx context.Context) ([]byte, error)
	// list returns every key under <prefix>/subnets in ascending key
	// order, the keys that are not subnet keys separately, and the
	// snapshot revision.
	list(ctx context.Context) (entries []entry, bad []string, rev int64, err error)
	// get reads one subnet key; found is false when it does not exist.
	get(ctx context.Context, sn subnets) (e entry, found bool, rev int64, err error)
	// create atomically creates the key for sn on a fresh 24 h lease;
	// errSubnetExists when the key already exists.
	create(ctx context.Context, sn subnets, attrs LeaseAttrs) (time.Time, error)
	// renew attaches the key to a new 24 h lease, unconditionally.
	renew(ctx context.Context, sn subnets, attrs LeaseAttrs) (time.Time, leaseID, error)
	// expiration returns when a lease expires: zero time without a lease,
	// a past time for a lease the store no longer knows.
	expiration(ctx context.Context, id leaseID) (time.Time, error)
	// deleteIfUnchanged deletes a key unless it changed since modRev.
	deleteIfUnchanged(ctx context.Context, key string, modRev int64) error
	// watchSubnets follows every subnet key from rev on, watchKey one
	// key. The channel closes when ctx is done or the stream breaks.
	watchSubnets(ctx context.Context, rev int64) <-chan watchBatch
	watchKey(ctx context.Context, sn subnets, rev int64) <-chan watchBatch
	// claim makes identity the holder of publicIP's claim key on a lease
	// of ttl seconds, unless another identity holds it (owner, no error).
	// A claim by the same identity, or one that expired, is taken over.
	// On success hold blocks, keeping the claim alive, until ctx is done
	// or the claim is lost.
	claim(ctx context.Context, publicIP netip.Addr, identity string, ttl int64) (owner string, hold func(), err error)
}

// leaseID names a store lease; noLease marks a reservation.
type leaseID int64

const noLease leaseID = 0

// subnets are what one lease's key names: an IPv4 subnet, an IPv6 subnet or
// both (the other one is the zero Prefix).
type subnets struct{ V4, V6 netip.Prefix }

func (s subnets) key() string { return LeaseKey(s.V4, s.V6) }

// String is the form of upstream's log lines: "ip: X ipv6: Y".
func (s subnets) String() string {
	v4, v6 := "0.0.0.0/0", "::/0"
	if s.V4.IsValid() {
		v4 = s.V4.String()
	}
	if s.V6.IsValid() {
		v6 = s.V6.String()
	}
	return "ip: " + v4 + " ipv6: " + v6
}

// display names the subnets for this node's own log lines:
// "198.18.31.0/24", "2001:db8:100:1a::/64" or both joined by " and ".
func (s subnets) display() string {
	switch {
	case !s.V6.IsValid():
		return s.V4.String()
	case !s.V4.IsValid():
		return s.V6.String()
	}
	return s.V4.String() + " and " + s.V6.String()
}

func (l Lease) subnets() subnets { return subnets{l.Subnet, l.IPv6Subnet} }

// entry is one key under <prefix>/subnets. Subnet or IPv6Subnet is valid
// when the key parses (Subnet is the zero Prefix for an IPv6-only key,
// "0.0.0.0-0&..."); the public addresses are set when the value parses too.
type entry struct {
	Key    string
	Subnet netip.Prefix
	// IPv6Subnet is a dual-stack or IPv6-only key's IPv6 part, host bits
	// cleared. Foreign marks a key not in the form this node writes (host
	// bits, zero-padded lengths): it routes and is taken, but is never
	// this node's own lease.
	IPv6Subnet netip.Prefix
	Foreign    bool
	PublicIP   netip.Addr
	PublicIPv6 netip.Addr
	AttrsErr   error
	Raw        string // the value, kept only when it is malformed (for log-once)
	LeaseID    leaseID
	ModRev     int64
}

// watchEvent is one change to a watched key. Valid is false when the key is
// not a subnet key (Entry then carries only the key).
type watchEvent struct {
	Deleted bool
	Valid   bool
	Entry   entry
}

// watchBatch is one response of a watch: events at revisions up to Rev, or
// the end of the stream (Compacted: rev is gone, re-list; Err: broken;
// Canceled: closed by the store).
type watchBatch struct {
	Events    []watchEvent
	Rev       int64
	Compacted bool
	Canceled  bool
	Err       error
}

func (b watchBatch) ended() bool { return b.Compacted || b.Canceled || b.Err != nil }

// keys names the store's keys under one prefix.
type keys string

func (k keys) config() string     { return path.Join(string(k), "config") }
func (k keys) subnetsDir() string { return path.Join(string(k), "subnets") + "/" }
func (k keys) lease(sn subnets) string {
	return path.Join(string(k), "subnets", sn.key())
}

// claim is where the running flanneld that uses a PublicIP names itself.
// It lies outside <prefix>/subnets, so upstream nodes never see it.
func (k keys) claim(publicIP netip.Addr) string {
	return k.claimPrefix() + publicIP.String()
}

// claimPrefix is the prefix of every claim key, the one a scoped etcd role
// must grant for claims to work.
func (k keys) claimPrefix() string {
	return path.Join(string(k), "flannel-go", "public-ips") + "/"
}

// claimDeniedError is a claim the store refused under its access control
// (an etcd role scoped to what upstream needs); Prefix is what to grant.
type claimDeniedError struct {
	Prefix string
	Err    error
}

func (e *claimDeniedError) Error() string { return "claim not permitted: " + e.Err.Error() }
func (e *claimDeniedError) Unwrap() error { return e.Err }

// parseEntry turns a key-value pair into an entry; ok is false when the key
// is not a subnet key.
func (k keys) parseEntry(key string, value []byte, lease leaseID, modRev int64) (entry, bool) {
	e := entry{Key: key, LeaseID: lease, ModRev: modRev}
	rest, found := cutPrefix(key, k.subnetsDir())
	if !found {
		return e, false
	}
	parts, ok := ParseSubnetKeyParts(rest)
	if !ok {
		return e, false
	}
	e.Subnet, e.IPv6Subnet, e.Foreign = parts.Subnet, parts.IPv6Subnet.Masked(), !parts.Canonical
	if e.Subnet.Bits() == 0 && e.IPv6Subnet.IsValid() {
		// Upstream's IPv6-only lease: it has no IPv4 subnet, and must
		// neither route all of IPv4 nor take the whole IPv4 range.
		e.Subnet = netip.Prefix{}
	}
	attrs, err := ParseLeaseAttrs(value)
	e.PublicIP, e.PublicIPv6, e.AttrsErr = attrs.PublicIP, attrs.PublicIPv6, err
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
