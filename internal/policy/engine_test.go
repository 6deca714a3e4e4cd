package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

func submitInput(name string, roles []string, reason string) Input {
	return Input{
		Action:    ActionExecSubmit,
		Principal: Principal{Name: name, Roles: roles},
		Tenant:    Tenant{Name: "acme"},
		Request: &Request{
			Command: "uptime", Argv: []string{"uptime"}, Shell: true, Prefix: "_rexec",
			Reason: reason, Wait: 2 * time.Second, WaitRepl: 200 * time.Millisecond,
		},
		Targets: []Target{
			{Node: "stg-1", Address: "10.0.0.1", Services: []Service{{ID: "web", Name: "web", Tags: []string{"staging"}}}},
		},
		Preflight: Preflight{Checked: true, Allowed: true},
		Time:      time.Date(2025, 6, 2, 10, 0, 0, 0, time.UTC),
	}
}

func runInput(action Action, name string, roles []string, run Run) Input {
	in := submitInput(name, roles, "restart after deploy")
	in.Action = action
	in.Preflight = Preflight{}
	in.Run = &run
	return in
}

func pendingRun(by string) Run {
	return Run{
		ID: "r-1", State: "pending_approval", SubmittedBy: by,
		SubmittedAt:       time.Date(2025, 6, 2, 9, 0, 0, 0, time.UTC),
		RequiredApprovals: 1, ApproverRoles: []string{"approver"},
	}
}

func withTargets(in Input, targets ...Target) Input {
	in.Targets = targets
	return in
}

func prodNode(name string) Target {
	return Target{Node: name, Services: []Service{{ID: "api", Name: "api", Tags: []string{"v3", "prod"}}}}
}

func nodes(n int) []Target {
	out := make([]Target, n)
	for i := range out {
		out[i] = Target{Node: fmt.Sprintf("n-%02d", i)}
	}
	return out
}

