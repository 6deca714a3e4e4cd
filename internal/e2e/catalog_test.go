package e2e_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// catalogRun is what these tests read of a run or a dry run.
type catalogRun struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Targets []struct {
		Name string `json:"node"`
	} `json:"targets"`
	Nodes         []nodeJSON `json:"nodes"`
	CatalogIndex  uint64     `json:"catalog_index"`
	CatalogSource string     `json:"catalog_source"`
	CatalogReason string     `json:"catalog_reason"`
}

func (r catalogRun) targetNames() []string {
	var out []string
	for _, t := range r.Targets {
		out = append(out, t.Name)
	}
	for _, n := range r.Nodes {
		out = append(out, n.Node)
	}
	slices.Sort(out)
	return out
}

// dryRun asks which nodes a run with these filters would target; ok is
// false when the service refused (no node matches, among others).
func (e *env) dryRun(token string, filters ...string) (catalogRun, bool) {
	e.t.Helper()
	res := e.cliAs(token, nil, append(append([]string{"exec", "-dry-run", "-json"}, filters...), "true")...)
	var r catalogRun
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &r) != nil {
		return r, false
	}
	return r, true
}

// runOn submits a run with these filters, waits for it and returns it.
func (e *env) runOn(token string, filters ...string) catalogRun {
	e.t.Helper()
	sub := e.cliAs(token, nil, append(append([]string{"exec", "-detach"}, filters...), "true")...)
	if sub.code != 0 {
		e.t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	if res := e.cliAs(token, nil, "jobs", "wait", id); res.code != 0 {
		e.t.Fatalf("jobs wait %s: exit %d %s", id, res.code, res.stderr)
	}
	res := e.cliAs(token, nil, "jobs", "show", id, "-json")
	var r catalogRun
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &r) != nil {
		e.t.Fatalf("jobs show %s: exit %d\n%s%s", id, res.code, res.stdout, res.stderr)
	}
	return r
}

// submittedEvent returns the data of the run's run.submitted audit event.
func (e *env) submittedEvent(token, id string) map[string]any {
	e.t.Helper()
	res := e.cliAs(token, nil, "audit", "-run", id, "-type", "run.submitted", "-format", "json")
	var evs []struct {
		Data map[string]any `json:"data"`
	}
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &evs) != nil || len(evs) != 1 {
		e.t.Fatalf("audit -run %s: exit %d\n%s%s", id, res.code, res.stdout, res.stderr)
	}
	return evs[0].Data
}

// TestCatalogViewTargets: the service's catalog view follows a service's
// tags and a node leaving and joining; runs submitted afterwards target
// accordingly and record the catalog index, from the view. Not parallel:
// it stops an agent.
func TestCatalogViewTargets(t *testing.T) {
	e := newEnv(t, envOpts{})
	app := e.cluster.Agent("app-1")
	ac, err := api.NewClient(&api.Config{Address: app.HTTPAddr()})
	if err != nil {
		t.Fatal(err)
	}
	svc := "catview"
	register := func(tags ...string) {
		t.Helper()
		if err := ac.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: svc, Name: svc, Tags: tags}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = ac.Agent().ServiceDeregister(svc) })

	register("old")
	byTag := func(tag string) []string { return []string{"-service", "^" + svc + "$", "-tag", "^" + tag + "$"} }
	var seen catalogRun
	await(t, time.Minute, "a dry run to target app-1 by its old tag", func() bool {
		r, ok := e.dryRun(e.token, byTag("old")...)
		seen = r
		return ok && slices.Equal(r.targetNames(), []string{"app-1"})
	})
	if seen.CatalogSource != "view" || seen.CatalogIndex == 0 {
		t.Errorf("dry run: catalog index %d from %q", seen.CatalogIndex, seen.CatalogSource)
	}

	register("new")
	await(t, time.Minute, "the old tag to target nothing", func() bool { _, ok := e.dryRun(e.token, byTag("old")...); return !ok })
	r := e.runOn(e.token, byTag("new")...)
	if got := r.targetNames(); !slices.Equal(got, []string{"app-1"}) || r.State != "completed" {
		t.Errorf("run by the new tag: %s on %v", r.State, got)
	}
	if r.CatalogSource != "view" || r.CatalogIndex <= seen.CatalogIndex {
		t.Errorf("run after the tag change: catalog index %d from %q, before it %d", r.CatalogIndex, r.CatalogSource, seen.CatalogIndex)
	}
	ev := e.submittedEvent(e.token, r.ID)
	if idx, _ := ev["catalog_index"].(float64); uint64(idx) != r.CatalogIndex || ev["catalog_source"] != "view" {
		t.Errorf("run.submitted: catalog_index %v, catalog_source %v; the run %d", ev["catalog_index"], ev["catalog_source"], r.CatalogIndex)
	}

	// app-1 leaves: a run on web-1 and app-1 targets web-1 alone.
	pair := []string{"-node", "^(web-1|app-1)$"}
	app.Stop()
	t.Cleanup(func() {
		if !app.Running() {
			if err := app.Restart(ctxT(t, time.Minute)); err != nil {
				t.Errorf("restart app-1: %v", err)
			}
		}
	})
	await(t, time.Minute, "app-1 gone from the view", func() bool { _, ok := e.dryRun(e.token, "-node", "^app-1$"); return !ok })
	left := e.runOn(e.token, pair...)
	if got := left.targetNames(); !slices.Equal(got, []string{"web-1"}) || left.CatalogIndex <= r.CatalogIndex {
		t.Errorf("run after app-1 left: on %v at index %d", got, left.CatalogIndex)
	}

	// app-1 joins again.
	if err := app.Restart(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	await(t, time.Minute, "app-1 back in the view", func() bool { _, ok := e.dryRun(e.token, "-node", "^app-1$"); return ok })
	joined := e.runOn(e.token, pair...)
	if got := joined.targetNames(); !slices.Equal(got, []string{"app-1", "web-1"}) || joined.CatalogIndex <= left.CatalogIndex || joined.CatalogSource != "view" {
		t.Errorf("run after app-1 joined: on %v at index %d from %q", got, joined.CatalogIndex, joined.CatalogSource)
	}
}

