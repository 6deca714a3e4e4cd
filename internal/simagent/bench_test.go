package simagent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/jobs"
	"github.com/rexec/rexec/internal/simagent"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/storetest"
	"github.com/rexec/rexec/internal/testenv"
)

// envInt is the integer in environment variable name, or def.
func envInt(tb testing.TB, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// archive stores a run's reports as a worker does: one transaction per
// watch round, through jobs.StoreRound, with their audit events. It counts
// what it stored.
type archive struct {
	st     *store.Store
	run    store.Run
	chunks int64
	bytes  int64
	busy   time.Duration // time spent in transactions
}

func (a *archive) handle(ctx context.Context, events []consul.Event) error {
	start := time.Now()
	var stored int64
	err := a.st.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		base := audit.Event{TenantID: a.run.TenantID, RunID: a.run.ID, Actor: "worker:bench"}
		var err error
		stored, err = jobs.StoreRound(ctx, tx, q, base, a.run.OutputCap, events)
		return err
	})
	a.busy += time.Since(start)
	if err == nil {
		for _, ev := range events {
			if ev.Kind == consul.EventOutput {
				a.chunks++
			}
		}
		a.bytes += stored
	}
	return err
}

// vmHWM is the process's peak resident set size in bytes (Linux).
func vmHWM(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				tb.Fatal(err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// BenchmarkEngineScale runs a trivial command with the engine on
// REXEC_BENCH_NODES virtual nodes (default 100), each answering with
// REXEC_BENCH_OUTPUT bytes of output (default 64), archived into Postgres
// as internal/jobs does. Per run it reports the time from the first event
// fired to every node classified, the Consul requests and bytes the
// engine read (target resolution apart), the archive's throughput, and the
// process's peak RSS (simulator included: it shares the process).
// REXEC_BENCH_ARCHIVE=0 leaves Postgres out; REXEC_BENCH_WAIT_S sets the
// run's wait in seconds (default 2).
//
//	REXEC_BENCH_NODES=5000 REXEC_BENCH_WAIT_S=30 go test ./internal/simagent -run '^$' -bench EngineScale -benchtime 1x -timeout 30m
func BenchmarkEngineScale(b *testing.B) {
	ctx := b.Context()
	nodes := envInt(b, "REXEC_BENCH_NODES", 100)
	outSize := envInt(b, "REXEC_BENCH_OUTPUT", 64)
	// REXEC_BENCH_ARCHIVE=0 discards the reports instead of archiving
	// them: the engine and Consul alone.
	archived := os.Getenv("REXEC_BENCH_ARCHIVE") != "0"
	prefix := fmt.Sprintf("scale%d", nodes)
	sim := startSim(b, ctx, simagent.Config{
		Nodes: virtualNodes(prefix, nodes),
		Command: func(node string, job simagent.Job) simagent.Reply {
			out := bytes.Repeat([]byte(node+"\n"), outSize/(len(node)+1)+1)[:outSize]
			return simagent.Reply{Output: out}
		},
	})

	st := storetest.Open(b)
	tenant := storetest.Tenant(b, st, "bench")
	principal := storetest.Principal(b, st, tenant.ID, "bench", store.RoleSubmitter)

	cnt := testenv.NewHTTPCounter()
	c := engine(b, cnt)
	// REXEC_BENCH_WAIT_S sets the run's wait (the quiet period). With
	// thousands of nodes the default 2s can end a run before its last
	// events have gossiped: a run's events leave the gossip layer at some
	// tens per second, and a gap of 2s without reports makes the nodes
	// not yet told no_ack.
	wait := time.Duration(envInt(b, "REXEC_BENCH_WAIT_S", 2)) * time.Second
	spec := consul.Spec{Argv: []string{"uptime"}, NodeFilter: "^" + prefix + "-", Prefix: testenv.Prefix(b), Wait: wait}
	var resolveReq, req, readBytes, chunks, stored, events int64
	sim0 := sim.Stats()
	var resolveT, fireAll, gossipSpan, toFire, toAcks, toClassified, teardown, busy time.Duration
	for b.Loop() {
		n0 := cnt.Requests.Load()
		start := time.Now()
		targets, err := c.Resolve(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		resolveT += time.Since(start)
		resolveReq += cnt.Requests.Load() - n0
		if len(targets) != nodes {
			b.Fatalf("resolved %d targets, want %d", len(targets), nodes)
		}
		run, err := st.InsertRun(ctx, store.Run{TenantID: tenant.ID, SubmittedBy: principal.ID, State: store.StateQueued,
			Argv: spec.Argv, Shell: true, NodeFilter: spec.NodeFilter, Prefix: spec.Prefix, Wait: wait,
			OutputCap: tenant.OutputCap, Targets: []byte("[]")}, nodeNames(targets))
		if err != nil {
			b.Fatal(err)
		}
		arc := &archive{st: st, run: run}
		n0, bytes0 := cnt.Requests.Load(), cnt.Bytes.Load()
		start = time.Now()
		// Client.Run, step by step, to time the firing of every event.
		r, err := c.Prepare(ctx, spec, targets)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Fire(ctx, nil); err != nil {
			b.Fatal(err)
		}
		fireAll += time.Since(start)
		handle := arc.handle
		if !archived {
			handle = func(context.Context, []consul.Event) error { return nil }
		}
		res, err := r.Watch(ctx, handle)
		if err != nil {
			b.Fatal(err)
		}
		if err := r.Close(ctx); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		req += cnt.Requests.Load() - n0
		readBytes += cnt.Bytes.Load() - bytes0
		var lastAck time.Time
		for _, n := range res.Nodes {
			if n.State != consul.NodeExited {
				b.Fatalf("%s: %s, want exited (outcome %s)", n.Node, n.State, res.Outcome)
			}
			lastAck = later(lastAck, n.AckedAt)
		}
		toFire += res.FiredAt.Sub(start)
		// The gossip of every event, to the simulator's member.
		gossipSpan += sim.Stats().LastEventAt.Sub(res.FiredAt)
		toAcks += lastAck.Sub(res.FiredAt)
		toClassified += res.FinishedAt.Sub(res.FiredAt)
		teardown += end.Sub(res.FinishedAt)
		chunks += arc.chunks
		stored += arc.bytes
		busy += arc.busy
		events += int64(res.Events)
	}
	runs := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / runs }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(nodes), "nodes")
	b.ReportMetric(float64(events)/runs, "events/run")
	b.ReportMetric(ms(resolveT), "resolve-ms")
	b.ReportMetric(float64(resolveReq)/runs, "resolve-req")
	b.ReportMetric(ms(toFire), "to-fire-ms")
	b.ReportMetric(ms(fireAll), "all-events-fired-ms")
	b.ReportMetric(ms(gossipSpan), "fire-to-last-event-gossiped-ms")
	b.ReportMetric(ms(toAcks), "fire-to-acks-ms")
	b.ReportMetric(ms(toClassified), "fire-to-classified-ms")
	b.ReportMetric(ms(teardown), "teardown-ms")
	b.ReportMetric(float64(req)/runs, "consul-req/run")
	b.ReportMetric(float64(readBytes)/runs, "consul-read-B/run")
	b.ReportMetric(float64(chunks)/toClassified.Seconds(), "archived-chunks/s")
	b.ReportMetric(float64(stored)/toClassified.Seconds(), "archived-B/s")
	b.ReportMetric(ms(busy), "archive-busy-ms")
	b.ReportMetric(float64(vmHWM(b))/(1<<20), "peak-RSS-MiB")
	sim1 := sim.Stats()
	b.ReportMetric(float64(sim1.Requests-sim0.Requests)/runs, "sim-req/run")
	b.ReportMetric(float64(sim1.StaleMisses-sim0.StaleMisses)/runs, "sim-stale-misses/run")
}

func nodeNames(nodes []consul.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}
