package fastpath

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Attach modes (Config.Attach).
const (
	// AttachAuto takes tcx where the kernel has it, else clsact.
	AttachAuto = ""
	// AttachTCX attaches with tcx links (6.6, and backports), which
	// belong to the process: the kernel detaches them when it exits.
	AttachTCX = "tcx"
	// AttachClsact attaches direct-action cls_bpf filters to a clsact
	// qdisc through netlink. They outlive the process; the programs then
	// pass everything once the daemon's heartbeat stops.
	AttachClsact = "clsact"
)

// filterPrefix names this project's cls_bpf filters; a start removes
// those it finds, and only those.
const filterPrefix = "flannel-go:"

// hook is one program for one interface's ingress or egress.
type hook struct {
	prog    *ebpf.Program
	name    string // the program's name, for the filter's
	index   int
	ingress bool
	what    string // for errors, e.g. "ingress of eth0"
}

// probeTCX tells whether the kernel has tcx links, as cilium/ebpf's own
// probe does: a link to a nonexistent interface fails with ENODEV where
// tcx exists.
func probeTCX() (bool, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false, fmt.Errorf("load the tcx probe: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxUint32, Program: prog, Attach: ebpf.AttachTCXIngress})
	switch {
	case err == nil:
		l.Close()
		return false, errors.New("tcx probe attached to a nonexistent interface")
	case errors.Is(err, ebpf.ErrNotSupported):
		return false, nil
	case errors.Is(err, unix.ENODEV):
		return true, nil
	}
	return false, fmt.Errorf("tcx probe: %w", err)
}

func attachTCX(h hook) (link.Link, error) {
	typ := ebpf.AttachTCXEgress
	if h.ingress {
		typ = ebpf.AttachTCXIngress
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: h.index, Program: h.prog, Attach: typ})
	if err != nil {
		return nil, fmt.Errorf("fast path: attach tcx program to the %s: %w", h.what, err)
	}
	return l, nil
}

// clsactFilter is an attached cls_bpf filter; Close removes it.
type clsactFilter struct {
	f *netlink.BpfFilter
}

func (c *clsactFilter) Close() error {
	err := netlink.FilterDel(c.f)
	if err == nil || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) {
		return nil // the interface (the TUN) went first
	}
	return fmt.Errorf("remove cls_bpf filter %s: %w", c.f.Name, err)
}

func clsactParent(ingress bool) uint32 {
	if ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// attachClsact adds a clsact qdisc where there is none and h's program as
// a direct-action filter at the lowest free priority (filters run in
// priority order).
func attachClsact(h hook) (*clsactFilter, error) {
	q := &netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: h.index,
		Handle:    netlink.MakeHandle(0xffff, 0),
		Parent:    netlink.HANDLE_CLSACT,
	}}
	if err := netlink.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("fast path: add a clsact qdisc to the %s: %w", h.what, err)
	}
	for prio := uint16(1); prio < 64; prio++ {
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: h.index,
				Parent:    clsactParent(h.ingress),
				Handle:    netlink.MakeHandle(0, 1),
				Protocol:  unix.ETH_P_ALL,
				Priority:  prio,
			},
			Fd:           h.prog.FD(),
			Name:         filterPrefix + h.name,
			DirectAction: true,
		}
		err := netlink.FilterAdd(f)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("fast path: add cls_bpf filter to the %s: %w", h.what, err)
		}
		return &clsactFilter{f: f}, nil
	}
	return nil, fmt.Errorf("fast path: no free cls_bpf priority on the %s", h.what)
}

// removeOurFilters removes the cls_bpf filters a previous flanneld left
// on the interface (filters outlive their process), and no one else's:
// those named with filterPrefix. It reports how many it removed.
func removeOurFilters(index int) (int, error) {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, ingress := range []bool{true, false} {
		fs, err := netlink.FilterList(l, clsactParent(ingress))
		if err != nil {
			// No clsact qdisc: no filters of ours either.
			continue
		}
		for _, f := range fs {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || !strings.HasPrefix(bf.Name, filterPrefix) {
				continue
			}
			if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove the leftover filter %s from %s: %w", bf.Name, l.Attrs().Name, err))
				continue
			}
			n++
		}
	}
	return n, errors.Join(errs...)
}
