package fastpath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// handoff is the local VXLAN device the ingress program passes the
// datagrams it accepts to, rewritten into VXLAN. Decapsulating a TCP
// super-packet in the program would leave skb->encapsulation set (this
// kernel's bpf_skb_adjust_room cannot clear it), and the bridge in front
// of the containers would then segment it in software and checksum each
// segment. The VXLAN device's own decapsulation clears it, so the packet
// reaches the container whole. It has one VNI and is not flow-based: a
// collect_md device allocates a metadata dst for every packet it receives
// and frees it through RCU, which cost 12 % of single-stream throughput.
// It learns nothing and sends nothing: only the ingress program feeds it,
// and the guard (guard.go) drops every other datagram for its port.
type handoff struct {
	link  netlink.Link
	guard *guard
}

// handoffMAC is the device's address; the ingress program writes it as the
// inner destination (locally administered, unicast).
var handoffMAC = net.HardwareAddr{0x0e, 0x66, 0x6c, 0x67, 0x6f, 0x01}

// newHandoff installs the guard, then creates the device, replacing one of
// the same name (left by a flanneld whose TUN was persistent).
func newHandoff(name string, port int, tun *net.Interface, addrs []netip.Addr) (*handoff, error) {
	g, err := installGuard(name, port)
	if err != nil {
		return nil, err
	}
	h, err := createHandoff(name, port, tun, addrs)
	if err != nil {
		return nil, errors.Join(err, g.Remove())
	}
	h.guard = g
	return h, nil
}

func createHandoff(name string, port int, tun *net.Interface, addrs []netip.Addr) (*handoff, error) {
	if old, err := netlink.LinkByName(name); err == nil {
		if _, ok := old.(*netlink.Vxlan); !ok {
			return nil, fmt.Errorf("handoff device %s exists and is not VXLAN (%s): delete it or rename it", name, old.Type())
		}
		if err := netlink.LinkDel(old); err != nil {
			return nil, fmt.Errorf("remove the handoff device %s a previous run left: %w", name, err)
		}
	}
	v := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: handoffMAC},
		// The VNI the ingress program writes.
		VxlanId:  1,
		Port:     port,
		Learning: false,
		// The TUN as the lower device ties the device's life to the
		// process: the kernel deletes a VXLAN device with its lower
		// device, and the TUN goes when flanneld exits, even by SIGKILL,
		// so no port is left open that forwards to containers unchecked.
		VtepDevIndex: tun.Index,
	}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("create the handoff VXLAN device %s on port %d: %w", name, port, err)
	}
	h := &handoff{}
	l, err := netlink.LinkByName(name)
	if err != nil {
		netlink.LinkDel(v)
		return nil, fmt.Errorf("handoff device %s: %w", name, err)
	}
	h.link = l
	if err := h.configure(name, addrs); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// configure lets the device forward what it receives: inner packets come
