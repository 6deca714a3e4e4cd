package audit

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Query limits.
const (
	LimitDefault = 100
	LimitMax     = 1000
)

// FinalStates are the states a run's last event names: the states the
// State filter takes. A run still on its way has no final event yet.
var FinalStates = []string{"completed", "failed", "cancelled", "denied", "expired"}

// Filter selects a tenant's audit events. Every field set narrows the
// selection (they are ANDed); the zero value of a field selects all.
//
// Event-level fields match the event itself. Run-level fields (Service,
// Command, State, Approver) select every event of the runs they match,
// answered from the log itself: a run's submitted event, its final event,
// its verdicts.
type Filter struct {
	// TenantID is required: a query never sees another tenant's events.
	TenantID int64
	// Since and Until bound the event's time: Since <= time < Until.
	Since, Until time.Time
	// Principal: events whose actor is this principal.
	Principal string
	// Node: events about this node.
	Node string
	// Service: events of runs submitted with this service filter (the
	// filter's text, compared exactly).
	Service string
	// Command: events of runs whose submitted command line (argv joined by
	// spaces, or the command and its args) contains this text, in any case.
	Command string
	// State: events of runs that ended in this state (one of FinalStates).
	State string
	// ExitCode: node.exited events with this exit code.
	ExitCode *int
	// Approver: events of runs this principal approved or refused.
	Approver string
	// Types: events of these types (any of them).
	Types []string
	// RunID: events of this run.
	RunID string
	// Limit is the page size: LimitDefault when 0, at most LimitMax.
	Limit int
	// Cursor is the previous page's Next; empty for the first page.
	Cursor string
}

// Row is one stored event.
type Row struct {
	ID    int64
	Time  time.Time
	Type  string
	Actor string
	RunID string
	Node  string
	// Data is the body's data member, byte for byte; {} when it has none.
	Data json.RawMessage
	// Body is the event's canonical encoding exactly as stored: the bytes
	// its transparency-log leaf hashes.
	Body string
	// From the body: where the fact came from.
	RequestID  string
	ClientAddr string
	OSUser     string
}

// Page is a page of events, newest first. Next is the cursor of the next
// page, empty after the last one.
type Page struct {
	Events []Row
	Next   string
}

// ErrInvalidFilter is the kind of a filter's error: the caller's input is
// wrong, and the message says how.
var ErrInvalidFilter = errors.New("invalid audit filter")

// FilterError is a filter's error, for the caller to show.
type FilterError struct{ Msg string }

func (e *FilterError) Error() string { return e.Msg }

// Unwrap makes errors.Is(err, ErrInvalidFilter) hold.
func (e *FilterError) Unwrap() error { return ErrInvalidFilter }

func invalidf(format string, args ...any) error {
	return &FilterError{Msg: fmt.Sprintf(format, args...)}
}

