package consul_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/testenv"
)

// readsCounter counts the requests that are not blocking queries: direct
// catalog reads, and a view's first round.
type readsCounter struct{ n atomic.Int64 }

func (c *readsCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if idx := r.URL.Query().Get("index"); idx == "" || idx == "0" {
		c.n.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// awaitResolve resolves spec with v until ok accepts the answer.
func awaitResolve(t *testing.T, ctx context.Context, v *consul.CatalogView, what string, spec consul.Spec,
	ok func([]string, consul.ResolveInfo, error) bool) consul.ResolveInfo {
	t.Helper()
	var last string
	for {
		nodes, info, err := v.Resolve(ctx, spec)
		if ok(nodeNames(nodes), info, err) {
			return info
		}
		last = strings.Join(nodeNames(nodes), ",") + " " + info.Source + " " + info.Reason
		if err != nil {
			last += " " + err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not seen (last: %s)", what, last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// fromView accepts a resolution served by the view with exactly want.
func fromView(want ...string) func([]string, consul.ResolveInfo, error) bool {
	return func(got []string, info consul.ResolveInfo, err error) bool {
		return err == nil && info.Source == consul.SourceView && slices.Equal(got, want)
	}
}

// noneFromView accepts a resolution served by the view that matched nothing.
func noneFromView(_ []string, info consul.ResolveInfo, err error) bool {
	return errors.Is(err, consul.ErrNoTargets) && info.Source == consul.SourceView
}

// TestCatalogViewFollowsCluster: a view sees a service's tags change and a
// node leave and join, each at a higher index, agrees with a direct read,
// and serves resolutions without a request. Not parallel: it stops an
// agent.
func TestCatalogViewFollowsCluster(t *testing.T) {
	cl := testenv.Cluster(t)
	ctx := ctxT(t, 3*time.Minute)
	reads := &readsCounter{}
	c, err := consul.New(consul.Config{Address: cl.Agent("web-1").HTTPAddr(), HTTPClient: &http.Client{Transport: reads}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	v := consul.NewCatalogView(c, consul.ViewConfig{})
	t.Cleanup(v.Close)

	info := awaitResolve(t, ctx, v, "every node", consul.Spec{}, fromView(allAlive(cl)...))
	if info.Index == 0 || info.Reason != "" {
		t.Errorf("info %+v", info)
	}
	before := reads.n.Load()
	for range 1000 {
		if _, info, err := v.Resolve(ctx, consul.Spec{ServiceFilter: "^web$", TagFilter: "^v1$"}); err != nil || info.Source != consul.SourceView {
			t.Fatalf("resolve: %v %+v", err, info)
		}
	}
	if n := reads.n.Load() - before; n != 0 {
		t.Errorf("1000 resolutions from the view sent %d reads to Consul", n)
	}
	agreesWithDirectRead(t, ctx, v, c)

	// A service's tags change.
	db1, err := api.NewClient(&api.Config{Address: cl.Agent("db-1").HTTPAddr()})
	if err != nil {
		t.Fatal(err)
	}
	svc := "catview-" + strings.ReplaceAll(testenv.Prefix(t)[len("rexec-test/"):], "/", "-")
	register := func(tags ...string) {
		t.Helper()
		if err := db1.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: svc, Name: svc, Tags: tags}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = db1.Agent().ServiceDeregister(svc) })
	register("old")
	old := consul.Spec{ServiceFilter: "^" + svc + "$", TagFilter: "^old$"}
	tagged := awaitResolve(t, ctx, v, "the new service, tagged old", old, fromView("db-1"))
	register("new")
	retagged := awaitResolve(t, ctx, v, "the service tagged new", consul.Spec{ServiceFilter: old.ServiceFilter, TagFilter: "^new$"}, fromView("db-1"))
	awaitResolve(t, ctx, v, "the old tag gone", old, noneFromView)
	if retagged.Index <= tagged.Index {
		t.Errorf("index %d after the tag change, %d before", retagged.Index, tagged.Index)
	}
	agreesWithDirectRead(t, ctx, v, c)

	// A node leaves and joins again.
	victim := cl.Agent("victim-1")
	victim.Stop()
	t.Cleanup(func() {
		if !victim.Running() { // the test failed before restarting it
			if err := victim.Restart(context.Background()); err != nil {
				t.Errorf("restart victim-1: %v", err)
			}
		}
	})
	only := consul.Spec{NodeFilter: "^victim-1$"}
	left := awaitResolve(t, ctx, v, "victim-1 gone", only, noneFromView)
	agreesWithDirectRead(t, ctx, v, c)
	if err := victim.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	joined := awaitResolve(t, ctx, v, "victim-1 back", only, fromView("victim-1"))
	if !(retagged.Index < left.Index && left.Index < joined.Index) {
		t.Errorf("indexes: tag change %d, leave %d, join %d", retagged.Index, left.Index, joined.Index)
	}
	agreesWithDirectRead(t, ctx, v, c)
}

// agreesWithDirectRead waits until the view's snapshot and a direct read
// (ReadCatalog) list the same nodes and services.
func agreesWithDirectRead(t *testing.T, ctx context.Context, v *consul.CatalogView, c *consul.Client) {
	t.Helper()
	for {
		snap, ok, reason := v.Snapshot()
		direct, err := c.ReadCatalog(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok && reflect.DeepEqual(snap.Nodes, direct.Nodes) {
			t.Logf("view at index %d, direct read at %d: %d nodes alike", snap.Index, direct.Index, len(snap.Nodes))
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the view (ok %t %s) never agreed with a direct read:\nview   %+v\ndirect %+v", ok, reason, snap.Nodes, direct.Nodes)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// syncBuffer is a log destination safe for the view's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

// TestCatalogViewBrokenWatch puts a reverse proxy that gives up on an
// answer after half a second in front of the agent, as a load balancer with a
// short timeout would: every blocking query fails, short reads pass.
// Resolutions fall back to a direct read and say so, the breakage is
// logged once, and when the proxy lets blocking queries through again the
// view recovers.
func TestCatalogViewBrokenWatch(t *testing.T) {
	t.Parallel()
	cl := testenv.Cluster(t)
	ctx := ctxT(t, 2*time.Minute)
	target, err := url.Parse("http://" + cl.Agent("web-1").HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	patient := httputil.NewSingleHostReverseProxy(target)
	impatient := httputil.NewSingleHostReverseProxy(target)
	impatient.Transport = &http.Transport{ResponseHeaderTimeout: 500 * time.Millisecond}
	var cutting atomic.Bool
	cutting.Store(true)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cutting.Load() {
			impatient.ServeHTTP(w, r)
			return
		}
		patient.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)

	logs := &syncBuffer{}
	c, err := consul.New(consul.Config{Address: proxy.Listener.Addr().String(), Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	v := consul.NewCatalogView(c, consul.ViewConfig{WaitTime: 3 * time.Second, BackoffMax: 500 * time.Millisecond})
	t.Cleanup(v.Close)
	const broken = "catalog view broken"

	spec := consul.Spec{NodeFilter: "^(web|db)-"}
	want := []string{"db-1", "web-1", "web-2"}
	// The first round does not block, so it passes; the second fails.
	awaitResolve(t, ctx, v, "a direct read reporting the failing watch", spec, func(got []string, info consul.ResolveInfo, err error) bool {
		if err != nil || info.Source != consul.SourceDirect {
			return false
		}
		if !slices.Equal(got, want) || info.Index == 0 || !strings.Contains(info.Reason, "catalog watch failing") || !strings.Contains(info.Reason, "502") {
			t.Errorf("fallback: %v %+v", got, info)
		}
		return true
	})
	// The read after each failure does not block and passes, but the
	// watch counts as broken until a blocking round succeeds: every
	// resolution reads directly, and the breakage is logged once.
	for range 5 {
		if _, info, err := v.Resolve(ctx, spec); err != nil || info.Source != consul.SourceDirect || info.Reason == "" {
			t.Errorf("resolve while broken: %v %+v", err, info)
		}
		time.Sleep(200 * time.Millisecond) // spread over several of the watch's retries, not a synchronisation
	}
	if n := logs.count(broken); n != 1 {
		t.Errorf("breakage logged %d times, want once:\n%s", n, logs.String())
	}

	cutting.Store(false)
	for logs.count("catalog view recovered") == 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("the view never recovered:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	awaitResolve(t, ctx, v, "the view serving again", spec, fromView(want...))
	// A second breakage is reported again.
	cutting.Store(true)
	awaitResolve(t, ctx, v, "the second breakage", spec, func(_ []string, info consul.ResolveInfo, err error) bool {
		return err == nil && info.Source == consul.SourceDirect
	})
	if n := logs.count(broken); n != 2 {
		t.Errorf("two breakages logged %d times", n)
	}
}
