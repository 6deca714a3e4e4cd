package e2e_test

import (
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/rexec/rexec/internal/childproc"
	"github.com/rexec/rexec/internal/metrics"
)

// scrape is one scrape of a process's /metrics, parsed.
type scrape map[string]*dto.MetricFamily

func scrapeMetrics(t *testing.T, base string) scrape {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s", base, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s/metrics: %v", base, err)
	}
	return mfs
}

// value is the sample of name whose labels include labels (name=value
// pairs): a counter's or gauge's value, a histogram's count; -1 if absent.
func (s scrape) value(name string, labels ...string) float64 {
	mf := s[name]
	if mf == nil {
		return -1
	}
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}) {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return -1
}

// checkEndpoints fails t if an endpoint label is not a fixed Consul route:
// a KV key, session ID or node name must never become a label.
func (s scrape) checkEndpoints(t *testing.T, process string) {
	t.Helper()
	for name, mf := range s {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "endpoint" && l.GetValue() != metrics.EndpointOther && !slices.Contains(metrics.ConsulEndpoints, l.GetValue()) {
					t.Errorf("%s: %s has endpoint %q, not a fixed route", process, name, l.GetValue())
				}
			}
		}
	}
}

// awaitValue waits until the sample of name (with labels) of the process at
// base satisfies ok, and returns the last scrape.
func awaitValue(t *testing.T, base string, ok func(float64) bool, name string, labels ...string) scrape {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	for {
		s := scrapeMetrics(t, base)
		v := s.value(name, labels...)
		if ok(v) {
			return s
		}
		if ctx.Err() != nil {
			t.Fatalf("%s %s%v = %v, never as awaited", base, name, labels, v)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// silentRuns submits n detached runs of `true` on noexec-1, a node that
// never acknowledges, each with a 500 ms quiet period, and returns their IDs.
func (e *env) silentRuns(n int) []string {
	e.t.Helper()
	var ids []string
	for range n {
		sub := e.cli(nil, "exec", "-detach", "-node", "^noexec-1$", "-wait", "500ms", "true")
		if sub.code != 0 {
			e.t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
		}
		ids = append(ids, strings.TrimSpace(sub.stdout))
	}
	return ids
}

var metricsListening = regexp.MustCompile(`msg="metrics listening" addr=(\S+)`)

// startWorker starts a worker-only process and returns the base URL of its
// metrics listener.
func (e *env) startWorker(args ...string) string {
	e.t.Helper()
	p, logPath := e.startProc(append([]string{"worker"}, args...)...)
	return e.metricsAddr(p, logPath)
}

// metricsAddr is the base URL of the metrics listener of the process p,
// which logs to logPath.
func (e *env) metricsAddr(p *childproc.Process, logPath string) string {
	e.t.Helper()
	ctx := ctxT(e.t, 30*time.Second)
	for {
		b, _ := os.ReadFile(logPath)
		if m := metricsListening.FindSubmatch(b); m != nil {
			return "http://" + string(m[1])
		}
		if exited, err := p.Exited(); exited {
			e.t.Fatalf("rexec-svc exited: %v\n%s", err, b)
		}
		if ctx.Err() != nil {
			e.t.Fatalf("rexec-svc never served its metrics:\n%s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestMetrics scrapes an API-only process and a worker-only process: every
// name of the catalogue (docs/metrics.md) is there, the values move as runs
// are queued, cancelled, carried out or failed unstarted, and no Consul
// endpoint label carries a key, session or node.
func TestMetrics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	// The harness gives serve a -metrics-listen too: the same registry.
	apiMetrics := e.metricsAddr(e.serveProc, e.svcLog)
	is := func(want float64) func(float64) bool { return func(v float64) bool { return v == want } }
	atLeast := func(want float64) func(float64) bool { return func(v float64) bool { return v >= want } }

	// With no worker yet: a run to carry out, one to cancel while queued,
	// and one whose start bound passes before a worker comes.
	detach := func(args ...string) string {
		t.Helper()
		sub := e.cli(nil, append([]string{"exec", "-detach", "-node", "^web-1$"}, args...)...)
		if sub.code != 0 {
			t.Fatalf("exec -detach %v: %d %s", args, sub.code, sub.stderr)
		}
		return strings.TrimSpace(sub.stdout)
	}
	id := detach("echo hello")
	if res := e.cli(nil, "jobs", "cancel", detach("echo never")); res.code != 0 {
		t.Fatalf("jobs cancel: %d %s", res.code, res.stderr)
	}
	late := detach("-start-timeout", "1s", "echo late")
	startBy := e.show(late).StartBy
	api := scrapeMetrics(t, e.addr)
	for _, c := range []struct {
		name   string
		labels []string
		ok     func(float64) bool
	}{
		{metrics.NameRuns, []string{"state", "queued"}, is(2)},
		{metrics.NameRuns, []string{"state", "running"}, is(0)},
		// Jobs, not runs: the cancelled run's job waits too, until a
		// worker takes it and finds nothing to do.
		{metrics.NameQueueDepth, nil, is(3)},
		{metrics.NameQueueOldestAge, nil, atLeast(0)},
		{metrics.NameSubmit, nil, is(3)},
		{metrics.NameRunsFinished, []string{"state", "cancelled"}, is(1)},
		{metrics.NameWorkerSlots, nil, is(0)},
		{metrics.NameRunsInFlight, nil, is(0)},
		{"rexec_http_requests_total", []string{"route", "POST /v1/runs", "code", "201"}, is(3)},
	} {
		if v := api.value(c.name, c.labels...); !c.ok(v) {
			t.Errorf("API before the run: %s%v = %v", c.name, c.labels, v)
		}
	}
	// The submission resolved its targets through Consul.
	if api.value(metrics.NameConsulRequests, "result", "2xx") <= 0 {
		t.Errorf("API: no Consul request counted")
	}

	await(t, 30*time.Second, "the late run's start bound to pass", func() bool { return time.Now().After(startBy) })
	worker := e.startWorker("-workers", "3", "-max-starting", "1", "-worker-id", "metrics", "-metrics-listen", "127.0.0.1:0")
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(worker + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("worker %s: %s", path, resp.Status)
		}
	}
	if res := e.cli(nil, "jobs", "wait", id); res.code != 0 {
		t.Fatalf("jobs wait: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	// The run's end is committed before the worker lets go of it: await
	// the worker's own counts.
	awaitValue(t, worker, is(0), metrics.NameRunsInFlight)
	awaitValue(t, worker, is(1), metrics.NameRunsFinished, "state", "completed")
	// The late run fails unstarted, by the leader's sweep or by the
	// worker whose job finds the bound passed, whichever comes first.
	w := awaitValue(t, worker, is(1), metrics.NameRunsFinished, "state", "failed")
	for _, c := range []struct {
		name   string
		labels []string
		ok     func(float64) bool
	}{
		{metrics.NamePickup, nil, atLeast(1)},
		{metrics.NameWorkerSlots, nil, is(3)},
		{metrics.NameOutputBytesArchived, nil, is(float64(len("hello\n")))},
		{metrics.NameConsulRequests, []string{"endpoint", "session/create", "result", "2xx"}, atLeast(1)},
		{metrics.NameConsulRequests, []string{"endpoint", "event/fire", "result", "2xx"}, atLeast(1)},
		{metrics.NameConsulRequests, []string{"endpoint", "kv", "result", "2xx"}, atLeast(1)},
		{metrics.NameConsulRequests, []string{"endpoint", "session/destroy", "result", "2xx"}, atLeast(1)},
		{metrics.NameConsulResponseBytes, []string{"endpoint", "kv"}, atLeast(1)},
		{metrics.NameLeaseRenewalsFailed, []string{"reason", "error"}, is(0)},
		{metrics.NameRecoveries, []string{"kind", "lease_expired"}, is(0)},
		{metrics.NameRuns, []string{"state", "queued"}, is(0)},
		{metrics.NameQueueDepth, nil, is(0)},
		{metrics.NameQueueOldestAge, nil, is(0)},
	} {
		if v := w.value(c.name, c.labels...); !c.ok(v) {
			t.Errorf("worker after the run: %s%v = %v", c.name, c.labels, v)
		}
	}
	api = scrapeMetrics(t, e.addr)
	if v := api.value(metrics.NameRuns, "state", "queued"); v != 0 {
		t.Errorf("API after the run: %s{state=queued} = %v", metrics.NameRuns, v)
	}
	if v := scrapeMetrics(t, apiMetrics).value(metrics.NameSubmit); v != 3 {
		t.Errorf("API's -metrics-listen: %s count = %v, want 3", metrics.NameSubmit, v)
	}

	// The API resolved the submissions through the tenant's catalog view,
	// which has heard from Consul within its staleness bound; a worker
	// keeps no view.
	if mf := api[metrics.NameCatalogViewAge]; mf == nil || len(mf.GetMetric()) != 1 || mf.GetMetric()[0].GetGauge().GetValue() > 40 {
		t.Errorf("API: %s = %v, want one tenant's view, heard from within 40s", metrics.NameCatalogViewAge, mf)
	}

	// Every name of the catalogue is in both processes' scrapes, but for
	// those that are absent by design: an audit log with nothing waiting,
	// catalog views and the API's own in a worker.
	for process, s := range map[string]scrape{"API": api, "worker": w} {
		absent := map[string]bool{metrics.NameAuditUnloggedAge: true, metrics.NameCatalogViewAge: process == "worker"}
		names := slices.Clone(metrics.Names)
		if process == "API" {
			names = append(names, "rexec_http_requests_total", "rexec_http_request_seconds", "rexec_http_in_flight")
		}
		for _, name := range names {
			if s[name] == nil && !absent[name] {
				t.Errorf("%s /metrics lacks %s", process, name)
			}
		}
		s.checkEndpoints(t, process)
	}

	// Three runs on a node that never acknowledges, on a worker that lets
	// one run of a tenant start at a time (-max-starting 1): each keeps
	// its place a second after its fire, and the others are counted as
	// waiting meanwhile.
	silent := e.silentRuns(3)
	awaitValue(t, worker, atLeast(1), metrics.NameRunsWaitingToStart)
	for _, id := range silent {
		if res := e.cli(nil, "jobs", "wait", id); res.code == 0 {
			t.Errorf("jobs wait %s: exit 0 for a node that never acknowledged\n%s", id, res.stdout)
		}
	}
	awaitValue(t, worker, is(0), metrics.NameRunsWaitingToStart)
}
