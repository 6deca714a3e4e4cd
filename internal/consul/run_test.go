package consul_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/metrics"
)

func TestResolve(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	long := func() []string { return slices.Clone(longNames[:]) }

	for _, tc := range []struct {
		note    string
		spec    consul.Spec
		want    []string
		wantErr error
	}{
		{note: "node regex is unanchored", spec: consul.Spec{NodeFilter: "eb-"}, want: []string{"web-1", "web-2"}},
		{note: "service", spec: consul.Spec{ServiceFilter: "^web$"}, want: []string{"web-1", "web-2"}},
		{note: "service and tag", spec: consul.Spec{ServiceFilter: "web", TagFilter: "^green$"}, want: []string{"web-2"}},
		{note: "tag of another service does not count", spec: consul.Spec{ServiceFilter: "^db$", TagFilter: "lru"}, wantErr: consul.ErrNoTargets},
		{note: "service ID, as agents match", spec: consul.Spec{ServiceFilter: "^cache-a$"}, want: []string{"db-1"}},
		{note: "service name that differs from its ID is not matched", spec: consul.Spec{ServiceFilter: "^cache$"}, wantErr: consul.ErrNoTargets},
		{note: "node and service", spec: consul.Spec{NodeFilter: "^long-", ServiceFilter: "long"}, want: long()},
		{note: "no match", spec: consul.Spec{NodeFilter: "^nothing$"}, wantErr: consul.ErrNoTargets},
	} {
		t.Run(tc.note, func(t *testing.T) {
			nodes, err := b.client.Resolve(ctx, tc.spec)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := nodeNames(nodes); !slices.Equal(got, tc.want) {
				t.Errorf("nodes = %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("all nodes with services and tags", func(t *testing.T) {
		nodes, err := b.client.Resolve(ctx, consul.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := nodeNames(nodes), allAlive(b.cluster); !slices.Equal(got, want) {
			t.Fatalf("nodes = %v, want %v", got, want)
		}
		for _, n := range nodes {
			if n.Name == "web-2" {
				if len(n.Services) != 1 || n.Services[0].Name != "web" || !slices.Equal(n.Services[0].Tags, []string{"v2", "green"}) {
					t.Errorf("web-2 services = %+v", n.Services)
				}
				if n.Address != b.cluster.Agent("web-2").IP() {
					t.Errorf("web-2 address = %s", n.Address)
				}
			}
		}
	})
}

func TestRunEarlyCompletion(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	spec := b.spec("echo", "hello;", "exit", "3")
	spec.NodeFilter = "^web-"
	spec.Wait = 10 * time.Second // the quiet period must not be what ends the run
	res, col := b.resolveAndRun(t, ctx, spec)
	// Completed, not quiet: the run ended when every node had exited, not
	// after the (long) quiet period.
	if res.Outcome != consul.OutcomeCompleted {
		t.Errorf("outcome = %s, want completed", res.Outcome)
	}
	for _, n := range res.Nodes {
		if n.State != consul.NodeExited || n.ExitCode != 3 {
			t.Errorf("%s: %s %d, want exited 3", n.Node, n.State, n.ExitCode)
		}
		if got := col.output(n.Node); got != "hello\n" {
			t.Errorf("%s output = %q", n.Node, got)
		}
	}
	if res.Events != 1 {
		t.Errorf("events fired = %d, want 1", res.Events)
	}
	col.checkOrder(t)
	b.assertClean(t, res.Session)
}

func TestRunNoAck(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	spec := b.spec("true")
	spec.NodeFilter = "^(noexec-1|web-1)$"
	spec.Wait = 500 * time.Millisecond
	res, _ := b.resolveAndRun(t, ctx, spec)
	got := resultsByNode(res)
	if n := got["noexec-1"]; n.State != consul.NodeNoAck {
		t.Errorf("noexec-1: %s, want no_ack", n.State)
	}
	if n := got["web-1"]; n.State != consul.NodeExited || n.ExitCode != 0 {
		t.Errorf("web-1: %s %d, want exited 0", n.State, n.ExitCode)
	}
	if res.Outcome != consul.OutcomeQuiet {
		t.Errorf("outcome = %s, want quiet", res.Outcome)
	}
	if exited, acked := res.Counts(); exited != 1 || acked != 1 {
		t.Errorf("counts = %d / %d, want 1 / 1", exited, acked)
	}
	b.assertClean(t, res.Session)
}

// TestRunLost kills an agent while its command runs. It is not parallel: it
// takes an agent away from the cluster for a while.
func TestRunLost(t *testing.T) {
	b := setup(t)
	ctx := ctxT(t, 2*time.Minute)
	victim := b.cluster.Agent("victim-1")
	t.Cleanup(func() {
		if err := victim.Restart(context.Background()); err != nil {
			t.Errorf("restart victim-1: %v", err)
		}
	})
	spec := b.spec("if [ \"$(basename $PWD)\" = victim-1 ]; then echo started; sleep 60; fi; echo done")
	spec.NodeFilter = "^(victim-1|web-2)$"
	spec.Wait = time.Second
	targets, err := b.client.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	col := collector{}
	killed := make(chan struct{})
	col.onAck = func(node string) {
		if node == "victim-1" {
			go func() { victim.Kill(); close(killed) }()
		}
	}
	res, err := b.client.Run(ctx, spec, targets, col.handle)
	if err != nil {
		t.Fatal(err)
	}
	<-killed
	got := resultsByNode(res)
	if n := got["victim-1"]; n.State != consul.NodeLost {
		t.Errorf("victim-1: %s, want lost", n.State)
	}
	if n := got["web-2"]; n.State != consul.NodeExited || col.output("web-2") != "done\n" {
		t.Errorf("web-2: %s, output %q", n.State, col.output("web-2"))
	}
	b.assertClean(t, res.Session)
}

func TestRunLargeOutput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, 2*time.Minute)
	hashFile := filepath.Join(t.TempDir(), "sha256")
	if err := os.Chmod(filepath.Dir(hashFile), 0o777); err != nil {
		t.Fatal(err)
	}
	const size = 2 << 20
	// Random bytes, so that any lost, repeated or reordered chunk shows;
	// the command itself records the hash of what it wrote.
	spec := b.spec(fmt.Sprintf("f=$(mktemp); head -c %d /dev/urandom > $f; sha256sum $f | cut -c1-64 > %s; cat $f; rm -f $f", size, hashFile))
	spec.NodeFilter = "^web-2$"
	res, col := b.resolveAndRun(t, ctx, spec)
	if n := res.Nodes[0]; n.State != consul.NodeExited || n.ExitCode != 0 {
		t.Fatalf("web-2: %s %d", n.State, n.ExitCode)
	}
	out := col.output("web-2")
	want, err := os.ReadFile(hashFile)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(out))
	if len(out) != size || hex.EncodeToString(sum[:]) != strings.TrimSpace(string(want)) {
		t.Errorf("received %d bytes with sha256 %x, want %d bytes with %s", len(out), sum, size, want)
	}
	col.checkOrder(t)
	b.assertClean(t, res.Session)
}

// TestRunDeletesStoredChunks checks that KV holds at most the unstored tail
// while a run goes on: once the handler returns, its chunks leave KV.
func TestRunDeletesStoredChunks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	gate := filepath.Join(t.TempDir(), "gate")
	if err := os.Chmod(filepath.Dir(gate), 0o777); err != nil {
		t.Fatal(err)
	}
	spec := b.spec(fmt.Sprintf("echo first; while [ ! -f %s ]; do sleep 0.05; done; echo second", gate))
	spec.NodeFilter = "^web-1$"
	spec.Wait = 5 * time.Second
	targets, err := b.client.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	var session string
	stored := 0
	h := func(_ context.Context, evs []consul.Event) error {
		for _, e := range evs {
			if e.Kind == consul.EventOutput && string(e.Data) == "first\n" {
				stored++
				// The next watch round deletes the chunk; once it is gone,
				// let the command go on.
				go func() {
					for ctx.Err() == nil {
						keys, _, err := b.api.KV().Keys(b.prefix+"/"+session+"/web-1/out/", "", nil)
						if err == nil && len(keys) == 0 {
							os.WriteFile(gate, nil, 0o644)
							return
						}
						time.Sleep(20 * time.Millisecond)
					}
				}()
			}
		}
		return nil
	}
	r, err := b.client.Prepare(ctx, spec, targets)
	if err != nil {
		t.Fatal(err)
	}
	session = r.Session()
	res, err := r.Execute(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if stored != 1 || res.Nodes[0].State != consul.NodeExited {
		t.Fatalf("stored %d first chunks; web-1 %s", stored, res.Nodes[0].State)
	}
	b.assertClean(t, res.Session)
}

func TestRunCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx, cancel := context.WithCancel(ctxT(t, time.Minute))
	spec := b.spec("sleep 30")
	spec.NodeFilter = "^(web-1|noexec-1)$"
	targets, err := b.client.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	col := collector{onAck: func(string) { cancel() }}
	res, err := b.client.Run(ctx, spec, targets, col.handle)
	if err != nil {
		t.Fatal(err)
	}
	if res.Outcome != consul.OutcomeCancelled {
		t.Errorf("outcome = %s", res.Outcome)
	}
	for _, n := range res.Nodes {
		if n.State != consul.NodeCancelled {
			t.Errorf("%s: %s, want cancelled", n.Node, n.State)
		}
	}
	b.assertClean(t, res.Session)
}

