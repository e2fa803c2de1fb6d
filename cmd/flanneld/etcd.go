//go:build linux

package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
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
		if err := halfGivenTLS(cert, key); err != nil {
			return nil, err
		}
		if ca != "" {
			log.Warn("--etcd-cafile is ignored without --etcd-certfile and --etcd-keyfile: connecting to etcd with http. This is insecure", "cafile", ca)
			return nil, nil
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

// halfGivenTLS refuses a client certificate without its key or a key
// without its certificate, naming the flag that is missing. Upstream
// silently falls back to plain http there, which an operator who meant TLS
// learns only from etcd's refusals.
func halfGivenTLS(cert, key string) error {
	switch {
	case cert != "" && key == "":
		return fmt.Errorf("--etcd-certfile %s is given but --etcd-keyfile is missing: give the client certificate's key with --etcd-keyfile (or FLANNELD_ETCD_KEYFILE), or drop --etcd-certfile to connect without TLS", cert)
	case key != "" && cert == "":
		return fmt.Errorf("--etcd-keyfile %s is given but --etcd-certfile is missing: give the client certificate with --etcd-certfile (or FLANNELD_ETCD_CERTFILE), or drop --etcd-keyfile to connect without TLS", key)
	}
	return nil
}

// newEtcdClient creates the etcd v3 client. clientv3 connects lazily, so
// with TLS each https endpoint is probed first: a certificate that etcd or
// flanneld rejects fails start-up with a message naming the file at fault,
// while an etcd that is merely unreachable is only logged, because
// flanneld waits for etcd.
func newEtcdClient(o *options, getenv func(string) string, log *slog.Logger) (*clientv3.Client, error) {
	ca, cert, key := tlsFiles(o, getenv)
	tlsCfg, err := clientTLS(ca, cert, key, log)
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		if err := probeTLS(o.endpoints(), tlsCfg, tlsSource{ca: ca, cert: cert, key: key}, probeTimeout, log); err != nil {
			return nil, err
		}
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
		DialOptions:          append(etcdMetricsDialOptions(), etcdReconnect),
	})
	if err != nil {
		return nil, fmt.Errorf("create etcd client for %v: %w", o.endpoints(), err)
	}
	return cli, nil
}

// etcdReconnect caps gRPC's reconnect backoff (default up to 120 s) at 5 s,
// so flanneld is back within seconds of etcd returning from a long outage.
var etcdReconnect = grpc.WithConnectParams(grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
	MinConnectTimeout: 5 * time.Second,
})

// probeTimeout bounds the TLS probe of one endpoint.
const probeTimeout = 3 * time.Second

// tlsSource names the files a TLS config was built from, for messages.
type tlsSource struct{ ca, cert, key string }

// probeTLS makes one HTTPS request (GET /version) to every https endpoint
// with cfg. A TLS failure is returned, explained in terms of the files; any
// other failure means etcd is not up yet and is logged.
func probeTLS(endpoints []string, cfg *tls.Config, src tlsSource, timeout time.Duration, log *slog.Logger) error {
	tr := &http.Transport{TLSClientConfig: cfg.Clone(), DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	for _, ep := range endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Scheme != "https" {
			continue
		}
		resp, err := client.Get(u.Scheme + "://" + u.Host + "/version")
		if err == nil {
			resp.Body.Close()
			log.Debug("etcd TLS handshake succeeded", "endpoint", ep)
			continue
		}
		if tlsErr := explainTLSError(ep, err, src); tlsErr != nil {
			return tlsErr
		}
		log.Warn("etcd endpoint not reachable yet; flanneld keeps trying", "endpoint", ep, "error", err)
	}
	return nil
}

// explainTLSError turns a TLS failure against endpoint ep into an error
// naming the file to fix, or returns nil when err is not about TLS.
func explainTLSError(ep string, err error, src tlsSource) error {
	var (
		verifyErr  *tls.CertificateVerificationError
		unknownCA  x509.UnknownAuthorityError
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
		opErr      *net.OpError
		recordErr  tls.RecordHeaderError
	)
	caName := src.ca
	if caName == "" {
		caName = "(none: the system roots)"
	}
	switch {
	case errors.As(err, &hostErr):
		return fmt.Errorf("etcd at %s presented a certificate that is not valid for its address (check the endpoint or the server certificate's SANs): %w", ep, err)
	case errors.As(err, &unknownCA), errors.As(err, &invalidErr), errors.As(err, &verifyErr):
		return fmt.Errorf("etcd CA file %s does not verify the certificate of etcd at %s: %w", caName, ep, err)
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// crypto/tls reports the peer's alert as a net.OpError.
		return fmt.Errorf("etcd at %s rejected the TLS handshake with client certificate %s (key %s; is it signed by a CA the server trusts, and is it a client certificate?): %w", ep, src.cert, src.key, err)
	case errors.As(err, &recordErr):
		return fmt.Errorf("etcd at %s does not speak TLS (use an http:// endpoint or enable TLS on etcd): %w", ep, err)
	case strings.Contains(err.Error(), "tls: "):
		// Handshake failures such as a protocol version mismatch have no
		// exported type.
		return fmt.Errorf("TLS handshake with etcd at %s (CA %s, client certificate %s) failed: %w", ep, caName, src.cert, err)
	}
	return nil
}
