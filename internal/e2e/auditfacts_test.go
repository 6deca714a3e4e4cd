package e2e_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/localconsul"
)

// auditEvent is an audit event's body, as stored.
type auditEvent struct {
	ID         int64          `json:"-"`
	Type       string         `json:"type"`
	Actor      string         `json:"actor"`
	Tenant     int64          `json:"tenant"`
	Run        string         `json:"run"`
	Node       string         `json:"node"`
	RequestID  string         `json:"request_id"`
	ClientAddr string         `json:"client_addr"`
	OSUser     string         `json:"os_user"`
	Data       map[string]any `json:"data"`
	body       string
}

// auditEvents reads the tenant's audit events, oldest first.
func (e *env) auditEvents(tenant string) []auditEvent {
	e.t.Helper()
	rows, err := e.conn().Query(ctxT(e.t, 10*time.Second),
		"SELECT a.id, a.body FROM audit_events a JOIN tenants t ON t.id = a.tenant_id WHERE t.name = $1 ORDER BY a.id", tenant)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []auditEvent
	for rows.Next() {
		var ev auditEvent
		if err := rows.Scan(&ev.ID, &ev.body); err != nil {
			e.t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(ev.body), &ev); err != nil {
			e.t.Fatalf("event %d: %v: %s", ev.ID, err, ev.body)
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// apiWithID sends an API request with token and, when requestID is not
// empty, that X-Request-Id; it returns the status, the body and the
// answer's X-Request-Id.
func (e *env) apiWithID(token, method, path, body, requestID string) (int, string, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.addr+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	if requestID != "" {
		req.Header.Set("X-Request-Id", requestID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Request-Id")
}

// approvalPolicy is the default policy with "v1" as the production tag, so
// that on the shared cluster a run touching web-1 needs an approval.
func approvalPolicy(t *testing.T) string {
	t.Helper()
	root, err := localconsul.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := filepath.Glob(filepath.Join(root, "internal/policy/default/*.rego"))
	if err != nil || len(files) == 0 {
		t.Fatalf("default policy files: %v %v", files, err)
	}
	changed := false
	for _, f := range files {
		if strings.HasSuffix(f, "_test.rego") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		src := string(b)
		if strings.Contains(src, `prod_tag := "prod"`) {
			src, changed = strings.Replace(src, `prod_tag := "prod"`, `prod_tag := "v1"`, 1), true
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !changed {
		t.Fatal(`the default policy no longer sets prod_tag := "prod"`)
	}
	return dir
}

var hexID = regexp.MustCompile(`^[0-9a-f]{32}$`)

// TestAuditFacts carries out a run that needs an approval on three nodes,
// one of which fails, then a run cancelled and a run denied while they wait
// for approval, with admin commands around them; then it reads the audit
// log and checks that every fact an auditor asks about is there, with what
// they need: who (and from which request and address, or which OS user),
// on which node, with which exit code and output hash, approved by whom
// with which comment, on which frozen targets, under which policy.
func TestAuditFacts(t *testing.T) {
	t.Parallel()
	policyDir := approvalPolicy(t)
	e := newEnv(t, envOpts{serveArgs: []string{"-policy-dir", policyDir}})
	bob := e.newToken("acme", "bob", "approver")
	// Admin commands: a token created, its principal's roles changed, the
	// token revoked.
	out := e.svc("token", "create", "-tenant", "acme", "-principal", "carol", "-roles", "auditor")
	m := regexp.MustCompile(`token (\d+) for`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("token create printed %q", out)
	}
	e.svc("token", "create", "-tenant", "acme", "-principal", "carol", "-roles", "auditor,approver", "-set-roles")
	e.svc("token", "revoke", "-tenant", "acme", m[1])
	carolTokenID, _ := strconv.Atoi(m[1])

	// The run: web-1 (tagged v1) makes it need an approval; db-1 fails.
	targets := []string{"db-1", "web-1", "web-2"}
	cmd := "echo out-$(basename $PWD); test $(basename $PWD) != db-1"
	body := fmt.Sprintf(`{"argv": [%q], "node": "^(web-1|web-2|db-1)$", "reason": "audit drill 7", "wait": "1s"}`, cmd)
	status, resp, rid := e.apiWithID(e.token, "POST", "/v1/runs", body, "drill-submit-1")
	if status != 201 || rid != "drill-submit-1" {
		t.Fatalf("submit: %d, X-Request-Id %q: %s", status, rid, resp)
	}
	var run struct {
		ID     string `json:"id"`
		State  string `json:"state"`
		Policy struct {
			Revision string `json:"revision"`
		} `json:"policy"`
		RequestHash string `json:"request_hash"`
	}
	if err := json.Unmarshal([]byte(resp), &run); err != nil || run.State != "pending_approval" || run.Policy.Revision == "" {
		t.Fatalf("submitted run: %v %s", err, resp)
	}
	// An ID that is not sane is replaced, not echoed.
	if _, _, rid := e.apiWithID(e.token, "GET", "/v1/runs/"+run.ID, "", strings.Repeat("x", 129)); !hexID.MatchString(rid) {
		t.Errorf("an over-long request ID answered with %q, want a generated one", rid)
	}
	status, resp, _ = e.apiWithID(bob, "POST", "/v1/runs/"+run.ID+"/approve", `{"comment": "checked with ops"}`, "drill-approve-1")
	if status != 200 {
		t.Fatalf("approve: %d %s", status, resp)
	}
	if res := e.cli(nil, "jobs", "wait", run.ID); res.code != 2 {
		t.Fatalf("jobs wait: exit %d, want 2 (db-1 fails)\n%s%s", res.code, res.stdout, res.stderr)
	}
	if res := e.cli(nil, "jobs", "logs", run.ID, "-node", "web-1"); res.stdout != "out-web-1\n" {
		t.Fatalf("jobs logs -node web-1: %q %s", res.stdout, res.stderr)
	}

	// A run cancelled by its submitter, and one denied, while they wait.
	submit := func(reqID string) string {
		t.Helper()
		status, resp, _ := e.apiWithID(e.token, "POST", "/v1/runs", `{"argv": ["true"], "node": "^(web-1|web-2)$", "reason": "r"}`, reqID)
		var r struct {
			ID string `json:"id"`
		}
		if status != 201 || json.Unmarshal([]byte(resp), &r) != nil {
			t.Fatalf("submit: %d %s", status, resp)
		}
		return r.ID
	}
	cancelled, denied := submit("drill-submit-2"), submit("drill-submit-3")
	if status, resp, _ := e.apiWithID(e.token, "POST", "/v1/runs/"+cancelled+"/cancel", "", "drill-cancel-1"); status != 202 {
		t.Fatalf("cancel: %d %s", status, resp)
	}
	if status, resp, _ := e.apiWithID(bob, "POST", "/v1/runs/"+denied+"/deny", `{"comment": "not in the window"}`, "drill-deny-1"); status != 200 {
		t.Fatalf("deny: %d %s", status, resp)
	}

	events := e.auditEvents("acme")
	of := func(runID, typ, node string) []auditEvent {
		var out []auditEvent
		for _, ev := range events {
			if ev.Run == runID && ev.Type == typ && ev.Node == node {
				out = append(out, ev)
			}
		}
		return out
	}
	outputs := map[string]string{"db-1": "out-db-1\n", "web-1": "out-web-1\n", "web-2": "out-web-2\n"}
	sha := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	num := func(v any) float64 { f, _ := v.(float64); return f }
	strs := func(v any) []string {
		var out []string
		for _, x := range v.([]any) {
			out = append(out, x.(string))
		}
		return out
	}
	// fromAPI checks an event a request caused: its request ID (want, or
	// any generated one when want is empty) and the client's address.
	fromAPI := func(ev auditEvent, want string) error {
		if want != "" && ev.RequestID != want || want == "" && !hexID.MatchString(ev.RequestID) {
			return fmt.Errorf("request_id %q, want %q", ev.RequestID, want)
		}
		if ev.ClientAddr != "127.0.0.1" {
			return fmt.Errorf("client_addr %q, want 127.0.0.1", ev.ClientAddr)
		}
		return nil
	}
	exitCodes := map[string]float64{"db-1": 1, "web-1": 0, "web-2": 0}

	type check struct {
		run, typ, node string
		count          int // how many such events; 0 means 1
		actor          string
		check          func(ev auditEvent) error
	}
	checks := []check{
		{run: run.ID, typ: "run.submitted", actor: "alice", check: func(ev auditEvent) error {
			d := ev.Data
			switch {
			case !slices.Equal(strs(d["targets"]), targets):
				return fmt.Errorf("frozen targets %v, want %v", d["targets"], targets)
			case d["command"] != cmd || !slices.Equal(strs(d["argv"]), []string{cmd}) || d["shell"] != true:
				return fmt.Errorf("command %v argv %v shell %v", d["command"], d["argv"], d["shell"])
			case d["node_filter"] != "^(web-1|web-2|db-1)$" || d["service_filter"] != "" || d["tag_filter"] != "":
				return fmt.Errorf("filters %v %v %v", d["node_filter"], d["service_filter"], d["tag_filter"])
			case d["reason"] != "audit drill 7" || d["submitted_by"] != "alice" || d["prefix"] != e.prefix:
				return fmt.Errorf("reason %v, submitted_by %v, prefix %v", d["reason"], d["submitted_by"], d["prefix"])
			case d["wait"] != "1s" || d["wait_repl"] != "0s" || d["timeout"] != "0s" || d["start_timeout"] != "15m0s" || d["start_by"] == nil:
				return fmt.Errorf("wait %v, wait_repl %v, timeout %v, start_timeout %v, start_by %v",
					d["wait"], d["wait_repl"], d["timeout"], d["start_timeout"], d["start_by"])
			case d["request_hash"] != run.RequestHash:
				return fmt.Errorf("request_hash %v, want %s", d["request_hash"], run.RequestHash)
			}
			return fromAPI(ev, "drill-submit-1")
		}},
		{run: run.ID, typ: "policy.decided", actor: "alice", check: func(ev auditEvent) error {
			d := ev.Data
			if d["outcome"] != "require_approval" || d["revision"] != run.Policy.Revision || num(d["approvals"]) != 1 ||
				!slices.Equal(strs(d["approver_roles"]), []string{"approver"}) || len(d["reasons"].([]any)) == 0 {
				return fmt.Errorf("decision %v", d)
			}
			return fromAPI(ev, "drill-submit-1")
		}},
		{run: run.ID, typ: "approval.requested", actor: "alice", check: func(ev auditEvent) error {
			if num(ev.Data["required"]) != 1 || num(ev.Data["given"]) != 0 || ev.Data["expires_at"] == nil {
				return fmt.Errorf("data %v", ev.Data)
			}
			return fromAPI(ev, "drill-submit-1")
		}},
		{run: run.ID, typ: "approval.given", actor: "bob", check: func(ev auditEvent) error {
			d := ev.Data
			if d["comment"] != "checked with ops" || num(d["given"]) != 1 || num(d["required"]) != 1 ||
				d["request_hash"] != run.RequestHash || !slices.Equal(strs(d["roles"]), []string{"approver"}) {
				return fmt.Errorf("data %v", d)
			}
			return fromAPI(ev, "drill-approve-1")
		}},
		{run: run.ID, typ: "run.queued", actor: "bob", check: func(ev auditEvent) error {
			if num(ev.Data["approvals"]) != 1 || num(ev.Data["required"]) != 1 {
				return fmt.Errorf("data %v", ev.Data)
			}
			return fromAPI(ev, "drill-approve-1")
		}},
		{run: run.ID, typ: "run.started", actor: "worker:serve", check: func(ev auditEvent) error {
			if ev.Data["worker"] != "serve" {
				return fmt.Errorf("data %v", ev.Data)
			}
			return nil
		}},
		{run: run.ID, typ: "run.event_fired", actor: "worker:serve", check: func(ev auditEvent) error {
			var named []string
			for _, fe := range ev.Data["events"].([]any) {
				fe := fe.(map[string]any)
				if id, _ := fe["id"].(string); len(id) != 36 {
					return fmt.Errorf("event id %v", fe["id"])
				}
				named = append(named, strs(fe["nodes"])...)
			}
			if !slices.Equal(named, targets) || ev.Data["fired_at"] == nil || num(ev.Data["targets"]) != 3 {
				return fmt.Errorf("data %v", ev.Data)
			}
			return nil
		}},
		{run: run.ID, typ: "run.finished", actor: "worker:serve", check: func(ev auditEvent) error {
			n, _ := ev.Data["nodes"].(map[string]any)
			if ev.Data["state"] != "completed" || num(n["targets"]) != 3 || num(n["exited"]) != 3 || num(n["failed"]) != 1 ||
				num(n["lost"]) != 0 || num(n["no_ack"]) != 0 {
				return fmt.Errorf("data %v", ev.Data)
			}
			return nil
		}},
		{run: run.ID, typ: "output.read", node: "web-1", actor: "alice", check: func(ev auditEvent) error {
			if num(ev.Data["bytes"]) != float64(len(outputs["web-1"])) {
				return fmt.Errorf("data %v", ev.Data)
			}
			return fromAPI(ev, "") // the CLI sends no ID: the server makes one
		}},
		{run: cancelled, typ: "run.cancelled", actor: "alice", check: func(ev auditEvent) error {
			if ev.Data["fired"] != false || ev.Data["from_state"] != "pending_approval" {
				return fmt.Errorf("data %v", ev.Data)
			}
			return fromAPI(ev, "drill-cancel-1")
		}},
		{run: denied, typ: "approval.refused", actor: "bob", check: func(ev auditEvent) error {
			if ev.Data["comment"] != "not in the window" || num(ev.Data["given"]) != 0 || num(ev.Data["required"]) != 1 {
				return fmt.Errorf("data %v", ev.Data)
			}
			return fromAPI(ev, "drill-deny-1")
		}},
		{run: denied, typ: "run.denied", actor: "bob", check: func(ev auditEvent) error {
			if ev.Data["comment"] != "not in the window" {
				return fmt.Errorf("data %v", ev.Data)
			}
			return fromAPI(ev, "drill-deny-1")
		}},
	}
	for _, node := range targets {
		checks = append(checks,
			check{run: run.ID, typ: "node.acked", node: node, actor: "worker:serve", check: func(ev auditEvent) error { return nil }},
			check{run: run.ID, typ: "node.exited", node: node, actor: "worker:serve", check: func(ev auditEvent) error {
				d := ev.Data
				if num(d["exit_code"]) != exitCodes[node] || d["sha256"] != sha(outputs[node]) ||
					num(d["bytes"]) != float64(len(outputs[node])) || d["truncated"] != false {
					return fmt.Errorf("data %v", d)
				}
				return nil
			}})
	}
	for _, node := range []string{"web-1", "web-2"} {
		checks = append(checks,
			check{run: cancelled, typ: "node.ended", node: node, actor: "alice", check: func(ev auditEvent) error {
				if ev.Data["state"] != "cancelled" {
					return fmt.Errorf("data %v", ev.Data)
				}
				return fromAPI(ev, "drill-cancel-1")
			}},
			check{run: denied, typ: "node.ended", node: node, actor: "bob", check: func(ev auditEvent) error {
				if ev.Data["state"] != "cancelled" {
					return fmt.Errorf("data %v", ev.Data)
				}
				return fromAPI(ev, "drill-deny-1")
			}})
	}
	for _, c := range checks {
		name := c.typ
		if c.node != "" {
			name += "/" + c.node
		}
		t.Run(name, func(t *testing.T) {
			got := of(c.run, c.typ, c.node)
			if len(got) != max(c.count, 1) {
				t.Fatalf("%d %s events for run %s node %q, want %d", len(got), c.typ, c.run, c.node, max(c.count, 1))
			}
			if got[0].Actor != c.actor {
				t.Errorf("actor %q, want %q", got[0].Actor, c.actor)
			}
			if err := c.check(got[0]); err != nil {
				t.Errorf("%v\n%s", err, got[0].body)
			}
		})
	}

	// Reading the run's output while following it: all nodes, each byte
	// handed out counted once.
	served := 0.0
	for _, ev := range of(run.ID, "output.read", "") {
		if ev.Data["all_nodes"] != true || fromAPI(ev, "") != nil {
			t.Errorf("stream read: %s", ev.body)
		}
		served += num(ev.Data["bytes"])
	}
	want := 0
	for _, o := range outputs {
		want += len(o)
	}
	if served != float64(want) {
		t.Errorf("stream reads served %v bytes, want %v", served, want)
	}

	// Every event of a principal came through the API and says from where;
	// every node.* event names its node.
	secrets := []string{e.token, bob}
	for _, ev := range events {
		if ev.Actor == "alice" || ev.Actor == "bob" {
			if err := fromAPI(ev, ev.RequestID); err != nil || ev.RequestID == "" {
				t.Errorf("%s by %s: %v", ev.Type, ev.Actor, err)
			}
		}
		if strings.HasPrefix(ev.Type, "node.") && ev.Node == "" {
			t.Errorf("%s without node: %s", ev.Type, ev.body)
		}
		if _, ok := ev.Data["node"]; ok && strings.HasPrefix(ev.Type, "node.") {
			t.Errorf("%s keeps the node in data too: %s", ev.Type, ev.body)
		}
		for _, s := range secrets {
			if strings.Contains(ev.body, s) {
				t.Errorf("%s holds an API token", ev.Type)
			}
		}
	}

	// Admin commands name the operating-system user who ran them; the
	// policy that governs the tenant is in its own log.
	me := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		me = u.Username
	}
	admin := func(typ string, match func(d map[string]any) bool) auditEvent {
		t.Helper()
		for _, ev := range events {
			if ev.Type == typ && match(ev.Data) {
				return ev
			}
		}
		t.Fatalf("no %s event", typ)
		return auditEvent{}
	}
	for _, ev := range []auditEvent{
		admin("tenant.created", func(d map[string]any) bool {
			return d["name"] == "acme" && d["prefix"] == e.prefix && d["consul_token_set"] == false && d["consul_addr"] != ""
		}),
		admin("token.created", func(d map[string]any) bool {
			return d["principal"] == "carol" && num(d["token_id"]) == float64(carolTokenID) && d["new_principal"] == true
		}),
		admin("principal.roles_changed", func(d map[string]any) bool {
			return d["principal"] == "carol" && slices.Equal(strs(d["to"]), []string{"auditor", "approver"})
		}),
		admin("token.revoked", func(d map[string]any) bool {
			return num(d["token_id"]) == float64(carolTokenID) && d["principal"] == "carol" &&
				slices.Equal(strs(d["roles"]), []string{"auditor", "approver"})
		}),
	} {
		if ev.Actor != "admin" || ev.OSUser != me || ev.RequestID != "" {
			t.Errorf("%s: actor %q, os_user %q (want %q), request_id %q", ev.Type, ev.Actor, ev.OSUser, me, ev.RequestID)
		}
	}
	loaded := admin("policy.loaded", func(d map[string]any) bool { return d["revision"] == run.Policy.Revision })
	files, _ := loaded.Data["files"].([]any)
	if loaded.Actor != "rexec-svc" || loaded.OSUser != me || len(files) == 0 || loaded.Data["dir"] != policyDir {
		t.Errorf("policy.loaded: %s", loaded.body)
	}
	for _, f := range files {
		if s, _ := f.(string); !strings.HasPrefix(s, policyDir+"/") || strings.HasSuffix(s, "_test.rego") {
			t.Errorf("policy.loaded names file %v, not a policy file in %s", f, policyDir)
		}
	}
	for _, ev := range events {
		if strings.Contains(ev.body, "rxt_") {
			t.Errorf("%s holds something like an API token: %s", ev.Type, ev.body)
		}
	}
}
