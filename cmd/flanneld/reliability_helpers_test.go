//go:build linux

package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flannel-go/flannel-go/internal/cluster"
	"github.com/flannel-go/flannel-go/internal/testbed"
	"github.com/flannel-go/flannel-go/lease"
)

// startWith starts a cluster shaped by opts (Flanneld and Dir are filled
// in), adds a container on every started node, and tears everything down
// when the test ends, printing every log on failure.
func startWith(t *testing.T, opts cluster.Options) *cluster.Cluster {
	t.Helper()
	testbed.RequireRoot(t)
	testbed.RequireTool(t, "ip")
	testbed.RequireTool(t, "ping")
	if opts.EtcdMembers > 0 {
		testbed.RequireTool(t, cluster.EtcdBinary)
	}
	opts.Flanneld, opts.Dir = flanneldBin, t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), max(90*time.Second, 3*opts.ReadyTimeout))
	defer cancel()
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs())
		}
		c.Close()
	})
	for _, n := range c.Nodes {
		if n.Running() {
			if _, err := n.AddContainer(ctx, "c1"); err != nil {
				t.Fatalf("add container: %v", err)
			}
		}
	}
	return c
}

// stream is a steady UDP echo exchange between two containers: one
// sequence-numbered datagram every interval, echoed back by the peer.
type stream struct {
	interval time.Duration
	start    time.Time
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	sent     []time.Time // send time by sequence number
	got      []bool      // whether the echo came back
	err      error
}

// startStream runs a stream from src to dst's address on port until Stop.
func startStream(t *testing.T, src, dst *testbed.Container, port int, interval time.Duration) *stream {
	t.Helper()
	var echo, conn net.PacketConn
	if err := dst.Do(func() (err error) {
		echo, err = net.ListenPacket("udp4", netip.AddrPortFrom(dst.Addr, uint16(port)).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := src.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", netip.AddrPortFrom(src.Addr, 0).String())
		return err
	}); err != nil {
		echo.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{interval: interval, start: time.Now(), cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	})
	wg.Go(func() {
		buf := make([]byte, 64)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if n != 8 {
				continue
			}
			seq := binary.BigEndian.Uint64(buf)
			s.mu.Lock()
			if seq < uint64(len(s.got)) {
				s.got[seq] = true
			}
			s.mu.Unlock()
		}
	})
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		to := &net.UDPAddr{IP: dst.Addr.AsSlice(), Port: port}
		var buf [8]byte
		for {
			select {
			case <-ctx.Done():
				// Let the last echoes come back, then stop both readers.
				deadline := time.Now().Add(3 * time.Second)
				for time.Now().Before(deadline) && !s.allBack() {
					time.Sleep(20 * time.Millisecond)
				}
				echo.Close()
				conn.Close()
				wg.Wait()
				return
			case <-tick.C:
			}
			s.mu.Lock()
			seq := uint64(len(s.sent))
			s.sent = append(s.sent, time.Now())
			s.got = append(s.got, false)
			s.mu.Unlock()
			binary.BigEndian.PutUint64(buf[:], seq)
			if _, err := conn.WriteTo(buf[:], to); err != nil {
				s.mu.Lock()
				s.err = err
				s.mu.Unlock()
			}
		}
	}()
	t.Cleanup(s.Stop)
	return s
}

func (s *stream) allBack() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ok := range s.got {
		if !ok {
			return false
		}
	}
	return true
}

// Stop ends the stream after the last echoes had time to return.
func (s *stream) Stop() {
	s.cancel()
	<-s.done
}

// streamStats summarises a stream.
type streamStats struct {
	Sent, Lost int
	// LastLost is the send time of the last datagram that never came back.
	LastLost time.Time
}

func (s *stream) stats() streamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := streamStats{Sent: len(s.sent)}
	for i, ok := range s.got {
		if !ok {
			st.Lost++
			st.LastLost = s.sent[i]
		}
	}
	return st
}

// lostBetween counts the datagrams sent in [from, to) that never came
// back, and returns the send time of the last of them.
func (s *stream) lostBetween(from, to time.Time) (n int, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, at := range s.sent {
		if !at.Before(from) && at.Before(to) && !s.got[i] {
			n++
			last = at
		}
	}
	return n, last
}

