package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

const queryLateRuns = `
SELECT id::text, tenant_id, start_timeout_ms FROM runs
WHERE state = 'queued' AND start_by < now()
ORDER BY start_by LIMIT 100 FOR UPDATE SKIP LOCKED`

const queryFailLate = `UPDATE runs SET state = 'failed', outcome = 'not_started', error = $2, finished_at = now(),
	lease_owner = NULL, lease_expires_at = NULL
WHERE id = $1 AND state = 'queued'`

// LateRun is a queued run that passed its start bound and was failed.
type LateRun struct {
	RunID    string
	TenantID int64
	Error    string
	// Nodes are the run's nodes, ended cancelled.
	Nodes []string
}

// FailLateRuns fails up to 100 queued runs whose start bound passed, so
// that a run nobody could start in time never fires late; their nodes end
// cancelled (the command never ran). Running runs that have not fired are
// refused by MarkFiring instead.
func (q *Queries) FailLateRuns(ctx context.Context) ([]LateRun, error) {
	rows, err := q.db.Query(ctx, queryLateRuns)
	if err != nil {
		return nil, fmt.Errorf("late runs: %w", err)
	}
	late, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (LateRun, error) {
		var r LateRun
		var boundMS int64
		err := row.Scan(&r.RunID, &r.TenantID, &boundMS)
		r.Error = NotStartedError(time.Duration(boundMS) * time.Millisecond)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("late runs: %w", err)
	}
	for i, r := range late {
		if _, err := q.db.Exec(ctx, queryFailLate, r.RunID, r.Error); err != nil {
			return nil, fmt.Errorf("fail late run: %w", err)
		}
		if late[i].Nodes, err = q.cancelNodes(ctx, r.RunID); err != nil {
			return nil, fmt.Errorf("fail late run: %w", err)
		}
	}
	return late, nil
}

// NotStartedError is the error of a run that could not start within bound.
func NotStartedError(bound time.Duration) string {
	return fmt.Sprintf("the run could not start within its start bound of %s from submission; it was not fired", bound.Round(time.Second))
}

const queryStaleQueued = `
SELECT id::text FROM runs WHERE state = 'queued' AND created_at < now() - $1 * interval '1 millisecond'
ORDER BY created_at LIMIT 500`

// StaleQueuedRuns returns up to 500 runs queued for longer than age, the
// candidates for a run whose job is gone.
func (q *Queries) StaleQueuedRuns(ctx context.Context, age time.Duration) ([]string, error) {
	rows, err := q.db.Query(ctx, queryStaleQueued, age.Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("stale queued runs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("stale queued runs: %w", err)
	}
	return ids, nil
}
