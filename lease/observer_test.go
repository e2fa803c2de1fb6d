package lease

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
)

type countingObserver struct {
	mu                            sync.Mutex
	acquired, renewed, failed, rs int
	last                          Lease
}

func (o *countingObserver) LeaseAcquired(l Lease) {
	o.mu.Lock()
	o.acquired++
	o.last = l
	o.mu.Unlock()
}
func (o *countingObserver) LeaseRenewed(l Lease) { o.mu.Lock(); o.renewed++; o.last = l; o.mu.Unlock() }
func (o *countingObserver) RenewFailed(error)    { o.mu.Lock(); o.failed++; o.mu.Unlock() }
func (o *countingObserver) WatchResynced()       { o.mu.Lock(); o.rs++; o.mu.Unlock() }

func (o *countingObserver) counts() (acquired, renewed int, last Lease) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.acquired, o.renewed, o.last
}

func TestObserverSeesAcquireRenewReacquire(t *testing.T) {
	cli := etcdtest.Embedded(t)
	cfg := putConfig(t, cli)
	obs := &countingObserver{}
	m, _ := newManager(cli, nodeA, Options{Observer: obs, RenewMargin: 24*time.Hour - 300*time.Millisecond})
	l, err := m.Acquire(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a, r, _ := obs.counts(); a != 1 || r != 0 {
		t.Fatalf("after Acquire: acquired %d renewed %d, want 1 0", a, r)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	go m.Keep(ctx, cfg, l, nil)
	eventually(t, "a renewal observed", func() bool {
		_, r, last := obs.counts()
		return r >= 1 && time.Until(last.Expiration) > 23*time.Hour
	})
	if _, err := cli.Delete(testCtx(t), subnetKeyPath(l.Subnet.String())); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the re-acquisition observed", func() bool {
		a, _, last := obs.counts()
		return a >= 2 && last.Subnet == l.Subnet
	})
}
