//go:build linux && kube

package main

// The tests in this file run flanneld in Kubernetes mode against a real
// kube-apiserver (`make test-kube` builds it and sets FLANNEL_KUBE_BIN).
// The API server listens on this namespace's loopback only; each testbed
// host reaches it at the same address through kubetest's proxy. Node
// objects are made as the kubelet registers them and kube-controller-
// manager assigns their podCIDR.

import (
	"context"
	"fmt"
	stdmaps "maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/kubetest"
	"github.com/flannel-go/flannel-go/internal/kubetest/manifest"
	"github.com/flannel-go/flannel-go/internal/testbed"
)

// kubeNetConf is the test's net-conf.json: the manifest's, on the test
// bench's overlay range.
const kubeNetConf = `{"Network":"198.18.0.0/16","EnableNFTables":false,"Backend":{"Type":"udp"}}`

// The namespace and service account of the manifest.
const (
	flannelNS = "kube-flannel"
	flannelSA = "flannel"
)

// kubeletAnnotations are what a kubelet puts on the node it registers.
var kubeletAnnotations = map[string]string{
	"node.alpha.kubernetes.io/ttl":                           "0",
	"volumes.kubernetes.io/controller-managed-attach-detach": "true",
}

// kubeCluster is an API server and idle flanneld hosts that reach it.
type kubeCluster struct {
	*cluster.Cluster
	api *kubetest.Server
}

// startKube starts an API server and a testbed of hosts whose flanneld
// run in Kubernetes mode, not yet started; role is bound to the
// manifest's service account.
func startKube(t *testing.T, hosts int, role *rbacv1.ClusterRole) *kubeCluster {
	t.Helper()
	api := kubetest.Start(t)
	c := startWith(t, cluster.Options{Hosts: hosts, Kube: true, Config: kubeNetConf})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("=== kube-apiserver\n%s", tail(api.Log(), 60))
		}
	})
	for _, n := range c.Nodes {
		api.ServeIn(t, n.Host)
	}
	if role != nil {
		api.Bind(t, role, flannelNS, flannelSA)
	}
	return &kubeCluster{Cluster: c, api: api}
}

// manifestRole is the ClusterRole of dist/kube-flannel.yml: upstream's.
func manifestRole(t *testing.T) *rbacv1.ClusterRole {
	t.Helper()
	role, err := manifest.ClusterRole(filepath.Join("..", "..", "dist", "kube-flannel.yml"), "flannel")
	if err != nil {
		t.Fatal(err)
	}
	return role
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// registerNode creates node name as its kubelet registers it (no
// podCIDR), then gives it podCIDR as kube-controller-manager's node IPAM
// does, unless podCIDR is empty.
func (k *kubeCluster) registerNode(t *testing.T, name, podCIDR string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: stdmaps.Clone(kubeletAnnotations),
		Labels: map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}}
	if _, err := k.api.Admin.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("register node %s: %v", name, err)
	}
	if podCIDR != "" {
		k.assignPodCIDR(t, name, podCIDR)
	}
}

// assignPodCIDR patches the node's spec as kube-controller-manager does.
func (k *kubeCluster) assignPodCIDR(t *testing.T, name, podCIDR string) {
	t.Helper()
	patch := fmt.Sprintf(`{"spec":{"podCIDR":%q,"podCIDRs":[%q]}}`, podCIDR, podCIDR)
	if _, err := k.api.Admin.CoreV1().Nodes().Patch(context.Background(), name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatalf("assign podCIDR %s to %s: %v", podCIDR, name, err)
	}
}

