// Package etcdserver runs a single-member etcd server inside the process.
// flanneld uses it for --etcd-embedded, and tests use it as a real etcd
// without an external binary.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// DefaultPeerURL is the peer listener used when Options.PeerURL is empty:
// a single member has no peers, so any free loopback port will do.
const DefaultPeerURL = "http://127.0.0.1:0"

// startTimeout bounds the wait for the member to elect itself when the
// caller's context has no deadline.
const startTimeout = 60 * time.Second

// Options configures Start.
type Options struct {
	// Dir is the data directory. It is created if missing.
	Dir string
	// ClientURLs are both listened on and advertised, e.g.
	// "http://192.0.2.1:2379". Port 0 picks a free port. Default
	// "http://127.0.0.1:2379".
	ClientURLs []string
	// PeerURL is the peer listener, default DefaultPeerURL.
	PeerURL string
	// Fast selects test timings (10 ms heartbeat, 100 ms election) and
	// disables fsync. Never use it for data that must survive a crash.
	Fast bool
	// Logger receives start and stop messages. Nil means slog.Default().
	Logger *slog.Logger
	// EtcdLogs keeps etcd's own zap logs (on stderr) for debugging; by
	// default they are discarded.
	EtcdLogs bool
}

// Server is a running embedded etcd member.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	log       *slog.Logger
}

// Start starts an embedded single-member etcd and waits until it serves
// clients, ctx is done, or a 60 s default deadline passes.
func Start(ctx context.Context, opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if opts.Dir == "" {
		return nil, errors.New("embedded etcd: a data directory is required")
	}
	if err := privateDir(opts.Dir, log); err != nil {
		return nil, err
	}
	clientURLs := opts.ClientURLs
	if len(clientURLs) == 0 {
		clientURLs = []string{"http://127.0.0.1:2379"}
	}
	curls, err := parseURLs(clientURLs)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client URL: %w", err)
	}
	peer := opts.PeerURL
	if peer == "" {
		peer = DefaultPeerURL
	}
	purls, err := parseURLs([]string{peer})
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer URL: %w", err)
	}

	cfg := embed.NewConfig()
	cfg.Dir = opts.Dir
	cfg.ListenClientUrls = curls
	cfg.AdvertiseClientUrls = curls
	cfg.ListenPeerUrls = purls
	cfg.AdvertisePeerUrls = purls
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	if opts.Fast {
		cfg.TickMs = 10
		cfg.ElectionMs = 100
		cfg.UnsafeNoFsync = true
	}
	if !opts.EtcdLogs {
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd in %s: start: %w", opts.Dir, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", opts.Dir, err)
	case <-ctx.Done():
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s: waiting for the member to become ready: %w", opts.Dir, ctx.Err())
	}

	s := &Server{etcd: e, log: log}
	for i, l := range e.Clients {
		scheme := "http"
		if i < len(curls) {
			scheme = curls[i].Scheme
		}
		s.endpoints = append(s.endpoints, scheme+"://"+l.Addr().String())
	}
	log.Info("embedded etcd ready", "dir", opts.Dir, "endpoints", s.endpoints)
	return s, nil
}

// Endpoints returns the client addresses as URLs, with the real port when
// port 0 was asked for.
func (s *Server) Endpoints() []string {
	return append([]string(nil), s.endpoints...)
}

// Err reports fatal server errors after start.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// Close stops the server and releases its listeners and data directory lock.
func (s *Server) Close() {
	s.etcd.Close()
	s.log.Info("embedded etcd stopped")
}

func parseURLs(ss []string) ([]url.URL, error) {
	out := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			return nil, err
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("%q: scheme must be http or https", s)
		}
		if u.Port() == "" {
			return nil, fmt.Errorf("%q: a port is required", s)
		}
		out = append(out, *u)
	}
	return out, nil
}
