package service

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/jobs"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/webhook"
)

// MaxComment bounds an approver's comment.
const MaxComment = 4096

// approvalRequested is the audit event of a submission that waits for
// approval: it goes into the submission's transaction with the others
// (Submit), followed by the approvers' notice (jobs.NotifyApprovers).
func approvalRequested(c Caller, run store.Run) audit.Event {
	return c.event(run.ID, audit.ApprovalRequested, map[string]any{"given": 0, "required": run.Policy.Approvals,
		"approver_roles": run.Policy.ApproverRoles, "reasons": run.Policy.Reasons, "expires_at": run.ApprovalExpiresAt,
		"request_hash": run.RequestHash})
}

// Verdict is an approver's answer to a run pending approval.
type Verdict struct {
	// Approve is true to approve, false to deny.
	Approve bool
	// Comment is kept with the verdict and in the audit log.
	Comment string
	// RequestHash, when set, is the request hash the approver saw; a run
	// whose request hash differs is refused (409).
	RequestHash string
}

// Decide records an approver's verdict on a run pending approval and
// returns the run and its verdicts after it (the verdict authorizes the
// answer: a denied run is no longer one its approver may read). An
// approval that completes the run's required count queues it, with its
// River job, in the same transaction; a denial ends it denied at once.
// Approving one's own run, twice, without an approving role, a run not
// pending approval, or a request that no longer matches its hash is
// refused.
func (s *Service) Decide(ctx context.Context, c Caller, id string, v Verdict) (store.Run, []store.Approval, error) {
	action := policy.ActionExecDeny
	if v.Approve {
		action = policy.ActionExecApprove
	}
	if len(v.Comment) > MaxComment {
		return store.Run{}, nil, errorf(ErrInvalid, "comment is longer than %d bytes", MaxComment)
	}
	r, err := s.runOf(ctx, c, id)
	if err != nil {
		return store.Run{}, nil, err
	}
	// Everything is judged on the run as locked: two approvers acting at
	// once are each judged with the other's verdict in view.
	err = s.store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		windowPassed, err := q.LockRunState(ctx, c.Tenant.ID, r.ID)
		if err != nil {
			return err
		}
		if r, err = q.GetRun(ctx, c.Tenant.ID, r.ID); err != nil {
			return err
		}
		approvals, err := q.Approvals(ctx, r.ID)
		if err != nil {
			return err
		}
		// The policy first: what follows tells the run's state.
		if err := s.authorize(ctx, c, action, &r, approvals); err != nil {
			return err
		}
		// What holds whatever the policy says: the run's state and window,
		// no approving one's own run, one verdict each, an approving role,
		// and the exact request.
		switch {
		case r.State != store.StatePendingApproval:
			return errorf(ErrConflict, "run %s is %s, not pending approval", r.ID, r.State)
		case windowPassed:
			return errorf(ErrConflict, "run %s's approval window has passed; it expires", r.ID)
		case r.SubmittedBy == c.Principal.ID && v.Approve:
			return errorf(ErrForbidden, "nobody approves their own run")
		case slices.ContainsFunc(approvals, func(a store.Approval) bool { return a.PrincipalID == c.Principal.ID }):
			return errorf(ErrConflict, "%s has already given a verdict on run %s", c.Principal.Name, r.ID)
		case v.Approve && !slices.ContainsFunc(r.Policy.ApproverRoles, func(role string) bool { return c.Principal.Has(role) }):
			return errorf(ErrForbidden, "approving run %s takes one of the roles %v", r.ID, r.Policy.ApproverRoles)
		case v.RequestHash != "" && v.RequestHash != r.RequestHash:
			return errorf(ErrConflict, "run %s's request hash is %s, not %s: the request differs from the one shown", r.ID, r.RequestHash, v.RequestHash)
		case !store.RequestHashMatches(r):
			return errorf(ErrConflict, "run %s's stored request no longer matches its hash; it cannot be approved", r.ID)
		}
		verdict := store.VerdictDeny
		if v.Approve {
			verdict = store.VerdictApprove
		}
		err = q.RecordVerdict(ctx, r.ID, store.Approval{PrincipalID: c.Principal.ID, PrincipalName: c.Principal.Name,
			Roles: c.Principal.Roles, Verdict: verdict, Comment: v.Comment, RequestHash: r.RequestHash})
		if errors.Is(err, store.ErrAlreadyDecided) {
			return errorf(ErrConflict, "%s has already given a verdict on run %s", c.Principal.Name, r.ID)
		}
		if err != nil {
			return err
		}
		// What every verdict's event says: the approver's comment and
		// roles, the request it is bound to, and the count after it.
		verdictData := func(given int) map[string]any {
			return map[string]any{"comment": v.Comment, "roles": c.Principal.Roles, "request_hash": r.RequestHash,
				"given": given, "required": r.Policy.Approvals}
		}
		if !v.Approve {
			nodes, err := q.EndPending(ctx, r.ID, store.StateDenied, fmt.Sprintf("denied by %s", c.Principal.Name))
			if err != nil {
				return err
			}
			given := store.ApprovalsGiven(approvals, r.RequestHash)
			denied := verdictData(given)
			denied["nodes"] = store.NodeCounts{Targets: len(nodes), Cancelled: len(nodes)}
			evs := append([]audit.Event{c.event(r.ID, audit.ApprovalRefused, verdictData(given))},
				jobs.CancelledNodes(c.event(r.ID, "", nil), nodes)...)
			if err := audit.Record(ctx, tx, append(evs, c.event(r.ID, audit.RunDenied, denied))...); err != nil {
				return err
			}
			return jobs.NotifyApprovers(ctx, s.river, tx, c.Tenant, r, webhook.EventDenied, c.Principal.Name, v.Comment, 0)
		}
		all, err := q.Approvals(ctx, r.ID)
		if err != nil {
			return err
		}
		given := store.ApprovalsGiven(all, r.RequestHash)
		evs := []audit.Event{c.event(r.ID, audit.ApprovalGiven, verdictData(given))}
		if given >= r.Policy.Approvals {
			if err := q.ReleaseApproved(ctx, r.ID); err != nil {
				return err
			}
			if _, err := s.river.InsertTx(ctx, tx, jobs.ExecArgs{RunID: r.ID}, nil); err != nil {
				return err
			}
			evs = append(evs, c.event(r.ID, audit.RunQueued, map[string]any{"approvals": given, "required": r.Policy.Approvals}))
		}
		if err := audit.Record(ctx, tx, evs...); err != nil {
			return err
		}
		if err := jobs.NotifyApprovers(ctx, s.river, tx, c.Tenant, r, webhook.EventApproved, c.Principal.Name, v.Comment, given); err != nil {
			return err
		}
		return q.NotifyRun(ctx, r.ID)
	})
	if err != nil {
		return store.Run{}, nil, err
	}
	if r, err = s.runOf(ctx, c, r.ID); err != nil {
		return store.Run{}, nil, err
	}
	approvals, err := s.store.Approvals(ctx, r.ID)
	return r, approvals, err
}

// Approvals returns a run's verdicts, for a caller who may read the run.
func (s *Service) Approvals(ctx context.Context, c Caller, id string) ([]store.Approval, error) {
	r, err := s.runOf(ctx, c, id)
	if err != nil {
		return nil, err
	}
	approvals, err := s.store.Approvals(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	if err := s.authorize(ctx, c, policy.ActionRunRead, &r, approvals); err != nil {
		return nil, err
	}
	return approvals, nil
}
