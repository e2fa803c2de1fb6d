package kube

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestRBACHint(t *testing.T) {
	// The API server's answer to a service account bound to a ClusterRole
	// without "patch" on nodes/status.
	forbidden := apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "n1",
		errors.New(`User "system:serviceaccount:kube-flannel:flannel" cannot patch resource "nodes/status" in API group "" at the cluster scope`))
	err := rbacHint(forbidden, "nodes/status", "patch")
	msg := err.Error()
	for _, want := range []string{`cannot patch resource "nodes/status"`, `grant verb "patch" on resource "nodes/status"`, `ClusterRole "flannel" of flannel-go's kube-flannel.yml`} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q does not say %q", msg, want)
		}
	}
	if !apierrors.IsForbidden(err) {
		t.Error("the hint hides that the answer was Forbidden")
	}
	list := apierrors.NewForbidden(schema.GroupResource{Resource: "nodes"}, "", errors.New(`User "u" cannot list resource "nodes" in API group "" at the cluster scope`))
	if msg := rbacHint(list, "nodes", "list", "watch").Error(); !strings.Contains(msg, `grant verbs "list", "watch" on resource "nodes"`) {
		t.Errorf("%q does not name both verbs", msg)
	}
	other := apierrors.NewServiceUnavailable("etcd is down")
	if got := rbacHint(other, "nodes/status", "patch"); got != other {
		t.Errorf("a non-RBAC error was changed: %v", got)
	}
}

func TestNodeNameFromEnvironment(t *testing.T) {
	env := func(kv map[string]string) func(string) string { return func(k string) string { return kv[k] } }
	// NODE_NAME needs no API call: a nil client is never used.
	if n, err := NodeName(context.Background(), nil, env(map[string]string{"NODE_NAME": "n1", "POD_NAME": "p"}), nil); err != nil || n != "n1" {
		t.Errorf("NODE_NAME: %q %v", n, err)
	}
	for _, kv := range []map[string]string{nil, {"POD_NAME": "p"}, {"POD_NAMESPACE": "kube-flannel"}} {
		_, err := NodeName(context.Background(), nil, env(kv), nil)
		if err == nil || !strings.Contains(err.Error(), "env variables POD_NAME and POD_NAMESPACE must be set") {
			t.Errorf("%v: %v", kv, err)
		}
	}
}

func TestRESTConfig(t *testing.T) {
	cfg, err := RESTConfig("https://127.0.0.1:6443", "")
	if err != nil || cfg.Host != "https://127.0.0.1:6443" {
		t.Fatalf("--kube-api-url alone: %+v %v", cfg, err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:7443"}}]
users: [{name: u, user: {token: secret-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = RESTConfig("", kc)
	if err != nil || cfg.Host != "https://127.0.0.1:7443" || cfg.BearerToken != "secret-token" {
		t.Fatalf("--kubeconfig-file: %+v %v", cfg, err)
	}
	// --kube-api-url overrides the kubeconfig's server, as upstream.
	if cfg, err = RESTConfig("https://127.0.0.1:8443", kc); err != nil || cfg.Host != "https://127.0.0.1:8443" {
		t.Fatalf("both: %+v %v", cfg, err)
	}
	if _, err := RESTConfig("", filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "fail to create kubernetes config") {
		t.Errorf("missing kubeconfig: %v", err)
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		_, err := RESTConfig("", "")
		if err == nil || !strings.Contains(err.Error(), "give --kubeconfig-file or --kube-api-url") {
			t.Errorf("outside a pod without flags: %v", err)
		}
	}
}

func TestReadNetConf(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "net-conf.json")
	if _, err := ReadNetConf(path); err == nil || !strings.Contains(err.Error(), "failed to read net conf") || !strings.Contains(err.Error(), path) {
		t.Errorf("missing file: %v", err)
	}
	os.WriteFile(path, []byte(`{"Network": "198.18.0.0/16", "Backend": {"Type": "udp"}`), 0o644)
	if _, err := ReadNetConf(path); err == nil || !strings.Contains(err.Error(), "error parsing subnet config "+path) {
		t.Errorf("truncated JSON: %v", err)
	}
	os.WriteFile(path, []byte(`{"Network": "198.18.0.0/30"}`), 0o644)
	if _, err := ReadNetConf(path); err == nil || !strings.Contains(err.Error(), "network is too small") {
		t.Errorf("small network: %v", err)
	}
	// The ConfigMap's net-conf.json of dist/kube-flannel.yml.
	os.WriteFile(path, []byte("{\n  \"Network\": \"10.244.0.0/16\",\n  \"EnableNFTables\": false,\n  \"Backend\": {\n    \"Type\": \"udp\"\n  }\n}\n"), 0o644)
	cfg, err := ReadNetConf(path)
	if err != nil || cfg.Network.String() != "10.244.0.0/16" || cfg.BackendType != "udp" || cfg.Port != 8285 || cfg.SubnetLen != 24 {
		t.Errorf("manifest's config: %+v %v", cfg, err)
	}
}

// FuzzParseNetConf: whatever the ConfigMap holds, a config that parses
// is in its derived form.
func FuzzParseNetConf(f *testing.F) {
	f.Add([]byte(`{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"udp"}}`))
	f.Add([]byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/56","Backend":{"Type":"udp","Port":8472}}`))
	f.Add([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"2001:db8::/48"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := ParseNetConf("net-conf.json", b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "error parsing subnet config net-conf.json: ") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%q: %+v does not validate: %v", b, cfg, err)
		}
	})
}
