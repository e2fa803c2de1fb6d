//go:build linux

package extiface

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Choose picks the external interface as upstream does (spec 4.3):
// --iface values in order, then --iface-regex, then --iface-can-reach; with
// none of them, the interface owning --public-ip (--public-ipv6 in an
// IPv6-only network) or the default route's. In an IPv6-only network the
// IPv6 addresses and the IPv6 default route decide.
func Choose(o Selection, st Stack, log *slog.Logger) (*Iface, error) {
	publicIP, publicIPv6, err := parsePublicIPs(o)
	if err != nil {
		return nil, err
	}
	fam := st.family()
	var ext *Iface
	switch {
	case len(o.Ifaces) == 0 && len(o.IfaceRegexes) == 0 && o.IfaceCanReach == "":
		switch {
		case fam == unix.AF_INET && publicIP.IsValid():
			ext, err = ifaceByIP(publicIP)
		case fam == unix.AF_INET6 && publicIPv6.IsValid():
			ext, err = ifaceByIP(publicIPv6)
		default:
			ext, err = ifaceByDefaultRoute(fam)
		}
		if err == nil {
			err = ext.complete(fam)
		}
		if err != nil {
			return nil, err
		}
	default:
		if ext = ifaceByFlags(o, fam, log); ext == nil {
			//lint:ignore ST1005 upstream's exact text
			return nil, errors.New("Failed to find interface to use that matches the interfaces and/or regexes provided")
		}
	}
	if ext.MTU == 0 {
		return nil, fmt.Errorf("failed to determine MTU for %s interface", ext.Name)
	}
	if st.V4 {
		ext.ExtAddr = ext.IfaceAddr
		if publicIP.IsValid() {
			ext.ExtAddr = publicIP
		} else {
			log.Info(fmt.Sprintf("Defaulting external address to interface address (%s)", ext.IfaceAddr))
		}
	}
	if st.V6 {
		ext.publicV6(publicIPv6, st.V4, log)
	}
	return ext, nil
}

// parsePublicIPs reads --public-ip and --public-ipv6.
func parsePublicIPs(o Selection) (v4, v6 netip.Addr, err error) {
	if o.PublicIP != "" {
		ip, err := netip.ParseAddr(o.PublicIP)
		if err != nil || !ip.Is4() {
			return v4, v6, fmt.Errorf("invalid public IP address: %s", o.PublicIP)
		}
		v4 = ip
	}
	if o.PublicIPv6 != "" {
		ip, err := netip.ParseAddr(o.PublicIPv6)
		if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
			return v4, v6, fmt.Errorf("invalid public IPv6 address: %s", o.PublicIPv6)
		}
		v6 = ip
	}
	return v4, v6, nil
}

// ifaceByFlags tries --iface, then --iface-regex, then --iface-can-reach;
// nil when none of them gives an interface with an address of family fam.
func ifaceByFlags(o Selection, fam int, log *slog.Logger) *Iface {
	for _, v := range o.Ifaces {
		e, err := ifaceByNameOrIP(v)
		if err == nil {
			err = e.complete(fam)
		}
		if err != nil {
			log.Info("Could not use interface", "iface", v, "error", err)
			continue
		}
		return e
	}
	for _, re := range o.IfaceRegexes {
		e, err := ifaceByRegex(re, fam)
		if err == nil {
			err = e.complete(fam)
		}
		if err != nil {
			log.Info("Could not match an interface", "iface-regex", re, "error", err)
			continue
		}
		return e
	}
	if o.IfaceCanReach != "" {
		e, err := ifaceCanReach(o.IfaceCanReach)
		if err == nil {
			err = e.complete(fam)
		}
		if err != nil {
			log.Info("Could not find the interface that reaches the address", "iface-can-reach", o.IfaceCanReach, "error", err)
			return nil
		}
		return e
	}
	return nil
}

// complete fills in the interface's first usable address of family fam
// when the selection did not name one.
func (e *Iface) complete(fam int) error {
	if fam == unix.AF_INET && !e.IfaceAddr.IsValid() {
		addrs := usableAddrs(e.Index, unix.AF_INET)
		if len(addrs) == 0 {
			return fmt.Errorf("failed to find IPv4 address for interface %s", e.Name)
		}
		e.IfaceAddr = addrs[0]
	}
	if fam == unix.AF_INET6 && !e.IfaceV6Addr.IsValid() {
		addrs := usableAddrs(e.Index, unix.AF_INET6)
		if len(addrs) == 0 {
			return fmt.Errorf("failed to find IPv6 address for interface %s", e.Name)
		}
		e.IfaceV6Addr = addrs[0]
	}
	return nil
}

