package service

import (
	"context"
	"errors"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditlog"
	"github.com/rexec/rexec/internal/auditproof"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/store"
)

// The caller's tenant's transparency log: what an auditor needs to check
// it without trusting this server. Each is allowed by audit.read.

// MaxLeafPage is the most leaves one read returns.
const MaxLeafPage = auditproof.LeafPage

// AuditCheckpoint returns the latest signed checkpoint, or the one signed
// for exactly size events when size > 0.
func (s *Service) AuditCheckpoint(ctx context.Context, c Caller, size int64) (auditlog.Checkpoint, error) {
	if err := s.authorizeLog(ctx, c); err != nil {
		return auditlog.Checkpoint{}, err
	}
	var (
		cp  auditlog.Checkpoint
		err error
	)
	if size > 0 {
		cp, err = s.auditLog.CheckpointAt(ctx, c.Tenant.ID, size)
	} else {
		cp, err = s.auditLog.Latest(ctx, c.Tenant.ID)
	}
	return cp, logError(err)
}

// AuditCheckpoints returns up to limit checkpoints of more than after
// events, smallest first.
func (s *Service) AuditCheckpoints(ctx context.Context, c Caller, after int64, limit int) ([]auditlog.Checkpoint, error) {
	if err := s.authorizeLog(ctx, c); err != nil {
		return nil, err
	}
	if after < 0 || limit <= 0 || limit > auditproof.CheckpointPage {
		return nil, errorf(ErrInvalid, "after must be ≥ 0 and limit between 1 and %d", auditproof.CheckpointPage)
	}
	cps, err := s.auditLog.Checkpoints(ctx, c.Tenant.ID, after, limit)
	return cps, logError(err)
}

// AuditLeaves returns the leaves [from, to). The first read of an export
// (from 0, or start set) is itself an audit event.
func (s *Service) AuditLeaves(ctx context.Context, c Caller, from, to int64, start bool) ([]auditproof.Leaf, error) {
	if err := s.authorizeLog(ctx, c); err != nil {
		return nil, err
	}
	if from < 0 || to <= from || to-from > MaxLeafPage {
		return nil, errorf(ErrInvalid, "want 0 ≤ from < to and at most %d leaves", MaxLeafPage)
	}
	if from == 0 || start {
		err := audit.Record(ctx, s.store.Pool(), c.event("", audit.AuditExported, map[string]any{"from": from}))
		if err != nil {
			return nil, err
		}
	}
	leaves, err := s.auditLog.Leaves(ctx, c.Tenant.ID, from, to)
	return leaves, logError(err)
}

// AuditConsistency proves that the log at size events extends the log at
// old events.
func (s *Service) AuditConsistency(ctx context.Context, c Caller, old, size int64) (tlog.TreeProof, error) {
	if err := s.authorizeLog(ctx, c); err != nil {
		return nil, err
	}
	if old <= 0 || size < old {
		return nil, errorf(ErrInvalid, "want 0 < old ≤ size")
	}
	if _, err := s.auditLog.CheckpointAt(ctx, c.Tenant.ID, size); err != nil {
		return nil, logError(err)
	}
	p, err := s.auditLog.ProveConsistency(ctx, c.Tenant.ID, old, size)
	return p, logError(err)
}

// AuditBundle returns a run's logged events with inclusion proofs in the
// latest checkpoint. Exporting it is an audit event.
func (s *Service) AuditBundle(ctx context.Context, c Caller, runID string) (auditproof.Bundle, error) {
	if err := s.authorizeLog(ctx, c); err != nil {
		return auditproof.Bundle{}, err
	}
	if !store.IsUUID(runID) {
		return auditproof.Bundle{}, errorf(ErrNotFound, "no run %q", runID)
	}
	b, size, err := s.auditLog.RunBundle(ctx, c.Tenant.ID, runID)
	if err != nil {
		return auditproof.Bundle{}, logError(err)
	}
	e := c.event(runID, audit.AuditExported, map[string]any{"bundle": true, "events": len(b.Events), "size": size})
	if err := audit.Record(ctx, s.store.Pool(), e); err != nil {
		return auditproof.Bundle{}, err
	}
	return b, nil
}

func (s *Service) authorizeLog(ctx context.Context, c Caller) error {
	return s.authorize(ctx, c, policy.ActionAuditRead, nil, nil)
}

// logError maps the log's errors to the service's kinds.
func logError(err error) error {
	switch {
	case errors.Is(err, auditlog.ErrEmpty):
		return errorf(ErrNotFound, "the audit log has no signed checkpoint yet: is a process with -audit-key-file running?")
	case errors.Is(err, auditlog.ErrNotFound):
		return &Error{Kind: ErrNotFound, Msg: err.Error()}
	}
	return err
}