// node reads a node object.
func (k *kubeCluster) node(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := k.api.Admin.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

// withKubeconfig makes n run as a node agent outside a pod: a kubeconfig
// with token, NODE_NAME naming its node.
func (k *kubeCluster) withKubeconfig(t *testing.T, n *cluster.Node, node, token string, args ...string) {
	t.Helper()
	n.Args = append([]string{"--kubeconfig-file=" + k.api.Kubeconfig(t, n.Dir, token)}, args...)
	n.Environ = []string{"NODE_NAME=" + node}
}

// asPod makes n run as the DaemonSet's pod on node would: a pod object
// whose spec.nodeName is node, POD_NAME and POD_NAMESPACE, and the
// in-cluster config (KUBERNETES_SERVICE_HOST and _PORT, the service
// account's token and CA at /var/run/secrets/kubernetes.io/serviceaccount,
// put there on a tmpfs over /run in flanneld's own mount namespace).
func (k *kubeCluster) asPod(t *testing.T, n *cluster.Node, node, token string) {
	t.Helper()
	testbed.RequireTool(t, "unshare")
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-ds-" + node, Namespace: flannelNS},
		Spec: corev1.PodSpec{NodeName: node, HostNetwork: true, ServiceAccountName: flannelSA,
			Containers: []corev1.Container{{Name: "kube-flannel", Image: "ghcr.io/flannel-go/flanneld:test"}}},
	}
	if _, err := k.api.Admin.CoreV1().Pods(flannelNS).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	sa := filepath.Join(n.Dir, "serviceaccount")
	ca, err := os.ReadFile(k.api.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(sa, 0o700)
	for name, data := range map[string][]byte{"token": []byte(token), "ca.crt": ca, "namespace": []byte(flannelNS)} {
		if err := os.WriteFile(filepath.Join(sa, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const mountSA = `mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p /run/secrets/kubernetes.io/serviceaccount && ` +
		`cp "$SA_FILES"/token "$SA_FILES"/ca.crt "$SA_FILES"/namespace /run/secrets/kubernetes.io/serviceaccount/ && exec "$@"`
	n.Wrap = []string{"unshare", "--mount", "--propagation", "private", "sh", "-c", mountSA, "sh"}
	n.Args = nil
	n.Environ = []string{"SA_FILES=" + sa, "POD_NAME=" + pod.Name, "POD_NAMESPACE=" + flannelNS,
		"KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=" + strconv.Itoa(k.api.Port)}
}

// startNode starts n's flanneld and waits until it is ready, with a
// container on its subnet.
func startNode(t *testing.T, n *cluster.Node) {
	t.Helper()
	ctx := t.Context()
	if !n.Running() {
		if err := n.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.WaitReady(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if n.Container == nil {
		if _, err := n.AddContainer(ctx, "c1"); err != nil {
			t.Fatal(err)
		}
	}
}

// carries checks traffic both ways between the containers of a and b:
// pings, and a SHA-256-checked TCP transfer each way.
func carries(t *testing.T, a, b *cluster.Node, port int) {
	t.Helper()
	ctx := t.Context()
	for _, p := range [][2]*cluster.Node{{a, b}, {b, a}} {
		from, to := p[0], p[1]
		waitFor(t, 15*time.Second, fmt.Sprintf("ping %s -> %s", from.Host.Name, to.Host.Name), func() error {
			out, err := ping(ctx, from.Container, to.Container.Addr)
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		res, err := cluster.Transfer(tctx, from.Container, to.Container, to.Container.Addr, port, 8<<20)
		cancel()
		if err != nil || !res.Match() {
			t.Fatalf("transfer %s -> %s: %v (SHA-256 match: %v)", from.Host.Name, to.Host.Name, err, res.Match())
		}
		port++
	}
}

// wantAnnotations are the annotations of a node registered by a kubelet
// and then published by a flanneld with public IP ip: upstream v0.28.9's
// udp backend writes these four (LeaseAttrs with an empty BackendType and
// nil BackendData, which json.RawMessage marshals as null).
func wantAnnotations(ip string) map[string]string {
	want := stdmaps.Clone(kubeletAnnotations)
	want["flannel.alpha.coreos.com/backend-data"] = "null"
	want["flannel.alpha.coreos.com/backend-type"] = ""
	want["flannel.alpha.coreos.com/kube-subnet-manager"] = "true"
	want["flannel.alpha.coreos.com/public-ip"] = ip
	return want
}

// TestKubeTwoNodes runs two flanneld in Kubernetes mode with upstream's
// ClusterRole: one as a node agent with a kubeconfig and NODE_NAME, one
// as the DaemonSet's pod (in-cluster config, POD_NAME/POD_NAMESPACE),
// whose node gets its podCIDR only after flanneld started. The
// annotations, the NetworkUnavailable condition and the subnet files are
// upstream's bytes, and the overlay carries traffic both ways.
func TestKubeTwoNodes(t *testing.T) {
	k := startKube(t, 2, manifestRole(t))
	n1, n2 := k.Nodes[0], k.Nodes[1]
	token := k.api.ServiceAccount(t, flannelNS, flannelSA)
	k.registerNode(t, "node-1", "198.18.1.0/24")
	k.registerNode(t, "node-2", "")
	k.withKubeconfig(t, n1, "node-1", token)
	k.asPod(t, n2, "node-2", token)
	if err := n2.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitLog(t, 30*time.Second, n2, `node-2\" has no podCIDR yet (spec.podCIDR is empty): waiting for one to be assigned`)
	k.assignPodCIDR(t, "node-2", "198.18.2.0/24")
	startNode(t, n1)
	startNode(t, n2)

	for i, n := range []*cluster.Node{n1, n2} {
		name := fmt.Sprintf("node-%d", i+1)
		got := k.node(t, name)
		if want := wantAnnotations(n.Host.Addr.String()); !stdmaps.Equal(got.Annotations, want) {
			t.Errorf("%s annotations:\n got %q\nwant %q", name, got.Annotations, want)
		}
		var cond *corev1.NodeCondition
		for i := range got.Status.Conditions {
			if got.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
				cond = &got.Status.Conditions[i]
			}
		}
		if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != "FlannelIsUp" || cond.Message != "Flannel is running on this node" {
			t.Errorf("%s NetworkUnavailable condition %+v, want False, FlannelIsUp, \"Flannel is running on this node\"", name, cond)
		}
		// Upstream's WriteSubnetFile for this lease: the first address of
		// the podCIDR, and the udp backend's MTU (1500 - 28).
		want := fmt.Sprintf("FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.%d.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n", i+1)
		if b, err := os.ReadFile(n.SubnetFile); err != nil || string(b) != want {
			t.Errorf("%s subnet file:\n%s(%v)\nwant\n%s", name, b, err, want)
		}
	}
	carries(t, n1, n2, 5301)
	t.Logf("annotations of node-1: %q", k.node(t, "node-1").Annotations)
}
