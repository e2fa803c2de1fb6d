package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Entrypoint is where the image keeps flanneld, as upstream's image does.
const Entrypoint = "/opt/bin/flanneld"

// Options are the inputs of an image; the same inputs give the same bytes.
type Options struct {
	Flanneld string // the static flanneld for Arch
	Debs     []Deb  // the lock
	DebsDir  string // where the locked .debs are (Fetch)
	// Docs are files for /usr/share/doc/flannel-go/ (LICENSE,
	// THIRD_PARTY_LICENSES) by base name.
	Docs    map[string][]byte
	Version string // the tag
	Commit  string
	Arch    string    // GOARCH and OCI architecture: amd64
	Created time.Time // SOURCE_DATE_EPOCH: every mtime and the created fields
}

// Build assembles the image: a layer of the locked Debian packages (with
// the links Debian's maintainer scripts would make: usrmerge's top
// directories and iptables' alternatives, pointing at the nft variants)
// and a layer with flanneld.
func Build(ctx context.Context, o Options) (*Layout, error) {
	debian, err := debianLayer(ctx, o)
	if err != nil {
		return nil, err
	}
	fl, err := flannelLayer(o)
	if err != nil {
		return nil, err
	}
	run := RunConfig{
		Entrypoint: []string{Entrypoint},
		Env:        []string{"PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":    "flannel-go",
			"org.opencontainers.image.version":  o.Version,
			"org.opencontainers.image.revision": o.Commit,
			"org.opencontainers.image.source":   "https://github.com/flannel-go/flannel-go",
			"org.opencontainers.image.description": "flanneld with iptables, ip6tables and nft from Debian; run with --net=host " +
				"--privileged -v /run/flannel:/run/flannel",
		},
	}
	createdBy := []string{
		fmt.Sprintf("Debian packages %v and their dependencies (/usr/share/doc/flannel-go/debs.lock)", Roots),
		"flanneld " + o.Version + " (" + o.Commit + ")",
	}
	return NewLayout([][]byte{debian, fl}, createdBy, run, o.Arch, o.Version, o.Created)
}

// iptablesLinks are the alternatives Debian's iptables postinst sets, to
// the nft variants (Debian 12's default).
var iptablesLinks = map[string]string{
	"usr/sbin/iptables": "iptables-nft", "usr/sbin/iptables-save": "iptables-nft-save",
	"usr/sbin/iptables-restore": "iptables-nft-restore", "usr/sbin/ip6tables": "ip6tables-nft",
	"usr/sbin/ip6tables-save": "ip6tables-nft-save", "usr/sbin/ip6tables-restore": "ip6tables-nft-restore",
}

func debianLayer(ctx context.Context, o Options) ([]byte, error) {
	t := Tree{}
	for _, d := range o.Debs {
		p := filepath.Join(o.DebsDir, d.File())
		if err := CheckFile(p, d.SHA256); err != nil {
			return nil, fmt.Errorf("%w (make image-debs fetches the locked packages)", err)
		}
		if err := t.AddDeb(ctx, p, d.Name); err != nil {
			return nil, err
		}
	}
	for top := range usrMerged {
		if _, ok := t["usr/"+top]; ok {
			if err := t.Symlink(top, "usr/"+top); err != nil {
				return nil, err
			}
		}
	}
	for link, target := range iptablesLinks {
		if _, ok := t["usr/sbin/"+target]; !ok {
			return nil, fmt.Errorf("%s is not in the iptables package: %s would dangle", target, link)
		}
		if err := t.Symlink(link, target); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{"dev", "proc", "sys", "run/flannel", "var/lib", "root"} {
		t.Dir(d, 0o755)
	}
	t.Dir("tmp", 0o1777)
	if err := t.Symlink("var/run", "/run"); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	err := t.WriteTar(&b, o.Created)
	return b.Bytes(), err
}

func flannelLayer(o Options) ([]byte, error) {
	bin, err := os.ReadFile(o.Flanneld)
	if err != nil {
		return nil, err
	}
	t := Tree{}
	if err := t.File("opt/bin/flanneld", bin, 0o755); err != nil {
		return nil, err
	}
	// flanneld acts as mk-docker-opts.sh when called so; the image has no
	// shell for dist/mk-docker-opts.sh.
	if err := t.Symlink("opt/bin/mk-docker-opts.sh", "flanneld"); err != nil {
		return nil, err
	}
	var lock bytes.Buffer
	if err := WriteLock(&lock, o.Debs); err != nil {
		return nil, err
	}
	docs := map[string][]byte{"debs.lock": lock.Bytes()}
	for name, data := range o.Docs {
		docs[name] = data
	}
	for name, data := range docs {
		if err := t.File("usr/share/doc/flannel-go/"+name, data, 0o644); err != nil {
			return nil, err
		}
	}
	var b bytes.Buffer
	err = t.WriteTar(&b, o.Created)
	return b.Bytes(), err
}
