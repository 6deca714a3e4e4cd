package service

import (
	"context"
	"errors"
	"time"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/policy"
)

// QueryAudit returns a page of the caller's tenant's audit events that f
// selects (f.TenantID is the caller's, whatever f says), if the policy
// allows audit.read. A run ID that is not the tenant's is not found. The
// first page of a query (no cursor) is itself audited, with the filter;
// the events are not handed out when that record cannot be written.
func (s *Service) QueryAudit(ctx context.Context, c Caller, f audit.Filter) (audit.Page, error) {
	if err := s.authorize(ctx, c, policy.ActionAuditRead, nil, nil); err != nil {
		return audit.Page{}, err
	}
	f.TenantID = c.Tenant.ID
	if f.RunID != "" {
		if _, err := s.runOf(ctx, c, f.RunID); err != nil {
			return audit.Page{}, err
		}
	}
	p, err := audit.Query(ctx, s.store.Pool(), f)
	if errors.Is(err, audit.ErrInvalidFilter) {
		return audit.Page{}, errorf(ErrInvalid, "%v", err)
	}
	if err != nil {
		return audit.Page{}, err
	}
	if f.Cursor == "" {
		err = audit.Record(ctx, s.store.Pool(), c.event("", audit.AuditQueried,
			map[string]any{"filter": filterData(f), "events": len(p.Events), "more": p.Next != ""}))
		if err != nil {
			return audit.Page{}, err
		}
	}
	return p, nil
}

// filterData is a filter as its audit.queried event records it: the
// fields that were set.
func filterData(f audit.Filter) map[string]any {
	d := map[string]any{}
	for k, v := range map[string]string{"principal": f.Principal, "node": f.Node, "service": f.Service, "command": f.Command,
		"state": f.State, "approver": f.Approver, "run": f.RunID} {
		if v != "" {
			d[k] = v
		}
	}
	for k, t := range map[string]time.Time{"since": f.Since, "until": f.Until} {
		if !t.IsZero() {
			d[k] = t.UTC().Format(time.RFC3339Nano)
		}
	}
	if f.ExitCode != nil {
		d["exit_code"] = *f.ExitCode
	}
	if len(f.Types) > 0 {
		d["types"] = f.Types
	}
	if f.Limit != 0 {
		d["limit"] = f.Limit
	}
	return d
}
