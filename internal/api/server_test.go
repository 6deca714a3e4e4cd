package api

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/testcert"
)

func TestLoadTLS(t *testing.T) {
	t.Parallel()
	f := testcert.Write(t)
	notPEM := filepath.Join(t.TempDir(), "x.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		note, cert, key string
		wantErr         string // part of the message; "" for success
		wantTLS         bool
	}{
		{note: "neither: plain HTTP"},
		{note: "both", cert: f.Cert, key: f.Key, wantTLS: true},
		{note: "a certificate without its key", cert: f.Cert, wantErr: "both a certificate and its key, or neither"},
		{note: "a key without its certificate", key: f.Key, wantErr: "both a certificate and its key, or neither"},
		{note: "missing file", cert: f.Cert + ".gone", key: f.Key, wantErr: "no such file"},
		{note: "not PEM", cert: notPEM, key: f.Key, wantErr: "failed to find any PEM data"},
		{note: "a key that is not the certificate's", cert: f.CA, key: f.Key, wantErr: "private key does not match public key"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			conf, err := LoadTLS(tc.cert, tc.key)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (conf != nil) != tc.wantTLS {
				t.Fatalf("TLS configuration %v, want one: %v", conf, tc.wantTLS)
			}
			if conf != nil && (conf.MinVersion != tls.VersionTLS12 || len(conf.Certificates) != 1) {
				t.Errorf("MinVersion %x, %d certificates", conf.MinVersion, len(conf.Certificates))
			}
		})
	}
}

func TestNewServerDefaults(t *testing.T) {
	t.Parallel()
	srv := NewServer(ServerConfig{}, nil)
	if srv.ReadHeaderTimeout != ReadHeaderTimeout || srv.ReadTimeout != ReadTimeoutDefault || srv.WriteTimeout != WriteTimeoutDefault ||
		srv.IdleTimeout != IdleTimeoutDefault || srv.MaxHeaderBytes != MaxHeaderBytes || srv.TLSConfig != nil || srv.ErrorLog == nil {
		t.Errorf("defaults not applied: %+v", srv)
	}
	srv = NewServer(ServerConfig{ReadTimeout: time.Second, WriteTimeout: 2 * time.Second, IdleTimeout: 3 * time.Second}, nil)
	if srv.ReadTimeout != time.Second || srv.WriteTimeout != 2*time.Second || srv.IdleTimeout != 3*time.Second {
		t.Errorf("configuration not applied: %+v", srv)
	}
	// A stream's deadline must outlast its longest wait.
	if StreamDeadline <= MaxStreamWait {
		t.Errorf("StreamDeadline %s is not beyond MaxStreamWait %s", StreamDeadline, MaxStreamWait)
	}
}
