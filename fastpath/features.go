package fastpath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Feature is a kernel capability one part of the programs depends on. The
// programs are built once; the loader tells them which features the
// kernel has (frozen constants, so the verifier never looks at the
// branches of the others), and that set is the variant that runs.
type Feature uint

// The features, each probed by trying it, never by a kernel version
// (distributions backport).
const (
	// CoarseClock: bpf_ktime_get_coarse_ns (5.11). Without it the
	// programs read the clock source per packet (bpf_ktime_get_ns).
	CoarseClock Feature = 1 << iota
	// DecapFlags: bpf_skb_adjust_room's BPF_F_ADJ_ROOM_DECAP_L3_* (6.3),
	// which set skb->protocol when the inner family differs. Without
	// them inner IPv6 needs the handoff device, and a node of a
	// dual-stack network without one runs no fast path.
	DecapFlags
	// GSOSize: __sk_buff.gso_size (5.7). Without it every TCP, UDP and
	// ICMP packet takes the handoff device.
	GSOSize
	// RingBuf: BPF_MAP_TYPE_RINGBUF (5.8), the live capture's ring.
	// Without it /debug/pcap sees only what the userspace router carries.
	RingBuf
	// AllFeatures is every feature: the "full" variant.
	AllFeatures = CoarseClock | DecapFlags | GSOSize | RingBuf
)

var featureNames = []struct {
	f    Feature
	name string
	why  string
}{
	{CoarseClock, "coarse-clock", "bpf_ktime_get_coarse_ns (Linux 5.11)"},
	{DecapFlags, "decap-flags", "bpf_skb_adjust_room's BPF_F_ADJ_ROOM_DECAP_L3 flags (Linux 6.3)"},
	{GSOSize, "gso-size", "__sk_buff.gso_size (Linux 5.7)"},
	{RingBuf, "ringbuf", "BPF ring buffer maps (Linux 5.8)"},
}

// Variant names a set of features: "full" with all, else "no-" and the
// missing ones, e.g. "no-coarse-clock,no-decap-flags".
func Variant(f Feature) string {
	var missing []string
	for _, n := range featureNames {
		if f&n.f == 0 {
			missing = append(missing, "no-"+n.name)
		}
	}
	if len(missing) == 0 {
		return "full"
	}
	return strings.Join(missing, ",")
}

// ParseVariant reads a variant's name (as Variant writes it, in any
// order) back into its features.
func ParseVariant(s string) (Feature, error) {
	if s == "full" {
		return AllFeatures, nil
	}
	f := AllFeatures
	for _, part := range strings.Split(s, ",") {
		i := slices.IndexFunc(featureNames, func(n struct {
			f    Feature
			name string
			why  string
		}) bool {
			return "no-"+n.name == strings.TrimSpace(part)
		})
		if i < 0 {
			return 0, fmt.Errorf("unknown fast path variant %q: want full or a comma-separated list of %s", s, strings.Join(variantParts(), ", "))
		}
		f &^= featureNames[i].f
	}
	return f, nil
}

func variantParts() []string {
	var out []string
	for _, n := range featureNames {
		out = append(out, "no-"+n.name)
	}
	return out
}

// missing describes the features of AllFeatures not in f, for the log.
func missing(f Feature) []string {
	var out []string
	for _, n := range featureNames {
		if f&n.f == 0 {
			out = append(out, "no "+n.why)
		}
	}
	return out
}

var (
	probeOnce  sync.Once
	probed     Feature
	probeError error
)

// ProbeFeatures finds what the running kernel supports, once per process.
// An error means the probes themselves could not run (no BPF at all).
func ProbeFeatures() (Feature, error) {
	probeOnce.Do(func() { probed, probeError = probeFeatures() })
	return probed, probeError
}

func probeFeatures() (Feature, error) {
	if err := liftMemlock(); err != nil {
		return 0, err
	}
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		return 0, fmt.Errorf("no TC BPF programs (sched_cls): %w", err)
	}
	var f Feature
	for _, p := range []struct {
		f     Feature
		probe func() error
	}{
		{CoarseClock, func() error { return features.HaveProgramHelper(ebpf.SchedCLS, asm.FnKtimeGetCoarseNs) }},
		{RingBuf, func() error { return features.HaveMapType(ebpf.RingBuf) }},
		{GSOSize, probeGSOSize},
		{DecapFlags, probeDecapFlags},
	} {
		err := p.probe()
		switch {
		case err == nil:
			f |= p.f
		case !errors.Is(err, ebpf.ErrNotSupported):
			return 0, fmt.Errorf("probe %s: %w", Variant(AllFeatures&^p.f), err)
		}
	}
	return f, nil
}

// skbGSOSize is offsetof(struct __sk_buff, gso_size).
const skbGSOSize = 176

// probeGSOSize loads a program that reads __sk_buff.gso_size: a kernel
// that does not know the field refuses it.
func probeGSOSize() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R0, asm.R1, skbGSOSize, asm.Word),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	return prog.Close()
}

// probeDecapFlags runs bpf_skb_adjust_room with BPF_F_ADJ_ROOM_DECAP_L3_IPV4
// on a test packet: the verifier accepts any flags, the helper refuses
// those it does not know (EINVAL), so only a run tells.
func probeDecapFlags() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R2, -28),
			asm.Mov.Imm(asm.R3, 1),               // BPF_ADJ_ROOM_MAC
			asm.LoadImm(asm.R4, 1<<7, asm.DWord), // BPF_F_ADJ_ROOM_DECAP_L3_IPV4
			asm.FnSkbAdjustRoom.Call(),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ebpf.ErrNotSupported, err)
	}
	defer prog.Close()
	// Ethernet, outer IPv4 and UDP, an inner IPv4 header.
	pkt := make([]byte, 14+20+8+20+8)
	binary.BigEndian.PutUint16(pkt[12:], 0x0800)
	for _, off := range []int{14, 42} {
		pkt[off] = 0x45
		binary.BigEndian.PutUint16(pkt[off+2:], uint16(len(pkt)-off))
	}
	pkt[14+9] = 17
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		return fmt.Errorf("run the decap probe: %w", err)
	}
	if ret != 0 {
		return fmt.Errorf("%w: bpf_skb_adjust_room returned %d", ebpf.ErrNotSupported, int32(ret))
	}
	return nil
}
