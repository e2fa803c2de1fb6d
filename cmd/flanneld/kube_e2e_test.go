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
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

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
	k.createNode(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: stdmaps.Clone(kubeletAnnotations),
		Labels: map[string]string{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}}, podCIDR)
}

// createNode creates n, then assigns it podCIDR unless that is empty.
func (k *kubeCluster) createNode(t *testing.T, n *corev1.Node, podCIDR string) {
	t.Helper()
	name := n.Name
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
	n.Launch = func(ctx context.Context, args []string) *exec.Cmd {
		return n.Host.Command(ctx, "unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", mountSA, "sh", flanneldBin}, args...)...)
	}
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

// startTwo starts two nodes, node-1 and node-2 with podCIDRs
// 198.18.1.0/24 and 198.18.2.0/24, each with a kubeconfig, and waits
// until they reach each other.
func startTwo(t *testing.T) (*kubeCluster, *cluster.Node, *cluster.Node) {
	t.Helper()
	k := startKube(t, 2, manifestRole(t))
	token := k.api.ServiceAccount(t, flannelNS, flannelSA)
	for i, n := range k.Nodes {
		name := fmt.Sprintf("node-%d", i+1)
		k.registerNode(t, name, fmt.Sprintf("198.18.%d.0/24", i+1))
		k.withKubeconfig(t, n, name, token)
		startNode(t, n)
	}
	waitPing(t, 15*time.Second, k.Nodes[0].Container, k.Nodes[1].Container.Addr)
	waitPing(t, 15*time.Second, k.Nodes[1].Container, k.Nodes[0].Container.Addr)
	return k, k.Nodes[0], k.Nodes[1]
}

// upstreamPatch is the patch upstream v0.28.9's udp backend sends to
// nodes/status for a node without flannel annotations and public IP ip.
func upstreamPatch(ip string) string {
	return `{"metadata":{"annotations":{"flannel.alpha.coreos.com/backend-data":"null","flannel.alpha.coreos.com/backend-type":"",` +
		`"flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/public-ip":"` + ip + `"}}}`
}

// publishAsUpstream sends upstreamPatch for node with the given token, as
// an upstream flanneld with the manifest's service account does.
func (k *kubeCluster) publishAsUpstream(t *testing.T, token, node, ip string) {
	t.Helper()
	c, err := kubernetesClient(k.api, token)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CoreV1().Nodes().Patch(context.Background(), node, types.StrategicMergePatchType, []byte(upstreamPatch(ip)),
		metav1.PatchOptions{}, "status"); err != nil {
		t.Fatalf("publish %s as upstream: %v", node, err)
	}
}

// kubernetesClient is a client of api with token.
func kubernetesClient(api *kubetest.Server, token string) (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(api.RESTConfig(token))
}

// countIn counts the lines of n's log that hold s.
func countIn(n *cluster.Node, s string) int { return strings.Count(n.Log(), s) }

// TestKubeAPIServerRestart restarts the API server while a UDP stream
// flows between the two nodes' containers: not one datagram is lost (the
// data plane does not depend on the API server), both stay ready, and a
// node registered after the restart reaches node 1's routes, so its node
// informer listed and watched again.
func TestKubeAPIServerRestart(t *testing.T) {
	k, n1, n2 := startTwo(t)
	s := startStream(t, n1.Container, n2.Container, 5401, 10*time.Millisecond)
	start := time.Now()
	s.waitBackAfter(t, start, 10*time.Second)
	from := time.Now()
	k.api.Restart(t)
	// Keep the stream going while the informers reconnect.
	token := k.api.ServiceAccount(t, flannelNS, flannelSA)
	k.registerNode(t, "node-3", "198.18.3.0/24")
	k.publishAsUpstream(t, token, "node-3", "192.0.2.99")
	waitLog(t, 30*time.Second, n1, "Subnet added: 198.18.3.0/24")
	waitLog(t, 30*time.Second, n2, "Subnet added: 198.18.3.0/24")
	to := time.Now()
	s.Stop()
	if lost, last := s.lostBetween(from, to); lost > 0 {
		t.Errorf("%d datagrams lost across the API server restart, the last sent at %s", lost, last.Format(time.StampMilli))
	}
	st := s.stats()
	t.Logf("stream: %d datagrams over %s, %d lost; restart and resync took %s", st.Sent, time.Since(start).Round(time.Millisecond), st.Lost, to.Sub(from).Round(time.Millisecond))
	for _, n := range []*cluster.Node{n1, n2} {
		if code, _, err := n.HTTPGet(t.Context(), "/readyz"); err != nil || code != 200 || !n.Running() {
			t.Errorf("%s after the restart: /readyz %d %v, running %v", n.Host.Name, code, err, n.Running())
		}
	}
	carries(t, n1, n2, 5402)
}

