package e2e_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/failpoint"
	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/localpg"
)

// The fault tests cause each fault for real: a worker killed at each step
// of a run's life, PostgreSQL shut down at once, the tenant's Consul agent
// killed, the Consul server killed, a target agent frozen. Those that
// break a shared component bring their own (a PostgreSQL server, a Consul
// cluster), and they run one at a time, before the parallel tests: their
// timing should not depend on what else the machine does.

// faultTargets are the three target nodes of a fault cluster; "gw" is an
// agent that runs nothing, for the tenant to talk to.
var faultTargets = []string{"t-1", "t-2", "t-3"}

const faultNodes = "^t-[123]$"

// startCluster starts a Consul cluster of its own for one test: a server,
// gw and the three targets.
func startCluster(t *testing.T) *localconsul.Cluster {
	t.Helper()
	clients := []localconsul.AgentConfig{{Name: "gw"}}
	for _, n := range faultTargets {
		clients = append(clients, localconsul.AgentConfig{Name: n, Services: []localconsul.Service{{Name: "job"}}})
	}
	c, err := localconsul.Start(ctxT(t, 2*time.Minute), localconsul.Config{Binary: bins.consul, Clients: clients})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// startPostgres starts a PostgreSQL server of its own for one test.
func startPostgres(t *testing.T) *localpg.Server {
	t.Helper()
	pg, err := localpg.Start(ctxT(t, time.Minute), localpg.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Stop)
	return pg
}

// await polls cond every 50ms until it holds, failing the test after d.
func await(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// gatedCommand prints "before", waits for the gate file, prints lines
// lines, and records that it ran (and, at its end, that it finished) in
// dir; want is the output it produces.
func gatedCommand(dir string, lines int) (cmd, gate, want string) {
	gate = filepath.Join(dir, "gate")
	cmd = fmt.Sprintf("echo run >> %[1]s/$(basename $PWD); echo before; while [ ! -f %[2]s ]; do sleep 0.05; done; seq 1 %[3]d; echo end; touch %[1]s/done-$(basename $PWD)",
		dir, gate, lines)
	return cmd, gate, "before\n" + seqOutput(lines) + "end\n"
}

// allStarted reports whether every node of the run acked and stored output.
func (e *env) allStarted(id string, n int) bool {
	started := 0
	for _, node := range e.show(id).Nodes {
		if node.AckedAt != nil && node.Bytes > 0 {
			started++
		}
	}
	return started == n
}

// checkArchive checks that each node ran the command once and that its
// archive is exactly want, with a matching sha256.
func (e *env) checkArchive(id, dir string, nodes []string, want string) {
	e.t.Helper()
	sum := sha256.Sum256([]byte(want))
	r := e.show(id)
	for _, n := range r.Nodes {
		if !slices.Contains(nodes, n.Node) {
			continue
		}
		if n.State != "exited" || n.ExitCode == nil || *n.ExitCode != 0 {
			e.t.Errorf("%s: %s, exit %v", n.Node, n.State, n.ExitCode)
		}
		if n.Bytes != int64(len(want)) {
			e.t.Errorf("%s: %d bytes recorded, the command wrote %d", n.Node, n.Bytes, len(want))
		}
	}
	for _, n := range nodes {
		logs := e.cli(nil, "jobs", "logs", id, "-node", n)
		if logs.stdout != want {
			e.t.Errorf("%s archived %d bytes, want the command's %d (%q...)", n, len(logs.stdout), len(want), head(logs.stdout, 40))
		}
		if got := e.nodeSHA(id, n); got != hex.EncodeToString(sum[:]) {
			e.t.Errorf("%s: sha256 %s, want %x", n, got, sum)
		}
		if ran := e.ranCount(dir, n); ran != 1 {
			e.t.Errorf("%s ran the command %d times", n, ran)
		}
	}
}

func (e *env) nodeSHA(id, node string) string {
	var sum string
	err := e.conn().QueryRow(ctxT(e.t, 10*time.Second), "SELECT coalesce(sha256, '') FROM run_nodes WHERE run_id = $1 AND node = $2", id, node).Scan(&sum)
	if err != nil {
		e.t.Fatal(err)
	}
	return sum
}

func (e *env) ranCount(dir, node string) int {
	b, _ := os.ReadFile(filepath.Join(dir, node))
	return strings.Count(string(b), "run\n")
}

func head(s string, n int) string { return s[:min(len(s), n)] }

// auditCount counts the run's audit events of type typ.
func (e *env) auditCount(id, typ string) int {
	var n int
	err := e.conn().QueryRow(ctxT(e.t, 10*time.Second), "SELECT count(*) FROM audit_events WHERE run_id = $1 AND type = $2", id, typ).Scan(&n)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestCancelBeforeFire cancels runs before they fire, while queued and
// while their worker prepares them: the command never runs, and each run
// ends cancelled with its nodes cancelled.
func TestCancelBeforeFire(t *testing.T) {
	e := newEnv(t, envOpts{})
	dir := t.TempDir()
	const runs = 8
	ids := make([]string, runs)
	for i := range runs {
		marker := filepath.Join(dir, fmt.Sprintf("marker-%d", i))
		// A long replication wait keeps the run between its preparation
		// and the firing mark while the test cancels it.
		sub := e.cli(nil, "exec", "-detach", "-wait-repl", "3s", "-node", "^web-1$", "touch "+marker)
		if sub.code != 0 {
			t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
		}
		id := strings.TrimSpace(sub.stdout)
		ids[i] = id
		if i%2 == 1 {
			// Odd runs: cancel once the worker holds the run.
			await(t, 30*time.Second, "the worker to claim the run", func() bool { return e.show(id).State == "running" })
		}
		res := e.cli(nil, "jobs", "cancel", id)
		if res.code != 0 {
			t.Fatalf("jobs cancel: %d %s%s", res.code, res.stdout, res.stderr)
		}
		if !strings.Contains(res.stdout, "cancelled") && !strings.Contains(res.stdout, "will not run") {
			t.Errorf("run %d: cancel did not promise the command will not run: %s", i, res.stdout)
		}
		e.cli(nil, "jobs", "wait", id)
		r := e.show(id)
		if r.State != "cancelled" || len(r.Nodes) != 1 || r.Nodes[0].State != "cancelled" {
			t.Errorf("run %d: %+v", i, r)
		}
		if n := e.auditCount(id, "run.event_fired"); n != 0 {
			t.Errorf("run %d: %d fired events", i, n)
		}
	}
	// A run after them on the same node: once it ran, a cancelled run that
	// had fired would have run too.
	control := filepath.Join(dir, "control")
	if res := e.cli(nil, "exec", "-node", "^web-1$", "touch "+control); res.code != 0 {
		t.Fatalf("control run: %d %s", res.code, res.stderr)
	}
	if _, err := os.Stat(control); err != nil {
		t.Fatalf("control run did not run: %v", err)
	}
	for i := range runs {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("marker-%d", i))); err == nil {
			t.Errorf("cancelled run %d (%s) ran", i, ids[i])
		}
	}
	if keys := e.kvKeys(); len(keys) != 0 {
		t.Errorf("left in KV: %v", keys)
	}
}

// TestWorkerCrashAtEachStep kills the worker (SIGKILL, from a failpoint)
// at each step of a run's life in turn, then starts another: every run
// ends, no node runs the command twice, and every byte is archived.
func TestWorkerCrashAtEachStep(t *testing.T) {
	for _, tc := range []struct {
		point string
		fired bool // whether the event went out before the crash
	}{
		{failpoint.Claimed, true},
		{failpoint.SessionRecorded, true},
		// Marked firing but never fired: at most once wins, the command
		// never runs and the nodes end no_ack.
		{failpoint.FiringMarked, false},
		{failpoint.Fired, true},
		{failpoint.OutputStored, true},
		{failpoint.Finishing, true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, envOpts{workers: -1})
			dir := t.TempDir()
			nodes := []string{"db-1", "web-1", "web-2"}
			cmd := fmt.Sprintf("echo run >> %s/$(basename $PWD); seq 1 3000; echo end", dir)
			want := seqOutput(3000) + "end\n"
			a, aLog := e.startProcEnv([]string{failpoint.Env + "=" + tc.point}, "worker", "-workers", "2", "-worker-id", "A", "-lease-ttl", "2s")
			sub := e.cli(nil, "exec", "-detach", "-node", "^(web-1|web-2|db-1)$", cmd)
			if sub.code != 0 {
				t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
			}
			id := strings.TrimSpace(sub.stdout)
			select {
			case <-a.Done():
			case <-ctxT(t, time.Minute).Done():
				b, _ := os.ReadFile(aLog)
				t.Fatalf("worker A never reached failpoint %s:\n%s", tc.point, tail(string(b), 30))
			}
			e.startProc("worker", "-workers", "2", "-worker-id", "B", "-lease-ttl", "2s")
			e.cli(nil, "jobs", "wait", id)
			r := e.show(id)
			if r.State != "completed" {
				t.Errorf("run ended %s", r.State)
			}
			if r.Recoveries != 1 {
				t.Errorf("%d recoveries counted, want 1 (worker B's pickup)", r.Recoveries)
			}
			if tc.fired {
				e.checkArchive(id, dir, nodes, want)
			} else {
				for _, n := range r.Nodes {
					if n.State != "no_ack" || e.ranCount(dir, n.Node) != 0 {
						t.Errorf("%s: %s, ran %d times", n.Node, n.State, e.ranCount(dir, n.Node))
					}
				}
			}
			if keys := e.kvKeys(); len(keys) != 0 {
				t.Errorf("left in KV: %v", keys)
			}
		})
	}
}

