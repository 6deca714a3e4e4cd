package api

import (
	"net/http"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/auditproof"
	"github.com/rexec/rexec/internal/service"
)

// The tenant's transparency log, for `rexec-cli audit checkpoint|verify|
// prove` (docs/audit.md).

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
	writeJSON(w, 200, apitype.Checkpoint{Size: cp.Size, Time: cp.Time, Note: cp.Note})
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
	out := apitype.CheckpointList{Checkpoints: make([]apitype.Checkpoint, len(cps))}
	for i, cp := range cps {
		out.Checkpoints[i] = apitype.Checkpoint{Size: cp.Size, Time: cp.Time, Note: cp.Note}
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
	out := apitype.LeafList{Leaves: make([]apitype.Leaf, len(leaves))}
	for i, l := range leaves {
		out.Leaves[i] = apitype.Leaf{Index: l.Index, EventID: l.EventID, Hash: l.Hash}
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
	writeJSON(w, 200, apitype.ConsistencyProof{Old: old, Size: size, Proof: proof})
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
