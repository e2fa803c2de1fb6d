package lease

// Observer learns what the Manager does with leases, for metrics. Its
// methods are called from the Manager's goroutines and must not block.
type Observer interface {
	// LeaseAcquired follows every acquisition, the first and each
	// re-acquisition after the lease was lost.
	LeaseAcquired(l Lease)
	// LeaseRenewed follows a renewal; l carries the new expiration.
	LeaseRenewed(l Lease)
	// RenewFailed follows a failed renewal, which is retried.
	RenewFailed(err error)
	// WatchResynced follows a re-list of all subnets after the watch fell
	// behind a compaction.
	WatchResynced()
}

// nopObserver is the Observer of a Manager given none.
type nopObserver struct{}

func (nopObserver) LeaseAcquired(Lease) {}
func (nopObserver) LeaseRenewed(Lease)  {}
func (nopObserver) RenewFailed(error)   {}
func (nopObserver) WatchResynced()      {}
