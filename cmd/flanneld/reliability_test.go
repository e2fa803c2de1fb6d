//go:build linux

package main

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/lease"
)

// These tests break etcd, leases and the config under running flanneld
// processes. Each builds its own testbed, so they run in parallel; the two
// long ones (a 60 s etcd outage, 30 s of lease churn) set the pace.

const unreachableLine = "etcd is unreachable, retrying with backoff up to 5s"

// TestEtcdUnreachableAtStart: flanneld started while etcd is down waits
// (503 on /readyz, one log line), then comes up by itself.
func TestEtcdUnreachableAtStart(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, EtcdMembers: 1, Idle: 1})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	m := c.EtcdMembers[0]
	m.Kill()
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitLog(t, 20*time.Second, n2, unreachableLine)
	// Through several backoff rounds: not ready, alive, one line.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		code, _, err := n2.HTTPGet(ctx, "/readyz")
		if err != nil || code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz while etcd is down: %d %v, want 503", code, err)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	if code, _, err := n2.HTTPGet(ctx, "/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("/healthz while waiting for etcd: %d %v, want 200", code, err)
	}
	if k := strings.Count(n2.Log(), unreachableLine); k != 1 {
		t.Errorf("unreachable etcd logged %d times, want once", k)
	}

	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURED etcd unreachable at start: node ready %s after etcd was started", time.Since(started).Round(time.Millisecond))
	if k := strings.Count(n2.Log(), "etcd is reachable again"); k != 1 {
		t.Errorf("'etcd is reachable again' logged %d times, want once", k)
	}
	if k := strings.Count(n2.Log(), unreachableLine); k != 1 {
		t.Errorf("unreachable etcd logged %d times, want once", k)
	}
	if _, err := n2.AddContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	waitPing(t, 10*time.Second, n2.Container, n1.Container.Addr)
}

