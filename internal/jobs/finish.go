package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/failpoint"
	"github.com/rexec/rexec/internal/store"
)

// handle stores one watch round in one transaction, idempotently. A lost
// lease or an error retrying cannot fix detaches the engine; any other
// error (the database is away) is retried by the engine, which meanwhile
// reads nothing more and leaves the agents' reports in Consul.
func (e *execution) handle(ctx context.Context, events []consul.Event) error {
	run := e.run
	err := e.w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		if err := q.HoldLease(ctx, run.ID, e.owner); err != nil {
			return err
		}
		var evs []audit.Event
		for _, ev := range events {
			switch ev.Kind {
			case consul.EventAck:
				ok, err := q.RecordAck(ctx, run.ID, ev.Node, ev.At)
				if err != nil {
					return err
				}
				if ok {
					evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Node: ev.Node, Actor: e.actor, Type: audit.NodeAcked,
						Data: map[string]any{"node": ev.Node}})
				}
			case consul.EventOutput:
				if _, err := q.AppendChunk(ctx, run.ID, ev.Node, ev.Seq, ev.Data, run.OutputCap); err != nil {
					return err
				}
			case consul.EventExit:
				ok, err := q.RecordExit(ctx, run.ID, ev.Node, ev.ExitCode, ev.At)
				if err != nil {
					return err
				}
				if ok {
					evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Node: ev.Node, Actor: e.actor, Type: audit.NodeExited,
						Data: map[string]any{"node": ev.Node, "exit_code": ev.ExitCode}})
				}
			}
		}
		if err := audit.Record(ctx, tx, evs...); err != nil {
			return err
		}
		return q.NotifyRun(ctx, run.ID)
	})
	if err != nil {
		if store.Permanent(err) {
			return fmt.Errorf("%w: %w", consul.ErrDetach, err)
		}
		return err
	}
	last := false
	for _, ev := range events {
		if ev.Kind == consul.EventExit && !e.exited[ev.Node] {
			e.exited[ev.Node] = true
			last = true
		}
	}
	if last && len(e.exited) == e.targets {
		failpoint.Inject(failpoint.OutputStored)
	}
	return nil
}

// close ends the run: it tears down the run's session and prefix (when r
// is not nil) while holding the run's row locked for this claim, then
// classifies unfinished nodes and records the final state in the same
// transaction. A database that is away is waited out, with the session
// still renewed until the teardown; a lost lease leaves everything to the
// new holder; a worker that stops first leaves the run for recovery.
func (e *execution) close(jobCtx context.Context, r *consul.Run, res *consul.Result, state, outcome, msg string) error {
	// From here the row lock below holds the claim: a renewal would only
	// queue behind it, holding a second connection.
	if e.stopLease != nil {
		e.stopLease()
	}
	backoff := 100 * time.Millisecond
	for failures := 0; ; failures++ {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(jobCtx), consul.TeardownTimeout+consul.HandlerTimeout)
		err := e.w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
			if err := q.LockLease(ctx, e.run.ID, e.owner); err != nil {
				return err
			}
			if r != nil {
				if err := r.Close(ctx); err != nil {
					e.log.WarnContext(ctx, "tear down run in Consul; the session expires by its TTL", slog.Any("error", err))
				}
			}
			failpoint.Inject(failpoint.Finishing)
			return e.finishTx(ctx, tx, q, res, state, outcome, msg)
		})
		cancel()
		switch {
		case err == nil:
			e.log.InfoContext(jobCtx, "run finished", slog.String("state", state), slog.String("outcome", outcome))
			return nil
		case errors.Is(err, store.ErrLeaseLost):
			if r != nil {
				r.Detach()
			}
			return nil // another claim holds the run and will finish it
		case store.Permanent(err) || jobCtx.Err() != nil:
			if r != nil {
				r.Detach()
			}
			return fmt.Errorf("finish run: %w", err)
		}
		if failures == 0 {
			e.log.WarnContext(jobCtx, "finish run; retrying", slog.Any("error", err))
		}
		select {
		case <-jobCtx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxFinishBackoff)
	}
}

// finishTx classifies the run's unfinished nodes and ends the run.
func (e *execution) finishTx(ctx context.Context, tx pgx.Tx, q *store.Queries, res *consul.Result, state, outcome, msg string) error {
	run := e.run
	nodes, err := q.RunNodes(ctx, run.ID)
	if err != nil {
		return err
	}
	final := map[string]string{}
	if res != nil {
		for _, n := range res.Nodes {
			final[n.Node] = string(n.State)
		}
	}
	exited := 0
	for _, n := range nodes {
		if n.State == string(consul.NodeExited) || final[n.Node] == string(consul.NodeExited) {
			exited++
		}
	}
	if outcome == string(consul.OutcomeSessionLost) && exited == len(nodes) {
		// Every node's exit is stored: the session went away afterwards
		// (a worker died between storing the last exit and finishing).
		state, outcome, msg = store.StateCompleted, string(consul.OutcomeCompleted), ""
	}
	var evs []audit.Event
	for _, n := range nodes {
		if n.State == string(consul.NodeExited) {
			continue
		}
		ns := final[n.Node]
		switch {
		case ns == string(consul.NodeExited):
			continue // stored by the handler
		case ns == "" && (state == store.StateCancelled || outcome == string(consul.OutcomeCancelled) || outcome == store.OutcomeNotStarted):
			ns = string(consul.NodeCancelled) // cancelled, or its deadline passed, before it could run
		case ns == "" && n.State == "acked", ns == "" && outcome == string(consul.OutcomeSessionLost):
			ns = string(consul.NodeLost)
		case ns == "":
			ns = string(consul.NodeNoAck)
		}
		ok, err := q.EndNode(ctx, run.ID, n.Node, ns)
		if err != nil {
			return err
		}
		if ok {
			evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Node: n.Node, Actor: e.actor, Type: audit.NodeEnded,
				Data: map[string]any{"node": n.Node, "state": ns}})
		}
	}
	ok, err := q.FinishRun(ctx, run.ID, e.owner, state, outcome, msg)
	if err != nil {
		return err
	}
	if !ok {
		return store.ErrLeaseLost
	}
	evs = append(evs, audit.Event{TenantID: run.TenantID, RunID: run.ID, Actor: e.actor, Type: audit.RunFinished,
		Data: map[string]any{"state": state, "outcome": outcome, "error": msg}})
	if err := audit.Record(ctx, tx, evs...); err != nil {
		return err
	}
	return q.NotifyRun(ctx, run.ID)
}
