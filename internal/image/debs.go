// Package image builds flannel-go's OCI container image without a
// container runtime: one layer of Debian packages (iptables, nftables and
// the libraries they link, unpacked with dpkg-deb from .debs pinned by
// dist/image/debs.lock), one layer with the static flanneld, written as an
// OCI image layout and an OCI archive whose bytes depend only on their
// inputs.
package image

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Roots are the packages the image is for; the lock holds them and
// everything they depend on.
var Roots = []string{"iptables", "nftables"}

// Deb is one pinned Debian package.
type Deb struct {
	Name, Version, Arch, SHA256 string
}

// File is the name apt-get download gives the package's file.
func (d Deb) File() string {
	return fmt.Sprintf("%s_%s_%s.deb", d.Name, strings.ReplaceAll(d.Version, ":", "%3a"), d.Arch)
}

// ReadLock parses a lock file: "name version arch sha256" per line, #
// comments and blank lines ignored.
func ReadLock(r io.Reader) ([]Deb, error) {
	var debs []Deb
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 || len(f[3]) != 64 {
			return nil, fmt.Errorf("lock line %d %q: want name version arch sha256", n, line)
		}
		debs = append(debs, Deb{f[0], f[1], f[2], f[3]})
	}
	return debs, sc.Err()
}

// WriteLock writes debs in ReadLock's format, sorted by name.
func WriteLock(w io.Writer, debs []Deb) error {
	sorted := append([]Deb(nil), debs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var b strings.Builder
	b.WriteString("# The Debian packages of the container image: iptables, nftables and what they\n")
	b.WriteString("# depend on. Regenerate with make image-lock (apt-cache: the candidates of the\n")
	b.WriteString("# configured archive); make image-debs downloads exactly these.\n")
	for _, d := range sorted {
		fmt.Fprintf(&b, "%s %s %s %s\n", d.Name, d.Version, d.Arch, d.SHA256)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Resolve asks apt-cache for the roots' dependency closure (Depends and
// Pre-Depends) and each package's candidate version and checksum.
func Resolve(ctx context.Context, roots []string) ([]Deb, error) {
	args := append([]string{"depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
		"--no-breaks", "--no-replaces", "--no-enhances"}, roots...)
	out, err := exec.CommandContext(ctx, "apt-cache", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends: %w (run apt-get update first)", err)
	}
	var debs []Deb
	for _, line := range strings.Split(string(out), "\n") {
		name := strings.TrimSpace(line)
		if name == "" || strings.HasPrefix(line, " ") || strings.HasPrefix(name, "<") {
			continue
		}
		d, err := candidate(ctx, name)
		if err != nil {
			return nil, err
		}
		debs = append(debs, d)
	}
	return debs, nil
}

// candidate returns the package apt would install for name.
func candidate(ctx context.Context, name string) (Deb, error) {
	pol, err := exec.CommandContext(ctx, "apt-cache", "policy", name).Output()
	if err != nil {
		return Deb{}, fmt.Errorf("apt-cache policy %s: %w", name, err)
	}
	var version string
	for _, l := range strings.Split(string(pol), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "Candidate: "); ok {
			version = v
		}
	}
	if version == "" || version == "(none)" {
		return Deb{}, fmt.Errorf("package %s has no candidate version (apt-get update?)", name)
	}
	show, err := exec.CommandContext(ctx, "apt-cache", "show", name+"="+version).Output()
	if err != nil {
		return Deb{}, fmt.Errorf("apt-cache show %s=%s: %w", name, version, err)
	}
	d := Deb{Name: name, Version: version}
	for _, l := range strings.Split(strings.SplitN(string(show), "\n\n", 2)[0], "\n") {
		if v, ok := strings.CutPrefix(l, "Architecture: "); ok {
			d.Arch = v
		}
		if v, ok := strings.CutPrefix(l, "SHA256: "); ok {
			d.SHA256 = v
		}
	}
	if d.Arch == "" || d.SHA256 == "" {
		return Deb{}, fmt.Errorf("apt-cache show %s=%s: no Architecture or SHA256", name, version)
	}
	return d, nil
}

// Fetch makes sure dir holds every locked .deb with its checksum,
// downloading the missing ones with apt-get download.
func Fetch(ctx context.Context, debs []Deb, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range debs {
		p := filepath.Join(dir, d.File())
		if CheckFile(p, d.SHA256) == nil {
			continue
		}
		cmd := exec.CommandContext(ctx, "apt-get", "download", "-q", d.Name+":"+d.Arch+"="+d.Version)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get download %s=%s: %w\n%s(if the archive moved on, make image-lock pins its current packages)", d.Name, d.Version, err, out)
		}
		if err := CheckFile(p, d.SHA256); err != nil {
			return err
		}
	}
	return nil
}

// CheckFile fails unless the file at p has the SHA-256 sum want (hex).
func CheckFile(p, want string) error {
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(b)
	if got := hex.EncodeToString(sum[:]); got != want {
		return fmt.Errorf("%s: sha256 %s, the lock says %s", p, got, want)
	}
	return nil
}

// fsysTar returns the data archive of a .deb, as dpkg-deb reads it.
func fsysTar(ctx context.Context, deb string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w\n%s", deb, err, stderr.String())
	}
	return out, nil
}