// TestRunReattach detaches from a running run and has a second watcher
// finish it without firing again.
func TestRunReattach(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	gate, runs := filepath.Join(dir, "gate"), filepath.Join(dir, "runs")
	spec := b.spec(fmt.Sprintf("echo run >> %s; echo before; while [ ! -f %s ]; do sleep 0.05; done; echo after", runs, gate))
	spec.NodeFilter = "^web-2$"
	spec.Wait = 5 * time.Second
	targets, err := b.client.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.client.Prepare(ctx, spec, targets)
	if err != nil {
		t.Fatal(err)
	}
	session := r.Session()

	// First watcher: detach as soon as the first chunk is stored.
	wctx, detach := context.WithCancelCause(ctx)
	var first collector
	h1 := func(ctx context.Context, evs []consul.Event) error {
		first.handle(ctx, evs)
		if first.output("web-2") != "" {
			detach(consul.ErrDetach)
		}
		return nil
	}
	if _, err := r.Execute(wctx, h1); !errors.Is(err, consul.ErrDetached) {
		t.Fatalf("first watcher: err = %v, want ErrDetached", err)
	}
	if entry, _, err := b.api.Session().Info(session, nil); err != nil || entry == nil {
		t.Fatalf("session after detach: %v %v", entry, err)
	}

	// Second watcher, as a replacement worker would.
	r2, err := b.client.Attach(ctx, spec, session, targets)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var second collector
	res, err := r2.Execute(ctx, second.handle)
	if err != nil {
		t.Fatal(err)
	}
	if n := res.Nodes[0]; n.State != consul.NodeExited || n.ExitCode != 0 {
		t.Errorf("web-2: %s %d", n.State, n.ExitCode)
	}
	if res.Events != 0 {
		t.Errorf("re-attach fired %d events", res.Events)
	}
	if got := first.output("web-2") + second.output("web-2"); got != "before\nafter\n" {
		t.Errorf("output across both watchers = %q", got)
	}
	if b, _ := os.ReadFile(runs); string(b) != "run\n" {
		t.Errorf("command ran %d times", strings.Count(string(b), "run"))
	}
	b.assertClean(t, session)

	// Attaching to a session that is gone says so.
	if _, err := b.client.Attach(ctx, spec, session, targets); !errors.Is(err, consul.ErrSessionGone) {
		t.Errorf("attach to destroyed session: err = %v, want ErrSessionGone", err)
	}
}