func newEngine(t testing.TB, dir string) *Engine {
	t.Helper()
	e, err := New(context.Background(), Config{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestDecideDefaultPolicy(t *testing.T) {
	t.Parallel()
	e := newEngine(t, "")
	for _, tc := range []struct {
		note        string
		in          Input
		want        Outcome
		wantReasons []string // each must appear in some reason
		wantApprove int
	}{
		{
			note: "submitter runs on staging",
			in:   submitInput("alice", []string{"submitter"}, ""),
			want: Allow,
		},
		{
			note:        "prod needs an approver and says why",
			in:          withTargets(submitInput("alice", []string{"submitter"}, "INC-1"), prodNode("api-1")),
			want:        RequireApproval,
			wantReasons: []string{"1 target node(s) run a service tagged prod: api-1"},
			wantApprove: 1,
		},
		{
			note:        "prod without a reason is denied",
			in:          withTargets(submitInput("alice", []string{"submitter"}, ""), prodNode("api-1")),
			want:        Deny,
			wantReasons: []string{"a reason is required"},
		},
		{
			note:        "more than 10 targets need approval",
			in:          withTargets(submitInput("alice", []string{"submitter"}, "rotate"), nodes(11)...),
			want:        RequireApproval,
			wantReasons: []string{"11 target nodes, more than 10"},
			wantApprove: 1,
		},
		{
			note: "10 targets do not",
			in:   withTargets(submitInput("alice", []string{"submitter"}, ""), nodes(10)...),
			want: Allow,
		},
		{
			note: "nil services and tags are no targets' business",
			in:   withTargets(submitInput("alice", []string{"submitter"}, ""), Target{Node: "bare"}),
			want: Allow,
		},
		{
			note: "failed preflight names the missing permissions",
			in: func() Input {
				in := submitInput("alice", []string{"submitter"}, "")
				in.Preflight = Preflight{Checked: true, Missing: []string{"event:write _rexec"}}
				return in
			}(),
			want:        Deny,
			wantReasons: []string{"the tenant's Consul token lacks event:write _rexec"},
		},
		{
			note:        "auditors never submit",
			in:          submitInput("erin", []string{"auditor"}, ""),
			want:        Deny,
			wantReasons: []string{"erin (roles: auditor) may not exec.submit"},
		},
		{
			note: "approver approves another's run",
			in:   runInput(ActionExecApprove, "carol", []string{"approver"}, pendingRun("alice")),
			want: Allow,
		},
		{
			note:        "nobody approves their own run",
			in:          runInput(ActionExecApprove, "carol", []string{"submitter", "approver"}, pendingRun("carol")),
			want:        Deny,
			wantReasons: []string{"nobody may approve their own run"},
		},
		{
			note: "approver reads output of a run pending its approval",
			in:   runInput(ActionOutputRead, "carol", []string{"approver"}, pendingRun("alice")),
			want: Allow,
		},
		{
			note: "approver may not read output of a run not pending its approval",
			in: runInput(ActionOutputRead, "carol", []string{"approver"}, Run{
				ID: "r-2", State: "completed", SubmittedBy: "alice",
			}),
			want:        Deny,
			wantReasons: []string{"carol (roles: approver) may not output.read run r-2"},
		},
		{
			note: "approver reads a run it approved",
			in: runInput(ActionRunRead, "carol", []string{"approver"}, func() Run {
				r := pendingRun("alice")
				r.State = "completed"
				r.Approvals = []Approval{{Principal: "carol", Roles: []string{"approver"}}}
				return r
			}()),
			want: Allow,
		},
		{
			note: "submitter cancels its own run",
			in:   runInput(ActionExecCancel, "alice", []string{"submitter"}, pendingRun("alice")),
			want: Allow,
		},
		{
			note: "submitter may not cancel another's",
			in:   runInput(ActionExecCancel, "bob", []string{"submitter"}, pendingRun("alice")),
			want: Deny,
		},
		{
			note: "auditor reads the audit log",
			in:   Input{Action: ActionAuditRead, Principal: Principal{Name: "erin", Roles: []string{"auditor"}}},
			want: Allow,
		},
		{
			note: "admin lists runs",
			in:   Input{Action: ActionRunList, Principal: Principal{Name: "frank", Roles: []string{"admin"}}},
			want: Allow,
		},
		{
			note:        "an action on a run without the run is denied",
			in:          Input{Action: ActionRunRead, Principal: Principal{Name: "frank", Roles: []string{"admin"}}},
			want:        Deny,
			wantReasons: []string{"run.read needs the run in input.run"},
		},
		{
			note:        "unknown action",
			in:          Input{Action: "exec.reboot", Principal: Principal{Name: "frank", Roles: []string{"admin"}}},
			want:        Deny,
			wantReasons: []string{`unknown action "exec.reboot"`},
		},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			d, err := e.Decide(context.Background(), tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if d.Outcome != tc.want {
				t.Fatalf("outcome %q, want %q (reasons %q)", d.Outcome, tc.want, d.Reasons)
			}
			for _, want := range tc.wantReasons {
				if !slices.ContainsFunc(d.Reasons, func(r string) bool { return strings.Contains(r, want) }) {
					t.Errorf("reasons %q lack %q", d.Reasons, want)
				}
			}
			if d.Outcome == Deny && len(d.Reasons) == 0 {
				t.Error("a denial without a reason")
			}
			if d.Approvals != tc.wantApprove {
				t.Errorf("approvals %d, want %d", d.Approvals, tc.wantApprove)
			}
			if tc.wantApprove > 0 && !slices.Equal(d.ApproverRoles, []string{"approver"}) {
				t.Errorf("approver roles %q, want [approver]", d.ApproverRoles)
			}
			if d.Revision != e.Revision() {
				t.Errorf("revision %q, want the engine's %q", d.Revision, e.Revision())
			}
		})
	}
}

func TestDecideNeedsAnAction(t *testing.T) {
	t.Parallel()
	if _, err := newEngine(t, "").Decide(context.Background(), Input{}); err == nil {
		t.Fatal("an input without an action was decided")
	}
}

// writePolicy writes files (name -> content) into a new directory.
func writePolicy(t testing.TB, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// copyDefault copies the embedded default policy into a new directory.
func copyDefault(t testing.TB) string {
	t.Helper()
	files := map[string]string{}
	err := fs.WalkDir(defaultFS, "default", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := defaultFS.ReadFile(p)
		files[strings.TrimPrefix(p, "default/")] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return writePolicy(t, files)
}

// TestDecideFailsClosed: whatever goes wrong in a policy is an error, which
// callers treat as a denial; nothing defaults to a decision.
func TestDecideFailsClosed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note     string
		decision string
		invalid  bool // the error is ErrInvalidDecision
		want     string
	}{
		{note: "undefined", decision: `decision := {"outcome": "allow"} if input.action == "never"`, invalid: true, want: "undefined"},
		{note: "not an object", decision: `decision := "allow"`, invalid: true, want: "not an object"},
		{note: "no outcome", decision: `decision := {"reasons": []}`, invalid: true, want: "no outcome"},
		{note: "unknown outcome", decision: `decision := {"outcome": "permit"}`, invalid: true, want: `unknown outcome "permit"`},
		{note: "misspelt field", decision: `decision := {"outcome": "deny", "reason": ["x"]}`, invalid: true, want: `unknown field "reason"`},
		{note: "reasons not strings", decision: `decision := {"outcome": "deny", "reasons": [1]}`, invalid: true, want: "element 0"},
		{note: "approval without count", decision: `decision := {"outcome": "require_approval", "approver_roles": ["approver"]}`, invalid: true, want: "at least 1"},
		{note: "approval without roles", decision: `decision := {"outcome": "require_approval", "approvals": 1}`, invalid: true, want: "approver role"},
		{note: "fractional approvals", decision: `decision := {"outcome": "require_approval", "approvals": 1.5, "approver_roles": ["a"]}`, invalid: true, want: "integer"},
		{
			note: "conflicting values", invalid: false, want: "conflict",
			decision: "decision := {\"outcome\": \"allow\"} if input.action\ndecision := {\"outcome\": \"deny\"} if input.action",
		},
		{
			// Without strict builtin errors this rule would be undefined and
			// the run would need one approval instead of two.
			note: "builtin error", invalid: false, want: "unknown time zone",
			decision: `decision := {"outcome": "allow"} if time.clock([0, "Mars/Olympus_Mons"])`,
		},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			e := newEngine(t, writePolicy(t, map[string]string{"p.rego": "package rexec\n\n" + tc.decision + "\n"}))
			d, err := e.Decide(context.Background(), submitInput("alice", []string{"submitter"}, ""))
			if err == nil {
				t.Fatalf("decided %+v", d)
			}
			if errors.Is(err, ErrInvalidDecision) != tc.invalid {
				t.Errorf("errors.Is(%v, ErrInvalidDecision) = %v", err, !tc.invalid)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q lacks %q", err, tc.want)
			}
		})
	}
}

