package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// ApprovalTTLDefault is how long a run may wait for approval by default.
const ApprovalTTLDefault = 24 * time.Hour

// Policy outcomes stored with a run (a denied submission is not stored).
const (
	PolicyAllow           = "allow"
	PolicyRequireApproval = "require_approval"
)

// PolicyDecision is what the policy decided when the run was submitted.
type PolicyDecision struct {
	Outcome       string
	Reasons       []string
	Revision      string
	Approvals     int      // distinct approvals needed; 0 when none
	ApproverRoles []string // roles whose holders may approve
}

// RequestHash is the sha256 of the canonical form of what a run asks:
// command, script, shell, filters, prefix, frozen targets (by name), wait
// settings, deadline and start bound. Approvals bind to it: an approval
// given for one request never releases another, and a run whose stored
// request was changed after approval no longer matches its approvals.
func RequestHash(r Run) string {
	return requestHash(r, targetNames(r.Targets), requestHashVersion)
}

// RequestHashOf is RequestHash for a caller that has the names of r's
// targets at hand, sparing a parse of r.Targets (which holds every
// target's services).
func RequestHashOf(r Run, targetNames []string) string {
	return requestHash(r, targetNames, requestHashVersion)
}

// RequestHashMatches says whether r's stored request still hashes to its
// RequestHash: by RequestHash, or for a run submitted before version 2 by
// version 1, which read the targets' names from a field they do not have
// and so bound only their number. A run stored with version 1 keeps that
// weaker binding; every run submitted since binds its targets' names.
func RequestHashMatches(r Run) bool {
	names := targetNames(r.Targets)
	if requestHash(r, names, requestHashVersion) == r.RequestHash {
		return true
	}
	return requestHash(r, make([]string, len(names)), 1) == r.RequestHash
}

// requestHashVersion is the version of RequestHash's canonical form.
const requestHashVersion = 2

// targetNames returns the node names of a run's stored targets (a JSON
// array of consul.Node).
func targetNames(targets json.RawMessage) []string {
	var nodes []struct {
		Name string `json:"node"`
	}
	_ = json.Unmarshal(targets, &nodes)
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return names
}