// The query is queryEvents or queryEventsInWindow around a WHERE clause of
// the fragments below joined by AND. Each fragment takes its value as the
// positional argument whose number fills its %d; $1 is always the tenant.
// Values never enter the SQL text.
//
// How a page stays fast on a large log. Measured with BenchmarkQuery on
// 10M events of 1M runs (two tenants, 500 nodes, 50 submitters, a year) on
// two busy cores, warm, mean of 100 first pages: by principal, node or exit
// code 1-3 ms; by node and a week last February 4 ms (the last week 2 ms),
// by principal and that week 3 ms; that week alone 53 ms; by service 23 ms,
// approver 19 ms, final state 74 ms, a rare command substring 124 ms.
//
//   - Every fragment is served by an index that starts with the tenant
//     (migrations 00004 and 00005). queryEvents lets the planner walk one
//     of them backwards in id order and stop after a page: (tenant_id, id)
//     when no filter narrows much, (tenant_id, actor, id) for a principal,
//     (tenant_id, node, id) for a node, the partial (tenant_id, exit_code,
//     id) for an exit code, the other filters checked on the way.
//   - Each query is planned with its values (QueryExecModeCacheDescribe,
//     never a generic plan): how many events a node or a principal has
//     decides the plan. JIT is off (queryBegin).
//   - Time ranges: the planner takes a range's events to be spread evenly
//     over the ids, while ids follow time, so a walk from the newest event
//     to a range in the past passes every newer event first (9 s for a week
//     last February) and its estimate does not show it. When the tenant has
//     more events after the range than in it, or the range is small,
//     queryEventsInWindow collects the ids of the range's matches first —
//     from (tenant_id, created_at, id), or (tenant_id, node, created_at) and
//     (tenant_id, actor, created_at) of 00005 — sorts them and reads the
//     page by id. planWindow decides, from the planner's estimates of the
//     two counts (EXPLAIN, no events read).
//   - A run-level filter is a probe of each event's run on a partial index
//     of the one kind of event it reads, ending in run_id, unless the runs
//     it matches are few (RunListMax): then they are listed first and their
//     events read by run through (run_id, id). The planner, left to join,
//     misjudged both: an approver's verdicts were estimated at 184 rows
//     (50,000), a command substring at 1,600 runs (100,000), and its joins
//     took 1.5 and 13 s.
//
// A range as old and as large as what follows it (half a year of 10M
// events) still reads the range: about a second.
const (
	queryEvents = `SELECT e.id, e.created_at, e.type, e.actor, coalesce(e.run_id::text, ''), coalesce(e.node, ''), e.body
FROM audit_events e WHERE %s ORDER BY e.id DESC LIMIT $%d`
	queryEventsInWindow = `SELECT e.id, e.created_at, e.type, e.actor, coalesce(e.run_id::text, ''), coalesce(e.node, ''), e.body
FROM audit_events e WHERE e.id IN (
	SELECT w.id FROM (SELECT e.id FROM audit_events e WHERE %s OFFSET 0) w ORDER BY w.id DESC LIMIT $%d)
ORDER BY e.id DESC`
	// queryEstimate is the planner's estimate of a tenant's events in a
	// time range (it reads the statistics, not the events).
	queryEstimate = `EXPLAIN (FORMAT JSON) SELECT 1 FROM audit_events WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3`

	whereTenant    = `e.tenant_id = $1`
	whereSince     = `e.created_at >= $%d`
	whereUntil     = `e.created_at < $%d`
	wherePrincipal = `e.actor = $%d`
	whereNode      = `e.node = $%d`
	whereRun       = `e.run_id = $%d`
	whereTypes     = `e.type = ANY ($%d::text[])`
	whereExitCode  = `e.type = 'node.exited' AND (e.data ->> 'exit_code')::int = $%d`
	whereCursor    = `e.id < $%d`
	whereRuns      = `e.run_id = ANY ($%d::uuid[])`

	// A run-level filter is a condition on one kind of event of the run
	// (alias s), its value the positional argument of its %d. It becomes
	// a probe of each event's run (whereRunProbe: an EXISTS that the
	// OFFSET keeps from being turned into a join, so that it runs per
	// event on an index ending in run_id), and a list of matching runs
	// (queryRunList) that replaces the probes' walk when it is short.
	condService = `s.type = 'run.submitted' AND rexec_audit_service(s.data) = $%d`
	condCommand = `s.type = 'run.submitted' AND rexec_audit_command(s.data) ILIKE $%d`
	condState   = `s.type IN ('run.finished', 'run.cancelled', 'run.denied', 'run.expired')
	AND rexec_audit_final_state(s.type, s.data) = $%d`
	condApprover  = `s.type IN ('approval.given', 'approval.refused') AND s.actor = $%d`
	whereRunProbe = `EXISTS (SELECT 1 FROM audit_events s WHERE s.tenant_id = $1 AND s.run_id = e.run_id AND %s OFFSET 0)`
	queryRunList  = `SELECT s.run_id FROM audit_events s WHERE s.tenant_id = $1 AND %s LIMIT $3`
)

// clauses is a WHERE clause being built: fragments and their arguments.
type clauses struct {
	sql  []string
	args []any
}

// add appends a fragment with its one argument.
func (c *clauses) add(fragment string, arg any) {
	c.args = append(c.args, arg)
	c.sql = append(c.sql, fmt.Sprintf(fragment, len(c.args)))
}

// Query returns a page of the tenant's events that f selects, newest first.
// An error wrapping ErrInvalidFilter is the caller's input.
func Query(ctx context.Context, db TxBeginner, f Filter) (Page, error) {
	return queryPlanned(ctx, db, f, plan{runListMax: RunListMax})
}

// plan is how a query is carried out: what the tests force to check that
// every way gives the same events.
type plan struct {
	// window: 0 lets planWindow decide, 1 walks, 2 reads the window.
	window int
	// runListMax bounds a run-level filter's list of runs; -1: no list.
	runListMax int
}