// TestEtcdOutage stops the only etcd member for 60 s while a stream flows
// between two nodes. Meanwhile a third node dies and its lease is removed,
// and a fourth node starts. Nothing of the stream may be lost; renewals due
// during the outage fail and are retried; when etcd returns, the removed
// node's route goes and the new node joins.
func TestEtcdOutage(t *testing.T) {
	t.Parallel()
	const outage = 60 * time.Second
	// A margin of 1439 min renews every minute, so a renewal falls due
	// during the outage.
	c := startWith(t, cluster.Options{Hosts: 4, EtcdMembers: 1, Idle: 1, Args: []string{"--subnet-lease-renew-margin=1439"}})
	ctx := t.Context()
	n1, n2, n3, n4 := c.Nodes[0], c.Nodes[1], c.Nodes[2], c.Nodes[3]
	m := c.EtcdMembers[0]

	// The first renewal is due 60 s after the lease was granted; start the
	// outage 20 s before it.
	resp, err := c.Etcd.Get(ctx, subnetsPrefix+lease.SubnetKey(n1.Env.Subnet))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("lease of node 1: %v %v", resp, err)
	}
	ttl, err := c.Etcd.TimeToLive(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
	if err != nil {
		t.Fatal(err)
	}
	renewAt := time.Now().Add(time.Duration(ttl.TTL)*time.Second - 1439*time.Minute)
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	st := startStream(t, n1.Container, n2.Container, 7001, 20*time.Millisecond)
	if wait := time.Until(renewAt.Add(-20 * time.Second)); wait > 0 {
		t.Logf("waiting %s for the renewal to fall inside the outage", wait.Round(time.Second))
		waitFor(t, wait+5*time.Second, "the outage start", func() error {
			if time.Now().Before(renewAt.Add(-20 * time.Second)) {
				return fmt.Errorf("renewal at %s", renewAt.Format(time.TimeOnly))
			}
			return nil
		})
	}

	down := time.Now()
	m.Kill()
	t.Logf("etcd killed; renewal due %s into the outage", renewAt.Sub(down).Round(time.Second))
	n3.Stop(syscall.SIGKILL, 5*time.Second)
	if err := n4.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Halfway, an operator removes the dead node's lease; no flanneld can
	// see etcd while that happens.
	waitFor(t, outage, "half the outage", func() error {
		if time.Since(down) < outage/2 {
			return fmt.Errorf("%s into the outage", time.Since(down).Round(time.Second))
		}
		return nil
	})
	offlineEdit(t, c, func(cli *clientv3.Client) {
		if _, err := cli.Delete(ctx, subnetsPrefix+lease.SubnetKey(n3.Env.Subnet)); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, outage, "the end of the outage", func() error {
		if time.Since(down) < outage {
			return fmt.Errorf("%s into the outage", time.Since(down).Round(time.Second))
		}
		for _, n := range []*cluster.Node{n1, n2} {
			if !n.Running() {
				return fmt.Errorf("flanneld on %s exited during the outage", n.Host.Name)
			}
		}
		if code, _, _ := n4.HTTPGet(ctx, "/readyz"); code != http.StatusServiceUnavailable {
			return fmt.Errorf("the new node answers /readyz %d while etcd is down", code)
		}
		return nil
	})
	if k, last := st.lostBetween(st.start, time.Now().Add(-time.Second)); k > 0 {
		t.Errorf("the stream lost %d datagrams during the outage, the last sent at %s", k, last.Format(time.StampMilli))
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Logf("etcd restarted after %s", back.Sub(down).Round(time.Second))

	if err := n4.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURED etcd outage: node started during the outage ready %s after etcd returned", time.Since(back).Round(time.Millisecond))
	if _, err := n4.AddContainer(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	waitPing(t, 15*time.Second, n1.Container, n4.Container.Addr)
	waitPing(t, 15*time.Second, n2.Container, n4.Container.Addr)
	t.Logf("MEASURED etcd outage: new node reachable from nodes 1 and 2 %s after etcd returned", time.Since(back).Round(time.Millisecond))
	// The new node may have been given the removed node's free subnet;
	// then its container answers there and the routes count shows the
	// removal.
	if n4.Env.Subnet != n3.Env.Subnet {
		waitUnreachable(t, 15*time.Second, n1.Container, n3.Container.Addr)
		waitUnreachable(t, 15*time.Second, n2.Container, n3.Container.Addr)
	}
	waitRoutes(t, 15*time.Second, 2, n1, n2, n4)
	t.Logf("MEASURED etcd outage: removed node's route gone on nodes 1 and 2 %s after etcd returned", time.Since(back).Round(time.Millisecond))

	for _, n := range []*cluster.Node{n1, n2} {
		if !strings.Contains(n.Log(), "Error renewing lease") {
			t.Errorf("%s: no renewal failed during the outage (renewal was due %s into it)", n.Host.Name, renewAt.Sub(down).Round(time.Second))
		}
	}
	// The retry comes RetryInterval (1 min, upstream's) after the failure.
	for _, n := range []*cluster.Node{n1, n2} {
		waitFor(t, 90*time.Second, n.Host.Name+" renews after the outage", func() error {
			log := n.Log()
			i := strings.LastIndex(log, "Error renewing lease")
			if i < 0 || !strings.Contains(log[i:], "Lease renewed") {
				return fmt.Errorf("no successful renewal after the failed one")
			}
			return nil
		})
	}
	st.Stop()
	s := st.stats()
	if s.Lost > 0 {
		t.Errorf("the stream lost %d of %d datagrams (last sent at %s; outage %s .. %s)", s.Lost, s.Sent,
			s.LastLost.Format(time.StampMilli), down.Format(time.StampMilli), back.Format(time.StampMilli))
	}
	t.Logf("MEASURED etcd outage: stream node1<->node2 %d datagrams over %s, %d lost", s.Sent, time.Since(st.start).Round(time.Second), s.Lost)
}

// TestEtcdMemberKilled: with three etcd members, killing the leader
// interrupts no lease, watch or traffic.
func TestEtcdMemberKilled(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, EtcdMembers: 3})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	if eps := c.EtcdEndpoints(); len(eps) != 3 {
		t.Fatalf("flanneld is given %v, want three endpoints", eps)
	}
	leases := map[string]int64{}
	for _, n := range c.Nodes {
		key := subnetsPrefix + lease.SubnetKey(n.Env.Subnet)
		resp, err := c.Etcd.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: %v %v", key, resp, err)
		}
		leases[key] = resp.Kvs[0].Lease
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	st := startStream(t, n1.Container, n2.Container, 7002, 10*time.Millisecond)

	leader, err := c.EtcdLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	leader.Kill()
	t.Logf("killed leader %s", leader.Name)

	var next *cluster.EtcdMember
	waitFor(t, 15*time.Second, "a new etcd leader", func() (err error) {
		next, err = c.EtcdLeader(ctx)
		return err
	})
	t.Logf("MEASURED etcd member killed: %s leader %s after the kill", next.Name, time.Since(killed).Round(time.Millisecond))
	// The watches still deliver: a new lease reaches both nodes.
	putLease(t, c.Etcd, "198.18.200.0/24", "192.0.2.200")
	waitRoutes(t, 15*time.Second, 2, n1, n2)
	t.Logf("MEASURED etcd member killed: a lease put after the kill reached both nodes %s after the kill", time.Since(killed).Round(time.Millisecond))
	if _, err := c.Etcd.Delete(ctx, subnetsPrefix+"198.18.200.0-24"); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, 15*time.Second, 1, n1, n2)
	// Keep the stream going for a while under the two-member cluster.
	waitFor(t, 10*time.Second, "5 s of stream after the kill", func() error {
		if d := time.Since(killed); d < 5*time.Second {
			return fmt.Errorf("%s", d)
		}
		return nil
	})

	st.Stop()
	s := st.stats()
	if s.Lost > 0 {
		t.Errorf("the stream lost %d of %d datagrams", s.Lost, s.Sent)
	}
	t.Logf("MEASURED etcd member killed: stream %d datagrams, %d lost", s.Sent, s.Lost)
	for key, id := range leases {
		resp, err := c.Etcd.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease != id {
			t.Errorf("lease %s changed after the kill: %v %v (etcd lease was %x)", key, resp, err, id)
		}
	}
	for _, n := range c.Nodes {
		if !n.Running() {
			t.Errorf("flanneld on %s exited", n.Host.Name)
		}
		for _, bad := range []string{"re-acquir", "Lease has been revoked"} {
			if strings.Contains(n.Log(), bad) {
				t.Errorf("%s logged %q after a member was killed", n.Host.Name, bad)
			}
		}
	}
}

