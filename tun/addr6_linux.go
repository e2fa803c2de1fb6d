package tun

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// MinIPv6MTU is IPv6's minimum link MTU: the kernel disables IPv6 on a
// device below it, removing its addresses.
const MinIPv6MTU = 1280

// ConfigureIPv6 gives the device the IPv6 address addr/128 (the network
// address of the node's own IPv6 subnet), sets its MTU and transmit queue
// length, brings it up and routes the IPv6 overlay network through it. It
// stands alone for an IPv6-only network and follows Configure in a
// dual-stack one; like Configure it may be called again after a lease move,
// the previous address then staying until RemoveIPv6Addr.
//
// The address skips duplicate address detection, which a point-to-point
// TUN cannot fail and which would otherwise keep it "tentative" (unusable as
// a source) for a second or more after start. The device gets no link-local
// address (addr_gen_mode none, and one the kernel gave it when Configure
// brought it up is removed), so the kernel sends no router solicitations
// and MLD reports into the tunnel, where the router could only drop them.
func (d *Device) ConfigureIPv6(addr netip.Addr, mtu, txQueueLen int, network netip.Prefix) error {
	if !addr.Is6() || addr.Is4In6() {
		return fmt.Errorf("configure %s: address %s is not IPv6", d.Name, addr)
	}
	if !network.Addr().Is6() || network.Addr().Is4In6() {
		return fmt.Errorf("configure %s: network %s is not IPv6", d.Name, network)
	}
	if mtu < MinIPv6MTU {
		return fmt.Errorf("configure %s: MTU %d is below IPv6's minimum %d (an underlay MTU of at least %d is needed)", d.Name, mtu, MinIPv6MTU, MinIPv6MTU+48)
	}
	link, err := netlink.LinkByName(d.Name)
	if err != nil {
		return fmt.Errorf("configure %s: %w", d.Name, err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+d.Name+"/addr_gen_mode", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("configure %s: IPv6 is disabled on this host or device (%w)", d.Name, err)
	}
	if err := d.setMTU(link, mtu, txQueueLen); err != nil {
		return err
	}
	if err := dropLinkLocal(link); err != nil {
		return fmt.Errorf("configure %s: %w", d.Name, err)
	}
	if err := netlink.AddrReplace(link, ipv6Addr(addr)); err != nil {
		return fmt.Errorf("failed to set interface %s to %s/128: %w", d.Name, addr, err)
	}
	return d.upWithRoute(link, network)
}

// RemoveIPv6Addr removes addr/128 from the device, the address of an IPv6
// subnet the node no longer holds.
func (d *Device) RemoveIPv6Addr(addr netip.Addr) error {
	return d.removeAddr(addr, ipv6Addr(addr))
}

// dropLinkLocal removes the link's fe80::/10 addresses.
func dropLinkLocal(link netlink.Link) error {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return fmt.Errorf("list IPv6 addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() {
			if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove link-local address %s: %w", a.IPNet, err)
			}
		}
	}
	return nil
}

func ipv6Addr(addr netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 128)), Flags: unix.IFA_F_NODAD}
}
