package fastpath

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"unsafe"

	"github.com/flannel-go/flannel-go/internal/probe"
)

// TestProbeWireFormat checks the C program's probe (bpf/probe.h, and
// struct probe as bpf2go generated it) against package probe, the one
// definition of the format in Go.
func TestProbeWireFormat(t *testing.T) {
	var p bpfProbe
	if unsafe.Sizeof(p) != probe.Len || unsafe.Offsetof(p.Type) != 7 || unsafe.Offsetof(p.Nonce) != 8 || len(p.Magic) != len(probe.Magic) {
		t.Errorf("struct probe: %d bytes, type at %d, nonce at %d; want %d, 7, 8", unsafe.Sizeof(p), unsafe.Offsetof(p.Type), unsafe.Offsetof(p.Nonce), probe.Len)
	}
	src, err := os.ReadFile("bpf/probe.h")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"PROBE_LEN": probe.Len, "PROBE_ASK": int(probe.FastPathAsk), "PROBE_ANSWER": int(probe.FastPathAnswer)} {
		m := regexp.MustCompile(`#define ` + name + ` (\d+)`).FindSubmatch(src)
		if m == nil {
			t.Errorf("bpf/probe.h defines no %s", name)
			continue
		}
		if got, _ := strconv.Atoi(string(m[1])); got != want {
			t.Errorf("bpf/probe.h: %s is %d, package probe says %d", name, got, want)
		}
	}
	m := regexp.MustCompile(`probe_magic\[7\] = \{0x00, 'f', 'l', 'g', 'o', 'f', 'p'\}`).Find(src)
	if m == nil || probe.Magic != [7]byte{0x00, 'f', 'l', 'g', 'o', 'f', 'p'} {
		t.Errorf("bpf/probe.h's probe_magic and probe.Magic (% x) differ", probe.Magic)
	}
}