// TestLeaseLostReacquired: a lease deleted by an operator, or whose etcd
// lease ends (what expiry does), is re-acquired in-process with the same
// subnet, and traffic flows again within the 1 s (asserted with
// margin: 3 s).
func TestLeaseLostReacquired(t *testing.T) {
	// Not parallel: it asserts a latency, which two cores shared with
	// other clusters would stretch.
	c := startWith(t, cluster.Options{Hosts: 2})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	key := subnetsPrefix + lease.SubnetKey(n2.Env.Subnet)
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	st := startStream(t, n1.Container, n2.Container, 7003, 10*time.Millisecond)

	for _, how := range []string{"deleted", "expired"} {
		resp, err := c.Etcd.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: %v %v", key, resp, err)
		}
		lost := time.Now()
		if how == "deleted" {
			_, err = c.Etcd.Delete(ctx, key)
		} else {
			_, err = c.Etcd.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease))
		}
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the lease back", func() error {
			r, err := c.Etcd.Get(ctx, key)
			if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != string(lease.MarshalLeaseAttrs(n2.Host.Addr)) {
				return fmt.Errorf("%v %v", r, err)
			}
			return nil
		})
		leaseBack := time.Since(lost)
		// Wait past the asserted bound, until the stream flows after it;
		// then the last datagram lost since the loss tells when traffic
		// came back.
		st.waitBackAfter(t, lost.Add(3*time.Second), 10*time.Second)
		ok, _ := st.firstBackAfter(lost.Add(3 * time.Second))
		k, last := st.lostBetween(lost, ok)
		gap := time.Duration(0)
		if k > 0 {
			gap = last.Sub(lost) + st.interval
		}
		t.Logf("MEASURED lease %s: key back after %s, traffic back after %s (%d datagrams lost)", how, leaseBack.Round(time.Millisecond), gap.Round(time.Millisecond), k)
		if gap > 3*time.Second {
			t.Errorf("lease %s: traffic back after %s, want within 1 s (asserted: 3 s)", how, gap)
		}
	}
	if !n2.Running() {
		t.Fatal("flanneld exited after losing its lease")
	}
	env, err := lease.ReadSubnetFile(n2.SubnetFile)
	if err != nil || env.Subnet != n2.Env.Subnet {
		t.Errorf("subnet file after re-acquisition: %+v %v, want subnet %s", env, err, n2.Env.Subnet)
	}
	if k := strings.Count(n2.Log(), "Lease re-acquired"); k != 2 {
		t.Errorf("'Lease re-acquired' logged %d times, want 2", k)
	}
}

