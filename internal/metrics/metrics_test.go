package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rexec/rexec/internal/metrics"
)

func TestConsulEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		note, path, want string
	}{
		{"kv key", "/v1/kv/_rexec/4f1c2d/web-1/out/00000", "kv"},
		{"kv prefix", "/v1/kv/_rexec/4f1c2d/", "kv"},
		{"txn", "/v1/txn", "txn"},
		{"session create", "/v1/session/create", "session/create"},
		{"session renew", "/v1/session/renew/0e1f0a4c-5d6b-4c4e-9d6e-2d0f8a1b2c3d", "session/renew"},
		{"session info", "/v1/session/info/0e1f0a4c-5d6b-4c4e-9d6e-2d0f8a1b2c3d", "session/info"},
		{"session destroy", "/v1/session/destroy/0e1f0a4c", "session/destroy"},
		{"event fire", "/v1/event/fire/_rexec", "event/fire"},
		{"catalog service", "/v1/catalog/service/web", "catalog/service"},
		{"catalog services", "/v1/catalog/services", "catalog/services"},
		{"catalog nodes", "/v1/catalog/nodes", "catalog/nodes"},
		{"catalog node", "/v1/catalog/node/secret-host-7", "catalog/node"},
		{"catalog node services", "/v1/catalog/node-services/db-1", "catalog/node-services"},
		{"health state", "/v1/health/state/any", "health/state"},
		{"health service", "/v1/health/service/web", "health/service"},
		{"agent self", "/v1/agent/self", "agent/self"},
		{"acl authorize", "/v1/internal/acl/authorize", "internal/acl/authorize"},
		{"catalog view", "/v1/internal/ui/nodes", "internal/ui/nodes"},
		{"token self", "/v1/acl/token/self", "acl/token/self"},
		{"a token by accessor", "/v1/acl/token/8f1b-accessor", "acl/token"},
		{"reverse proxy prefix", "/consul/v1/kv/a/b", "kv"},
		{"unknown route", "/v1/connect/ca/roots", "other"},
		{"unknown internal route", "/v1/internal/ui/services", "other"},
		{"no api version", "/ui/", "other"},
		{"empty", "", "other"},
		{"a key that looks like a route", "/v1/kv/session/renew", "kv"},
	}
	for _, tt := range tests {
		t.Run(tt.note, func(t *testing.T) {
			t.Parallel()
			if got := metrics.ConsulEndpoint(tt.path); got != tt.want {
				t.Errorf("ConsulEndpoint(%q) = %q, want %q", tt.path, got, tt.want)
			}
		})
	}
}

