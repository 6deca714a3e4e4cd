package auditproof

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/tlog"
)

// Leaf is one entry of the log as the server hands it over.
type Leaf struct {
	Index   int64
	EventID int64
	// Body is the event's canonical body; nil when the server has a leaf
	// whose event is gone.
	Body []byte
	// Hash is the leaf hash the server stored when it logged the event.
	Hash tlog.Hash
}

// Mismatch is the first thing that does not match: the event an auditor
// should look at, and why.
type Mismatch struct {
	Leaf    int64 // index in the log
	EventID int64 // 0 when not known
	Reason  string
}

func (m *Mismatch) Error() string {
	if m.EventID != 0 {
		return fmt.Sprintf("event %d (leaf %d): %s", m.EventID, m.Leaf, m.Reason)
	}
	return fmt.Sprintf("leaf %d: %s", m.Leaf, m.Reason)
}

// Verifier recomputes a log from its leaves, in order, and checks the tree
// against every signed checkpoint along the way: the first checkpoint the
// recomputed tree disagrees with bounds where the log was changed, and the
// leaf hashes the server stored narrow it to the event.
type Verifier struct {
	checkpoints []Checkpoint // ascending size, distinct
	latest      Checkpoint
	rng         *compact.Range
	next        int64
	// rangeStart is the first leaf after the last checkpoint matched, and
	// rangeEvent its event.
	rangeStart int64
	rangeEvent int64
}

// NewVerifier checks a log up to latest, against latest and every other
// checkpoint given or later expected (each already opened with the log's
// key: see Open). A checkpoint beyond latest is an error: the log lost
// events.
func NewVerifier(latest Checkpoint, others ...Checkpoint) (*Verifier, error) {
	v := &Verifier{latest: latest}
	f := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
	v.rng = f.NewEmptyRange(0)
	for _, c := range append([]Checkpoint{latest}, others...) {
		if err := v.Expect(c); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Expect adds a checkpoint the recomputed tree must match when it reaches
// the checkpoint's size. Checkpoints may come as the leaves do, a page at a
// time, so that a long log's are never all held at once.
func (v *Verifier) Expect(c Checkpoint) error {
	switch {
	case c.Origin != v.latest.Origin:
		return fmt.Errorf("checkpoint of another log: %q, not %q", c.Origin, v.latest.Origin)
	case c.Size > v.latest.Size:
		return &Mismatch{Leaf: v.latest.Size, Reason: fmt.Sprintf(
			"the log was truncated: a checkpoint signed for %d events exists, and the log now ends at %d", c.Size, v.latest.Size)}
	case c.Size <= v.next:
		return fmt.Errorf("checkpoint of %d events comes after leaf %d was checked", c.Size, v.next)
	}
	i, found := slices.BinarySearchFunc(v.checkpoints, c.Size, func(e Checkpoint, size int64) int { return cmp.Compare(e.Size, size) })
	if found {
		if v.checkpoints[i].Root != c.Root {
			return &Mismatch{Leaf: c.Size - 1, Reason: fmt.Sprintf(
				"two checkpoints signed for %d events disagree on the root: the log forked", c.Size)}
		}
		return nil
	}
	v.checkpoints = slices.Insert(v.checkpoints, i, c)
	return nil
}

// Add takes the next leaf. It returns a *Mismatch at the first leaf that
// shows the log was changed.
func (v *Verifier) Add(l Leaf) error {
	switch {
	case l.Index >= v.latest.Size && l.Index >= v.next:
		return nil // logged after the checkpoint being verified
	case l.Index != v.next:
		return &Mismatch{Leaf: v.next, Reason: fmt.Sprintf("missing: the log skips from leaf %d to %d", v.next, l.Index)}
	case l.Body == nil:
		return &Mismatch{Leaf: l.Index, EventID: l.EventID, Reason: "the event was deleted from the database"}
	case l.Hash == tlog.Hash{}:
		return &Mismatch{Leaf: l.Index, EventID: l.EventID, Reason: "no leaf hash is stored for it: the tree was changed"}
	}
	if v.next == v.rangeStart {
		v.rangeEvent = l.EventID
	}
	h := LeafHash(l.Body)
	if h != l.Hash {
		return &Mismatch{Leaf: l.Index, EventID: l.EventID, Reason: "its body does not hash to the leaf logged at this position: the event was changed, moved or inserted after it was logged"}
	}
	if err := v.rng.Append(h[:], nil); err != nil {
		return fmt.Errorf("append leaf %d: %w", l.Index, err)
	}
	v.next++
	for len(v.checkpoints) > 0 && v.checkpoints[0].Size == v.next {
		c := v.checkpoints[0]
		v.checkpoints = v.checkpoints[1:]
		root, err := v.rng.GetRootHash(nil)
		if err != nil {
			return fmt.Errorf("root at %d: %w", v.next, err)
		}
		if !bytes.Equal(root, c.Root[:]) {
			return &Mismatch{Leaf: v.rangeStart, EventID: v.rangeEvent, Reason: fmt.Sprintf(
				"the events from this leaf to leaf %d do not hash to the root signed for %d events: one of them was changed, inserted, removed or moved",
				c.Size-1, c.Size)}
		}
		v.rangeStart = v.next
	}
	return nil
}

// Result is what a successful verification shows.
type Result struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// Finish checks that every leaf up to the latest checkpoint came.
func (v *Verifier) Finish() (Result, error) {
	if v.next < v.latest.Size {
		return Result{}, &Mismatch{Leaf: v.next, Reason: fmt.Sprintf(
			"missing: the log ends at %d events but its checkpoint was signed for %d", v.next, v.latest.Size)}
	}
	return Result{Origin: v.latest.Origin, Size: v.latest.Size, Root: v.latest.Root}, nil
}
