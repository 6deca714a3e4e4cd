package store

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStats: the scrape-time gauges count runs by non-final state, River's
// ready jobs of one queue, and the audit events no checkpoint covers yet.
func TestStats(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	b.insertRun(t, time.Hour, "a")
	b.insertRun(t, time.Hour, "a")
	running := b.insertRun(t, time.Hour, "a")
	if claimed, _, err := b.st.ClaimRun(ctx, running.ID, NewLeaseOwner("w"), time.Minute); err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	owner, err := pgx.Connect(ctx, b.db.Owner)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close(ctx)
	// Two ready jobs of the exec queue, the older ready for a minute; one
	// of another queue and one not yet due are not counted.
	if _, err := owner.Exec(ctx, `INSERT INTO river_job (kind, queue, state, args, scheduled_at, max_attempts, priority) VALUES
		('k', 'exec', 'available', '{}', now() - interval '1 minute', 1, 1),
		('k', 'exec', 'available', '{}', now(), 1, 1),
		('k', 'default', 'available', '{}', now() - interval '1 hour', 1, 1),
		('k', 'exec', 'scheduled', '{}', now() + interval '1 hour', 1, 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, `INSERT INTO audit_events (body) VALUES ($1)`,
		`{"actor":"t","tenant":`+strconv.FormatInt(b.tenant.ID, 10)+`,"time":"`+time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)+`","type":"test"}`); err != nil {
		t.Fatal(err)
	}
	st, err := b.st.Stats(ctx, "exec")
	if err != nil {
		t.Fatal(err)
	}
	if st.Runs[StateQueued] != 2 || st.Runs[StateRunning] != 1 || st.Runs[StatePendingApproval] != 0 || len(st.Runs) != 3 {
		t.Errorf("runs = %v", st.Runs)
	}
	if st.QueueDepth != 2 || st.QueueOldest < 59*time.Second || st.QueueOldest > 5*time.Minute {
		t.Errorf("queue depth %d, oldest %s; want 2 and about 1m", st.QueueDepth, st.QueueOldest)
	}
	if age := st.AuditUnlogged["acme"]; age < 59*time.Second || age > 5*time.Minute || len(st.AuditUnlogged) != 1 {
		t.Errorf("audit unlogged = %v, want acme about 1m", st.AuditUnlogged)
	}
}