// TestRestartSameSubnet: SIGTERM then start gives the same subnet and
// traffic back within the 2 s of the new process starting
// (asserted with margin: 4 s).
func TestRestartSameSubnet(t *testing.T) {
	// Not parallel: it asserts a latency, which two cores shared with
	// other clusters would stretch.
	c := startWith(t, cluster.Options{Hosts: 2})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	before := n2.Env.Subnet
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	st := startStream(t, n1.Container, n2.Container, 7004, 10*time.Millisecond)
	n2.Stop(syscall.SIGTERM, 10*time.Second)
	if code := n2.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	started := time.Now()
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back := st.waitBackAfter(t, started, 15*time.Second)
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("MEASURED restart: traffic back %s after the new process started (ready after %s)", back.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	if n2.Env.Subnet != before {
		t.Errorf("subnet after restart %s, want %s", n2.Env.Subnet, before)
	}
	if back > 4*time.Second {
		t.Errorf("traffic back %s after the start, want within 2 s (asserted: 4 s)", back)
	}
}

// TestLeaseChurn puts and deletes leases at 1,000 operations per second
// for 30 s while a stream flows between two stable nodes: nothing lost,
// and the routes end equal to the leases.
func TestLeaseChurn(t *testing.T) {
	t.Parallel()
	const (
		rate     = 1000
		duration = 30 * time.Second
		writers  = 10
	)
	// The nodes lease subnets 1..99; churn uses 100..227.
	cfg := `{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.0","SubnetMax":"198.18.99.0","Backend":{"Type":"udp"}}`
	c := startWith(t, cluster.Options{Hosts: 2, EtcdMembers: 1, Config: cfg})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	st := startStream(t, n1.Container, n2.Container, 7005, 10*time.Millisecond)

	grant, err := c.Etcd.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(duration)
	errc := make(chan error, writers)
	opsc := make(chan int, writers)
	for w := range writers {
		go func() {
			// Operations follow a fixed schedule, catching up when a
			// call was slow, so the rate holds under load.
			start, every := time.Now(), time.Second*writers/rate
			ops := 0
			defer func() { opsc <- ops }()
			for i := 0; time.Now().Before(end); i++ {
				if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
					time.Sleep(d) // pacing, not synchronisation
				}
				// Each writer owns subnets 100+w, 110+w, ... (13 slots):
				// it adds a lease to one slot, then removes the one 5 slots
				// ahead, so about 5 of its leases exist at any time.
				slot := (i / 2) % 13
				if i%2 == 1 {
					slot = (slot + 5) % 13
				}
				sub := 100 + w + 10*slot
				key := fmt.Sprintf("%s198.18.%d.0-24", subnetsPrefix, sub)
				var err error
				if i%2 == 0 {
					val := lease.MarshalLeaseAttrs(netip.AddrFrom4([4]byte{192, 0, 2, byte(100 + sub%100)}))
					_, err = c.Etcd.Put(ctx, key, string(val), clientv3.WithLease(grant.ID))
				} else {
					_, err = c.Etcd.Delete(ctx, key)
				}
				if err != nil {
					errc <- err
					return
				}
				ops++
			}
		}()
	}
	total := 0
	for range writers {
		total += <-opsc
	}
	close(errc)
	for err := range errc {
		t.Fatalf("churn: %v", err)
	}
	t.Logf("MEASURED lease churn: %d operations in %s (%.0f/s)", total, duration, float64(total)/duration.Seconds())

	leases := countLeases(t, c.Etcd)
	waitRoutes(t, 30*time.Second, leases-1, n1, n2)
	st.Stop()
	s := st.stats()
	t.Logf("MEASURED lease churn: %d leases at the end, flannel_routes %d on both nodes; stream %d datagrams, %d lost", leases, leases-1, s.Sent, s.Lost)
	if s.Lost > 0 {
		t.Errorf("the stream between the stable nodes lost %d of %d datagrams", s.Lost, s.Sent)
	}
	// Behaviour too: every churned subnet whose key is gone has no route.
	// With the route count equal to the lease count, the routes are
	// exactly the leases.
	resp, err := c.Etcd.Get(ctx, subnetsPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	present := map[string]bool{}
	for _, kv := range resp.Kvs {
		present[string(kv.Key)] = true
	}
	absent := 0
	for sub := 100; sub < 100+10*13; sub++ {
		if present[fmt.Sprintf("%s198.18.%d.0-24", subnetsPrefix, sub)] {
			continue
		}
		absent++
		dst := netip.AddrFrom4([4]byte{198, 18, byte(sub), 2})
		for _, n := range c.Nodes {
			if out, _ := ping(ctx, n.Container, dst); !strings.Contains(out, "Destination Net Unreachable") {
				t.Errorf("%s: %s has no lease but ping printed %q", n.Host.Name, dst, out)
			}
		}
	}
	t.Logf("checked %d subnets without a lease: no route on either node", absent)
	for _, n := range c.Nodes {
		if !n.Running() {
			t.Errorf("flanneld on %s exited", n.Host.Name)
		}
	}
}

// TestCompaction: a compaction under a live watch changes nothing; a watch
// that resumes behind a compaction (etcd was away while leases changed and
// history was compacted) re-lists once, misses nothing and does not loop
// (upstream #2470).
func TestCompaction(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2, EtcdMembers: 1})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	compact := func(cli *clientv3.Client) {
		r, err := cli.Put(ctx, "/unrelated", "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Compact(ctx, r.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
	}

	putLease(t, c.Etcd, "198.18.201.0/24", "192.0.2.201")
	waitRoutes(t, 10*time.Second, 2, n1, n2)
	compact(c.Etcd)
	putLease(t, c.Etcd, "198.18.202.0/24", "192.0.2.202")
	waitRoutes(t, 10*time.Second, 3, n1, n2)

	offlineEdit(t, c, func(cli *clientv3.Client) {
		putLease(t, cli, "198.18.203.0/24", "192.0.2.203")
		if _, err := cli.Delete(ctx, subnetsPrefix+"198.18.201.0-24"); err != nil {
			t.Fatal(err)
		}
		compact(cli)
	})
	if err := c.EtcdMembers[0].Start(ctx); err != nil {
		t.Fatal(err)
	}
	const relist = "subnet watch fell behind a compaction, re-listing"
	for _, n := range c.Nodes {
		waitLog(t, 30*time.Second, n, relist)
	}
	waitRoutes(t, 10*time.Second, 3, n1, n2)
	waitUnreachable(t, 10*time.Second, n1.Container, netip.MustParseAddr("198.18.201.2"))
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	// No hot loop: over the next 3 s nothing more is logged.
	lines := func(n *cluster.Node) int { return strings.Count(n.Log(), "\n") }
	base := []int{lines(n1), lines(n2)}
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		for i, n := range c.Nodes {
			if got := lines(n); got > base[i]+2 {
				t.Fatalf("%s logged %d lines in under 3 s after the re-list:\n%s", n.Host.Name, got-base[i], n.Log())
			}
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	for _, n := range c.Nodes {
		if k := strings.Count(n.Log(), relist); k != 1 {
			t.Errorf("%s re-listed %d times, want once", n.Host.Name, k)
		}
		t.Logf("MEASURED compaction: %s re-listed %d time(s), %d log lines in total", n.Host.Name, strings.Count(n.Log(), relist), lines(n))
	}
	// The stream goes on after the re-list.
	putLease(t, c.Etcd, "198.18.204.0/24", "192.0.2.204")
	waitRoutes(t, 10*time.Second, 4, n1, n2)
}

// TestMalformedEntries: malformed keys and values put into etcd are skipped
// and logged once; flanneld keeps running and never routes by them.
func TestMalformedEntries(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	bad := []struct{ key, value string }{
		// Keys upstream parses nowhere either (host bits and zero-padded
		// lengths it accepts: TestUpstreamKeyForms in lease).
		{"198.18.210.0-32", `{"PublicIP":"192.0.2.210"}`},
		{"198.18.211.0-24&2001:db8::-200", `{"PublicIP":"192.0.2.211"}`},
		{"not-a-subnet", `{"PublicIP":"192.0.2.212"}`},
		{"198.18.213.0-24", `{"PublicIP":"nonsense"}`},
		{"198.18.214.0-24", `{"PublicIP":"0.0.0.0"}`},
		{"198.18.215.0-24", `{"PublicIP":"224.0.0.1"}`},
		{"198.18.216.0-24", `{"PublicIP":"2001:db8::1"}`},
		{"198.18.217.0-24", `{"PublicIP":`},
		{"198.18.218.0-24", "\x00\xff"},
	}
	for _, b := range bad {
		if _, err := c.Etcd.Put(ctx, subnetsPrefix+b.key, b.value); err != nil {
			t.Fatal(err)
		}
	}
	// A valid lease after them: once it is routed, every bad one was seen.
	putLease(t, c.Etcd, "198.18.219.0/24", "192.0.2.219")
	waitRoutes(t, 10*time.Second, 2, n1, n2)
	// The same bad values again, and a good lease turned bad.
	for _, b := range bad {
		if _, err := c.Etcd.Put(ctx, subnetsPrefix+b.key, b.value); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Etcd.Put(ctx, subnetsPrefix+"198.18.219.0-24", `{"PublicIP":"bogus"}`); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, 10*time.Second, 1, n1, n2)
	waitUnreachable(t, 10*time.Second, n1.Container, netip.MustParseAddr("198.18.219.2"))
	waitUnreachable(t, 10*time.Second, n1.Container, netip.MustParseAddr("198.18.213.2"))
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	all := append(bad, struct{ key, value string }{"198.18.219.0-24", `{"PublicIP":"bogus"}`})
	once := func(n *cluster.Node, log string) {
		t.Helper()
		for _, b := range all {
			k := strings.Count(log, subnetsPrefix+b.key+" ") + strings.Count(log, subnetsPrefix+b.key+"\n")
			if k != 1 {
				t.Errorf("%s logged %s %d times, want once", n.Host.Name, b.key, k)
			}
		}
	}
	for _, n := range c.Nodes {
		if !n.Running() {
			t.Fatalf("flanneld on %s exited", n.Host.Name)
		}
		once(n, n.Log())
	}

	// A restarted node finds them in its first listing: once each again,
	// and not again when they are written anew.
	n2.Stop(syscall.SIGTERM, 10*time.Second)
	from := len(n2.Log())
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, b := range all {
		if _, err := c.Etcd.Put(ctx, subnetsPrefix+b.key, b.value); err != nil {
			t.Fatal(err)
		}
	}
	putLease(t, c.Etcd, "198.18.220.0/24", "192.0.2.220")
	waitRoutes(t, 10*time.Second, 2, n1, n2)
	once(n2, n2.Log()[from:])
}

// TestInvalidConfigWaits: each invalid config of spec §2.2 is logged once
// with its exact message while flanneld keeps waiting; a fixed config makes
// the node ready.
func TestInvalidConfigWaits(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 1, EtcdMembers: 1, Idle: 1})
	ctx := t.Context()
	n := c.Nodes[0]
	if _, err := c.Etcd.Delete(ctx, cluster.DefaultPrefix+"/config"); err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitLog(t, 15*time.Second, n, "Couldn't fetch network config: flannel config not found in etcd store. Did you create your config using etcdv3 API?")
	configs := []struct{ json, msg string }{
		{`{}`, "please define a correct Network parameter in the flannel config"},
		{`{"Network":"198.18.0.0/16","SubnetLen":31}`, "SubnetLen must be less than /31"},
		{`{"Network":"198.18.0.0/16","SubnetLen":17}`, "network must be able to accommodate at least four subnets"},
		{`{"Network":"198.18.0.0/29"}`, "network is too small. Minimum useful network prefix is /28"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"198.19.0.0"}`, "SubnetMin is not in the range of the Network"},
		{`{"Network":"198.18.0.0/16","SubnetMax":"198.19.0.0"}`, "SubnetMax is not in the range of the Network"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.5"}`, "SubnetMin is not on a SubnetLen boundary: 198.18.1.5"},
		{`{"Network":"198.18.0.0/16","SubnetMax":"198.18.200.128"}`, "SubnetMax is not on a SubnetLen boundary: 198.18.200.128"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true}`, "please define a correct IPv6Network parameter in the flannel config"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetLen":127}`, "SubnetLen must be less than /127"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/125"}`, "IPv6Network is too small. Minimum useful network prefix is /124"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db9::"}`, "IPv6SubnetMin is not in the range of the IPv6Network"},
		{`{"Network":"198.18.0.0/16","EnableIPv6":true,"IPv6Network":"2001:db8::/48","IPv6SubnetMin":"2001:db8:0:1::1"}`, "IPv6SubnetMin is not on a SubnetLen boundary: 2001:db8:0:1::1"},
		{`{"Network":"198.18.0.0/16","Backend":"udp"}`, "error decoding Backend property of config: "},
		{`{"Network":"198.18.0.0"}`, "invalid CIDR address: 198.18.0.0"},
		{`{"Network":"2001:db8::/48"}`, "invalid IPv4 CIDR format"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"bogus"}`, "invalid IP address format"},
		{`{"Network":"198.18.0.0/16","SubnetMin":"2001:db8::1"}`, "invalid IPv4 address format"},
	}
	for _, cf := range configs {
		if err := c.PutConfig(ctx, cf.json); err != nil {
			t.Fatal(err)
		}
		_, err := lease.ParseConfig([]byte(cf.json))
		if err == nil || !strings.HasPrefix(err.Error(), cf.msg) {
			t.Fatalf("ParseConfig(%s) = %v, want the spec's %q", cf.json, err, cf.msg)
		}
		waitLog(t, 10*time.Second, n, fmt.Sprintf("msg=%q", "Couldn't fetch network config: "+err.Error()))
		if code, _, _ := n.HTTPGet(ctx, "/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz = %d with config %s, want 503", code, cf.json)
		}
	}
	if err := c.PutConfig(ctx, `{"Network":"198.18.0.0/16","Backend":{"Type":"udp"}}`); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	log := n.Log()
	for _, cf := range configs {
		_, err := lease.ParseConfig([]byte(cf.json))
		line := fmt.Sprintf("msg=%q", "Couldn't fetch network config: "+err.Error())
		if k := strings.Count(log, line); k != 1 {
			t.Errorf("%s logged %d times, want once", line, k)
		}
	}
	if strings.Contains(log, unreachableLine) {
		t.Errorf("a config error was reported as unreachable etcd")
	}
}

