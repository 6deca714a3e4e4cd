package e2e_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
)

// TestTenantIsolation: tenant B's token sees nothing of tenant A's run.
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.svc("tenant", "create", "other", "-consul-addr", e.cluster.Agent("web-2").HTTPAddr(), "-prefix", e.prefix)
	tokenB := e.newToken("other", "mallory", "submitter,approver,auditor,admin")

	res := e.cli(nil, "exec", "-verbose", "-node", "^web-1$", "echo secret")
	if res.code != 0 {
		t.Fatalf("exec: %d %s", res.code, res.stderr)
	}
	id := runID(t, res.stderr)
	ctx := ctxT(t, time.Minute)
	b, err := client.New(e.addr, tokenB)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"get":    func() error { _, err := b.Get(ctx, id); return err },
		"output": func() error { _, err := b.Output(ctx, id, "web-1", -1); return err },
		"stream": func() error { _, err := b.Stream(ctx, id, 0, 0); return err },
		"cancel": func() error { _, err := b.Cancel(ctx, id); return err },
		"nodes": func() error {
			return rawStatus(t, e.addr+"/v1/runs/"+id+"/nodes", "Bearer "+tokenB, http.MethodGet, nil, 404)
		},
	}
	for name, call := range calls {
		var ae *client.Error
		if err := call(); !errors.As(err, &ae) || ae.Status != 404 || strings.Contains(ae.Msg, "secret") {
			t.Errorf("%s as tenant B: %v, want 404", name, err)
		}
	}
	if list, err := b.List(ctx, "", 0, ""); err != nil || len(list.Runs) != 0 {
		t.Errorf("tenant B lists %d runs (%v)", len(list.Runs), err)
	}
	// The same calls as tenant A succeed: the 404s above are isolation.
	if r := e.show(id); r.State != "completed" {
		t.Errorf("tenant A sees state %q", r.State)
	}
	// CLI as B: the same message as for a run that does not exist.
	cliB := e.cliAs(tokenB, nil, "jobs", "logs", id)
	cliMissing := e.cliAs(tokenB, nil, "jobs", "logs", "00000000-0000-0000-0000-000000000000")
	if cliB.code != 1 || strings.ReplaceAll(cliB.stderr, id, "X") != strings.ReplaceAll(cliMissing.stderr, "00000000-0000-0000-0000-000000000000", "X") {
		t.Errorf("foreign run: %d %q; missing run: %q", cliB.code, cliB.stderr, cliMissing.stderr)
	}
}

// rawStatus sends a request and checks the status and the error body.
func rawStatus(t *testing.T, url, token, method string, body []byte, want int) error {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb apitype.ErrorBody
	if resp.StatusCode != want {
		return &client.Error{Status: resp.StatusCode, Msg: string(b)}
	}
	if want >= 400 && (json.Unmarshal(b, &eb) != nil || eb.Error == "" || eb.Code == "") {
		t.Errorf("%s %s: error body %q is not {error, code}", method, url, b)
	}
	return &client.Error{Status: resp.StatusCode, Code: eb.Code, Msg: eb.Error}
}

