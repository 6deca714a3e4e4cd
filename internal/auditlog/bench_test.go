package auditlog_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditlog"
	"github.com/rexec/rexec/internal/auditproof"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

// BenchEventsEnv sets how many audit events the benchmarks generate (ten
// per run). The README's figures are for 10,000,000; the default keeps
// `make bench-smoke` quick.
const BenchEventsEnv = "REXEC_BENCH_EVENTS"

// BenchDatabaseEnv names a database to keep the generated events in
// between runs: generating ten million takes most of an hour, and the
// query benchmarks of package audit read the same data. Empty: a database
// of the test run's own.
const BenchDatabaseEnv = "REXEC_BENCH_DATABASE_URL"

// dataset is a database of generated runs' events, logged and signed,
// shared by the benchmarks of one process.
type dataset struct {
	st      *store.Store
	log     *auditlog.Log
	key     note.Verifier
	signer  note.Signer
	tenant  int64
	events  int64
	runs    int64
	nodes   int
	setupIn time.Duration
	logIn   time.Duration
}

var (
	benchOnce sync.Once
	benchData *dataset
	benchErr  error
)

// benchDataset generates the events of runs over 90 days: each run has a
// submission, a policy decision, queue, start and fire events, three nodes'
// exits (one in seven fails), its end and an output read; principals and
// nodes are spread over 50 and 1,000.
func benchDataset(b *testing.B) *dataset {
	b.Helper()
	benchOnce.Do(func() { benchData, benchErr = generate(b) })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchData
}

func generate(b *testing.B) (*dataset, error) {
	events := int64(20_000)
	if v := os.Getenv(BenchEventsEnv); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 10 {
			return nil, fmt.Errorf("$%s: want a number ≥ 10", BenchEventsEnv)
		}
		events = n
	}
	ctx := context.Background()
	url := os.Getenv(BenchDatabaseEnv)
	if url == "" {
		// The database outlives this benchmark's b: it is dropped at exit.
		url = testenv.Database(sharedTB{b})
	}
	st, err := store.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	if err := store.Migrate(ctx, st.Pool(), slog.New(slog.DiscardHandler)); err != nil {
		return nil, err
	}
	d := &dataset{st: st, events: events, runs: events / 10, nodes: 1000}
	// The same key every time, from a fixed seed: a kept dataset's
	// checkpoints verify in a later run. (A benchmark's key, no secret.)
	skey, vkey, err := note.GenerateKey(bytes.NewReader(make([]byte, 64)), "rexec-bench")
	if err != nil {
		return nil, err
	}
	if d.signer, err = note.NewSigner(skey); err != nil {
		return nil, err
	}
	if d.key, err = note.NewVerifier(vkey); err != nil {
		return nil, err
	}
	tn, err := st.TenantByName(ctx, "bench")
	reuse := err == nil
	if !reuse {
		if tn, err = st.CreateTenant(ctx, store.Tenant{Name: "bench", ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1 << 20}); err != nil {
			return nil, err
		}
	}
	d.tenant = tn.ID
	if d.log, err = auditlog.New(st.Pool(), auditlog.Config{Signer: d.signer, Batch: 20_000,
		Logs: func(context.Context) (map[int64]string, error) { return map[int64]string{tn.ID: "bench"}, nil }}); err != nil {
		return nil, err
	}
	if !reuse {
		if err := d.write(ctx, b); err != nil {
			return nil, err
		}
	}
	start := time.Now()
	for {
		n, err := d.log.IntegrateAll(ctx)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			break
		}
	}
	d.logIn = time.Since(start)
	if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM audit_leaves WHERE log_id = $1", d.tenant).Scan(&d.events); err != nil {
		return nil, err
	}
	d.runs = d.events / 10
	if _, err := st.Pool().Exec(ctx, "ANALYZE"); err != nil {
		return nil, err
	}
	b.Logf("dataset: %d events of %d runs; written in %s, logged (what was left of them) in %s",
		d.events, d.runs, d.setupIn.Round(time.Second), d.logIn.Round(time.Second))
	return d, nil
}

// write generates the dataset's events.
func (d *dataset) write(ctx context.Context, b *testing.B) error {
	st := d.st
	start := time.Now()
	first := time.Now().Add(-90 * 24 * time.Hour)
	step := 90 * 24 * time.Hour / time.Duration(d.runs)
	rows := make(chan []any, 10_000)
	go func() {
		defer close(rows)
		for r := range d.runs {
			for _, e := range runEvents(d.tenant, r, first.Add(time.Duration(r)*step), d.nodes) {
				body, err := e.Body()
				if err != nil {
					panic(err)
				}
				rows <- []any{string(body)}
			}
		}
	}()
	if _, err := st.Pool().CopyFrom(ctx, pgx.Identifier{"audit_events"}, []string{"body"}, &chanSource{ch: rows}); err != nil {
		return fmt.Errorf("copy events: %w", err)
	}
	d.setupIn = time.Since(start)
	return nil
}

