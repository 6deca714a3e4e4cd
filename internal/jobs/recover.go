package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/webhook"
)

// RecoverWorker is the leader's periodic sweep, after River's own rescuer
// and maintenance services: it fails runs that could not start in time,
// re-queues queued runs whose River job is gone, and hands runs whose
// lease expired to new jobs.
type RecoverWorker struct {
	river.WorkerDefaults[RecoverArgs]
	cfg Config
}

// Work does one sweep, in one transaction.
func (w *RecoverWorker) Work(ctx context.Context, job *river.Job[RecoverArgs]) error {
	client := river.ClientFromContext[pgx.Tx](ctx)
	// What the sweep did, by recovery kind: counted once it commits.
	var done map[string]int
	err := w.cfg.Store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		done = map[string]int{}
		var err error
		if done[metrics.RecoveryLateFailed], err = w.failLate(ctx, tx, q); err != nil {
			return err
		}
		if done[metrics.RecoveryApprovalExpired], err = w.expireApprovals(ctx, tx, q); err != nil {
			return err
		}
		if done[metrics.RecoveryOrphanRequeued], err = w.requeueOrphans(ctx, tx, q, client); err != nil {
			return err
		}
		recs, err := q.TakeExpiredLeases(ctx, recoveryLeaseHoldFactor*w.cfg.LeaseTTL)
		if err != nil {
			return err
		}
		done[metrics.RecoveryLeaseExpired] = len(recs)
		for _, r := range recs {
			w.cfg.Logger.InfoContext(ctx, "recovering run", slog.String("run", r.RunID), slog.Int("recoveries", r.Recoveries))
			opts := &river.InsertOpts{Priority: priorityRecovery}
			if _, err := client.InsertTx(ctx, tx, ExecArgs{RunID: r.RunID, Recovery: r.Recoveries + 1}, opts); err != nil {
				return fmt.Errorf("insert recovery job: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for kind, n := range done {
		w.cfg.Metrics.Recovered(kind, n)
	}
	for range done[metrics.RecoveryLateFailed] {
		w.cfg.Metrics.RunFinished(store.StateFailed)
	}
	for range done[metrics.RecoveryApprovalExpired] {
		w.cfg.Metrics.RunFinished(store.StateExpired)
	}
	return nil
}

// expireApprovals ends runs whose approval window passed: nobody has to
// poll for them. It returns how many it ended.
func (w *RecoverWorker) expireApprovals(ctx context.Context, tx pgx.Tx, q *store.Queries) (int, error) {
	expired, err := q.ExpirePending(ctx)
	if err != nil {
		return 0, err
	}
	for _, r := range expired {
		w.cfg.Logger.InfoContext(ctx, "run expired waiting for approval", slog.String("run", r.RunID))
		run, err := q.GetRunByID(ctx, r.RunID)
		if err != nil {
			return 0, err
		}
		approvals, err := q.Approvals(ctx, r.RunID)
		if err != nil {
			return 0, err
		}
		ev := audit.Event{TenantID: r.TenantID, RunID: r.RunID, Actor: recoveryActor}
		expiredEv := ev
		expiredEv.Type, expiredEv.Data = audit.RunExpired, map[string]any{"given": store.ApprovalsGiven(approvals, run.RequestHash),
			"required": run.Policy.Approvals, "approver_roles": run.Policy.ApproverRoles,
			"nodes": store.NodeCounts{Targets: len(r.Nodes), Cancelled: len(r.Nodes)}}
		if err := audit.Record(ctx, tx, append(CancelledNodes(ev, r.Nodes), expiredEv)...); err != nil {
			return 0, err
		}
		t, err := q.TenantByID(ctx, r.TenantID)
		if err != nil {
			return 0, err
		}
		if err := NotifyApprovers(ctx, river.ClientFromContext[pgx.Tx](ctx), tx, t, run, webhook.EventExpired, "", "", 0); err != nil {
			return 0, err
		}
		if err := q.NotifyRun(ctx, r.RunID); err != nil {
			return 0, err
		}
	}
	return len(expired), nil
}

// failLate fails queued runs past their start bound; it returns how many.
func (w *RecoverWorker) failLate(ctx context.Context, tx pgx.Tx, q *store.Queries) (int, error) {
	late, err := q.FailLateRuns(ctx)
	if err != nil {
		return 0, err
	}
	for _, r := range late {
		w.cfg.Logger.WarnContext(ctx, "run could not start in time", slog.String("run", r.RunID))
		ev := audit.Event{TenantID: r.TenantID, RunID: r.RunID, Actor: recoveryActor}
		finished := ev
		finished.Type, finished.Data = audit.RunFinished, map[string]any{"state": store.StateFailed, "outcome": store.OutcomeNotStarted,
			"error": r.Error, "nodes": store.NodeCounts{Targets: len(r.Nodes), Cancelled: len(r.Nodes)}}
		if err := audit.Record(ctx, tx, append(CancelledNodes(ev, r.Nodes), finished)...); err != nil {
			return 0, err
		}
		if err := q.NotifyRun(ctx, r.RunID); err != nil {
			return 0, err
		}
	}
	return len(late), nil
}

// requeueOrphans inserts a job for each run queued for longer than
// RequeueAfter that has no live River job: its job was discarded or
// deleted, or its worker died between River's fetch and the claim (a job
// River still counts as running, but for longer than a claim takes).
// A second job for a run is harmless: the claim lets one of them through.
// It returns how many runs it re-queued.
func (w *RecoverWorker) requeueOrphans(ctx context.Context, tx pgx.Tx, q *store.Queries, client *river.Client[pgx.Tx]) (int, error) {
	ids, err := q.StaleQueuedRuns(ctx, w.cfg.RequeueAfter)
	if err != nil || len(ids) == 0 {
		return 0, err
	}
	requeued := 0
	params := river.NewJobListParams().Kinds(ExecArgs{}.Kind()).First(requeueListLimit).
		States(rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
			rivertype.JobStateScheduled, rivertype.JobStateRunning).
		Where("args->>'run_id' = any(@run_ids)", river.NamedArgs{"run_ids": ids})
	res, err := client.JobListTx(ctx, tx, params)
	if err != nil {
		return 0, fmt.Errorf("list jobs of queued runs: %w", err)
	}
	live := map[string]bool{}
	for _, j := range res.Jobs {
		if j.State == rivertype.JobStateRunning && j.AttemptedAt != nil && time.Since(*j.AttemptedAt) > w.cfg.RequeueAfter {
			continue // its worker would have claimed the run long ago
		}
		var args ExecArgs
		if err := json.Unmarshal(j.EncodedArgs, &args); err == nil {
			live[args.RunID] = true
		}
	}
	for _, id := range ids {
		if live[id] {
			continue
		}
		run, err := q.GetRunByID(ctx, id)
		if err != nil {
			return 0, err
		}
		w.cfg.Logger.WarnContext(ctx, "queued run has no job; re-queueing it", slog.String("run", id))
		if _, err := client.InsertTx(ctx, tx, ExecArgs{RunID: id}, &river.InsertOpts{Priority: priorityRecovery}); err != nil {
			return 0, fmt.Errorf("insert job for queued run: %w", err)
		}
		err = audit.Record(ctx, tx, audit.Event{TenantID: run.TenantID, RunID: id, Actor: recoveryActor, Type: audit.RunRequeued,
			Data: map[string]any{"reason": "its job was gone"}})
		if err != nil {
			return 0, err
		}
		requeued++
	}
	return requeued, nil
}