// TestRunPinnedFilterSplit runs on seven 63-byte node names, after one of
// the seven was away when the target set was resolved: the command runs on
// exactly the six resolved. The names differ in one character, so their
// compressed filter is long-[1-6]-x…x, which the seventh misses by that
// character; the client's event size limit is lowered to what an event
// naming two of them needs, so the filter is split over several events.
// Not parallel: it stops an agent.
func TestRunPinnedFilterSplit(t *testing.T) {
	b := setup(t)
	ctx := ctxT(t, 2*time.Minute)
	late := b.cluster.Agent(longNames[6])
	late.Stop()
	t.Cleanup(func() {
		if !late.Running() { // the test failed before restarting it
			if err := late.Restart(context.Background()); err != nil {
				t.Errorf("restart %s: %v", late.Name(), err)
			}
		}
	})
	spec := b.spec("touch ran-$(basename " + b.prefix + "); basename $PWD")
	spec.NodeFilter = "^long-"
	var targets []consul.Node
	for { // wait for the catalog to see the agent gone
		nodes, err := b.client.Resolve(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) == 6 {
			targets = nodes
			break
		}
		if ctx.Err() != nil {
			t.Fatal("catalog still lists the stopped agent")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := late.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if now, err := b.client.Resolve(ctx, spec); err != nil || len(now) != 7 {
		t.Fatalf("after restart the filter matches %d nodes (%v), want 7", len(now), err)
	}

	// The limit is the size of an event naming the first two targets
	// (long-[12]-x…): three names (long-[1-3]-x…) take a byte more.
	names := nodeNames(targets)
	slices.Sort(names)
	limit := consul.PinnedEventSize(spec, names[:2])
	client, err := consul.New(consul.Config{Address: b.cluster.Agent("web-1").HTTPAddr(), EventSizeLimit: limit})
	if err != nil {
		t.Fatal(err)
	}
	var col collector
	r, err := client.Prepare(ctx, spec, targets)
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Execute(ctx, col.handle)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != 3 {
		t.Errorf("fired %d events, want the filter split over 3, two names each", res.Events)
	}
	t.Logf("%d targets in %d events with a %d-byte event limit", len(targets), res.Events, limit)
	// Each event's ID and the nodes it names (for the audit log): every
	// target exactly once, each event its own ID.
	_, fired := r.FiredAt()
	var named []string
	ids := map[string]bool{}
	for _, ev := range fired {
		if len(ev.ID) != 36 || ids[ev.ID] {
			t.Errorf("event ID %q: not a fresh UUID", ev.ID)
		}
		ids[ev.ID] = true
		named = append(named, ev.Nodes...)
	}
	var want []string
	for _, n := range targets {
		want = append(want, n.Name)
	}
	slices.Sort(want)
	if len(fired) != res.Events || !slices.Equal(named, want) {
		t.Errorf("fired events %+v, want %d naming %v", fired, res.Events, want)
	}
	if res.Outcome != consul.OutcomeCompleted {
		t.Errorf("outcome = %s", res.Outcome)
	}
	for _, n := range res.Nodes {
		if n.State != consul.NodeExited || col.output(n.Node) != n.Node+"\n" {
			t.Errorf("%s: %s, output %q", n.Node, n.State, col.output(n.Node))
		}
	}
	marker := "ran-" + filepath.Base(b.prefix)
	for _, name := range longNames {
		_, err := os.Stat(filepath.Join(b.cluster.Agent(name).Dir(), marker))
		ran := err == nil
		if want := name != late.Name(); ran != want {
			t.Errorf("%s ran the command: %t, want %t", name, ran, want)
		}
	}
	b.assertClean(t, res.Session)
}

// TestRunSlowHandler: time the handler spends storing (a busy database) is
// not silence: a node that reported meanwhile is read, not given up.
func TestRunSlowHandler(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	spec := b.spec("if [ \"$(basename $PWD)\" = web-2 ]; then sleep 1; fi; echo done")
	spec.NodeFilter = "^web-"
	spec.Wait = 500 * time.Millisecond
	targets, err := b.client.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	var col collector
	slowOnce := false
	h := func(ctx context.Context, evs []consul.Event) error {
		if !slowOnce {
			slowOnce = true
			time.Sleep(3 * spec.Wait) // the slow store, longer than the quiet period
		}
		return col.handle(ctx, evs)
	}
	res, err := b.client.Run(ctx, spec, targets, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Nodes {
		if n.State != consul.NodeExited {
			t.Errorf("%s: %s, want exited", n.Node, n.State)
		}
	}
	b.assertClean(t, res.Session)
}

// TestRunSessionTTLOnly: a run's session carries no health check, so that
// losing the agent it was made through does not invalidate it, and a
// handler that fails without asking to detach is retried, the reports
// kept in KV meanwhile, until it takes them.
func TestRunSessionTTLOnly(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	spec := b.spec("echo hi")
	spec.NodeFilter = "^web-1$"
	targets, err := b.client.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	r, err := b.client.Prepare(ctx, spec, targets)
	if err != nil {
		t.Fatal(err)
	}
	entry, _, err := b.api.Session().Info(r.Session(), nil)
	if err != nil || entry == nil {
		t.Fatalf("session: %v %v", entry, err)
	}
	if len(entry.Checks) != 0 || len(entry.NodeChecks) != 0 || len(entry.ServiceChecks) != 0 || entry.TTL == "" {
		t.Errorf("session checks %v %v %v, TTL %q: want TTL only", entry.Checks, entry.NodeChecks, entry.ServiceChecks, entry.TTL)
	}
	failures := 0
	var c collector
	h := func(ctx context.Context, evs []consul.Event) error {
		if failures < 3 {
			failures++
			return errors.New("database away")
		}
		c.handle(ctx, evs)
		return nil
	}
	res, err := r.Execute(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if failures != 3 || res.Outcome != consul.OutcomeCompleted || c.output("web-1") != "hi\n" {
		t.Errorf("after %d handler failures: %s, output %q", failures, res.Outcome, c.output("web-1"))
	}
}

// TestRunQuietWaitsForGossip: a run fired as several events does not end
// quiet before its last event can have reached its nodes (EventSpread an
// event), however short its quiet period: gossip carries a few events at a
// time, and at thousands of nodes the last ones arrive seconds later.
func TestRunQuietWaitsForGossip(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	const spread = 1500 * time.Millisecond
	// An event limit that leaves room for one node name an event: with
	// the prefix below, the event naming noexec-1 alone is 218 bytes.
	c, err := consul.New(consul.Config{Address: b.cluster.Agent("web-1").HTTPAddr(), EventSizeLimit: 218, EventSpread: spread})
	if err != nil {
		t.Fatal(err)
	}
	spec := b.spec("true")
	spec.Prefix = "rexec-test/quiet-gossip" // of a fixed length, for the event limit above
	spec.NodeFilter = "^(noexec-1|web-1)$"
	spec.Wait = 300 * time.Millisecond
	targets, err := c.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	var col collector
	res, err := c.Run(ctx, spec, targets, col.handle)
	if err != nil {
		t.Fatal(err)
	}
	if res.Events < 2 {
		t.Fatalf("fired %d event(s); the test needs the targets split over at least 2", res.Events)
	}
	got := resultsByNode(res)
	if n := got["noexec-1"]; n.State != consul.NodeNoAck {
		t.Errorf("noexec-1: %s, want no_ack", n.State)
	}
	if n := got["web-1"]; n.State != consul.NodeExited {
		t.Errorf("web-1: %s, want exited", n.State)
	}
	if took, least := res.FinishedAt.Sub(res.FiredAt), time.Duration(res.Events-1)*spread+spec.Wait; took < least {
		t.Errorf("the run ended quiet %v after firing %d events, before the last could have spread (%v)", took, res.Events, least)
	}
	b.assertClean(t, res.Session)
}

// TestStartGatePacesFires: a fired run keeps its place at the start gate
// until every target has acknowledged it, so the next run of the client is
// not prepared (let alone fired) before that; and a run with a target that
// never answers gives its place up after a while (a second), long before
// its quiet period ends.
func TestStartGatePacesFires(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	reg := prometheus.NewRegistry()
	c, err := consul.New(consul.Config{Address: b.cluster.Agent("web-1").HTTPAddr(), MaxStarting: 1, Metrics: metrics.New(reg)})
	if err != nil {
		t.Fatal(err)
	}
	waiting := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == metrics.NameRunsWaitingToStart {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatalf("%s not registered", metrics.NameRunsWaitingToStart)
		return 0
	}
	// prepareNext prepares a run of c in the background, reports when
	// Prepare returned, and closes the run: a prepared run holds its place.
	prepareNext := func(spec consul.Spec, targets []consul.Node) <-chan error {
		done := make(chan error, 1)
		go func() {
			r, err := c.Prepare(ctx, spec, targets)
			if err == nil {
				_ = r.Close(ctx)
			}
			done <- err
		}()
		return done
	}

	// fire resolves, prepares and fires a run of c on spec's nodes; the
	// caller closes it.
	fire := func(t *testing.T, spec consul.Spec) (*consul.Run, []consul.Node) {
		t.Helper()
		targets, err := c.Resolve(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.Prepare(ctx, spec, targets)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = r.Close(context.Background()) })
		if err := r.Fire(ctx, nil); err != nil {
			t.Fatal(err)
		}
		return r, targets
	}

	t.Run("held until every target acked", func(t *testing.T) {
		spec := b.spec("true")
		spec.NodeFilter = "^(web-2|db-1)$"
		fired := time.Now() // before the fire, so before its hold timer starts
		first, targets := fire(t, spec)
		next := prepareNext(spec, targets)
		acked := make(chan struct{})
		var acks int
		col := collector{onAck: func(string) {
			if acks++; acks == len(targets) {
				close(acked)
			}
		}}
		watched := make(chan error, 1)
		go func() {
			_, err := first.Watch(ctx, col.handle)
			watched <- err
		}()
		if err := <-next; err != nil {
			t.Fatal(err)
		}
		select {
		case <-acked:
		default:
			// Unless the acks took longer than the hold (a loaded machine).
			if time.Since(fired) < time.Second {
				t.Fatal("the next run was prepared before every target of the fired one acknowledged it")
			}
		}
		if err := <-watched; err != nil {
			t.Fatal(err)
		}
	})

	t.Run("given up when a target never answers", func(t *testing.T) {
		spec := b.spec("true")
		spec.NodeFilter = "^(noexec-1|web-1)$" // remote exec disabled on noexec-1: it never acks
		spec.Wait = 20 * time.Second
		fired := time.Now() // before the fire, so before its hold timer starts
		silent, targets := fire(t, spec)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		watched := make(chan struct{})
		var col collector
		go func() {
			defer close(watched)
			_, _ = silent.Watch(wctx, col.handle)
		}()
		next := prepareNext(b.spec("true"), targets)
		// The next run waits (and is counted as waiting) for the silent
		// run's place, which is given up a second after its fire.
		for waiting() != 1 {
			select {
			case err := <-next:
				t.Fatalf("the next run was prepared (%v) without waiting for the silent run's place", err)
			case <-time.After(5 * time.Millisecond):
			}
		}
		if err := <-next; err != nil {
			t.Fatal(err)
		}
		// web-1's ack does not give the place up: noexec-1's is missing.
		if d := time.Since(fired); d < time.Second {
			t.Errorf("the next run was prepared %v after the fire, before the silent run's place was given up", d)
		}
		if n := waiting(); n != 0 {
			t.Errorf("%s = %v after the wait, want 0", metrics.NameRunsWaitingToStart, n)
		}
		select {
		case <-watched:
			t.Fatal("the silent run ended before the next was prepared: its place was held for its quiet period")
		default:
		}
		cancel()
		<-watched
	})
}