func runEvents(tenant, r int64, t time.Time, nodes int) []audit.Event {
	run := fmt.Sprintf("%08x-0000-4000-8000-%012x", r>>16, r)
	principal := fmt.Sprintf("user-%d", r%50)
	ev := func(typ, actor, node string, data map[string]any) audit.Event {
		t = t.Add(time.Millisecond)
		return audit.Event{TenantID: tenant, RunID: run, Node: node, Actor: actor, Type: typ, Time: t,
			RequestID: fmt.Sprintf("%016x", r), ClientAddr: "10.0.0.1", Data: data}
	}
	var out []audit.Event
	targets := []string{}
	for k := range 3 {
		targets = append(targets, fmt.Sprintf("node-%d", (int(r)*3+k)%nodes))
	}
	out = append(out,
		ev(audit.RunSubmitted, principal, "", map[string]any{"command": "systemctl restart app-" + strconv.FormatInt(r%20, 10),
			"filters": map[string]any{"service": fmt.Sprintf("svc-%d", r%100)}, "targets": targets, "reason": "change CHG-" + strconv.FormatInt(r, 10)}),
		ev(audit.PolicyDecided, principal, "", map[string]any{"outcome": "allow", "revision": "bbeaab08220b6beaa791ada7e44202493152fb8e7fb9961499f2a05ca79d33bf"}),
		ev(audit.RunQueued, principal, "", nil),
		ev(audit.RunStarted, "worker:w1", "", nil),
		ev(audit.EventFired, "worker:w1", "", map[string]any{"event_id": run, "nodes": targets}),
	)
	for k, n := range targets {
		code := 0
		if (r+int64(k))%7 == 0 {
			code = 1
		}
		out = append(out, ev(audit.NodeExited, "worker:w1", n, map[string]any{"exit_code": code, "bytes": 1024 + r%4096,
			"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}))
	}
	out = append(out,
		ev(audit.RunFinished, "worker:w1", "", map[string]any{"state": "completed"}),
		ev(audit.OutputRead, principal, "", map[string]any{"bytes": 3072}))
	return out
}

type chanSource struct {
	ch  chan []any
	row []any
}

func (s *chanSource) Next() bool {
	var ok bool
	s.row, ok = <-s.ch
	return ok
}
func (s *chanSource) Values() ([]any, error) { return s.row, nil }
func (s *chanSource) Err() error             { return nil }

// sharedTB lets the dataset's database outlive the benchmark that made it:
// it is dropped when the test binary exits, not when b ends.
type sharedTB struct{ testing.TB }

func (sharedTB) Cleanup(func()) {}

// BenchmarkInclusionProof proves a random leaf's inclusion in the latest
// checkpoint, as `audit prove` does for each of a run's events.
func BenchmarkInclusionProof(b *testing.B) {
	d := benchDataset(b)
	ctx := context.Background()
	cp, err := d.log.Latest(ctx, d.tenant)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		n, _ := rand.Int(rand.Reader, big.NewInt(cp.Size))
		if _, err := d.log.ProveInclusion(ctx, d.tenant, n.Int64(), cp.Size); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerify recomputes the whole log and checks every checkpoint,
// as `rexec-cli audit verify` does (here without HTTP in between).
func BenchmarkVerify(b *testing.B) {
	d := benchDataset(b)
	ctx := context.Background()
	for b.Loop() {
		res, err := auditproof.VerifyLog(ctx, d.log.Source(d.tenant), d.key, nil)
		if err != nil {
			b.Fatal(err)
		}
		if res.Size != d.events {
			b.Fatalf("verified %d of %d", res.Size, d.events)
		}
	}
	b.ReportMetric(float64(d.events*int64(b.N))/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAppend measures what the log costs writers: 16 writers record
// a run's ten events per transaction, with the integrator off and then
// logging and signing concurrently. Goal: on within 20% of off.
func BenchmarkAppend(b *testing.B) {
	d := benchDataset(b)
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("log=%t", on), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var wg sync.WaitGroup
			if on {
				wg.Go(func() { _ = d.log.Run(ctx) })
			}
			var next atomic.Int64
			next.Store(d.runs * 2)
			b.SetParallelism(8) // 8 × GOMAXPROCS writers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := next.Add(1)
					evs := runEvents(d.tenant, r, time.Now(), d.nodes)
					if err := pgx.BeginFunc(ctx, d.st.Pool(), func(tx pgx.Tx) error { return audit.Record(ctx, tx, evs...) }); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(10*b.N)/b.Elapsed().Seconds(), "events/s")
			cancel()
			wg.Wait()
		})
	}
}
