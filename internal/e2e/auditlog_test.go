package e2e_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/auditproof"
)

// TestAuditLogVerifiable carries a run out, then checks the tenant's log as
// an auditor would: a kept checkpoint, a full verification, a run's proof
// bundle checked offline; then tampers with the database as a superuser.
func TestAuditLogVerifiable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	res := e.cli(nil, "exec", "-detach", "-node", "^(web-1|web-2|db-1)$", "case $(basename $PWD) in db-1) exit 3;; esac; echo ok")
	if res.code != 0 {
		t.Fatalf("exec: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	runID := strings.TrimSpace(res.stdout)
	if res := e.cli(nil, "jobs", "wait", runID); res.code != 2 {
		t.Fatalf("jobs wait: exit %d, want 2\n%s%s", res.code, res.stdout, res.stderr)
	}

	// Every committed event is in a signed checkpoint shortly after: wait
	// for the checkpoint that covers them all.
	size := e.awaitLogged()
	kept := filepath.Join(t.TempDir(), "kept.checkpoint")
	res = e.cli(nil, "audit", "checkpoint")
	if res.code != 0 || !strings.HasPrefix(res.stdout, "rexec-e2e/tenant/acme\n") {
		t.Fatalf("audit checkpoint: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	if err := os.WriteFile(kept, []byte(res.stdout), 0o600); err != nil {
		t.Fatal(err)
	}

	// More events after the kept checkpoint; the log still extends it.
	if res := e.cli(nil, "jobs", "logs", runID); res.code != 2 {
		t.Fatalf("jobs logs: exit %d\n%s", res.code, res.stderr)
	}
	if grown := e.awaitLogged(); grown <= size {
		t.Fatalf("log did not grow past %d after output was read", size)
	}
	res = e.cli(nil, "audit", "verify", "-since-checkpoint", kept)
	if res.code != 0 || !strings.Contains(res.stdout, "verified") || !strings.Contains(res.stdout, "extends your kept checkpoint of "+strconv.FormatInt(size, 10)+" events") {
		t.Fatalf("audit verify: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	// A run's proof bundle verifies offline, and fails after any change.
	res = e.cli(nil, "audit", "prove", runID)
	if res.code != 0 {
		t.Fatalf("audit prove: exit %d\n%s", res.code, res.stderr)
	}
	var b auditproof.Bundle
	if err := json.Unmarshal([]byte(res.stdout), &b); err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, ev := range b.Events {
		var body struct{ Type string }
		if err := json.Unmarshal([]byte(ev.Body), &body); err != nil {
			t.Fatal(err)
		}
		types[body.Type] = true
	}
	for _, typ := range []string{"run.submitted", "run.event_fired", "node.exited", "run.finished", "output.read"} {
		if !types[typ] {
			t.Errorf("bundle lacks a %s event; has %v", typ, types)
		}
	}
	dir := t.TempDir()
	bundle := filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(bundle, []byte(res.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	offline := func(path string, env ...string) cliResult {
		// No server, no token, no database: only the file and the key.
		cmd := exec.Command(bins.cli, "audit", "verify-bundle", path)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "REXEC_AUDIT_PUBKEY=" + auditKey.pub}, env...)
		return e.runCmd(cmd, nil)
	}
	if res := offline(bundle); res.code != 0 || !strings.Contains(res.stdout, "bundle verified: "+strconv.Itoa(len(b.Events))+" events of run "+runID) {
		t.Fatalf("verify-bundle: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	raw := []byte(res.stdout)
	for _, change := range []struct{ name, from, to string }{
		{"an exit code", `\"exit_code\":3`, `\"exit_code\":0`},
		{"a node name", `\"node\":\"db-1\"`, `\"node\":\"db-2\"`},
		{"a proof hash", `"proof": [` + "\n" + `        "`, `"proof": [` + "\n" + `        "A`},
	} {
		i := bytes.Index(raw, []byte(change.from))
		if i < 0 {
			t.Fatalf("%s: %q not in the bundle", change.name, change.from)
		}
		changed := append(append(append([]byte{}, raw[:i]...), change.to...), raw[i+len(change.from):]...)
		path := filepath.Join(dir, "changed.json")
		if err := os.WriteFile(path, changed, 0o600); err != nil {
			t.Fatal(err)
		}
		if res := offline(path); res.code != 1 || !strings.Contains(res.stderr, "FAILED") {
			t.Errorf("bundle with %s changed: exit %d\n%s%s", change.name, res.code, res.stdout, res.stderr)
		}
	}
	// Another key does not vouch for this log.
	other := filepath.Join(dir, "other.key")
	pub, err := exec.Command(bins.svc, "audit", "keygen", "-name", "rexec-e2e", "-out", other).Output()
	if err != nil {
		t.Fatal(err)
	}
	if res := offline(bundle, "REXEC_AUDIT_PUBKEY="+strings.TrimSpace(string(pub))); res.code != 1 || !strings.Contains(res.stderr, "signature") {
		t.Errorf("bundle under another key: exit %d\n%s", res.code, res.stderr)
	}

	// Another tenant's auditor: none of it.
	e.svc("tenant", "create", "globex", "-consul-addr", e.cluster.Agent("web-2").HTTPAddr(), "-prefix", e.prefix)
	globex := e.newToken("globex", "gina", "auditor")
	if res := e.cliAs(globex, nil, "audit", "prove", runID); res.code != 1 || !strings.Contains(res.stderr, "no logged event") {
		t.Errorf("another tenant's auditor proving the run: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	e.awaitLogged()
	if res := e.cliAs(globex, nil, "audit", "checkpoint"); res.code != 0 || !strings.HasPrefix(res.stdout, "rexec-e2e/tenant/globex\n") {
		t.Errorf("globex checkpoint: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	// A submitter does not read the log.
	sub := e.newToken("acme", "sam", "submitter")
	if res := e.cliAs(sub, nil, "audit", "verify"); res.code != 1 || !strings.Contains(res.stderr, "audit.read refused") {
		t.Errorf("submitter verifying: exit %d\n%s", res.code, res.stderr)
	}

	// A superuser changes the recorded exit code: verify names the event.
	var eventID int64
	err = e.conn().QueryRow(ctxT(t, 10*time.Second), `SELECT id FROM audit_events
		WHERE run_id = $1 AND type = 'node.exited' AND coalesce(node, data->>'node') = 'db-1'`, runID).Scan(&eventID)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := e.conn().Begin(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SET LOCAL session_replication_role = replica",
		`UPDATE audit_events SET body = replace(body, '"exit_code":3', '"exit_code":0') WHERE id = ` + strconv.FormatInt(eventID, 10)} {
		if _, err := tx.Exec(ctxT(t, 10*time.Second), q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	res = e.cli(nil, "audit", "verify")
	want := regexp.MustCompile(`FAILED: event ` + strconv.FormatInt(eventID, 10) + ` \(leaf \d+\): its body does not hash`)
	if res.code != 1 || !want.MatchString(res.stderr) {
		t.Errorf("verify after tampering: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// awaitLogged waits until the tenant's latest checkpoint covers every
// audit event committed so far, and returns its size.
func (e *env) awaitLogged() int64 {
	e.t.Helper()
	ctx := ctxT(e.t, 30*time.Second)
	var want int64
	if err := e.conn().QueryRow(ctx, `SELECT count(*) FROM audit_events e JOIN tenants t ON t.id = e.tenant_id WHERE t.name = 'acme'`).Scan(&want); err != nil {
		e.t.Fatal(err)
	}
	for {
		var size int64
		err := e.conn().QueryRow(ctx, `SELECT coalesce(max(size), 0) FROM audit_checkpoints c JOIN tenants t ON t.id = c.log_id WHERE t.name = 'acme'`).Scan(&size)
		if err != nil {
			e.t.Fatal(err)
		}
		if size >= want {
			return size
		}
		if ctx.Err() != nil {
			e.t.Fatalf("after 30 s the log holds %d of %d events", size, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAuditFollow streams new events as NDJSON, in log order, the way a
// SIEM shipper would read them, and resumes from a leaf.
func TestAuditFollow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	// From the log's end as it is now (a follower started without
	// -from-leaf would start there too, but only once it has asked).
	end := e.awaitLogged()
	cmd := exec.Command(bins.cli, "audit", "-follow", "-type", "run.submitted,node.exited,run.finished", "-from-leaf", strconv.FormatInt(end, 10))
	cmd.Env = append(os.Environ(), "REXEC_ADDR="+e.addr, "REXEC_TOKEN="+e.token)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()

	res := e.cli(nil, "exec", "-node", "^(web-1|web-2)$", "true")
	if res.code != 0 {
		t.Fatalf("exec: exit %d\n%s", res.code, res.stderr)
	}
	type line struct {
		Leaf *int64
		Type string
		Run  string
		Node string
		Body string
	}
	var got []line
	timeout := time.After(30 * time.Second)
	for len(got) == 0 || got[len(got)-1].Type != "run.finished" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the stream ended: %s", stderr.String())
			}
			var ln line
			if err := json.Unmarshal([]byte(l), &ln); err != nil || ln.Leaf == nil || ln.Body == "" {
				t.Fatalf("not an event line with its leaf: %q (%v)", l, err)
			}
			got = append(got, ln)
		case <-timeout:
			t.Fatalf("after 30 s the stream had %d events: %+v\n%s", len(got), got, stderr.String())
		}
	}
	var kinds []string
	for i, l := range got {
		kinds = append(kinds, l.Type+" "+l.Node)
		if i > 0 && *l.Leaf <= *got[i-1].Leaf {
			t.Errorf("leaves out of order: %d after %d", *l.Leaf, *got[i-1].Leaf)
		}
	}
	if len(got) != 4 || got[0].Type != "run.submitted" || got[1].Type != "node.exited" || got[2].Type != "node.exited" {
		t.Errorf("stream %v, want the submission, two exits and the end", kinds)
	}

	// Resuming after the submission replays the rest, and only that.
	res = e.cli(nil, "audit", "-follow", "-from-leaf", "bogus")
	if res.code != 1 {
		t.Errorf("bad -from-leaf: exit %d", res.code)
	}
	res = e.cli(nil, "audit", "-follow", "-type", "node.exitted")
	if res.code != 1 || !strings.Contains(res.stderr, `unknown event type "node.exitted"`) {
		t.Errorf("-follow with a misspelt type: exit %d\n%s", res.code, res.stderr)
	}
	res = e.cli(nil, "audit", "-follow", "-node", "web-1")
	if res.code != 1 || !strings.Contains(res.stderr, "-follow streams every new event") {
		t.Errorf("-follow with a filter: exit %d\n%s", res.code, res.stderr)
	}
	ctx := ctxT(t, 30*time.Second)
	resume := exec.CommandContext(ctx, bins.cli, "audit", "-follow", "-type", "node.exited", "-from-leaf", strconv.FormatInt(*got[0].Leaf+1, 10))
	resume.Env = cmd.Env
	rout, err := resume.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := resume.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resume.Process.Kill(); _ = resume.Wait() }()
	sc := bufio.NewScanner(rout)
	for i := 1; i <= 2; i++ {
		if !sc.Scan() {
			t.Fatalf("resumed stream ended after %d lines", i-1)
		}
		var ln line
		if err := json.Unmarshal(sc.Bytes(), &ln); err != nil || ln.Type != "node.exited" || *ln.Leaf != *got[i].Leaf {
			t.Errorf("resumed line %d: %s, want leaf %d", i, sc.Bytes(), *got[i].Leaf)
		}
	}
}
