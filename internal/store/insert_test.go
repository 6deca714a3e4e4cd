package store

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestInsertRunAsStored: the run InsertRun returns, which the service
// answers a submission with instead of reading it back, is the run that
// GetRun reads.
func TestInsertRunAsStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, tc := range insertCases {
		t.Run(tc.note, func(t *testing.T) {
			r := b.newRun(tc.run)
			got, err := b.st.InsertRun(ctx, r, []string{"n1", "n2"})
			if err != nil {
				t.Fatal(err)
			}
			checkAsStored(t, b, got, []string{"n1", "n2"})
		})
	}
}

// TestInsertRunsTogether: runs stored together, by one statement for the
// runs and one for their nodes (a batch of submissions), are each stored
// as PrepareRun returned them, with their own nodes.
func TestInsertRunsTogether(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var runs []Run
	var nodes [][]string
	for i, tc := range insertCases {
		runs = append(runs, PrepareRun(b.newRun(tc.run), time.Now()))
		nodes = append(nodes, []string{"n1", "n2", "n3", "n4", "n5"}[:i+1])
	}
	if err := b.st.InBatchTx(ctx, func(bt *pgx.Batch) error { QueueInsertRuns(bt, runs, nodes); return nil }, nil); err != nil {
		t.Fatal(err)
	}
	for i, r := range runs {
		t.Run(insertCases[i].note, func(t *testing.T) { checkAsStored(t, b, r, nodes[i]) })
	}
}