// TestDecisionNeverFallsThroughToAllow: with the default's rexec.rego, a
// submit.rego whose approval count is undefined at run time leaves the
// decision undefined (an error, so a denial), rather than falling through
// to allow a run that needs approval.
func TestDecisionNeverFallsThroughToAllow(t *testing.T) {
	t.Parallel()
	dir := copyDefault(t)
	if err := os.WriteFile(filepath.Join(dir, "submit.rego"), []byte(`package rexec

approval_reasons contains "every run" if true

approver_roles := ["approver"]

required_approvals := 2 if input.tenant.name == "other"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := newEngine(t, dir).Decide(context.Background(), submitInput("alice", []string{"submitter"}, "why"))
	if !errors.Is(err, ErrInvalidDecision) {
		t.Errorf("Decide = %+v, %v; want ErrInvalidDecision", d, err)
	}
}

func TestDecideIgnoresApprovalFieldsUnlessRequired(t *testing.T) {
	t.Parallel()
	e := newEngine(t, writePolicy(t, map[string]string{"p.rego": `package rexec

decision := {"outcome": "allow", "reasons": ["fine"], "approvals": 2, "approver_roles": ["approver"]}
`}))
	d, err := e.Decide(context.Background(), submitInput("alice", nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	if d.Outcome != Allow || d.Approvals != 0 || d.ApproverRoles != nil || !slices.Equal(d.Reasons, []string{"fine"}) {
		t.Errorf("decision %+v", d)
	}
}

func TestNewRefusesBadPolicies(t *testing.T) {
	t.Parallel()
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		note   string
		dir    string
		target error
		want   *regexp.Regexp
	}{
		{note: "missing dir", dir: filepath.Join(t.TempDir(), "nope"), target: fs.ErrNotExist},
		{note: "not a dir", dir: notDir, want: regexp.MustCompile(`is not a directory`)},
		{note: "empty dir", dir: t.TempDir(), target: ErrNoPolicy},
		{
			note:   "only tests",
			dir:    writePolicy(t, map[string]string{"a_test.rego": "package rexec_test\n\ntest_x if true\n"}),
			target: ErrNoPolicy,
		},
		{
			note:   "no decision rule",
			dir:    writePolicy(t, map[string]string{"a.rego": "package rexec\n\nallow := true\n"}),
			target: ErrNoDecisionRule,
		},
		{
			note: "syntax error",
			dir:  writePolicy(t, map[string]string{"a.rego": "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n\nallow if { true ]\n"}),
			want: regexp.MustCompile(`a\.rego:5: rego_parse_error`),
		},
		{
			note: "unsafe variable",
			dir:  writePolicy(t, map[string]string{"sub/b.rego": "package rexec\n\ndecision := {\"outcome\": x}\n"}),
			want: regexp.MustCompile(`sub/b\.rego:3: rego_unsafe_var_error`),
		},
		{
			note: "Rego v0 syntax",
			dir:  writePolicy(t, map[string]string{"v0.rego": "package rexec\n\ndecision = d { d := {\"outcome\": \"allow\"} }\n"}),
			want: regexp.MustCompile(`v0\.rego:3: rego_parse_error`),
		},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			_, err := New(context.Background(), Config{Dir: tc.dir})
			if err == nil {
				t.Fatal("loaded")
			}
			if tc.target != nil && !errors.Is(err, tc.target) {
				t.Errorf("error %q is not %v", err, tc.target)
			}
			if tc.want != nil && !tc.want.MatchString(err.Error()) {
				t.Errorf("error %q does not match %s", err, tc.want)
			}
		})
	}
}

func TestLoadSkipsTestsAndHiddenFiles(t *testing.T) {
	t.Parallel()
	dir := writePolicy(t, map[string]string{
		"p.rego":           "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n",
		"p_test.rego":      "package rexec\n\nthis is not rego\n",
		".p.rego.swp":      "garbage",
		".git/x.rego":      "garbage",
		"notes/README.md":  "not rego",
		"lib/helpers.rego": "package rexec.lib\n\nx := 1\n",
	})
	e := newEngine(t, dir)
	if got := e.current.Load().files; len(got) != 2 {
		t.Errorf("loaded %q, want p.rego and lib/helpers.rego", got)
	}
}

// TestLoadConfigMapLayout: Kubernetes mounts a ConfigMap as symlinks into
// a hidden, timestamped directory; each file is read once, through its
// link.
func TestLoadConfigMapLayout(t *testing.T) {
	t.Parallel()
	const policy = "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n"
	dir := writePolicy(t, map[string]string{"..2025_06_02_10_00_00.1/p.rego": policy})
	for _, link := range []struct{ name, target string }{
		{"..data", "..2025_06_02_10_00_00.1"},
		{"p.rego", "..data/p.rego"},
	} {
		if err := os.Symlink(link.target, filepath.Join(dir, link.name)); err != nil {
			t.Skip("no symlinks here:", err)
		}
	}
	e := newEngine(t, dir)
	if got := e.current.Load().files; len(got) != 1 || filepath.Base(got[0]) != "p.rego" {
		t.Errorf("loaded %q, want p.rego once", got)
	}
	if e.Revision() != newEngine(t, writePolicy(t, map[string]string{"p.rego": policy})).Revision() {
		t.Error("the revision depends on the links")
	}
}

// TestRevision: the revision is a function of the policy files' relative
// names and contents, not of where the directory is, nor of its tests.
func TestRevision(t *testing.T) {
	t.Parallel()
	embedded := newEngine(t, "").Revision()
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(embedded) {
		t.Fatalf("revision %q is not a hex sha256", embedded)
	}
	a, b := copyDefault(t), copyDefault(t)
	if got := newEngine(t, a).Revision(); got != embedded {
		t.Errorf("a copy of the default has revision %s, the embedded one %s", got, embedded)
	}
	if err := os.WriteFile(filepath.Join(b, "rexec_test.rego"), []byte("package rexec_test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := newEngine(t, b).Revision(); got != embedded {
		t.Error("editing a test changed the revision")
	}
	if err := os.WriteFile(filepath.Join(b, "extra.rego"), []byte("package rexec\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := newEngine(t, b).Revision(); got == embedded {
		t.Error("adding a policy file left the revision alone")
	}
	// Moving content from one file's end to the next one's start must
	// change the revision: names and contents are length-prefixed.
	x := newEngine(t, writePolicy(t, map[string]string{"a.rego": "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n", "b.rego": "package rexec\n"})).Revision()
	y := newEngine(t, writePolicy(t, map[string]string{"a.rego": "package rexec\n\ndecision := {\"outcome\": \"allow\"}", "b.rego": "\npackage rexec\n"})).Revision()
	if x == y {
		t.Error("different files, same revision")
	}
}

// TestReload: a policy that compiles replaces the current one; one that
// does not is refused with file and line, and the old one stays in force.
func TestReload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := copyDefault(t)
	e := newEngine(t, dir)
	rev0 := e.Revision()
	prod := withTargets(submitInput("alice", []string{"submitter"}, "INC-7"), prodNode("api-1"))
	decide := func() Decision {
		t.Helper()
		d, err := e.Decide(ctx, prod)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	// Line 4 of submit.rego loses its closing quote.
	path := filepath.Join(dir, "submit.rego")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(good), "\n")
	line := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "prod_tag := ") }) + 1
	broken := strings.Replace(string(good), `prod_tag := "prod"`, `prod_tag := "prod`, 1)
	if err := os.WriteFile(path, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	err = e.Reload(ctx)
	if err == nil {
		t.Fatal("a broken policy was loaded")
	}
	if want := fmt.Sprintf("submit.rego:%d:", line); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %s", err, want)
	}
	if e.Revision() != rev0 {
		t.Error("the revision changed with a refused policy")
	}
	if d := decide(); d.Outcome != RequireApproval || d.Revision != rev0 {
		t.Errorf("after a refused reload: %+v", d)
	}

	// A policy that compiles replaces it: prod is now tagged "live".
	fixed := strings.Replace(string(good), `prod_tag := "prod"`, `prod_tag := "live"`, 1)
	if err := os.WriteFile(path, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	rev1 := e.Revision()
	if rev1 == rev0 {
		t.Error("the revision did not change")
	}
	if d := decide(); d.Outcome != Allow || d.Revision != rev1 {
		t.Errorf("after reload: %+v", d)
	}
}

func TestReloadEmbedded(t *testing.T) {
	t.Parallel()
	e := newEngine(t, "")
	rev := e.Revision()
	if err := e.Reload(context.Background()); err != nil || e.Revision() != rev {
		t.Errorf("Reload = %v, revision %s -> %s", err, rev, e.Revision())
	}
}

// TestDecideDuringReload runs decisions while the policy changes under
// them (run with -race): each decision is made whole by one policy.
func TestDecideDuringReload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := copyDefault(t)
	e := newEngine(t, dir)
	revs := map[string]Outcome{e.Revision(): RequireApproval}
	path := filepath.Join(dir, "submit.rego")
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	in := withTargets(submitInput("alice", []string{"submitter"}, "INC-9"), prodNode("api-1"))

	var wg sync.WaitGroup
	stop := make(chan struct{})
	results := make(chan Decision, 1024)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				d, err := e.Decide(ctx, in)
				if err != nil {
					t.Error(err)
					return
				}
				select {
				case results <- d:
				default:
				}
			}
		})
	}
	var mu sync.Mutex
	for i := range 6 {
		src := string(good)
		if i%2 == 0 {
			src = strings.Replace(src, `prod_tag := "prod"`, `prod_tag := "live"`, 1)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := e.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		if i%2 == 0 {
			revs[e.Revision()] = Allow
		} else {
			revs[e.Revision()] = RequireApproval
		}
		mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	close(results)
	for d := range results {
		if want, ok := revs[d.Revision]; !ok || d.Outcome != want {
			t.Errorf("revision %s decided %s, want %s", short(d.Revision), d.Outcome, want)
		}
	}
}

// TestInputValueIsJSON holds Input.value to the JSON form policy authors
// read in docs/policy.md: the same document, but nil slices empty.
func TestInputValueIsJSON(t *testing.T) {
	t.Parallel()
	at := time.Date(2025, 6, 2, 10, 0, 0, 123, time.FixedZone("CEST", 2*3600))
	full := Input{
		Action:    ActionExecApprove,
		Principal: Principal{Name: "carol", Roles: []string{"approver"}},
		Tenant:    Tenant{Name: "acme", TimeZone: "Europe/Berlin"},
		Request: &Request{
			Command: "systemctl restart app", Argv: []string{"systemctl", "restart", "app"}, Shell: true,
			ScriptSHA256: "ab", ScriptBytes: 2, Script: "hi", NodeFilter: "^web", ServiceFilter: "app",
			TagFilter: "v2", Prefix: "_rexec/team", Reason: "INC-1", Wait: 2 * time.Second,
			WaitRepl: 200 * time.Millisecond, Timeout: time.Hour,
		},
		Targets: []Target{
			{Node: "web-1", Address: "10.0.0.1", Services: []Service{
				{ID: "app-1", Name: "app", Tags: []string{"v2", "prod"}},
				{ID: "x", Tags: []string{"a:b"}},
			}},
			// Shared service terms must stay distinct where fields differ.
			{Node: "web-2", Address: "10.0.0.2", Services: []Service{
				{ID: "app-1", Name: "app", Tags: []string{"v2", "prod"}},
				{ID: "x", Tags: []string{"a", "b"}},
				{ID: "x", Tags: []string{"ab"}},
				{ID: "xa", Tags: []string{"b"}},
			}},
		},
		Preflight: Preflight{Checked: true, Allowed: false, Missing: []string{"event:write _rexec"}},
		Run: &Run{
			ID: "r-1", State: "pending_approval", SubmittedBy: "alice", SubmittedAt: at,
			RequiredApprovals: 2, ApproverRoles: []string{"approver"},
			Approvals: []Approval{{Principal: "dave", Roles: []string{"approver"}, Time: at}},
		},
		Time: at,
	}
	viaJSON, err := ast.InterfaceToValue(full)
	if err != nil {
		t.Fatal(err)
	}
	if got := full.value(); got.Compare(viaJSON) != 0 {
		t.Errorf("value() = %v\nJSON    = %v", got, viaJSON)
	}

	sparse := Input{
		Action:  ActionExecApprove,
		Request: &Request{},
		Targets: []Target{{Node: "a"}, {Node: "b", Services: []Service{{ID: "s"}}}},
		Run:     &Run{Approvals: []Approval{{Principal: "dave"}}},
	}
	var doc map[string]any
	if err := ast.As(sparse.value(), &doc); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, "null") {
		t.Errorf("nil slices became null: %s", s)
	}
	if _, ok := doc["request"]; !ok {
		t.Error("request missing")
	}
	for _, key := range []string{"run", "request"} {
		if (Input{Action: ActionRunList}).value().(ast.Object).Get(ast.StringTerm(key)) != nil {
			t.Errorf("a nil %s is present", key)
		}
	}
}