// TestCatalogViewFallback gives a tenant a Consul address behind a proxy
// that refuses the catalog watch's blocking queries, as a proxy that cuts
// long requests would: the tenant's catalog view cannot watch. Submissions still resolve their targets,
// with a direct read, and say so — in the dry run, the stored run, its
// audit event — and the server logs the breakage once.
func TestCatalogViewFallback(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	target, err := url.Parse("http://" + e.cluster.Agent("web-1").HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Only the catalog watch's long requests: the workers' watches of
		// a run's KV prefix block too, and are not under test.
		if idx := r.URL.Query().Get("index"); r.URL.Path == "/v1/internal/ui/nodes" && idx != "" && idx != "0" {
			http.Error(w, "long requests are not allowed here", http.StatusBadGateway)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	e.svc("tenant", "create", "behind-proxy", "-consul-addr", proxy.Listener.Addr().String(), "-prefix", e.prefix)
	token := e.newToken("behind-proxy", "bob", "submitter,auditor")

	dry, ok := e.dryRun(token, "-node", "^web-")
	if !ok || !slices.Equal(dry.targetNames(), []string{"web-1", "web-2"}) {
		t.Fatalf("dry run: %v %+v", ok, dry)
	}
	// The view's first round does not block and passes; the next fails.
	await(t, time.Minute, "a dry run that reads the catalog directly", func() bool {
		dry, _ = e.dryRun(token, "-node", "^web-")
		return dry.CatalogSource == "direct"
	})
	if !strings.Contains(dry.CatalogReason, "catalog watch failing") || dry.CatalogIndex == 0 {
		t.Errorf("dry run: catalog index %d, reason %q", dry.CatalogIndex, dry.CatalogReason)
	}
	r := e.runOn(token, "-node", "^web-")
	if got := r.targetNames(); !slices.Equal(got, []string{"web-1", "web-2"}) || r.CatalogSource != "direct" || r.CatalogIndex == 0 {
		t.Errorf("run: on %v at index %d from %q", got, r.CatalogIndex, r.CatalogSource)
	}
	ev := e.submittedEvent(token, r.ID)
	if reason, _ := ev["catalog_reason"].(string); ev["catalog_source"] != "direct" || !strings.Contains(reason, "502") {
		t.Errorf("run.submitted: catalog_source %v, catalog_reason %v", ev["catalog_source"], ev["catalog_reason"])
	}
	b, err := os.ReadFile(e.svcLog)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "catalog view broken"); n != 1 {
		t.Errorf("the breakage logged %d times, want once", n)
	}
}
