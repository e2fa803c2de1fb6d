//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// The handoff device's port on every node of these tests (flannel port + 1).
const handoffPort = 8286

// guardTable is the nftables table that closes the handoff port.
const guardTable = "flannel-go-" + handoffDev

// inbox is a UDP listener in a container that keeps what it receives.
type inbox struct {
	mu   sync.Mutex
	got  map[string]bool
	conn *net.UDPConn
}

func listenInbox(t *testing.T, ct *testbed.Container, port int) *inbox {
	t.Helper()
	in := &inbox{got: map[string]bool{}}
	if err := ct.Do(func() (err error) {
		in.conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.conn.Close() })
	go func() {
		buf := make([]byte, 65535)
		for {
			n, err := in.conn.Read(buf)
			if err != nil {
				return
			}
			in.mu.Lock()
			in.got[string(buf[:n])] = true
			in.mu.Unlock()
		}
	}()
	return in
}

func (in *inbox) has(payload string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.got[payload]
}

// attacks lists what arrived whose payload starts with "attack".
func (in *inbox) attacks() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for p := range in.got {
		if strings.HasPrefix(p, "attack") {
			out = append(out, p[:min(len(p), 40)])
		}
	}
	return out
}

// vxlanFrame is a datagram payload the handoff device would decapsulate:
// VXLAN with VNI 1, an inner Ethernet frame to the device's MAC and the
// inner IPv4/UDP packet src -> dst:port carrying payload.
func vxlanFrame(t *testing.T, src, dst netip.Addr, port int, payload []byte) []byte {
	t.Helper()
	b := []byte{0x08, 0, 0, 0, 0, 0, 1, 0}
	b = append(b, 0x0e, 0x66, 0x6c, 0x67, 0x6f, 0x01) // the device's MAC
	b = append(b, 0x02, 0, 0, 0, 0, 0x66, 0x08, 0x00)
	return append(b, udpPacket(t, src, dst, port, payload)...)
}

// shape is how an attacker's datagram to the handoff port is sent.
type shape struct {
	name string
	// opts sets socket options on the sender's socket.
	opts func(fd int) error
	pad  int // payload bytes added, to make the datagram fragment
}

var attackShapes = []shape{
	{name: "plain"},
	{name: "ip-options", opts: func(fd int) error {
		// NOP NOP NOP EOL: a 24-byte outer header.
		return unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00")
	}},
	{name: "fragments", pad: 2000, opts: func(fd int) error {
		return unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
	}},
}

// sendAttack sends one datagram from inside from (a host or container) to
// to, in the given shape, carrying an inner packet to victim:port whose
// payload names the attack.
func sendAttack(t *testing.T, from interface{ Do(func() error) error }, to netip.AddrPort, sh shape, spoofed, victim netip.Addr, port int, tag string) {
	t.Helper()
	if err := attack(t, from, to, sh, spoofed, victim, port, tag); err != nil {
		t.Fatal(err)
	}
}

// attack is sendAttack for any goroutine.
func attack(t *testing.T, from interface{ Do(func() error) error }, to netip.AddrPort, sh shape, spoofed, victim netip.Addr, port int, tag string) error {
	payload := []byte("attack " + tag + " " + sh.name + " " + strings.Repeat("x", sh.pad))
	msg := vxlanFrame(t, spoofed, victim, port, payload)
	network := "udp4"
	if to.Addr().Is6() {
		network = "udp6"
	}
	if err := from.Do(func() error {
		c, err := net.DialUDP(network, nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		if sh.opts != nil {
			rc, err := c.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = sh.opts(int(fd)) }); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("socket option for %s: %w", sh.name, serr)
			}
		}
		_, err = c.Write(msg)
		return err
	}); err != nil {
		return fmt.Errorf("send %s %s to %s: %w", tag, sh.name, to, err)
	}
	return nil
}

