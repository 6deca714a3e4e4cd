package service

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/jobs"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/store"
)

// runOf returns the caller's run, or a not-found error that reads the same
// for another tenant's run, a missing one and a malformed ID.
func (s *Service) runOf(ctx context.Context, c Caller, id string) (store.Run, error) {
	r, err := s.store.GetRun(ctx, c.Tenant.ID, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Run{}, errorf(ErrNotFound, "no run %q", id)
	}
	return r, err
}

// readable returns the caller's run if the policy lets the caller take
// action on it.
func (s *Service) readable(ctx context.Context, c Caller, id string, action policy.Action) (store.Run, error) {
	r, err := s.runOf(ctx, c, id)
	if err != nil {
		return store.Run{}, err
	}
	return r, s.authorizeRun(ctx, c, action, r)
}

// authorizeRun decides action on r, with its approvals when it has any.
func (s *Service) authorizeRun(ctx context.Context, c Caller, action policy.Action, r store.Run) error {
	var approvals []store.Approval
	if r.Policy.Approvals > 0 {
		var err error
		if approvals, err = s.store.Approvals(ctx, r.ID); err != nil {
			return err
		}
	}
	return s.authorize(ctx, c, action, &r, approvals)
}

// Get returns a run.
func (s *Service) Get(ctx context.Context, c Caller, id string) (store.Run, error) {
	return s.readable(ctx, c, id, policy.ActionRunRead)
}

