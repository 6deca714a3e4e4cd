package simagent_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/testenv"
)

// proxyCounter is a reverse proxy to one agent that counts the requests
// and response bytes of whoever talks to Consul through it: its transport
// to the agent is a testenv.HTTPCounter.
type proxyCounter struct {
	srv *httptest.Server
	*testenv.HTTPCounter
}

func newProxyCounter(agent string) *proxyCounter {
	target, _ := url.Parse("http://" + agent)
	rp := httputil.NewSingleHostReverseProxy(target)
	cnt := testenv.NewHTTPCounter()
	rp.Transport = cnt
	return &proxyCounter{srv: httptest.NewServer(rp), HTTPCounter: cnt}
}

var finishedLine = regexp.MustCompile(`(?m)^==> [^:]+: finished with exit code 0$`)

// BenchmarkAgentsVsConsulExec starts a loopback cluster of one server and
// REXEC_BENCH_AGENTS client agents (default 2, so that CI's one-iteration
// run stays small; 30 to measure, about 90 MB each) and runs `uptime` on
// every node alternately with `consul exec` and with the engine, both
// through one counting proxy in front of a client agent. It reports each
// one's time and Consul HTTP requests and response bytes per run.
// `consul exec` always waits out its quiet period (-wait, 2s); the engine
// ends once every node exited.
//
// The engine resolves its targets as a submission does: from a catalog
// view (consul.CatalogView) that lives across runs. The view talks to the
// agent through a counting proxy of its own, since what it reads depends
// on the catalog's churn, not on runs: its first sync, which a tenant pays
// once, and what it read during the runs (answers to its blocking query on
// a catalog change, or after its WaitTime) are reported apart (view-sync-*,
// view-*/run).
//
//	REXEC_BENCH_AGENTS=30 go test ./internal/simagent -run '^$' -bench AgentsVsConsulExec -benchtime 5x
func BenchmarkAgentsVsConsulExec(b *testing.B) {
	ctx := b.Context()
	n := envInt(b, "REXEC_BENCH_AGENTS", 2)
	var clients []localconsul.AgentConfig
	for i := 1; i <= n; i++ {
		clients = append(clients, localconsul.AgentConfig{Name: fmt.Sprintf("agent-%02d", i)})
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cl, err := localconsul.Start(sctx, localconsul.Config{Clients: clients, StartTimeout: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Stop()
	bin, err := localconsul.FindBinary(ctx)
	if err != nil {
		b.Fatal(err)
	}
	proxy := newProxyCounter(cl.Clients()[0].HTTPAddr())
	defer proxy.srv.Close()
	addr := proxy.srv.Listener.Addr().String()
	c, err := consul.New(consul.Config{Address: addr})
	if err != nil {
		b.Fatal(err)
	}
	prefix := testenv.Prefix(b)
	nodes := n + 1 // the server runs commands too

	viewProxy := newProxyCounter(cl.Clients()[0].HTTPAddr())
	defer viewProxy.srv.Close()
	vc, err := consul.New(consul.Config{Address: viewProxy.srv.Listener.Addr().String()})
	if err != nil {
		b.Fatal(err)
	}
	view := consul.NewCatalogView(vc, consul.ViewConfig{})
	defer view.Close()
	if _, info, err := view.Resolve(ctx, consul.Spec{Argv: []string{"uptime"}, Prefix: prefix}); err != nil || info.Source != consul.SourceView {
		b.Fatalf("catalog view: %v %+v", err, info)
	}
	syncReq, syncBytes := viewProxy.Requests.Load(), viewProxy.Bytes.Load()

	var ceTime, enTime time.Duration
	var ceReq, enReq, ceBytes, enBytes int64
	// Where the engine's time goes: start to the event fired (session and
	// job spec), fire to the last ack and to the last exit seen.
	var toFire, toAck, toExit time.Duration
	for b.Loop() {
		r0, b0 := proxy.Requests.Load(), proxy.Bytes.Load()
		start := time.Now()
		out, err := exec.CommandContext(ctx, bin, "exec", "-http-addr="+addr, "-prefix", prefix, "uptime").CombinedOutput()
		ceTime += time.Since(start)
		ceReq += proxy.Requests.Load() - r0
		ceBytes += proxy.Bytes.Load() - b0
		if got := len(finishedLine.FindAll(out, -1)); err != nil || got != nodes {
			b.Fatalf("consul exec: %v, %d of %d nodes finished:\n%s", err, got, nodes, bytes.TrimSpace(out))
		}

		r0, b0 = proxy.Requests.Load(), proxy.Bytes.Load()
		start = time.Now()
		spec := consul.Spec{Argv: []string{"uptime"}, Prefix: prefix}
		targets, info, err := view.Resolve(ctx, spec)
		if err != nil || info.Source != consul.SourceView {
			b.Fatalf("resolve: %v %+v", err, info)
		}
		res, err := c.Run(ctx, spec, targets, (&collector{}).handle)
		if err != nil {
			b.Fatal(err)
		}
		enTime += time.Since(start)
		enReq += proxy.Requests.Load() - r0
		enBytes += proxy.Bytes.Load() - b0
		if exited, _ := res.Counts(); exited != nodes {
			b.Fatalf("engine: %d of %d nodes exited (%s)", exited, nodes, res.Outcome)
		}
		toFire += res.FiredAt.Sub(start)
		var lastAck, lastExit time.Time
		for _, nr := range res.Nodes {
			lastAck, lastExit = later(lastAck, nr.AckedAt), later(lastExit, nr.ExitedAt)
		}
		toAck += lastAck.Sub(res.FiredAt)
		toExit += lastExit.Sub(res.FiredAt)
	}
	runs := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(nodes), "nodes")
	b.ReportMetric(float64(ceTime.Milliseconds())/runs, "consul-exec-ms/run")
	b.ReportMetric(float64(enTime.Milliseconds())/runs, "engine-ms/run")
	b.ReportMetric(float64(enTime)/float64(ceTime), "time-ratio")
	b.ReportMetric(float64(toFire.Milliseconds())/runs, "engine-fire-ms/run")
	b.ReportMetric(float64(toAck.Milliseconds())/runs, "engine-last-ack-ms/run")
	b.ReportMetric(float64(toExit.Milliseconds())/runs, "engine-last-exit-ms/run")
	b.ReportMetric(float64(ceReq)/runs, "consul-exec-req/run")
	b.ReportMetric(float64(enReq)/runs, "engine-req/run")
	b.ReportMetric(float64(ceBytes)/runs, "consul-exec-B/run")
	b.ReportMetric(float64(enBytes)/runs, "engine-B/run")
	b.ReportMetric(float64(enReq)/float64(ceReq), "req-ratio")
	b.ReportMetric(float64(enBytes)/float64(ceBytes), "bytes-ratio")
	b.ReportMetric(float64(syncReq), "view-sync-req")
	b.ReportMetric(float64(syncBytes), "view-sync-B")
	b.ReportMetric(float64(viewProxy.Requests.Load()-syncReq)/runs, "view-req/run")
	b.ReportMetric(float64(viewProxy.Bytes.Load()-syncBytes)/runs, "view-B/run")
}
