package pcap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// Handler defaults.
const (
	DefaultSeconds = 10
	MaxSeconds     = 300
)

// Trailers the handler sets after the capture, for clients that read them
// (curl --raw -v shows them).
const (
	TrailerPackets = "X-Flannel-Pcap-Packets"
	TrailerDropped = "X-Flannel-Pcap-Dropped"
)

// ErrNotRunning is what an AttachFunc returns while there is no data plane
// to capture from; the handler answers 503.
var ErrNotRunning = errors.New("the data plane is not running yet")

// AttachFunc installs s as the data plane's tap and returns the function
// that removes it again.
type AttachFunc func(s *Sink) (detach func(), err error)

// Handler serves GET ?seconds=N&dir=in|out|both&snaplen=N: it captures
// the inner packets for N seconds (default 10, at most 300) and streams them
// as a pcap file. One capture runs at a time; a second request gets 409.
type Handler struct {
	attach AttachFunc
	log    *slog.Logger
	busy   atomic.Bool
}

// NewHandler returns a handler capturing through attach, logging to log
// (slog.Default() if nil).
func NewHandler(attach AttachFunc, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	return &Handler{attach: attach, log: log}
}

// request is a parsed capture request.
type request struct {
	seconds int
	filter  Filter
	snapLen int
}

func parseRequest(r *http.Request) (request, error) {
	q := r.URL.Query()
	req := request{seconds: DefaultSeconds, snapLen: DefaultSnapLen}
	var err error
	if v := q.Get("seconds"); v != "" {
		if req.seconds, err = strconv.Atoi(v); err != nil || req.seconds < 1 || req.seconds > MaxSeconds {
			return req, fmt.Errorf("seconds=%q: want a whole number from 1 to %d", v, MaxSeconds)
		}
	}
	if req.filter, err = ParseFilter(q.Get("dir")); err != nil {
		return req, fmt.Errorf("dir: %w", err)
	}
	if v := q.Get("snaplen"); v != "" {
		if req.snapLen, err = strconv.Atoi(v); err != nil || req.snapLen < 64 || req.snapLen > MaxSnapLen {
			return req, fmt.Errorf("snaplen=%q: want a whole number from 64 to %d", v, MaxSnapLen)
		}
	}
	return req, nil
}

// ServeHTTP runs one capture.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "use GET", http.StatusMethodNotAllowed)
		return
	}
	req, err := parseRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !h.busy.CompareAndSwap(false, true) {
		http.Error(w, "another pcap capture is running; try again when it ends", http.StatusConflict)
		return
	}
	defer h.busy.Store(false)

	sink, err := NewSink(SinkOptions{Filter: req.filter, SnapLen: req.snapLen})
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	detach, err := h.attach(sink)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrNotRunning) {
			code = http.StatusServiceUnavailable
		}
		http.Error(w, fmt.Sprintf("start capture: %v", err), code)
		return
	}
	// The stream ends only after the tap is detached, so that its final
	// drain sees every packet the tap handed over.
	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(req.seconds)*time.Second)
	defer cancel()
	streamCtx, endStream := context.WithCancel(context.Background())
	defer endStream()
	detached := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		detach()
		close(detached)
		endStream()
	})
	// The next capture may start as soon as this handler returns, so the
	// tap must be off by then.
	defer func() {
		if stop() {
			detach()
		} else {
			<-detached
		}
	}()

	hdr := w.Header()
	hdr.Set("Content-Type", "application/vnd.tcpdump.pcap")
	hdr.Set("Content-Disposition", fmt.Sprintf(`attachment; filename="flannel-%s-%s.pcap"`, req.filter, time.Now().UTC().Format("20060102T150405Z")))
	hdr.Set("Cache-Control", "no-store")
	hdr.Add("Trailer", TrailerPackets)
	hdr.Add("Trailer", TrailerDropped)
	h.log.Info("pcap capture started", "client", r.RemoteAddr, "seconds", req.seconds, "dir", req.filter.String(), "snaplen", req.snapLen)
	n, err := sink.Stream(streamCtx, w)
	hdr.Set(TrailerPackets, strconv.Itoa(n))
	hdr.Set(TrailerDropped, strconv.FormatUint(sink.Dropped(), 10))
	if err != nil {
		h.log.Warn("pcap capture ended early", "client", r.RemoteAddr, "packets", n, "dropped", sink.Dropped(), "error", err)
		return
	}
	h.log.Info("pcap capture done", "client", r.RemoteAddr, "packets", n, "dropped", sink.Dropped())
}