// TestBadFlagExits: a flag out of range makes the binary exit 1 with a
// message naming the flag, before touching etcd or the network.
func TestBadFlagExits(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ arg, name string }{
		{"--subnet-lease-renew-margin=1440", "subnet-lease-renew-margin"},
		{"--subnet-lease-renew-margin=0", "subnet-lease-renew-margin"},
		{"--queues=0", "--queues"},
		{"--queues=257", "--queues"},
		{"--socket-buffer=1", "--socket-buffer"},
		{"--tun-txqueuelen=0", "--tun-txqueuelen"},
		{"--iptables-resync=0", "--iptables-resync"},
		{"--healthz-port=65536", "--healthz-port"},
		{"--etcd-endpoints=", "--etcd-endpoints"},
		{"--queues=many", "-queues"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		cmd := exec.CommandContext(ctx, flanneldBin, tt.arg, "--etcd-endpoints=http://127.0.0.1:1")
		if tt.name == "--etcd-endpoints" {
			cmd = exec.CommandContext(ctx, flanneldBin, tt.arg)
		}
		out, err := cmd.CombinedOutput()
		cancel()
		code := cmd.ProcessState.ExitCode()
		if code != 1 || !strings.Contains(string(out), tt.name) {
			t.Errorf("flanneld %s: exit %d (%v), output %q; want exit 1 naming %s", tt.arg, code, err, out, tt.name)
		}
	}
}