// sendGSOAttack sends from a container two VXLAN frames as one UDP GSO
// super-datagram to to: it crosses the sender's fast path whole and
// reaches the receiver's handoff device as one super-packet.
func sendGSOAttack(t *testing.T, from *testbed.Container, to netip.AddrPort, spoofed, victim netip.Addr, port int) {
	t.Helper()
	frame := func(i int) []byte {
		f := vxlanFrame(t, spoofed, victim, port, fmt.Appendf(nil, "attack gso %d %s", i, strings.Repeat("y", 900)))
		return f
	}
	a, b := frame(1), frame(2)
	if len(a) != len(b) {
		t.Fatalf("GSO segments of %d and %d bytes", len(a), len(b))
	}
	if err := from.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		oob := make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(len(a)))
		_, _, err = c.WriteMsgUDP(append(a, b...), oob, nil)
		return err
	}); err != nil {
		t.Fatalf("send the GSO attack to %s: %v", to, err)
	}
}

// control sends a datagram over the overlay from src to the inbox and
// waits until it arrives: the attacks sent before it had every chance to
// arrive too.
func control(t *testing.T, src *testbed.Container, in *inbox, dst netip.Addr, port int, tag string) {
	t.Helper()
	payload := "control " + tag
	var c *net.UDPConn
	if err := src.Do(func() (err error) {
		c, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: dst.AsSlice(), Port: port})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitFor(t, 10*time.Second, "control datagram "+tag, func() error {
		c.Write([]byte(payload))
		if !in.has(payload) {
			return fmt.Errorf("not received")
		}
		return nil
	})
}

// guardPresent tells whether the guard's table exists on h.
func guardPresent(t *testing.T, h *testbed.Host) bool {
	t.Helper()
	_, err := h.Run(t.Context(), "nft", "list", "table", "inet", guardTable)
	return err == nil
}

// attackBed is two fast-path nodes and a stranger, a host that holds no
// lease; an inbox listens in node 2's container, the victim, and the
// attacks' inner packets claim node 1's container as their source.
type attackBed struct {
	stranger        *testbed.Host
	n1, n2          *cluster.Node
	in              *inbox
	spoofed, victim netip.Addr
}

func handoffCluster(t *testing.T) attackBed {
	t.Helper()
	requireFastPath(t)
	testbed.RequireTool(t, "nft")
	c := startWith(t, cluster.Options{Hosts: 3, Idle: 1, Args: []string{"--fast-path=on"}})
	waitKernelPeers(t, 1, c.Nodes[:2]...)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if _, ok := handoffRx(t, n2.Host); !ok {
		t.Fatalf("%s has no handoff device", n2.Host.Name)
	}
	return attackBed{stranger: c.Bed.Hosts[2], n1: n1, n2: n2, in: listenInbox(t, n2.Container, 7777),
		spoofed: n1.Container.Addr, victim: n2.Container.Addr}
}

