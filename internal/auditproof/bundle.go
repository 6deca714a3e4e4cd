package auditproof

import (
	"encoding/json"
	"fmt"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// BundleFormat names the bundle's layout; a reader refuses others.
const BundleFormat = "rexec-audit-bundle/v1"

// Bundle is a run's events with inclusion proofs in the log, and the
// signed checkpoint they lead to: everything needed to show, offline, that
// these events are in the log the key signed.
type Bundle struct {
	Format     string        `json:"format"`
	Origin     string        `json:"origin"`
	Run        string        `json:"run"`
	Checkpoint string        `json:"checkpoint"` // the signed note
	Events     []BundleEvent `json:"events"`
}

// BundleEvent is one event and its inclusion proof.
type BundleEvent struct {
	Leaf  int64            `json:"leaf"`
	Body  string           `json:"body"`
	Proof tlog.RecordProof `json:"proof"`
}

// Verify checks every event's inclusion in the checkpoint the key signed,
// and that each event is about the bundle's run.
func (b *Bundle) Verify(key note.Verifier) (Checkpoint, error) {
	if b.Format != BundleFormat {
		return Checkpoint{}, fmt.Errorf("not a %s bundle (format %q)", BundleFormat, b.Format)
	}
	cp, err := Open([]byte(b.Checkpoint), key)
	if err != nil {
		return Checkpoint{}, err
	}
	if cp.Origin != b.Origin {
		return Checkpoint{}, fmt.Errorf("the checkpoint is of log %q, the bundle says %q", cp.Origin, b.Origin)
	}
	if len(b.Events) == 0 {
		return Checkpoint{}, fmt.Errorf("the bundle holds no events")
	}
	for i, e := range b.Events {
		var body struct {
			Run string `json:"run"`
		}
		if err := json.Unmarshal([]byte(e.Body), &body); err != nil {
			return Checkpoint{}, fmt.Errorf("event %d (leaf %d): body: %w", i, e.Leaf, err)
		}
		if body.Run != b.Run {
			return Checkpoint{}, fmt.Errorf("event %d (leaf %d) is about run %q, not %q", i, e.Leaf, body.Run, b.Run)
		}
		if e.Leaf < 0 || e.Leaf >= cp.Size {
			return Checkpoint{}, fmt.Errorf("event %d: leaf %d is outside the checkpoint's %d events", i, e.Leaf, cp.Size)
		}
		if err := tlog.CheckRecord(e.Proof, cp.Size, cp.Root, e.Leaf, LeafHash([]byte(e.Body))); err != nil {
			return Checkpoint{}, fmt.Errorf("event %d (leaf %d) is not in the log the checkpoint signs: %w", i, e.Leaf, err)
		}
	}
	return cp, nil
}