// TestPublicIPConflict: a node started with another running node's
// PublicIP names both nodes in one error and waits; the first node keeps
// its lease untouched and its traffic flowing.
func TestPublicIPConflict(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 3, Idle: 1})
	ctx := t.Context()
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	before, err := c.Etcd.Get(ctx, subnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	waitPing(t, 10*time.Second, n1.Container, n2.Container.Addr)
	st := startStream(t, n1.Container, n2.Container, 7006, 10*time.Millisecond)

	n3.Args = []string{"--public-ip=" + n2.Host.Addr.String()}
	if err := n3.Start(ctx); err != nil {
		t.Fatal(err)
	}
	const conflict = "is already used by the running flanneld on"
	waitLog(t, 20*time.Second, n3, conflict)
	// Watch for 3 s: no lease written, node 3 not ready, one error line.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		if !n3.Running() {
			t.Fatalf("node 3 exited:\n%s", n3.Log())
		}
		if code, _, _ := n3.HTTPGet(ctx, "/readyz"); code != http.StatusServiceUnavailable {
			t.Fatalf("node 3 /readyz %d while in conflict, want 503", code)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	var line string
	for _, l := range strings.Split(n3.Log(), "\n") {
		if strings.Contains(l, conflict) {
			line = l
		}
	}
	for _, want := range []string{"PublicIP " + n2.Host.Addr.String(), "eth0 " + n2.Host.Addr.String(), "eth0 " + n3.Host.Addr.String()} {
		if !strings.Contains(line, want) {
			t.Errorf("the conflict error does not name %q: %s", want, line)
		}
	}
	if k := strings.Count(n3.Log(), conflict); k != 1 {
		t.Errorf("conflict logged %d times, want once", k)
	}
	t.Logf("MEASURED PublicIP conflict: %s", line)
	after, err := c.Etcd.Get(ctx, subnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after.Kvs) != fmt.Sprint(before.Kvs) {
		t.Errorf("leases changed while the conflicting node waited:\n%v\nwant\n%v", after.Kvs, before.Kvs)
	}
	st.Stop()
	if s := st.stats(); s.Lost > 0 {
		t.Errorf("the stream to node 2 lost %d of %d datagrams", s.Lost, s.Sent)
	}
}

