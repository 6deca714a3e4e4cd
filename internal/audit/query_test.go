package audit_test

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Main(m, testenv.Options{Postgres: true})
}

// Runs of the fixture.
const (
	run1 = "11111111-1111-4111-8111-111111111111" // alice, service web, 3 nodes, node-2 exits 1, approved by bob; failed
	run2 = "22222222-2222-4222-8222-222222222222" // carol, service_filter db, command and argv; completed
	run3 = "33333333-3333-4333-8333-333333333333" // alice, service web, a command with % and _; refused by dave, denied
	run4 = "44444444-4444-4444-8444-444444444444" // alice, cancelled while queued
	run5 = "55555555-5555-4555-8555-555555555555" // tenant B: alice, service web, node-1 exits 1; failed
)

// fixture is a database with two tenants' events, each known by a label.
type fixture struct {
	pool    *pgxpool.Pool
	a, b    int64            // tenant IDs
	ids     map[string]int64 // event label → id
	order   []string         // labels in the order recorded
	tenants map[string]int64 // label → tenant
	t0      time.Time
}

// newFixture records the events below, one minute apart from t0.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st, ta, tb := twoTenantStore(t)
	f := &fixture{pool: st.Pool(), a: ta, b: tb, ids: map[string]int64{}, tenants: map[string]int64{},
		t0: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
	A, B := f.a, f.b
	for i, e := range []struct {
		label string
		ev    audit.Event
	}{
		{"token", audit.Event{TenantID: A, Actor: "admin", Type: audit.TokenCreated, OSUser: "root", Data: map[string]any{"principal": "alice"}}},
		{"1.submitted", audit.Event{TenantID: A, RunID: run1, Actor: "alice", Type: audit.RunSubmitted, RequestID: "req-1", ClientAddr: "192.0.2.7:4711",
			Data: map[string]any{"argv": []string{"systemctl", "restart", "nginx"}, "service_filter": "web", "node": "", "targets": []string{"node-1", "node-2", "node-3"}}}},
		{"1.approved", audit.Event{TenantID: A, RunID: run1, Actor: "bob", Type: audit.ApprovalGiven, Data: map[string]any{"comment": "ok"}}},
		{"1.started", audit.Event{TenantID: A, RunID: run1, Actor: "worker:w1", Type: audit.RunStarted}},
		{"1.exited1", audit.Event{TenantID: A, RunID: run1, Node: "node-1", Actor: "worker:w1", Type: audit.NodeExited, Data: map[string]any{"node": "node-1", "exit_code": 0}}},
		{"1.exited2", audit.Event{TenantID: A, RunID: run1, Node: "node-2", Actor: "worker:w1", Type: audit.NodeExited, Data: map[string]any{"node": "node-2", "exit_code": 1}}},
		{"2.submitted", audit.Event{TenantID: A, RunID: run2, Actor: "carol", Type: audit.RunSubmitted,
			Data: map[string]any{"command": "Uptime --pretty", "argv": []string{"Uptime", "--pretty"}, "service_filter": "db", "node_filter": "^db-"}}},
		{"1.exited3", audit.Event{TenantID: A, RunID: run1, Node: "node-3", Actor: "worker:w1", Type: audit.NodeExited, Data: map[string]any{"node": "node-3", "exit_code": 0}}},
		{"1.finished", audit.Event{TenantID: A, RunID: run1, Actor: "worker:w1", Type: audit.RunFinished, Data: map[string]any{"state": "failed"}}},
		{"2.exited1", audit.Event{TenantID: A, RunID: run2, Node: "node-1", Actor: "worker:w2", Type: audit.NodeExited, Data: map[string]any{"node": "node-1", "exit_code": 0}}},
		{"2.finished", audit.Event{TenantID: A, RunID: run2, Actor: "worker:w2", Type: audit.RunFinished, Data: map[string]any{"state": "completed"}}},
		{"3.submitted", audit.Event{TenantID: A, RunID: run3, Actor: "alice", Type: audit.RunSubmitted,
			Data: map[string]any{"argv": []string{"echo", "100%_done"}, "service_filter": "web"}}},
		{"5.submitted", audit.Event{TenantID: B, RunID: run5, Actor: "alice", Type: audit.RunSubmitted,
			Data: map[string]any{"argv": []string{"systemctl", "restart", "nginx"}, "service_filter": "web"}}},
		{"3.refused", audit.Event{TenantID: A, RunID: run3, Actor: "dave", Type: audit.ApprovalRefused}},
		{"3.denied", audit.Event{TenantID: A, RunID: run3, Actor: "dave", Type: audit.RunDenied}},
		{"5.exited1", audit.Event{TenantID: B, RunID: run5, Node: "node-1", Actor: "worker:w1", Type: audit.NodeExited, Data: map[string]any{"node": "node-1", "exit_code": 1}}},
		{"5.finished", audit.Event{TenantID: B, RunID: run5, Actor: "worker:w1", Type: audit.RunFinished, Data: map[string]any{"state": "failed"}}},
		{"4.submitted", audit.Event{TenantID: A, RunID: run4, Actor: "alice", Type: audit.RunSubmitted, Data: map[string]any{"argv": []string{"sleep", "60"}}}},
		{"4.cancelled", audit.Event{TenantID: A, RunID: run4, Actor: "alice", Type: audit.RunCancelled}},
		{"read", audit.Event{TenantID: A, RunID: run1, Node: "node-2", Actor: "erin", Type: audit.OutputRead, Data: map[string]any{"node": "node-2"}}},
		{"system", audit.Event{Actor: "rexec-svc", Type: audit.PolicyLoaded}},
	} {
		e.ev.Time = f.t0.Add(time.Duration(i) * time.Minute)
		if err := audit.Record(ctx, f.pool, e.ev); err != nil {
			t.Fatal(err)
		}
		var id int64
		if err := f.pool.QueryRow(ctx, `SELECT max(id) FROM audit_events`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		f.ids[e.label] = id
		f.order = append(f.order, e.label)
		f.tenants[e.label] = e.ev.TenantID
	}
	return f
}

// twoTenantStore opens a database of t's own, migrated, with two tenants.
func twoTenantStore(t *testing.T) (st *store.Store, a, b int64) {
	t.Helper()
	st, err := store.Open(context.Background(), testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	a, b = twoTenants(t, st)
	return st, a, b
}

// twoTenants migrates st's database and creates two tenants.
func twoTenants(tb testing.TB, st *store.Store) (a, b int64) {
	tb.Helper()
	ctx := context.Background()
	if err := store.Migrate(ctx, st.Pool(), slog.New(slog.DiscardHandler)); err != nil {
		tb.Fatal(err)
	}
	var ids []int64
	for _, name := range []string{"acme", "other"} {
		t, err := st.CreateTenant(ctx, store.Tenant{Name: name, ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1})
		if err != nil {
			tb.Fatal(err)
		}
		ids = append(ids, t.ID)
	}
	return ids[0], ids[1]
}

// at is the time of the i-th event recorded.
func (f *fixture) at(i int) time.Time { return f.t0.Add(time.Duration(i) * time.Minute) }

// labels turns events into their labels.
func (f *fixture) labels(t *testing.T, rows []audit.Row) []string {
	t.Helper()
	out := make([]string, len(rows))
	for i, r := range rows {
		for l, id := range f.ids {
			if id == r.ID {
				out[i] = l
			}
		}
	}
	return out
}

// newest lists the labels, newest first.
func newest(labels ...string) []string {
	out := slices.Clone(labels)
	slices.Reverse(out)
	return out
}

func TestQueryFilters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	code := func(n int) *int { return &n }
	allA := []string{}
	for _, l := range f.order {
		if f.tenants[l] == f.a {
			allA = append(allA, l)
		}
	}
	for _, tc := range []struct {
		note   string
		filter audit.Filter
		want   []string // labels, in the order recorded
	}{
		{note: "everything of the tenant, nothing of the other or of the system log", want: allA},
		{note: "the other tenant", filter: audit.Filter{TenantID: f.b}, want: []string{"5.submitted", "5.exited1", "5.finished"}},
		{note: "since is inclusive", filter: audit.Filter{Since: f.at(17)}, want: []string{"4.submitted", "4.cancelled", "read"}},
		{note: "until is exclusive", filter: audit.Filter{Until: f.at(2)}, want: []string{"token", "1.submitted"}},
		{note: "a time range", filter: audit.Filter{Since: f.at(4), Until: f.at(7)}, want: []string{"1.exited1", "1.exited2", "2.submitted"}},
		{note: "principal is the actor", filter: audit.Filter{Principal: "alice"}, want: []string{"1.submitted", "3.submitted", "4.submitted", "4.cancelled"}},
		{note: "principal matches exactly", filter: audit.Filter{Principal: "alic"}, want: nil},
		{note: "node", filter: audit.Filter{Node: "node-2"}, want: []string{"1.exited2", "read"}},
		{note: "node and time", filter: audit.Filter{Node: "node-1", Since: f.at(5)}, want: []string{"2.exited1"}},
		{note: "exit code", filter: audit.Filter{ExitCode: code(1)}, want: []string{"1.exited2"}},
		{note: "exit code 0", filter: audit.Filter{ExitCode: code(0)}, want: []string{"1.exited1", "1.exited3", "2.exited1"}},
		{note: "exit code and node", filter: audit.Filter{ExitCode: code(0), Node: "node-1"}, want: []string{"1.exited1", "2.exited1"}},
		{note: "exit code nobody had", filter: audit.Filter{ExitCode: code(3)}, want: nil},
		{note: "service, old and new form", filter: audit.Filter{Service: "web"},
			want: []string{"1.submitted", "1.approved", "1.started", "1.exited1", "1.exited2", "1.exited3", "1.finished", "3.submitted", "3.refused", "3.denied", "read"}},
		{note: "service in filters", filter: audit.Filter{Service: "db"}, want: []string{"2.submitted", "2.exited1", "2.finished"}},
		{note: "service is the filter's text, not a pattern", filter: audit.Filter{Service: "we"}, want: nil},
		{note: "command substring across argv", filter: audit.Filter{Command: "restart ngi"},
			want: []string{"1.submitted", "1.approved", "1.started", "1.exited1", "1.exited2", "1.exited3", "1.finished", "read"}},
		{note: "command in any case, command and args", filter: audit.Filter{Command: "uptime --PRETTY"}, want: []string{"2.submitted", "2.exited1", "2.finished"}},
		{note: "command with LIKE's characters taken literally", filter: audit.Filter{Command: "100%_"}, want: []string{"3.submitted", "3.refused", "3.denied"}},
		{note: "command: % is no wildcard", filter: audit.Filter{Command: "%"}, want: []string{"3.submitted", "3.refused", "3.denied"}},
		{note: "state failed", filter: audit.Filter{State: "failed"},
			want: []string{"1.submitted", "1.approved", "1.started", "1.exited1", "1.exited2", "1.exited3", "1.finished", "read"}},
		{note: "state completed", filter: audit.Filter{State: "completed"}, want: []string{"2.submitted", "2.exited1", "2.finished"}},
		{note: "state denied", filter: audit.Filter{State: "denied"}, want: []string{"3.submitted", "3.refused", "3.denied"}},
		{note: "state cancelled", filter: audit.Filter{State: "cancelled"}, want: []string{"4.submitted", "4.cancelled"}},
		{note: "state expired", filter: audit.Filter{State: "expired"}, want: nil},
		{note: "approver who approved", filter: audit.Filter{Approver: "bob"},
			want: []string{"1.submitted", "1.approved", "1.started", "1.exited1", "1.exited2", "1.exited3", "1.finished", "read"}},
		{note: "approver who refused", filter: audit.Filter{Approver: "dave"}, want: []string{"3.submitted", "3.refused", "3.denied"}},
		{note: "an approver is no submitter", filter: audit.Filter{Approver: "alice"}, want: nil},
		{note: "types", filter: audit.Filter{Types: []string{audit.RunSubmitted, audit.RunCancelled}},
			want: []string{"1.submitted", "2.submitted", "3.submitted", "4.submitted", "4.cancelled"}},
		{note: "run", filter: audit.Filter{RunID: run2}, want: []string{"2.submitted", "2.exited1", "2.finished"}},
		{note: "another tenant's run", filter: audit.Filter{RunID: run5}, want: nil},
		{note: "run-level and event-level together", filter: audit.Filter{Approver: "bob", ExitCode: code(0), Until: f.at(7)}, want: []string{"1.exited1"}},
		{note: "two run-level filters", filter: audit.Filter{Service: "web", State: "denied", Types: []string{audit.RunSubmitted}}, want: []string{"3.submitted"}},
		{note: "the other tenant by service and exit code", filter: audit.Filter{TenantID: f.b, Service: "web", ExitCode: code(1)}, want: []string{"5.exited1"}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			if tc.filter.TenantID == 0 {
				tc.filter.TenantID = f.a
			}
			p, err := audit.Query(context.Background(), f.pool, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := f.labels(t, p.Events), newest(tc.want...); !slices.Equal(got, want) {
				t.Errorf("got  %v\nwant %v", got, want)
			}
			if p.Next != "" {
				t.Errorf("next %q on the only page", p.Next)
			}
			// Every way of carrying the query out finds the same events.
			for _, name := range audit.PlanNames {
				q, err := audit.QueryPlanned(context.Background(), f.pool, tc.filter, name)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if got, want := f.labels(t, q.Events), newest(tc.want...); !slices.Equal(got, want) {
					t.Errorf("%s: got %v\nwant %v", name, got, want)
				}
			}
		})
	}
}

func TestQueryPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	all, err := audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a})
	if err != nil {
		t.Fatal(err)
	}
	for _, limit := range []int{1, 2, 3, 6, len(all.Events) - 1, len(all.Events), len(all.Events) + 1} {
		var got []audit.Row
		pages := 0
		for cursor := ""; ; pages++ {
			p, err := audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a, Limit: limit, Cursor: cursor})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Events) > limit || (p.Next != "" && len(p.Events) != limit) {
				t.Fatalf("limit %d: a page of %d events, next %q", limit, len(p.Events), p.Next)
			}
			got = append(got, p.Events...)
			if p.Next == "" {
				break
			}
			cursor = p.Next
		}
		if !slices.EqualFunc(got, all.Events, func(a, b audit.Row) bool { return a.ID == b.ID }) {
			t.Errorf("limit %d: pages give %v, want %v", limit, f.labels(t, got), f.labels(t, all.Events))
		}
		// No empty last page: a full page is followed only if more events are.
		if want := (len(all.Events) + limit - 1) / limit; pages+1 != want {
			t.Errorf("limit %d: %d pages, want %d", limit, pages+1, want)
		}
	}
	// Pages of a filtered query.
	p1, err := audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a, Service: "web", Limit: 4})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a, Service: "web", Limit: 4, Cursor: p1.Next})
	if err != nil {
		t.Fatal(err)
	}
	got := append(f.labels(t, p1.Events), f.labels(t, p2.Events)...)
	if want := []string{"read", "3.denied", "3.refused", "3.submitted", "1.finished", "1.exited3", "1.exited2", "1.exited1"}; !slices.Equal(got, want) {
		t.Errorf("filtered pages: %v, want %v", got, want)
	}
	// Pages of a time range and a run-level filter, however carried out.
	for _, name := range audit.PlanNames {
		var got []string
		for cursor := ""; ; {
			p, err := audit.QueryPlanned(ctx, f.pool, audit.Filter{TenantID: f.a, Since: f.at(1), Until: f.at(19), State: "failed", Limit: 3, Cursor: cursor}, name)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, f.labels(t, p.Events)...)
			if cursor = p.Next; cursor == "" {
				break
			}
		}
		if want := newest("1.submitted", "1.approved", "1.started", "1.exited1", "1.exited2", "1.exited3", "1.finished"); !slices.Equal(got, want) {
			t.Errorf("%s: pages give %v, want %v", name, got, want)
		}
	}
	// The default page is 100 events.
	if got := len(all.Events); got != 17 {
		t.Errorf("%d events of tenant A, want 17", got)
	}
}

