package fastpath

import (
	"fmt"
	"sort"
)

// Embedded describes the BPF object compiled into this binary (bpf2go's
// bpf_bpfel.o): the same little-endian object serves amd64 and arm64.
type Embedded struct {
	Programs []string // program names, sorted
	License  string   // the object's licence string, which the kernel checks
}

// EmbeddedObject parses the embedded object, without the kernel, so that
// flanneld --version can say whether this build carries the fast path.
func EmbeddedObject() (Embedded, error) {
	spec, err := loadBpf()
	if err != nil {
		return Embedded{}, fmt.Errorf("parse the embedded BPF object: %w", err)
	}
	var e Embedded
	for name, p := range spec.Programs {
		e.Programs = append(e.Programs, name)
		e.License = p.License
	}
	sort.Strings(e.Programs)
	return e, nil
}
