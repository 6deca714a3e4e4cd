package auditlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/auditproof"
)

const (
	queryLatest = `SELECT size, note, created_at FROM audit_checkpoints
		WHERE log_id = $1 ORDER BY size DESC LIMIT 1`
	queryCheckpoints = `SELECT size, note, created_at FROM audit_checkpoints
		WHERE log_id = $1 AND size > $2 ORDER BY size LIMIT $3`
	queryCheckpointAt = `SELECT size, note, created_at FROM audit_checkpoints
		WHERE log_id = $1 AND size = $2`
	// A leaf whose event is gone still comes back, with no body: the
	// verifier names it.
	queryLeaves = `SELECT l.idx, l.event_id, e.body FROM audit_leaves l
		LEFT JOIN audit_events e ON e.id = l.event_id
		WHERE l.log_id = $1 AND l.idx >= $2 AND l.idx < $3 ORDER BY l.idx`
	queryRunLeaves = `SELECT l.idx, e.body FROM audit_events e
		JOIN audit_leaves l ON l.event_id = e.id AND l.log_id = $1
		WHERE e.run_id = $2 AND l.idx < $3 ORDER BY l.idx`
)

// Checkpoint is a signed checkpoint as stored.
type Checkpoint struct {
	Size int64
	Note string // the signed note
	Time time.Time
}

// Latest returns a log's latest checkpoint, or ErrEmpty.
func (l *Log) Latest(ctx context.Context, logID int64) (Checkpoint, error) {
	var c Checkpoint
	err := l.pool.QueryRow(ctx, queryLatest, logID).Scan(&c.Size, &c.Note, &c.Time)
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, ErrEmpty
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("latest checkpoint: %w", err)
	}
	return c, nil
}

// CheckpointAt returns the checkpoint signed for exactly size events.
func (l *Log) CheckpointAt(ctx context.Context, logID, size int64) (Checkpoint, error) {
	var c Checkpoint
	err := l.pool.QueryRow(ctx, queryCheckpointAt, logID, size).Scan(&c.Size, &c.Note, &c.Time)
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{}, ErrNotFound
	}
	if err != nil {
		return Checkpoint{}, fmt.Errorf("checkpoint: %w", err)
	}
	return c, nil
}

// Checkpoints returns up to limit checkpoints of more than after events,
// smallest first.
func (l *Log) Checkpoints(ctx context.Context, logID, after int64, limit int) ([]Checkpoint, error) {
	rows, err := l.pool.Query(ctx, queryCheckpoints, logID, after, limit)
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Checkpoint, error) {
		var c Checkpoint
		return c, r.Scan(&c.Size, &c.Note, &c.Time)
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoints: %w", err)
	}
	return cs, nil
}

// Leaves returns the leaves [from, to) with their events' bodies and the
// leaf hashes stored when they were logged.
func (l *Log) Leaves(ctx context.Context, logID, from, to int64) ([]auditproof.Leaf, error) {
	if from < 0 || to < from {
		return nil, fmt.Errorf("leaves [%d, %d): bad range", from, to)
	}
	rows, err := l.pool.Query(ctx, queryLeaves, logID, from, to)
	if err != nil {
		return nil, fmt.Errorf("leaves: %w", err)
	}
	leaves, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (auditproof.Leaf, error) {
		var lf auditproof.Leaf
		var body *string
		if err := r.Scan(&lf.Index, &lf.EventID, &body); err != nil {
			return lf, err
		}
		if body != nil {
			lf.Body = []byte(*body)
		}
		return lf, nil
	})
	if err != nil {
		return nil, fmt.Errorf("leaves: %w", err)
	}
	// A leaf hash that is gone is left zero: the verifier names the leaf,
	// where an error here would only fail the read.
	idx := make([]int64, len(leaves))
	for i, lf := range leaves {
		idx[i] = tlog.StoredHashIndex(0, lf.Index)
	}
	stored := map[int64]tlog.Hash{}
	rows, err = l.pool.Query(ctx, queryHashes, logID, idx)
	if err != nil {
		return nil, fmt.Errorf("leaf hashes: %w", err)
	}
	var (
		x int64
		h []byte
	)
	if _, err := pgx.ForEachRow(rows, []any{&x, &h}, func() error {
		if len(h) == tlog.HashSize {
			stored[x] = tlog.Hash(h)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("leaf hashes: %w", err)
	}
	for i := range leaves {
		leaves[i].Hash = stored[idx[i]]
	}
	return leaves, nil
}

// reader reads stored hashes outside any transaction.
func (l *Log) reader(ctx context.Context, logID int64) *hashReader {
	return &hashReader{ctx: ctx, q: l.pool, logID: logID, cache: map[int64]tlog.Hash{}}
}

// ProveInclusion proves that leaf is in the tree of size events.
func (l *Log) ProveInclusion(ctx context.Context, logID, leaf, size int64) (tlog.RecordProof, error) {
	if leaf < 0 || leaf >= size {
		return nil, fmt.Errorf("%w: leaf %d in a tree of %d", ErrNotFound, leaf, size)
	}
	p, err := tlog.ProveRecord(size, leaf, l.reader(ctx, logID))
	if err != nil {
		return nil, fmt.Errorf("prove leaf %d: %w", leaf, err)
	}
	return p, nil
}

// ProveConsistency proves that the tree of size events extends the tree
// of old events.
func (l *Log) ProveConsistency(ctx context.Context, logID, old, size int64) (tlog.TreeProof, error) {
	if old <= 0 || old > size {
		return nil, fmt.Errorf("%w: a tree of %d in one of %d", ErrNotFound, old, size)
	}
	p, err := tlog.ProveTree(size, old, l.reader(ctx, logID))
	if err != nil {
		return nil, fmt.Errorf("prove %d extends %d: %w", size, old, err)
	}
	return p, nil
}

// RunBundle returns a run's logged events with inclusion proofs in the
// log's latest checkpoint, and that checkpoint's size. Events not yet
// logged are left out.
func (l *Log) RunBundle(ctx context.Context, logID int64, runID string) (auditproof.Bundle, int64, error) {
	cp, err := l.Latest(ctx, logID)
	if err != nil {
		return auditproof.Bundle{}, 0, err
	}
	rows, err := l.pool.Query(ctx, queryRunLeaves, logID, runID, cp.Size)
	if err != nil {
		return auditproof.Bundle{}, 0, fmt.Errorf("run events: %w", err)
	}
	events, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (auditproof.BundleEvent, error) {
		var e auditproof.BundleEvent
		return e, r.Scan(&e.Leaf, &e.Body)
	})
	if err != nil {
		return auditproof.Bundle{}, 0, fmt.Errorf("run events: %w", err)
	}
	if len(events) == 0 {
		return auditproof.Bundle{}, 0, fmt.Errorf("%w: no logged event of run %s", ErrNotFound, runID)
	}
	r := l.reader(ctx, logID)
	for i := range events {
		p, err := tlog.ProveRecord(cp.Size, events[i].Leaf, r)
		if err != nil {
			return auditproof.Bundle{}, 0, fmt.Errorf("prove leaf %d: %w", events[i].Leaf, err)
		}
		events[i].Proof = p
	}
	origin, _, _ := strings.Cut(cp.Note, "\n")
	return auditproof.Bundle{Format: auditproof.BundleFormat, Origin: origin, Run: runID, Checkpoint: cp.Note, Events: events}, cp.Size, nil
}
