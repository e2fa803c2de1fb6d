//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/flannel-go/flannel-go/internal/pcap"
)

// healthServer is one HTTP listener. Its requests' contexts end when it
// shuts down, so that a running /debug/pcap capture ends with it.
type healthServer struct {
	srv    *http.Server
	cancel context.CancelFunc
}

// startHTTP serves /metrics on addr and, with health, upstream's /healthz
// and /readyz and, only with --debug-pcap, the /debug/pcap capture.
func (d *daemon) startHTTP(addr string, health bool) (*healthServer, error) {
	return d.serve(addr, d.httpMux(health))
}

func (d *daemon) httpMux(health bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", d.metricsHandler)
	if !health {
		return mux
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "flanneld is running")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, "flanneld is not ready yet")
			return
		}
		fmt.Fprint(w, "flanneld is ready")
	})
	if d.o.debugPcap {
		// Off by default: the health port listens on 0.0.0.0 (upstream's
		// default), and a capture shows every container's traffic.
		mux.Handle("/debug/pcap", pcap.NewHandler(d.attachPcap, d.log))
	}
	return mux
}

func (d *daemon) serve(addr string, mux *http.ServeMux) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("start HTTP server on %s: %w", addr, err)
	}
	base, cancel := context.WithCancel(context.Background())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("healthz server stopped", "error", err)
		}
	}()
	return &healthServer{srv: srv, cancel: cancel}, nil
}

func (h *healthServer) shutdown() {
	h.cancel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
}
