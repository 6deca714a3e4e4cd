package e2e_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// TestSecretsNotLogged: with the server at debug level, a real run and every
// kind of refusal leave no secret in its log: not a tenant's Consul token,
// not an API token (used, unused or bogus), not the Authorization header;
// and no answer echoes a token.
func TestSecretsNotLogged(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	secret := func(kind string) string {
		b := make([]byte, 12)
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
		return kind + "-" + hex.EncodeToString(b)
	}
	consulToken, downConsulToken := secret("consul-token"), secret("consul-token")
	// With ACLs off the agent takes the token and ignores it; rexec still
	// sends it with every request.
	out := e.svc("tenant", "create", "vault", "-consul-addr", e.cluster.Agent("web-1").HTTPAddr(), "-consul-token", consulToken, "-prefix", e.prefix)
	out += e.svc("tenant", "create", "vault-down", "-consul-addr", "127.0.0.1:1", "-consul-token", downConsulToken, "-prefix", e.prefix)
	if strings.Contains(out, consulToken) || strings.Contains(out, downConsulToken) {
		t.Errorf("tenant create printed the Consul token: %s", out)
	}
	vic := e.newToken("vault", "vic", "submitter,auditor")
	unused := e.newToken("vault", "una", "admin")
	down := e.newToken("vault-down", "dan", "submitter")
	bogus, bogusBasic := "rxt_"+secret("bogus"), secret("basic")
	secrets := map[string]string{"the tenant's Consul token": consulToken, "the down tenant's Consul token": downConsulToken,
		"the API token used": vic, "an unused API token": unused, "the down tenant's API token": down, "a bogus token": bogus, "a Basic credential": bogusBasic}

	var said strings.Builder // everything every command and answer said
	cli := func(token string, wantCode int, args ...string) cliResult {
		t.Helper()
		res := e.cliAs(token, nil, args...)
		said.WriteString(res.stdout + res.stderr)
		if res.code != wantCode {
			t.Errorf("%v: exit %d, want %d\n%s%s", args, res.code, wantCode, res.stdout, res.stderr)
		}
		return res
	}
	res := cli(vic, 0, "exec", "-verbose", "-node", "^web-1$", "echo hello")
	id := runID(t, res.stderr)
	cli(vic, 0, "jobs", "list")
	cli(vic, 0, "jobs", "show", id)
	cli(vic, 0, "jobs", "logs", id)
	cli(vic, 0, "exec", "-dry-run", "-service", "web", "true")
	cli(vic, 1, "exec", "-node", "^nothing$", "true")
	long := strings.TrimSpace(cli(vic, 0, "exec", "-detach", "-node", "^web-2$", "sleep 5").stdout)
	cli(vic, 0, "jobs", "cancel", long)
	cli(down, 1, "exec", "true") // Consul unreachable: the error path
	cli(bogus, 1, "jobs", "list")
	for _, r := range []request{
		{url: "/v1/runs", header: map[string]string{"Authorization": "Basic " + bogusBasic}},
		{url: "/v1/runs", header: map[string]string{"Authorization": "Bearer " + bogus}},
		{url: "/v1/runs", header: map[string]string{"Authorization": "Bearer  " + bogus + " extra"}},
		{url: "/v1/runs/" + id, header: map[string]string{"Authorization": "Bearer " + unused + "x"}},
		{url: "/v1/nothing", token: vic},
		{method: "POST", url: "/v1/runs", token: vic, body: strings.NewReader(`{"argv": ["true"], "node": "(`)},
	} {
		r.url = e.addr + r.url
		a := send(t, nil, r)
		said.WriteString(a.body)
		if a.status < 400 {
			t.Errorf("%s: %d, want a refusal", r.url, a.status)
		}
	}

	log, err := os.ReadFile(e.svcLog)
	if err != nil {
		t.Fatal(err)
	}
	// The log must be the debug one and cover what was done, or its
	// silence proves nothing.
	for _, want := range []string{"level=DEBUG", "msg=request", "path=/v1/runs/" + id, "run=" + id, "status=401", "status=502"} {
		if !bytes.Contains(log, []byte(want)) {
			t.Fatalf("the server's log lacks %q:\n%s", want, tail(string(log), 40))
		}
	}
	for what, s := range secrets {
		if bytes.Contains(log, []byte(s)) {
			t.Errorf("%s is in the server's log", what)
		}
	}
	lower := bytes.ToLower(log)
	for _, word := range []string{"authorization", "bearer"} {
		if bytes.Contains(lower, []byte(word)) {
			t.Errorf("%q is in the server's log", word)
		}
	}
	for what, s := range secrets {
		if strings.Contains(said.String(), s) {
			t.Errorf("%s is in an answer or the CLI's output", what)
		}
	}
}
