package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"time"
)

// Lease is one node's subnet as stored under <prefix>/subnets.
type Lease struct {
	Subnet   netip.Prefix
	PublicIP netip.Addr
	// Expiration is zero for a reservation (a key without an etcd lease).
	// Watch events leave it zero: they only carry what routes need.
	Expiration time.Time
}

// Reservation reports whether a lease from Acquire or Keep is an operator's
// reservation: a key without an etcd lease, which never expires and is
// never renewed.
func (l Lease) Reservation() bool { return l.Expiration.IsZero() }

// EventType says whether a lease appeared (or changed) or went away.
type EventType int

// Event types.
const (
	EventAdded EventType = iota
	EventRemoved
)

func (t EventType) String() string {
	switch t {
	case EventAdded:
		return "added"
	case EventRemoved:
		return "removed"
	}
	return "EventType(" + strconv.Itoa(int(t)) + ")"
}

// Event is a change to another node's lease.
type Event struct {
	Type  EventType
	Lease Lease
}

// subnetKeyRE is upstream's key pattern, anchored only at the end, so it can
// be matched against the full etcd key.
var subnetKeyRE = regexp.MustCompile(`(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$`)

// ParseSubnetKey parses a subnet key "A.B.C.D-LEN" (alone or at the end of a
// full etcd key). A dual-stack "&IPv6-LEN" suffix is accepted and ignored.
// Keys with host bits set or a zero-padded length are rejected, so a parsed
// prefix always maps back to the same key.
func ParseSubnetKey(key string) (netip.Prefix, bool) {
	m := subnetKeyRE.FindStringSubmatch(key)
	if m == nil {
		return netip.Prefix{}, false
	}
	ip, err := netip.ParseAddr(m[1])
	if err != nil || !ip.Is4() {
		return netip.Prefix{}, false
	}
	// Upstream parses the length with 5 bits, so /32 is not a subnet key.
	bits, err := strconv.ParseUint(m[2], 10, 5)
	if err != nil || strconv.FormatUint(bits, 10) != m[2] {
		return netip.Prefix{}, false
	}
	p := netip.PrefixFrom(ip, int(bits))
	if p.Masked() != p {
		return netip.Prefix{}, false
	}
	return p, true
}

// SubnetKey is the key name for a subnet, e.g. "198.18.32.0-24".
func SubnetKey(p netip.Prefix) string {
	return p.Addr().String() + "-" + strconv.Itoa(p.Bits())
}

// MarshalLeaseAttrs returns the lease value a udp node stores, byte for byte
// what upstream writes: {"PublicIP":"192.0.2.1","PublicIPv6":null}.
func MarshalLeaseAttrs(publicIP netip.Addr) []byte {
	return []byte(`{"PublicIP":"` + publicIP.String() + `","PublicIPv6":null}`)
}

// ParseLeaseAttrs reads the public IP from a lease value. Like upstream it
// accepts any key case, unknown fields and a missing PublicIPv6; the IP must
// be a usable IPv4 address.
func ParseLeaseAttrs(b []byte) (netip.Addr, error) {
	var attrs struct {
		PublicIP *string
	}
	if err := json.Unmarshal(b, &attrs); err != nil {
		return netip.Addr{}, fmt.Errorf("decode lease attributes: %w", err)
	}
	if attrs.PublicIP == nil {
		return netip.Addr{}, errors.New("lease attributes have no PublicIP")
	}
	ip, err := netip.ParseAddr(*attrs.PublicIP)
	if err != nil || ip.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("lease PublicIP %q is not an IP address", *attrs.PublicIP)
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("lease PublicIP %q is not an IPv4 address", *attrs.PublicIP)
	}
	if ip.IsUnspecified() || ip.IsMulticast() || ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("lease PublicIP %s is not a unicast address", ip)
	}
	return ip, nil
}
