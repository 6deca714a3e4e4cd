package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
)

// TestConcurrentSubmissions: submissions that arrive together, which the
// service stores several to a transaction, are each stored whole: the run
// with its own targets, its three audit events in order, and one River
// job.
func TestConcurrentSubmissions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{workers: -1}) // API only: the runs stay queued
	c, err := client.New(e.addr, e.token)
	if err != nil {
		t.Fatal(err)
	}
	nodes := []string{"web-1", "web-2", "db-1", "app-1"}
	const n = 48
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			r, err := c.Submit(ctx, apitype.SubmitRequest{Argv: []string{"echo", fmt.Sprint(i)}, Node: "^" + nodes[i%len(nodes)] + "$"})
			if err != nil {
				errs <- fmt.Errorf("submission %d: %w", i, err)
				return
			}
			ids[i] = r.ID
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	byRun := map[string][]auditEvent{}
	for _, ev := range e.auditEvents("acme") {
		if ev.Run != "" {
			byRun[ev.Run] = append(byRun[ev.Run], ev)
		}
	}
	conn := e.conn()
	for i, id := range ids {
		r, err := c.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != "queued" || len(r.Targets) != 1 || r.Targets[0].Name != nodes[i%len(nodes)] ||
			!slices.Equal(r.Argv, []string{"echo", fmt.Sprint(i)}) {
			t.Errorf("submission %d: run %s %s %v on %+v", i, id, r.State, r.Argv, r.Targets)
		}
		evs := byRun[id]
		var types []string
		for _, ev := range evs {
			types = append(types, ev.Type)
		}
		if want := []string{"run.submitted", "policy.decided", "run.queued"}; !slices.Equal(types, want) {
			t.Errorf("submission %d: audit events %v, want %v", i, types, want)
		}
		var jobs int
		if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM river_job WHERE kind = 'rexec_exec' AND args->>'run_id' = $1", id).Scan(&jobs); err != nil {
			t.Fatal(err)
		}
		if jobs != 1 {
			t.Errorf("submission %d: %d River jobs", i, jobs)
		}
	}
}
