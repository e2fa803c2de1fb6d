//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flannel-go/flannel-go/internal/etcdtest"
	"github.com/flannel-go/flannel-go/internal/syncbuf"
)

// testCA is a certificate authority made up for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM of cert
}

var serial int64

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	serial++
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	writePEM(t, ca.file, "CERTIFICATE", der)
	return ca
}

// issue writes name.pem and name-key.pem, a leaf certificate for usage,
// valid from notBefore to notAfter, for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, dir, name string, usage []x509.ExtKeyUsage, notBefore, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	serial++
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// tlsEnv is a TLS etcd (the etcd binary with --client-cert-auth) and the
// certificates to reach it with.
type tlsEnv struct {
	endpoint                  string
	ca, otherCA               *testCA
	cert, key                 string // valid client certificate
	expiredCert, expiredKey   string
	foreignCert, foreignKey   string // signed by otherCA
	serverCertFile, serverKey string
}

func startTLSEtcd(t *testing.T) *tlsEnv {
	t.Helper()
	dir := t.TempDir()
	e := &tlsEnv{ca: newCA(t, dir, "ca"), otherCA: newCA(t, dir, "other-ca")}
	now := time.Now()
	// etcd 3.4 also dials itself with its server certificate, so it must
	// be good for client auth too.
	e.serverCertFile, e.serverKey = e.ca.issue(t, dir, "server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, now.Add(-time.Hour), now.Add(time.Hour))
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	e.cert, e.key = e.ca.issue(t, dir, "client", client, now.Add(-time.Hour), now.Add(time.Hour))
	e.expiredCert, e.expiredKey = e.ca.issue(t, dir, "expired", client, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	e.foreignCert, e.foreignKey = e.otherCA.issue(t, dir, "foreign", client, now.Add(-time.Hour), now.Add(time.Hour))

	log := slog.New(slog.DiscardHandler)
	cfg, err := clientTLS(e.ca.file, e.cert, e.key, log)
	if err != nil {
		t.Fatal(err)
	}
	cli := etcdtest.ExternalTLS(t, etcdtest.TLSOptions{CertFile: e.serverCertFile, KeyFile: e.serverKey, TrustedCAFile: e.ca.file, Client: cfg})
	e.endpoint = cli.Endpoints()[0]
	return e
}

func (e *tlsEnv) options(ca, cert, key string) *options {
	return &options{etcdEndpoints: e.endpoint, etcdCAFile: ca, etcdCertfile: cert, etcdKeyfile: key}
}

func noEnv(string) string { return "" }

func TestEtcdTLS(t *testing.T) {
	e := startTLSEtcd(t)

	t.Run("valid", func(t *testing.T) {
		var logs syncbuf.Buffer
		cli, err := newEtcdClient(e.options(e.ca.file, e.cert, e.key), noEnv, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		if _, err := cli.Put(ctx, "/coreos.com/network/config", `{"Network":"198.18.0.0/16"}`); err != nil {
			t.Fatalf("put over TLS: %v", err)
		}
		resp, err := cli.Get(ctx, "/coreos.com/network/config")
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != `{"Network":"198.18.0.0/16"}` {
			t.Fatalf("get over TLS: %v %v", resp, err)
		}
		if strings.Contains(logs.String(), "insecure") {
			t.Errorf("TLS client warns about plain http: %s", logs.String())
		}
	})

	missing := filepath.Join(t.TempDir(), "no-such-client.pem")
	for _, tc := range []struct {
		name          string
		ca, cert, key string
		want          []string
	}{
		{"wrong CA", e.otherCA.file, e.cert, e.key, []string{e.otherCA.file, "unknown authority"}},
		{"expired certificate", e.ca.file, e.expiredCert, e.expiredKey, []string{e.expiredCert, "expired"}},
		{"certificate of another CA", e.ca.file, e.foreignCert, e.foreignKey, []string{e.foreignCert, "rejected", "bad certificate"}},
		{"missing certificate file", e.ca.file, missing, e.key, []string{missing, "no such file"}},
		{"missing CA file", missing, e.cert, e.key, []string{missing, "no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cli, err := newEtcdClient(e.options(tc.ca, tc.cert, tc.key), noEnv, slog.New(slog.DiscardHandler))
			if err == nil {
				cli.Close()
				t.Fatal("newEtcdClient succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// TestEtcdTLSUnreachable checks that TLS settings do not turn an etcd that
// is not up yet into a start-up failure: flanneld waits for etcd.
func TestEtcdTLSUnreachable(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	cert, key := ca.issue(t, dir, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	var logs syncbuf.Buffer
	o := &options{etcdEndpoints: "https://" + addr, etcdCAFile: ca.file, etcdCertfile: cert, etcdKeyfile: key}
	cli, err := newEtcdClient(o, noEnv, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("unreachable etcd failed start-up: %v", err)
	}
	cli.Close()
	if !strings.Contains(logs.String(), "not reachable yet") {
		t.Errorf("no warning about the unreachable endpoint in %q", logs.String())
	}
}

func TestEtcdTLSMinVersion(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	now := time.Now()
	cert, key := ca.issue(t, dir, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, now.Add(-time.Hour), now.Add(time.Hour))
	cfg, err := clientTLS(ca.file, cert, key, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2", cfg.MinVersion)
	}

	// A server that speaks at most TLS 1.1 is refused.
	srvCert, srvKey := ca.issue(t, dir, "server", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, now.Add(-time.Hour), now.Add(time.Hour))
	pair, err := tls.LoadX509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MaxVersion: tls.VersionTLS11})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	o := &options{etcdEndpoints: "https://" + ln.Addr().String(), etcdCAFile: ca.file, etcdCertfile: cert, etcdKeyfile: key}
	cli, err := newEtcdClient(o, noEnv, slog.New(slog.DiscardHandler))
	if err == nil {
		cli.Close()
		t.Fatal("connected to a TLS 1.1 server")
	}
	if !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("error %q does not name the protocol version", err)
	}
}

func TestEtcdSSLDir(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	cert, key := ca.issue(t, dir, "client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	sslDir := t.TempDir()
	for src, dst := range map[string]string{ca.file: sslCAFile, cert: sslCertFile, key: sslKeyFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sslDir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	env := func(dir string) func(string) string {
		return func(k string) string {
			if k == "ETCD_SSL_DIR" {
				return dir
			}
			return ""
		}
	}

	t.Run("files present", func(t *testing.T) {
		gotCA, gotCert, gotKey := tlsFiles(&options{}, env(sslDir))
		if gotCA != filepath.Join(sslDir, sslCAFile) || gotCert != filepath.Join(sslDir, sslCertFile) || gotKey != filepath.Join(sslDir, sslKeyFile) {
			t.Errorf("tlsFiles = %q %q %q, want the files in %s", gotCA, gotCert, gotKey, sslDir)
		}
		cfg, err := clientTLS(gotCA, gotCert, gotKey, slog.New(slog.DiscardHandler))
		if err != nil || cfg == nil || cfg.RootCAs == nil || len(cfg.Certificates) != 1 {
			t.Errorf("clientTLS = %v, %v; want a TLS config with the CA and the certificate", cfg, err)
		}
	})

	t.Run("flags win", func(t *testing.T) {
		o := &options{etcdCertfile: "/flag/cert.pem", etcdKeyfile: "/flag/key.pem"}
		if gotCA, gotCert, gotKey := tlsFiles(o, env(sslDir)); gotCA != "" || gotCert != "/flag/cert.pem" || gotKey != "/flag/key.pem" {
			t.Errorf("tlsFiles = %q %q %q, want the flags only", gotCA, gotCert, gotKey)
		}
	})

	t.Run("absent", func(t *testing.T) {
		empty := t.TempDir()
		gotCA, gotCert, gotKey := tlsFiles(&options{}, env(empty))
		if gotCA != "" || gotCert != "" || gotKey != "" {
			t.Errorf("tlsFiles = %q %q %q, want none", gotCA, gotCert, gotKey)
		}
		var logs syncbuf.Buffer
		cfg, err := clientTLS(gotCA, gotCert, gotKey, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil || cfg != nil {
			t.Errorf("clientTLS = %v, %v; want plain http", cfg, err)
		}
		if !strings.Contains(logs.String(), "no certificate provided: connecting to etcd with http. This is insecure") {
			t.Errorf("missing upstream warning in %q", logs.String())
		}
	})

	t.Run("key without certificate", func(t *testing.T) {
		partial := t.TempDir()
		b, _ := os.ReadFile(key)
		os.WriteFile(filepath.Join(partial, sslKeyFile), b, 0o600)
		if _, gotCert, gotKey := tlsFiles(&options{}, env(partial)); gotCert != "" || gotKey != "" {
			t.Errorf("tlsFiles = %q %q, want neither without the certificate", gotCert, gotKey)
		}
	})
}

// TestHalfGivenTLS checks that a certificate without its key (or the
// reverse) fails start-up naming the missing flag, and that a CA file alone
// is named in the warning that it is ignored.
func TestHalfGivenTLS(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cert, key string
		want      []string
	}{
		{"certificate without key", "/etc/flannel/client.pem", "", []string{"--etcd-keyfile is missing", "/etc/flannel/client.pem"}},
		{"key without certificate", "", "/etc/flannel/client-key.pem", []string{"--etcd-certfile is missing", "/etc/flannel/client-key.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &options{etcdEndpoints: "https://127.0.0.1:2379", etcdCertfile: tc.cert, etcdKeyfile: tc.key}
			cli, err := newEtcdClient(o, noEnv, slog.New(slog.DiscardHandler))
			if err == nil {
				cli.Close()
				t.Fatal("newEtcdClient succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	t.Run("CA file alone", func(t *testing.T) {
		var logs syncbuf.Buffer
		o := &options{etcdEndpoints: "http://127.0.0.1:2379", etcdCAFile: "/etc/flannel/ca.pem"}
		cli, err := newEtcdClient(o, noEnv, slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		cli.Close()
		if !strings.Contains(logs.String(), "--etcd-cafile is ignored") {
			t.Errorf("no warning that the CA file is ignored:\n%s", logs.String())
		}
	})
}
