package e2e_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/api"
	"github.com/rexec/rexec/internal/client"
)

// BenchmarkCLIVsConsulExec runs `true` on the five agents with remote exec
// on, alternately with rexec-cli exec (through rexec-svc, its queue and a
// worker) and consul exec, default settings, and reports both.
//
//	go test ./internal/e2e -run '^$' -bench CLIVsConsulExec -benchtime 10x
func BenchmarkCLIVsConsulExec(b *testing.B) {
	e := newEnv(b, envOpts{})
	var rexec, ce time.Duration
	for b.Loop() {
		start := time.Now()
		r := e.cli(nil, "exec", "-node", execNodes, "true")
		rexec += time.Since(start)
		if r.code != 0 {
			b.Fatalf("rexec-cli exec: %d %s%s", r.code, r.stdout, r.stderr)
		}
		start = time.Now()
		c := e.consulExec(nil, "-node", execNodes, "true")
		ce += time.Since(start)
		if c.code != 0 {
			b.Fatalf("consul exec: %d %s%s", c.code, c.stdout, c.stderr)
		}
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(rexec.Milliseconds())/n, "rexec-ms/run")
	b.ReportMetric(float64(ce.Milliseconds())/n, "consul-exec-ms/run")
	b.ReportMetric(float64(rexec)/float64(ce), "time-ratio")
}

// BenchmarkSubmit measures submissions accepted per second by one API-only
// rexec-svc (no workers) from 32 concurrent clients; each submission
// resolves its targets from Consul and commits the run, its audit events
// and its River job.
//
//	go test ./internal/e2e -run '^$' -bench Submit -benchtime 2000x
func BenchmarkSubmit(b *testing.B) {
	e := newEnv(b, envOpts{workers: -1})
	c, err := client.New(e.addr, e.token)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var failed atomic.Int64
	b.SetParallelism(16) // 16 × GOMAXPROCS(2) = 32 clients
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Submit(ctx, api.SubmitRequest{Argv: []string{"true"}, Node: "^web-"}); err != nil {
				failed.Add(1)
			}
		}
	})
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d submissions failed", n)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "submissions/s")
}

// BenchmarkQueuePickup measures, for runs submitted one after another to
// rexec-svc with workers, the time from submission to a worker starting
// the run and to the event being fired (which includes wait-repl, 200ms by
// default): median and p99.
//
//	go test ./internal/e2e -run '^$' -bench QueuePickup -benchtime 200x
func BenchmarkQueuePickup(b *testing.B) {
	e := newEnv(b, envOpts{})
	c, err := client.New(e.addr, e.token)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var ids []string
	for b.Loop() {
		r, err := c.Submit(ctx, api.SubmitRequest{Argv: []string{"true"}, Node: "^web-1$"})
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, r.ID)
		// One run at a time: queue pickup, not worker saturation.
		for {
			p, err := c.Stream(ctx, r.ID, 0, 10*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if p.Done {
				break
			}
		}
	}
	b.StopTimer()
	var pickup, fired []time.Duration
	for _, id := range ids {
		r, err := c.Get(ctx, id)
		if err != nil || r.StartedAt == nil || r.FiredAt == nil {
			b.Fatalf("run %s: %v %+v", id, err, r)
		}
		pickup = append(pickup, r.StartedAt.Sub(r.CreatedAt))
		fired = append(fired, r.FiredAt.Sub(r.CreatedAt))
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(percentile(pickup, 50)), "pickup-p50-ms")
	b.ReportMetric(ms(percentile(pickup, 99)), "pickup-p99-ms")
	b.ReportMetric(ms(percentile(fired, 50)), "fired-p50-ms")
	b.ReportMetric(ms(percentile(fired, 99)), "fired-p99-ms")
}

func percentile(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p)/100)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