func TestSetScript(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note   string
		script []byte
		sha    string
		bytes  int
		text   string
	}{
		{note: "none"},
		{note: "text", script: []byte("echo hi\n"), sha: "ab08508fdf5ca4da5c4995987bc41c56c048aaa5eeb046417ae4049b7d40286e", bytes: 8, text: "echo hi\n"},
		{note: "not UTF-8", script: []byte{0xff, 0xfe, 0x00}, sha: "ba778c0261008c8f71ae4061ad0162ffcbe63b52c91f89f236738131d1217ec7", bytes: 3},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			r := Request{Script: "stale"}
			r.SetScript(tc.script)
			if r.ScriptSHA256 != tc.sha || r.ScriptBytes != tc.bytes || r.Script != tc.text {
				t.Errorf("SetScript(%q) = %q, %d, %q; want %q, %d, %q", tc.script, r.ScriptSHA256, r.ScriptBytes, r.Script, tc.sha, tc.bytes, tc.text)
			}
		})
	}
}

// TestEveryActionIsDecided: the default policy knows every action rexec
// asks about, and lets an admin do each but approve.
func TestEveryActionIsDecided(t *testing.T) {
	t.Parallel()
	e := newEngine(t, "")
	for _, a := range Actions {
		in := runInput(a, "frank", []string{"admin"}, pendingRun("alice"))
		switch a {
		case ActionExecSubmit:
			in = submitInput("frank", []string{"admin"}, "")
		case ActionAuditRead, ActionRunList:
			in = Input{Action: a, Principal: Principal{Name: "frank", Roles: []string{"admin"}}}
		}
		d, err := e.Decide(context.Background(), in)
		want := Allow
		if a == ActionExecApprove {
			want = Deny
		}
		if err != nil || d.Outcome != want {
			t.Errorf("%s: %+v, %v; want %s", a, d, err, want)
		}
	}
}

