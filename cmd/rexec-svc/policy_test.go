package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const allowPolicy = "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n"

func TestPolicyTest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note    string
		args    []string
		wantErr string
		want    []string // regexps, each matching a whole line of stdout
	}{
		{
			note: "embedded default",
			args: []string{"-dir="},
			want: []string{
				`PASS data\.rexec_test\.test_role_action_matrix \(\S+\)`,
				`PASS data\.rexec_test\.test_nobody_approves_own_run \(\S+\)`,
				`\d+ passed, 0 failed`,
				`revision [0-9a-f]{64}`,
			},
		},
		{
			note: "example",
			args: []string{"-dir", "../../internal/policy/examples/allowlist"},
			want: []string{`PASS data\.rexec_test\.test_shell_metacharacters_are_denied \(\S+\)`, `\d+ passed, 0 failed`},
		},
		{
			note: "failures",
			args: []string{"-dir", writeFiles(t, map[string]string{
				"p.rego": allowPolicy,
				"p_test.rego": "package rexec_test\n\nimport data.rexec\n\n" +
					"test_ok if rexec.decision.outcome == \"allow\"\n\n" +
					"test_bad if rexec.decision.outcome == \"deny\"\n\n" +
					"todo_test_later if false\n",
			})},
			wantErr: "1 of 2 policy tests failed",
			want: []string{
				`PASS data\.rexec_test\.test_ok \(\S+\)`,
				`FAIL data\.rexec_test\.test_bad \(\S+\)`,
				`    \S*p_test\.rego:7: false or undefined:`,
				`SKIP data\.rexec_test\.todo_test_later`,
				`1 passed, 1 failed, 1 skipped`,
			},
		},
		{
			note:    "no tests",
			args:    []string{"-dir", writeFiles(t, map[string]string{"p.rego": allowPolicy})},
			wantErr: "no policy tests found",
			want:    []string{`0 passed, 0 failed`},
		},
		{
			note: "broken policy",
			args: []string{"-dir", writeFiles(t, map[string]string{
				"p.rego":      allowPolicy + "\nbroken if {\n",
				"p_test.rego": "package rexec_test\n\ntest_x if true\n",
			})},
			wantErr: "p.rego:6: rego_parse_error",
		},
		{
			note: "tests pass, but serve would refuse it",
			args: []string{"-dir", writeFiles(t, map[string]string{
				"p.rego":      "package rexec\n\nallow := true\n",
				"p_test.rego": "package rexec_test\n\ntest_x if data.rexec.allow\n",
			})},
			wantErr: "does not define data.rexec.decision",
			want:    []string{`1 passed, 0 failed`},
		},
		{note: "stray argument", args: []string{"-dir=", "extra"}, wantErr: "unexpected arguments"},
		{note: "missing dir", args: []string{"-dir", "/nonexistent/policy"}, wantErr: "no such file or directory"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"policy", "test"}, tc.args...), &stdout, &stderr)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("error %v\n%s", err, stdout.String())
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("error %v, want %q\n%s", err, tc.wantErr, stdout.String())
			}
			for _, want := range tc.want {
				if !regexp.MustCompile(`(?m)^` + want + `$`).MatchString(stdout.String()) {
					t.Errorf("no line matches %s in\n%s", want, stdout.String())
				}
			}
		})
	}
}

// TestPolicyTestDirFromEnvironment: like serve, policy test takes its
// directory from $REXEC_POLICY_DIR when -dir is not given.
func TestPolicyTestDirFromEnvironment(t *testing.T) {
	t.Setenv("REXEC_POLICY_DIR", writeFiles(t, map[string]string{"p.rego": allowPolicy}))
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"policy", "test"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no policy tests found") {
		t.Errorf("error %v: the directory from the environment was not used\n%s", err, stdout.String())
	}
}
