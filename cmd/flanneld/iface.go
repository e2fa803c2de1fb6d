//go:build linux

package main

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

// extIface is the interface flanneld talks to its peers through.
type extIface struct {
	Name      string
	Index     int
	MTU       int
	IfaceAddr netip.Addr // bound by the UDP sockets
	ExtAddr   netip.Addr // advertised in the lease (PublicIP)
}

// chooseInterface picks the external interface as upstream does (spec 4.3):
// --iface values in order, then --iface-regex, then --iface-can-reach; with
// none of them, the interface owning --public-ip or the default route's.
func chooseInterface(o *options, log *slog.Logger) (*extIface, error) {
	var publicIP netip.Addr
	if o.publicIP != "" {
		ip, err := netip.ParseAddr(o.publicIP)
		if err != nil || !ip.Is4() {
			return nil, fmt.Errorf("invalid public IP address: %s", o.publicIP)
		}
		publicIP = ip
	}

	var ext *extIface
	switch {
	case len(o.ifaces) == 0 && len(o.ifaceRegexes) == 0 && o.ifaceCanReach == "":
		var err error
		if publicIP.IsValid() {
			ext, err = ifaceByIP(publicIP)
		} else {
			ext, err = ifaceByDefaultRoute()
		}
		if err != nil {
			return nil, err
		}
	default:
		for _, v := range o.ifaces {
			e, err := ifaceByNameOrIP(v)
			if err != nil {
				log.Info("Could not use interface", "iface", v, "error", err)
				continue
			}
			ext = e
			break
		}
		for _, re := range o.ifaceRegexes {
			if ext != nil {
				break
			}
			e, err := ifaceByRegex(re)
			if err != nil {
				log.Info("Could not match an interface", "iface-regex", re, "error", err)
				continue
			}
			ext = e
		}
		if ext == nil && o.ifaceCanReach != "" {
			e, err := ifaceCanReach(o.ifaceCanReach)
			if err != nil {
				log.Info("Could not find the interface that reaches the address", "iface-can-reach", o.ifaceCanReach, "error", err)
			} else {
				ext = e
			}
		}
		if ext == nil {
			//lint:ignore ST1005 upstream's exact text
			return nil, errors.New("Failed to find interface to use that matches the interfaces and/or regexes provided")
		}
	}
	if ext.MTU == 0 {
		return nil, fmt.Errorf("failed to determine MTU for %s interface", ext.Name)
	}
	ext.ExtAddr = ext.IfaceAddr
	if publicIP.IsValid() {
		ext.ExtAddr = publicIP
	} else {
		log.Info(fmt.Sprintf("Defaulting external address to interface address (%s)", ext.IfaceAddr))
	}
	return ext, nil
}

func ifaceByNameOrIP(v string) (*extIface, error) {
	if ip, err := netip.ParseAddr(v); err == nil {
		return ifaceByIP(ip)
	}
	link, err := netlink.LinkByName(v)
	if err != nil {
		return nil, fmt.Errorf("error looking up interface %s: %w", v, err)
	}
	return fromLink(link, netip.Addr{})
}

// ifaceByIP returns the interface holding ip, with ip as its address.
func ifaceByIP(ip netip.Addr) (*extIface, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		for _, a := range usableAddrs(l) {
			if a == ip {
				return fromLink(l, ip)
			}
		}
	}
	return nil, fmt.Errorf("no interface with address %s", ip)
}

func ifaceByDefaultRoute() (*extIface, error) {
	routes, err := netlink.RouteList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			continue
		}
		if r.LinkIndex <= 0 {
			return nil, errors.New("found default route but could not determine interface")
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("found default route but could not determine interface: %w", err)
		}
		return fromLink(link, netip.Addr{})
	}
	return nil, errors.New("unable to find default route")
}

func ifaceByRegex(expr string) (*extIface, error) {
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("bad --iface-regex %q: %w", expr, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	for _, l := range links {
		for _, a := range usableAddrs(l) {
			if re.MatchString(a.String()) {
				return fromLink(l, a)
			}
		}
	}
	for _, l := range links {
		if re.MatchString(l.Attrs().Name) {
			if e, err := fromLink(l, netip.Addr{}); err == nil {
				return e, nil
			}
		}
	}
	return nil, fmt.Errorf("no interface or address matches %q", expr)
}

func ifaceCanReach(target string) (*extIface, error) {
	ip := net.ParseIP(target)
	if ip == nil || ip.To4() == nil {
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
	var src netip.Addr
	if a, ok := netip.AddrFromSlice(routes[0].Src.To4()); ok {
		src = a
	}
	return fromLink(link, src)
}

// fromLink describes link; addr, when valid, is the address to use,
// otherwise the first usable IPv4 address is taken.
func fromLink(link netlink.Link, addr netip.Addr) (*extIface, error) {
	a := link.Attrs()
	if !addr.IsValid() {
		addrs := usableAddrs(link)
		if len(addrs) == 0 {
			return nil, fmt.Errorf("failed to find IPv4 address for interface %s", a.Name)
		}
		addr = addrs[0]
	}
	return &extIface{Name: a.Name, Index: a.Index, MTU: a.MTU, IfaceAddr: addr}, nil
}

// usableAddrs lists link's global or link-local unicast IPv4 addresses that
// are not deprecated: global before link-local, permanent before dynamic.
func usableAddrs(link netlink.Link) []netip.Addr {
	list, err := netlink.AddrList(link, unix.AF_INET)
	if err != nil {
		return nil
	}
	type cand struct {
		ip                 netip.Addr
		linkLocal, dynamic bool
	}
	var cs []cand
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok || a.Flags&unix.IFA_F_DEPRECATED != 0 {
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
