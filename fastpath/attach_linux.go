package fastpath

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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
