package hoststate

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/flannel-go/flannel-go/tun"
)

// TUN is the overlay device's addresses (Addresses): each family's with
// the MTU, the transmit queue length and the route of that family's
// network.
type TUN struct {
	Dev                  *tun.Device
	MTU, TxQueueLen      int
	Network, IPv6Network netip.Prefix
	Logger               *slog.Logger
}

// SetAddr gives the TUN address a (IPv4 or IPv6).
func (t TUN) SetAddr(a netip.Addr) error {
	if a.Is6() {
		if err := t.Dev.ConfigureIPv6(a, t.MTU, t.TxQueueLen, t.IPv6Network); err != nil {
			return fmt.Errorf("configure %s for IPv6: %w", t.Dev.Name, err)
		}
		t.checkIPv6Forwarding()
		return nil
	}
	if err := t.Dev.Configure(a, t.MTU, t.TxQueueLen, t.Network); err != nil {
		return fmt.Errorf("configure %s: %w", t.Dev.Name, err)
	}
	// The router's ICMP errors come from the TUN's own address; without
	// accept_local the kernel drops them as martians and traceroute, PMTU
	// and "net unreachable" never reach the sender. IPv6 has no such
	// check.
	if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+t.Dev.Name+"/accept_local", []byte("1"), 0o644); err != nil {
		t.Logger.Warn("Could not set accept_local on the TUN; ICMP errors from the router will be dropped by the kernel", "error", err)
	}
	return nil
}

// RemoveAddr takes the old address a away.
func (t TUN) RemoveAddr(a netip.Addr) error {
	if a.Is6() {
		return t.Dev.RemoveIPv6Addr(a)
	}
	return t.Dev.RemoveAddr(a)
}

// checkIPv6Forwarding warns when the kernel does not forward IPv6: the
// containers' packets then never reach flannel0, nor the router's reach
// them. As for IPv4's ip_forward, the container runtime or the operator
// turns it on (Docker does with IPv6 enabled); flanneld does not change
// the host's forwarding policy.
func (t TUN) checkIPv6Forwarding() {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding")
	if err != nil || strings.TrimSpace(string(b)) != "1" {
		t.Logger.Warn("IPv6 forwarding is off (net.ipv6.conf.all.forwarding is not 1): containers' IPv6 packets are not forwarded "+
			"to or from the overlay until it is turned on (sysctl -w net.ipv6.conf.all.forwarding=1)", "error", err)
	}
}
