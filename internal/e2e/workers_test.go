package e2e_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type nodeJSON struct {
	Node     string     `json:"node"`
	State    string     `json:"state"`
	ExitCode *int       `json:"exit_code"`
	AckedAt  *time.Time `json:"acked_at"`
	Bytes    int64      `json:"bytes"`
}

type runJSON struct {
	ID         string     `json:"id"`
	State      string     `json:"state"`
	Outcome    string     `json:"outcome"`
	Error      string     `json:"error"`
	StartBy    time.Time  `json:"start_by"`
	FiringAt   *time.Time `json:"firing_at"`
	FiredAt    *time.Time `json:"fired_at"`
	Recoveries int        `json:"recoveries"`
	Nodes      []nodeJSON `json:"nodes"`
}

func (e *env) show(id string) runJSON {
	e.t.Helper()
	res := e.cli(nil, "jobs", "show", id, "-json")
	var r runJSON
	if res.code != 0 || json.Unmarshal([]byte(res.stdout), &r) != nil {
		e.t.Fatalf("jobs show %s: exit %d\n%s%s", id, res.code, res.stdout, res.stderr)
	}
	return r
}

// TestWorkerKilled stops the worker after the event was fired and the
// nodes started — killed with SIGKILL, or shut down with SIGTERM (it
// detaches and lets go) —; a new worker re-attaches, the run completes with
// all its output, and no node ran the command twice.
func TestWorkerKilled(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			testWorkerStopped(t, sig)
		})
	}
}

func testWorkerStopped(t *testing.T, sig syscall.Signal) {
	e := newEnv(t, envOpts{workers: -1}) // the API process runs no workers
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	cmd := fmt.Sprintf("echo run >> %s/$(basename $PWD); echo before; while [ ! -f %s ]; do sleep 0.05; done; echo after", dir, gate)
	nodes := []string{"web-1", "web-2", "db-1"}
	workerA, _ := e.startProc("worker", "-workers", "2", "-worker-id", "A", "-lease-ttl", "2s")

	sub := e.cli(nil, "exec", "-detach", "-node", "^(web-1|web-2|db-1)$", cmd)
	if sub.code != 0 {
		t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	// Wait until worker A has stored every node's first output.
	ctx := ctxT(t, time.Minute)
	for {
		r := e.show(id)
		started := 0
		for _, n := range r.Nodes {
			if n.AckedAt != nil && n.Bytes > 0 {
				started++
			}
		}
		if started == len(nodes) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("nodes never started: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	workerA.Stop(sig, 15*time.Second)

	e.startProc("worker", "-workers", "2", "-worker-id", "B", "-lease-ttl", "2s")
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wait := e.cli(nil, "jobs", "wait", id)
	if wait.code != 0 {
		t.Fatalf("jobs wait: exit %d\n%s%s", wait.code, wait.stdout, wait.stderr)
	}
	for _, n := range nodes {
		logs := e.cli(nil, "jobs", "logs", id, "-node", n)
		if logs.stdout != "before\nafter\n" {
			t.Errorf("%s archived %q", n, logs.stdout)
		}
		ran, _ := os.ReadFile(filepath.Join(dir, n))
		if string(ran) != "run\n" {
			t.Errorf("%s ran the command %d times", n, strings.Count(string(ran), "run"))
		}
	}
	if keys := e.kvKeys(); len(keys) != 0 {
		t.Errorf("left in KV: %v", keys)
	}
}

// TestTwoWorkersFiftyRuns: two worker processes on one database carry out
// 50 runs, each exactly once.
func TestTwoWorkersFiftyRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	e.startProc("worker", "-workers", "8", "-worker-id", "one")
	e.startProc("worker", "-workers", "8", "-worker-id", "two")
	dir := t.TempDir()
	const runs = 50
	ids := make([]string, runs)
	var wg sync.WaitGroup
	errs := make(chan string, runs)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := e.cli(nil, "exec", "-detach", "-node", "^web-", fmt.Sprintf("echo %d >> %s/$(basename $PWD)", i, dir))
			if res.code != 0 {
				errs <- res.stderr
				return
			}
			ids[i] = strings.TrimSpace(res.stdout)
		}()
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Fatalf("submit: %s", msg)
	}
	for _, id := range ids {
		if res := e.cli(nil, "jobs", "wait", id); res.code != 0 {
			t.Fatalf("run %s: exit %d\n%s%s\n%s", id, res.code, res.stdout, res.stderr, e.cli(nil, "jobs", "show", id).stdout)
		}
	}
	for _, node := range []string{"web-1", "web-2"} {
		b, err := os.ReadFile(filepath.Join(dir, node))
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		for _, l := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(l)
			got = append(got, n)
		}
		slices.Sort(got)
		want := make([]int, runs)
		for i := range want {
			want[i] = i
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s ran %d commands, want each of %d once: %v", node, len(got), runs, got)
		}
	}
	// Both workers took part, and each run was started exactly once.
	workers := map[string]int{}
	for _, w := range e.auditWorkers() {
		workers[w]++
	}
	if len(workers) != 2 || workers["worker:one"]+workers["worker:two"] != runs {
		t.Errorf("runs started per worker: %v", workers)
	}
}

