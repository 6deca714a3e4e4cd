package auditproof

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Source is one log as a server hands it over. Nothing it returns is
// trusted: VerifyLog checks all of it.
type Source interface {
	// Latest returns the latest signed checkpoint.
	Latest(ctx context.Context) ([]byte, error)
	// Checkpoints returns up to limit signed checkpoints of more than
	// after events, smallest first.
	Checkpoints(ctx context.Context, after int64, limit int) ([][]byte, error)
	// Leaves returns the leaves [from, to), in order.
	Leaves(ctx context.Context, from, to int64) ([]Leaf, error)
	// Consistency proves that the tree of size events extends the tree
	// of old events.
	Consistency(ctx context.Context, old, size int64) (tlog.TreeProof, error)
}

// Page sizes for reading a Source.
const (
	CheckpointPage = 1000
	LeafPage       = 5000
)

// VerifyLog recomputes a log from its leaves and checks it against every
// checkpoint the source signed, and against kept, an older checkpoint the
// auditor kept (optional): the log must extend it, by a consistency proof
// and by the recomputed tree. A tampered log gives a *Mismatch naming the
// first event that does not match.
func VerifyLog(ctx context.Context, src Source, key note.Verifier, kept []byte) (Result, error) {
	raw, err := src.Latest(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("latest checkpoint: %w", err)
	}
	latest, err := Open(raw, key)
	if err != nil {
		return Result{}, fmt.Errorf("latest checkpoint: %w", err)
	}
	var others []Checkpoint
	if kept != nil {
		k, err := Open(kept, key)
		if err != nil {
			return Result{}, fmt.Errorf("kept checkpoint: %w", err)
		}
		if k.Origin != latest.Origin {
			return Result{}, fmt.Errorf("the kept checkpoint is of log %q, the server's of %q", k.Origin, latest.Origin)
		}
		if k.Size > latest.Size {
			return Result{}, &Mismatch{Leaf: latest.Size, Reason: fmt.Sprintf(
				"the log was truncated: your kept checkpoint was signed for %d events, the log now ends at %d", k.Size, latest.Size)}
		}
		proof, err := src.Consistency(ctx, k.Size, latest.Size)
		if err != nil {
			return Result{}, fmt.Errorf("consistency proof: %w", err)
		}
		if err := CheckConsistency(k, latest, proof); err != nil {
			return Result{}, &Mismatch{Leaf: k.Size - 1, Reason: err.Error()}
		}
		others = append(others, k)
	}
	v, err := NewVerifier(latest, others...)
	if err != nil {
		return Result{}, err
	}
	// Checkpoints are read a page at a time, ahead of the leaves they
	// check: a long log has millions.
	after, more := int64(0), true
	expectUpTo := func(size int64) error {
		for more && after < size {
			page, err := src.Checkpoints(ctx, after, CheckpointPage)
			if err != nil {
				return fmt.Errorf("checkpoints: %w", err)
			}
			for _, raw := range page {
				c, err := Open(raw, key)
				if err != nil {
					return fmt.Errorf("checkpoint after %d events: %w", after, err)
				}
				if c.Size <= after {
					return fmt.Errorf("checkpoints out of order: %d after %d", c.Size, after)
				}
				after = c.Size
				if c.Size < latest.Size && c.Size > v.next {
					if err := v.Expect(c); err != nil {
						return err
					}
				}
			}
			more = len(page) == CheckpointPage && after < latest.Size
		}
		return nil
	}
	for from := int64(0); from < latest.Size; {
		to := min(from+LeafPage, latest.Size)
		if err := expectUpTo(to); err != nil {
			return Result{}, err
		}
		leaves, err := src.Leaves(ctx, from, to)
		if err != nil {
			return Result{}, fmt.Errorf("leaves from %d: %w", from, err)
		}
		for _, l := range leaves {
			if err := v.Add(l); err != nil {
				return Result{}, err
			}
		}
		if len(leaves) == 0 {
			break
		}
		from = leaves[len(leaves)-1].Index + 1
	}
	return v.Finish()
}

// IsMismatch reports whether err shows the log was tampered with (as
// opposed to failing to read it).
func IsMismatch(err error) bool {
	var m *Mismatch
	return errors.As(err, &m) || errors.Is(err, ErrSignature)
}
