package etcdserver

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestStartServesClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir := t.TempDir()
	s, err := Start(ctx, Options{Dir: dir, ClientURLs: []string{"http://127.0.0.1:0"}, Fast: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	eps := s.Endpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") || strings.HasSuffix(eps[0], ":0") {
		t.Fatalf("endpoints = %v, want the real loopback port", eps)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"198.18.0.0/16"}`); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	s.Close()

	// The data survives a restart in the same directory.
	s, err = Start(ctx, Options{Dir: dir, ClientURLs: []string{"http://127.0.0.1:0"}, Fast: true, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cli, err = clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/coreos.com/network/config")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"Network":"198.18.0.0/16"}` {
		t.Fatalf("after restart: %v, %v", resp, err)
	}
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		opts Options
		want string
	}{
		{Options{}, "a data directory is required"},
		{Options{Dir: t.TempDir(), ClientURLs: []string{"tcp://127.0.0.1:0"}}, "scheme must be http or https"},
		{Options{Dir: t.TempDir(), ClientURLs: []string{"http://127.0.0.1"}}, "a port is required"},
		{Options{Dir: t.TempDir(), ClientURLs: []string{"http://127.0.0.1:0"}, PeerURL: "127.0.0.1:0"}, "peer URL"},
		// 192.0.2.1 is not on this host, so listening on it fails.
		{Options{Dir: t.TempDir(), ClientURLs: []string{"http://192.0.2.1:0"}, Fast: true}, "start"},
	}
	for _, tt := range tests {
		tt.opts.Logger = quiet()
		s, err := Start(ctx, tt.opts)
		if err == nil {
			s.Close()
			t.Errorf("Start(%+v): want error containing %q", tt.opts, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Start(%+v) = %v, want %q", tt.opts, err, tt.want)
		}
	}
}

// TestDataDirPrivate starts the embedded etcd in a new directory and in an
// existing world-readable one: both end up 0700.
func TestDataDirPrivate(t *testing.T) {
	base := t.TempDir()
	loose := filepath.Join(base, "loose")
	if err := os.Mkdir(loose, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(loose, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{filepath.Join(base, "new", "etcd"), loose} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s, err := Start(ctx, Options{Dir: dir, ClientURLs: []string{"http://127.0.0.1:0"}, Fast: true, Logger: quiet()})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		info, err := os.Stat(dir)
		if err != nil || info.Mode().Perm() != 0o700 {
			t.Errorf("data directory %s: mode %v %v, want 0700", dir, info.Mode(), err)
		}
	}
}
