// Package manifest reads Kubernetes manifests (multi-document YAML) for
// tests: the objects, and a ClusterRole among them.
package manifest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

// Object is one document of a manifest: its kind and name, and the
// document as JSON.
type Object struct {
	Kind, Name, Namespace string
	JSON                  []byte
}

// Read reads the objects of a multi-document YAML file.
func Read(path string) ([]Object, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := yaml.NewYAMLReader(bufio.NewReader(f))
	var out []Object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		js, err := yaml.ToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		var meta struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := json.Unmarshal(js, &meta); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if meta.Kind == "" {
			continue // a document of comments only
		}
		out = append(out, Object{Kind: meta.Kind, Name: meta.Metadata.Name, Namespace: meta.Metadata.Namespace, JSON: js})
	}
}

// ClusterRole returns the ClusterRole name of the manifest at
// path.
func ClusterRole(path, name string) (*rbacv1.ClusterRole, error) {
	objs, err := Read(path)
	if err != nil {
		return nil, err
	}
	for _, o := range objs {
		if o.Kind == "ClusterRole" && o.Name == name {
			var r rbacv1.ClusterRole
			if err := json.Unmarshal(o.JSON, &r); err != nil {
				return nil, fmt.Errorf("%s: ClusterRole %s: %w", path, name, err)
			}
			return &r, nil
		}
	}
	return nil, fmt.Errorf("%s has no ClusterRole %s", path, name)
}