func TestQueryRow(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	p, err := audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a, RunID: run1, Types: []string{audit.RunSubmitted}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Events) != 1 {
		t.Fatalf("%d events", len(p.Events))
	}
	r := p.Events[0]
	var body string
	if err := f.pool.QueryRow(ctx, `SELECT body FROM audit_events WHERE id = $1`, r.ID).Scan(&body); err != nil {
		t.Fatal(err)
	}
	want := audit.Row{ID: f.ids["1.submitted"], Time: f.at(1), Type: audit.RunSubmitted, Actor: "alice", RunID: run1,
		Data: []byte(`{"argv":["systemctl","restart","nginx"],"node":"","service_filter":"web","targets":["node-1","node-2","node-3"]}`),
		Body: body, RequestID: "req-1", ClientAddr: "192.0.2.7:4711"}
	if r.ID != want.ID || !r.Time.Equal(want.Time) || r.Type != want.Type || r.Actor != want.Actor || r.RunID != want.RunID ||
		r.Node != "" || string(r.Data) != string(want.Data) || r.Body != want.Body || r.RequestID != want.RequestID ||
		r.ClientAddr != want.ClientAddr || r.OSUser != "" {
		t.Errorf("row\n%+v\nwant\n%+v", r, want)
	}
	p, err = audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a, Types: []string{audit.TokenCreated}})
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Events[0]; r.OSUser != "root" || r.RunID != "" || string(r.Data) != `{"principal":"alice"}` {
		t.Errorf("token event %+v", r)
	}
	p, err = audit.Query(ctx, f.pool, audit.Filter{TenantID: f.a, Types: []string{audit.RunStarted}})
	if err != nil {
		t.Fatal(err)
	}
	if r := p.Events[0]; string(r.Data) != `{}` || r.Time.Location() != time.UTC {
		t.Errorf("an event without data: %+v", r)
	}
}

