package policy

import (
	"context"
	"strings"
	"testing"
)

// TestRegoTests runs the Rego tests of the default policy and of the
// examples, so that `go test` fails when a policy and its tests disagree.
func TestRegoTests(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note string
		dir  string
	}{
		{note: "embedded default", dir: ""},
		{note: "default dir", dir: "default"},
		{note: "allowlist example", dir: "examples/allowlist"},
		{note: "business-hours example", dir: "examples/business-hours"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			results, err := RunTests(context.Background(), tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(results) < 20 {
				t.Errorf("only %d tests", len(results))
			}
			for _, r := range results {
				if !r.Passed {
					t.Errorf("FAIL %s (%s): %s\n%s", r.FullName(), r.Location, r.Message, strings.Join(r.FailedCases, "\n"))
				}
			}
			// Every example is a complete policy that rexec can load.
			if _, err := New(context.Background(), Config{Dir: tc.dir}); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRunTestsReportsEachOutcome(t *testing.T) {
	t.Parallel()
	dir := writePolicy(t, map[string]string{
		"p.rego": "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n",
		"p_test.rego": `package rexec_test

import data.rexec

test_passes if rexec.decision.outcome == "allow"

test_fails if {
	print("looking")
	rexec.decision.outcome == "deny"
}

test_cases[note] if {
	some note, want in {"ok": "allow", "bad": "deny"}
	rexec.decision.outcome == want
}

test_errors if time.clock([0, "Nowhere/Never"])

todo_test_later if false
`,
	})
	results, err := RunTests(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]TestResult{}
	var order []string
	for _, r := range results {
		byName[r.Name] = r
		order = append(order, r.Name)
	}
	if got := strings.Join(order, " "); got != "test_passes test_fails test_cases test_errors todo_test_later" {
		t.Errorf("order %q, want file order", got)
	}
	for _, tc := range []struct {
		name         string
		passed, skip bool
		message      string
		cases        []string
		output       string
	}{
		{name: "test_passes", passed: true},
		{name: "test_fails", message: `p_test.rego:9: `, output: "looking"},
		{name: "test_cases", message: "1 of 2 cases failed", cases: []string{"bad: "}},
		{name: "test_errors", message: "unknown time zone"},
		{name: "todo_test_later", skip: true},
	} {
		r, ok := byName[tc.name]
		if !ok {
			t.Errorf("%s: no result", tc.name)
			continue
		}
		if r.Passed != tc.passed || r.Skipped != tc.skip {
			t.Errorf("%s: passed %v skipped %v", tc.name, r.Passed, r.Skipped)
		}
		if r.Package != "data.rexec_test" || r.FullName() != "data.rexec_test."+tc.name {
			t.Errorf("%s: package %q, full name %q", tc.name, r.Package, r.FullName())
		}
		if !strings.Contains(r.Location, "p_test.rego:") {
			t.Errorf("%s: location %q", tc.name, r.Location)
		}
		if !strings.Contains(r.Message, tc.message) || (tc.message == "") != (r.Message == "") {
			t.Errorf("%s: message %q, want %q", tc.name, r.Message, tc.message)
		}
		if len(r.FailedCases) != len(tc.cases) {
			t.Errorf("%s: failed cases %q, want %q", tc.name, r.FailedCases, tc.cases)
		}
		for i, c := range tc.cases {
			if i < len(r.FailedCases) && !strings.HasPrefix(r.FailedCases[i], c) {
				t.Errorf("%s: failed case %q, want %q...", tc.name, r.FailedCases[i], c)
			}
		}
		if !strings.Contains(r.Output, tc.output) {
			t.Errorf("%s: output %q, want %q", tc.name, r.Output, tc.output)
		}
	}
}

func TestRunTestsRefusesBrokenPolicy(t *testing.T) {
	t.Parallel()
	dir := writePolicy(t, map[string]string{
		"p.rego":      "package rexec\n\ndecision := {\"outcome\": \"allow\"}\n",
		"p_test.rego": "package rexec_test\n\ntest_x if {\n\tundefined_function(1)\n}\n",
	})
	_, err := RunTests(context.Background(), dir)
	if err == nil || !strings.Contains(err.Error(), "p_test.rego:4:") {
		t.Errorf("RunTests = %v, want an error at p_test.rego:4", err)
	}
}
