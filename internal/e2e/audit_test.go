package e2e_test

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
)

// TestAuditQueries: a run on three nodes, one of which fails, queried
// through rexec-cli audit by node, exit code, principal and run, as a
// table, JSON, NDJSON and CSV; the same filters on jobs list; another
// tenant's auditor sees none of it; a submitter may not query; each query
// is audited once.
func TestAuditQueries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	auditor := e.newToken("acme", "erin", "auditor")
	sam := e.newToken("acme", "sam", "submitter")
	e.svc("tenant", "create", "other", "-consul-addr", e.cluster.Agent("web-2").HTTPAddr(), "-prefix", e.prefix)
	otherAuditor := e.newToken("other", "oscar", "auditor")

	// alice (e.token) runs on three nodes, db-1 fails; sam runs on one.
	res := e.cli(nil, "exec", "-verbose", "-node", "^(web-1|web-2|db-1)$", "case $(basename $PWD) in db-1) exit 1;; *) exit 0;; esac")
	if res.code != 2 {
		t.Fatalf("exec: exit %d, want 2\n%s%s", res.code, res.stdout, res.stderr)
	}
	run1 := runID(t, res.stderr)
	res = e.cliAs(sam, nil, "exec", "-verbose", "-node", "^web-1$", "true")
	if res.code != 0 {
		t.Fatalf("exec as sam: exit %d\n%s", res.code, res.stderr)
	}
	run2 := runID(t, res.stderr)

	conn := e.conn()
	queried := func() int {
		t.Helper()
		var n int
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM audit_events WHERE type = 'audit.queried'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// audit runs rexec-cli audit with args as token, and decodes its JSON
	// (array or NDJSON).
	audit := func(token string, args ...string) []apitype.AuditEvent {
		t.Helper()
		before := queried()
		res := e.cliAs(token, nil, append([]string{"audit"}, args...)...)
		if res.code != 0 {
			t.Fatalf("audit %v: exit %d\n%s", args, res.code, res.stderr)
		}
		var events []apitype.AuditEvent
		if slices.Contains(args, "ndjson") {
			sc := bufio.NewScanner(strings.NewReader(res.stdout))
			sc.Buffer(nil, 1<<20)
			for sc.Scan() {
				var ev apitype.AuditEvent
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					t.Fatalf("audit %v: line %q: %v", args, sc.Text(), err)
				}
				events = append(events, ev)
			}
		} else if err := json.Unmarshal([]byte(res.stdout), &events); err != nil {
			t.Fatalf("audit %v: %v\n%s", args, err, res.stdout)
		}
		// Each query is audited once, however many pages it read.
		if n := queried() - before; n != 1 {
			t.Errorf("audit %v recorded %d audit.queried events, want 1", args, n)
		}
		return events
	}
	types := func(events []apitype.AuditEvent) []string {
		var out []string
		for _, ev := range events {
			out = append(out, ev.Type)
		}
		return out
	}

	t.Run("node", func(t *testing.T) {
		events := audit(auditor, "-node", "db-1", "-format", "json")
		if !slices.Contains(types(events), "node.exited") || !slices.Contains(types(events), "node.acked") {
			t.Errorf("events about db-1: %v", types(events))
		}
		for _, ev := range events {
			if ev.Node != "db-1" || ev.Run != run1 {
				t.Errorf("event %d (%s) about node %q of run %s", ev.ID, ev.Type, ev.Node, ev.Run)
			}
		}
	})
	t.Run("exit code", func(t *testing.T) {
		events := audit(auditor, "-exit-code", "1", "-format", "ndjson")
		if len(events) != 1 || events[0].Type != "node.exited" || events[0].Node != "db-1" || events[0].Run != run1 {
			t.Fatalf("events with exit code 1: %+v", events)
		}
		var data struct {
			ExitCode int `json:"exit_code"`
		}
		if err := json.Unmarshal(events[0].Data, &data); err != nil || data.ExitCode != 1 {
			t.Errorf("data %s", events[0].Data)
		}
		if zero := audit(auditor, "-exit-code", "0", "-format", "json"); len(zero) != 3 {
			t.Errorf("%d events with exit code 0, want 3 (web-1, web-2 of alice's run, web-1 of sam's)", len(zero))
		}
	})
	t.Run("principal", func(t *testing.T) {
		events := audit(auditor, "-principal", "sam", "-format", "json")
		if !slices.Contains(types(events), "run.submitted") {
			t.Errorf("sam's events: %v", types(events))
		}
		for _, ev := range events {
			if ev.Actor != "sam" || ev.Run != run2 {
				t.Errorf("event %d (%s) by %q of run %s", ev.ID, ev.Type, ev.Actor, ev.Run)
			}
		}
	})
	// Every event of alice's run, newest first, three to a page.
	all := audit(auditor, "-run", run1, "-format", "json", "-limit", "3", "-all")
	t.Run("run", func(t *testing.T) {
		want := []string{"run.submitted", "policy.decided", "run.queued", "run.started", "run.event_fired", "node.exited", "run.finished"}
		for _, w := range want {
			if !slices.Contains(types(all), w) {
				t.Errorf("run %s: %v lacks %s", run1, types(all), w)
			}
		}
		if !slices.IsSortedFunc(all, func(a, b apitype.AuditEvent) int { return int(b.ID - a.ID) }) || all[len(all)-1].Type != "run.submitted" {
			t.Errorf("not newest first: %v", types(all))
		}
		for _, ev := range all {
			if ev.Run != run1 || ev.Body == "" {
				t.Errorf("event %d: run %s, body %q", ev.ID, ev.Run, ev.Body)
			}
		}
		// Run-level filters select the same run's events.
		for _, args := range [][]string{{"-command", "EXIT 1"}, {"-state", "completed", "-principal", "alice"}} {
			got := audit(auditor, append(args, "-format", "json", "-type", "run.submitted")...)
			if len(got) != 1 || got[0].Run != run1 {
				t.Errorf("%v: %+v", args, got)
			}
		}
	})
	t.Run("csv", func(t *testing.T) {
		before := queried()
		res := e.cliAs(auditor, nil, "audit", "-run", run1, "-format", "csv", "-all", "-limit", "2")
		if res.code != 0 {
			t.Fatalf("exit %d: %s", res.code, res.stderr)
		}
		recs, err := csv.NewReader(strings.NewReader(res.stdout)).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		header := []string{"id", "time", "type", "actor", "run", "node", "request_id", "client_addr", "os_user", "data"}
		if len(recs) != len(all)+1 || !slices.Equal(recs[0], header) {
			t.Fatalf("%d records, header %q; want %d and %q", len(recs), recs[0], len(all)+1, header)
		}
		for i, rec := range recs[1:] {
			ev := all[i]
			if rec[0] != strconv.FormatInt(ev.ID, 10) || rec[2] != ev.Type || rec[3] != ev.Actor || rec[4] != run1 || rec[5] != ev.Node {
				t.Errorf("row %d: %q, want event %+v", i+1, rec, ev)
			}
			if !json.Valid([]byte(rec[9])) || rec[9] != string(ev.Data) {
				t.Errorf("row %d: data %q, want %s", i+1, rec[9], ev.Data)
			}
		}
		if n := queried() - before; n != 1 {
			t.Errorf("%d audit.queried events for one query of several pages", n)
		}
	})
	t.Run("table and pages", func(t *testing.T) {
		res := e.cliAs(auditor, nil, "audit", "-run", run1, "-exit-code", "1")
		if res.code != 0 || !strings.Contains(res.stdout, "node.exited") || !strings.Contains(res.stdout, "exit_code=1") ||
			!strings.HasPrefix(res.stdout, "TIME") {
			t.Errorf("table: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		// One page, and the way to the next; the next page is not audited again.
		res = e.cliAs(auditor, nil, "audit", "-run", run1, "-limit", "2", "-format", "ndjson")
		_, cursor, ok := strings.Cut(strings.TrimSpace(res.stderr), "-cursor ")
		cursor, _, _ = strings.Cut(cursor, " ")
		if res.code != 0 || !ok || strings.Count(res.stdout, "\n") != 2 {
			t.Fatalf("first page: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		before := queried()
		res = e.cliAs(auditor, nil, "audit", "-run", run1, "-limit", "2", "-format", "ndjson", "-cursor", cursor)
		if res.code != 0 || !strings.Contains(res.stdout, strconv.FormatInt(all[2].ID, 10)) {
			t.Errorf("second page: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		if n := queried() - before; n != 0 {
			t.Errorf("a later page recorded %d audit.queried events", n)
		}
	})
	t.Run("the query is recorded with its filter", func(t *testing.T) {
		var data string
		err := conn.QueryRow(context.Background(), `SELECT data::text FROM audit_events WHERE type = 'audit.queried' AND actor = 'erin'
			AND data -> 'filter' ->> 'node' = 'db-1'`).Scan(&data)
		if err != nil || !strings.Contains(data, `"events"`) {
			t.Errorf("audit.queried of the node query: %s %v", data, err)
		}
	})
	t.Run("another tenant", func(t *testing.T) {
		for _, args := range [][]string{{"-node", "db-1"}, {"-exit-code", "1"}, {"-principal", "alice"}, {"-principal", "sam"}, {"-type", "run.submitted"}} {
			if got := audit(otherAuditor, append(args, "-format", "json")...); len(got) != 0 {
				t.Errorf("tenant other's auditor sees %v: %+v", args, got)
			}
		}
		for _, ev := range audit(otherAuditor, "-format", "json", "-all") {
			if ev.Run != "" || ev.Actor == "alice" || ev.Actor == "sam" {
				t.Errorf("tenant other's auditor sees %+v", ev)
			}
		}
		before := queried()
		res := e.cliAs(otherAuditor, nil, "audit", "-run", run1)
		missing := e.cliAs(otherAuditor, nil, "audit", "-run", "00000000-0000-0000-0000-000000000000")
		if res.code != 1 || strings.ReplaceAll(res.stderr, run1, "X") != strings.ReplaceAll(missing.stderr, "00000000-0000-0000-0000-000000000000", "X") {
			t.Errorf("a foreign run: exit %d %q; a missing one: %q", res.code, res.stderr, missing.stderr)
		}
		c, err := client.New(e.addr, otherAuditor)
		if err != nil {
			t.Fatal(err)
		}
		var ce *client.Error
		if _, err := c.Audit(ctxT(t, time.Minute), client.AuditQuery{Run: run1}); !errors.As(err, &ce) || ce.Status != http.StatusNotFound {
			t.Errorf("a foreign run: %v, want 404", err)
		}
		if n := queried() - before; n != 0 {
			t.Errorf("refused queries recorded %d audit.queried events", n)
		}
	})
	t.Run("no secret in an export", func(t *testing.T) {
		for _, format := range []string{"json", "csv", "table"} {
			res := e.cliAs(auditor, nil, "audit", "-all", "-format", format)
			if res.code != 0 || !strings.Contains(res.stdout, "token.created") {
				t.Fatalf("export as %s: exit %d\n%s", format, res.code, res.stderr)
			}
			for _, tok := range []string{e.token, auditor, sam, otherAuditor} {
				if strings.Contains(res.stdout, tok) {
					t.Errorf("an API token in the %s export", format)
				}
			}
		}
	})
	t.Run("roles", func(t *testing.T) {
		before := queried()
		res := e.cliAs(sam, nil, "audit")
		if res.code != 1 || !strings.Contains(res.stderr, "audit.read refused by policy") {
			t.Errorf("a submitter's query: exit %d %q", res.code, res.stderr)
		}
		c, err := client.New(e.addr, sam)
		if err != nil {
			t.Fatal(err)
		}
		var ce *client.Error
		if _, err := c.Audit(ctxT(t, time.Minute), client.AuditQuery{}); !errors.As(err, &ce) || ce.Status != http.StatusForbidden {
			t.Errorf("a submitter's query: %v, want 403", err)
		}
		if n := queried() - before; n != 0 {
			t.Errorf("refused queries recorded %d audit.queried events", n)
		}
		// alice is submitter and auditor.
		if got := audit(e.token, "-exit-code", "1", "-format", "json"); len(got) != 1 {
			t.Errorf("alice, an auditor too, sees %d events", len(got))
		}
	})
	t.Run("bad input", func(t *testing.T) {
		before := queried()
		for _, tc := range []struct{ query, msg string }{
			{"state=exploded", `unknown state "exploded"`},
			{"state=running", `unknown state "running": runs end completed, failed, cancelled, denied, expired`},
			{"exit_code=one", `exit_code must be an integer, not "one"`},
			{"since=yesterday", `since: "yesterday" is neither an RFC 3339 time`},
			{"until=2026-13-01T00:00:00Z", `until: "2026-13-01T00:00:00Z" is neither`},
			{"since=1h&until=2h", "must be before until"},
			{"cursor=zzz", `malformed cursor "zzz"`},
			{"limit=0", "limit must be between 1 and 1000"},
			{"limit=1001", "limit must be between 1 and 1000"},
			{"type=node.exit", `unknown event type "node.exit"`},
			{"nod=db-1", `unknown query parameter "nod"`},
			{"node=a&node=b", "node is given 2 times"},
		} {
			err := rawStatus(t, e.addr+"/v1/audit?"+tc.query, "Bearer "+auditor, http.MethodGet, nil, 400)
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Status != 400 || ce.Code != "invalid" || !strings.Contains(ce.Msg, tc.msg) {
				t.Errorf("%s: %v, want 400 saying %q", tc.query, err, tc.msg)
			}
		}
		for _, args := range [][]string{{"-exit-code", "x"}, {"-format", "xml"}, {"-follow", "-node", "web-1"}, {"-follow", "-format", "csv"}, {"-state", "running"}, {"extra"}} {
			if res := e.cliAs(auditor, nil, append([]string{"audit"}, args...)...); res.code != 1 || res.stderr == "" || res.stdout != "" {
				t.Errorf("audit %v: exit %d, stdout %q, stderr %q", args, res.code, res.stdout, res.stderr)
			}
		}
		if res := e.cliAs(auditor, nil, "audit", "-follow", "-node", "web-1"); !strings.Contains(res.stderr, "-follow streams every new event") {
			t.Errorf("audit -follow with a filter: %q", res.stderr)
		}
		if n := queried() - before; n != 0 {
			t.Errorf("bad queries recorded %d audit.queried events", n)
		}
	})
	t.Run("jobs list", func(t *testing.T) {
		list := func(args ...string) []string {
			t.Helper()
			res := e.cliAs(auditor, nil, append([]string{"jobs", "list", "-json"}, args...)...)
			var page apitype.RunList
			if res.code != 0 || json.Unmarshal([]byte(res.stdout), &page) != nil {
				t.Fatalf("jobs list %v: exit %d\n%s%s", args, res.code, res.stdout, res.stderr)
			}
			var ids []string
			for _, r := range page.Runs {
				ids = append(ids, r.ID)
			}
			return ids
		}
		for _, tc := range []struct {
			args []string
			want []string
		}{
			{nil, []string{run2, run1}},
			{[]string{"-node", "db-1"}, []string{run1}},
			{[]string{"-node", "web-1"}, []string{run2, run1}},
			{[]string{"-exit-code", "1"}, []string{run1}},
			{[]string{"-exit-code", "0", "-principal", "sam"}, []string{run2}},
			{[]string{"-principal", "alice"}, []string{run1}},
			{[]string{"-command", "EXIT 1"}, []string{run1}},
			{[]string{"-state", "completed", "-since", "1h"}, []string{run2, run1}},
			{[]string{"-until", "1h"}, nil},
			{[]string{"-approver", "erin"}, nil},
			{[]string{"-service", "web"}, nil},
		} {
			if got := list(tc.args...); !slices.Equal(got, tc.want) {
				t.Errorf("jobs list %v: %v, want %v", tc.args, got, tc.want)
			}
		}
		res := e.cliAs(auditor, nil, "jobs", "list", "-state", "bogus")
		if res.code != 1 || !strings.Contains(res.stderr, `unknown state "bogus": one of pending_approval, queued`) {
			t.Errorf("jobs list -state bogus: exit %d %q", res.code, res.stderr)
		}
		res = e.cliAs(otherAuditor, nil, "jobs", "list", "-json", "-node", "db-1")
		if res.code != 0 || !strings.Contains(res.stdout, `"runs": []`) {
			t.Errorf("tenant other lists: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
	})
}
