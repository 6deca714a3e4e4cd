package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
	"github.com/rexec/rexec/internal/jobs"
)

// capacityNodes are the four nodes each run of BenchmarkWorkerCapacity
// targets.
const capacityNodes = "^(web-1|web-2|db-1|app-1)$"

// BenchmarkWorkerCapacity submits REXEC_BENCH_RUNS runs (default 20, so
// that `make bench-smoke` stays short; 500 to measure capacity) of
// `sleep 20` on four nodes at once, all carried by ONE worker process (an
// API-only serve process takes the submissions), and reports the wall
// time until every run finished, how long the runs took from firing to
// finishing, and the worker's peak resident memory (VmHWM) and its growth
// per run over its idle size.
//
//	REXEC_BENCH_RUNS=500 go test ./internal/e2e -run '^$' -bench WorkerCapacity -benchtime 1x -timeout 20m
func BenchmarkWorkerCapacity(b *testing.B) {
	runs := 20
	if v := os.Getenv("REXEC_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("REXEC_BENCH_RUNS=%q: want a positive number", v)
		}
		runs = n
	}
	e := newEnv(b, envOpts{workers: -1})
	worker, logPath := e.startProc("worker", "-workers", strconv.Itoa(max(runs, jobs.WorkersDefault)), "-worker-id", "capacity")
	c, err := client.New(e.addr, e.token)
	if err != nil {
		b.Fatal(err)
	}
	conn := e.conn()
	ctx := context.Background()
	// The worker's idle size, once its workers are started.
	await(b, 30*time.Second, "worker started", func() bool {
		log, _ := os.ReadFile(logPath)
		return strings.Contains(string(log), "workers started")
	})
	idle := procStatusKB(b, worker.Pid(), "VmRSS")

	var wall time.Duration
	var ids []string
	for b.Loop() {
		start := time.Now()
		batch := make([]string, runs)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range runs {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				r, err := c.Submit(ctx, apitype.SubmitRequest{Argv: []string{"sleep 20"}, Node: capacityNodes, Timeout: "5m"})
				if err != nil {
					b.Errorf("submit %d: %v", i, err)
					return
				}
				batch[i] = r.ID
			})
		}
		wg.Wait()
		if b.Failed() {
			b.FailNow()
		}
		submitted := time.Since(start)
		wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		for {
			var done int
			err := conn.QueryRow(wctx, "SELECT count(*) FROM runs WHERE id = any($1) AND finished_at IS NOT NULL", batch).Scan(&done)
			if err != nil {
				cancel()
				b.Fatalf("runs finished: %v", err)
			}
			if done == runs {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		cancel()
		wall += time.Since(start)
		ids = append(ids, batch...)
		b.Logf("%d runs submitted in %s, all finished after %s", runs, submitted.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
	b.StopTimer()
	peak := procStatusKB(b, worker.Pid(), "VmHWM")

	// Every run completed, every node exited 0.
	var completed, exited int
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM runs WHERE id = any($1) AND state = 'completed'),
		(SELECT count(*) FROM run_nodes WHERE run_id = any($1) AND state = 'exited' AND exit_code = 0)`, ids).Scan(&completed, &exited)
	if err != nil {
		b.Fatal(err)
	}
	if completed != len(ids) || exited != 4*len(ids) {
		b.Errorf("%d of %d runs completed, %d of %d nodes exited 0", completed, len(ids), exited, 4*len(ids))
		rows, err := conn.Query(ctx, `SELECT r.state, coalesce(r.outcome, ''), coalesce(r.error, ''), n.state, count(*)
			FROM runs r JOIN run_nodes n ON n.run_id = r.id WHERE r.id = any($1) GROUP BY 1, 2, 3, 4`, ids)
		if err != nil {
			b.Fatal(err)
		}
		for rows.Next() {
			var state, outcome, msg, node string
			var count int
			if err := rows.Scan(&state, &outcome, &msg, &node, &count); err != nil {
				b.Fatal(err)
			}
			b.Logf("runs %s/%s %q: %d nodes %s", state, outcome, msg, count, node)
		}
		b.FailNow()
	}
	rows, err := conn.Query(ctx, "SELECT extract(epoch FROM finished_at - fired_at)::float8 FROM runs WHERE id = any($1)", ids)
	if err != nil {
		b.Fatal(err)
	}
	var took []time.Duration
	for rows.Next() {
		var secs float64
		if err := rows.Scan(&secs); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Duration(secs*float64(time.Second)))
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(runs), "runs")
	b.ReportMetric(wall.Seconds()/n, "wall-s")
	b.ReportMetric(percentile(took, 50).Seconds(), "fired-to-finished-p50-s")
	b.ReportMetric(percentile(took, 99).Seconds(), "fired-to-finished-p99-s")
	b.ReportMetric(float64(idle)/1024, "idle-rss-MiB")
	b.ReportMetric(float64(peak)/1024, "peak-rss-MiB")
	b.ReportMetric(float64(peak-idle)/float64(runs), "KiB/run")
}

// procStatusKB reads a field of /proc/PID/status given in kB.
func procStatusKB(tb testing.TB, pid int, field string) int64 {
	tb.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("%s: %v", field, err)
			}
			return kb
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
