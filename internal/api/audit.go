package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/service"
)

// AuditEvent is an audit event as the API shows it.
type AuditEvent struct {
	ID         int64           `json:"id"`
	Time       time.Time       `json:"time"`
	Type       string          `json:"type"`
	Actor      string          `json:"actor"`
	Run        string          `json:"run,omitempty"`
	Node       string          `json:"node,omitempty"`
	RequestID  string          `json:"request_id,omitempty"`
	ClientAddr string          `json:"client_addr,omitempty"`
	OSUser     string          `json:"os_user,omitempty"`
	Data       json.RawMessage `json:"data"`
	// Body is the event's canonical encoding as stored: the leaf of the
	// tenant's transparency log (docs/audit.md).
	Body string `json:"body"`
	// Leaf is the event's index in the log, in a -follow stream.
	Leaf *int64 `json:"leaf,omitempty"`
}

// AuditPage is a page of audit events, newest first; Next is the cursor of
// the next page, absent after the last.
type AuditPage struct {
	Events []AuditEvent `json:"events"`
	Next   string       `json:"next,omitempty"`
}

// auditParams are the query parameters of GET /v1/audit.
var auditParams = []string{"since", "until", "principal", "node", "service", "command", "state", "exit_code", "approver", "type", "run", "limit", "cursor"}

func (s *server) audit(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	f, err := decodeAuditQuery(r.URL.Query(), time.Now())
	if err != nil {
		return err
	}
	p, err := s.cfg.Service.QueryAudit(r.Context(), c, f)
	if err != nil {
		return err
	}
	out := AuditPage{Events: make([]AuditEvent, len(p.Events)), Next: p.Next}
	for i, e := range p.Events {
		out.Events[i] = AuditEvent{ID: e.ID, Time: e.Time, Type: e.Type, Actor: e.Actor, Run: e.RunID, Node: e.Node,
			RequestID: e.RequestID, ClientAddr: e.ClientAddr, OSUser: e.OSUser, Data: e.Data, Body: e.Body}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// decodeAuditQuery turns GET /v1/audit's query into a filter; relative
// times are before now. The audit package checks what it knows (states,
// types, the cursor).
func decodeAuditQuery(q url.Values, now time.Time) (audit.Filter, error) {
	p := params{q: q, now: now}
	if err := p.only(auditParams); err != nil {
		return audit.Filter{}, err
	}
	c, err := p.filters(audit.LimitMax)
	if err != nil {
		return audit.Filter{}, err
	}
	f := audit.Filter{Since: c.since, Until: c.until, Principal: c.principal, Node: c.node, Service: c.service,
		Command: c.command, State: c.state, ExitCode: c.exitCode, Approver: c.approver, Limit: c.limit}
	if f.RunID, err = p.text("run"); err != nil {
		return audit.Filter{}, err
	}
	if f.Cursor, err = p.text("cursor"); err != nil {
		return audit.Filter{}, err
	}
	// Types: repeated, or a comma list.
	for _, v := range q["type"] {
		if err := checkQueryText("type", v); err != nil {
			return audit.Filter{}, err
		}
		for t := range strings.SplitSeq(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				f.Types = append(f.Types, t)
			}
		}
	}
	return f, nil
}