// TestLeaseTakenOver: another node takes this node's subnet. The node says
// who took it, moves to another subnet and leaves the taker alone: the
// keys settle, with no back-and-forth.
func TestLeaseTakenOver(t *testing.T) {
	t.Parallel()
	c := startWith(t, cluster.Options{Hosts: 2})
	ctx := t.Context()
	n1, n2 := c.Nodes[0], c.Nodes[1]
	old := n2.Env.Subnet
	key := subnetsPrefix + lease.SubnetKey(old)
	const taker = "192.0.2.250"
	putLease(t, c.Etcd, old.String(), taker)
	const taken = "was taken by the node with PublicIP " + taker
	waitLog(t, 10*time.Second, n2, taken)
	var moved netip.Prefix
	waitFor(t, 10*time.Second, "node 2 on a new subnet", func() error {
		env, err := lease.ReadSubnetFile(n2.SubnetFile)
		if err != nil || env.Subnet == old {
			return fmt.Errorf("subnet file %+v %v", env, err)
		}
		moved = env.Subnet
		return nil
	})
	waitRoutes(t, 10*time.Second, 2, n1) // node 2's new subnet and the taker's
	// Every address flanneld owns moves: the TUN's and, while the fast
	// path runs, its handoff device's.
	devs := []string{"flannel0"}
	if fastPathOn(t, n2) {
		devs = append(devs, handoffDev)
	}
	waitFor(t, 10*time.Second, "node 2's addresses on the new subnet", func() error {
		for _, dev := range devs {
			addrs := linkAddrs4(t, n2.Host, dev)
			if len(addrs) == 0 {
				return fmt.Errorf("%s has no IPv4 address", dev)
			}
			for _, a := range addrs {
				if !moved.Contains(a) {
					return fmt.Errorf("%s has %s, outside the new subnet %s", dev, a, moved)
				}
			}
		}
		return nil
	})
	resp, err := c.Etcd.Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	rev := resp.Kvs[0].ModRevision
	// 3 s of quiet: the taken key is not fought over.
	until := time.Now().Add(3 * time.Second)
	for time.Now().Before(until) {
		r, err := c.Etcd.Get(ctx, key)
		if err != nil || len(r.Kvs) != 1 || r.Kvs[0].ModRevision != rev {
			t.Fatalf("%s changed again: %v %v", key, r, err)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
	if k := strings.Count(n2.Log(), taken); k != 1 {
		t.Errorf("takeover logged %d times, want once", k)
	}
	line := ""
	for _, l := range strings.Split(n2.Log(), "\n") {
		if strings.Contains(l, taken) {
			line = l
		}
	}
	if !strings.Contains(line, old.String()) || !strings.Contains(line, n2.Host.Addr.String()) {
		t.Errorf("the takeover error does not name the subnet and this node: %s", line)
	}
	t.Logf("MEASURED lease taken over: node 2 moved %s -> %s; %s", old, moved, line)
}
