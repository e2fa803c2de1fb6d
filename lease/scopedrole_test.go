package lease

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
)

// scopedClient enables authentication on the etcd behind admin and returns
// a client for a user whose role is what upstream flanneld needs and no
// more: read <prefix>/config, read-write the <prefix>/subnets prefix.
func scopedClient(t *testing.T, admin *clientv3.Client) *clientv3.Client {
	t.Helper()
	ctx := testCtx(t)
	must := func(what string, _ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	r1, err := admin.RoleAdd(ctx, "root")
	must("role add root", r1, err)
	r2, err := admin.UserAdd(ctx, "root", "root-pw-5d2e")
	must("user add root", r2, err)
	r3, err := admin.UserGrantRole(ctx, "root", "root")
	must("grant root", r3, err)
	r4, err := admin.RoleAdd(ctx, "flannel")
	must("role add flannel", r4, err)
	r5, err := admin.RoleGrantPermission(ctx, "flannel", prefix+"/config", "", clientv3.PermissionType(clientv3.PermRead))
	must("grant config", r5, err)
	subnets := prefix + "/subnets"
	r6, err := admin.RoleGrantPermission(ctx, "flannel", subnets, clientv3.GetPrefixRangeEnd(subnets), clientv3.PermissionType(clientv3.PermReadWrite))
	must("grant subnets", r6, err)
	r7, err := admin.UserAdd(ctx, "flannel-node", "node-pw-81c3")
	must("user add", r7, err)
	r8, err := admin.UserGrantRole(ctx, "flannel-node", "flannel")
	must("grant user", r8, err)
	r9, err := admin.AuthEnable(ctx)
	must("auth enable", r9, err)
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   admin.Endpoints(),
		DialTimeout: 5 * time.Second,
		Username:    "flannel-node",
		Password:    "node-pw-81c3",
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestScopedRole runs a node with a role scoped as upstream needs it: the
// PublicIP claim is refused by etcd, logged once with what it protects and
// what to grant, and the node acquires, renews and watches leases all the
// same, also when started again.
func TestScopedRole(t *testing.T) {
	admin := etcdtest.Embedded(t)
	put(t, admin, prefix+"/config", testConfig)
	cfg, err := ParseConfig([]byte(testConfig))
	if err != nil {
		t.Fatal(err)
	}
	put(t, admin, prefix+"/subnets/198.18.7.0-24", string(MarshalLeaseAttrs(netip.MustParseAddr("192.0.2.2"))))
	cli := scopedClient(t, admin)
	if _, err := cli.Put(testCtx(t), prefix+"/flannel-go/public-ips/192.0.2.1", "x"); err == nil || !permissionDenied(err) {
		t.Fatalf("the scoped role may write outside config and subnets (%v): the test proves nothing", err)
	}

	m, lb := newManager(cli, nodeA, Options{Prefix: prefix, Identity: "host a, interface eth0 192.0.2.1"})
	ctx := testCtx(t)
	if _, err := m.WaitConfig(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := m.Acquire(ctx, cfg)
	if err != nil {
		t.Fatalf("Acquire with a scoped role: %v", err)
	}
	if _, _, found := getKV(t, cli, l.Subnet); !found {
		t.Fatalf("lease %s not in etcd", l.Subnet)
	}
	if _, err := m.Acquire(ctx, cfg); err != nil {
		t.Fatalf("second Acquire: %v", err)
	}
	logs := lb.String()
	if n := strings.Count(logs, "PublicIP claim not permitted"); n != 1 {
		t.Errorf("claim refusal logged %d times, want once:\n%s", n, logs)
	}
	for _, w := range []string{"permission denied", "same PublicIP", "readwrite " + prefix + "/flannel-go/public-ips/", "--public-ip-claim=false"} {
		if !strings.Contains(logs, w) {
			t.Errorf("the claim refusal does not say %q:\n%s", w, logs)
		}
	}

	// Renewal and the watch work under the same role.
	if _, _, err := m.reg.renew(ctx, l.subnets(), LeaseAttrs{PublicIP: nodeA}); err != nil {
		t.Errorf("renew with a scoped role: %v", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan []Event, 4)
	go func() { _ = m.Watch(wctx, events) }()
	select {
	case batch := <-events:
		if len(batch) != 1 || SubnetKey(batch[0].Lease.Subnet) != "198.18.7.0-24" {
			t.Errorf("first watch batch %+v, want node B's lease", batch)
		}
	case <-time.After(waitFor):
		t.Fatal("no watch batch with a scoped role")
	}
}
