package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/webhook"
)

// NotifyApprovers inserts, in tx, the webhook delivery that tells the run's
// tenant's approvers about event. actor and comment name who decided, for
// approved and denied.
func NotifyApprovers(ctx context.Context, client *river.Client[pgx.Tx], tx pgx.Tx, t store.Tenant, r store.Run, event webhook.Event, actor, comment string, given int) error {
	if t.WebhookURL == "" {
		return nil
	}
	var targets []struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(r.Targets, &targets)
	n := webhook.Notice{
		Tenant: t.Name, RunID: r.ID, Event: event, Submitter: r.SubmitterName, NodeCount: len(targets),
		Reason: r.Reason, ApprovalsRequired: r.Policy.Approvals, ApprovalsGiven: given,
		ApproverRoles: r.Policy.ApproverRoles, Actor: actor, Comment: comment,
	}
	for i := range min(len(targets), webhook.MaxNodes) {
		n.Nodes = append(n.Nodes, targets[i].Name)
	}
	if r.Script != nil {
		n.Command = webhook.DescribeScript(int64(len(r.Script)), scriptSHA(r.Script))
	} else {
		n.Command = webhook.DescribeArgv(r.Argv)
	}
	_, err := client.InsertTx(ctx, tx, webhook.DeliverArgs{TenantID: t.ID, RunID: r.ID, Event: event, Notice: n}, nil)
	return err
}

// webhookTargets reads tenants' webhook settings for deliveries.
type webhookTargets struct{ st *store.Store }

func (w webhookTargets) WebhookTarget(ctx context.Context, tenantID int64) (string, []byte, error) {
	t, err := w.st.TenantByID(ctx, tenantID)
	if err != nil {
		return "", nil, err
	}
	return t.WebhookURL, []byte(t.WebhookSecret), nil
}

// deliveryAudit records every delivery attempt in the audit log.
type deliveryAudit struct{ st *store.Store }

func (a deliveryAudit) RecordDelivery(ctx context.Context, d webhook.Delivery) error {
	typ := audit.WebhookFailed
	if d.Delivered {
		typ = audit.WebhookDelivered
	}
	return audit.Record(ctx, a.st.Pool(), audit.Event{TenantID: d.TenantID, RunID: d.RunID, Actor: "rexec:webhook", Type: typ,
		Data: map[string]any{"event": string(d.Event), "attempt": d.Attempt, "target": d.Target, "status": d.Status,
			"error": d.Error, "final": d.Final}})
}

func scriptSHA(script []byte) string {
	sum := sha256.Sum256(script)
	return hex.EncodeToString(sum[:])
}
