package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/testenv"
	"github.com/rexec/rexec/internal/webhook"
)

// startACLCluster starts a Consul cluster of its own with ACLs on (default
// deny): gw for the tenant to talk to, t-1 and t-2 running service job,
// and t-3 whose job instance is tagged prod.
func startACLCluster(t *testing.T) *localconsul.Cluster {
	t.Helper()
	clients := []localconsul.AgentConfig{
		{Name: "gw"},
		{Name: "t-1", Services: []localconsul.Service{{Name: "job"}}},
		{Name: "t-2", Services: []localconsul.Service{{Name: "job"}}},
		{Name: "t-3", Services: []localconsul.Service{{Name: "job", Tags: []string{"prod"}}}},
	}
	c, err := localconsul.Start(ctxT(t, 2*time.Minute), localconsul.Config{Binary: bins.consul, Clients: clients, ACL: &localconsul.ACLConfig{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// tenantRule is one of the permissions a tenant's Consul token needs.
type tenantRule struct{ name, hcl string }

func tenantRules(prefix string) []tenantRule {
	return []tenantRule{
		{"agent:read", `agent_prefix "" { policy = "read" }`},
		{"session:write", `session_prefix "" { policy = "write" }`},
		{"node:read", `node_prefix "" { policy = "read" }`},
		{"service:read", `service_prefix "" { policy = "read" }`},
		{"key:write", fmt.Sprintf(`key_prefix "%s/" { policy = "write" }`, prefix)},
		{"event:write", `event "_rexec" { policy = "write" }`},
	}
}

// tenantToken creates a Consul token holding every tenant rule but skip.
func tenantToken(t *testing.T, c *localconsul.Cluster, prefix, skip string) string {
	t.Helper()
	var hcl []string
	for _, r := range tenantRules(prefix) {
		if r.name != skip {
			hcl = append(hcl, r.hcl)
		}
	}
	tok, err := c.CreateToken(ctxT(t, 30*time.Second), strings.Join(hcl, "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// aclEnv is a test's rexec on an ACL cluster: tenant "acme" with a
// complete Consul token, alice the submitter, bob and carol approvers.
type aclEnv struct {
	*env
	cluster     *localconsul.Cluster
	bob         string
	carol       string
	consulToken string // the tenant's
}

func newACLEnv(t *testing.T, c *localconsul.Cluster, serveArgs ...string) *aclEnv {
	t.Helper()
	e := &env{t: t, db: testenv.NewDB(t), cluster: c, prefix: "_rexec/" + strings.ReplaceAll(testenv.Prefix(t), "/", "-")}
	ca, err := api.NewClient(&api.Config{Address: c.Agent("gw").HTTPAddr(), Token: c.ManagementToken()})
	if err != nil {
		t.Fatal(err)
	}
	e.consul = ca
	e.svc("migrate")
	tok := tenantToken(t, c, e.prefix, "")
	e.svc("tenant", "create", "acme", "-consul-addr", c.Agent("gw").HTTPAddr(), "-prefix", e.prefix, "-consul-token", tok, "-approval-ttl", "1h")
	e.token = e.newToken("acme", "alice", "submitter")
	ae := &aclEnv{env: e, cluster: c, bob: e.newToken("acme", "bob", "approver"), carol: e.newToken("acme", "carol", "approver"), consulToken: tok}
	e.addr = e.start(append([]string{"serve", "-listen", "127.0.0.1:0", "-workers", "4", "-worker-id", "serve"}, serveArgs...)...)
	return ae
}

// TestPreflight: a tenant token lacking each permission a run needs is
// refused with that permission named, nothing stored but the audited
// refusal; a complete token runs.
func TestPreflight(t *testing.T) {
	t.Parallel()
	c := startACLCluster(t)
	e := newACLEnv(t, c)
	if res := e.cli(nil, "exec", "-node", "^t-[12]$", "echo hi"); res.code != 0 {
		t.Fatalf("complete token: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	secrets := []string{e.consulToken, e.token, e.bob, e.carol, c.ManagementToken()}
	for _, r := range tenantRules(e.prefix) {
		t.Run(r.name, func(t *testing.T) {
			name := "lacks-" + strings.ReplaceAll(r.name, ":", "-")
			consulTok := tenantToken(t, c, e.prefix, r.name)
			e.svc("tenant", "create", name, "-consul-addr", c.Agent("gw").HTTPAddr(), "-prefix", e.prefix, "-consul-token", consulTok)
			tok := e.newToken(name, "alice", "submitter")
			secrets = append(secrets, consulTok, tok)
			before := e.counts()
			res := e.cliAs(tok, nil, "exec", "-node", "^t-1$", "echo hi")
			if strings.Contains(res.stdout+res.stderr, consulTok) {
				t.Error("the answer holds the tenant's Consul token")
			}
			if res.code != 1 || !strings.Contains(res.stderr, r.name) {
				t.Errorf("exit %d, stderr does not name %s:\n%s", res.code, r.name, res.stderr)
			}
			if after := e.counts(); after.runs != before.runs || after.jobs != before.jobs {
				t.Errorf("a refused run was stored: %+v → %+v", before, after)
			}
			if n := e.auditTypeCount("run.refused"); n == 0 {
				t.Error("the refusal was not audited")
			}
		})
	}
	// With ACLs on, the server's debug log holds no Consul or API token.
	b, err := os.ReadFile(e.svcLog)
	if err != nil {
		t.Fatal(err)
	}
	for _, sec := range secrets {
		if strings.Contains(string(b), sec) {
			t.Errorf("the server's log holds a secret (%s…)", sec[:4])
		}
	}
}

// counts is what a refused submission must not change.
type storeCounts struct{ runs, jobs int }

func (e *env) counts() storeCounts {
	var c storeCounts
	conn := e.conn()
	ctx := ctxT(e.t, 10*time.Second)
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM runs").Scan(&c.runs); err != nil {
		e.t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind = 'rexec_exec'").Scan(&c.jobs); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) auditTypeCount(typ string) int {
	var n int
	if err := e.conn().QueryRow(ctxT(e.t, 10*time.Second), "SELECT count(*) FROM audit_events WHERE type = $1", typ).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// TestApprovals: under the default policy a run touching a prod-tagged
// node waits for an approver; the submitter cannot approve it; another
// principal's approval starts it, with the same output as a run without
// approval. Denied and expired runs never fire; an approval bound to a
// different request hash is refused, and so is a request changed after
// submission.
func TestApprovals(t *testing.T) {
	t.Parallel()
	c := startACLCluster(t)
	e := newACLEnv(t, c)
	dir := t.TempDir()
	cmd := fmt.Sprintf("touch %s/ran-$(basename $PWD)-$RUN_MARK; echo hello from $(basename $PWD)", dir)
	marker := func(node, mark string) bool { return fileExists(filepath.Join(dir, "ran-"+node+"-"+mark)) }

	// Without a reason the policy refuses, saying so.
	res := e.cli(nil, "exec", "-node", "^t-3$", strings.ReplaceAll(cmd, "$RUN_MARK", "noreason"))
	if res.code != 1 || !strings.Contains(res.stderr, "reason is required") {
		t.Fatalf("no reason: exit %d\n%s", res.code, res.stderr)
	}
	// A dry run says what the policy would decide.
	dry := e.cli(nil, "exec", "-dry-run", "-reason", "r", "-node", "^t-3$", "true")
	if dry.code != 0 || !strings.Contains(dry.stdout, "approval needed: 1 from approver") {
		t.Errorf("dry run: exit %d\n%s%s", dry.code, dry.stdout, dry.stderr)
	}

	t.Run("approved", func(t *testing.T) {
		sub := e.cli(nil, "exec", "-detach", "-reason", "deploy 42", "-node", "^t-3$", strings.ReplaceAll(cmd, "$RUN_MARK", "approved"))
		if sub.code != 0 {
			t.Fatalf("exec: %d %s", sub.code, sub.stderr)
		}
		id := strings.TrimSpace(sub.stdout)
		if r := e.show(id); r.State != "pending_approval" {
			t.Fatalf("state %s, want pending_approval", r.State)
		}
		inbox := e.cliAs(e.bob, nil, "jobs", "list", "-state", "pending_approval")
		if !strings.Contains(inbox.stdout, id) {
			t.Errorf("the approver's inbox lacks the run:\n%s%s", inbox.stdout, inbox.stderr)
		}
		if self := e.cli(nil, "approve", id); self.code != 1 || !strings.Contains(self.stderr, "own run") {
			t.Errorf("self-approval: exit %d %s", self.code, self.stderr)
		}
		// The approver may read the run it is asked to approve.
		if show := e.cliAs(e.bob, nil, "jobs", "show", id); show.code != 0 {
			t.Errorf("approver reads the pending run: exit %d %s", show.code, show.stderr)
		}
		if marker("t-3", "approved") {
			t.Fatal("ran before approval")
		}
		ok := e.cliAs(e.bob, nil, "approve", id, "-comment", "looks fine")
		if ok.code != 0 {
			t.Fatalf("approve: exit %d %s", ok.code, ok.stderr)
		}
		if again := e.cliAs(e.bob, nil, "approve", id); again.code != 1 {
			t.Errorf("approving twice: exit %d %s", again.code, again.stderr)
		}
		wait := e.cli(nil, "jobs", "wait", id)
		if wait.code != 0 || !marker("t-3", "approved") {
			t.Fatalf("after approval: exit %d\n%s%s", wait.code, wait.stdout, wait.stderr)
		}
		if logs := e.cli(nil, "jobs", "logs", id, "-node", "t-3").stdout; logs != "hello from t-3\n" {
			t.Errorf("output %q", logs)
		}
		// The same command without policy gating (t-1 is not prod) gives
		// the same output shape.
		plain := e.cli(nil, "exec", "-node", "^t-1$", strings.ReplaceAll(cmd, "$RUN_MARK", "plain"))
		if plain.code != 0 || !strings.Contains(plain.stdout, "t-1: hello from t-1") {
			t.Errorf("plain run: %d %s", plain.code, plain.stdout)
		}
		// The approver cannot read output of a run not pending its approval.
		other := strings.TrimSpace(e.cli(nil, "exec", "-detach", "-node", "^t-1$", "true").stdout)
		e.cli(nil, "jobs", "wait", other)
		if res := e.cliAs(e.bob, nil, "jobs", "logs", other, "-node", "t-1"); res.code != 1 || !strings.Contains(res.stderr, "refused by policy") {
			t.Errorf("approver reads another run's output: exit %d %s", res.code, res.stderr)
		}
	})

	t.Run("denied", func(t *testing.T) {
		id := strings.TrimSpace(e.cli(nil, "exec", "-detach", "-reason", "r", "-node", "^t-3$", strings.ReplaceAll(cmd, "$RUN_MARK", "denied")).stdout)
		if res := e.cliAs(e.carol, nil, "deny", id, "-comment", "not now"); res.code != 0 {
			t.Fatalf("deny: %d %s", res.code, res.stderr)
		}
		wait := e.cli(nil, "jobs", "wait", id)
		if r := e.show(id); r.State != "denied" || wait.code != 1 {
			t.Errorf("after deny: state %s, exit %d", r.State, wait.code)
		}
		if status, body := e.api(e.bob, "POST", "/v1/runs/"+id+"/approve", ""); status/100 != 4 || !strings.Contains(body, "not pending approval") {
			t.Errorf("approving a denied run: %d %s", status, body)
		}
		// The CLI never approves a run it cannot show.
		if res := e.cliAs(e.bob, nil, "approve", id); res.code != 1 || !strings.Contains(res.stderr, "not approved") {
			t.Errorf("rexec-cli approve of a run it cannot show: %d %s", res.code, res.stderr)
		}
		// Another tenant's approver gets a not-found, as for a missing run.
		e.svc("tenant", "create", "other", "-consul-addr", c.Agent("gw").HTTPAddr(), "-prefix", e.prefix)
		stranger := e.newToken("other", "mallory", "approver")
		if status, body := e.api(stranger, "POST", "/v1/runs/"+id+"/approve", ""); status != 404 {
			t.Errorf("approving another tenant's run: %d %s", status, body)
		}
		if marker("t-3", "denied") || e.auditCount(id, "run.event_fired") != 0 {
			t.Error("a denied run fired")
		}
	})

	t.Run("hash", func(t *testing.T) {
		id := strings.TrimSpace(e.cli(nil, "exec", "-detach", "-reason", "r", "-node", "^t-3$", strings.ReplaceAll(cmd, "$RUN_MARK", "hash")).stdout)
		// An approval bound to another request's hash is refused.
		status, body := e.api(e.bob, "POST", "/v1/runs/"+id+"/approve", `{"request_hash": "`+strings.Repeat("0", 64)+`"}`)
		if status != 409 {
			t.Errorf("approval with a foreign hash: %d %s", status, body)
		}
		// A request changed after submission no longer matches its hash:
		// it can be neither approved nor started.
		if _, err := e.conn().Exec(ctxT(t, 10*time.Second), "UPDATE runs SET argv = ARRAY['touch /tmp/evil'] WHERE id = $1", id); err != nil {
			t.Fatal(err)
		}
		if res := e.cliAs(e.bob, nil, "approve", id); res.code != 1 || !strings.Contains(res.stderr, "no longer matches") {
			t.Errorf("approving a changed request: %d %s", res.code, res.stderr)
		}
		if marker("t-3", "hash") {
			t.Error("ran")
		}
		// So does a run whose frozen targets were changed: the hash binds
		// them by name, not only their number.
		id = strings.TrimSpace(e.cli(nil, "exec", "-detach", "-reason", "r", "-node", "^t-3$", strings.ReplaceAll(cmd, "$RUN_MARK", "retarget")).stdout)
		if _, err := e.conn().Exec(ctxT(t, 10*time.Second), `UPDATE runs SET targets = jsonb_set(targets, '{0,node}', '"t-1"') WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
		if res := e.cliAs(e.bob, nil, "approve", id); res.code != 1 || !strings.Contains(res.stderr, "no longer matches") {
			t.Errorf("approving a run with changed targets: %d %s", res.code, res.stderr)
		}
	})
}

// api sends an API request with token and returns the status and body.
func (e *env) api(token, method, path, body string) (int, string) {
	e.t.Helper()
	status, b, _ := e.apiWithID(token, method, path, body, "")
	return status, b
}

// TestApprovalExpiry: a pending run expires into expired without anyone
// polling, and never fires; the tenant's webhook hears that it needed
// approval and that it expired, signed; a receiver that is down is
// retried, every attempt audited.
func TestApprovalExpiry(t *testing.T) {
	t.Parallel()
	c := startACLCluster(t)
	e := newACLEnv(t, c)
	secret := []byte("webhook-secret-" + strings.Repeat("x", 16))
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	events := map[string]bool{}
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := webhook.Verify(secret, r.Header.Get(webhook.SignatureHeader), r.Header.Get(webhook.TimestampHeader), body, 0); err != nil {
			t.Errorf("webhook signature: %v", err)
			w.WriteHeader(400)
			return
		}
		var p struct {
			Text  string `json:"text"`
			Rexec struct {
				Event string `json:"event"`
			} `json:"rexec"`
		}
		if err := json.Unmarshal(body, &p); err != nil || p.Text == "" {
			t.Errorf("webhook body: %v %s", err, body)
		}
		mu.Lock()
		events[p.Rexec.Event] = true
		mu.Unlock()
	}))
	defer receiver.Close()
	e.svc("tenant", "create", "hasty", "-consul-addr", c.Agent("gw").HTTPAddr(), "-prefix", e.prefix,
		"-consul-token", tenantToken(t, c, e.prefix, ""), "-approval-ttl", "2s",
		"-webhook-url", receiver.URL+"/hook?key=s3cret", "-webhook-secret-file", secretFile)
	tok := e.newToken("hasty", "alice", "submitter")
	marker := filepath.Join(t.TempDir(), "ran")
	res := e.cliAs(tok, nil, "exec", "-reason", "r", "-node", "^t-3$", "touch "+marker)
	if res.code != 1 || !strings.Contains(res.stderr, "rexec-cli approve") || !strings.Contains(res.stderr, "expired") {
		t.Errorf("exec through expiry: exit %d\n%s", res.code, res.stderr)
	}
	if fileExists(marker) {
		t.Error("an expired run ran")
	}
	await(t, time.Minute, "the webhook to hear of the request and the expiry", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return events["approval_requested"] && events["expired"]
	})
	if n := e.auditTypeCount("webhook.delivered"); n < 2 {
		t.Errorf("%d deliveries audited", n)
	}

	// A receiver that is down: retried, every failed attempt audited.
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL
	down.Close()
	e.svc("tenant", "create", "deaf", "-consul-addr", c.Agent("gw").HTTPAddr(), "-prefix", e.prefix,
		"-consul-token", tenantToken(t, c, e.prefix, ""), "-webhook-url", downURL, "-webhook-secret-file", secretFile)
	deaf := e.newToken("deaf", "alice", "submitter")
	if res := e.cliAs(deaf, nil, "exec", "-detach", "-reason", "r", "-node", "^t-3$", "true"); res.code != 0 {
		t.Fatalf("exec: %d %s", res.code, res.stderr)
	}
	await(t, time.Minute, "two failed delivery attempts to be audited", func() bool { return e.auditTypeCount("webhook.failed") >= 2 })
	// The URL's query (a credential in a Slack webhook URL) is in no log.
	if b, _ := os.ReadFile(e.svcLog); strings.Contains(string(b), "s3cret") {
		t.Error("the webhook URL's query reached the log")
	}
}

// TestPolicyDir: a policy directory replaces the default; a policy that
// denies gives its reasons; a broken one is refused at startup and by
// SIGHUP with file and line, and the old one stays.
func TestPolicyDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(src string) {
		if err := os.WriteFile(filepath.Join(dir, "rexec.rego"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`package rexec

decision := {"outcome": "deny", "reasons": ["change freeze until Monday", "ask #ops"], "approvals": 0, "approver_roles": []} if {
	input.action == "exec.submit"
} else := {"outcome": "allow", "reasons": [], "approvals": 0, "approver_roles": []}
`)
	e := newEnv(t, envOpts{serveArgs: []string{"-policy-dir", dir}})
	res := e.cli(nil, "exec", "-node", "^web-1$", "true")
	if res.code != 1 || !strings.Contains(res.stderr, "change freeze until Monday") || !strings.Contains(res.stderr, "ask #ops") {
		t.Errorf("denied submission: exit %d\n%s", res.code, res.stderr)
	}

	// Broken at startup: refused with file and line.
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, "broken.rego"), []byte("package rexec\n\ndecision := {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := e.svcCmd("serve", "-listen", "127.0.0.1:0", "-workers", "0", "-policy-dir", bad)
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(string(out), "broken.rego:") {
		t.Errorf("startup with a broken policy: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
	}

	// Broken on SIGHUP: refused, audited, the old policy stays.
	write("package rexec\n\ndecision := {\n")
	if err := e.serveProc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	await(t, 30*time.Second, "the refused reload to be audited", func() bool { return e.auditTypeCount("policy.rejected") == 1 })
	var data string
	if err := e.conn().QueryRow(ctxT(t, 10*time.Second), "SELECT data::text FROM audit_events WHERE type = 'policy.rejected'").Scan(&data); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(data, "rexec.rego:") {
		t.Errorf("rejection does not name file and line: %s", data)
	}
	if res := e.cli(nil, "exec", "-node", "^web-1$", "true"); !strings.Contains(res.stderr, "change freeze") {
		t.Errorf("the old policy is not in force: %d %s", res.code, res.stderr)
	}
	// A good policy on SIGHUP is in force at once, with its revision audited.
	write(`package rexec

decision := {"outcome": "allow", "reasons": [], "approvals": 0, "approver_roles": []}
`)
	if err := e.serveProc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	await(t, 30*time.Second, "the reload to be audited", func() bool { return e.auditTypeCount("policy.loaded") == 2 })
	res = e.cli(nil, "exec", "-json", "-node", "^web-1$", "true")
	var run struct {
		State  string `json:"state"`
		Policy struct {
			Outcome  string `json:"outcome"`
			Revision string `json:"revision"`
		} `json:"policy"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &run); err != nil || run.State != "completed" || run.Policy.Outcome != "allow" || run.Policy.Revision == "" {
		t.Errorf("after reload: %v %+v\n%s", err, run, res.stderr)
	}
}

// TestRoleMatrix: for each action and each role, the API allows or refuses
// as the default policy says.
func TestRoleMatrix(t *testing.T) {
	t.Parallel()
	c := startACLCluster(t)
	e := newACLEnv(t, c)
	tokens := map[string]string{
		"submitter": e.token, // alice, who submits the runs below
		"other":     e.newToken("acme", "frank", "submitter"),
		"approver":  e.bob,
		"auditor":   e.newToken("acme", "dave", "auditor"),
		"admin":     e.newToken("acme", "erin", "admin"),
	}
	done := strings.TrimSpace(e.cli(nil, "exec", "-detach", "-node", "^t-1$", "echo hi").stdout)
	e.cli(nil, "jobs", "wait", done)
	pending := strings.TrimSpace(e.cli(nil, "exec", "-detach", "-reason", "r", "-node", "^t-3$", "true").stdout)
	if r := e.show(pending); r.State != "pending_approval" {
		t.Fatalf("pending run is %s", r.State)
	}
	type check struct {
		action, method, path, body string
		allowed                    map[string]bool
		okStatus                   int // the status of an allowed call
	}
	roles := []string{"submitter", "other", "approver", "auditor", "admin"}
	set := func(rs ...string) map[string]bool {
		m := map[string]bool{}
		for _, r := range rs {
			m[r] = true
		}
		return m
	}
	checks := []check{
		{"exec.submit", "POST", "/v1/runs", `{"argv": ["true"], "node": "^t-1$"}`, set("submitter", "other", "admin"), 201},
		{"run.read", "GET", "/v1/runs/" + done, "", set("submitter", "auditor", "admin"), 200},
		{"output.read", "GET", "/v1/runs/" + done + "/output?node=t-1", "", set("submitter", "auditor", "admin"), 200},
		// The run has ended: an allowed cancel is a conflict, not a refusal.
		{"exec.cancel", "POST", "/v1/runs/" + done + "/cancel", "", set("submitter", "admin"), 409},
		{"run.read (pending)", "GET", "/v1/runs/" + pending, "", set("submitter", "approver", "auditor", "admin"), 200},
		// Nobody approves their own run; admins do not approve; the
		// approver's call comes last and succeeds.
		{"exec.approve", "POST", "/v1/runs/" + pending + "/approve", "", set("approver"), 200},
	}
	for _, ck := range checks {
		for _, role := range roles {
			if ck.action == "exec.approve" && role == "approver" {
				continue
			}
			status, body := e.api(tokens[role], ck.method, ck.path, ck.body)
			want := 403
			if ck.allowed[role] {
				want = ck.okStatus
			}
			if status != want {
				t.Errorf("%s as %s: %d, want %d: %s", ck.action, role, status, want, body)
			}
		}
	}
	if status, body := e.api(e.bob, "POST", "/v1/runs/"+pending+"/approve", ""); status != 200 {
		t.Errorf("exec.approve as approver: %d %s", status, body)
	}
	// run.list: auditors and admins see every run, submitters their own,
	// the others nothing of alice's.
	for role, sees := range map[string]bool{"submitter": true, "other": false, "approver": false, "auditor": true, "admin": true} {
		_, body := e.api(tokens[role], "GET", "/v1/runs", "")
		if strings.Contains(body, done) != sees {
			t.Errorf("run.list as %s: sees alice's run %v, want %v", role, !sees, sees)
		}
	}
}
