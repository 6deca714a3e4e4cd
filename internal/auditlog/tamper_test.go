package auditlog_test

import (
	"context"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditproof"
)

// A database superuser changes the log in each way an attacker could;
// verification names the event, or fails the forged signature.
func TestTamperDetected(t *testing.T) {
	type tamper struct {
		name string
		// do changes the log of 20 events (checkpoints at 4, 8, …, 20)
		// as a superuser with triggers off; ids maps leaf to event id.
		do func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64)
		// withKept verifies against the checkpoint of 20 events, kept by
		// the auditor before the tampering.
		withKept bool
		leaf     int64 // the leaf the verifier must name
		event    func(ids []int64) int64
		reason   string // a substring of the reason
		sig      bool   // the failure is a checkpoint signature
	}
	exec := func(t *testing.T, tx pgx.Tx, sql string, args ...any) {
		t.Helper()
		if _, err := tx.Exec(context.Background(), sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	at := func(i int) func([]int64) int64 { return func(ids []int64) int64 { return ids[i] } }
	for _, tc := range []tamper{
		{name: "field changed", leaf: 9, event: at(9), reason: "does not hash to the leaf logged",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				exec(t, tx, `UPDATE audit_events SET body = replace(body, 'ls /tmp', 'rm -rf /') WHERE id = $1`, ids[9])
			}},
		{name: "field changed and its leaf hash rewritten", leaf: 8, event: at(8), reason: "do not hash to the root signed for 12",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				var body string
				exec(t, tx, `UPDATE audit_events SET body = replace(body, 'ls /tmp', 'rm -rf /') WHERE id = $1`, ids[9])
				if err := tx.QueryRow(context.Background(), `SELECT body FROM audit_events WHERE id = $1`, ids[9]).Scan(&body); err != nil {
					t.Fatal(err)
				}
				h := auditproof.LeafHash([]byte(body))
				exec(t, tx, `UPDATE audit_hashes SET hash = $1 WHERE idx = $2`, h[:], tlog.StoredHashIndex(0, 9))
			}},
		{name: "leaf hash deleted", leaf: 9, event: at(9), reason: "no leaf hash is stored",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				exec(t, tx, `DELETE FROM audit_hashes WHERE idx = $1`, tlog.StoredHashIndex(0, 9))
			}},
		{name: "event deleted", leaf: 5, event: at(5), reason: "deleted",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				exec(t, tx, `DELETE FROM audit_events WHERE id = $1`, ids[5])
			}},
		{name: "event and its leaf deleted", leaf: 5, reason: "skips from leaf 5 to 6",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				exec(t, tx, `DELETE FROM audit_events WHERE id = $1`, ids[5])
				exec(t, tx, `DELETE FROM audit_leaves WHERE idx = 5`)
			}},
		{name: "event inserted", leaf: 7, reason: "does not hash to the leaf logged",
			event: func(ids []int64) int64 { return ids[len(ids)-1] + 1000 },
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				exec(t, tx, `UPDATE audit_leaves SET idx = idx + 1000 WHERE idx >= 7`)
				exec(t, tx, `UPDATE audit_leaves SET idx = idx - 999 WHERE idx >= 1000`)
				// Triggers are off (below): the forger writes every column.
				exec(t, tx, `INSERT INTO audit_events (id, body, tenant_id, type, actor, run_id, node, data, created_at) OVERRIDING SYSTEM VALUE
					SELECT $1, body, tenant_id, type, actor, run_id, node, data, created_at FROM audit_events WHERE id = $2`, ids[len(ids)-1]+1000, ids[3])
				exec(t, tx, `INSERT INTO audit_leaves (log_id, idx, event_id) SELECT log_id, 7, $1 FROM audit_leaves LIMIT 1`, ids[len(ids)-1]+1000)
			}},
		{name: "two events swapped", leaf: 3, event: at(6), reason: "does not hash to the leaf logged",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				exec(t, tx, `UPDATE audit_leaves SET event_id = -1 WHERE idx = 3`)
				exec(t, tx, `UPDATE audit_leaves SET event_id = $1 WHERE idx = 6`, ids[3])
				exec(t, tx, `UPDATE audit_leaves SET event_id = $1 WHERE idx = 3`, ids[6])
			}},
		{name: "last events removed", withKept: true, leaf: 16, reason: "truncated",
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				for i := 16; i < 20; i++ {
					exec(t, tx, `DELETE FROM audit_events WHERE id = $1`, ids[i])
					exec(t, tx, `DELETE FROM audit_hashes WHERE idx >= $1`, tlog.StoredHashIndex(0, int64(i)))
				}
				exec(t, tx, `DELETE FROM audit_leaves WHERE idx >= 16`)
				exec(t, tx, `DELETE FROM audit_checkpoints WHERE size > 16`)
			}},
		{name: "log rewritten with a forged tree", sig: true,
			do: func(t *testing.T, f *fixture, tx pgx.Tx, ids []int64) {
				ctx := context.Background()
				exec(t, tx, `UPDATE audit_events SET body = replace(body, 'ls /tmp', 'rm -rf /') WHERE id = $1`, ids[9])
				// Recompute every stored hash and sign a new checkpoint
				// with a key of the attacker's own, under the log's name.
				exec(t, tx, `DELETE FROM audit_hashes`)
				exec(t, tx, `DELETE FROM audit_checkpoints`)
				hashes := map[int64]tlog.Hash{}
				r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
					out := make([]tlog.Hash, len(idx))
					for i, x := range idx {
						out[i] = hashes[x]
					}
					return out, nil
				})
				for i, id := range ids {
					var body string
					if err := tx.QueryRow(ctx, `SELECT body FROM audit_events WHERE id = $1`, id).Scan(&body); err != nil {
						t.Fatal(err)
					}
					hs, err := tlog.StoredHashes(int64(i), []byte(body), r)
					if err != nil {
						t.Fatal(err)
					}
					for j, h := range hs {
						x := tlog.StoredHashIndex(0, int64(i)) + int64(j)
						hashes[x] = h
						exec(t, tx, `INSERT INTO audit_hashes (log_id, idx, hash) VALUES ($1, $2, $3)`, f.tenant("acme"), x, h[:])
					}
				}
				root, err := tlog.TreeHash(int64(len(ids)), r)
				if err != nil {
					t.Fatal(err)
				}
				skey, _, err := note.GenerateKey(rand.Reader, "rexec-test")
				if err != nil {
					t.Fatal(err)
				}
				forger, err := note.NewSigner(skey)
				if err != nil {
					t.Fatal(err)
				}
				signed, err := auditproof.Sign("rexec-test/tenant/acme", int64(len(ids)), root, forger)
				if err != nil {
					t.Fatal(err)
				}
				exec(t, tx, `INSERT INTO audit_checkpoints (log_id, size, root, last_txid, last_event, note) VALUES ($1, $2, $3, '1', 0, $4)`,
					f.tenant("acme"), len(ids), root[:], string(signed))
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := setup(t, "acme")
			ctx := context.Background()
			acme := f.tenant("acme")
			for range 5 {
				f.record(acme, 4, audit.NodeExited)
				f.integrate()
			}
			kept, err := f.log.Latest(ctx, acme)
			if err != nil || kept.Size != 20 {
				t.Fatalf("kept checkpoint: %d, %v", kept.Size, err)
			}
			if _, err := f.verify(acme, []byte(kept.Note)); err != nil {
				t.Fatalf("untampered log: %v", err)
			}
			leaves, err := f.log.Leaves(ctx, acme, 0, 20)
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]int64, len(leaves))
			for i, l := range leaves {
				ids[i] = l.EventID
			}

			// The superuser: triggers off for the session.
			su, err := pgx.Connect(ctx, f.ownerURL)
			if err != nil {
				t.Fatal(err)
			}
			defer su.Close(ctx)
			err = pgx.BeginFunc(ctx, su, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica"); err != nil {
					return err
				}
				tc.do(t, f, tx, ids)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}

			var keptNote []byte
			if tc.withKept {
				keptNote = []byte(kept.Note)
				// Without the kept checkpoint the shortened log looks whole.
				if _, err := f.verify(acme, nil); err != nil {
					t.Errorf("truncated log without a kept checkpoint: %v", err)
				}
			}
			_, err = f.verify(acme, keptNote)
			if err == nil {
				t.Fatal("tampering not detected")
			}
			t.Logf("verify: %v", err)
			if !auditproof.IsMismatch(err) {
				t.Errorf("not reported as tampering: %v", err)
			}
			if tc.sig {
				if !errors.Is(err, auditproof.ErrSignature) {
					t.Errorf("want a signature failure, got %v", err)
				}
				return
			}
			var m *auditproof.Mismatch
			if !errors.As(err, &m) {
				t.Fatalf("want a *Mismatch, got %v", err)
			}
			if m.Leaf != tc.leaf {
				t.Errorf("named leaf %d, want %d", m.Leaf, tc.leaf)
			}
			if tc.event != nil && m.EventID != tc.event(ids) {
				t.Errorf("named event %d, want %d", m.EventID, tc.event(ids))
			}
			if !strings.Contains(m.Reason, tc.reason) {
				t.Errorf("reason %q does not say %q", m.Reason, tc.reason)
			}
		})
	}
}
