package store

import (
	"context"
	"fmt"
	"time"
)

// Stats are the database's gauges that the metrics report at scrape time.
// Every query is bounded by an index, whatever the size of the history:
// runs are counted only in the states that have a partial index of their
// own (the final states are counted as they happen, by the processes that
// end runs), River's ready jobs by its fetching index, and the audit log's
// backlog by one probe per log.
type Stats struct {
	// Runs counts the runs per non-final state: pending_approval, queued,
	// running.
	Runs map[string]int64
	// QueueDepth counts the ready jobs of the queue (River's available
	// jobs), and QueueOldest is how long the oldest of them has been ready.
	QueueDepth  int64
	QueueOldest time.Duration
	// AuditUnlogged is, per transparency log with events waiting to be
	// logged (a tenant's name, or "system"), the age of the next one.
	AuditUnlogged map[string]time.Duration
}

// SystemLog names the system log (events of no tenant) in
// Stats.AuditUnlogged.
const SystemLog = "system"

const (
	// Each count matches one partial index (runs_pending_expiry,
	// runs_queued_created, runs_running_lease) exactly.
	queryStatsRuns = `SELECT
	(SELECT count(*) FROM runs WHERE state = 'pending_approval'),
	(SELECT count(*) FROM runs WHERE state = 'queued'),
	(SELECT count(*) FROM runs WHERE state = 'running')`

	// River's river_job_prioritized_fetching_index leads with (state, queue).
	queryStatsQueue = `SELECT count(*), coalesce(extract(epoch FROM now() - min(scheduled_at)), 0)::float8
	FROM river_job WHERE state = 'available' AND queue = $1`

	// Per log, the first event after its last checkpoint in log order, as
	// the integrator reads them (audit_events_txid). Its age says how far
	// behind logging is; an uncommitted event is not seen, nor waited for.
	queryStatsAudit = `
SELECT t.name, extract(epoch FROM now() - e.created_at)::float8 FROM tenants t
LEFT JOIN LATERAL (SELECT last_txid, last_event FROM audit_checkpoints c WHERE c.log_id = t.id ORDER BY size DESC LIMIT 1) c ON true
CROSS JOIN LATERAL (SELECT created_at FROM audit_events e WHERE e.tenant_id = t.id
	AND (e.txid, e.id) > (coalesce(c.last_txid, '0'::xid8), coalesce(c.last_event, 0)) ORDER BY e.txid, e.id LIMIT 1) e
UNION ALL
SELECT '` + SystemLog + `', extract(epoch FROM now() - e.created_at)::float8 FROM
(SELECT 1) one
LEFT JOIN LATERAL (SELECT last_txid, last_event FROM audit_checkpoints c WHERE c.log_id = 0 ORDER BY size DESC LIMIT 1) c ON true
CROSS JOIN LATERAL (SELECT created_at FROM audit_events e WHERE e.tenant_id IS NULL
	AND (e.txid, e.id) > (coalesce(c.last_txid, '0'::xid8), coalesce(c.last_event, 0)) ORDER BY e.txid, e.id LIMIT 1) e`
)

// Stats reads the gauges; queue is the River queue whose depth to report.
func (s *Store) Stats(ctx context.Context, queue string) (Stats, error) {
	st := Stats{Runs: map[string]int64{}, AuditUnlogged: map[string]time.Duration{}}
	var pending, queued, running int64
	if err := s.pool.QueryRow(ctx, queryStatsRuns).Scan(&pending, &queued, &running); err != nil {
		return Stats{}, fmt.Errorf("stats: runs: %w", err)
	}
	st.Runs[StatePendingApproval], st.Runs[StateQueued], st.Runs[StateRunning] = pending, queued, running
	var oldest float64
	if err := s.pool.QueryRow(ctx, queryStatsQueue, queue).Scan(&st.QueueDepth, &oldest); err != nil {
		return Stats{}, fmt.Errorf("stats: queue: %w", err)
	}
	st.QueueOldest = seconds(oldest)
	rows, err := s.pool.Query(ctx, queryStatsAudit)
	if err != nil {
		return Stats{}, fmt.Errorf("stats: audit log: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var log string
		var age float64
		if err := rows.Scan(&log, &age); err != nil {
			return Stats{}, fmt.Errorf("stats: audit log: %w", err)
		}
		st.AuditUnlogged[log] = seconds(age)
	}
	if err := rows.Err(); err != nil {
		return Stats{}, fmt.Errorf("stats: audit log: %w", err)
	}
	return st, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
