// Package testbed builds throw-away network-namespace testbeds: N "hosts"
// joined by an underlay bridge that lives in its own namespace, plus
// "containers" behind a Linux bridge inside a host. Integration tests, the
// demo program and benchmarks all use it, so that every namespace the project
// creates has a unique name and is deleted again.
//
// Nothing here touches the root namespace: links are created directly inside
// the namespaces, and the underlay bridge has a namespace of its own.
package testbed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = "/var/run/netns"

// DefaultPrefix is the base of namespace names when Options.Prefix is empty.
const DefaultPrefix = "fgo"

// DefaultUnderlay is the underlay network when Options.Underlay is unset
// (TEST-NET-1, RFC 5737).
var DefaultUnderlay = netip.MustParsePrefix("192.0.2.0/24")

// DefaultMTU is the underlay MTU when Options.MTU is zero.
const DefaultMTU = 1500

// HostIface is the name of every host's underlay interface.
const HostIface = "eth0"

// Options configures New.
type Options struct {
	// Hosts is the number of host namespaces, at least 1.
	Hosts int
	// Prefix is the base of every namespace name. New always appends
	// random hex to it, so two beds never share names; Bed.Prefix holds
	// the result. Default DefaultPrefix.
	Prefix string
	// Underlay is the network the hosts share; host i (1-based) gets
	// address Underlay.Addr()+i. Default DefaultUnderlay.
	Underlay netip.Prefix
	// MTU of the underlay links. Default DefaultMTU.
	MTU int
	// Direct joins exactly two hosts with one veth pair and no bridge, so
	// benchmarks see the raw veth ceiling.
	Direct bool
}

// Bed is a set of namespaces created by New. Close deletes them all.
type Bed struct {
	// Prefix is the unique prefix of every namespace name of this bed.
	Prefix string
	// Hosts are the host namespaces, Hosts[0] is "<Prefix>-h1".
	Hosts []*Host
	// Bridge is the name of the namespace holding the underlay bridge
	// "br0"; empty when Options.Direct is set.
	Bridge string
	// Underlay is the underlay network, with the bed's prefix length.
	Underlay netip.Prefix
	// MTU is the underlay MTU.
	MTU int

	mu         sync.Mutex
	namespaces []string // in creation order
}

// Host is one simulated machine: a network namespace with an underlay
// interface.
type Host struct {
	// Name is the namespace name, "<prefix>-h<i>".
	Name string
	// Addr is the host's underlay address.
	Addr netip.Addr
	// Iface is the underlay interface inside the namespace (HostIface).
	Iface string

	bed        *Bed
	mu         sync.Mutex
	bridge     netip.Prefix // container bridge address; invalid until the first AddContainer
	nextAddr   netip.Addr   // next container address to hand out
	containers int
}