// seqOutput is what `seq 1 n` prints.
func seqOutput(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%d\n", i)
	}
	return b.String()
}

// TestPostgresOutage shuts PostgreSQL down at once mid-run, while the
// nodes produce their output, for 20 s and for longer than twice the
// session TTL, then starts it again: the run completes with every node's
// output byte-identical to the command's.
func TestPostgresOutage(t *testing.T) {
	for _, tc := range []struct {
		name       string
		outage     time.Duration
		sessionTTL time.Duration
	}{
		{"20s", 20 * time.Second, 0},
		{"past-twice-the-session-ttl", 25 * time.Second, 10 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pg := startPostgres(t)
			o := envOpts{db: pg.URL("postgres"), leaseTTL: 2 * time.Second}
			if tc.sessionTTL > 0 {
				o.serveArgs = []string{"-session-ttl", tc.sessionTTL.String()}
			}
			e := newEnv(t, o)
			dir := t.TempDir()
			cmd, gate, want := gatedCommand(dir, 20000)
			nodes := []string{"db-1", "web-1", "web-2"}
			sub := e.cli(nil, "exec", "-detach", "-node", "^(web-1|web-2|db-1)$", cmd)
			if sub.code != 0 {
				t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
			}
			id := strings.TrimSpace(sub.stdout)
			await(t, time.Minute, "every node to start", func() bool { return e.allStarted(id, len(nodes)) })
			session := e.session(id)

			pg.Kill()
			down := time.Now()
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			// The nodes finish while the database is away: their output
			// waits in Consul under the session the worker keeps alive.
			await(t, tc.outage, "every node's exit to reach KV", func() bool { return len(e.kvKeysWith("/exit")) == len(nodes) })
			for time.Since(down) < tc.outage {
				if entry, _, err := e.consul.Session().Info(session, nil); err != nil || entry == nil {
					t.Fatalf("session gone %s into the outage: %v", time.Since(down).Round(time.Second), err)
				}
				time.Sleep(500 * time.Millisecond)
			}
			if err := pg.Restart(ctxT(t, time.Minute)); err != nil {
				t.Fatal(err)
			}
			t.Logf("database away for %s", time.Since(down).Round(time.Second))

			if res := e.cli(nil, "jobs", "wait", id); res.code != 0 {
				t.Errorf("jobs wait: exit %d\n%s", res.code, res.stderr)
			}
			if r := e.show(id); r.State != "completed" {
				t.Errorf("run ended %s", r.State)
			}
			e.checkArchive(id, dir, nodes, want)
			if keys := e.kvKeys(); len(keys) != 0 {
				t.Errorf("left in KV: %v", keys)
			}
		})
	}
}

