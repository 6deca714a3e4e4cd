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

// The query is queryEvents, a WHERE clause of the fragments below joined
// by AND, and queryOrder. Each fragment takes its value as the positional
// argument whose number fills its %d; $1 is always the tenant. Values never
// enter the SQL text.
//
// How the first page stays fast on a large log (10M events; migrations
// 00004 and 00005): every fragment is served by an index that starts with
// the tenant, so the planner either walks one of them backwards in id
// order and stops after a page — (tenant_id, id) with a cheap filter,
// (tenant_id, actor, id) for a principal, (tenant_id, node, id) for a
// node, the partial (tenant_id, exit_code, id) for an exit code — or, for
// a narrow time range, reads (tenant_id, created_at, id) or
// (tenant_id, node, created_at) and sorts what little it found. A run-level
// fragment is a semi-join on a small partial index of the events it
// reads (submitted, final, verdict events), joined back through
// (run_id, id) or hashed against the backward walk. Each query is planned
// with its values (QueryExecModeCacheDescribe: no generic plan), since how
// many events a node or a principal has decides the plan.
const (
	queryEvents = `SELECT e.id, e.created_at, e.type, e.actor, coalesce(e.run_id::text, ''), coalesce(e.node, ''), e.body
FROM audit_events e WHERE `
	queryOrder = ` ORDER BY e.id DESC LIMIT $%d`

	whereTenant    = `e.tenant_id = $1`
	whereSince     = `e.created_at >= $%d`
	whereUntil     = `e.created_at < $%d`
	wherePrincipal = `e.actor = $%d`
	whereNode      = `e.node = $%d`
	whereRun       = `e.run_id = $%d`
	whereTypes     = `e.type = ANY ($%d::text[])`
	whereExitCode  = `e.type = 'node.exited' AND (e.data ->> 'exit_code')::int = $%d`
	whereCursor    = `e.id < $%d`
	whereService   = `e.run_id IN (SELECT s.run_id FROM audit_events s
	WHERE s.tenant_id = $1 AND s.type = 'run.submitted' AND rexec_audit_service(s.data) = $%d)`
	whereCommand = `e.run_id IN (SELECT s.run_id FROM audit_events s
	WHERE s.tenant_id = $1 AND s.type = 'run.submitted' AND rexec_audit_command(s.data) ILIKE $%d)`
	whereState = `e.run_id IN (SELECT s.run_id FROM audit_events s
	WHERE s.tenant_id = $1 AND s.type IN ('run.finished', 'run.cancelled', 'run.denied', 'run.expired')
		AND rexec_audit_final_state(s.type, s.data) = $%d)`
	whereApprover = `e.run_id IN (SELECT s.run_id FROM audit_events s
	WHERE s.tenant_id = $1 AND s.type IN ('approval.given', 'approval.refused') AND s.actor = $%d)`
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
func Query(ctx context.Context, db Querier, f Filter) (Page, error) {
	if f.TenantID == 0 {
		return Page{}, errors.New("audit query without a tenant")
	}
	if err := f.check(); err != nil {
		return Page{}, err
	}
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
	for _, s := range []struct{ fragment, value string }{
		{wherePrincipal, f.Principal}, {whereNode, f.Node}, {whereService, f.Service},
		{whereState, f.State}, {whereApprover, f.Approver},
	} {
		if s.value != "" {
			w.add(s.fragment, s.value)
		}
	}
	if f.Command != "" {
		w.add(whereCommand, "%"+likeEscaper.Replace(f.Command)+"%")
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
	// One more than a page tells whether another page follows.
	w.args = append(w.args, limit+1)
	sql := queryEvents + strings.Join(w.sql, " AND ") + fmt.Sprintf(queryOrder, len(w.args))
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