// TestHandoffClosedToStrangers sends VXLAN frames for the handoff device
// in every shape found, from a host that holds no lease, from the node
// itself, from its own container and through the overlay from a member's
// container; none may reach the container the inner packets are for.
// The handoff still carries the members' traffic, and once the guard is
// taken away (by hand, at the end) the same attack gets through: the test
// sends a real attack, and the guard is what stops it.
func TestHandoffClosedToStrangers(t *testing.T) {
	b := handoffCluster(t)
	ctx := t.Context()
	stranger, n1, n2, in, spoofed, victim := b.stranger, b.n1, b.n2, b.in, b.spoofed, b.victim
	flannel0 := n2.Env.Subnet.Addr()
	// The stranger reaches the node's other local addresses too.
	for _, args := range [][]string{
		{"route", "add", cluster.DefaultNetwork.String(), "via", n2.Host.Addr.String()},
		{"-6", "addr", "add", "2001:db8:ff::3/64", "dev", testbed.HostIface, "nodad"},
	} {
		if out, err := stranger.Run(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v on the stranger: %v: %s", args, err, out)
		}
	}
	if out, err := n2.Host.Run(ctx, "ip", "-6", "addr", "add", "2001:db8:ff::2/64", "dev", testbed.HostIface, "nodad"); err != nil {
		t.Fatalf("IPv6 on %s: %v: %s", n2.Host.Name, err, out)
	}
	v6 := netip.MustParseAddr("2001:db8:ff::2")
	for _, sh := range attackShapes {
		for _, dst := range []netip.Addr{n2.Host.Addr, flannel0} {
			sendAttack(t, stranger, netip.AddrPortFrom(dst, handoffPort), sh, spoofed, victim, 7777, "stranger to "+dst.String())
		}
		sendAttack(t, stranger, netip.AddrPortFrom(v6, handoffPort), sh, spoofed, victim, 7777, "stranger to ipv6")
		sendAttack(t, n2.Host, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), handoffPort), sh, spoofed, victim, 7777, "loopback")
		sendAttack(t, n2.Container, netip.AddrPortFrom(n2.Host.Addr, handoffPort), sh, spoofed, victim, 7777, "own container")
		sendAttack(t, n1.Container, netip.AddrPortFrom(flannel0, handoffPort), sh, spoofed, victim, 7777, "member container")
	}
	sendGSOAttack(t, n1.Container, netip.AddrPortFrom(flannel0, handoffPort), spoofed, victim, 7777)
	control(t, n1.Container, in, victim, 7777, "after the attacks")
	if got := in.attacks(); len(got) > 0 {
		t.Fatalf("attacks delivered into %s: %q", n2.Container.Name, got)
	}
	// The handoff carries the members' TCP.
	rx, _ := handoffRx(t, n2.Host)
	res, err := cluster.Transfer(ctx, n1.Container, n2.Container, victim, 5501, 4<<20)
	if err != nil || !res.Match() {
		t.Fatalf("transfer between members: %v (intact: %v)", err, err == nil && res.Match())
	}
	if after, _ := handoffRx(t, n2.Host); after <= rx {
		t.Fatalf("the handoff device received nothing of the transfer (%d -> %d)", rx, after)
	}

	// Without the guard the attack is delivered.
	if out, err := n2.Host.Run(ctx, "nft", "delete", "table", "inet", guardTable); err != nil {
		t.Fatalf("delete the guard: %v: %s", err, out)
	}
	opts := attackShapes[1]
	waitFor(t, 10*time.Second, "an attack delivered without the guard", func() error {
		sendAttack(t, stranger, netip.AddrPortFrom(n2.Host.Addr, handoffPort), opts, spoofed, victim, 7777, "unguarded")
		if len(in.attacks()) == 0 {
			return fmt.Errorf("nothing delivered")
		}
		return nil
	})
}

// TestHandoffGuardLifecycle: flanneld removes the guard when it exits; a
// SIGKILL leaves it in place (the device goes with the TUN), and a
// restart under a flood of attacks lets none of them through while it
// takes over.
func TestHandoffGuardLifecycle(t *testing.T) {
	b := handoffCluster(t)
	ctx := t.Context()
	stranger, n1, n2, in, spoofed, victim := b.stranger, b.n1, b.n2, b.in, b.spoofed, b.victim
	if !guardPresent(t, n2.Host) {
		t.Fatal("no guard while the fast path runs")
	}
	n2.Stop(syscall.SIGTERM, 10*time.Second)
	if guardPresent(t, n2.Host) {
		t.Error("the guard is left after flanneld exited")
	}
	restart := func() {
		t.Helper()
		if err := n2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	restart()
	n2.Stop(syscall.SIGKILL, 10*time.Second)
	if !guardPresent(t, n2.Host) {
		t.Fatal("the guard went with a SIGKILL: the next start would have a window")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int
	var floodErr error
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for _, sh := range attackShapes {
				if floodErr = attack(t, stranger, netip.AddrPortFrom(n2.Host.Addr, handoffPort), sh, spoofed, victim, 7777, "flood"); floodErr != nil {
					return
				}
				sent++
			}
		}
	})
	restart()
	waitKernelPeers(t, 1, n1, n2)
	close(stop)
	wg.Wait()
	if floodErr != nil {
		t.Fatal(floodErr)
	}
	control(t, n1.Container, in, victim, 7777, "after the restart")
	if got := in.attacks(); len(got) > 0 {
		t.Fatalf("%d attacks sent during the restart, delivered: %q", sent, got)
	}
	if !guardPresent(t, n2.Host) {
		t.Fatal("no guard after the restart")
	}
	t.Logf("MEASURED %d attack datagrams sent across a SIGKILL and restart, none delivered", sent)
}