// New creates a testbed. On error it deletes whatever it had created.
func New(ctx context.Context, opts Options) (_ *Bed, err error) {
	if opts.Hosts < 1 {
		return nil, fmt.Errorf("testbed: Options.Hosts is %d, need at least 1", opts.Hosts)
	}
	if opts.Direct && opts.Hosts != 2 {
		return nil, fmt.Errorf("testbed: Options.Direct joins exactly 2 hosts, got Hosts=%d", opts.Hosts)
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if !opts.Underlay.IsValid() {
		opts.Underlay = DefaultUnderlay
	}
	opts.Underlay = opts.Underlay.Masked()
	if !opts.Underlay.Addr().Is4() {
		return nil, fmt.Errorf("testbed: underlay %s is not IPv4", opts.Underlay)
	}
	if free := 1<<(32-opts.Underlay.Bits()) - 2; opts.Hosts > free {
		return nil, fmt.Errorf("testbed: underlay %s has room for %d hosts, asked for %d", opts.Underlay, free, opts.Hosts)
	}
	if opts.MTU == 0 {
		opts.MTU = DefaultMTU
	}
	if opts.MTU < 68 {
		return nil, fmt.Errorf("testbed: MTU %d is below the IPv4 minimum 68", opts.MTU)
	}
	suffix := make([]byte, 3)
	if _, err := rand.Read(suffix); err != nil {
		return nil, fmt.Errorf("testbed: random name suffix: %w", err)
	}
	b := &Bed{
		Prefix:   opts.Prefix + hex.EncodeToString(suffix),
		Underlay: opts.Underlay,
		MTU:      opts.MTU,
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()

	mtu := strconv.Itoa(opts.MTU)
	addr := opts.Underlay.Addr()
	for i := 1; i <= opts.Hosts; i++ {
		addr = addr.Next()
		h := &Host{Name: fmt.Sprintf("%s-h%d", b.Prefix, i), Addr: addr, Iface: HostIface, bed: b}
		if err := b.addNamespace(ctx, h.Name); err != nil {
			return nil, err
		}
		b.Hosts = append(b.Hosts, h)
	}

	if opts.Direct {
		h1, h2 := b.Hosts[0], b.Hosts[1]
		if err := ip(ctx, "-n", h1.Name, "link", "add", HostIface, "mtu", mtu, "type", "veth",
			"peer", "name", HostIface, "mtu", mtu, "netns", h2.Name); err != nil {
			return nil, err
		}
	} else {
		b.Bridge = b.Prefix + "-br"
		if err := b.addNamespace(ctx, b.Bridge); err != nil {
			return nil, err
		}
		if err := ip(ctx, "-n", b.Bridge, "link", "add", "br0", "mtu", mtu, "type", "bridge"); err != nil {
			return nil, err
		}
		if err := ip(ctx, "-n", b.Bridge, "link", "set", "br0", "up"); err != nil {
			return nil, err
		}
		for i, h := range b.Hosts {
			port := fmt.Sprintf("h%d", i+1)
			if err := ip(ctx, "-n", b.Bridge, "link", "add", port, "mtu", mtu, "type", "veth",
				"peer", "name", HostIface, "mtu", mtu, "netns", h.Name); err != nil {
				return nil, err
			}
			if err := ip(ctx, "-n", b.Bridge, "link", "set", port, "master", "br0", "up"); err != nil {
				return nil, err
			}
		}
	}

	for _, h := range b.Hosts {
		pfx := netip.PrefixFrom(h.Addr, opts.Underlay.Bits()).String()
		if err := ip(ctx, "-n", h.Name, "addr", "add", pfx, "dev", HostIface); err != nil {
			return nil, err
		}
		if err := ip(ctx, "-n", h.Name, "link", "set", HostIface, "up"); err != nil {
			return nil, err
		}
		if err := h.Do(func() error { return writeSysctl("net/ipv4/ip_forward", "1") }); err != nil {
			return nil, fmt.Errorf("testbed: enable ip_forward in %s: %w", h.Name, err)
		}
	}
	return b, nil
}

// addNamespace creates a named namespace with lo up and records it for
// Close before anything else can fail.
func (b *Bed) addNamespace(ctx context.Context, name string) error {
	if err := ip(ctx, "netns", "add", name); err != nil {
		return err
	}
	b.mu.Lock()
	b.namespaces = append(b.namespaces, name)
	b.mu.Unlock()
	return ip(ctx, "-n", name, "link", "set", "lo", "up")
}

// Namespaces returns the names of all namespaces of the bed that still
// exist, containers included.
func (b *Bed) Namespaces() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, n := range b.namespaces {
		if nsExists(n) {
			out = append(out, n)
		}
	}
	return out
}

// Close deletes every namespace the bed created, and with them every link,
// address, route and firewall rule inside. Processes still running in
// them (other than this one) are killed first, because a namespace with a
// live process outlives its name. Close is idempotent and safe on a bed that
// New only partly built.
func (b *Bed) Close() error {
	b.mu.Lock()
	names := append([]string(nil), b.namespaces...)
	b.mu.Unlock()
	var errs []error
	// Reverse order: containers first, then the underlay.
	for i := len(names) - 1; i >= 0; i-- {
		name := names[i]
		if !nsExists(name) {
			continue
		}
		killPids(name)
		// No context: cleanup must run even when the caller's context is done.
		if err := ip(context.Background(), "netns", "del", name); err != nil && nsExists(name) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// killPids SIGKILLs the processes, except this one, whose network namespace
// is the named one.
func killPids(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	self := os.Getpid()
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == self {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func nsExists(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// ip runs the ip(8) command and returns an error holding its output.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testbed: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeSysctl writes a /proc/sys entry of the calling thread's network
// namespace.
func writeSysctl(key, value string) error {
	return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
}
