package e2e_test

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
	"github.com/rexec/rexec/internal/consul"
)

// TestBadTextAndEventSize: a NUL byte in any text of a submission is a 400
// with the API's JSON error, not a database error; a submission whose
// pinned event cannot fit Consul's 512 bytes is refused at submission
// instead of failing in the worker. Neither stores anything.
func TestBadTextAndEventSize(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	conn := e.conn()
	counts := func() (n [4]int) {
		err := conn.QueryRow(ctxT(t, 10*time.Second), `SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM run_nodes),
			(SELECT count(*) FROM river_job WHERE kind = 'rexec_exec'), (SELECT count(*) FROM audit_events)`).Scan(&n[0], &n[1], &n[2], &n[3])
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	// The longest service filter that still leaves room for a node filter
	// with this prefix: beside it, even "web-1" does not fit.
	engine, err := consul.New(consul.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tight := ""
	for n := 1; ; n++ {
		svc := "web|" + strings.Repeat("s", n)
		if engine.CheckSpec(consul.Spec{Argv: []string{"true"}, Prefix: e.prefix, ServiceFilter: svc}) != nil {
			break
		}
		tight = svc
	}
	var ev *consul.EventTooLargeError
	if err := engine.CheckPlan(consul.Spec{Argv: []string{"true"}, Prefix: e.prefix, ServiceFilter: tight},
		[]consul.Node{{Name: "web-1"}}); !errors.As(err, &ev) || ev.Node != "web-1" {
		t.Fatalf("precondition: web-1 beside a %d-byte service filter: %v", len(tight), err)
	}
	huge := "web|" + strings.Repeat("s", 450)

	for _, tc := range []struct {
		note   string
		body   string
		status int
		code   string
		msg    string // part of the error message
	}{
		{note: "NUL in argv", body: `{"argv": ["echo", "a\u0000b"], "node": "^web-1$"}`, status: 400, code: "invalid", msg: "argv[1] contains a NUL byte"},
		{note: "NUL in argv without a shell", body: `{"argv": ["/bin/echo", "\u0000"], "shell": false, "node": "^web-1$"}`, status: 400, code: "invalid", msg: "argv[1] contains a NUL byte"},
		{note: "NUL in reason", body: `{"argv": ["true"], "node": "^web-1$", "reason": "because\u0000"}`, status: 400, code: "invalid", msg: "reason contains a NUL byte"},
		{note: "NUL in node filter", body: `{"argv": ["true"], "node": "^web-1$\u0000"}`, status: 400, code: "invalid", msg: "node filter contains a NUL byte"},
		{note: "NUL in service filter", body: `{"argv": ["true"], "service": "web\u0000"}`, status: 400, code: "invalid", msg: "service filter contains a NUL byte"},
		{note: "NUL in tag filter", body: `{"argv": ["true"], "service": "web", "tag": "\u0000v1"}`, status: 400, code: "invalid", msg: "tag filter contains a NUL byte"},
		{note: "NUL in prefix", body: `{"argv": ["true"], "prefix": "` + e.prefix + `/x\u0000"}`,
			status: 400, code: "invalid", msg: "prefix contains a NUL byte"},
		{note: "service filter leaving no room for a node filter", body: `{"argv": ["true"], "service": "` + huge + `"}`,
			status: 413, code: "too_large", msg: "shorten them"},
		{note: "prefix leaving no room for a node filter", body: `{"argv": ["true"], "prefix": "` + e.prefix + "/" + strings.Repeat("p", 450) + `"}`,
			status: 413, code: "too_large", msg: "shorten them"},
		{note: "node name too long beside the filters", body: `{"argv": ["true"], "node": "^web-1$", "service": "` + tight + `"}`,
			status: 422, code: "unprocessable", msg: `node name "web-1" is too long to fit`},
		{note: "a dry run is checked the same", body: `{"argv": ["true"], "service": "` + huge + `", "dry_run": true}`,
			status: 413, code: "too_large", msg: "shorten them"},
		{note: "NUL in the output's node", body: "GET /v1/runs/00000000-0000-0000-0000-000000000000/output?node=web%00", status: 400, code: "invalid", msg: "node contains a NUL byte"},
		{note: "invalid UTF-8 in the list's state", body: "GET /v1/runs?state=%ff", status: 400, code: "invalid", msg: "state is not valid UTF-8"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			before := counts()
			method, path, body := http.MethodPost, "/v1/runs", []byte(tc.body)
			if m, p, ok := strings.Cut(tc.body, " "); ok && m == http.MethodGet {
				method, path, body = m, p, nil
			}
			err := rawStatus(t, e.addr+path, "Bearer "+e.token, method, body, tc.status)
			var ce *client.Error
			if !errors.As(err, &ce) || ce.Status != tc.status || ce.Code != tc.code || !strings.Contains(ce.Msg, tc.msg) {
				t.Errorf("got %v, want %d %s with %q", err, tc.status, tc.code, tc.msg)
			}
			if after := counts(); after != before {
				t.Errorf("rows (runs, run nodes, jobs, audit) went from %v to %v", before, after)
			}
		})
	}

	t.Run("CLI: event too large", func(t *testing.T) {
		before := counts()
		res := e.cli(nil, "exec", "-service", huge, "true")
		if res.code != 1 || !strings.Contains(res.stderr, "shorten them") {
			t.Errorf("exit %d, stderr %q; want 1 and the event size", res.code, res.stderr)
		}
		if after := counts(); after != before {
			t.Errorf("rows went from %v to %v", before, after)
		}
	})

	// A script is bytes, stored as bytea: NUL and invalid UTF-8 are fine,
	// and the run goes through.
	t.Run("script with any bytes", func(t *testing.T) {
		c, err := client.New(e.addr, e.token)
		if err != nil {
			t.Fatal(err)
		}
		run, err := c.Submit(ctxT(t, time.Minute), apitype.SubmitRequest{Script: []byte("echo ok\n# \x00\xff\xfe\n"), Node: "^web-1$", Reason: "bytes é"})
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		if res := e.cli(nil, "jobs", "wait", run.ID); res.code != 0 {
			t.Fatalf("jobs wait: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		if res := e.cli(nil, "jobs", "logs", run.ID, "-node", "web-1"); res.stdout != "ok\n" {
			t.Errorf("output %q, want \"ok\\n\"", res.stdout)
		}
	})
}
