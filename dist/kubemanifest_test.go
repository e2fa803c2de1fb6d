package dist

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/flannel-go/flannel-go/internal/kubetest/manifest"
	"github.com/flannel-go/flannel-go/lease/kube"
)

// kubeManifest is the DaemonSet manifest, next to this file.
const kubeManifest = "kube-flannel.yml"

// TestKubeManifestClusterRole: the ClusterRole is upstream v0.28.9's
// (Documentation/kube-flannel.yml), rule for rule and verb for verb: what
// flanneld needs in Kubernetes mode, and no more.
func TestKubeManifestClusterRole(t *testing.T) {
	role, err := manifest.ClusterRole(kubeManifest, "flannel")
	if err != nil {
		t.Fatal(err)
	}
	upstream := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
	}
	if !reflect.DeepEqual(role.Rules, upstream) {
		t.Errorf("rules %+v, want upstream's %+v", role.Rules, upstream)
	}
	if role.Labels["k8s-app"] != "flannel" {
		t.Errorf("labels %v", role.Labels)
	}
}

// TestKubeManifestContents checks what flanneld and upstream's CNI plugin
// read from the manifest: net-conf.json parses for the udp backend, the
// CNI config is upstream's, and the DaemonSet runs flannel-go's image in
// Kubernetes mode with the pod's name and namespace and a TUN device.
func TestKubeManifestContents(t *testing.T) {
	objs, err := manifest.Read(kubeManifest)
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	var cm corev1.ConfigMap
	var ds appsv1.DaemonSet
	for _, o := range objs {
		kinds = append(kinds, o.Kind+"/"+o.Name)
		switch o.Kind {
		case "ConfigMap":
			err = json.Unmarshal(o.JSON, &cm)
		case "DaemonSet":
			err = json.Unmarshal(o.JSON, &ds)
		}
		if err != nil {
			t.Fatalf("%s %s: %v", o.Kind, o.Name, err)
		}
	}
	want := "Namespace/kube-flannel ClusterRole/flannel ClusterRoleBinding/flannel ServiceAccount/flannel ConfigMap/kube-flannel-cfg DaemonSet/kube-flannel-ds"
	if got := strings.Join(kinds, " "); got != want {
		t.Errorf("objects %s, want upstream's %s", got, want)
	}
	cfg, err := kube.ParseNetConf("net-conf.json", []byte(cm.Data["net-conf.json"]))
	if err != nil || cfg.BackendType != "udp" || cfg.Network.String() != "10.244.0.0/16" {
		t.Errorf("net-conf.json: %+v %v", cfg, err)
	}
	var cni, upstreamCNI any
	json.Unmarshal([]byte(cm.Data["cni-conf.json"]), &cni)
	json.Unmarshal([]byte(`{"name":"cbr0","cniVersion":"0.3.1","plugins":[{"type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}},`+
		`{"type":"portmap","capabilities":{"portMappings":true}}]}`), &upstreamCNI)
	if !reflect.DeepEqual(cni, upstreamCNI) {
		t.Errorf("cni-conf.json %v, want upstream's %v", cni, upstreamCNI)
	}
	checkFlannelContainer(t, ds.Spec.Template.Spec)
}

func checkFlannelContainer(t *testing.T, pod corev1.PodSpec) {
	t.Helper()
	if len(pod.Containers) != 1 || !pod.HostNetwork || pod.ServiceAccountName != "flannel" {
		t.Fatalf("pod spec: %d containers, hostNetwork %v, service account %q", len(pod.Containers), pod.HostNetwork, pod.ServiceAccountName)
	}
	c := pod.Containers[0]
	if !strings.HasPrefix(c.Image, "ghcr.io/flannel-go/flanneld:") {
		t.Errorf("image %s", c.Image)
	}
	if strings.Join(c.Args, " ") != "--ip-masq --kube-subnet-mgr --healthz-port=8081" {
		t.Errorf("args %q", c.Args)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("env %v: POD_NAME and POD_NAMESPACE find the node", env)
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	for name, path := range map[string]string{"run": "/run/flannel", "flannel-cfg": "/etc/kube-flannel/", "dev-net-tun": "/dev/net/tun"} {
		if mounts[name] != path {
			t.Errorf("volume %s mounted at %q, want %s", name, mounts[name], path)
		}
	}
}