// firstBackAfter returns the send time of the first datagram sent at or
// after t whose echo came back, once one has.
func (s *stream) firstBackAfter(t time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, at := range s.sent {
		if !at.Before(t) && s.got[i] {
			return at, true
		}
	}
	return time.Time{}, false
}

// waitBackAfter waits until a datagram sent after t came back and returns
// how long after t it was sent.
func (s *stream) waitBackAfter(t *testing.T, since time.Time, timeout time.Duration) time.Duration {
	t.Helper()
	var at time.Time
	waitFor(t, timeout, "the stream flowing again", func() error {
		var ok bool
		if at, ok = s.firstBackAfter(since); !ok {
			return fmt.Errorf("no echo for datagrams sent since %s", since.Format(time.StampMilli))
		}
		return nil
	})
	return at.Sub(since)
}

// subnetsPrefix is where leases live in the test clusters.
const subnetsPrefix = cluster.DefaultPrefix + "/subnets/"

// putLease writes a lease for subnet held by ip, as another node would.
func putLease(t *testing.T, cli *clientv3.Client, subnet string, ip string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	key := subnetsPrefix + lease.SubnetKey(netip.MustParsePrefix(subnet))
	if _, err := cli.Put(ctx, key, string(lease.MarshalLeaseAttrs(netip.MustParseAddr(ip)))); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// countLeases is the number of keys under the subnets directory.
func countLeases(t *testing.T, cli *clientv3.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, subnetsPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(resp.Count)
}

// waitRoutes waits until every given node's flannel_routes gauge is want.
func waitRoutes(t *testing.T, timeout time.Duration, want int, nodes ...*cluster.Node) {
	t.Helper()
	for _, n := range nodes {
		waitFor(t, timeout, fmt.Sprintf("%s has %d routes", n.Host.Name, want), func() error {
			if got := metricValue(t, n, "flannel_routes"); int(got) != want {
				return fmt.Errorf("flannel_routes = %v", got)
			}
			return nil
		})
	}
}

// waitUnreachable waits until a ping from ct to dst is answered with an
// ICMP net unreachable or ICMPv6 destination unreachable: the router has
// no route for dst or no peer that carries it.
func waitUnreachable(t *testing.T, timeout time.Duration, ct *testbed.Container, dst netip.Addr) {
	t.Helper()
	// ping words ICMP's net unreachable and ICMPv6's no route differently.
	want := "Destination Net Unreachable"
	if dst.Is6() {
		want = "Destination unreachable"
	}
	waitFor(t, timeout, fmt.Sprintf("%s has no route to %s", ct.Name, dst), func() error {
		out, _ := ping(t.Context(), ct, dst)
		if !strings.Contains(out, want) {
			return fmt.Errorf("ping printed %q", out)
		}
		return nil
	})
}

// waitPing waits until ct's ping to dst is answered.
func waitPing(t *testing.T, timeout time.Duration, ct *testbed.Container, dst netip.Addr) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("ping %s -> %s", ct.Name, dst), func() error {
		if out, err := ping(t.Context(), ct, dst); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
}

// waitLog waits until n's log holds substr.
func waitLog(t *testing.T, timeout time.Duration, n *cluster.Node, substr string) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%s logs %q", n.Host.Name, substr), func() error {
		if !strings.Contains(n.Log(), substr) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// offlineEdit changes etcd while no flanneld can reach it: the (single)
// member is killed, restarted listening on loopback only in its own
// namespace, edit runs with a client there, and the member is killed
// again. The caller restarts it on its usual address.
func offlineEdit(t *testing.T, c *cluster.Cluster, edit func(cli *clientv3.Client)) {
	t.Helper()
	ctx := t.Context()
	m := c.EtcdMembers[0]
	m.Kill()
	usual := m.ClientURLs
	m.ClientURLs = []string{fmt.Sprintf("http://127.0.0.1:%d", cluster.EtcdPort)}
	defer func() { m.ClientURLs = usual }()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := cluster.NewEtcdClient(m.Host, m.ClientURLs...)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := cluster.WaitEtcd(ctx, cli, 30*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, m.Log())
	}
	edit(cli)
	m.Kill()
}
