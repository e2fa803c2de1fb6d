package fastpath

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestProgramsLoad runs the verifier over every variant of the programs
// this kernel can run (each subset of the features it has), attached as
// tcx links or as cls_bpf filters (heartbeat), for IPv4 and dual-stack
// networks. FASTPATH_VERBOSE=1 logs the verifier's output on failure.
func TestProgramsLoad(t *testing.T) {
	testbed.RequireRoot(t)
	have, err := ProbeFeatures()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel features: %s", Variant(have))
	for f := Feature(0); f <= AllFeatures; f++ {
		if f&^have != 0 {
			continue
		}
		for _, heartbeat := range []bool{false, true} {
			for _, ipv6 := range []bool{false, true} {
				s := testSettings(t)
				s.features, s.heartbeat, s.carryIPv6 = f, heartbeat, ipv6
				t.Run(fmt.Sprintf("%s/heartbeat=%v/ipv6=%v", Variant(f), heartbeat, ipv6), func(t *testing.T) {
					var objs bpfObjects
					if err := loadObjects(s, &objs); err != nil {
						if os.Getenv("FASTPATH_VERBOSE") != "" {
							var ve *ebpf.VerifierError
							if errors.As(err, &ve) {
								t.Logf("%+v", ve)
							}
						}
						t.Fatalf("load: %v", err)
					}
					objs.Close()
				})
			}
		}
	}
}