func TestQueryBadInput(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, tc := range []struct {
		note   string
		filter audit.Filter
		msg    string
	}{
		{"limit too large", audit.Filter{Limit: 1001}, "limit must be between 1 and 1000"},
		{"negative limit", audit.Filter{Limit: -1}, "limit must be between 1 and 1000"},
		{"unknown state", audit.Filter{State: "exploded"}, `unknown state "exploded": runs end completed, failed, cancelled, denied, expired`},
		{"a state that is not an end", audit.Filter{State: "running"}, `unknown state "running"`},
		{"unknown type", audit.Filter{Types: []string{"node.exit"}}, `unknown event type "node.exit"`},
		{"malformed cursor", audit.Filter{Cursor: "12"}, `malformed cursor "12"`},
		{"a cursor of another encoding", audit.Filter{Cursor: "aWQ6LTE"}, `malformed cursor`},
		{"since after until", audit.Filter{Since: f.at(2), Until: f.at(1)}, "since (2026-03-01T00:02:00Z) must be before until (2026-03-01T00:01:00Z)"},
		{"empty range", audit.Filter{Since: f.at(2), Until: f.at(2)}, "must be before until"},
		{"NUL", audit.Filter{Node: "a\x00"}, "node contains a NUL byte"},
		{"invalid UTF-8", audit.Filter{Command: "\xff"}, "command is not valid UTF-8"},
		{"run that is no UUID", audit.Filter{RunID: "r1"}, `run "r1" is not a run ID`},
	} {
		t.Run(tc.note, func(t *testing.T) {
			tc.filter.TenantID = f.a
			_, err := audit.Query(context.Background(), f.pool, tc.filter)
			if !errors.Is(err, audit.ErrInvalidFilter) || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("got %v, want an invalid filter saying %q", err, tc.msg)
			}
		})
	}
	if _, err := audit.Query(context.Background(), f.pool, audit.Filter{}); err == nil || errors.Is(err, audit.ErrInvalidFilter) {
		t.Errorf("a query without a tenant: %v", err)
	}
}

// TestKnownTypes: every event type constant of audit.go is in KnownTypes,
// so that a query may name it.
func TestKnownTypes(t *testing.T) {
	t.Parallel()
	file, err := parser.ParseFile(token.NewFileSet(), "audit.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range file.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST || gd.Doc == nil || gd.Doc.Text() != "Event types.\n" {
			continue
		}
		for _, spec := range gd.Specs {
			for _, v := range spec.(*ast.ValueSpec).Values {
				lit, ok := v.(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				s, _ := strconv.Unquote(lit.Value)
				n++
				if !slices.Contains(audit.KnownTypes, s) {
					t.Errorf("event type %q is not in KnownTypes", s)
				}
			}
		}
	}
	if n != len(audit.KnownTypes) {
		t.Errorf("%d event type constants, %d in KnownTypes", n, len(audit.KnownTypes))
	}
}