func queryPlanned(ctx context.Context, db TxBeginner, f Filter, pl plan) (Page, error) {
	if f.TenantID == 0 {
		return Page{}, errors.New("audit query without a tenant")
	}
	if err := f.check(); err != nil {
		return Page{}, err
	}
	tx, err := db.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly, BeginQuery: queryBegin})
	if err != nil {
		return Page{}, fmt.Errorf("audit query: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read only: nothing to keep
	return query(ctx, tx, f, pl)
}

// query is Query in a transaction begun with queryBegin.
func query(ctx context.Context, db Querier, f Filter, pl plan) (Page, error) {
	limit := f.Limit
	if limit == 0 {
		limit = LimitDefault
	}
	w := clauses{sql: []string{whereTenant}, args: []any{f.TenantID}}
	if f.Cursor != "" {
		before, err := DecodeCursor(f.Cursor)
		if err != nil {
			return Page{}, err
		}
		w.add(whereCursor, before)
	}
	if !f.Since.IsZero() {
		w.add(whereSince, f.Since)
	}
	if !f.Until.IsZero() {
		w.add(whereUntil, f.Until)
	}
	if f.Principal != "" {
		w.add(wherePrincipal, f.Principal)
	}
	if f.Node != "" {
		w.add(whereNode, f.Node)
	}
	runs, err := f.runLevel(ctx, db, pl.runListMax)
	if err != nil {
		return Page{}, err
	}
	for _, r := range runs.probes {
		w.add(fmt.Sprintf(whereRunProbe, r.cond), r.value)
	}
	if runs.list != nil {
		w.add(whereRuns, runs.list)
	}
	if f.ExitCode != nil {
		w.add(whereExitCode, *f.ExitCode)
	}
	if len(f.Types) > 0 {
		w.add(whereTypes, f.Types)
	}
	if f.RunID != "" {
		var id pgtype.UUID
		if err := id.Scan(f.RunID); err != nil {
			return Page{}, invalidf("run %q is not a run ID", f.RunID)
		}
		w.add(whereRun, id)
	}
	window := pl.window == 2
	if pl.window == 0 && (!f.Since.IsZero() || !f.Until.IsZero()) {
		if window, err = planWindow(ctx, db, f); err != nil {
			return Page{}, err
		}
	}
	query := queryEvents
	if window {
		query = queryEventsInWindow
	}
	// One more than a page tells whether another page follows.
	w.args = append(w.args, limit+1)
	sql := fmt.Sprintf(query, strings.Join(w.sql, " AND "), len(w.args))
	rows, err := db.Query(ctx, sql, append([]any{pgx.QueryExecModeCacheDescribe}, w.args...)...)
	if err != nil {
		return Page{}, fmt.Errorf("audit query: %w", err)
	}
	events, err := pgx.CollectRows(rows, scanRow)
	if err != nil {
		return Page{}, fmt.Errorf("audit query: %w", err)
	}
	var p Page
	if len(events) > limit {
		events = events[:limit]
		p.Next = EncodeCursor(events[limit-1].ID)
	}
	p.Events = events
	return p, nil
}

// RunListMax is the most runs a run-level filter may match for its runs'
// events to be read by run (through (run_id, id)) rather than found by
// probing each event of a walk: about 3,000 runs of ten events each cost
// what a walk through a page of matches at one run in 330 costs.
const RunListMax = 3000

// runFilter is a run-level filter: its condition and value.
type runFilter struct{ cond, value string }

// runFilters are the run-level filters of a query: a probe each, and the
// shortest list of the runs one of them matches, if one is at most
// RunListMax long (nil otherwise).
type runFilters struct {
	probes []runFilter
	list   []pgtype.UUID
}

func (f Filter) runLevel(ctx context.Context, db Querier, listMax int) (runFilters, error) {
	var out runFilters
	command := ""
	if f.Command != "" {
		command = "%" + likeEscaper.Replace(f.Command) + "%"
	}
	for _, r := range []runFilter{{condService, f.Service}, {condCommand, command}, {condState, f.State}, {condApprover, f.Approver}} {
		if r.value == "" {
			continue
		}
		out.probes = append(out.probes, r)
		if listMax < 0 {
			continue
		}
		sql := fmt.Sprintf(fmt.Sprintf(queryRunList, r.cond), 2)
		rows, err := db.Query(ctx, sql, pgx.QueryExecModeCacheDescribe, f.TenantID, r.value, listMax+1)
		if err != nil {
			return runFilters{}, fmt.Errorf("audit query: runs: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[pgtype.UUID])
		if err != nil {
			return runFilters{}, fmt.Errorf("audit query: runs: %w", err)
		}
		if len(ids) <= listMax && (out.list == nil || len(ids) < len(out.list)) {
			out.list = append([]pgtype.UUID{}, ids...)
		}
	}
	return out, nil
}

// WindowSmall is the size of a time range (in the planner's estimate of
// the tenant's events in it) whose ids are collected rather than walked:
// at most a few milliseconds of an index-only scan.
const WindowSmall = 20000

// planWindow reports whether f's time range is better read as a window
// (queryEventsInWindow) than walked from the newest event: when it is
// small, or when more of the tenant's events lie after it than in it.
func planWindow(ctx context.Context, db Querier, f Filter) (bool, error) {
	since := pgtype.Timestamptz{Time: f.Since, Valid: true}
	if f.Since.IsZero() {
		since = pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
	}
	until := pgtype.Timestamptz{Time: f.Until, Valid: true}
	if f.Until.IsZero() {
		until = pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true}
	}
	in, err := estimate(ctx, db, f.TenantID, since, until)
	if err != nil || in < WindowSmall || f.Until.IsZero() {
		return in < WindowSmall, err
	}
	after, err := estimate(ctx, db, f.TenantID, until, pgtype.Timestamptz{InfinityModifier: pgtype.Infinity, Valid: true})
	return after > in, err
}

// estimate is the planner's estimate of the tenant's events in [from, to).
func estimate(ctx context.Context, db Querier, tenant int64, from, to pgtype.Timestamptz) (float64, error) {
	rows, err := db.Query(ctx, queryEstimate, pgx.QueryExecModeCacheDescribe, tenant, from, to)
	if err != nil {
		return 0, fmt.Errorf("audit query estimate: %w", err)
	}
	plan, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[[]byte])
	if err != nil {
		return 0, fmt.Errorf("audit query estimate: %w", err)
	}
	var p []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		}
	}
	if err := json.Unmarshal(plan, &p); err != nil || len(p) != 1 {
		return 0, fmt.Errorf("audit query estimate: unexpected plan %q", plan)
	}
	return p[0].Plan.Rows, nil
}

