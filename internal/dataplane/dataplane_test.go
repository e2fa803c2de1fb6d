package dataplane

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

type fakeEngine struct {
	name   string
	calls  *[]string
	tapErr error
	tap    Tap
	routes []Route
	forgot []netip.Addr
}

func (f *fakeEngine) SetRoutes(r []Route) {
	*f.calls = append(*f.calls, f.name+" routes")
	f.routes = r
}
func (f *fakeEngine) ForgetPeers(p []netip.Addr) {
	*f.calls = append(*f.calls, f.name+" forget")
	f.forgot = p
}
func (f *fakeEngine) PathStats() []PathStats { return []PathStats{{Path: f.name}} }
func (f *fakeEngine) SetTap(t Tap) error {
	if t != nil && f.tapErr != nil {
		return f.tapErr
	}
	f.tap = t
	return nil
}

type nopTap struct{}

func (nopTap) Capture(Direction, []byte) {}

// TestEnginesFanOut: every call reaches every engine, in order; a tap one
// engine refuses is taken back from the others.
func TestEnginesFanOut(t *testing.T) {
	var calls []string
	k, u := &fakeEngine{name: "kernel", calls: &calls}, &fakeEngine{name: "user", calls: &calls}
	es := Engines{k, u}
	routes := []Route{{netip.MustParsePrefix("198.18.1.0/24"), netip.MustParseAddr("192.0.2.1")}}
	es.ForgetPeers([]netip.Addr{netip.MustParseAddr("192.0.2.1")})
	es.SetRoutes(routes)
	if want := []string{"kernel forget", "user forget", "kernel routes", "user routes"}; !slices.Equal(calls, want) {
		t.Errorf("calls %v, want %v", calls, want)
	}
	if len(u.routes) != 1 || len(k.forgot) != 1 {
		t.Error("an engine missed a call's argument")
	}
	if got := es.PathStats(); len(got) != 2 || got[0].Path != "kernel" || got[1].Path != "user" {
		t.Errorf("PathStats %v", got)
	}
	if err := es.SetTap(nopTap{}); err != nil || k.tap == nil || u.tap == nil {
		t.Fatalf("SetTap: %v", err)
	}
	u.tapErr = errors.New("refused")
	k.tap = nil
	if err := es.SetTap(nopTap{}); err == nil || k.tap != nil {
		t.Errorf("a refused tap: error %v, kernel kept it: %v", err, k.tap != nil)
	}
	if In.String() != "in" || Out.String() != "out" {
		t.Error("direction names")
	}
}
