package router

import (
	"testing"
	"time"
)

func TestStageBuckets(t *testing.T) {
	var c stageCounters
	c.observe(StageSend, 3*time.Microsecond)   // <= 5 us
	c.observe(StageSend, 150*time.Microsecond) // <= 200 us
	c.observe(StageSend, time.Second)          // beyond the last bound
	var h [NumStages]StageHist
	c.addTo(&h)
	b := h[StageSend].Buckets
	if b[0] != 1 || b[5] != 1 || b[len(b)-1] != 1 {
		t.Errorf("buckets %v", b)
	}
	if want := uint64(time.Second + 153*time.Microsecond); h[StageSend].SumNs != want {
		t.Errorf("sum %d ns, want %d", h[StageSend].SumNs, want)
	}
	if h[StageTUNWrite].Buckets != ([len(StageBounds) + 1]uint64{}) {
		t.Error("another stage counted")
	}
}
