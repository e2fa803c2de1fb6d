package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"github.com/vishvananda/netns"
)

// ContainerBridge is the name of the container bridge inside a host, the
// counterpart of docker0.
const ContainerBridge = "cbr0"

// ContainerIface is the name of a container's interface.
const ContainerIface = "eth0"

// Container is a namespace attached to its host's container bridge, the way
// Docker attaches a container to docker0.
type Container struct {
	// Name is the namespace name, "<host name>-<name given to AddContainer>".
	Name string
	// Addr is the container's address on the bridge network.
	Addr netip.Addr
	// Gateway is the bridge address, the container's default route.
	Gateway netip.Addr
	// Prefix is the bridge network with its prefix length, e.g. 198.18.32.0/24.
	Prefix netip.Prefix
	// Iface is the interface inside the container (ContainerIface).
	Iface string
	// HostIface is the container's veth end inside the host namespace.
	HostIface string
	// Host is the host the container runs on.
	Host *Host
}

// Command returns a command that runs name inside the host's namespace, via
// `ip netns exec`.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return nsCommand(ctx, h.Name, name, args...)
}

// Run runs a command inside the host's namespace and returns its combined
// output. The error includes the output.
func (h *Host) Run(ctx context.Context, name string, args ...string) (string, error) {
	return nsRun(ctx, h.Name, name, args...)
}

// Do runs fn on the calling goroutine with its OS thread locked and switched
// into the host's namespace. Sockets opened and commands started (os/exec
// forks from the calling thread) by fn belong to the namespace; goroutines
// fn starts do not. The thread's namespace is restored afterwards.
func (h *Host) Do(fn func() error) error { return doIn(h.Name, fn) }

// Command returns a command that runs name inside the container's namespace.
func (c *Container) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return nsCommand(ctx, c.Name, name, args...)
}

// Run runs a command inside the container's namespace and returns its
// combined output. The error includes the output.
func (c *Container) Run(ctx context.Context, name string, args ...string) (string, error) {
	return nsRun(ctx, c.Name, name, args...)
}

// Do runs fn on a locked OS thread switched into the container's namespace;
// see Host.Do.
func (c *Container) Do(fn func() error) error { return doIn(c.Name, fn) }

// AddContainer creates a container namespace attached to the host's bridge
// ContainerBridge, creating the bridge with address bridgeCIDR (for example
// the FLANNEL_SUBNET of subnet.env, 198.18.32.1/24) and the given MTU on the
// first call. Later calls must pass the same bridgeCIDR. The container gets
// the next free address after the bridge address and a default route via the
// bridge. mtu 0 means the bed's MTU.
func (h *Host) AddContainer(ctx context.Context, name string, bridgeCIDR netip.Prefix, mtu int) (*Container, error) {
	if name == "" || strings.ContainsAny(name, "/ \t\n") {
		return nil, fmt.Errorf("testbed: invalid container name %q", name)
	}
	if !bridgeCIDR.IsValid() || !bridgeCIDR.Addr().Is4() || bridgeCIDR.Bits() > 30 {
		return nil, fmt.Errorf("testbed: container bridge %s must be an IPv4 address with a prefix of at most /30", bridgeCIDR)
	}
	if mtu == 0 {
		mtu = h.bed.MTU
	}
	m := strconv.Itoa(mtu)

	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.bridge.IsValid() {
		if err := ip(ctx, "-n", h.Name, "link", "add", ContainerBridge, "mtu", m, "type", "bridge"); err != nil {
			return nil, err
		}
		if err := ip(ctx, "-n", h.Name, "addr", "add", bridgeCIDR.String(), "dev", ContainerBridge); err != nil {
			return nil, err
		}
		if err := ip(ctx, "-n", h.Name, "link", "set", ContainerBridge, "up"); err != nil {
			return nil, err
		}
		h.bridge = bridgeCIDR
		h.nextAddr = bridgeCIDR.Masked().Addr().Next()
	} else if h.bridge != bridgeCIDR {
		return nil, fmt.Errorf("testbed: host %s already has bridge %s, AddContainer asked for %s", h.Name, h.bridge, bridgeCIDR)
	}

	addr := h.nextAddr
	if addr == h.bridge.Addr() {
		addr = addr.Next()
	}
	last := lastAddr(h.bridge)
	if !h.bridge.Contains(addr) || addr == last {
		return nil, fmt.Errorf("testbed: container bridge %s on %s has no free address left", h.bridge, h.Name)
	}

	c := &Container{
		Name:      h.Name + "-" + name,
		Addr:      addr,
		Gateway:   h.bridge.Addr(),
		Prefix:    h.bridge.Masked(),
		Iface:     ContainerIface,
		HostIface: "vc" + strconv.Itoa(h.containers+1),
		Host:      h,
	}
	if err := h.bed.addNamespace(ctx, c.Name); err != nil {
		return nil, err
	}
	h.containers++
	h.nextAddr = addr.Next()
	steps := [][]string{
		{"-n", h.Name, "link", "add", c.HostIface, "mtu", m, "type", "veth",
			"peer", "name", ContainerIface, "mtu", m, "netns", c.Name},
		{"-n", h.Name, "link", "set", c.HostIface, "master", ContainerBridge, "up"},
		{"-n", c.Name, "addr", "add", netip.PrefixFrom(addr, h.bridge.Bits()).String(), "dev", ContainerIface},
		{"-n", c.Name, "link", "set", ContainerIface, "up"},
		{"-n", c.Name, "route", "add", "default", "via", c.Gateway.String()},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return nil, fmt.Errorf("add container %s: %w", c.Name, err)
		}
	}
	return c, nil
}

// lastAddr returns the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func nsCommand(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

func nsRun(ctx context.Context, ns, name string, args ...string) (string, error) {
	out, err := nsCommand(ctx, ns, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("testbed: %s %s in netns %s: %w: %s",
			name, strings.Join(args, " "), ns, err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// doIn runs fn with the calling goroutine's thread in the named namespace.
func doIn(ns string, fn func() error) (err error) {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("testbed: open netns %s: %w", ns, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testbed: open current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("testbed: enter netns %s: %w", ns, err)
	}
	// Deferred so that fn calling runtime.Goexit (t.FailNow) still restores.
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// Leave the thread locked: Go then discards it when the goroutine
			// exits instead of reusing a thread in the wrong namespace.
			err = errors.Join(err, fmt.Errorf("testbed: restore netns after %s: %w", ns, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}