// queryBegin begins a query's transaction. A page costs milliseconds, but
// the planner's costs for a walk it stops after a page are those of the
// whole walk, past PostgreSQL's thresholds for JIT compilation: compiling
// took 190 ms for a 25 ms query on a log of 10M events.
const queryBegin = `BEGIN READ ONLY; SET LOCAL jit = off`

// TxBeginner is a pool or a connection to read through.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Querier is a pool, a connection or a transaction to read through.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// likeEscaper makes text match itself in a LIKE pattern (whose escape
// character is the backslash).
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// check refuses what can only be the caller's mistake: it would match
// nothing (or fail in the database) and say nothing of why.
func (f Filter) check() error {
	if f.Limit < 0 || f.Limit > LimitMax {
		return invalidf("limit must be between 1 and %d", LimitMax)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return invalidf("since (%s) must be before until (%s)", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	if f.State != "" && !slices.Contains(FinalStates, f.State) {
		return invalidf("unknown state %q: runs end %s", f.State, strings.Join(FinalStates, ", "))
	}
	for _, t := range f.Types {
		if !slices.Contains(KnownTypes, t) {
			return invalidf("unknown event type %q", t)
		}
	}
	for _, s := range []struct{ name, value string }{
		{"principal", f.Principal}, {"node", f.Node}, {"service", f.Service}, {"command", f.Command},
		{"approver", f.Approver}, {"run", f.RunID},
	} {
		switch {
		case strings.ContainsRune(s.value, 0):
			return invalidf("%s contains a NUL byte", s.name)
		case !utf8.ValidString(s.value):
			return invalidf("%s is not valid UTF-8", s.name)
		}
	}
	return nil
}

func scanRow(row pgx.CollectableRow) (Row, error) {
	var r Row
	if err := row.Scan(&r.ID, &r.Time, &r.Type, &r.Actor, &r.RunID, &r.Node, &r.Body); err != nil {
		return Row{}, err
	}
	r.Time = r.Time.UTC()
	var b struct {
		RequestID  string          `json:"request_id"`
		ClientAddr string          `json:"client_addr"`
		OSUser     string          `json:"os_user"`
		Data       json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal([]byte(r.Body), &b); err != nil {
		return Row{}, fmt.Errorf("event %d: body: %w", r.ID, err)
	}
	r.RequestID, r.ClientAddr, r.OSUser, r.Data = b.RequestID, b.ClientAddr, b.OSUser, b.Data
	if len(r.Data) == 0 {
		r.Data = json.RawMessage(`{}`)
	}
	return r, nil
}

// cursorPrefix versions the cursor's encoding.
const cursorPrefix = "id:"

// EncodeCursor is the cursor of the page after the event with this id.
func EncodeCursor(id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(cursorPrefix + strconv.FormatInt(id, 10)))
}

// DecodeCursor returns the id a cursor pages below.
func DecodeCursor(c string) (int64, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err == nil {
		if s, ok := strings.CutPrefix(string(b), cursorPrefix); ok {
			if id, err := strconv.ParseInt(s, 10, 64); err == nil && id > 0 {
				return id, nil
			}
		}
	}
	return 0, invalidf("malformed cursor %q: pass the next value of the previous page", c)
}
