package router

import "testing"

func TestBatchSizeBuckets(t *testing.T) {
	var c counters
	for _, n := range []int{1, 2, 3, 4, 5, 64, 65, 128, 129, 1000} {
		c.batch(n)
	}
	var sizes [len(BatchSizeBounds) + 1]uint64
	sumBatches(&sizes, &c)
	// Buckets: <=1, <=2, <=4, <=8, <=16, <=32, <=64, <=128, more.
	want := [len(BatchSizeBounds) + 1]uint64{1, 1, 2, 1, 0, 0, 1, 2, 2}
	if sizes != want {
		t.Fatalf("buckets %v, want %v", sizes, want)
	}
	if c.batches.Load() != 10 || c.batchPackets.Load() != 1+2+3+4+5+64+65+128+129+1000 {
		t.Fatalf("batches %d packets %d", c.batches.Load(), c.batchPackets.Load())
	}
	if allocs := testing.AllocsPerRun(100, func() { c.batch(17) }); allocs != 0 {
		t.Fatalf("batch allocates %v", allocs)
	}
}