func requestHash(r Run, targetNames []string, version int) string {
	names := nonNil(slices.Sorted(slices.Values(targetNames)))
	script := ""
	if r.Script != nil {
		sum := sha256.Sum256(r.Script)
		script = hex.EncodeToString(sum[:])
	}
	// Field order is fixed by the struct; json.Marshal is deterministic.
	canon, _ := json.Marshal(struct {
		V            int      `json:"v"`
		Argv         []string `json:"argv"`
		Script       string   `json:"script_sha256"`
		Shell        bool     `json:"shell"`
		Node         string   `json:"node"`
		Service      string   `json:"service"`
		Tag          string   `json:"tag"`
		Prefix       string   `json:"prefix"`
		Targets      []string `json:"targets"`
		WaitMS       int64    `json:"wait_ms"`
		WaitReplMS   int64    `json:"wait_repl_ms"`
		TimeoutMS    int64    `json:"timeout_ms"`
		StartTimeout int64    `json:"start_timeout_ms"`
	}{version, nonNil(r.Argv), script, r.Shell, r.NodeFilter, r.ServiceFilter, r.TagFilter, r.Prefix, names,
		r.Wait.Milliseconds(), r.WaitRepl.Milliseconds(), r.Timeout.Milliseconds(), r.StartTimeout.Milliseconds()})
	sum := sha256.Sum256(canon)
	return hex.EncodeToString(sum[:])
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Verdicts.
const (
	VerdictApprove = "approve"
	VerdictDeny    = "deny"
)

// Approval is one principal's verdict on a run.
type Approval struct {
	PrincipalID   int64
	PrincipalName string
	Roles         []string
	Verdict       string
	Comment       string
	RequestHash   string
	CreatedAt     time.Time
}

// ErrAlreadyDecided means the principal already gave a verdict on the run.
var ErrAlreadyDecided = errors.New("already approved or denied by this principal")

const queryLockPending = `SELECT coalesce(approval_expires_at < now(), false) FROM runs WHERE tenant_id = $1 AND id = $2::uuid FOR UPDATE`

// LockRunState locks the tenant's run for a verdict and reports whether
// its approval window has passed (by the database's clock; the sweep that
// expires it may not have run yet).
func (q *Queries) LockRunState(ctx context.Context, tenantID int64, runID string) (windowPassed bool, err error) {
	if !IsUUID(runID) {
		return false, fmt.Errorf("lock run: %w", ErrNotFound)
	}
	if err := q.db.QueryRow(ctx, queryLockPending, tenantID, runID).Scan(&windowPassed); err != nil {
		return false, fmt.Errorf("lock run: %w", notFound(err))
	}
	return windowPassed, nil
}

const queryInsertApproval = `INSERT INTO approvals (run_id, principal_id, principal_name, roles, verdict, comment, request_hash)
VALUES ($1, $2, $3, $4, $5, $6, $7)`

// RecordVerdict stores a principal's verdict; ErrAlreadyDecided when the
// principal gave one before.
func (q *Queries) RecordVerdict(ctx context.Context, runID string, a Approval) error {
	_, err := q.db.Exec(ctx, queryInsertApproval, runID, a.PrincipalID, a.PrincipalName, nonNil(a.Roles), a.Verdict, a.Comment, a.RequestHash)
	if isUniqueViolation(err) {
		return ErrAlreadyDecided
	}
	if err != nil {
		return fmt.Errorf("record verdict: %w", err)
	}
	return nil
}

const queryApprovals = `SELECT principal_id, principal_name, roles, verdict, comment, request_hash, created_at
FROM approvals WHERE run_id = $1 ORDER BY created_at, principal_id`

// Approvals returns the run's verdicts, oldest first.
func (q *Queries) Approvals(ctx context.Context, runID string) ([]Approval, error) {
	rows, err := q.db.Query(ctx, queryApprovals, runID)
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Approval, error) {
		var a Approval
		err := row.Scan(&a.PrincipalID, &a.PrincipalName, &a.Roles, &a.Verdict, &a.Comment, &a.RequestHash, &a.CreatedAt)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	return out, nil
}

// ApprovalsGiven counts the approvals among verdicts bound to hash, the
// run's request hash: those that count towards starting it.
func ApprovalsGiven(verdicts []Approval, hash string) int {
	given := 0
	for _, a := range verdicts {
		if a.Verdict == VerdictApprove && a.RequestHash == hash {
			given++
		}
	}
	return given
}

const queryReleaseApproved = `UPDATE runs SET state = 'queued', approval_expires_at = NULL,
	start_by = now() + start_timeout_ms * interval '1 millisecond'
WHERE id = $1 AND state = 'pending_approval'`

// ReleaseApproved moves a run whose approvals are complete to queued; its
// start bound counts from now.
func (q *Queries) ReleaseApproved(ctx context.Context, runID string) error {
	tag, err := q.db.Exec(ctx, queryReleaseApproved, runID)
	if err != nil {
		return fmt.Errorf("release approved run: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("release approved run: %w", ErrNotFound)
	}
	return nil
}

const queryEndPending = `UPDATE runs SET state = $2, finished_at = now(), outcome = $2, error = nullif($3, ''), approval_expires_at = NULL
WHERE id = $1 AND state = 'pending_approval'`

// EndPending ends a run pending approval as denied or expired; its nodes
// end cancelled (the command never ran), and are returned.
func (q *Queries) EndPending(ctx context.Context, runID, state, msg string) ([]string, error) {
	if state != StateDenied && state != StateExpired {
		return nil, fmt.Errorf("end pending run: state %q", state)
	}
	tag, err := q.db.Exec(ctx, queryEndPending, runID, state, msg)
	if err != nil {
		return nil, fmt.Errorf("end pending run: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return nil, fmt.Errorf("end pending run: %w", ErrNotFound)
	}
	nodes, err := q.cancelNodes(ctx, runID)
	if err != nil {
		return nil, fmt.Errorf("end pending run: %w", err)
	}
	return nodes, nil
}

const queryExpiredPending = `SELECT id::text, tenant_id FROM runs
WHERE state = 'pending_approval' AND approval_expires_at < now()
ORDER BY approval_expires_at LIMIT 100 FOR UPDATE SKIP LOCKED`

// ExpiredRun is a run whose approval window passed.
type ExpiredRun struct {
	RunID    string
	TenantID int64
	// Nodes are the run's nodes, ended cancelled.
	Nodes []string
}

// ExpirePending ends up to 100 runs whose approval window passed as
// expired.
func (q *Queries) ExpirePending(ctx context.Context) ([]ExpiredRun, error) {
	rows, err := q.db.Query(ctx, queryExpiredPending)
	if err != nil {
		return nil, fmt.Errorf("expired approvals: %w", err)
	}
	runs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ExpiredRun, error) {
		var r ExpiredRun
		err := row.Scan(&r.RunID, &r.TenantID)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("expired approvals: %w", err)
	}
	for i, r := range runs {
		if runs[i].Nodes, err = q.EndPending(ctx, r.RunID, StateExpired, "no decision within the approval window"); err != nil {
			return nil, err
		}
	}
	return runs, nil
}
