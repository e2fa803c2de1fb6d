package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

type healthServer struct{ srv *http.Server }

// startHTTP serves /metrics on addr and, with health, upstream's /healthz
// and /readyz.
func (d *daemon) startHTTP(addr string, health bool) (*healthServer, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", metricsHandler)
	if !health {
		return d.serve(addr, mux)
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
	return d.serve(addr, mux)
}

func (d *daemon) serve(addr string, mux *http.ServeMux) (*healthServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("start HTTP server on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("healthz server stopped", "error", err)
		}
	}()
	return &healthServer{srv: srv}, nil
}

func (h *healthServer) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = h.srv.Shutdown(ctx)
}
