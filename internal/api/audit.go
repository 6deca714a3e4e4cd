package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
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

// filters are the filters that runs and audit events share.
type filters struct {
	since, until                                       time.Time
	principal, node, service, command, state, approver string
	exitCode                                           *int
	limit                                              int
}

// filters reads the shared filters; limit is 1 to limitMax, 0 when not
// given.
func (p params) filters(limitMax int) (filters, error) {
	var f filters
	var err error
	for _, t := range []struct {
		name string
		dst  *string
	}{
		{"principal", &f.principal}, {"node", &f.node}, {"service", &f.service}, {"command", &f.command},
		{"state", &f.state}, {"approver", &f.approver},
	} {
		if *t.dst, err = p.text(t.name); err != nil {
			return filters{}, err
		}
	}
	if f.since, err = p.time("since"); err != nil {
		return filters{}, err
	}
	if f.until, err = p.time("until"); err != nil {
		return filters{}, err
	}
	if f.exitCode, err = p.exitCode(); err != nil {
		return filters{}, err
	}
	if f.limit, err = p.limit(limitMax); err != nil {
		return filters{}, err
	}
	return f, nil
}

// params reads filter parameters of a query, each given at most once.
type params struct {
	q   url.Values
	now time.Time
}

// only refuses a parameter not in names: a misspelt filter would
// otherwise be dropped, and the answer hold everything.
func (p params) only(names []string) error {
	for k := range p.q {
		if !slices.Contains(names, k) {
			return invalid("unknown query parameter %q (known: %s)", k, strings.Join(names, ", "))
		}
	}
	return nil
}

// text returns a parameter given at most once, as text the database can
// hold.
func (p params) text(name string) (string, error) {
	vs := p.q[name]
	if len(vs) > 1 {
		return "", invalid("%s is given %d times; give it once", name, len(vs))
	}
	if len(vs) == 0 {
		return "", nil
	}
	return vs[0], checkQueryText(name, vs[0])
}

// relative is a duration before now: a number and a unit, d for days.
var relative = regexp.MustCompile(`^([0-9]+)([dhms])$`)

// time reads an RFC 3339 time, or a duration before now such as 7d, 12h,
// 30m or a Go duration (1h30m).
func (p params) time(name string) (time.Time, error) {
	v, err := p.text(name)
	if err != nil || v == "" {
		return time.Time{}, err
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	var d time.Duration
	if m := relative.FindStringSubmatch(v); m != nil {
		n, err := strconv.ParseInt(m[1], 10, 32)
		if err == nil && n <= 100*365 {
			unit := map[string]time.Duration{"d": 24 * time.Hour, "h": time.Hour, "m": time.Minute, "s": time.Second}[m[2]]
			d = time.Duration(n) * unit
		}
	} else if gd, err := time.ParseDuration(v); err == nil && gd > 0 {
		d = gd
	}
	if d <= 0 {
		return time.Time{}, invalid("%s: %q is neither an RFC 3339 time (2006-01-02T15:04:05Z) nor a duration before now (7d, 12h, 30m)", name, v)
	}
	return p.now.Add(-d), nil
}

// exitCode reads exit_code, an integer.
func (p params) exitCode() (*int, error) {
	v, err := p.text("exit_code")
	if err != nil || v == "" {
		return nil, err
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return nil, invalid("exit_code must be an integer, not %q", v)
	}
	code := int(n)
	return &code, nil
}

// limit reads limit, 1 to most; 0 when not given.
func (p params) limit(most int) (int, error) {
	v, err := p.text("limit")
	if err != nil || v == "" {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > most {
		return 0, invalid("limit must be between 1 and %d", most)
	}
	return n, nil
}
