package consul_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
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
// Two commands: `true`, where every report arrives at once (the engine's
// worst case: little to read again), and ten lines over five seconds,
// where `consul exec` reads every report again at each round.
//
//	go test ./internal/consul -run '^$' -bench EngineVsConsulExec -benchtime 10x
func BenchmarkEngineVsConsulExec(b *testing.B) {
	for _, bc := range []struct {
		name string
		cmd  string
	}{
		{name: "true", cmd: "true"},
		{name: "lines", cmd: "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.5; done"},
	} {
		b.Run(bc.name, func(b *testing.B) { benchEngineVsConsulExec(b, bc.cmd) })
	}
}

func benchEngineVsConsulExec(b *testing.B, cmd string) {
	cl := testenv.Cluster(b)
	target, _ := url.Parse("http://" + cl.Agent("web-1").HTTPAddr())
	// Both clients' requests are counted by the same kind of transport:
	// `consul exec`'s in the proxy in front of the agent, the engine's in
	// its own client.
	ceCnt := newConnCounter(consul.MaxConnsDefault)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = ceCnt
	proxy := httptest.NewServer(rp)
	defer proxy.Close()
	cnt := newConnCounter(consul.MaxConnsDefault)
	client, err := consul.New(consul.Config{Address: target.Host, HTTPClient: &http.Client{Transport: cnt}})
	if err != nil {
		b.Fatal(err)
	}
	ctx := b.Context()
	prefix := testenv.Prefix(b)

	var ceTime, enTime time.Duration
	var ceReq, enReq, rsReq, ceB, enB, rsB int64
	for b.Loop() {
		n, nb := ceCnt.requests.Load(), ceCnt.wire.Load()
		start := time.Now()
		rep := consulExec(b, ctx, proxy.Listener.Addr().String(), nil, "-prefix", prefix, "-node", benchNodes, cmd)
		ceTime += time.Since(start)
		ceReq += ceCnt.requests.Load() - n
		ceB += ceCnt.wire.Load() - nb
		if rep.code != 0 || len(rep.exits) == 0 {
			b.Fatalf("consul exec: code %d, %d nodes", rep.code, len(rep.exits))
		}

		n, nb = cnt.requests.Load(), cnt.wire.Load()
		start = time.Now()
		spec := consul.Spec{Argv: []string{cmd}, NodeFilter: benchNodes, Prefix: prefix}
		targets, err := client.Resolve(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		rsReq += cnt.requests.Load() - n
		rsB += cnt.wire.Load() - nb
		res, err := client.Run(ctx, spec, targets, func(ctx context.Context, _ []consul.Event) error { return nil })
		if err != nil {
			b.Fatal(err)
		}
		enTime += time.Since(start)
		enReq += cnt.requests.Load() - n
		enB += cnt.wire.Load() - nb
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
	// Bytes read from the connections to the agent: headers and bodies as
	// the agent sends them (gzip-compressed when large, for both clients).
	b.ReportMetric(float64(ceB)/runs, "consul-exec-B/run")
	b.ReportMetric(float64(enB)/runs, "engine-B/run")
	b.ReportMetric(float64(enReq)/float64(ceReq), "req-ratio")
	b.ReportMetric(float64(enB)/float64(ceB), "bytes-ratio")
	// The run alone, without resolving the targets from the catalog
	// (which `consul exec` does not do: it lets the agents filter
	// themselves).
	b.ReportMetric(float64(rsReq)/runs, "resolve-req/run")
	b.ReportMetric(float64(rsB)/runs, "resolve-B/run")
	b.ReportMetric(float64(enReq-rsReq)/float64(ceReq), "run-req-ratio")
	b.ReportMetric(float64(enB-rsB)/float64(ceB), "run-bytes-ratio")
}