// TestKubeNodeChurn deletes node-2's object and registers it again, as
// when a node is re-provisioned: node 1 drops its route and takes it back
// once node 2's flanneld has re-written its annotations (on an object
// with no annotations at all); then node-2 comes back with another
// podCIDR, and its flanneld moves to it.
func TestKubeNodeChurn(t *testing.T) {
	k, n1, n2 := startTwo(t)
	ctx := t.Context()
	if err := k.api.Admin.CoreV1().Nodes().Delete(ctx, "node-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, 30*time.Second, n1, "Subnet removed: 198.18.2.0/24")
	waitLog(t, 30*time.Second, n2, `Node \"node-2\" was deleted: peers drop its routes until it is registered again`)
	if out, err := ping(ctx, n1.Container, n2.Container.Addr); err == nil {
		t.Errorf("ping to the deleted node's container answered:\n%s", out)
	}

	// Back as a bare object: no annotations at all, on which upstream's
	// flanneld panics ("assignment to entry in nil map").
	k.createNode(t, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-2"}}, "198.18.2.0/24")
	waitLog(t, 30*time.Second, n2, `The annotations of node \"node-2\" are missing or differ: writing them again`)
	waitFor(t, 30*time.Second, "node 1 routes to node-2 again", func() error {
		if c := countIn(n1, "Subnet added: 198.18.2.0/24"); c != 2 {
			return fmt.Errorf("added %d times", c)
		}
		return nil
	})
	want := wantAnnotations(n2.Host.Addr.String())
	for k := range kubeletAnnotations {
		delete(want, k)
	}
	if got := k.node(t, "node-2").Annotations; !stdmaps.Equal(got, want) {
		t.Errorf("re-registered node-2's annotations:\n got %q\nwant %q", got, want)
	}
	waitFor(t, 30*time.Second, "NetworkUnavailable set again", func() error {
		for _, c := range k.node(t, "node-2").Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp" {
				return nil
			}
		}
		return fmt.Errorf("conditions %+v", k.node(t, "node-2").Status.Conditions)
	})
	carries(t, n1, n2, 5501)

	// Re-provisioned with another podCIDR: flanneld moves (the subnet file
	// and the TUN follow) and node 1 routes the new subnet only.
	if err := k.api.Admin.CoreV1().Nodes().Delete(ctx, "node-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, 30*time.Second, n1, "Subnet removed: 198.18.2.0/24")
	k.registerNode(t, "node-2", "198.18.22.0/24")
	waitLog(t, 30*time.Second, n1, "Subnet added: 198.18.22.0/24")
	wantFile := "FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.22.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"
	waitFor(t, 30*time.Second, "node 2's subnet file moves to 198.18.22.0/24", func() error {
		if b, err := os.ReadFile(n2.SubnetFile); err != nil || string(b) != wantFile {
			return fmt.Errorf("%q %v", b, err)
		}
		return nil
	})
	waitLog(t, 30*time.Second, n2, "Lease re-acquired with a different subnet")
	// node 1 reaches node 2's new TUN address, 198.18.22.0.
	waitPing(t, 15*time.Second, n1.Container, netip.MustParseAddr("198.18.22.0"))
}

// TestKubeRBACForbidden runs flanneld with ClusterRoles that lack one of
// upstream's rules: it exits 1 at once with an error naming what the API
// server refused and what to grant.
func TestKubeRBACForbidden(t *testing.T) {
	k := startKube(t, 1, nil)
	n := k.Nodes[0]
	k.registerNode(t, "node-1", "198.18.1.0/24")
	full := manifestRole(t)
	for _, tc := range []struct {
		name string
		drop string // the resource whose rule is left out
		want []string
	}{
		{"flannel-no-status", "nodes/status", []string{`cannot patch resource \"nodes/status\"`, `grant verb \"patch\" on resource \"nodes/status\"`}},
		{"flannel-no-nodes", "nodes", []string{`cannot list resource \"nodes\"`, `grant verbs \"list\", \"watch\" on resource \"nodes\"`}},
	} {
		role := full.DeepCopy()
		role.Name, role.Rules = tc.name, nil
		for _, r := range full.Rules {
			if r.Resources[0] != tc.drop {
				role.Rules = append(role.Rules, r)
			}
		}
		sa := tc.name
		k.api.Bind(t, role, flannelNS, sa)
		k.withKubeconfig(t, n, "node-1", k.api.ServiceAccount(t, flannelNS, sa))
		before := len(n.Log())
		if err := n.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, tc.name+": flanneld exits", func() error {
			if n.Running() {
				return fmt.Errorf("still running")
			}
			return nil
		})
		if code := n.ExitCode(); code != 1 {
			t.Errorf("%s: exit code %d, want 1", tc.name, code)
		}
		log := n.Log()[before:]
		for _, w := range tc.want {
			if !strings.Contains(log, w) {
				t.Errorf("%s: the log does not say %s:\n%s", tc.name, w, log)
			}
		}
	}
}