// List returns the caller's tenant's runs, newest first, with their
// per-node results by run ID.
func (s *Service) List(ctx context.Context, c Caller, f store.ListFilter) ([]store.Run, map[string][]store.NodeResult, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	if f.State != "" && !slices.Contains(store.States, f.State) {
		return nil, nil, errorf(ErrInvalid, "unknown state %q: one of %s", f.State, strings.Join(store.States, ", "))
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return nil, nil, errorf(ErrInvalid, "since (%s) must be before until (%s)", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	// A principal who may list the tenant's runs sees them all; any other
	// sees those it may read (a submitter its own, an approver its inbox),
	// page after page of the tenant's until the limit is filled, so that
	// the cursor after the last one shown finds the older ones.
	all := true
	if err := s.authorize(ctx, c, policy.ActionRunList, nil, nil); err != nil {
		if !errors.Is(err, ErrForbidden) {
			return nil, nil, err
		}
		all = false
	}
	var runs []store.Run
	g := f
	for scanned := 0; len(runs) < f.Limit && scanned < maxListScan; {
		page, err := s.store.ListRuns(ctx, c.Tenant.ID, g)
		if err != nil {
			return nil, nil, err
		}
		for _, r := range page {
			if !all {
				err := s.authorizeRun(ctx, c, policy.ActionRunRead, r)
				if errors.Is(err, ErrForbidden) {
					continue
				}
				if err != nil {
					return nil, nil, err
				}
			}
			if runs = append(runs, r); len(runs) == f.Limit {
				break
			}
		}
		if len(page) < g.Limit {
			break // the tenant's runs are exhausted
		}
		last := page[len(page)-1]
		g.BeforeAt, g.BeforeID = &last.CreatedAt, last.ID
		scanned += len(page)
	}
	ids := make([]string, len(runs))
	for i, r := range runs {
		ids[i] = r.ID
	}
	nodes, err := s.store.RunsNodes(ctx, ids)
	return runs, nodes, err
}

// maxListScan bounds the runs one List reads to fill a filtered page.
const maxListScan = 5000

// Nodes returns a run's per-node results.
func (s *Service) Nodes(ctx context.Context, c Caller, id string) (store.Run, []store.NodeResult, error) {
	r, err := s.readable(ctx, c, id, policy.ActionRunRead)
	if err != nil {
		return store.Run{}, nil, err
	}
	nodes, err := s.store.RunNodes(ctx, r.ID)
	return r, nodes, err
}

// Output returns up to limit of a node's chunks after sequence after.
// Every read that returns output is audited.
func (s *Service) Output(ctx context.Context, c Caller, id, node string, after, limit int) ([]store.Chunk, error) {
	r, err := s.readable(ctx, c, id, policy.ActionOutputRead)
	if err != nil {
		return nil, err
	}
	if after < 0 {
		after = -1
	}
	if limit <= 0 || limit > 1000 {
		limit = 256
	}
	chunks, err := s.store.NodeOutput(ctx, r.ID, node, after, limit)
	if err != nil || len(chunks) == 0 {
		return chunks, err
	}
	served := 0
	for _, ch := range chunks {
		served += len(ch.Data)
	}
	ev := c.event(r.ID, audit.OutputRead, map[string]any{"from_seq": chunks[0].Seq, "to_seq": chunks[len(chunks)-1].Seq,
		"chunks": len(chunks), "bytes": served})
	ev.Node = node
	return chunks, s.auditRead(ctx, ev)
}

// StreamPage is a page of a run's stream.
type StreamPage struct {
	Run   store.Run
	Items []store.StreamItem
	// Cursor is the position after the last item.
	Cursor int64
	// Done is true when the run has ended and the page holds its last items.
	Done bool
	// Nodes holds the per-node results on the last page.
	Nodes []store.NodeResult
}

// Stream returns the run's output chunks and exits after cursor, waiting up
// to wait for new ones while the run goes on. Every page with output is
// audited.
func (s *Service) Stream(ctx context.Context, c Caller, id string, cursor int64, wait time.Duration, wake <-chan struct{}) (StreamPage, error) {
	r, err := s.readable(ctx, c, id, policy.ActionOutputRead)
	if err != nil {
		return StreamPage{}, err
	}
	deadline := time.Now().Add(wait)
	for {
		// Read the state before the items: a run seen terminal has all its
		// items committed, so an empty page after it is the end.
		r, err = s.store.GetRun(ctx, c.Tenant.ID, r.ID)
		if err != nil {
			return StreamPage{}, err
		}
		items, err := s.store.Stream(ctx, r.ID, cursor, 1000)
		if err != nil {
			return StreamPage{}, err
		}
		page := StreamPage{Run: r, Items: items, Cursor: cursor}
		if len(items) > 0 {
			page.Cursor = items[len(items)-1].StreamID
		}
		page.Done = store.Terminal(r.State) && len(items) < 1000
		if page.Done {
			if page.Nodes, err = s.store.RunNodes(ctx, r.ID); err != nil {
				return StreamPage{}, err
			}
		}
		if len(items) > 0 {
			// Every page that hands out output is an audited read: of
			// every node's output, as far as the page goes.
			err := s.auditRead(ctx, c.event(r.ID, audit.OutputRead, streamReadAudit(items, cursor, page.Cursor)))
			return page, err
		}
		if page.Done || !time.Now().Before(deadline) {
			return page, nil
		}
		t := time.NewTimer(min(time.Until(deadline), time.Second))
		select {
		case <-ctx.Done():
			// The client left or the server shuts down: the wait is over.
			t.Stop()
			return page, nil
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// auditRead records a read of archived output; output is not handed out
// when the read cannot be audited.
func (s *Service) auditRead(ctx context.Context, ev audit.Event) error {
	return audit.Record(ctx, s.store.Pool(), ev)
}

// streamReadAudit describes a stream page that handed out output: all the
// run's nodes, the bytes served and which nodes they came from.
func streamReadAudit(items []store.StreamItem, after, to int64) map[string]any {
	served, chunks := 0, 0
	nodes := map[string]bool{}
	for _, it := range items {
		if it.Kind == "output" {
			served += len(it.Data)
			chunks++
			nodes[it.Node] = true
		}
	}
	return map[string]any{"all_nodes": true, "stream": true, "after": after, "to": to, "items": len(items),
		"chunks": chunks, "bytes": served, "nodes": slices.Sorted(maps.Keys(nodes))}
}

// Cancel cancels a run: at once if it has not started, through its worker
// if it runs. It returns the run after the call. A cancel recorded before
// the run fired means it never fires (the worker's fire step is serialised
// with it on the run's row); the run's FiringAt tells the caller which.
func (s *Service) Cancel(ctx context.Context, c Caller, id string) (store.Run, error) {
	r, err := s.readable(ctx, c, id, policy.ActionExecCancel)
	if err != nil {
		return store.Run{}, err
	}
	err = s.store.InTx(ctx, func(tx pgx.Tx, q *store.Queries) error {
		cn, err := q.CancelRun(ctx, c.Tenant.ID, r.ID)
		if errors.Is(err, store.ErrNotFound) {
			return errorf(ErrConflict, "run %s is %s and cannot be cancelled", r.ID, r.State)
		}
		if err != nil {
			return err
		}
		var evs []audit.Event
		data := map[string]any{"fired": cn.Fired, "from_state": r.State}
		if cn.State == store.StateCancelled {
			// It had not started: it ends here, with its nodes.
			data["nodes"] = store.NodeCounts{Targets: len(cn.Nodes), Cancelled: len(cn.Nodes)}
			evs = append(jobs.CancelledNodes(c.event(r.ID, "", nil), cn.Nodes), c.event(r.ID, audit.RunCancelled, data))
		} else {
			evs = []audit.Event{c.event(r.ID, audit.RunCancelAsked, data)}
		}
		if err := audit.Record(ctx, tx, evs...); err != nil {
			return err
		}
		// The answer is the run as the cancel left it, not as its worker
		// (told at once) may already have ended it: "running" with a cancel
		// requested says the run may have fired.
		if r, err = q.GetRun(ctx, c.Tenant.ID, r.ID); err != nil {
			return err
		}
		return q.NotifyRun(ctx, r.ID)
	})
	if err != nil {
		return store.Run{}, err
	}
	return r, nil
}
