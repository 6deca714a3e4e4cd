package client

import (
	"context"
	"fmt"
	"net/url"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/auditproof"
)

// AuditCheckpoint returns the latest signed checkpoint of the caller's
// tenant's log, or the one for exactly size events when size > 0.
func (c *Client) AuditCheckpoint(ctx context.Context, size int64) (apitype.Checkpoint, error) {
	var out apitype.Checkpoint
	path := "/v1/audit/checkpoint"
	if size > 0 {
		path += fmt.Sprintf("?size=%d", size)
	}
	return out, c.do(ctx, "GET", path, nil, &out)
}

// AuditBundle returns a run's events with inclusion proofs.
func (c *Client) AuditBundle(ctx context.Context, runID string) (auditproof.Bundle, error) {
	var out auditproof.Bundle
	return out, c.do(ctx, "GET", "/v1/runs/"+url.PathEscape(runID)+"/audit-bundle", nil, &out)
}

// AuditLeaves returns the leaves [from, to); start marks the first read
// of an export that does not begin at 0 (the server audits it).
func (c *Client) AuditLeaves(ctx context.Context, from, to int64, start bool) ([]auditproof.Leaf, error) {
	var out apitype.LeafList
	path := fmt.Sprintf("/v1/audit/leaves?from=%d&to=%d", from, to)
	if start {
		path += "&start=true"
	}
	if err := c.do(ctx, "GET", path, nil, &out); err != nil {
		return nil, err
	}
	leaves := make([]auditproof.Leaf, len(out.Leaves))
	for i, l := range out.Leaves {
		leaves[i] = auditproof.Leaf{Index: l.Index, EventID: l.EventID, Hash: l.Hash}
		if l.Body != nil {
			leaves[i].Body = []byte(*l.Body)
		}
	}
	return leaves, nil
}

// AuditLog returns the caller's tenant's log as an auditproof.Source.
func (c *Client) AuditLog() auditproof.Source { return auditSource{c} }

type auditSource struct{ c *Client }

func (s auditSource) Latest(ctx context.Context) ([]byte, error) {
	cp, err := s.c.AuditCheckpoint(ctx, 0)
	return []byte(cp.Note), err
}

func (s auditSource) Checkpoints(ctx context.Context, after int64, limit int) ([][]byte, error) {
	var out apitype.CheckpointList
	if err := s.c.do(ctx, "GET", fmt.Sprintf("/v1/audit/checkpoints?after=%d&limit=%d", after, limit), nil, &out); err != nil {
		return nil, err
	}
	notes := make([][]byte, len(out.Checkpoints))
	for i, cp := range out.Checkpoints {
		notes[i] = []byte(cp.Note)
	}
	return notes, nil
}

func (s auditSource) Leaves(ctx context.Context, from, to int64) ([]auditproof.Leaf, error) {
	return s.c.AuditLeaves(ctx, from, to, false)
}

func (s auditSource) Consistency(ctx context.Context, old, size int64) (tlog.TreeProof, error) {
	var out apitype.ConsistencyProof
	err := s.c.do(ctx, "GET", fmt.Sprintf("/v1/audit/consistency?old=%d&size=%d", old, size), nil, &out)
	return out.Proof, err
}
