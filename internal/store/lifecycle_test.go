package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// claimPrepared claims r for owner and records its session, as a worker
// does before it fires.
func (b *bundle) claimPrepared(t *testing.T, r Run, owner string, ttl time.Duration) {
	t.Helper()
	ctx := context.Background()
	claimed, _, err := b.st.ClaimRun(ctx, r.ID, owner, ttl)
	if err != nil || !claimed {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	if err := b.st.InTx(ctx, func(tx pgx.Tx, q *Queries) error { return q.RecordSession(ctx, r.ID, owner, "session-"+owner) }); err != nil {
		t.Fatal(err)
	}
}

func (b *bundle) markFiring(r Run, owner string) error {
	ctx := context.Background()
	return b.st.InTx(ctx, func(tx pgx.Tx, q *Queries) error { return q.MarkFiring(ctx, r.ID, owner, "session-"+owner) })
}

func (b *bundle) cancel(r Run) (Cancellation, error) {
	ctx := context.Background()
	var c Cancellation
	err := b.st.InTx(ctx, func(tx pgx.Tx, q *Queries) error {
		var err error
		c, err = q.CancelRun(ctx, b.tenant.ID, r.ID)
		return err
	})
	return c, err
}

// TestCancelBeatsFiring: whichever of a cancel and the firing mark comes
// first, the cancel reports truly whether the run may have fired.
func TestCancelBeatsFiring(t *testing.T) {
	t.Parallel()
	b := setup(t)

	r := b.insertRun(t, time.Hour, "n1")
	b.claimPrepared(t, r, "w", time.Minute)
	if c, err := b.cancel(r); err != nil || c.Fired || c.State != StateRunning {
		t.Fatalf("cancel before firing: %+v %v", c, err)
	}
	if err := b.markFiring(r, "w"); !errors.Is(err, ErrCancelRequested) {
		t.Fatalf("mark firing after a cancel: %v, want ErrCancelRequested", err)
	}

	r = b.insertRun(t, time.Hour, "n1")
	b.claimPrepared(t, r, "w", time.Minute)
	if err := b.markFiring(r, "w"); err != nil {
		t.Fatal(err)
	}
	if c, err := b.cancel(r); err != nil || !c.Fired {
		t.Fatalf("cancel after firing: %+v %v", c, err)
	}

	// Raced: the two serialise on the run's row, and agree.
	for i := range 40 {
		r := b.insertRun(t, time.Hour, "n1")
		b.claimPrepared(t, r, "w", time.Minute)
		var wg sync.WaitGroup
		var fireErr, cancelErr error
		var c Cancellation
		wg.Add(2)
		go func() { defer wg.Done(); fireErr = b.markFiring(r, "w") }()
		go func() { defer wg.Done(); c, cancelErr = b.cancel(r) }()
		wg.Wait()
		if cancelErr != nil || (fireErr != nil && !errors.Is(fireErr, ErrCancelRequested)) {
			t.Fatalf("race %d: fire %v, cancel %v", i, fireErr, cancelErr)
		}
		if c.Fired != (fireErr == nil) {
			t.Fatalf("race %d: cancel says fired=%v, the firing mark returned %v", i, c.Fired, fireErr)
		}
	}
}

// TestQueuedCancel: a cancel of a queued run ends it at once, nodes
// cancelled, and no claim takes it afterwards.
func TestQueuedCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.insertRun(t, time.Hour, "n1", "n2")
	if c, err := b.cancel(r); err != nil || c.State != StateCancelled || c.Fired {
		t.Fatalf("cancel: %+v %v", c, err)
	}
	if claimed, _, err := b.st.ClaimRun(ctx, r.ID, "w", time.Minute); err != nil || claimed {
		t.Fatalf("claim of a cancelled run: %v %v", claimed, err)
	}
	nodes, err := b.st.RunNodes(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.State != "cancelled" {
			t.Errorf("%s: %s", n.Node, n.State)
		}
	}
	if _, err := b.cancel(r); !errors.Is(err, ErrNotFound) {
		t.Errorf("second cancel: %v, want ErrNotFound (wrong state)", err)
	}
}

// TestRecoveriesCountedAtPickup: taking an expired lease reserves the run;
// only a claim counts a recovery.
func TestRecoveriesCountedAtPickup(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.insertRun(t, time.Hour, "n1")
	if _, first, err := b.st.ClaimRun(ctx, r.ID, "a", time.Millisecond); err != nil || !first {
		t.Fatalf("first claim: %v %v", first, err)
	}
	var recs []Recovery
	awaitT(t, func() bool {
		err := b.st.InTx(ctx, func(tx pgx.Tx, q *Queries) error {
			var err error
			recs, err = q.TakeExpiredLeases(ctx, time.Millisecond)
			return err
		})
		return err == nil && len(recs) == 1
	})
	if got := b.get(t, r.ID).Recoveries; got != 0 {
		t.Errorf("after the sweep: %d recoveries, want 0", got)
	}
	if _, err := b.st.RenewLease(ctx, r.ID, "a", time.Minute); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("old holder renews: %v, want ErrLeaseLost", err)
	}
	var claimed, first bool
	awaitT(t, func() bool {
		var err error
		claimed, first, err = b.st.ClaimRun(ctx, r.ID, "b", time.Minute)
		return err == nil && claimed
	})
	if first {
		t.Error("a resumed run claimed as first")
	}
	if got := b.get(t, r.ID).Recoveries; got != 1 {
		t.Errorf("after the new claim: %d recoveries, want 1", got)
	}
}

