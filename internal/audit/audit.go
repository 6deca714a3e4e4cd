// Package audit writes rexec's append-only audit log: one event per fact,
// in the same transaction as the change it records, each event stored as
// its canonical encoding (the leaf that package auditlog puts in the
// tenant's transparency log).
package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Event types.
const (
	TenantCreated  = "tenant.created"
	TokenCreated   = "token.created"
	TokenRevoked   = "token.revoked"
	RolesChanged   = "principal.roles_changed"
	RunSubmitted   = "run.submitted"
	RunQueued      = "run.queued"
	RunStarted     = "run.started"
	RunResumed     = "run.resumed"
	RunRequeued    = "run.requeued" // handed to a new job, before it fired
	EventFired     = "run.event_fired"
	NodeAcked      = "node.acked"
	NodeExited     = "node.exited"
	NodeEnded      = "node.ended" // lost, no_ack or cancelled
	RunFinished    = "run.finished"
	RunCancelAsked = "run.cancel_requested"
	RunCancelled   = "run.cancelled"
	OutputRead     = "output.read"
	AuditExported  = "audit.exported" // the log read for verification, or a run's proof bundle

	// Authorization.
	RunRefused        = "run.refused" // a submission the preflight or the policy denied; nothing stored
	PolicyDecided     = "policy.decided"
	PolicyLoaded      = "policy.loaded"
	PolicyRejected    = "policy.rejected" // a reload that did not compile; the old policy stays
	ApprovalRequested = "approval.requested"
	ApprovalGiven     = "approval.given"
	ApprovalRefused   = "approval.refused"
	RunDenied         = "run.denied"
	RunExpired        = "run.expired"
	WebhookDelivered  = "webhook.delivered"
	WebhookFailed     = "webhook.failed"

	// Reading the log.
	AuditQueried = "audit.queried" // a query's first page was read; its filter in data
)

// KnownTypes lists every event type above, for queries that name types: a
// type not here is refused as a typo rather than matching nothing.
// TestKnownTypes keeps it complete.
var KnownTypes = []string{
	TenantCreated, TokenCreated, TokenRevoked, RolesChanged,
	RunSubmitted, RunQueued, RunStarted, RunResumed, RunRequeued, EventFired, NodeAcked, NodeExited, NodeEnded,
	RunFinished, RunCancelAsked, RunCancelled, OutputRead,
	RunRefused, PolicyDecided, PolicyLoaded, PolicyRejected, ApprovalRequested, ApprovalGiven, ApprovalRefused,
	RunDenied, RunExpired, WebhookDelivered, WebhookFailed,
	AuditQueried, AuditExported,
}

// Event is one audited fact. Data must never hold a secret.
type Event struct {
	TenantID int64  // 0 for events outside any tenant (the system log)
	RunID    string // empty when not about a run
	Node     string // the node the fact is about, if one
	Actor    string // principal name, "worker:<id>", "admin" or "rexec-svc"
	Type     string

	// Where the fact came from: the API request that caused it and its
	// client's address, or the operating-system user of an admin command.
	RequestID  string
	ClientAddr string
	OSUser     string

	Data map[string]any
	// Time is when the fact happened; Record fills in the present.
	Time time.Time
}

// ForNodes returns e once for each of nodes, with Node set: one fact per
// node, as an auditor querying by node expects.
func ForNodes(e Event, nodes []string) []Event {
	out := make([]Event, len(nodes))
	for i, n := range nodes {
		out[i] = e
		out[i].Node = n
	}
	return out
}

// TimeFormat is how a body writes its time: RFC 3339 in UTC with
// microseconds (PostgreSQL's precision), always the same length.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Body returns the event's canonical encoding (docs/audit.md): the leaf
// that the tenant's transparency log hashes, and the row's only source of
// truth.
func (e Event) Body() ([]byte, error) {
	if e.Type == "" || e.Actor == "" {
		return nil, fmt.Errorf("audit event without type or actor")
	}
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	b := map[string]any{
		"type":  e.Type,
		"actor": e.Actor,
		"time":  t.UTC().Truncate(time.Microsecond).Format(TimeFormat),
	}
	if e.TenantID != 0 {
		b["tenant"] = e.TenantID
	}
	for k, v := range map[string]string{"run": e.RunID, "node": e.Node, "request_id": e.RequestID,
		"client_addr": e.ClientAddr, "os_user": e.OSUser} {
		if v != "" {
			b[k] = v
		}
	}
	if len(e.Data) > 0 {
		b["data"] = e.Data
	}
	return Canonical(b)
}

// Execer is a transaction (or pool) to write through.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// queryRecord appends bodies in their order: one round trip for all of a
// transaction's events.
const queryRecord = `INSERT INTO audit_events (body) SELECT b FROM unnest($1::text[]) WITH ORDINALITY AS u(b, n) ORDER BY n`

// Record appends events, in the caller's transaction when db is one.
func Record(ctx context.Context, db Execer, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	bodies, err := encode(events)
	if err != nil {
		return err
	}
	if _, err := db.Exec(ctx, queryRecord, bodies); err != nil {
		return fmt.Errorf("audit %s: %w", events[0].Type, err)
	}
	return nil
}

// Queue queues on b the statement that appends events, for a caller that
// sends them with other statements of its transaction in one round trip
// (store.Store.InBatchTx). The events are the same as Record's.
func Queue(b *pgx.Batch, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	bodies, err := encode(events)
	if err != nil {
		return err
	}
	b.Queue(queryRecord, bodies)
	return nil
}

// encode returns the events' bodies, each at the present unless it has a
// time of its own.
func encode(events []Event) ([]string, error) {
	now := time.Now()
	bodies := make([]string, len(events))
	for i, e := range events {
		if e.Time.IsZero() {
			e.Time = now
		}
		b, err := e.Body()
		if err != nil {
			return nil, fmt.Errorf("audit %s: %w", e.Type, err)
		}
		bodies[i] = string(b)
	}
	return bodies, nil
}
