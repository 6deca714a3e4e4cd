package consul

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// TestIdentityIgnoresEnvironment: a client speaks with exactly its
// configured token — none when it has none — and no namespace, whatever
// CONSUL_* variables the process holds (consul/api would take them).
func TestIdentityIgnoresEnvironment(t *testing.T) {
	t.Setenv("CONSUL_HTTP_TOKEN", "token-of-the-service")
	t.Setenv("CONSUL_NAMESPACE", "other-ns")
	t.Setenv("CONSUL_PARTITION", "other-partition")

	var mu sync.Mutex
	var seen []*http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Clone(context.Background()))
		mu.Unlock()
		w.Header().Set("X-Consul-Index", "1")
		w.Write([]byte("[]"))
	}))
	defer srv.Close()

	for _, tc := range []struct{ name, token string }{{"no token", ""}, {"own token", "tenant-token"}} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			c, err := New(Config{Address: srv.Listener.Addr().String(), Token: tc.token})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.API().KV().List("x/", nil); err != nil {
				t.Fatal(err)
			}
			if _, err := c.API().Catalog().Datacenters(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(seen) != 2 {
				t.Fatalf("%d requests, want 2", len(seen))
			}
			for _, r := range seen {
				if got := r.Header.Get("X-Consul-Token"); got != tc.token {
					t.Errorf("%s: token %q, want %q", r.URL.Path, got, tc.token)
				}
				if r.Header.Get("Authorization") != "" {
					t.Errorf("%s: an Authorization header", r.URL.Path)
				}
				if q := r.URL.Query(); q.Has("ns") || q.Has("partition") {
					t.Errorf("%s: namespace or partition from the environment: %s", r.URL.Path, r.URL.RawQuery)
				}
			}
		})
	}
}

// TestTLSIgnoresEnvironment: CONSUL_HTTP_SSL_VERIFY=false does not turn
// certificate checks off for a client configured to verify.
func TestTLSIgnoresEnvironment(t *testing.T) {
	t.Setenv("CONSUL_HTTP_SSL_VERIFY", "false")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("[]")) }))
	defer srv.Close()
	c, err := New(Config{Address: srv.Listener.Addr().String(), TLS: TLSConfig{Enabled: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.API().Catalog().Datacenters(); err == nil {
		t.Fatal("a server whose certificate no trusted CA signed was accepted")
	}
}
