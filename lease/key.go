package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
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

// SubnetKeyParts is a subnet key as upstream reads it.
type SubnetKeyParts struct {
	// Subnet is the IPv4 subnet with any host bits cleared: what routes
	// and the allocator use.
	Subnet netip.Prefix
	// IPv6Subnet is the dual-stack part ("&2001:db8:100:3::-64") as
	// written, host bits included; the zero Prefix when the key has none.
	IPv6Subnet netip.Prefix
	// Canonical reports whether the key is exactly SubnetKey(Subnet), the
	// form this node writes for its own lease.
	Canonical bool
}

// ParseSubnetKeyParts parses a subnet key (alone or at the end of a full
// etcd key) exactly as upstream's ParseSubnetKey does, so that every key an
// upstream node holds routes and counts as taken here: the end-anchored
// pattern, an IPv4 length of 0 to 31 and an IPv6 length of 0 to 127 (with
// leading zeros), host bits allowed. A key with an IPv6 part that does not
// parse is rejected whole, as upstream rejects it.
func ParseSubnetKeyParts(key string) (SubnetKeyParts, bool) {
	m := subnetKeyRE.FindStringSubmatch(key)
	if m == nil {
		return SubnetKeyParts{}, false
	}
	ip, err := netip.ParseAddr(m[1])
	bits, berr := strconv.ParseUint(m[2], 10, 5)
	if err != nil || !ip.Is4() || berr != nil {
		return SubnetKeyParts{}, false
	}
	k := SubnetKeyParts{Subnet: netip.PrefixFrom(ip, int(bits)).Masked()}
	if m[3] != "" {
		ip6, err := netip.ParseAddr(m[3])
		bits6, berr := strconv.ParseUint(m[4], 10, 7)
		if err != nil || berr != nil || !ip6.Is6() {
			return SubnetKeyParts{}, false
		}
		k.IPv6Subnet = netip.PrefixFrom(ip6, int(bits6))
	}
	k.Canonical = key == SubnetKey(k.Subnet)
	return k, true
}

// readableKeyRE finds a dotted quad, with or without a length, anywhere in
// a key that does not parse.
var readableKeyRE = regexp.MustCompile(`(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:-(\d{1,3}))?`)

// ReadableSubnet salvages the IPv4 subnet from a key that no flanneld can
// parse (a /32 length, a bad IPv6 part, zero-padded octets): the first
// dotted quad and its length, or the single address when the length is
// missing or over 32. The allocator treats it as taken, so a node whose key
// was mangled never gets its subnet handed to another node.
func ReadableSubnet(key string) (netip.Prefix, bool) {
	m := readableKeyRE.FindStringSubmatch(key)
	if m == nil {
		return netip.Prefix{}, false
	}
	var a [4]byte
	for i := range a {
		n, err := strconv.Atoi(m[i+1])
		if err != nil || n > 255 {
			return netip.Prefix{}, false
		}
		a[i] = byte(n)
	}
	bits := 32
	if n, err := strconv.Atoi(m[5]); err == nil && n <= 32 {
		bits = n
	}
	return netip.PrefixFrom(netip.AddrFrom4(a), bits).Masked(), true
}

// badKey logs a subnet key no flanneld can parse, once, and returns the
// subnet readable in it, which the allocator must not hand out.
func (m *Manager) badKey(key string) (netip.Prefix, bool) {
	rest := key
	if i := strings.LastIndex(key, "/subnets/"); i >= 0 {
		rest = key[i+len("/subnets/"):]
	}
	p, ok := ReadableSubnet(rest)
	if !ok {
		m.warnOnce(key, "", "ignoring malformed subnet key")
		return netip.Prefix{}, false
	}
	m.warnOnce(key, "", "ignoring malformed subnet key; its subnet is never allocated", "subnet", p)
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
