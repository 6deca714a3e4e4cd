package consul_test

import (
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/testenv"
)

// TestRunMetrics: a run through a client with metrics counts its requests
// by route — session, KV, event, catalog — and the bytes of the answers,
// with no key, session ID or node name in a label; a caller's own HTTP
// client still carries every request and is left as it was.
func TestRunMetrics(t *testing.T) {
	t.Parallel()
	cl := testenv.Cluster(t)
	reg := prometheus.NewRegistry()
	m := metrics.New(reg)
	cnt := testenv.NewHTTPCounter()
	hc := &http.Client{Transport: cnt}
	c, err := consul.New(consul.Config{Address: cl.Agent("web-1").HTTPAddr(), HTTPClient: hc, Logger: testenv.Logger(t), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{cluster: cl, client: c, count: cnt, prefix: testenv.Prefix(t)}
	spec := b.spec("echo", "hello")
	spec.NodeFilter = "^web-1$"
	res, _ := b.resolveAndRun(t, ctxT(t, time.Minute), spec)
	if res.Outcome != consul.OutcomeCompleted {
		t.Fatalf("outcome = %s", res.Outcome)
	}
	if hc.Transport != cnt {
		t.Error("the caller's HTTP client was changed")
	}

	requests := map[string]float64{} // endpoint/result → count
	bytes := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if e, ok := labels["endpoint"]; ok && e != metrics.EndpointOther && !slices.Contains(metrics.ConsulEndpoints, e) {
				t.Errorf("%s has endpoint %q, not a fixed route", mf.GetName(), e)
			}
			switch mf.GetName() {
			case metrics.NameConsulRequests:
				requests[labels["endpoint"]+" "+labels["result"]] += mt.GetCounter().GetValue()
				total += mt.GetCounter().GetValue()
			case metrics.NameConsulResponseBytes:
				bytes[labels["endpoint"]] += mt.GetCounter().GetValue()
			}
		}
	}
	for _, want := range []string{"session/create 2xx", "kv 2xx", "event/fire 2xx", "session/destroy 2xx"} {
		if requests[want] == 0 {
			t.Errorf("no request counted as %s: %v", want, requests)
		}
	}
	if bytes["kv"] == 0 {
		t.Errorf("no KV response bytes counted: %v", bytes)
	}
	// Every request the engine sent went through the caller's client and
	// was counted once.
	if got := float64(cnt.Requests.Load()); got != total {
		t.Errorf("the HTTP client carried %v requests, the metrics counted %v: %v", got, total, requests)
	}
}
