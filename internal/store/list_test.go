package store

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// TestListRunsFilters: each filter of a list of runs, alone and together,
// with exact results, newest first, never another tenant's run.
func TestListRunsFilters(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	other, err := b.st.CreateTenant(ctx, Tenant{Name: "other", ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	principal := func(tenant int64, name string) Principal {
		p, err := b.st.UpsertPrincipal(ctx, tenant, name, []string{RoleSubmitter, RoleApprover})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	alice, carol, bob, dave, otherAlice := b.principal, principal(b.tenant.ID, "carol"), principal(b.tenant.ID, "bob"),
		principal(b.tenant.ID, "dave"), principal(other.ID, "alice")
	type exit struct {
		node string
		code int
	}
	type verdict struct {
		by      Principal
		verdict string
	}
	insert := func(p Principal, argv []string, service string, at time.Duration, nodes []string, exits []exit, verdicts ...verdict) string {
		t.Helper()
		targets, _ := json.Marshal(nodes)
		r, err := b.st.InsertRun(ctx, Run{TenantID: p.TenantID, SubmittedBy: p.ID, State: StateQueued, Argv: argv, Shell: true,
			ServiceFilter: service, Prefix: "_rexec", Wait: time.Second, WaitRepl: time.Second, OutputCap: 1, Targets: targets}, nodes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.st.Pool().Exec(ctx, `UPDATE runs SET created_at = $2 WHERE id = $1`, r.ID, t0.Add(at)); err != nil {
			t.Fatal(err)
		}
		for _, e := range exits {
			if _, _, err := b.st.RecordExit(ctx, r.ID, e.node, e.code, t0); err != nil {
				t.Fatal(err)
			}
		}
		for _, v := range verdicts {
			if err := b.st.RecordVerdict(ctx, r.ID, Approval{PrincipalID: v.by.ID, PrincipalName: v.by.Name, Verdict: v.verdict}); err != nil {
				t.Fatal(err)
			}
		}
		return r.ID
	}
	r1 := insert(alice, []string{"systemctl", "restart", "nginx"}, "web", 0, []string{"n1", "n2", "n3"},
		[]exit{{"n1", 0}, {"n2", 1}}, verdict{bob, VerdictApprove})
	r2 := insert(carol, []string{"Uptime", "--pretty"}, "db", time.Hour, []string{"n1"}, []exit{{"n1", 0}})
	r3 := insert(alice, []string{"echo", "100%_done"}, "web", 2*time.Hour, []string{"n4"}, nil, verdict{dave, VerdictDeny})
	r4 := insert(otherAlice, []string{"systemctl", "restart", "nginx"}, "web", 3*time.Hour, []string{"n1"}, []exit{{"n1", 1}})
	if _, err := b.st.Pool().Exec(ctx, `UPDATE runs SET state = 'completed' WHERE id = $1`, r2); err != nil {
		t.Fatal(err)
	}
	code := func(n int) *int { return &n }
	for _, tc := range []struct {
		note   string
		tenant int64 // default acme
		f      ListFilter
		want   []string // newest first
	}{
		{note: "all", want: []string{r3, r2, r1}},
		{note: "the other tenant", tenant: other.ID, want: []string{r4}},
		{note: "state", f: ListFilter{State: StateCompleted}, want: []string{r2}},
		{note: "since", f: ListFilter{Since: t0.Add(time.Hour)}, want: []string{r3, r2}},
		{note: "until", f: ListFilter{Until: t0.Add(time.Hour)}, want: []string{r1}},
		{note: "principal is the submitter", f: ListFilter{Principal: "alice"}, want: []string{r3, r1}},
		{note: "an approver submitted nothing", f: ListFilter{Principal: "bob"}, want: nil},
		{note: "node among the targets", f: ListFilter{Node: "n1"}, want: []string{r2, r1}},
		{note: "a target that never exited", f: ListFilter{Node: "n3"}, want: []string{r1}},
		{note: "service", f: ListFilter{Service: "web"}, want: []string{r3, r1}},
		{note: "command in any case across argv", f: ListFilter{Command: "uptime --PRE"}, want: []string{r2}},
		{note: "command with LIKE's characters taken literally", f: ListFilter{Command: "0%_d"}, want: []string{r3}},
		{note: "command: _ is no wildcard", f: ListFilter{Command: "t_r"}, want: nil},
		{note: "exit code", f: ListFilter{ExitCode: code(1)}, want: []string{r1}},
		{note: "exit code 0", f: ListFilter{ExitCode: code(0)}, want: []string{r2, r1}},
		{note: "approver who approved", f: ListFilter{Approver: "bob"}, want: []string{r1}},
		{note: "approver who refused", f: ListFilter{Approver: "dave"}, want: []string{r3}},
		{note: "together", f: ListFilter{Principal: "alice", Service: "web", Node: "n2", ExitCode: code(1), Approver: "bob", Since: t0, Until: t0.Add(time.Hour)},
			want: []string{r1}},
		{note: "together, no match", f: ListFilter{Principal: "alice", ExitCode: code(0), Node: "n4"}, want: nil},
		{note: "the other tenant's filters", tenant: other.ID, f: ListFilter{ExitCode: code(1), Principal: "alice"}, want: []string{r4}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			tenant := tc.tenant
			if tenant == 0 {
				tenant = b.tenant.ID
			}
			tc.f.Limit = 10
			runs, err := b.st.ListRuns(ctx, tenant, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range runs {
				got = append(got, r.ID)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	// Keyset pages under a filter.
	first, err := b.st.ListRuns(ctx, b.tenant.ID, ListFilter{Service: "web", Limit: 1})
	if err != nil || len(first) != 1 || first[0].ID != r3 {
		t.Fatalf("first page: %v %v", first, err)
	}
	second, err := b.st.ListRuns(ctx, b.tenant.ID, ListFilter{Service: "web", Limit: 1, BeforeAt: &first[0].CreatedAt, BeforeID: first[0].ID})
	if err != nil || len(second) != 1 || second[0].ID != r1 {
		t.Fatalf("second page: %v %v", second, err)
	}
}