// TestConsulTransport: requests are counted by endpoint and result, bytes
// by endpoint, and no label value is ever anything but a fixed route.
func TestConsulTransport(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/kv/"):
			_, _ = io.WriteString(w, `[{"Key":"x"}]`) // 13 bytes
		case strings.HasPrefix(r.URL.Path, "/v1/session/renew/"):
			http.Error(w, "Session id not found", http.StatusNotFound)
		default:
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	c := &http.Client{Transport: m.ConsulTransport(nil)}
	get := func(path string) {
		t.Helper()
		resp, err := c.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	get("/v1/kv/_rexec/run-1/web-1/out/00000")
	get("/v1/kv/_rexec/run-2/db-1/exit")
	get("/v1/session/renew/0e1f0a4c-5d6b-4c4e-9d6e-2d0f8a1b2c3d")
	get("/v1/weird/secret-node")
	// A request that gets no answer, and one its caller cancelled.
	if _, err := (&http.Client{Transport: m.ConsulTransport(nil)}).Get("http://127.0.0.1:1/v1/txn"); err == nil {
		t.Fatal("a request to a closed port succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/kv/k?index=7&wait=10s", nil)
	if _, err := c.Do(req); err == nil {
		t.Fatal("a cancelled request succeeded")
	}

	want := `
# HELP rexec_consul_requests_total HTTP requests to Consul agents, by endpoint (a fixed route, never a key, session or node) and result (2xx, 3xx, 4xx, 5xx, error, canceled).
# TYPE rexec_consul_requests_total counter
rexec_consul_requests_total{endpoint="kv",result="2xx"} 2
rexec_consul_requests_total{endpoint="kv",result="canceled"} 1
rexec_consul_requests_total{endpoint="other",result="5xx"} 1
rexec_consul_requests_total{endpoint="session/renew",result="4xx"} 1
rexec_consul_requests_total{endpoint="txn",result="error"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), metrics.NameConsulRequests); err != nil {
		t.Error(err)
	}
	if got := value(t, reg, metrics.NameConsulResponseBytes, "kv"); got != 26 {
		t.Errorf("kv response bytes = %v, want 26", got)
	}
	CheckEndpointLabels(t, reg)
}

// CheckEndpointLabels fails t if an endpoint label of reg's Consul metrics
// is not a fixed route.
func CheckEndpointLabels(t *testing.T, reg prometheus.Gatherer) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() != metrics.EndpointOther && !slices.Contains(metrics.ConsulEndpoints, l.GetValue()) {
					t.Errorf("%s has endpoint %q, not a fixed route", mf.GetName(), l.GetValue())
				}
			}
		}
	}
}

// value is the value of the sample of the metric name whose label values
// are labels, in order; the test fails if there is none.
func value(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			var got []string
			for _, l := range mt.GetLabel() {
				got = append(got, l.GetValue())
			}
			if !slices.Equal(got, labels) {
				continue
			}
			switch {
			case mt.GetCounter() != nil:
				return mt.GetCounter().GetValue()
			case mt.GetGauge() != nil:
				return mt.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return 0
}

// TestNil: a nil *Metrics does nothing, and never panics.
func TestNil(t *testing.T) {
	t.Parallel()
	var m *metrics.Metrics
	m.RunFinished("completed")
	m.SubmitAccepted(time.Second)
	m.PickedUp(time.Second)
	m.RunStarted()()
	m.SetWorkerSlots(3)
	m.OutputArchived(10)
	m.LeaseRenewalFailed(metrics.LeaseError)
	m.Recovered(metrics.RecoveryLateFailed, 1)
	m.SetCatalogViews(func(func(string, time.Duration)) {})
	m.WatchDatabase(func(context.Context) (metrics.DatabaseStats, error) { return metrics.DatabaseStats{}, nil })
	m.SetLogger(nil)
	next := http.DefaultTransport
	if m.ConsulTransport(next) != next {
		t.Error("a nil Metrics wrapped the transport")
	}
}

// TestScrape: every name of the catalogue is scraped, the scrape-time
// gauges report their sources, and a database that fails leaves a scrape
// that still answers.
func TestScrape(t *testing.T) {
	t.Parallel()
	reg, m := metrics.NewRegistry()
	m.SetCatalogViews(func(report func(string, time.Duration)) {
		report("acme", 1500*time.Millisecond)
		report("acme", time.Hour) // a duplicate is dropped, not a failed scrape
		report("globex", 0)
	})
	fail := false
	m.WatchDatabase(func(ctx context.Context) (metrics.DatabaseStats, error) {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the database is read without a deadline")
		}
		if fail {
			return metrics.DatabaseStats{}, errors.New("database away")
		}
		return metrics.DatabaseStats{Runs: map[string]int64{"queued": 3, "running": 1, "pending_approval": 0},
			QueueDepth: 2, QueueOldest: 4 * time.Second, AuditUnlogged: map[string]time.Duration{"acme": time.Second}}, nil
	})
	m.RunFinished("completed")
	m.SubmitAccepted(10 * time.Millisecond)
	m.PickedUp(200 * time.Millisecond)
	done := m.RunStarted()
	m.OutputArchived(42)
	m.ConsulTransport(nil)
	srv := httptest.NewServer(metrics.Handler(reg, nil))
	defer srv.Close()
	body := get(t, srv.URL+"/metrics")
	for _, name := range metrics.Names {
		if name == metrics.NameConsulRequests || name == metrics.NameConsulResponseBytes {
			continue // no request was made: a vector without children is not exposed
		}
		if !strings.Contains(body, "\n# TYPE "+name+" ") {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	for _, sample := range []string{
		`rexec_runs{state="queued"} 3`, `rexec_queue_depth 2`, `rexec_queue_oldest_age_seconds 4`,
		`rexec_audit_unlogged_age_seconds{log="acme"} 1`,
		`rexec_catalog_view_age_seconds{tenant="acme"} 1.5`, `rexec_catalog_view_age_seconds{tenant="globex"} 0`,
		`rexec_runs_in_flight 1`, `rexec_output_bytes_archived_total 42`, `rexec_pickup_seconds_count 1`,
		`rexec_recoveries_total{kind="late_failed"} 0`, `rexec_runs_finished_total{state="completed"} 1`,
	} {
		if !strings.Contains(body, "\n"+sample+"\n") {
			t.Errorf("/metrics lacks %s", sample)
		}
	}
	done()
	if got := value(t, reg, metrics.NameRunsInFlight); got != 0 {
		t.Errorf("in flight after done = %v", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "rexec_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}

	fail = true
	body = get(t, srv.URL+"/metrics")
	if strings.Contains(body, "rexec_queue_depth ") || !strings.Contains(body, "\nrexec_database_scrape_errors_total 1\n") {
		t.Errorf("a failed database read: want no database gauges and one error counted:\n%s", body)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

// TestHandler: /healthz answers always, /readyz as the check says.
func TestHandler(t *testing.T) {
	t.Parallel()
	reg, _ := metrics.NewRegistry()
	var notReady error
	srv := httptest.NewServer(metrics.Handler(reg, func(context.Context) error { return notReady }))
	defer srv.Close()
	tests := []struct {
		note, path string
		err        error
		want       int
	}{
		{"healthz", "/healthz", nil, 200},
		{"ready", "/readyz", nil, 200},
		{"not ready", "/readyz", errors.New("database not migrated"), 503},
		{"healthz when not ready", "/healthz", errors.New("database not migrated"), 200},
		{"no api", "/v1/runs", nil, 404},
	}
	for _, tt := range tests {
		notReady = tt.err
		resp, err := http.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: GET %s = %d, want %d", tt.note, tt.path, resp.StatusCode, tt.want)
		}
	}
}

// TestCatalogue: docs/metrics.md names every metric, and no other rexec_
// metric than these and the API's.
func TestCatalogue(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, name := range append(slices.Clone(metrics.Names), "rexec_http_requests_total", "rexec_http_request_seconds", "rexec_http_in_flight") {
		if !strings.Contains(doc, "| `"+name+"`") {
			t.Errorf("docs/metrics.md has no row for %s", name)
		}
	}
}
