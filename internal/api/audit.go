package api

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/service"
)

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
	out := apitype.AuditPage{Events: make([]apitype.AuditEvent, len(p.Events)), Next: p.Next}
	for i, e := range p.Events {
		out.Events[i] = apitype.AuditEvent{ID: e.ID, Time: e.Time, Type: e.Type, Actor: e.Actor, Run: e.RunID, Node: e.Node,
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
