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

// Lease is one node's subnets as stored under <prefix>/subnets.
type Lease struct {
	// Subnet is the IPv4 subnet; the zero Prefix for an IPv6-only lease
	// (upstream's key "0.0.0.0-0&2001:db8:100:3::-64").
	Subnet netip.Prefix
	// IPv6Subnet is the IPv6 subnet of a dual-stack or IPv6-only lease,
	// the zero Prefix otherwise.
	IPv6Subnet netip.Prefix
	// PublicIP is the node's IPv4 underlay address; invalid for an
	// IPv6-only node (stored as "0.0.0.0").
	PublicIP netip.Addr
	// PublicIPv6 is the node's IPv6 underlay address, invalid when the
	// lease value has "PublicIPv6":null.
	PublicIPv6 netip.Addr
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
	// Canonical reports whether the key is exactly LeaseKey of its
	// subnets, the form this node writes for its own lease: no host bits,
	// no leading zeros, the IPv6 part compressed.
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
	v4 := k.Subnet
	if v4.Bits() == 0 && k.IPv6Subnet.IsValid() {
		v4 = netip.Prefix{}
	}
	k.Canonical = key == LeaseKey(v4, k.IPv6Subnet.Masked())
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

// LeaseKey is the key name upstream writes for a lease's subnets:
// SubnetKey(v4) alone, or with "&" and the IPv6 subnet in the same form
// ("198.18.31.0-24&2001:db8:100:1a::-64"). An IPv6-only lease (v4 the zero
// Prefix) has "0.0.0.0-0" as its IPv4 part, as upstream's.
func LeaseKey(v4, v6 netip.Prefix) string {
	if !v4.IsValid() {
		v4 = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if !v6.IsValid() {
		return SubnetKey(v4)
	}
	return SubnetKey(v4) + "&" + v6.Addr().String() + "-" + strconv.Itoa(v6.Bits())
}

// LeaseAttrs is the lease value: the node's public addresses.
type LeaseAttrs struct {
	// PublicIP is invalid for an IPv6-only node; it is written as
	// "0.0.0.0" then, as upstream does.
	PublicIP netip.Addr
	// PublicIPv6 is invalid when the node has none; it is written as null.
	PublicIPv6 netip.Addr
}

// Bytes returns the value byte for byte as upstream's json.Marshal of its
// LeaseAttrs writes it for a udp node:
// {"PublicIP":"192.0.2.1","PublicIPv6":null} or
// {"PublicIP":"192.0.2.1","PublicIPv6":"2001:db8::1"}.
func (a LeaseAttrs) Bytes() []byte {
	v4 := netip.IPv4Unspecified()
	if a.PublicIP.IsValid() {
		v4 = a.PublicIP
	}
	v6 := "null"
	if a.PublicIPv6.IsValid() {
		v6 = `"` + a.PublicIPv6.String() + `"`
	}
	return []byte(`{"PublicIP":"` + v4.String() + `","PublicIPv6":` + v6 + `}`)
}

// MarshalLeaseAttrs returns the lease value of a node with only an IPv4
// public address, byte for byte what upstream writes:
// {"PublicIP":"192.0.2.1","PublicIPv6":null}.
func MarshalLeaseAttrs(publicIP netip.Addr) []byte {
	return LeaseAttrs{PublicIP: publicIP}.Bytes()
}

// ParseLeaseAttrs reads the public addresses from a lease value. Like
// upstream it accepts any key case, unknown fields and a missing or null
// PublicIPv6. PublicIP must be present; "0.0.0.0" (an IPv6-only node) is
// accepted when PublicIPv6 is a unicast IPv6 address and leaves PublicIP
// invalid. Every address returned is unicast.
func ParseLeaseAttrs(b []byte) (LeaseAttrs, error) {
	var raw struct {
		PublicIP   *string
		PublicIPv6 *string
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return LeaseAttrs{}, fmt.Errorf("decode lease attributes: %w", err)
	}
	if raw.PublicIP == nil {
		return LeaseAttrs{}, errors.New("lease attributes have no PublicIP")
	}
	var a LeaseAttrs
	if raw.PublicIPv6 != nil {
		ip, err := netip.ParseAddr(*raw.PublicIPv6)
		if err != nil || ip.Zone() != "" || !ip.Is6() || ip.Is4In6() {
			return LeaseAttrs{}, fmt.Errorf("lease PublicIPv6 %q is not an IPv6 address", *raw.PublicIPv6)
		}
		if !unicast(ip) {
			return LeaseAttrs{}, fmt.Errorf("lease PublicIPv6 %s is not a unicast address", ip)
		}
		a.PublicIPv6 = ip
	}
	ip, err := netip.ParseAddr(*raw.PublicIP)
	if err != nil || ip.Zone() != "" {
		return LeaseAttrs{}, fmt.Errorf("lease PublicIP %q is not an IP address", *raw.PublicIP)
	}
	ip = ip.Unmap()
	if !ip.Is4() {
		return LeaseAttrs{}, fmt.Errorf("lease PublicIP %q is not an IPv4 address", *raw.PublicIP)
	}
	if ip.IsUnspecified() && a.PublicIPv6.IsValid() {
		return a, nil
	}
	if !unicast(ip) {
		return LeaseAttrs{}, fmt.Errorf("lease PublicIP %s is not a unicast address", ip)
	}
	a.PublicIP = ip
	return a, nil
}

func unicast(ip netip.Addr) bool {
	return !ip.IsUnspecified() && !ip.IsMulticast() && ip != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
