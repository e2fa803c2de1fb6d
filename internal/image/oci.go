package image

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/flannel-go/flannel-go/internal/release"
)

// Media types of the OCI image spec.
const (
	MediaIndex    = "application/vnd.oci.image.index.v1+json"
	MediaManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaConfig   = "application/vnd.oci.image.config.v1+json"
	MediaLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"
	// RefName is the annotation that names a manifest in an index (its tag).
	RefName = "org.opencontainers.image.ref.name"
)

// Descriptor points at a blob.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Manifest is an OCI image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Index is an OCI image index (index.json of a layout).
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// RunConfig is the part of the image config a runtime executes.
type RunConfig struct {
	Entrypoint []string          `json:"Entrypoint"`
	Cmd        []string          `json:"Cmd,omitempty"`
	Env        []string          `json:"Env"`
	WorkingDir string            `json:"WorkingDir"`
	Labels     map[string]string `json:"Labels"`
}

// History is one entry of an image's history.
type History struct {
	Created   string `json:"created"`
	CreatedBy string `json:"created_by"`
}

// Config is an OCI image config.
type Config struct {
	Created      string    `json:"created"`
	Architecture string    `json:"architecture"`
	OS           string    `json:"os"`
	Config       RunConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []History `json:"history"`
}

// Layout is an image in memory: blobs by digest, plus index.json.
type Layout struct {
	Blobs map[string][]byte
	Index Index
	// Manifest is the digest of the one manifest.
	Manifest string
}

func digest(b []byte) string { return fmt.Sprintf("sha256:%x", sha256.Sum256(b)) }

func (l *Layout) add(b []byte) string {
	d := digest(b)
	l.Blobs[d] = b
	return d
}

// NewLayout assembles an image from uncompressed layer tars (bottom
// first), their history lines, and the run config. Layers are gzipped
// without name or timestamp; JSON is encoded in struct order.
func NewLayout(layers [][]byte, createdBy []string, run RunConfig, arch, tag string, created time.Time) (*Layout, error) {
	l := &Layout{Blobs: map[string][]byte{}}
	cfg := Config{Created: created.UTC().Format(time.RFC3339), Architecture: arch, OS: "linux", Config: run}
	cfg.RootFS.Type = "layers"
	m := Manifest{SchemaVersion: 2, MediaType: MediaManifest}
	for i, tarball := range layers {
		var z bytes.Buffer
		zw, err := gzip.NewWriterLevel(&z, gzip.BestCompression)
		if err != nil {
			return nil, err
		}
		if _, err := zw.Write(tarball); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, digest(tarball))
		cfg.History = append(cfg.History, History{Created: cfg.Created, CreatedBy: createdBy[i]})
		m.Layers = append(m.Layers, Descriptor{MediaType: MediaLayer, Digest: l.add(z.Bytes()), Size: int64(z.Len())})
	}
	cb, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	m.Config = Descriptor{MediaType: MediaConfig, Digest: l.add(cb), Size: int64(len(cb))}
	mb, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	l.Manifest = l.add(mb)
	l.Index = Index{SchemaVersion: 2, MediaType: MediaIndex, Manifests: []Descriptor{{
		MediaType: MediaManifest, Digest: l.Manifest, Size: int64(len(mb)),
		Annotations: map[string]string{RefName: tag},
	}}}
	return l, nil
}

// entries are the layout's files: oci-layout, index.json and the blobs.
func (l *Layout) entries() ([]release.Entry, error) {
	ib, err := json.Marshal(l.Index)
	if err != nil {
		return nil, err
	}
	es := []release.Entry{
		{Name: "oci-layout", Data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{Name: "index.json", Data: ib},
	}
	for d, b := range l.Blobs {
		es = append(es, release.Entry{Name: "blobs/sha256/" + d[len("sha256:"):], Data: b})
	}
	return es, nil
}

// WriteDir writes the layout as a directory (an OCI image layout).
func (l *Layout) WriteDir(dir string) error {
	es, err := l.entries()
	if err != nil {
		return err
	}
	for _, e := range es {
		p := filepath.Join(dir, filepath.FromSlash(e.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, e.Data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// WriteArchive writes the layout as an OCI archive (an uncompressed tar of
// the layout, what podman load and skopeo's oci-archive: read), sorted,
// root-owned, every mtime mtime.
func (l *Layout) WriteArchive(p string, mtime time.Time) error {
	es, err := l.entries()
	if err != nil {
		return err
	}
	var b bytes.Buffer
	if err := release.WriteTar(&b, "", es, mtime); err != nil {
		return err
	}
	return os.WriteFile(p, b.Bytes(), 0o644)
}
