package kernelmatrix

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ModuleIndex is a kernel's modules.dep and modules.builtin: which file
// holds a module, what it needs loaded first, and which modules are built
// in.
type ModuleIndex struct {
	files   map[string]string   // module name -> path relative to the release dir
	deps    map[string][]string // module name -> its dependencies' names
	builtin map[string]bool
}

// moduleName is the name modprobe knows a module file by: the base name
// without .ko and compression suffix, with '-' read as '_'.
func moduleName(file string) string {
	base := path.Base(file)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ReadModuleIndex reads the index depmod wrote in dir (lib/modules/RELEASE).
func ReadModuleIndex(dir string) (*ModuleIndex, error) {
	dep, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer dep.Close()
	idx, err := parseModulesDep(dep)
	if err != nil {
		return nil, err
	}
	if b, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		defer b.Close()
		sc := bufio.NewScanner(b)
		for sc.Scan() {
			idx.builtin[moduleName(sc.Text())] = true
		}
	}
	return idx, nil
}

// parseModulesDep reads lines of "file: dep-file dep-file ...".
func parseModulesDep(r io.Reader) (*ModuleIndex, error) {
	idx := &ModuleIndex{files: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := moduleName(file)
		idx.files[name] = file
		for _, d := range strings.Fields(rest) {
			idx.deps[name] = append(idx.deps[name], moduleName(d))
		}
	}
	return idx, sc.Err()
}

// LoadOrder returns the files of names and of everything they depend on,
// each after its dependencies, each once; built-in modules are left out.
// A name that is neither a module nor built in is an error.
func (idx *ModuleIndex) LoadOrder(names ...string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string) error
	visit = func(n string) error {
		n = strings.ReplaceAll(n, "-", "_")
		switch state[n] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", n)
		case 2:
			return nil
		}
		file, ok := idx.files[n]
		if !ok {
			if idx.builtin[n] {
				state[n] = 2
				return nil
			}
			return fmt.Errorf("module %s: neither in modules.dep nor built in", n)
		}
		state[n] = 1
		for _, d := range idx.deps[n] {
			if err := visit(d); err != nil {
				return err
			}
		}
		state[n] = 2
		order = append(order, file)
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return order, nil
}
