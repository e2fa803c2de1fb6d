// Package extiface picks the external interface, the one flanneld talks to
// its peers through, as upstream flanneld does: --iface, --iface-regex,
// --iface-can-reach, --public-ip, or the default route's (Linux only: it
// reads links, addresses and routes through netlink).
package extiface

import (
	"net/netip"

	"golang.org/x/sys/unix"
)

// Iface is the interface flanneld talks to its peers through.
type Iface struct {
	Name      string
	Index     int
	MTU       int
	IfaceAddr netip.Addr // IPv4, bound by the UDP sockets; invalid in an IPv6-only network
	ExtAddr   netip.Addr // advertised in the lease (PublicIP) when IPv4 is enabled
	// IfaceV6Addr is the interface's IPv6 address and ExtV6Addr the one
	// advertised as PublicIPv6 (see publicV6); both are set only when the
	// config enables IPv6, and may be invalid in a dual-stack network (the
	// lease then says "PublicIPv6":null).
	IfaceV6Addr netip.Addr
	ExtV6Addr   netip.Addr
}

// Stack is the address families the network config enables.
type Stack struct{ V4, V6 bool }

// Selection is what the flags ask for: --iface (names or addresses, in
// order), --iface-regex, --iface-can-reach, --public-ip, --public-ipv6.
type Selection struct {
	Ifaces, IfaceRegexes []string
	IfaceCanReach        string
	PublicIP, PublicIPv6 string
}

// family is the one that picks the interface: IPv4 unless the network is
// IPv6-only, as upstream's ipmatch.
func (st Stack) family() int {
	if st.V4 {
		return unix.AF_INET
	}
	return unix.AF_INET6
}