// auditWorkers returns the actor of every run.started event.
func (e *env) auditWorkers() []string {
	e.t.Helper()
	conn := e.conn()
	rows, err := conn.Query(ctxT(e.t, 10*time.Second), "SELECT actor FROM audit_events WHERE type = 'run.started'")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// TestCancelAndTimeout: cancelling a running run and a run's deadline stop
// collection, clean KV, and mark unfinished nodes cancelled; the CLI exits 2.
func TestCancelAndTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})

	sub := e.cli(nil, "exec", "-detach", "-node", "^(web-1|db-1)$", "echo started; sleep 30")
	id := strings.TrimSpace(sub.stdout)
	ctx := ctxT(t, time.Minute)
	for { // wait until both nodes run the command
		r := e.show(id)
		acked := 0
		for _, n := range r.Nodes {
			if n.Bytes > 0 {
				acked++
			}
		}
		if acked == 2 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("nodes never started: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if res := e.cli(nil, "jobs", "cancel", id); res.code != 0 || !strings.Contains(res.stdout, "cancel requested") {
		t.Fatalf("jobs cancel: %d %s%s", res.code, res.stdout, res.stderr)
	}
	wait := e.cli(nil, "jobs", "wait", id)
	r := e.show(id)
	if wait.code != 2 || r.State != "cancelled" {
		t.Errorf("after cancel: exit %d, state %s", wait.code, r.State)
	}
	for _, n := range r.Nodes {
		if n.State != "cancelled" || n.Bytes != int64(len("started\n")) {
			t.Errorf("%s: %s, %d bytes", n.Node, n.State, n.Bytes)
		}
	}

	res := e.cli(nil, "exec", "-verbose", "-timeout", "1s", "-node", "^web-2$", "sleep 30")
	if res.code != 2 {
		t.Errorf("exec -timeout 1s: exit %d\n%s", res.code, res.stderr)
	}
	r = e.show(runID(t, res.stderr))
	if r.State != "failed" || len(r.Nodes) != 1 || r.Nodes[0].State != "cancelled" {
		t.Errorf("after the deadline: %+v", r)
	}
	if !strings.Contains(res.stderr, "run deadline of 1s passed") {
		t.Errorf("stderr does not explain the failure: %s", res.stderr)
	}
	if keys := e.kvKeys(); len(keys) != 0 {
		t.Errorf("left in KV: %v", keys)
	}
}

// TestOutputCap: past the tenant's cap a node's output is truncated, and
// its total bytes and the hash of the whole stream are still recorded.
func TestOutputCap(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.svc("tenant", "create", "small", "-consul-addr", e.cluster.Agent("web-1").HTTPAddr(), "-prefix", e.prefix, "-output-cap", "100")
	tok := e.newToken("small", "erin", "submitter")
	res := e.cliAs(tok, nil, "exec", "-verbose", "-node", "^web-1$", "seq 1 10000")
	if res.code != 0 {
		t.Fatalf("exec: %d %s", res.code, res.stderr)
	}
	id := runID(t, res.stderr)
	logs := e.cliAs(tok, nil, "jobs", "logs", id, "-node", "web-1")
	var full strings.Builder
	for i := 1; i <= 10000; i++ {
		fmt.Fprintf(&full, "%d\n", i)
	}
	if logs.stdout != full.String()[:100] {
		t.Errorf("archived %q, want the first 100 bytes", logs.stdout)
	}
	show := e.cliAs(tok, nil, "jobs", "show", id, "-json")
	var run struct {
		Nodes []struct {
			Bytes     int64  `json:"bytes"`
			Stored    int64  `json:"stored_bytes"`
			SHA256    string `json:"sha256"`
			Truncated bool   `json:"truncated"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(show.stdout), &run); err != nil || len(run.Nodes) != 1 {
		t.Fatalf("jobs show: %v %s", err, show.stdout)
	}
	n := run.Nodes[0]
	sum := sha256.Sum256([]byte(full.String()))
	if !n.Truncated || n.Stored != 100 || n.Bytes != int64(full.Len()) || n.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("node: %+v, want truncated, 100 stored, %d bytes, sha256 %x", n, full.Len(), sum)
	}
}
