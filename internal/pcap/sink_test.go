package pcap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSinkDropsWhenFull(t *testing.T) {
	s, err := NewSink(SinkOptions{Records: 2})
	if err != nil {
		t.Fatal(err)
	}
	pkts := [][]byte{icmpEcho(t, 1), icmpEcho(t, 2), icmpEcho(t, 3), icmpEcho(t, 4), icmpEcho(t, 5)}
	for _, p := range pkts {
		s.Capture(Out, p) // no writer yet: returns at once whatever happens
	}
	if got := s.Dropped(); got != 3 {
		t.Errorf("dropped %d, want 3", got)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var out bytes.Buffer
	n, err := s.Stream(ctx, &out)
	if err != nil || n != 2 {
		t.Fatalf("Stream = %d, %v; want the 2 buffered packets", n, err)
	}
	_, ps := readPcap(t, out.Bytes())
	if len(ps) != 2 || !bytes.Equal(ps[0].data, pkts[0]) || !bytes.Equal(ps[1].data, pkts[1]) {
		t.Errorf("pcap holds %d packets, want the first two", len(ps))
	}
}

func TestSinkCaptureDoesNotAllocate(t *testing.T) {
	s, err := NewSink(SinkOptions{Records: 4})
	if err != nil {
		t.Fatal(err)
	}
	pkt := icmpEcho(t, 1)
	if a := testing.AllocsPerRun(100, func() { s.Capture(In, pkt) }); a != 0 {
		t.Errorf("Capture allocates %v times per packet", a)
	}
}

func TestSinkFilterAndSnapLen(t *testing.T) {
	s, err := NewSink(SinkOptions{Filter: FilterIn, SnapLen: 24, Records: 8})
	if err != nil {
		t.Fatal(err)
	}
	in, out := icmpEcho(t, 1), icmpEcho(t, 2)
	s.Capture(Out, out)
	s.Capture(In, in)
	in[0] = 0xff // Capture must have copied the packet
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	var b bytes.Buffer
	if _, err := s.Stream(ctx, &b); err != nil {
		t.Fatal(err)
	}
	r, ps := readPcap(t, b.Bytes())
	if r.Snaplen() != 24 {
		t.Errorf("file snaplen %d, want 24", r.Snaplen())
	}
	if len(ps) != 1 {
		t.Fatalf("got %d packets, want only the incoming one", len(ps))
	}
	if ps[0].ci.CaptureLength != 24 || ps[0].ci.Length != len(in) || ps[0].data[0] != 0x45 || !bytes.Equal(ps[0].data[1:], in[1:24]) {
		t.Errorf("got %d/%d bytes %x, want 24 of %d bytes of the incoming packet", ps[0].ci.CaptureLength, ps[0].ci.Length, ps[0].data, len(in))
	}
	if s.Dropped() != 0 {
		t.Errorf("filtered packets counted as dropped: %d", s.Dropped())
	}
}

func TestNewSinkRejectsBadOptions(t *testing.T) {
	for _, o := range []SinkOptions{{SnapLen: -1}, {SnapLen: MaxSnapLen + 1}, {Records: -1}} {
		if _, err := NewSink(o); err == nil {
			t.Errorf("NewSink(%+v) succeeded", o)
		}
	}
}

func TestParseFilter(t *testing.T) {
	for in, want := range map[string]Filter{"": FilterBoth, "both": FilterBoth, "in": FilterIn, "out": FilterOut} {
		if f, err := ParseFilter(in); err != nil || f != want {
			t.Errorf("ParseFilter(%q) = %v, %v; want %v", in, f, err, want)
		}
	}
	if _, err := ParseFilter("sideways"); err == nil {
		t.Error("ParseFilter accepted sideways")
	}
	if !FilterBoth.Has(In) || !FilterBoth.Has(Out) || FilterIn.Has(Out) || FilterOut.Has(In) {
		t.Error("Filter.Has is wrong")
	}
}

// fakeTap stands in for the router: while attached, it feeds packets to the
// sink from a goroutine, as a forwarding worker would.
type fakeTap struct {
	mu       sync.Mutex
	sink     *Sink
	attached chan struct{}
	detached chan struct{}
	err      error
}

func newFakeTap() *fakeTap {
	return &fakeTap{attached: make(chan struct{}, 1), detached: make(chan struct{}, 1)}
}

func (f *fakeTap) attach(s *Sink) (func(), error) {
	if f.err != nil {
		return nil, f.err
	}
	f.mu.Lock()
	f.sink = s
	f.mu.Unlock()
	f.attached <- struct{}{}
	return func() {
		f.mu.Lock()
		f.sink = nil
		f.mu.Unlock()
		f.detached <- struct{}{}
	}, nil
}

func (f *fakeTap) send(dir Direction, pkt []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sink != nil {
		f.sink.Capture(dir, pkt)
	}
}

func TestHandlerCapture(t *testing.T) {
	tap := newFakeTap()
	srv := httptest.NewServer(NewHandler(tap.attach, nil))
	defer srv.Close()

	type result struct {
		resp *http.Response
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := http.Get(srv.URL + "?seconds=1&dir=out")
		if err != nil {
			done <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp, body, err}
	}()
	<-tap.attached

	// One capture at a time.
	resp, err := http.Get(srv.URL + "?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("second capture: status %d, want 409", resp.StatusCode)
	}

	echo := icmpEcho(t, 1)
	tap.send(Out, echo)
	tap.send(In, icmpEcho(t, 2)) // filtered out
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	select {
	case <-tap.detached:
	default:
		t.Error("the tap was not detached when the capture ended")
	}
	if ct := r.resp.Header.Get("Content-Type"); ct != "application/vnd.tcpdump.pcap" {
		t.Errorf("Content-Type %q", ct)
	}
	_, ps := readPcap(t, r.body)
	if len(ps) != 1 || !bytes.Equal(ps[0].data, echo) {
		t.Fatalf("pcap holds %d packets, want the outgoing echo", len(ps))
	}
	if time.Since(ps[0].ci.Timestamp) > time.Minute {
		t.Errorf("timestamp %v is not the capture time", ps[0].ci.Timestamp)
	}
	if got := r.resp.Trailer.Get(TrailerPackets); got != "1" {
		t.Errorf("trailer %s = %q, want 1", TrailerPackets, got)
	}
	if got := r.resp.Trailer.Get(TrailerDropped); got != "0" {
		t.Errorf("trailer %s = %q, want 0", TrailerDropped, got)
	}

	// The handler is free again.
	go tap.send(Out, echo)
	resp, err = http.Get(srv.URL + "?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("capture after the first one: status %d, want 200", resp.StatusCode)
	}
}

func TestHandlerErrors(t *testing.T) {
	tap := newFakeTap()
	srv := httptest.NewServer(NewHandler(tap.attach, nil))
	defer srv.Close()
	for _, tc := range []struct {
		query string
		code  int
		want  string
	}{
		{"?seconds=0", 400, "seconds"},
		{"?seconds=301", 400, "seconds"},
		{"?seconds=ten", 400, "seconds"},
		{"?dir=up", 400, "dir"},
		{"?snaplen=10", 400, "snaplen"},
	} {
		resp, err := http.Get(srv.URL + tc.query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || !strings.Contains(string(body), tc.want) {
			t.Errorf("%s: %d %q, want %d mentioning %q", tc.query, resp.StatusCode, body, tc.code, tc.want)
		}
	}
	resp, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: status %d, want 405", resp.StatusCode)
	}

	tap.err = ErrNotRunning
	resp, err = http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("without a data plane: status %d, want 503", resp.StatusCode)
	}
	tap.err = errors.New("boom")
	resp, err = http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusInternalServerError {
		t.Errorf("attach failure: status %d, want 500", resp.StatusCode)
	}
}
