//go:build kube

package dist

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flannel-go/flannel-go/internal/kubetest"
)

// TestKubeManifestDryRun applies dist/kube-flannel.yml to a real API
// server with `kubectl apply --dry-run=server`: every object passes the
// server's validation and admission (PodSecurity included) without being
// created. A broken copy must fail, or the check proves nothing.
func TestKubeManifestDryRun(t *testing.T) {
	api := kubetest.Start(t)
	ctx := t.Context()
	// A server-side dry run creates nothing, so the namespaced objects
	// would not find their namespace: create it first, as a real apply of
	// the file has by the time it reaches them.
	if _, err := api.Kubectl(ctx, nil, "create", "namespace", "kube-flannel"); err != nil {
		t.Fatal(err)
	}
	out, err := api.Kubectl(ctx, nil, "apply", "--dry-run=server", "-f", kubeManifest)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"namespace/kube-flannel", "clusterrole.rbac.authorization.k8s.io/flannel created",
		"clusterrolebinding.rbac.authorization.k8s.io/flannel created", "serviceaccount/flannel created",
		"configmap/kube-flannel-cfg created", "daemonset.apps/kube-flannel-ds created"} {
		if !strings.Contains(out, want+" (server dry run)") && !strings.Contains(out, want+" configured (server dry run)") {
			t.Errorf("kubectl apply --dry-run=server does not report %s:\n%s", want, out)
		}
	}
	if got, err := api.Kubectl(ctx, nil, "get", "daemonsets", "-A", "-o", "name"); err != nil || strings.TrimSpace(got) != "" {
		t.Errorf("the dry run created %q (%v)", got, err)
	}

	b, err := os.ReadFile(kubeManifest)
	if err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(t.TempDir(), "broken.yml")
	os.WriteFile(broken, []byte(strings.Replace(string(b), "containerPort: 8081", "containerPort: 808100", 1)), 0o644)
	if out, err := api.Kubectl(ctx, nil, "apply", "--dry-run=server", "-f", broken); err == nil || !strings.Contains(out, "containerPort") {
		t.Errorf("a DaemonSet with port 808100 passed the dry run (%v):\n%s", err, out)
	}
}
