package lease

import (
	"context"
	"fmt"
	"time"
)

// Reconnect backoff for broken etcd watches, as upstream (v0.26.4+).
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Keep renews the lease at Expiration-RenewMargin (new 24 h etcd lease plus
// an unconditional put, as upstream does) and retries a failed renewal every
// RetryInterval. It watches the node's own key: when the lease is revoked,
// deleted, expires or is taken over, Keep acquires a lease again (the same
// subnet when it is still free) and calls onChange with it. Reservations are
// never renewed. Keep returns nil when ctx is done; it never deletes the
// lease.
func (m *Manager) Keep(ctx context.Context, cfg *Config, l Lease, onChange func(Lease)) error {
	k := keeper{m: m, cfg: cfg, cur: l}
	m.setOwn(l)
	backoff := minBackoff
	for ctx.Err() == nil {
		e, found, rev, err := m.reg.get(ctx, k.cur.subnets())
		if err != nil {
			m.log.Warn("read own lease", "subnets", k.cur.subnets().display(), "err", err)
			_ = sleep(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		if !found || !m.owns(cfg, e) {
			if found && e.AttrsErr == nil {
				m.log.Error(fmt.Sprintf("Lease %s of this node (%s) was taken by the node with PublicIP %s; moving to another subnet", k.cur.subnets().display(), m.claimIP, holder(e)))
			}
			if !k.reacquire(ctx, onChange) {
				return nil
			}
			continue
		}
		k.leaseID = e.LeaseID
		if e.LeaseID == noLease {
			k.cur.Expiration = time.Time{}
		}
		lost, progressed := k.run(ctx, rev+1)
		if progressed {
			backoff = minBackoff
		}
		if lost {
			if !k.reacquire(ctx, onChange) {
				return nil
			}
			continue
		}
		if ctx.Err() == nil {
			_ = sleep(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
		}
	}
	return nil
}

type keeper struct {
	m       *Manager
	cfg     *Config
	cur     Lease
	leaseID leaseID
}

// run renews on schedule and follows the own key from rev until the lease is
// lost (lost), the watch breaks, or ctx is done. progressed reports whether
// the watch delivered anything.
func (k *keeper) run(ctx context.Context, rev int64) (lost, progressed bool) {
	m := k.m
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := m.reg.watchKey(wctx, k.cur.subnets(), rev)

	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	var timerC <-chan time.Time
	schedule := func(d time.Duration) {
		timer.Reset(d)
		timerC = timer.C
	}
	scheduleRenew := func() {
		if k.cur.Reservation() {
			timerC = nil
			return
		}
		d := max(time.Until(k.cur.Expiration.Add(-m.renewMargin)), 0)
		m.log.Info(fmt.Sprintf("Waiting for %s to renew lease", d))
		schedule(d)
	}
	scheduleRenew()

	for {
		select {
		case <-ctx.Done():
			return false, progressed
		case <-timerC:
			exp, id, err := m.reg.renew(ctx, k.cur.subnets(), m.attrs(k.cfg))
			if err != nil {
				if ctx.Err() != nil {
					return false, progressed
				}
				m.log.Error(fmt.Sprintf("Error renewing lease (trying again in %s): %v", m.retryInterval, err))
				m.obs.RenewFailed(err)
				schedule(m.retryInterval)
				continue
			}
			k.cur.Expiration, k.leaseID = exp, id
			m.log.Info(fmt.Sprintf("Lease renewed, new expiration: %s", exp))
			m.obs.LeaseRenewed(k.cur)
			scheduleRenew()
		case resp, ok := <-wch:
			if !ok {
				return false, progressed
			}
			if resp.ended() {
				if resp.Err != nil {
					m.log.Warn("own lease watch interrupted, restarting", "err", resp.Err)
				}
				return false, progressed
			}
			progressed = true
			for _, ev := range resp.Events {
				if ev.Deleted {
					m.log.Warn("Lease has been revoked, re-acquiring", "subnets", k.cur.subnets().display())
					return true, progressed
				}
				if ev.Entry.AttrsErr != nil {
					m.log.Error(fmt.Sprintf("Lease %s of this node (%s) was overwritten with a malformed value; acquiring a lease again", k.cur.subnets().display(), m.claimIP), "value", ev.Entry.Raw)
					return true, progressed
				}
				if !m.owns(k.cfg, ev.Entry) {
					// The new holder keeps the subnet: taking it back would
					// make both nodes' routes flap.
					m.log.Error(fmt.Sprintf("Lease %s of this node (%s) was taken by the node with PublicIP %s; moving to another subnet", k.cur.subnets().display(), m.claimIP, holder(ev.Entry)))
					return true, progressed
				}
				id := ev.Entry.LeaseID
				if id == k.leaseID {
					continue
				}
				k.leaseID = id
				exp, err := m.reg.expiration(ctx, id)
				if err != nil {
					m.log.Warn("read own lease TTL", "subnets", k.cur.subnets().display(), "err", err)
					return false, progressed
				}
				k.cur.Expiration = exp
				scheduleRenew()
			}
		}
	}
}

// reacquire loops until a lease is acquired (then calls onChange and
// returns true) or ctx is done.
func (k *keeper) reacquire(ctx context.Context, onChange func(Lease)) bool {
	m := k.m
	for {
		l, err := m.acquire(ctx, k.cfg, k.cur.subnets())
		if err == nil {
			k.cur = l
			m.setOwn(l)
			m.obs.LeaseAcquired(l)
			if onChange != nil {
				onChange(l)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		m.log.Error(fmt.Sprintf("Failed to re-acquire lease (trying again in %s): %v", m.retryInterval, err))
		if sleep(ctx, m.retryInterval) != nil {
			return false
		}
	}
}