// insertCases are runs as the service submits them.
var insertCases = []struct {
	note string
	run  Run
}{
	{note: "queued, defaults", run: Run{State: StateQueued, Argv: []string{"true"}, Shell: true}},
	{note: "script, filters, reason, preflight", run: Run{State: StateQueued, Script: []byte("echo hi\n"), NodeFilter: "^n",
		ServiceFilter: "web", TagFilter: "v1", Reason: "why", Timeout: time.Minute, StartTimeout: time.Hour,
		Preflight: json.RawMessage(`{"acls": true}`), CatalogIndex: 42, CatalogSource: "view"}},
	{note: "pending approval", run: Run{State: StatePendingApproval, Argv: []string{"rm", "-rf", "/tmp/x"}, Shell: true,
		ApprovalTTL: 2 * time.Hour, Policy: PolicyDecision{Outcome: PolicyRequireApproval, Reasons: []string{"risky"},
			Revision: "abc", Approvals: 2, ApproverRoles: []string{RoleApprover}}}},
	// The text[] columns travel as array literals: what their syntax
	// holds must arrive as written.
	{note: "array syntax in argv and reasons", run: Run{State: StateQueued, Shell: false,
		Argv:   []string{`a "quoted" arg`, `back\slash\`, "", "NULL", "{x,y}", " spaced ", "déjà vu", `\"`, "tab\tnew\nline"},
		Policy: PolicyDecision{Reasons: []string{"NULL", `"`, "a,b"}}}},
	{note: "no argv", run: Run{State: StateQueued, Script: []byte{0, 1, 2}}},
}

// newRun completes r as the service would, for b's tenant and principal.
func (b *bundle) newRun(r Run) Run {
	targets, _ := json.Marshal([]map[string]any{{"node": "n2", "address": "10.0.0.2", "services": []any{}},
		{"node": "n1", "address": "10.0.0.1", "services": []any{}}})
	r.TenantID, r.SubmittedBy, r.SubmitterName = b.tenant.ID, b.principal.ID, b.principal.Name
	r.Prefix, r.Wait, r.WaitRepl, r.OutputCap, r.Targets = "_rexec", 2*time.Second, 200*time.Millisecond, 1<<20, targets
	return r
}

// checkAsStored checks that got, the run as its insert returned it, is
// the run GetRun reads, with wantNodes pending.
func checkAsStored(t *testing.T, b *bundle, got Run, wantNodes []string) {
	t.Helper()
	ctx := context.Background()
	read, err := b.st.GetRun(ctx, b.tenant.ID, got.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RequestHash != RequestHash(read) {
		t.Errorf("request hash %s, of the stored run %s", got.RequestHash, RequestHash(read))
	}
	// The service hashes with the names it resolved, in the catalog's
	// order, rather than parse its targets.
	if h := RequestHashOf(read, []string{"n2", "n1"}); h != got.RequestHash {
		t.Errorf("RequestHashOf %s, RequestHash %s", h, got.RequestHash)
	}
	// Targets come back as jsonb prints them; times in the
	// database's time zone: compare their meaning.
	var gotTargets, readTargets any
	_ = json.Unmarshal(got.Targets, &gotTargets)
	_ = json.Unmarshal(read.Targets, &readTargets)
	if !jsonEqual(gotTargets, readTargets) || !jsonEqual(got.Preflight, read.Preflight) {
		t.Errorf("targets %s / %s, preflight %s / %s", got.Targets, read.Targets, got.Preflight, read.Preflight)
	}
	if !got.CreatedAt.Equal(read.CreatedAt) || !got.StartBy.Equal(read.StartBy) ||
		(got.ApprovalExpiresAt == nil) != (read.ApprovalExpiresAt == nil) ||
		(got.ApprovalExpiresAt != nil && !got.ApprovalExpiresAt.Equal(*read.ApprovalExpiresAt)) {
		t.Errorf("times: created %v / %v, start by %v / %v, approval expires %v / %v",
			got.CreatedAt, read.CreatedAt, got.StartBy, read.StartBy, got.ApprovalExpiresAt, read.ApprovalExpiresAt)
	}
	got.Targets, read.Targets, got.Preflight, read.Preflight = nil, nil, nil, nil
	got.CreatedAt, read.CreatedAt, got.StartBy, read.StartBy = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	got.ApprovalExpiresAt, read.ApprovalExpiresAt = nil, nil
	got.ApprovalTTL = 0 // an input of the insert, not stored as such
	if gj, rj := mustJSON(t, got), mustJSON(t, read); gj != rj {
		t.Errorf("stored as\n%s\nGetRun reads\n%s", gj, rj)
	}
	nodes, err := b.st.RunNodes(ctx, got.ID)
	if err != nil || len(nodes) != len(wantNodes) {
		t.Fatalf("nodes %+v %v, want %v", nodes, err, wantNodes)
	}
	for i, n := range nodes {
		if n.Node != wantNodes[i] || n.State != "pending" {
			t.Errorf("node %d: %+v, want %s pending", i, n, wantNodes[i])
		}
	}
}

// TestInBatchTxAllOrNothing: a transaction begun with a batch commits the
// batch and what follows it together, or nothing: a failing statement of
// the batch, a failure after it, or an error queuing it leaves no run.
func TestInBatchTxAllOrNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	errAfter := errors.New("after the batch")
	run := Run{TenantID: b.tenant.ID, SubmittedBy: b.principal.ID, State: StateQueued, Argv: []string{"true"}, Shell: true,
		Prefix: "_rexec", Wait: time.Second, WaitRepl: time.Second, OutputCap: 1, Targets: json.RawMessage(`[]`)}
	for _, tc := range []struct {
		note    string
		nodes   []string
		queue   func(b *pgx.Batch) error
		after   func(tx pgx.Tx, q *Queries) error
		wantErr bool
	}{
		{note: "all succeed", nodes: []string{"n1"}},
		{note: "a later statement of the batch fails", nodes: []string{"n1", "n1"}, wantErr: true},
		{note: "a statement queued after the run fails", nodes: []string{"n1"}, wantErr: true,
			queue: func(b *pgx.Batch) error { b.Queue("SELECT 1/0"); return nil }},
		{note: "queuing fails", nodes: []string{"n1"}, wantErr: true,
			queue: func(*pgx.Batch) error { return errAfter }},
		{note: "fn fails after the batch", nodes: []string{"n1"}, wantErr: true,
			after: func(pgx.Tx, *Queries) error { return errAfter }},
		{note: "a statement in fn fails", nodes: []string{"n1"}, wantErr: true,
			after: func(tx pgx.Tx, _ *Queries) error { _, err := tx.Exec(ctx, "SELECT 1/0"); return err }},
	} {
		t.Run(tc.note, func(t *testing.T) {
			var id string
			err := b.st.InBatchTx(ctx, func(bt *pgx.Batch) error {
				id = QueueInsertRun(bt, run, tc.nodes, time.Now()).ID
				if tc.queue != nil {
					return tc.queue(bt)
				}
				return nil
			}, tc.after)
			if (err != nil) != tc.wantErr {
				t.Fatalf("InBatchTx: %v, want an error: %t", err, tc.wantErr)
			}
			var runs, nodes int
			if err := b.st.Pool().QueryRow(ctx, "SELECT (SELECT count(*) FROM runs WHERE id = $1), (SELECT count(*) FROM run_nodes WHERE run_id = $1)",
				id).Scan(&runs, &nodes); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 0, false: 1}[tc.wantErr]; runs != want || nodes != want {
				t.Errorf("%d runs and %d nodes stored, want %d", runs, nodes, want)
			}
		})
	}
	// Every connection went back to the pool, whatever failed.
	if st := b.st.Pool().Stat(); st.AcquiredConns() != 0 {
		t.Errorf("%d connections still acquired", st.AcquiredConns())
	}
}

func jsonEqual(a, b any) bool {
	if ra, ok := a.(json.RawMessage); ok {
		_ = json.Unmarshal(ra, &a)
	}
	if rb, ok := b.(json.RawMessage); ok {
		_ = json.Unmarshal(rb, &b)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