// publicV6 sets the IPv6 addresses of a network with IPv6 enabled. The
// interface's IPv6 address is looked up in any case; PublicIPv6 is
// --public-ipv6 if given. Without it, an IPv6-only node advertises its
// interface address, while a dual-stack node leaves PublicIPv6 null as
// upstream's udp backend always does: its peers reach it over IPv4, and an
// interface address (often link-local only) would make every lease value
// differ from upstream's bytes.
func (e *Iface) publicV6(public netip.Addr, dual bool, log *slog.Logger) {
	if !e.IfaceV6Addr.IsValid() {
		if addrs := usableAddrs(e.Index, unix.AF_INET6); len(addrs) > 0 {
			e.IfaceV6Addr = addrs[0]
		}
	}
	switch {
	case public.IsValid():
		e.ExtV6Addr = public
		log.Info(fmt.Sprintf("Using %s as external address", public))
	case dual:
		log.Info("Dual-stack network: the lease's PublicIPv6 stays null, as upstream's udp backend writes it (give --public-ipv6 to advertise one)")
	default:
		e.ExtV6Addr = e.IfaceV6Addr
		log.Info(fmt.Sprintf("Defaulting external v6 address to interface address (%s)", e.IfaceV6Addr))
	}
}

func ifaceByNameOrIP(v string) (*Iface, error) {
	if ip, err := netip.ParseAddr(v); err == nil {
		return ifaceByIP(ip)
	}
	link, err := netlink.LinkByName(v)
	if err != nil {
		return nil, fmt.Errorf("error looking up interface %s: %w", v, err)
	}
	return fromLink(link, netip.Addr{}), nil
}

// ifaceByIP returns the interface holding ip, with ip as its address.
func ifaceByIP(ip netip.Addr) (*Iface, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	fam := unix.AF_INET
	if ip.Is6() {
		fam = unix.AF_INET6
	}
	for _, l := range links {
		for _, a := range usableAddrs(l.Attrs().Index, fam) {
			if a == ip {
				return fromLink(l, ip), nil
			}
		}
	}
	return nil, fmt.Errorf("no interface with address %s", ip)
}

// ifaceByDefaultRoute returns the interface of the first default route of
// family fam, with upstream's error texts.
func ifaceByDefaultRoute(fam int) (*Iface, error) {
	routes, err := netlink.RouteList(nil, fam)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	v6 := ""
	if fam == unix.AF_INET6 {
		v6 = " v6"
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" && r.Dst.String() != "::/0" {
			continue
		}
		if r.LinkIndex <= 0 {
			return nil, fmt.Errorf("found default%s route but could not determine interface", v6)
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("found default%s route but could not determine interface: %w", v6, err)
		}
		return fromLink(link, netip.Addr{}), nil
	}
	return nil, fmt.Errorf("unable to find default%s route", v6)
}

// ifaceByRegex returns the first interface with an address of family fam
// that matches expr, else the first whose name matches.
func ifaceByRegex(expr string, fam int) (*Iface, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("bad --iface-regex %q: %w", expr, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		for _, a := range usableAddrs(l.Attrs().Index, fam) {
			if re.MatchString(a.String()) {
				return fromLink(l, a), nil
			}
		}
	}
	for _, l := range links {
		if re.MatchString(l.Attrs().Name) && len(usableAddrs(l.Attrs().Index, fam)) > 0 {
			return fromLink(l, netip.Addr{}), nil
		}
	}
	return nil, fmt.Errorf("no interface or address matches %q", expr)
}

func ifaceCanReach(target string) (*Iface, error) {
	ip := net.ParseIP(target)
	if ip == nil {
		return nil, fmt.Errorf("invalid --iface-can-reach address %q", target)
	}
	routes, err := netlink.RouteGet(ip)
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("no route to %s: %v", target, err)
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, fmt.Errorf("route to %s: %w", target, err)
	}
	src, _ := netip.AddrFromSlice(routes[0].Src)
	return fromLink(link, src.Unmap()), nil
}

// fromLink describes link; addr, when valid, is the address of its family
// to use, otherwise complete takes the first usable one.
func fromLink(link netlink.Link, addr netip.Addr) *Iface {
	a := link.Attrs()
	e := &Iface{Name: a.Name, Index: a.Index, MTU: a.MTU}
	switch {
	case addr.Is4():
		e.IfaceAddr = addr
	case addr.Is6():
		e.IfaceV6Addr = addr
	}
	return e
}

// usableAddrs lists the link's global or link-local unicast addresses of
// family fam that are not deprecated: global before link-local, permanent
// before dynamic, as upstream's.
func usableAddrs(index, fam int) []netip.Addr {
	list, err := netlink.AddrList(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: index}}, fam)
	if err != nil {
		return nil
	}
	type cand struct {
		ip                 netip.Addr
		linkLocal, dynamic bool
	}
	var cs []cand
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if !ok || a.Flags&unix.IFA_F_DEPRECATED != 0 || ip.Is4() != (fam == unix.AF_INET) {
			continue
		}
		if !ip.IsGlobalUnicast() && !ip.IsLinkLocalUnicast() {
			continue
		}
		cs = append(cs, cand{ip, ip.IsLinkLocalUnicast(), a.Flags&unix.IFA_F_PERMANENT == 0})
	}
	sort.SliceStable(cs, func(i, j int) bool {
		if cs[i].linkLocal != cs[j].linkLocal {
			return !cs[i].linkLocal
		}
		return !cs[i].dynamic && cs[j].dynamic
	})
	out := make([]netip.Addr, len(cs))
	for i, c := range cs {
		out[i] = c.ip
	}
	return out
}