// upstreamPeers reads the peers as upstream's kube subnet manager does
// (nodeToLease, for the udp backend's IPv4): every node but self whose
// kube-subnet-manager annotation is "true", at its public-ip, with its
// IPv4 podCIDR. It lists with token, the manifest's service account.
func upstreamPeers(t *testing.T, api *kubetest.Server, token, self string) map[netip.Prefix]netip.Addr {
	t.Helper()
	c, err := kubernetesClient(api, token)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := c.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes as upstream: %v", err)
	}
	peers := map[netip.Prefix]netip.Addr{}
	for _, n := range nodes.Items {
		if n.Name == self || n.Annotations["flannel.alpha.coreos.com/kube-subnet-manager"] != "true" {
			continue
		}
		ip, err := netip.ParseAddr(n.Annotations["flannel.alpha.coreos.com/public-ip"])
		if err != nil {
			t.Fatalf("node %s: public-ip: %v", n.Name, err)
		}
		for _, c := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
			if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
				peers[p.Masked()] = ip
			}
		}
	}
	return peers
}

// TestKubeMixedCluster runs a flannel-go node next to an upstream
// flanneld's stand-in (the interop tests' proxy: raw inner packets over
// UDP 8285) on one API server. The stand-in publishes its node with the
// patch upstream's udp backend sends and finds flannel-go's node from its
// annotations as upstream reads them; pings and SHA-256-checked transfers
// go both ways between a container on each.
func TestKubeMixedCluster(t *testing.T) {
	k := startKube(t, 2, manifestRole(t))
	ctx := t.Context()
	ours, up := k.Nodes[0], k.Nodes[1]
	token := k.api.ServiceAccount(t, flannelNS, flannelSA)
	upSubnet := netip.MustParsePrefix("198.18.77.0/24")
	k.registerNode(t, "upstream-1", upSubnet.String())
	k.publishAsUpstream(t, token, "upstream-1", up.Host.Addr.String())
	k.registerNode(t, "node-1", "198.18.1.0/24")
	k.withKubeconfig(t, ours, "node-1", token)
	startNode(t, ours)
	waitLog(t, 30*time.Second, ours, "Subnet added: 198.18.77.0/24")

	peers := upstreamPeers(t, k.api, token, "upstream-1")
	if want := map[netip.Prefix]netip.Addr{netip.MustParsePrefix("198.18.1.0/24"): ours.Host.Addr}; !stdmaps.Equal(peers, want) {
		t.Fatalf("upstream sees peers %v, want %v", peers, want)
	}
	startUpstreamProxy(t, up.Host, upSubnet, peers)
	upCt, err := up.Host.AddContainer(ctx, "up1", netip.PrefixFrom(upSubnet.Addr().Next(), 24), 1472)
	if err != nil {
		t.Fatal(err)
	}
	port := 5601
	for _, p := range [][2]*testbed.Container{{ours.Container, upCt}, {upCt, ours.Container}} {
		from, to := p[0], p[1]
		waitPing(t, 15*time.Second, from, to.Addr)
		tctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		res, err := cluster.Transfer(tctx, from, to, to.Addr, port, 8<<20)
		cancel()
		if err != nil || !res.Match() {
			t.Fatalf("transfer %s -> %s: %v (SHA-256 match: %v)", from.Name, to.Name, err, res.Match())
		}
		port++
	}
	if got, want := k.node(t, "upstream-1").Annotations, wantAnnotations(up.Host.Addr.String()); !stdmaps.Equal(got, want) {
		t.Errorf("the stand-in's node holds %q, want upstream's %q", got, want)
	}
}

