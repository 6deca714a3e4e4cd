package simagent_test

import (
	"bytes"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/testenv"
)

// Lines a real agent logs at debug level (agent/remote_exec.go,
// remoteExecGetSpec): its stale read of the spec found nothing and it
// retries with a consistent one; and the consistent read found nothing
// either, so it gives up without acknowledging.
var (
	staleMissLine   = []byte("trying consistent fetch of remote exec job spec")
	specMissingLine = []byte("remote exec aborted, job spec missing")
)

// BenchmarkWaitRepl runs a trivial command on the four real agents (three
// servers; the agents' reads go to whichever server each one chose) with
// the engine, with wait-repl 0 and 200ms, and reports per run the time
// from Prepare to the run closed, the stale spec reads that missed (read
// from the agents' debug logs) and the nodes that never found the spec or
// did not exit.
//
//	go test ./internal/simagent -run '^$' -bench WaitRepl -benchtime 200x
func BenchmarkWaitRepl(b *testing.B) {
	for _, cmd := range []string{"true", "uptime"} {
		for _, wr := range []time.Duration{0, 200 * time.Millisecond} {
			b.Run("cmd="+cmd+"/wait-repl="+wr.String(), func(b *testing.B) {
				benchWaitRepl(b, cmd, wr)
			})
		}
	}
}

func benchWaitRepl(b *testing.B, cmd string, waitRepl time.Duration) {
	ctx := b.Context()
	cl := testenv.Cluster(b)
	cnt := testenv.NewHTTPCounter()
	c := engine(b, cnt)
	spec := consul.Spec{Argv: []string{cmd}, NodeFilter: "^real-", Prefix: testenv.Prefix(b), WaitRepl: waitRepl}
	targets, err := c.Resolve(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	logCount := func(line []byte) int {
		n := 0
		for _, a := range cl.Clients() {
			data, err := os.ReadFile(a.LogPath())
			if err != nil {
				b.Fatal(err)
			}
			n += bytes.Count(data, line)
		}
		return n
	}
	misses0, missing0 := logCount(staleMissLine), logCount(specMissingLine)
	var times []time.Duration
	// Where a run's time goes: up to the first event fired (session, job
	// spec, wait-repl, the event), from there to the last ack and to the
	// last exit seen by the watcher, and the teardown after.
	var toFire, toAck, toExit, teardown time.Duration
	notExited := 0
	for b.Loop() {
		start := time.Now()
		res, err := c.Run(ctx, spec, targets, (&collector{}).handle)
		if err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		times = append(times, end.Sub(start))
		toFire += res.FiredAt.Sub(start)
		teardown += end.Sub(res.FinishedAt)
		var lastAck, lastExit time.Time
		for _, n := range res.Nodes {
			if n.State != consul.NodeExited || n.ExitCode != 0 {
				notExited++
			}
			lastAck, lastExit = later(lastAck, n.AckedAt), later(lastExit, n.ExitedAt)
		}
		toAck += lastAck.Sub(res.FiredAt)
		toExit += lastExit.Sub(res.FiredAt)
	}
	runs := float64(len(times))
	slices.Sort(times)
	var sum time.Duration
	for _, d := range times {
		sum += d
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(ms(sum)/runs, "ms/run")
	b.ReportMetric(ms(times[len(times)/2]), "p50-ms")
	b.ReportMetric(ms(times[len(times)*95/100]), "p95-ms")
	b.ReportMetric(ms(toFire)/runs, "to-fire-ms")
	b.ReportMetric(ms(toAck)/runs, "fire-to-acks-ms")
	b.ReportMetric(ms(toExit)/runs, "fire-to-exits-ms")
	b.ReportMetric(ms(teardown)/runs, "teardown-ms")
	b.ReportMetric(float64(logCount(staleMissLine)-misses0), "stale-misses")
	b.ReportMetric(float64(logCount(specMissingLine)-missing0), "spec-missing")
	b.ReportMetric(float64(notExited), "nodes-not-exited")
	b.ReportMetric(float64(cnt.Requests.Load())/runs, "req/run")
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
