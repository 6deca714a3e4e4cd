package auditlog_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditlog"
	"github.com/rexec/rexec/internal/auditproof"
)

func TestIntegrateSignsAndVerifies(t *testing.T) {
	f := setup(t, "acme", "globex")
	ctx := context.Background()
	acme, globex := f.tenant("acme"), f.tenant("globex")
	if _, err := f.log.Latest(ctx, acme); !errors.Is(err, auditlog.ErrEmpty) {
		t.Fatalf("empty log: %v, want ErrEmpty", err)
	}
	for round := range 3 {
		f.record(acme, 5, audit.RunSubmitted)
		f.record(globex, round+1, audit.RunSubmitted)
		f.integrate()
	}
	res, err := f.verify(acme, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 15 of acme's own events (tenant.created is not recorded by CreateTenant).
	if res.Size != 15 || res.Origin != "rexec-test/tenant/acme" {
		t.Errorf("acme: %+v", res)
	}
	res, err = f.verify(globex, nil)
	if err != nil || res.Size != 6 {
		t.Errorf("globex: %+v, %v", res, err)
	}
	cps, err := f.log.Checkpoints(ctx, acme, 0, 100)
	if err != nil || len(cps) != 3 || cps[0].Size != 5 || cps[2].Size != 15 {
		t.Fatalf("acme checkpoints: %+v, %v", cps, err)
	}
	// Each checkpoint extends the one before, and each leaf proves its
	// inclusion in the latest.
	latest, err := auditproof.Open([]byte(cps[2].Note), f.key)
	if err != nil {
		t.Fatal(err)
	}
	older, err := auditproof.Open([]byte(cps[0].Note), f.key)
	if err != nil {
		t.Fatal(err)
	}
	proof, err := f.log.ProveConsistency(ctx, acme, 5, 15)
	if err != nil {
		t.Fatal(err)
	}
	if err := auditproof.CheckConsistency(older, latest, proof); err != nil {
		t.Fatal(err)
	}
	leaves, err := f.log.Leaves(ctx, acme, 0, 15)
	if err != nil || len(leaves) != 15 {
		t.Fatalf("leaves: %d, %v", len(leaves), err)
	}
	for _, l := range leaves {
		p, err := f.log.ProveInclusion(ctx, acme, l.Index, 15)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkRecord(p, latest, l); err != nil {
			t.Errorf("leaf %d: %v", l.Index, err)
		}
	}
	// Nothing new: no new checkpoint.
	f.integrate()
	if c, _ := f.log.Latest(ctx, acme); c.Size != 15 {
		t.Errorf("latest after an idle round: %d", c.Size)
	}
}

// An event committed later by a transaction that began earlier is
// integrated after the events that committed before it, never skipped.
func TestLateCommitNotSkipped(t *testing.T) {
	f := setup(t, "acme")
	ctx := context.Background()
	acme := f.tenant("acme")

	slow, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx)
	if err := audit.Record(ctx, slow, audit.Event{TenantID: acme, Actor: "slow", Type: audit.RunSubmitted}); err != nil {
		t.Fatal(err)
	}
	f.record(acme, 3, audit.RunQueued) // later ids? no: higher txids, and committed first
	f.integrate()
	if _, err := f.log.Latest(ctx, acme); !errors.Is(err, auditlog.ErrEmpty) {
		t.Fatalf("integrated past a running transaction that wrote an earlier event: %v", err)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	f.integrate()
	leaves, err := f.log.Leaves(ctx, acme, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	var actors []string
	for _, l := range leaves {
		var ev struct{ Actor string }
		if err := jsonUnmarshal(l.Body, &ev); err != nil {
			t.Fatal(err)
		}
		actors = append(actors, ev.Actor)
	}
	if len(actors) != 4 || actors[0] != "slow" {
		t.Errorf("log order %v, want the slow transaction's event first", actors)
	}
	if _, err := f.verify(acme, nil); err != nil {
		t.Fatal(err)
	}

	// An aborted transaction leaves nothing behind and holds nothing up.
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.Record(ctx, tx, audit.Event{TenantID: acme, Actor: "aborted", Type: audit.RunSubmitted}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	f.record(acme, 1, audit.RunQueued)
	f.integrate()
	if c, err := f.log.Latest(ctx, acme); err != nil || c.Size != 5 {
		t.Errorf("after an aborted transaction: size %d, %v; want 5", c.Size, err)
	}
}

func TestIntegratorsTakeTurns(t *testing.T) {
	f := setup(t, "acme")
	ctx := context.Background()
	acme := f.tenant("acme")
	f.record(acme, 10, audit.RunSubmitted)
	// While one transaction holds the log, another integrator passes.
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var locked bool
	if err := tx.QueryRow(ctx, "SELECT pg_try_advisory_xact_lock($1, $2::int)", 0x72786c67, acme).Scan(&locked); err != nil || !locked {
		t.Fatalf("lock: %v %v", locked, err)
	}
	if n, err := f.log.IntegrateAll(ctx); err != nil || n != 0 {
		t.Errorf("integrated %d (%v) while another held the log", n, err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := f.log.IntegrateAll(ctx); err != nil || n != 10 {
		t.Errorf("integrated %d (%v), want 10", n, err)
	}
}

// A process with another key refuses to extend a log: its checkpoints
// would not verify under the key auditors hold.
func TestOtherKeyRefused(t *testing.T) {
	f := setup(t, "acme")
	ctx := context.Background()
	acme := f.tenant("acme")
	f.record(acme, 3, audit.RunSubmitted)
	f.integrate()
	skey, _, err := note.GenerateKey(rand.Reader, "rexec-test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	l, err := auditlog.New(f.pool, auditlog.Config{Signer: other,
		Logs: func(context.Context) (map[int64]string, error) { return f.tenants, nil }})
	if err != nil {
		t.Fatal(err)
	}
	f.record(acme, 2, audit.RunQueued)
	if _, err := l.IntegrateAll(ctx); !errors.Is(err, auditlog.ErrOtherKey) {
		t.Errorf("integrating with another key: %v, want ErrOtherKey", err)
	}
	if c, _ := f.log.Latest(ctx, acme); c.Size != 3 {
		t.Errorf("the other key extended the log to %d", c.Size)
	}
	f.integrate()
	if res, err := f.verify(acme, nil); err != nil || res.Size != 5 {
		t.Errorf("after the refusal: %+v, %v", res, err)
	}
}

// The database, not the writer, sets an event's transaction id: a row
// claiming a future one cannot move the log past honest events.
func TestTxidSetByDatabase(t *testing.T) {
	f := setup(t, "acme")
	ctx := context.Background()
	acme := f.tenant("acme")
	body, err := audit.Event{TenantID: acme, Actor: "mallory", Type: audit.RunSubmitted}.Body()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO audit_events (body, txid) VALUES ($1, '999999999999')`, string(body)); err != nil {
		t.Fatal(err)
	}
	f.record(acme, 2, audit.RunQueued)
	f.awaitIntegrated(3)
	if res, err := f.verify(acme, nil); err != nil || res.Size != 3 {
		t.Errorf("verify: %+v, %v", res, err)
	}
}
