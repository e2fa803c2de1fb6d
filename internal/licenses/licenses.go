// Package licenses finds the licence files of every Go module linked into a
// binary, names their licences, and renders the THIRD_PARTY_LICENSES file
// that the release tarballs and the image carry. A test keeps that file
// current and the licences within an allowlist.
package licenses

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// Platforms are the targets flanneld is released for; a module linked on
// any of them is listed.
var Platforms = []string{"linux/amd64", "linux/arm64"}

// Module is one module linked into the binary.
type Module struct {
	Path    string
	Version string
	Dir     string // its directory in the module cache
	Files   []File // licence, notice and patent files in its root, by name
}

// File is one licence, notice or patent file of a module.
type File struct {
	Name string
	Text string
	IDs  []string // what Classify found in it
}

// licenceFile matches the names of the files that carry a module's terms.
var licenceFile = regexp.MustCompile(`(?i)^(licen[cs]e|copying|notice|patents)([-._].*)?$`)

// List returns the modules (the main module left out) whose packages go
// build links into pkg on any of Platforms, with their licence files. It
// runs go list in moduleDir offline: every module must be in the cache.
func List(ctx context.Context, moduleDir, pkg string) ([]Module, error) {
	byPath := map[string]*Module{}
	for _, p := range Platforms {
		goos, goarch, _ := strings.Cut(p, "/")
		cmd := exec.CommandContext(ctx, "go", "list", "-deps",
			"-f", "{{with .Module}}{{if not .Main}}{{.Path}}\t{{.Version}}\t{{.Dir}}{{end}}{{end}}", pkg)
		cmd.Dir = moduleDir
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0",
			"GOFLAGS=-mod=readonly", "GOPROXY=off")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("go list -deps %s for %s: %w\n%s", pkg, p, err, stderr.Bytes())
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Split(line, "\t")
			if len(f) != 3 {
				continue
			}
			if m, ok := byPath[f[0]]; ok && m.Version != f[1] {
				return nil, fmt.Errorf("%s links %s %s on %s but %s elsewhere", pkg, f[0], f[1], p, m.Version)
			}
			byPath[f[0]] = &Module{Path: f[0], Version: f[1], Dir: f[2]}
		}
	}
	mods := make([]Module, 0, len(byPath))
	for _, m := range byPath {
		if m.Dir == "" {
			return nil, fmt.Errorf("module %s %s is not in the module cache (run go mod download)", m.Path, m.Version)
		}
		files, err := ReadFiles(m.Dir)
		if err != nil {
			return nil, fmt.Errorf("module %s %s: %w", m.Path, m.Version, err)
		}
		m.Files = files
		mods = append(mods, *m)
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	return mods, nil
}

// ReadFiles reads and classifies the licence, notice and patent files in
// dir (not its subdirectories), sorted by name.
func ReadFiles(dir string) ([]File, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []File
	for _, e := range ents {
		if e.IsDir() || !licenceFile.MatchString(e.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		text := strings.TrimRight(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n") + "\n"
		ids := Classify(text)
		if strings.HasPrefix(strings.ToLower(e.Name()), "notice") {
			// Apache-2.0 NOTICE files have no fixed wording; what
			// matters is that they are passed on.
			ids = []string{Notice}
		}
		files = append(files, File{Name: e.Name(), Text: text, IDs: ids})
	}
	return files, nil
}

// Licences returns the SPDX identifiers found in m's licence files,
// sorted, without the notice and patent markers.
func (m Module) Licences() []string {
	seen := map[string]bool{}
	for _, f := range m.Files {
		for _, id := range f.IDs {
			if id != Notice && id != PatentGrant {
				seen[id] = true
			}
		}
	}
	ids := make([]string, 0, len(seen))
	for id := range seen {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// GoLicense returns the LICENSE of the Go distribution that go(1) uses:
// the standard library and runtime are linked into every binary.
func GoLicense(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "LICENSE"))
	if err != nil {
		return "", fmt.Errorf("the Go distribution's LICENSE: %w", err)
	}
	return string(b), nil
}
