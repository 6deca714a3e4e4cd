package auditlog_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditproof"
)

// Eight writers append 1,000 events each to each of four tenants at once,
// in transactions of one to four events, while two integrators race to log
// them: every event is logged exactly once, and every checkpoint extends
// the one before.
func TestConcurrentWriters(t *testing.T) {
	const writers, perWriter = 8, 1000
	f := setup(t, "t1", "t2", "t3", "t4")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var integrators sync.WaitGroup
	for range 2 {
		l := f.newLog()
		integrators.Go(func() { _ = l.Run(ctx) })
	}

	var wg sync.WaitGroup
	errs := make(chan error, writers*len(f.tenants))
	for tenant := range f.tenants {
		for w := range writers {
			wg.Go(func() {
				for i := 0; i < perWriter; {
					n := min(1+(i+w)%4, perWriter-i)
					evs := make([]audit.Event, n)
					for j := range evs {
						evs[j] = audit.Event{TenantID: tenant, Actor: fmt.Sprintf("writer-%d", w), Type: audit.NodeExited,
							Data: map[string]any{"i": i + j}}
					}
					if err := pgx.BeginFunc(ctx, f.pool, func(tx pgx.Tx) error { return audit.Record(ctx, tx, evs...) }); err != nil {
						errs <- err
						return
					}
					i += n
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	cancel()
	integrators.Wait()
	// Any transaction in the server, autovacuum's included, holds the
	// horizon back for as long as it runs: integrate until it has passed.
	f.awaitIntegrated(int64(writers * perWriter * len(f.tenants)))

	for tenant, name := range f.tenants {
		var events, logged, distinct int64
		err := f.pool.QueryRow(context.Background(), `SELECT
			(SELECT count(*) FROM audit_events WHERE tenant_id = $1),
			(SELECT count(*) FROM audit_leaves WHERE log_id = $1),
			(SELECT count(DISTINCT l.event_id) FROM audit_leaves l JOIN audit_events e ON e.id = l.event_id AND e.tenant_id = $1 WHERE l.log_id = $1)`,
			tenant).Scan(&events, &logged, &distinct)
		if err != nil {
			t.Fatal(err)
		}
		if events != writers*perWriter || logged != events || distinct != events {
			t.Errorf("%s: %d events, %d leaves, %d distinct logged events; want %d each", name, events, logged, distinct, writers*perWriter)
		}
		res, err := f.verify(tenant, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if res.Size != writers*perWriter {
			t.Errorf("%s: verified %d events", name, res.Size)
		}
		// Each checkpoint, by its own consistency proof, extends the one before.
		cps, err := f.log.Checkpoints(context.Background(), tenant, 0, 100000)
		if err != nil {
			t.Fatal(err)
		}
		var prev *auditproof.Checkpoint
		for _, c := range cps {
			cp, err := auditproof.Open([]byte(c.Note), f.key)
			if err != nil {
				t.Fatal(err)
			}
			if prev != nil {
				proof, err := f.log.ProveConsistency(context.Background(), tenant, prev.Size, cp.Size)
				if err != nil {
					t.Fatal(err)
				}
				if err := auditproof.CheckConsistency(*prev, cp, proof); err != nil {
					t.Errorf("%s: checkpoint %d: %v", name, cp.Size, err)
				}
			}
			prev = &cp
		}
		t.Logf("%s: %d events in %d checkpoints", name, res.Size, len(cps))
	}
}