// TestRegainLeaseAfterOutage: a holder whose lease expired, but whom
// nobody replaced, regains it by renewing.
func TestRegainLeaseAfterOutage(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.insertRun(t, time.Hour, "n1")
	b.claimExpired(t, r, "a")
	if _, err := b.st.RenewLease(ctx, r.ID, "a", time.Minute); err != nil {
		t.Fatalf("renew an expired but untaken lease: %v", err)
	}
	if claimed, _, err := b.st.ClaimRun(ctx, r.ID, "b", time.Minute); err != nil || claimed {
		t.Fatalf("another claim after the renewal: %v %v", claimed, err)
	}
}

// claimExpired claims r for owner with a lease that has expired by the
// time it returns, as after a worker's death or a database outage.
func (b *bundle) claimExpired(t *testing.T, r Run, owner string) {
	t.Helper()
	if claimed, _, err := b.st.ClaimRun(context.Background(), r.ID, owner, time.Millisecond); err != nil || !claimed {
		t.Fatal(claimed, err)
	}
	awaitT(t, func() bool { return leaseExpired(t, b, r.ID) })
}

func leaseExpired(t *testing.T, b *bundle, id string) bool {
	var expired bool
	if err := b.st.Pool().QueryRow(context.Background(), "SELECT lease_expires_at < now() FROM runs WHERE id = $1", id).Scan(&expired); err != nil {
		t.Fatal(err)
	}
	return expired
}

// TestLockLeaseFences: while the holder keeps the run's row locked (it
// tears the run down), recovery skips the run even if the lease expired,
// and a stale holder cannot lock it.
func TestLockLeaseFences(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.insertRun(t, time.Hour, "n1")
	b.claimExpired(t, r, "a")
	tx, err := b.st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := New(tx).LockLease(ctx, r.ID, "a"); err != nil {
		t.Fatalf("holder locks: %v", err)
	}
	var recs []Recovery
	err = b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
		recs, err = q.TakeExpiredLeases(ctx, time.Minute)
		return err
	})
	if err != nil || len(recs) != 0 {
		t.Fatalf("sweep while locked: %v %v, want nothing", recs, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err = b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
		recs, err = q.TakeExpiredLeases(ctx, time.Minute)
		return err
	})
	if err != nil || len(recs) != 1 {
		t.Fatalf("sweep after: %v %v, want the run", recs, err)
	}
	err = b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error { return q.LockLease(ctx, r.ID, "a") })
	if !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("stale holder locks: %v, want ErrLeaseLost", err)
	}
}

// TestStartBound: a queued run past its bound is failed by the sweep, its
// nodes cancelled; a claimed one is refused the firing mark.
func TestStartBound(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	queued := b.insertRun(t, time.Millisecond, "n1")
	onTime := b.insertRun(t, time.Hour, "n1")
	claimed := b.insertRun(t, time.Hour, "n1")
	b.claimPrepared(t, claimed, "w", time.Minute)
	if _, err := b.st.Pool().Exec(ctx, "UPDATE runs SET start_by = now() - interval '1 second' WHERE id = $1", claimed.ID); err != nil {
		t.Fatal(err)
	}
	var late []LateRun
	awaitT(t, func() bool {
		err := b.st.InTx(ctx, func(_ pgx.Tx, q *Queries) error {
			var err error
			late, err = q.FailLateRuns(ctx)
			return err
		})
		return err == nil && len(late) > 0
	})
	if len(late) != 1 || late[0].RunID != queued.ID || len(late[0].Nodes) != 1 || late[0].Nodes[0] != "n1" {
		t.Fatalf("late runs: %+v, want only %s", late, queued.ID)
	}
	got := b.get(t, queued.ID)
	if got.State != StateFailed || got.Outcome != OutcomeNotStarted || got.Error == "" {
		t.Errorf("late run: %s %s %q", got.State, got.Outcome, got.Error)
	}
	nodes, _ := b.st.RunNodes(ctx, queued.ID)
	if len(nodes) != 1 || nodes[0].State != "cancelled" {
		t.Errorf("late run's nodes: %+v", nodes)
	}
	if s := b.get(t, onTime.ID).State; s != StateQueued {
		t.Errorf("run on time: %s", s)
	}
	if err := b.markFiring(claimed, "w"); !errors.Is(err, ErrStartBoundPassed) {
		t.Errorf("firing past the bound: %v, want ErrStartBoundPassed", err)
	}
}

func (b *bundle) get(t *testing.T, id string) Run {
	t.Helper()
	r, err := b.st.GetRunByID(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// awaitT polls cond until it holds, for up to 10 s.
func awaitT(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPermanent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{ErrLeaseLost, true},
		{fmt.Errorf("x: %w", ErrNotFound), true},
		{&pgconn.PgError{Code: "22021"}, true}, // invalid byte sequence
		{&pgconn.PgError{Code: "23505"}, true},
		{&pgconn.PgError{Code: "42P01"}, true},
		{&pgconn.PgError{Code: "57P01"}, false}, // admin shutdown
		{&pgconn.PgError{Code: "08006"}, false}, // connection failure
		{&pgconn.PgError{Code: "40001"}, false}, // serialization failure
		{errors.New("failed to connect: connection refused"), false},
		{context.DeadlineExceeded, false},
	} {
		if got := Permanent(tc.err); got != tc.want {
			t.Errorf("Permanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
