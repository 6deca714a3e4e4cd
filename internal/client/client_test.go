package client

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/testcert"
)

// tlsServer serves handler over HTTPS with a certificate from a CA of its
// own, whose files it returns.
func tlsServer(t *testing.T, handler http.HandlerFunc) (*httptest.Server, testcert.Files) {
	t.Helper()
	f := testcert.Write(t)
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, f
}

func TestNewWithConfig(t *testing.T) {
	t.Parallel()
	noPEM := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(noPEM, []byte("nothing here"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		note     string
		cfg      Config
		wantBase string
		wantErr  string
	}{
		{note: "bare host:port is http", cfg: Config{Addr: "127.0.0.1:8080"}, wantBase: "http://127.0.0.1:8080"},
		{note: "https", cfg: Config{Addr: "https://rexec.example:8443/"}, wantBase: "https://rexec.example:8443"},
		{note: "no address", cfg: Config{}, wantErr: "no server address"},
		{note: "another scheme", cfg: Config{Addr: "ftp://x"}, wantErr: "the scheme must be http or https"},
		{note: "missing CA file", cfg: Config{Addr: "https://x", CAFile: noPEM + ".gone"}, wantErr: "CA file: open"},
		{note: "CA file without a certificate", cfg: Config{Addr: "https://x", CAFile: noPEM}, wantErr: "no PEM certificate in it"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			c, err := NewWithConfig(tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.base != tc.wantBase {
				t.Errorf("base %q, want %q", c.base, tc.wantBase)
			}
		})
	}
}

// TestTLSTrust: the CA file is what makes a server's certificate trusted;
// without it the error is the certificate's, for the CLI to explain.
func TestTLSTrust(t *testing.T) {
	t.Parallel()
	srv, f := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "no token", 401)
			return
		}
		w.Write([]byte(`{"id": "r1", "state": "completed"}`))
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		note      string
		cfg       Config
		untrusted bool
	}{
		{note: "CA file", cfg: Config{CAFile: f.CA}},
		{note: "system roots alone", untrusted: true},
		{note: "a base TLS configuration is kept", cfg: Config{CAFile: f.CA, TLS: &tls.Config{ServerName: "localhost"}}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			tc.cfg.Addr, tc.cfg.Token = srv.URL, "tok"
			c, err := NewWithConfig(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			run, err := c.Get(ctx, "r1")
			var cve *tls.CertificateVerificationError
			switch {
			case tc.untrusted && !errors.As(err, &cve):
				t.Errorf("got %v, want a certificate verification error", err)
			case !tc.untrusted && (err != nil || run.State != "completed"):
				t.Errorf("got %+v, %v", run, err)
			}
		})
	}
	// The CA's certificates are added to the base configuration's roots,
	// which stay the caller's.
	base := &tls.Config{}
	conf, err := tlsConfig(Config{CAFile: f.CA, TLS: base})
	if err != nil || conf == base || conf.RootCAs == nil || base.RootCAs != nil || conf.MinVersion != 0 {
		t.Errorf("tlsConfig cloned the base wrongly: %+v, %v", conf, err)
	}
	if conf, _ := tlsConfig(Config{}); conf.MinVersion != tls.VersionTLS12 {
		t.Errorf("default MinVersion %x", conf.MinVersion)
	}
}

// TestPlainHTTPToTLS: an http:// address for a server that speaks only
// HTTPS gets a message that says so.
func TestPlainHTTPToTLS(t *testing.T) {
	t.Parallel()
	srv, _ := tlsServer(t, func(w http.ResponseWriter, r *http.Request) {})
	c, err := New(strings.Replace(srv.URL, "https://", "http://", 1), "tok")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Get(context.Background(), "r1")
	var ce *Error
	if !errors.As(err, &ce) || ce.Status != 400 || !strings.Contains(ce.Msg, "speaks HTTPS only: use https://") {
		t.Errorf("got %v, want the HTTPS hint", err)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		header string
		want   time.Duration
	}{{"3", 3 * time.Second}, {"", 0}, {"soon", 0}, {"-1", 0}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.header != "" {
				w.Header().Set("Retry-After", tc.header)
			}
			w.WriteHeader(429)
			w.Write([]byte(`{"error": "too many", "code": "too_many_requests"}`))
		}))
		c, _ := New(srv.URL, "tok")
		_, err := c.Stream(context.Background(), "r1", 0, time.Second)
		srv.Close()
		var ce *Error
		if !errors.As(err, &ce) || ce.Status != 429 || ce.Code != "too_many_requests" || ce.RetryAfter != tc.want {
			t.Errorf("Retry-After %q: got %+v, want %s", tc.header, err, tc.want)
		}
	}
}

// TestConnectionsKept: a Client shared by 32 goroutines keeps their
// connections when the server answers them all at once, as it answers
// submissions stored together, rather than closing all but two (Go's
// default) and dialling again on the next request.
func TestConnectionsKept(t *testing.T) {
	t.Parallel()
	const callers, rounds = 32, 5
	var arrived sync.WaitGroup
	var release atomic.Pointer[chan struct{}] // the round's: closed to answer
	var dialled atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ch := *release.Load()
		arrived.Done()
		<-ch
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"id": "r1"}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialled.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	for range rounds {
		arrived.Add(callers)
		ch := make(chan struct{})
		release.Store(&ch)
		var done sync.WaitGroup
		for range callers {
			done.Go(func() {
				if _, err := c.Get(context.Background(), "r1"); err != nil {
					t.Error(err)
				}
			})
		}
		arrived.Wait() // every request in, then every answer at once
		close(ch)
		done.Wait()
	}
	// A request may dial while another's connection is on its way back
	// to the pool; with 2 kept, each round after the first dialled 30.
	if n := dialled.Load(); n > 2*callers {
		t.Errorf("%d connections dialled for %d rounds of %d requests", n, rounds, callers)
	}
}
