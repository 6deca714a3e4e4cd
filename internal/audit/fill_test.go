package audit_test

import (
	"context"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/audit"
)

// TestColumnsFilledFromBody: the columns an auditor filters on hold what
// the event's body says (migration 00009's trigger), whatever an INSERT
// gives them and whatever the session's time zone, so that no column can
// say something the signed body does not.
func TestColumnsFilledFromBody(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, ta, tb := twoTenantStore(t)
	at := time.Date(2026, 3, 1, 12, 30, 45, 123456000, time.UTC)
	const run = "66666666-6666-4666-8666-666666666666"

	// A row's derived columns, NULLs as "NULL" and the tenant as 0.
	type columns struct {
		tenant                      int64
		typ, actor, run, node, data string
	}
	cases := []struct {
		name string
		ev   audit.Event
		// lie: the INSERT gives every derived column, and txid, values
		// of its own, which the service's role is allowed to write.
		lie  bool
		want columns
	}{
		{"run and node", audit.Event{TenantID: ta, RunID: run, Node: "web-1", Actor: "worker:w1", Type: audit.NodeExited,
			Data: map[string]any{"node": "web-1", "exit_code": 3}}, false,
			columns{ta, audit.NodeExited, "worker:w1", run, "web-1", `{"node": "web-1", "exit_code": 3}`}},
		{"no data", audit.Event{TenantID: tb, RunID: run, Actor: "alice", Type: audit.RunQueued}, false,
			columns{tb, audit.RunQueued, "alice", run, "NULL", `{}`}},
		{"system log", audit.Event{Actor: "rexec-svc", Type: audit.PolicyLoaded, Data: map[string]any{"revision": "abc"}}, false,
			columns{0, audit.PolicyLoaded, "rexec-svc", "NULL", "NULL", `{"revision": "abc"}`}},
		{"columns given by the INSERT", audit.Event{TenantID: ta, RunID: run, Actor: "mallory", Type: audit.RunSubmitted,
			Data: map[string]any{"command": "true"}}, true,
			columns{ta, audit.RunSubmitted, "mallory", run, "NULL", `{"command": "true"}`}},
	}

	tx, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	// A zone 12:45 ahead of UTC: a time read in the session's zone would
	// land on another instant.
	if _, err := tx.Exec(ctx, `SET LOCAL TimeZone = 'Pacific/Chatham'`); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		c.ev.Time = at
		if !c.lie {
			if err := audit.Record(ctx, tx, c.ev); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			continue
		}
		body, err := c.ev.Body()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO audit_events (body, txid, tenant_id, type, actor, run_id, node, data, created_at)
			VALUES ($1, '999999999999', $2, 'run.finished', 'alice', gen_random_uuid(), 'db-1', '{"exit_code": 0}', '1970-01-01Z')`,
			string(body), tb); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}

	rows, err := tx.Query(ctx, `SELECT coalesce(tenant_id, 0), type, actor, coalesce(run_id::text, 'NULL'), coalesce(node, 'NULL'),
		data::text, created_at, txid = pg_current_xact_id() FROM audit_events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for i := 0; rows.Next(); i++ {
		var got columns
		var created time.Time
		var ownTxid bool
		if err := rows.Scan(&got.tenant, &got.typ, &got.actor, &got.run, &got.node, &got.data, &created, &ownTxid); err != nil {
			t.Fatal(err)
		}
		if i >= len(cases) {
			t.Fatalf("%d rows or more, want %d", i+1, len(cases))
		}
		c := cases[i]
		if got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
		if !created.Equal(at) {
			t.Errorf("%s: created_at %s, want %s", c.name, created.UTC(), at)
		}
		if !ownTxid {
			t.Errorf("%s: txid is not the writing transaction's", c.name)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}
