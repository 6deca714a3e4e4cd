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

// handle stores one watch round in one transaction, idempotently, in a
// number of round trips that does not grow with the nodes in the round
// (store.StoreRound). A lost lease or an error retrying cannot fix
// detaches the engine; any other error (the database is away) is retried
// by the engine, which meanwhile reads nothing more and leaves the agents'
// reports in Consul.
func (e *execution) handle(ctx context.Context, events []consul.Event) error {
	run := e.run
	var archived int64 // output bytes this round stored, counted once it commits
	err := e.w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		if err := q.HoldLease(ctx, run.ID, e.owner); err != nil {
			return err
		}
		if err := e.recordUnrecordedFire(ctx, tx, q); err != nil {
			return err
		}
		var err error
		archived, err = StoreRound(ctx, tx, q, e.runEvent("", nil), run.OutputCap, events)
		return err
	})
	if err != nil {
		if store.Permanent(err) {
			return fmt.Errorf("%w: %w", consul.ErrDetach, err)
		}
		return err
	}
	e.unrecordedFire = nil // recorded, if it was not before
	e.w.cfg.Metrics.OutputArchived(archived)
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
			// finishTx may have found the run completed after all.
			e.w.cfg.Metrics.RunFinished(e.finalState)
			e.log.InfoContext(jobCtx, "run finished", slog.String("state", e.finalState), slog.String("outcome", outcome))
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
	if err := e.recordUnrecordedFire(ctx, tx, q); err != nil {
		return err
	}
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
		out, ok, err := q.EndNode(ctx, run.ID, n.Node, ns)
		if err != nil {
			return err
		}
		if ok {
			data := outputAudit(out)
			data["state"] = ns
			evs = append(evs, e.nodeEvent(audit.NodeEnded, n.Node, data))
		}
	}
	ok, err := q.FinishRun(ctx, run.ID, e.owner, state, outcome, msg)
	if err != nil {
		return err
	}
	e.finalState = state
	if !ok {
		return store.ErrLeaseLost
	}
	if nodes, err = q.RunNodes(ctx, run.ID); err != nil {
		return err
	}
	if state == store.StateCancelled {
		// Who asked is in the run.cancel_requested event the API wrote;
		// nobody did when River's job was cancelled.
		who, err := q.CancelRequester(ctx, run.ID)
		if err != nil {
			return err
		}
		now, err := q.GetRunByID(ctx, run.ID)
		if err != nil {
			return err
		}
		evs = append(evs, e.runEvent(audit.RunCancelled, map[string]any{"requested_by": who, "fired": now.FiringAt != nil}))
	}
	evs = append(evs, e.runEvent(audit.RunFinished, map[string]any{"state": state, "outcome": outcome, "error": msg,
		"nodes": store.CountNodes(nodes)}))
	if err := audit.Record(ctx, tx, evs...); err != nil {
		return err
	}
	return q.NotifyRun(ctx, run.ID)
}

// runEvent is an audit event of this claim about the run.
func (e *execution) runEvent(typ string, data map[string]any) audit.Event {
	return audit.Event{TenantID: e.run.TenantID, RunID: e.run.ID, Actor: e.actor, Type: typ, Data: data}
}

// nodeEvent is an audit event of this claim about one node of the run.
func (e *execution) nodeEvent(typ, node string, data map[string]any) audit.Event {
	ev := e.runEvent(typ, data)
	ev.Node = node
	return ev
}

// StoreRound stores a watch round of run's reports (store.StoreRound) in
// the caller's transaction, with the audit events of the facts stored for
// the first time — base, a run event of the caller's, with type, node and
// data set for each — and notifies the run's followers. It returns the
// output bytes stored. Workers store every round through it (and so does
// the simulator's benchmark, to archive as they do).
func StoreRound(ctx context.Context, tx pgx.Tx, q *store.Queries, base audit.Event, outputCap int64, events []consul.Event) (int64, error) {
	reports := make([]store.Report, 0, len(events))
	for _, ev := range events {
		r := store.Report{Node: ev.Node, Seq: ev.Seq, Data: ev.Data, ExitCode: ev.ExitCode, At: ev.At}
		switch ev.Kind {
		case consul.EventAck:
			r.Kind = store.ReportAck
		case consul.EventOutput:
			r.Kind = store.ReportOutput
		case consul.EventExit:
			r.Kind = store.ReportExit
		default:
			continue // heartbeats only keep the run from looking quiet
		}
		reports = append(reports, r)
	}
	res, err := q.StoreRound(ctx, base.RunID, outputCap, reports)
	if err != nil {
		return 0, err
	}
	// Only facts stored for the first time: a round handed again after a
	// commit whose answer was lost writes no second event.
	evs := make([]audit.Event, 0, len(res.Recorded))
	for _, f := range res.Recorded {
		ev := base
		ev.Node = f.Node
		switch f.Kind {
		case store.ReportAck:
			ev.Type, ev.Data = audit.NodeAcked, map[string]any{"acked_at": f.At}
		case store.ReportExit:
			ev.Type, ev.Data = audit.NodeExited, outputAudit(f.Output)
			ev.Data["exit_code"], ev.Data["exited_at"] = f.ExitCode, f.At
		default:
			continue
		}
		evs = append(evs, ev)
	}
	if err := audit.Record(ctx, tx, evs...); err != nil {
		return 0, err
	}
	return res.StoredBytes, q.NotifyRun(ctx, base.RunID)
}

// outputAudit is what the audit log keeps of a node's output when it ends:
// its size, what was archived, and its sha256, never the bytes.
func outputAudit(o store.NodeOutput) map[string]any {
	return map[string]any{"bytes": o.Bytes, "stored_bytes": o.StoredBytes, "truncated": o.Truncated, "sha256": o.SHA256}
}

// CancelledNodes are the node.ended events of nodes that a run which never
// fired ended as cancelled (cancelled while queued, denied, expired, not
// started in time): ev with its type, node and data set for each.
func CancelledNodes(ev audit.Event, nodes []string) []audit.Event {
	ev.Type, ev.Data = audit.NodeEnded, map[string]any{"state": string(consul.NodeCancelled), "fired": false}
	return audit.ForNodes(ev, nodes)
}
