package e2e_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartBound: a run that no worker could start within its start bound
// fails with that reason and never fires, even once a worker comes.
func TestStartBound(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	marker := filepath.Join(t.TempDir(), "marker")
	sub := e.cli(nil, "exec", "-detach", "-start-timeout", "1s", "-node", "^web-1$", "touch "+marker)
	if sub.code != 0 {
		t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	startBy := e.show(id).StartBy
	await(t, 30*time.Second, "the start bound to pass", func() bool { return time.Now().After(startBy) })
	e.startProc("worker", "-workers", "2", "-worker-id", "late")
	wait := e.cli(nil, "jobs", "wait", id)
	r := e.show(id)
	if r.State != "failed" || !strings.Contains(r.Error, "could not start within its start bound of 1s") {
		t.Errorf("run: %s %q", r.State, r.Error)
	}
	if len(r.Nodes) != 1 || r.Nodes[0].State != "cancelled" {
		t.Errorf("nodes: %+v", r.Nodes)
	}
	// It never ran anywhere: an error (1), as for any run that failed unfired.
	if wait.code != 1 || !strings.Contains(wait.stderr, "start bound") {
		t.Errorf("jobs wait: exit %d\n%s%s", wait.code, wait.stdout, wait.stderr)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a run past its start bound ran")
	}
	if n := e.auditCount(id, "run.event_fired"); n != 0 {
		t.Errorf("%d fired events", n)
	}

	bad := e.cli(nil, "exec", "-start-timeout", "200h", "-node", "^web-1$", "true")
	if bad.code != 1 || !strings.Contains(bad.stderr, "start timeout must be between") {
		t.Errorf("-start-timeout 200h: exit %d %s", bad.code, bad.stderr)
	}
}

// TestStartBoundAtGate: a run that waits at its tenant's start gate past
// its start bound fails there, without writing a session or a job spec to
// Consul, rather than prepare them for the firing mark to refuse. The gate
// has one place (-max-starting 1), held by two runs on a node that never
// acknowledges, each for a second after its fire.
func TestStartBoundAtGate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	e.startProc("worker", "-workers", "3", "-max-starting", "1", "-worker-id", "gate")
	silent := e.silentRuns(2)
	await(t, 30*time.Second, "a silent run to fire", func() bool { return e.show(silent[0]).FiredAt != nil || e.show(silent[1]).FiredAt != nil })
	marker := filepath.Join(t.TempDir(), "marker")
	sub := e.cli(nil, "exec", "-detach", "-start-timeout", "300ms", "-node", "^web-1$", "touch "+marker)
	if sub.code != 0 {
		t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	e.cli(nil, "jobs", "wait", id)
	r := e.show(id)
	if r.State != "failed" || r.Outcome != "not_started" || r.FiringAt != nil {
		t.Errorf("run: %s/%s %q, firing at %v", r.State, r.Outcome, r.Error, r.FiringAt)
	}
	var session *string
	if err := e.conn().QueryRow(ctxT(t, 10*time.Second), "SELECT session FROM runs WHERE id = $1", id).Scan(&session); err != nil {
		t.Fatal(err)
	}
	if session != nil {
		t.Errorf("the run created session %s before giving up", *session)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a run past its start bound ran")
	}
	for _, id := range silent {
		e.cli(nil, "jobs", "wait", id)
	}
}

// TestQueuedRunWithoutJob: a queued run whose River job vanished is found
// and carried out.
func TestQueuedRunWithoutJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	dir := t.TempDir()
	sub := e.cli(nil, "exec", "-detach", "-node", "^web-2$", fmt.Sprintf("echo run >> %s/$(basename $PWD)", dir))
	if sub.code != 0 {
		t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	tag, err := e.conn().Exec(ctxT(t, 10*time.Second), "DELETE FROM river_job WHERE args->>'run_id' = $1", id)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("delete the run's job: %v %v", tag, err)
	}
	e.startProc("worker", "-workers", "2", "-worker-id", "sweeper", "-requeue-after", "1s")
	if res := e.cli(nil, "jobs", "wait", id); res.code != 0 {
		t.Fatalf("jobs wait: exit %d\n%s", res.code, res.stderr)
	}
	if n := e.ranCount(dir, "web-2"); n != 1 {
		t.Errorf("web-2 ran the command %d times", n)
	}
	if n := e.auditCount(id, "run.requeued"); n != 1 {
		t.Errorf("%d run.requeued events, want 1", n)
	}
}

// TestStalledWorker freezes a worker (SIGSTOP) past its lease mid-run; a
// second worker takes the run over; the first, woken, lets go without
// touching Consul, and the run completes with every byte, each node run
// once.
func TestStalledWorker(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1})
	dir := t.TempDir()
	cmd, gate, want := gatedCommand(dir, 3000)
	nodes := []string{"db-1", "web-1", "web-2"}
	a, _ := e.startProc("worker", "-workers", "2", "-worker-id", "A", "-lease-ttl", "2s")
	sub := e.cli(nil, "exec", "-detach", "-node", "^(web-1|web-2|db-1)$", cmd)
	if sub.code != 0 {
		t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	await(t, time.Minute, "every node to start", func() bool { return e.allStarted(id, len(nodes)) })
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	e.startProc("worker", "-workers", "2", "-worker-id", "B", "-lease-ttl", "2s")
	await(t, time.Minute, "worker B to take the run over", func() bool { return e.auditActors(id, "run.resumed")["worker:B"] })
	if err := a.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if res := e.cli(nil, "jobs", "wait", id); res.code != 0 {
		t.Fatalf("jobs wait: exit %d\n%s", res.code, res.stderr)
	}
	e.checkArchive(id, dir, nodes, want)
	if actors := e.auditActors(id, "run.finished"); len(actors) != 1 || !actors["worker:B"] {
		t.Errorf("run finished by %v, want worker B alone", actors)
	}
}

// auditActors returns the actors of the run's events of type typ.
func (e *env) auditActors(id, typ string) map[string]bool {
	rows, err := e.conn().Query(ctxT(e.t, 10*time.Second), "SELECT actor FROM audit_events WHERE run_id = $1 AND type = $2", id, typ)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			e.t.Fatal(err)
		}
		out[a] = true
	}
	return out
}
