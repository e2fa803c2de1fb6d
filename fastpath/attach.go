package fastpath

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
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
	// qdisc through netlink. The underlay's filter outlives the process;
	// its program then passes everything once the daemon's heartbeat
	// stops (the TUN's goes with the TUN).
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