// from containers whose route points at the TUN, so strict reverse-path
// filtering would drop them, and any reverse-path filtering drops packets
// that arrive on a device without an address: the device gets the TUN's
// own (a second copy of a local /32 routes nothing new). Forwarding
// follows the host's setting.
func (h *handoff) configure(name string, addrs []netip.Addr) error {
	if err := h.setAddrs(addrs); err != nil {
		return err
	}
	conf := filepath.Join("/proc/sys/net/ipv4/conf", name)
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/forwarding")
	if err != nil {
		return fmt.Errorf("handoff device %s: %w", name, err)
	}
	for file, val := range map[string][]byte{"rp_filter": []byte("2"), "forwarding": fwd} {
		if err := os.WriteFile(filepath.Join(conf, file), val, 0o644); err != nil {
			return fmt.Errorf("handoff device %s: %w", name, err)
		}
	}
	// Inner IPv6 is handed over too, so the device keeps IPv6, but with no
	// address (addr_gen_mode 1, set before it comes up): it gets no
	// link-local address and sends nothing. Without IPv6 on the host
	// there is nothing to hand over.
	conf6 := filepath.Join("/proc/sys/net/ipv6/conf", name)
	for _, kv := range [][2]string{{"addr_gen_mode", "1"}, {"accept_ra", "0"}, {"disable_ipv6", "0"}} {
		if err := os.WriteFile(filepath.Join(conf6, kv[0]), []byte(kv[1]), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("handoff device %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(h.link); err != nil {
		return fmt.Errorf("bring up the handoff device %s: %w", name, err)
	}
	return nil
}

// setAddrs makes the device's IPv4 addresses equal to addrs (the TUN's),
// each as a /32: added before the old ones go, so the device is never
// without one.
func (h *handoff) setAddrs(addrs []netip.Addr) error {
	name := h.link.Attrs().Name
	have, err := netlink.AddrList(h.link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("handoff device %s: list addresses: %w", name, err)
	}
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		want[a] = true
		ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
		if err := netlink.AddrReplace(h.link, &netlink.Addr{IPNet: ipn}); err != nil {
			return fmt.Errorf("handoff device %s: add %s: %w", name, a, err)
		}
	}
	for _, old := range have {
		if a, ok := netip.AddrFromSlice(old.IP.To4()); ok && !want[a] {
			if err := netlink.AddrDel(h.link, &old); err != nil {
				return fmt.Errorf("handoff device %s: remove %s: %w", name, a, err)
			}
		}
	}
	return nil
}

// Close removes the device, then its guard; a device that could not be
// removed keeps its guard. The device may be gone already: the kernel
// deletes it with the TUN, its lower device.
func (h *handoff) Close() error {
	if h == nil {
		return nil
	}
	if h.link != nil {
		if err := netlink.LinkDel(h.link); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("remove the handoff device %s: %w", h.link.Attrs().Name, err)
		}
	}
	return h.guard.Remove()
}

// rxPackets is what the device has received.
func (h *handoff) rxPackets() (uint64, error) {
	l, err := netlink.LinkByIndex(h.link.Attrs().Index)
	if err != nil {
		return 0, err
	}
	if st := l.Attrs().Statistics; st != nil {
		return st.RxPackets, nil
	}
	return 0, errors.New("no statistics")
}

// handoffMinSample is how many handed packets the watchdog waits for
// before it judges the device: a blocked device must be noticed from the
// retries of a first SYN.
const handoffMinSample = 2

// watchHandoff turns the handoff off for good when the device receives
// less than half of what the program handed it: the rewritten datagrams
// cross the host's input path (netfilter INPUT), and a firewall that
// admits only the flannel port would drop every one of them. The program
// then decapsulates them itself, as without a device.
func (p *Path) watchHandoff() {
	if p.hand == nil {
		return
	}
	tick := time.NewTicker(p.cfg.ProbeInterval / 4)
	defer tick.Stop()
	var lastHanded, lastRx, handed, got uint64
	for {
		select {
		case <-p.done:
			return
		case <-tick.C:
		}
		st, err := p.Stats()
		if err != nil {
			continue
		}
		rx, err := p.hand.rxPackets()
		if err != nil {
			continue
		}
		handed, got = handed+st.Handoff-lastHanded, got+rx-lastRx
		lastHanded, lastRx = st.Handoff, rx
		if handed < handoffMinSample {
			continue
		}
		if got*2 >= handed {
			handed, got = 0, 0
			continue
		}
		if err := p.objs.HandoffOff.Put(uint32(0), uint32(1)); err != nil {
			p.cfg.Logger.Error("Fast path: turn the handoff off", "error", err)
			continue
		}
		p.cfg.Logger.Warn("Fast path: the handoff device received too little of what was handed to it (does a firewall drop its UDP port on input?); received packets are decapsulated in TC from now on, at a lower rate for TCP",
			"device", p.cfg.Handoff, "port", p.cfg.HandoffPort, "handed", handed, "received", got)
		return
	}
}
