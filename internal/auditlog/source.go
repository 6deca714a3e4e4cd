package auditlog

import (
	"context"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/auditproof"
)

// Source returns one log as an auditproof.Source, read straight from the
// database (the API serves the same through HTTP).
func (l *Log) Source(logID int64) auditproof.Source { return source{l, logID} }

type source struct {
	l  *Log
	id int64
}

func (s source) Latest(ctx context.Context) ([]byte, error) {
	c, err := s.l.Latest(ctx, s.id)
	return []byte(c.Note), err
}

func (s source) Checkpoints(ctx context.Context, after int64, limit int) ([][]byte, error) {
	cs, err := s.l.Checkpoints(ctx, s.id, after, limit)
	out := make([][]byte, len(cs))
	for i, c := range cs {
		out[i] = []byte(c.Note)
	}
	return out, err
}

func (s source) Leaves(ctx context.Context, from, to int64) ([]auditproof.Leaf, error) {
	return s.l.Leaves(ctx, s.id, from, to)
}

func (s source) Consistency(ctx context.Context, old, size int64) (tlog.TreeProof, error) {
	return s.l.ProveConsistency(ctx, s.id, old, size)
}