// TestTargetTermsKept: node terms kept across decisions (nodeTerms) are
// those of the very same node: targets that differ only in where one field
// ends and the next begins, or one service ends and the next begins, get
// terms of their own, each equal to its JSON form, cached or not.
func TestTargetTermsKept(t *testing.T) {
	t.Parallel()
	sets := [][]Target{
		{{Node: "n", Services: []Service{{ID: "x", Tags: []string{"a", "b"}}}}},
		{{Node: "n", Services: []Service{{ID: "x", Tags: []string{"ab"}}}}},
		{{Node: "n", Services: []Service{{ID: "x", Tags: []string{"a"}}, {ID: "b", Tags: []string{}}}}},
		{{Node: "n", Services: []Service{{ID: "xa", Tags: []string{"b"}}}}},
		{{Node: "n", Address: "x", Services: []Service{}}},
		{{Node: "nx", Services: []Service{}}},
		{{Node: "n", Services: []Service{{ID: "x", Name: "y", Tags: []string{}}}}},
		{{Node: "n", Services: []Service{{ID: "xy", Tags: []string{}}}}},
	}
	for round := range 2 { // made, then kept
		for i, ts := range sets {
			viaJSON, err := ast.InterfaceToValue(ts)
			if err != nil {
				t.Fatal(err)
			}
			in := Input{Action: ActionExecSubmit, Targets: ts}
			if got := in.value().(ast.Object).Get(ast.StringTerm("targets")).Value; got.Compare(viaJSON) != 0 {
				t.Errorf("round %d, set %d: value() = %v\nJSON    = %v", round, i, got, viaJSON)
			}
		}
	}
}
