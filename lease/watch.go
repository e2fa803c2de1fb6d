package lease

import (
	"context"
)

// maxWarned bounds the memory spent remembering malformed entries.
const maxWarned = 4096

// Watch sends the current leases of other nodes as one batch of Added
// events, then every change: a put is Added, a delete Removed. After a
// compaction it re-lists and sends the difference from what it sent before;
// a broken stream is reopened with backoff (100 ms up to 5 s). The lease this
// Manager holds (from Acquire or Keep) is left out. Malformed keys and
// values are skipped with one warning each. Watch returns nil when ctx is
// done.
func (m *Manager) Watch(ctx context.Context, events chan<- []Event) error {
	w := watcher{m: m, events: events, known: map[subnets]Lease{}}
	backoff := minBackoff
	relist := true
	var rev int64
	for ctx.Err() == nil {
		if relist {
			r, err := w.snapshot(ctx)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				m.log.Warn("list subnets failed, retrying", "err", err, "in", backoff)
				_ = sleep(ctx, backoff)
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			rev, relist = r+1, false
		}
		var progressed bool
		rev, relist, progressed = w.follow(ctx, rev)
		if progressed {
			backoff = minBackoff
		}
		if relist || ctx.Err() != nil {
			continue
		}
		_ = sleep(ctx, backoff)
		backoff = min(2*backoff, maxBackoff)
	}
	return nil
}

type watcher struct {
	m      *Manager
	events chan<- []Event
	known  map[subnets]Lease
	// started is set once the first snapshot has been sent.
	started bool
}

// snapshot lists all leases, sends the difference from the known set and
// returns the snapshot revision.
func (w *watcher) snapshot(ctx context.Context) (int64, error) {
	entries, bad, rev, err := w.m.reg.list(ctx)
	if err != nil {
		return 0, err
	}
	for _, k := range bad {
		w.m.badKey(k)
	}
	current := make(map[subnets]Lease, len(entries))
	for _, e := range entries {
		if e.AttrsErr != nil {
			w.warn(e.Key, e.Raw, "ignoring subnet with malformed value", "err", e.AttrsErr)
			continue
		}
		l := w.lease(e)
		current[l.subnets()] = l
	}
	var batch []Event
	for p, l := range current {
		if old, ok := w.known[p]; !ok || old.PublicIP != l.PublicIP || old.PublicIPv6 != l.PublicIPv6 {
			batch = append(batch, Event{Type: EventAdded, Lease: l})
		}
	}
	for p, l := range w.known {
		if _, ok := current[p]; !ok {
			batch = append(batch, Event{Type: EventRemoved, Lease: l})
		}
	}
	w.known = current
	first := !w.started
	w.started = true
	return rev, w.send(ctx, batch, first)
}

// follow watches from rev, sending each response as one batch. It returns
// the revision to resume from, whether a re-list is needed (compaction), and
// whether any response arrived.
func (w *watcher) follow(ctx context.Context, rev int64) (next int64, relist, progressed bool) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for resp := range w.m.reg.watchSubnets(wctx, rev) {
		if resp.Compacted {
			w.m.log.Warn("subnet watch fell behind a compaction, re-listing", "rev", rev)
			w.m.obs.WatchResynced()
			return rev, true, progressed
		}
		if err := resp.Err; err != nil {
			w.m.log.Warn("subnet watch interrupted, reconnecting", "err", err)
			return rev, false, progressed
		}
		if resp.Canceled {
			return rev, false, progressed
		}
		progressed = true
		var batch []Event
		for _, ev := range resp.Events {
			if e, ok := w.event(ev); ok {
				batch = append(batch, e)
			}
		}
		if err := w.send(ctx, batch, false); err != nil {
			return rev, false, progressed
		}
		if resp.Rev >= rev {
			rev = resp.Rev + 1
		}
	}
	return rev, false, progressed
}

// event converts one etcd event and updates the known set.
func (w *watcher) event(ev watchEvent) (Event, bool) {
	e := ev.Entry
	if !ev.Valid {
		if !ev.Deleted {
			w.m.badKey(e.Key)
		}
		return Event{}, false
	}
	sn := subnets{e.Subnet, e.IPv6Subnet}
	old, had := w.known[sn]
	if ev.Deleted || e.AttrsErr != nil {
		if e.AttrsErr != nil && !ev.Deleted {
			w.warn(e.Key, e.Raw, "ignoring subnet with malformed value", "err", e.AttrsErr)
		}
		if !had {
			return Event{}, false
		}
		// A lease whose value turned malformed is removed too: a stale route
		// to its old PublicIP would be wrong.
		delete(w.known, sn)
		return Event{Type: EventRemoved, Lease: old}, true
	}
	l := w.lease(e)
	w.known[sn] = l
	return Event{Type: EventAdded, Lease: l}, true
}

// lease builds the Lease for an entry. It leaves Expiration zero: routes
// need none, and a TimeToLive call per event would put one etcd round trip
// in front of every route change (seconds behind a burst of 5,000 leases).
func (w *watcher) lease(e entry) Lease {
	return Lease{Subnet: e.Subnet, IPv6Subnet: e.IPv6Subnet, PublicIP: e.PublicIP, PublicIPv6: e.PublicIPv6}
}

// send delivers a batch without the own subnet. The first snapshot is sent
// even when empty, so the receiver knows the initial state is complete.
func (w *watcher) send(ctx context.Context, batch []Event, always bool) error {
	own := w.m.ownSubnets()
	out := batch[:0]
	for _, e := range batch {
		if e.Lease.subnets() == own {
			continue
		}
		out = append(out, e)
	}
	if len(out) == 0 && !always {
		return nil
	}
	select {
	case w.events <- out:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *watcher) warn(key, value, msg string, args ...any) {
	w.m.warnOnce(key, value, msg, args...)
}

// warnOnce logs a malformed entry once per key and value, whichever of
// Acquire and Watch meets it first.
func (m *Manager) warnOnce(key, value, msg string, args ...any) {
	m.warnMu.Lock()
	defer m.warnMu.Unlock()
	if v, ok := m.warned[key]; ok && v == value {
		return
	}
	if len(m.warned) >= maxWarned {
		clear(m.warned)
	}
	m.warned[key] = value
	m.log.Warn(msg, append([]any{"key", key}, args...)...)
}
