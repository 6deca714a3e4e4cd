package api

import (
	"net/http"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/rexec/rexec/internal/auditproof"
	"github.com/rexec/rexec/internal/service"
)

// The tenant's transparency log, for `rexec-cli audit checkpoint|verify|
// prove` (docs/audit.md).

// Checkpoint is a signed checkpoint.
type Checkpoint struct {
	Size int64     `json:"size"`
	Time time.Time `json:"time"`
	// Note is the signed note: the checkpoint text and its signature.
	Note string `json:"note"`
}

// CheckpointList is a page of checkpoints, smallest first.
type CheckpointList struct {
	Checkpoints []Checkpoint `json:"checkpoints"`
}

// Leaf is a log entry: an event's body at its index, and the leaf hash
// stored when it was logged. Body is null when the event is gone.
type Leaf struct {
	Index   int64     `json:"index"`
	EventID int64     `json:"event_id"`
	Body    *string   `json:"body"`
	Hash    tlog.Hash `json:"hash"`
}

// LeafList is a page of leaves.
type LeafList struct {
	Leaves []Leaf `json:"leaves"`
}

// ConsistencyProof proves that the log at Size extends the log at Old.
type ConsistencyProof struct {
	Old   int64          `json:"old"`
	Size  int64          `json:"size"`
	Proof tlog.TreeProof `json:"proof"`
}

func (s *server) auditCheckpoint(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	p, err := logParams(r, "size")
	if err != nil {
		return err
	}
	size, err := p.int("size", 0)
	if err != nil {
		return err
	}
	cp, err := s.cfg.Service.AuditCheckpoint(r.Context(), c, size)
	if err != nil {
		return err
	}
	writeJSON(w, 200, Checkpoint{Size: cp.Size, Time: cp.Time, Note: cp.Note})
	return nil
}

func (s *server) auditCheckpoints(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	p, err := logParams(r, "after", "limit")
	if err != nil {
		return err
	}
	after, err := p.int("after", 0)
	if err != nil {
		return err
	}
	limit, err := p.int("limit", auditproof.CheckpointPage)
	if err != nil {
		return err
	}
	cps, err := s.cfg.Service.AuditCheckpoints(r.Context(), c, after, int(limit))
	if err != nil {
		return err
	}
	out := CheckpointList{Checkpoints: make([]Checkpoint, len(cps))}
	for i, cp := range cps {
		out.Checkpoints[i] = Checkpoint{Size: cp.Size, Time: cp.Time, Note: cp.Note}
	}
	writeJSON(w, 200, out)
	return nil
}

func (s *server) auditLeaves(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	p, err := logParams(r, "from", "to", "start")
	if err != nil {
		return err
	}
	from, err := p.int("from", 0)
	if err != nil {
		return err
	}
	to, err := p.int("to", from+auditproof.LeafPage)
	if err != nil {
		return err
	}
	start, err := p.bool("start")
	if err != nil {
		return err
	}
	leaves, err := s.cfg.Service.AuditLeaves(r.Context(), c, from, to, start)
	if err != nil {
		return err
	}
	out := LeafList{Leaves: make([]Leaf, len(leaves))}
	for i, l := range leaves {
		out.Leaves[i] = Leaf{Index: l.Index, EventID: l.EventID, Hash: l.Hash}
		if l.Body != nil {
			b := string(l.Body)
			out.Leaves[i].Body = &b
		}
	}
	writeJSON(w, 200, out)
	return nil
}

func (s *server) auditConsistency(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	p, err := logParams(r, "old", "size")
	if err != nil {
		return err
	}
	old, err := p.int("old", 0)
	if err != nil {
		return err
	}
	size, err := p.int("size", 0)
	if err != nil {
		return err
	}
	proof, err := s.cfg.Service.AuditConsistency(r.Context(), c, old, size)
	if err != nil {
		return err
	}
	writeJSON(w, 200, ConsistencyProof{Old: old, Size: size, Proof: proof})
	return nil
}

func (s *server) auditBundle(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	if _, err := logParams(r); err != nil {
		return err
	}
	b, err := s.cfg.Service.AuditBundle(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, 200, b)
	return nil
}

// logParams reads the log endpoints' parameters: only the named ones,
// each at most once.
func logParams(r *http.Request, names ...string) (params, error) {
	p := params{q: r.URL.Query()}
	return p, p.only(names)
}
