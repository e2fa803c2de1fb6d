//go:build linux

package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKubeFlags: upstream's Kubernetes flags, their defaults and
// FLANNELD_* variables.
func TestKubeFlags(t *testing.T) {
	o, err := parse(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := kubeOptions{annotationPrefix: "flannel.alpha.coreos.com", netConfPath: "/etc/kube-flannel/net-conf.json", setNodeNetworkUnavailable: true}
	if o.kube != want {
		t.Errorf("defaults %+v, want upstream's %+v", o.kube, want)
	}
	o, err = parse(t, []string{"--kube-subnet-mgr", "--kube-api-url=https://192.0.2.10:6443", "--kube-annotation-prefix=example.com/net",
		"--kubeconfig-file=/etc/kubernetes/kubeconfig", "--net-config-path=/etc/flannel/net-conf.json", "--set-node-network-unavailable=false"}, nil)
	want = kubeOptions{true, "https://192.0.2.10:6443", "example.com/net", "/etc/kubernetes/kubeconfig", "/etc/flannel/net-conf.json", false}
	if err != nil || o.kube != want {
		t.Errorf("flags: %+v %v, want %+v", o.kube, err, want)
	}
	o, err = parse(t, nil, map[string]string{"FLANNELD_KUBE_SUBNET_MGR": "true", "FLANNELD_KUBECONFIG_FILE": "/k", "FLANNELD_NET_CONFIG_PATH": "/n",
		"FLANNELD_KUBE_API_URL": "https://192.0.2.10:6443", "FLANNELD_KUBE_ANNOTATION_PREFIX": "example.com", "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE": "false"})
	want = kubeOptions{true, "https://192.0.2.10:6443", "example.com", "/k", "/n", false}
	if err != nil || o.kube != want {
		t.Errorf("environment: %+v %v, want %+v", o.kube, err, want)
	}
	if o, err := parse(t, nil, map[string]string{"FLANNELD_KUBE_SUBNET_MGR": "false"}); err != nil || o.kube.enabled {
		t.Errorf("FLANNELD_KUBE_SUBNET_MGR=false: %+v %v", o.kube, err)
	}
	// A bad prefix matters only in Kubernetes mode, as upstream.
	if _, err := parse(t, []string{"--kube-annotation-prefix=Example"}, nil); err != nil {
		t.Errorf("bad prefix in etcd mode refused: %v", err)
	}
	_, err = parse(t, []string{"--kube-subnet-mgr", "--kube-annotation-prefix=Example"}, nil)
	if err == nil || !strings.Contains(err.Error(), "--kube-annotation-prefix: subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*") {
		t.Errorf("bad prefix: %v", err)
	}
	_, err = parse(t, []string{"--kube-subnet-mgr", "--etcd-embedded=/var/lib/flannel/etcd"}, nil)
	if err == nil || !strings.Contains(err.Error(), "--etcd-embedded") {
		t.Errorf("--etcd-embedded with --kube-subnet-mgr: %v", err)
	}
}

// TestKubeModeStartErrors runs the daemon in Kubernetes mode with what an
// operator can get wrong before the API server is asked anything: it
// exits 1 at once, saying what to set.
func TestKubeModeStartErrors(t *testing.T) {
	for _, v := range []string{"NODE_NAME", "POD_NAME", "POD_NAMESPACE", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"} {
		t.Setenv(v, "")
	}
	missing := filepath.Join(t.TempDir(), "net-conf.json")
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{nil, nil, "give --kubeconfig-file or --kube-api-url"},
		{[]string{"--kube-api-url=https://127.0.0.1:1"}, nil, "env variables POD_NAME and POD_NAMESPACE must be set"},
		{[]string{"--kube-api-url=https://127.0.0.1:1", "--net-config-path=" + missing}, map[string]string{"NODE_NAME": "n1"}, "failed to read net conf: open " + missing},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		var out, errb bytes.Buffer
		start := time.Now()
		code := run(append([]string{"flanneld", "--kube-subnet-mgr"}, tc.args...), func(string) string { return "" }, &out, &errb)
		if code != 1 || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%v: exit %d, want 1 with %q:\n%s", tc.args, code, tc.want, errb.String())
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("%v: took %v", tc.args, d)
		}
		for k := range tc.env {
			t.Setenv(k, "")
		}
	}
}
