// Package audit writes rexec's append-only audit log: one event per fact,
// in the same transaction as the change it records. (The hash chain and the
// query interface build on this table.)
package audit

import (
	"context"
	"fmt"

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
)

// Event is one audited fact. Data must never hold a secret.
type Event struct {
	TenantID int64  // 0 for events outside any tenant
	RunID    string // empty when not about a run
	Actor    string // principal name, "worker:<id>" or "admin"
	Type     string
	Data     map[string]any
}

// Execer is a transaction (or pool) to write through.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

const queryRecord = `INSERT INTO audit_events (tenant_id, run_id, actor, type, data) VALUES (nullif($1, 0), nullif($2, '')::uuid, $3, $4, $5)`

// Record appends events.
func Record(ctx context.Context, db Execer, events ...Event) error {
	for _, e := range events {
		data := e.Data
		if data == nil {
			data = map[string]any{}
		}
		if _, err := db.Exec(ctx, queryRecord, e.TenantID, e.RunID, e.Actor, e.Type, data); err != nil {
			return fmt.Errorf("audit %s: %w", e.Type, err)
		}
	}
	return nil
}