// session returns the run's Consul session.
func (e *env) session(id string) string {
	var s string
	if err := e.conn().QueryRow(ctxT(e.t, 10*time.Second), "SELECT coalesce(session, '') FROM runs WHERE id = $1", id).Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// kvKeysWith lists the keys under the test's prefix that end in suffix.
func (e *env) kvKeysWith(suffix string) []string {
	keys, _, err := e.consul.KV().Keys(e.prefix+"/", "", nil)
	if err != nil {
		return nil
	}
	var out []string
	for _, k := range keys {
		if strings.HasSuffix(k, suffix) {
			out = append(out, k)
		}
	}
	return out
}

// TestTenantAgentRestart kills the Consul agent the tenant talks to while
// the nodes produce output, and starts it again 12 s later: the run's
// TTL-only session survives, and nothing is lost.
func TestTenantAgentRestart(t *testing.T) {
	c := startCluster(t)
	e := newEnv(t, envOpts{cluster: c, tenantAgent: "gw", leaseTTL: 2 * time.Second})
	dir := t.TempDir()
	id, gate, want := e.startGatedRun(dir, 2000)

	gw := c.Agent("gw")
	gw.Kill()
	down := time.Now()
	openGate(t, gate, dir)
	// The outage under test is 12 s long, not a wait for anything.
	time.Sleep(12*time.Second - time.Since(down))
	if err := gw.Restart(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	t.Logf("tenant's agent away for %s", time.Since(down).Round(time.Second))
	if res := e.cli(nil, "jobs", "wait", id); res.code != 0 {
		t.Errorf("jobs wait: exit %d\n%s", res.code, res.stderr)
	}
	e.checkArchive(id, dir, faultTargets, want)
	if keys := e.kvKeys(); len(keys) != 0 {
		t.Errorf("left in KV: %v", keys)
	}
}

// startGatedRun submits gatedCommand on the fault cluster's targets and
// waits until every node runs it.
func (e *env) startGatedRun(dir string, lines int) (id, gate, want string) {
	e.t.Helper()
	cmd, gate, want := gatedCommand(dir, lines)
	sub := e.cli(nil, "exec", "-detach", "-node", faultNodes, cmd)
	if sub.code != 0 {
		e.t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id = strings.TrimSpace(sub.stdout)
	await(e.t, time.Minute, "every node to start", func() bool { return e.allStarted(id, len(faultTargets)) })
	return id, gate, want
}

// openGate lets the gated commands finish and waits until they have.
func openGate(t *testing.T, gate, dir string) {
	t.Helper()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range faultTargets {
		await(t, time.Minute, n+" to finish the command", func() bool { return fileExists(filepath.Join(dir, "done-"+n)) })
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestConsulServerRestart kills the Consul server mid-run and starts it
// again: agents whose KV writes failed abandon their output (stock agents
// do), and the run still ends, every node classified honestly, KV empty.
func TestConsulServerRestart(t *testing.T) {
	c := startCluster(t)
	e := newEnv(t, envOpts{cluster: c, tenantAgent: "gw", leaseTTL: 2 * time.Second})
	dir := t.TempDir()
	id, gate, want := e.startGatedRun(dir, 2000)

	server := c.Server()
	server.Kill()
	openGate(t, gate, dir)
	if err := server.Restart(ctxT(t, 2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	await(t, 3*time.Minute, "the run to end", func() bool {
		s := e.show(id).State
		return s == "completed" || s == "failed"
	})
	r := e.show(id)
	t.Logf("run %s (%s)", r.State, r.Error)
	for _, n := range r.Nodes {
		logs := e.cli(nil, "jobs", "logs", id, "-node", n.Node).stdout
		switch {
		case n.State != "exited" && n.State != "lost":
			t.Errorf("%s: %s, want exited or lost", n.Node, n.State)
		case !strings.HasPrefix(want, logs):
			t.Errorf("%s archived output that the command did not write: %q", n.Node, head(logs, 40))
		case n.Bytes != int64(len(logs)):
			t.Errorf("%s: %d bytes recorded, %d archived", n.Node, n.Bytes, len(logs))
		}
		if ran := e.ranCount(dir, n.Node); ran != 1 {
			t.Errorf("%s ran the command %d times", n.Node, ran)
		}
		t.Logf("%s: %s, exit %v, %d of %d bytes", n.Node, n.State, fmtCode(n.ExitCode), n.Bytes, len(want))
	}
	await(t, 30*time.Second, "KV to be empty", func() bool { keys, err := e.kvKeysErr(); return err == nil && len(keys) == 0 })
}

func fmtCode(c *int) string {
	if c == nil {
		return "-"
	}
	return fmt.Sprint(*c)
}

func (e *env) kvKeysErr() ([]string, error) {
	keys, _, err := e.consul.KV().Keys(e.prefix+"/", "", nil)
	return keys, err
}

// TestFrozenAgent freezes a target agent (SIGSTOP, with its command)
// mid-run: it ends lost, the others exited, `jobs wait` exits 2, and once
// the agent wakes its late writes find the session gone: KV stays empty.
func TestFrozenAgent(t *testing.T) {
	c := startCluster(t)
	e := newEnv(t, envOpts{cluster: c, tenantAgent: "gw"})
	dir := t.TempDir()
	cmd, gate, want := gatedCommand(dir, 10)
	sub := e.cli(nil, "exec", "-detach", "-node", faultNodes, cmd)
	if sub.code != 0 {
		t.Fatalf("exec -detach: %d %s", sub.code, sub.stderr)
	}
	id := strings.TrimSpace(sub.stdout)
	await(t, time.Minute, "every node to start", func() bool { return e.allStarted(id, len(faultTargets)) })
	frozen := c.Agent("t-3")
	if err := frozen.Freeze(); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = frozen.Thaw()
		}
	}()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wait := e.cli(nil, "jobs", "wait", id)
	if wait.code != 2 {
		t.Errorf("jobs wait: exit %d, want 2\n%s", wait.code, wait.stderr)
	}
	r := e.show(id)
	for _, n := range r.Nodes {
		wantState := "exited"
		if n.Node == "t-3" {
			wantState = "lost"
		}
		if n.State != wantState {
			t.Errorf("%s: %s, want %s", n.Node, n.State, wantState)
		}
	}
	e.checkArchive(id, dir, []string{"t-1", "t-2"}, want)
	if logs := e.cli(nil, "jobs", "logs", id, "-node", "t-3").stdout; logs != "before\n" {
		t.Errorf("t-3 archived %q", logs)
	}

	if err := frozen.Thaw(); err != nil {
		t.Fatal(err)
	}
	thawed = true
	await(t, time.Minute, "t-3 to finish the command", func() bool { return fileExists(filepath.Join(dir, "done-t-3")) })
	// The agent uploads within 500 ms of output, then writes the exit:
	// watch KV for a while after that; every write must have failed.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if keys := e.kvKeys(); len(keys) != 0 {
			t.Fatalf("the woken agent wrote %v", keys)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
