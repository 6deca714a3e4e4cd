package consul_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/testenv"
)

// benchNodes is every node with remote exec on: a node that never answers
// would make both clients wait out their quiet period.
const benchNodes = "^(consul-server|web-.*|db-.*|victim-.*|long-.*)$"

// BenchmarkEngineVsConsulExec runs the same trivial command on the same
// nodes alternately with `consul exec` and with the engine (target
// resolution included), both on the web-1 agent, and reports each one's
// time, Consul HTTP requests and response bytes per run: `consul exec`'s
// counted by a reverse proxy it is pointed at (-http-addr), the engine's
// by its HTTP client's transport.
//
//	go test ./internal/consul -run '^$' -bench EngineVsConsulExec -benchtime 10x
func BenchmarkEngineVsConsulExec(b *testing.B) {
	cl := testenv.Cluster(b)
	target, _ := url.Parse("http://" + cl.Agent("web-1").HTTPAddr())
	var ceRequests, ceBytes atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		resp.Body = &countedBody{ReadCloser: resp.Body, n: &ceBytes}
		return nil
	}
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ceRequests.Add(1)
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	cnt := newConnCounter(consul.MaxConnsDefault)
	client, err := consul.New(consul.Config{Address: target.Host, HTTPClient: &http.Client{Transport: cnt}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	prefix := testenv.Prefix(b)

	var ceTime, enTime time.Duration
	var ceReq, enReq, ceB, enB int64
	for b.Loop() {
		n, nb := ceRequests.Load(), ceBytes.Load()
		start := time.Now()
		rep := consulExec(b, ctx, proxy.Listener.Addr().String(), nil, "-prefix", prefix, "-node", benchNodes, "true")
		ceTime += time.Since(start)
		ceReq += ceRequests.Load() - n
		ceB += ceBytes.Load() - nb
		if rep.code != 0 || len(rep.exits) == 0 {
			b.Fatalf("consul exec: code %d, %d nodes", rep.code, len(rep.exits))
		}

		n, nb = cnt.requests.Load(), cnt.bytes.Load()
		start = time.Now()
		spec := consul.Spec{Argv: []string{"true"}, NodeFilter: benchNodes, Prefix: prefix}
		targets, err := client.Resolve(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		res, err := client.Run(ctx, spec, targets, func(ctx context.Context, _ []consul.Event) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		enTime += time.Since(start)
		enReq += cnt.requests.Load() - n
		enB += cnt.bytes.Load() - nb
		if exited, _ := res.Counts(); exited != len(rep.exits) || res.Outcome != consul.OutcomeCompleted {
			b.Fatalf("engine: %d nodes exited (%s), consul exec %d", exited, res.Outcome, len(rep.exits))
		}
	}
	runs := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(ceTime.Milliseconds())/runs, "consul-exec-ms/run")
	b.ReportMetric(float64(enTime.Milliseconds())/runs, "engine-ms/run")
	b.ReportMetric(float64(enTime)/float64(ceTime), "time-ratio")
	b.ReportMetric(float64(ceReq)/runs, "consul-exec-req/run")
	b.ReportMetric(float64(enReq)/runs, "engine-req/run")
	b.ReportMetric(float64(ceB)/runs, "consul-exec-B/run")
	b.ReportMetric(float64(enB)/runs, "engine-B/run")
	b.ReportMetric(float64(enReq)/float64(ceReq), "req-ratio")
	b.ReportMetric(float64(enB)/float64(ceB), "bytes-ratio")
}