// TestKubePublicIPAnnotations: node-1 carries node-public-ip (used as
// --public-ip, here a second address of its interface) and node-2
// public-ip-overwrite (published instead of its own address). Each
// flanneld publishes what upstream's would, and each peer routes to it.
func TestKubePublicIPAnnotations(t *testing.T) {
	k := startKube(t, 2, manifestRole(t))
	ctx := t.Context()
	n1, n2 := k.Nodes[0], k.Nodes[1]
	token := k.api.ServiceAccount(t, flannelNS, flannelSA)
	if _, err := n1.Host.Run(ctx, "ip", "addr", "add", "192.0.2.101/24", "dev", n1.Host.Iface); err != nil {
		t.Fatal(err)
	}
	for i, ann := range []string{"node-public-ip", "public-ip-overwrite"} {
		name := fmt.Sprintf("node-%d", i+1)
		k.registerNode(t, name, fmt.Sprintf("198.18.%d.0/24", i+1))
		patch := fmt.Sprintf(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/%s":"192.0.2.%d"}}}`, ann, 101*(i+1))
		if _, err := k.api.Admin.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		k.withKubeconfig(t, k.Nodes[i], name, token)
		startNode(t, k.Nodes[i])
	}
	waitLog(t, 30*time.Second, n1, "Subnet added: 198.18.2.0/24\" public_ip=192.0.2.202")
	waitLog(t, 30*time.Second, n2, "Subnet added: 198.18.1.0/24\" public_ip=192.0.2.101")
	want1 := wantAnnotations("192.0.2.101")
	want1["flannel.alpha.coreos.com/node-public-ip"] = "192.0.2.101"
	want2 := wantAnnotations("192.0.2.202")
	want2["flannel.alpha.coreos.com/public-ip-overwrite"] = "192.0.2.202"
	for name, want := range map[string]map[string]string{"node-1": want1, "node-2": want2} {
		if got := k.node(t, name).Annotations; !stdmaps.Equal(got, want) {
			t.Errorf("%s annotations:\n got %q\nwant %q", name, got, want)
		}
	}
	if !strings.Contains(n2.Log(), `Overriding public ip with '192.0.2.202' from node annotation 'flannel.alpha.coreos.com/public-ip-overwrite'`) {
		t.Errorf("node 2 does not log upstream's override line:\n%s", n2.Log())
	}
}