// TestBadInput: every bad input gets a clear error and leaves nothing
// stored.
func TestBadInput(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	e.svc("tenant", "create", "down", "-consul-addr", "127.0.0.1:1", "-prefix", e.prefix)
	downToken := e.newToken("down", "bob", "submitter")
	auditor := e.newToken("acme", "carol", "auditor")
	revokedOut := strings.Fields(e.svc("token", "create", "-tenant", "acme", "-principal", "frank", "-roles", "submitter"))
	revoked := revokedOut[len(revokedOut)-1]
	e.svc("token", "revoke", "-tenant", "acme", revokedOut[1])
	done := e.cli(nil, "exec", "-verbose", "-node", "^web-1$", "true")
	doneID := runID(t, done.stderr)
	conn := e.conn()
	counts := func() (n [3]int) {
		err := conn.QueryRow(ctxT(t, 10*time.Second), `SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM river_job WHERE kind = 'rexec_exec'),
			(SELECT count(*) FROM audit_events)`).Scan(&n[0], &n[1], &n[2])
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	for _, tc := range []struct {
		note   string
		token  string // default alice's
		args   []string
		stdin  []byte
		stderr string // part of the message
		// audited is true for a refusal that is itself audited (one
		// run.refused event), with nothing else stored.
		audited bool
	}{
		{note: "invalid node regex", args: []string{"exec", "-node", "web-(", "true"}, stderr: "invalid node filter"},
		{note: "invalid service regex", args: []string{"exec", "-service", "[", "true"}, stderr: "invalid service filter"},
		{note: "tag without service", args: []string{"exec", "-tag", "v1", "true"}, stderr: "-tag requires -service"},
		{note: "no command", args: []string{"exec"}, stderr: "must specify a command"},
		{note: "shell=false with a script", args: []string{"exec", "-shell=false", "-"}, stdin: []byte("echo"), stderr: "-shell=false"},
		{note: "script over the KV limit", args: []string{"exec", "-"}, stdin: bytes.Repeat([]byte("#"), 400_000), stderr: "over Consul's KV value limit of 524288 bytes"},
		{note: "filter matching no node", args: []string{"exec", "-node", "^nothing$", "true"}, stderr: "match no alive node"},
		{note: "prefix outside the tenant's", args: []string{"exec", "-prefix", "elsewhere", "true"}, stderr: "outside the tenant's prefix"},
		{note: "unknown run", args: []string{"jobs", "show", "no-such-run"}, stderr: "no run"},
		{note: "wrong token", token: "rxt_not-a-real-token", args: []string{"jobs", "list"}, stderr: "invalid or revoked token"},
		{note: "revoked token", token: revoked, args: []string{"jobs", "list"}, stderr: "invalid or revoked token"},
		{note: "malformed run ID", args: []string{"jobs", "logs", "x'; DROP TABLE runs; --"}, stderr: "no run"},
		{note: "missing token", token: " ", args: []string{"jobs", "list"}, stderr: "missing or malformed Authorization"},
		{note: "consul down", token: downToken, args: []string{"exec", "true"}, stderr: "cannot reach the tenant's Consul"},
		{note: "submitting without the role", token: auditor, args: []string{"exec", "true"}, stderr: "only submitters and admins submit runs", audited: true},
		{note: "cancelling a finished run", args: []string{"jobs", "cancel", doneID}, stderr: "is completed and cannot be cancelled"},
		{note: "bad wait", args: []string{"exec", "-wait", "-1s", "true"}, stderr: "wait must be between"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			before := counts()
			token := tc.token
			if token == "" {
				token = e.token
			}
			res := e.cliAs(token, tc.stdin, tc.args...)
			if res.code != 1 || !strings.Contains(res.stderr, tc.stderr) {
				t.Errorf("exit %d, stderr %q; want 1 and %q", res.code, res.stderr, tc.stderr)
			}
			if tc.audited {
				before[2]++
			}
			if after := counts(); after != before {
				t.Errorf("rows (runs, jobs, audit) went from %v to %v", before, after)
			}
		})
	}

	for _, tc := range []struct {
		note   string
		method string
		path   string
		token  string
		body   []byte
		status int
		code   string
	}{
		{note: "malformed JSON", method: "POST", path: "/v1/runs", body: []byte(`{"argv": [`), status: 400, code: "invalid"},
		{note: "unknown field", method: "POST", path: "/v1/runs", body: []byte(`{"argv": ["true"], "nodes": "x"}`), status: 400, code: "invalid"},
		{note: "oversized body", method: "POST", path: "/v1/runs", body: append(append([]byte(`{"reason": "`), bytes.Repeat([]byte("x"), 3<<20)...), '"', '}'), status: 413, code: "too_large"},
		{note: "script over the KV limit", method: "POST", path: "/v1/runs", body: mustJSON(apitype.SubmitRequest{Script: bytes.Repeat([]byte("x"), 450_000)}), status: 413, code: "too_large"},
		{note: "no match", method: "POST", path: "/v1/runs", body: []byte(`{"argv": ["true"], "node": "^none$"}`), status: 422, code: "unprocessable"},
		{note: "malformed header", method: "GET", path: "/v1/runs", token: "Basic abc", status: 401, code: "unauthenticated"},
		{note: "unknown endpoint", method: "GET", path: "/v1/nothing", status: 404, code: "not_found"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			before := counts()
			token := tc.token
			if token == "" {
				token = "Bearer " + e.token
			}
			err := rawStatus(t, e.addr+tc.path, token, tc.method, tc.body, tc.status)
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Status != tc.status || ce.Code != tc.code {
				t.Errorf("got %v, want %d %s", err, tc.status, tc.code)
			}
			if after := counts(); after != before {
				t.Errorf("rows (runs, jobs, audit) went from %v to %v", before, after)
			}
		})
	}

	// Secrets: a tenant's Consul token never appears in an answer.
	e.svc("tenant", "create", "secretive", "-consul-addr", e.cluster.Agent("web-1").HTTPAddr(), "-consul-token", "s3cr3t-consul-token", "-prefix", e.prefix)
	tok := e.newToken("secretive", "dave", "submitter")
	res := e.cliAs(tok, nil, "exec", "-json", "-node", "^web-1$", "true")
	if strings.Contains(res.stdout+res.stderr, "s3cr3t") {
		t.Errorf("the Consul token leaked: %s%s", res.stdout, res.stderr)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
