package fastpath

import "testing"

// TestCounterTable checks that counters names every value of the C enum
// counter once, in order, and that every pass and drop reason has a label.
func TestCounterTable(t *testing.T) {
	if len(counters) != numCounters {
		t.Fatalf("counters has %d entries, enum counter %d values", len(counters), numCounters)
	}
	seen := map[string]bool{}
	for i, c := range counters {
		if int(c.id) != i {
			t.Errorf("counters[%d] is enum value %d", i, c.id)
		}
		if c.help == "" {
			t.Errorf("counter %d has no help", c.id)
		}
		if c.kind == kindPassed || c.kind == kindDropped {
			key := [2]string{"pass", "drop"}[c.kind-kindPassed] + "/" + c.reason
			if c.reason == "" || seen[key] {
				t.Errorf("counter %d: reason %q empty or not unique", c.id, c.reason)
			}
			seen[key] = true
		}
	}
}
