package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// File names looked up in ETCD_SSL_DIR when no TLS flag is given.
const (
	sslDirDefault = "/etc/ssl/etcd"
	sslCAFile     = "ca.pem"
	sslCertFile   = "client.pem"
	sslKeyFile    = "client-key.pem"
)

// tlsFiles resolves the TLS files: the flags when any is given, otherwise
// the files in ETCD_SSL_DIR (default /etc/ssl/etcd) when they exist.
func tlsFiles(o *options, getenv func(string) string) (ca, cert, key string) {
	if o.etcdCAFile != "" || o.etcdCertfile != "" || o.etcdKeyfile != "" {
		return o.etcdCAFile, o.etcdCertfile, o.etcdKeyfile
	}
	dir := getenv("ETCD_SSL_DIR")
	if dir == "" {
		dir = sslDirDefault
	}
	exists := func(name string) string {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	}
	cert, key = exists(sslCertFile), exists(sslKeyFile)
	if cert == "" || key == "" {
		cert, key = "", ""
	}
	return exists(sslCAFile), cert, key
}

// clientTLS builds the etcd client TLS config. As upstream (v3), TLS is used
// only when both the certificate and the key are given; the CA is optional.
func clientTLS(ca, cert, key string, log *slog.Logger) (*tls.Config, error) {
	if cert == "" || key == "" {
		if cert != "" || key != "" {
			return nil, errors.New("--etcd-certfile and --etcd-keyfile must be given together")
		}
		log.Warn("no certificate provided: connecting to etcd with http. This is insecure")
		return nil, nil
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("load etcd client certificate %s with key %s: %w", cert, key, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse etcd client certificate %s: %w", cert, err)
	}
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("etcd client certificate %s expired on %s", cert, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("etcd client certificate %s is not valid before %s", cert, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{pair}}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA file %s: %w", ca, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s holds no PEM certificate", ca)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// newEtcdClient creates the (non-blocking) etcd v3 client.
func newEtcdClient(o *options, getenv func(string) string, log *slog.Logger) (*clientv3.Client, error) {
	ca, cert, key := tlsFiles(o, getenv)
	tlsCfg, err := clientTLS(ca, cert, key, log)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            o.endpoints(),
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Username:             o.etcdUsername,
		Password:             o.etcdPassword,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("create etcd client for %v: %w", o.endpoints(), err)
	}
	return cli, nil
}
