package fastpath

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/flannel-go/flannel-go/internal/testbed"
)

// TestProgramsLoad runs the verifier over both programs.
func TestProgramsLoad(t *testing.T) {
	testbed.RequireRoot(t)
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	var objs bpfObjects
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelBranch}}); err != nil {
		if os.Getenv("FASTPATH_VERBOSE") != "" {
			t.Logf("%+v", err)
		}
		t.Fatalf("load: %v", err)
	}
	objs.Close()
}
