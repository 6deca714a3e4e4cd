package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/service"
)

// FuzzDecodeSubmission: decoding a POST /v1/runs body never panics and
// fails only with a 400; what it accepts encodes back to the same
// submission; and the service's and the engine's checks of it (those that
// need no Consul) decide the same way every time, refusing every NUL and
// invalid UTF-8 in a text field with a 400.
func FuzzDecodeSubmission(f *testing.F) {
	for _, s := range []string{
		`{"argv": ["uptime"]}`,
		`{"argv": ["echo", "hi"], "node": "^web-", "service": "web", "tag": "v1", "prefix": "_rexec/team", "wait": "3s", "wait_repl": "100ms", "timeout": "1h", "reason": "deploy", "dry_run": true}`,
		`{"script": "IyEvYmluL3NoCmVjaG8gAP8=", "shell": true}`,
		`{"argv": ["ls", "-l"], "shell": false}`,
		`{"argv": ["a\u0000b"]}`,
		`{"argv": ["true"], "reason": "why\u0000"}`,
		`{"argv": ["true"], "node": "\u0000"}`,
		`{"argv": ["true"], "service": "web\u0000", "tag": "\u0000"}`,
		`{"argv": ["true"], "prefix": "_rexec/\u0000"}`,
		`{"argv": ["true"], "prefix": "\u0000"}`,
		"{\"argv\": [\"\xff\xfe\"], \"reason\": \"\xc3\"}",
		`{"argv": ["\ud800"]}`,
		`{"argv": ["true"], "script": ""}`,
		`{"argv": ["true"], "wait": "1ns"}`,
		`{"argv": ["true"], "wait": "-1s", "timeout": "9999h"}`,
		`{"argv": ["true"], "nodes": "x"}`,
		`{"argv": [`,
		`{"argv": ["true"]} {}`,
		`null`,
		`[]`,
		``,
	} {
		f.Add([]byte(s))
	}
	const tenantPrefix = "_rexec"
	f.Fuzz(func(t *testing.T, body []byte) {
		sub, err := decodeSubmission(bytes.NewReader(body))
		if err != nil {
			if !errors.Is(err, service.ErrInvalid) {
				t.Fatalf("decode fails with %v, not a 400", err)
			}
			return
		}
		// What was accepted reads the same when sent again: nothing in it
		// depends on how the client spelled it.
		again, err := decodeSubmission(bytes.NewReader(encodeSubmission(t, sub)))
		if err != nil {
			t.Fatalf("re-encoded submission is refused: %v", err)
		}
		if !sameSubmission(sub, again) {
			t.Fatalf("submission changed on a round trip:\n%+v\n%+v", sub, again)
		}

		check := func() error {
			spec, err := sub.Spec(tenantPrefix)
			if err != nil {
				return err
			}
			return spec.Validate(0)
		}
		err = check()
		if again := check(); (err == nil) != (again == nil) || (err != nil && err.Error() != again.Error()) {
			t.Fatalf("checks are not deterministic: %v, then %v", err, again)
		}
		// Refused with a 400 by the service or the engine (or earlier, for
		// another fault of the request): a NUL or invalid UTF-8 never
		// reaches the database.
		texts := append(slices.Clone(sub.Argv), sub.NodeFilter, sub.ServiceFilter, sub.TagFilter, sub.Prefix, sub.Reason)
		if err == nil && slices.ContainsFunc(texts, func(s string) bool { return consul.CheckText("", s) != nil }) {
			t.Fatalf("a NUL or invalid UTF-8 passes the checks: %q", texts)
		}
	})
}

func encodeSubmission(t *testing.T, sub service.Submission) []byte {
	t.Helper()
	req := apitype.SubmitRequest{Argv: sub.Argv, Script: sub.Script, Shell: &sub.Shell, Node: sub.NodeFilter, Service: sub.ServiceFilter,
		Tag: sub.TagFilter, Prefix: sub.Prefix, Reason: sub.Reason, DryRun: sub.DryRun}
	if sub.Wait != 0 {
		req.Wait = sub.Wait.String()
	}
	if sub.WaitRepl != 0 {
		req.WaitRepl = sub.WaitRepl.String()
	}
	if sub.Timeout != 0 {
		req.Timeout = sub.Timeout.String()
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sameSubmission(a, b service.Submission) bool {
	return slices.Equal(a.Argv, b.Argv) && bytes.Equal(a.Script, b.Script) && (a.Script == nil) == (b.Script == nil) &&
		a.Shell == b.Shell && a.NodeFilter == b.NodeFilter && a.ServiceFilter == b.ServiceFilter && a.TagFilter == b.TagFilter &&
		a.Prefix == b.Prefix && a.Wait == b.Wait && a.WaitRepl == b.WaitRepl && a.Timeout == b.Timeout &&
		a.Reason == b.Reason && a.DryRun == b.DryRun
}
