package policy

import (
	"cmp"
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/tester"
	"github.com/open-policy-agent/opa/v1/topdown"
)

// TestResult is the result of one Rego test rule (a rule named test_*), as
// `opa test -v` reports it.
type TestResult struct {
	// Package is the test's package, for example "data.rexec_test".
	Package string
	// Name is the rule's name, for example "test_auditor_may_not_submit".
	Name string
	// Location is the rule's file:line.
	Location string
	// Passed is true when the test passed; a skipped test (todo_test_*)
	// neither passes nor fails.
	Passed bool
	// Skipped is true for a todo_test_* rule.
	Skipped bool
	// Message says why a test failed: the evaluation error, or the
	// expression that was false, with its file:line and the values in it;
	// for a data-driven test, how many of its cases failed.
	Message string
	// FailedCases are the failed cases of a data-driven test
	// (test_x[note] if { some note, c in cases; ... }), sorted, each as
	// "note: " and the failed expression as Message gives it.
	FailedCases []string
	// Output is what the test printed with print().
	Output string
	// Duration is how long the test took.
	Duration time.Duration

	err error // the evaluation error, if any
}

// FullName is the test's package and name, as `opa test` prints it.
func (r TestResult) FullName() string { return r.Package + "." + r.Name }

// RunTests runs the Rego tests of the policy directory dir (the embedded
// default when dir is empty), as `opa test dir` does: every .rego file
// under it, tests and policy together, each test_* rule a test. The one
// difference: a builtin error fails the test, as it fails a decision in
// Engine.Decide. It returns an error when the files do not compile; failed
// tests are results, not errors. Results are in file and line order.
func RunTests(ctx context.Context, dir string) ([]TestResult, error) {
	src, err := readSource(dir)
	if err != nil {
		return nil, err
	}
	if len(src.files) == 0 {
		return nil, fmt.Errorf("policy %s: %w", src.label, ErrNoPolicy)
	}
	results, err := runTests(ctx, src, "", false)
	if err != nil {
		return nil, err
	}
	// Tracing makes tests many times slower, so only failed tests run
	// again with it, to find the expression that failed.
	var failed []string
	for _, r := range results {
		if !r.Passed && !r.Skipped && r.err == nil {
			failed = append(failed, regexp.QuoteMeta(r.FullName()))
		}
	}
	if len(failed) > 0 {
		traced, err := runTests(ctx, src, "^("+strings.Join(failed, "|")+")$", true)
		if err != nil {
			return nil, err
		}
		byName := map[string]TestResult{}
		for _, r := range traced {
			byName[r.FullName()] = r
		}
		for i, r := range results {
			if t, ok := byName[r.FullName()]; ok && !r.Passed && !r.Skipped && r.err == nil {
				results[i].Message, results[i].FailedCases = t.Message, t.FailedCases
			}
		}
	}
	return results, nil
}

// runTests runs the tests of src whose full names match filter (all when
// it is empty), sorted by file and line.
func runTests(ctx context.Context, src source, filter string, trace bool) ([]TestResult, error) {
	// Parsed afresh for each run: the compiler rewrites the modules it gets.
	mods, err := parse(src.files)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", src.label, err)
	}
	runner := tester.NewRunner()
	if trace {
		// As `opa test --var-values`: test rules rewritten so that the
		// trace holds the values of the expressions that failed.
		runner.SetCompiler(ast.NewCompiler().
			WithDefaultRegoVersion(ast.RegoV1).
			WithEnablePrintStatements(true).
			WithRewriteTestRules(true))
	}
	ch, err := runner.
		SetDefaultRegoVersion(ast.RegoV1).
		RaiseBuiltinErrors(true).
		EnableTracing(trace).
		Filter(filter).
		CapturePrintOutput(true).
		SetModules(mods).
		RunTests(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", src.label, err)
	}
	type located struct {
		file string
		row  int
		res  TestResult
	}
	var all []located
	for r := range ch {
		l := located{res: convert(r, trace)}
		if r.Location != nil {
			l.file, l.row = r.Location.File, r.Location.Row
		}
		all = append(all, l)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("policy %s tests: %w", src.label, err)
	}
	slices.SortFunc(all, func(a, b located) int {
		return cmp.Or(strings.Compare(a.file, b.file), cmp.Compare(a.row, b.row), strings.Compare(a.res.Name, b.res.Name))
	})
	out := make([]TestResult, len(all))
	for i, l := range all {
		out[i] = l.res
	}
	return out, nil
}

// convert reads an OPA test result. Without a trace a failure can only be
// described as the test being false.
func convert(r *tester.Result, traced bool) TestResult {
	t := TestResult{
		Package:  r.Package,
		Name:     r.Name,
		Passed:   r.Pass(),
		Skipped:  r.Skip,
		Output:   string(r.Output),
		Duration: r.Duration,
		err:      r.Error,
	}
	if r.Location != nil {
		t.Location = fmt.Sprintf("%s:%d", r.Location.File, r.Location.Row)
	}
	switch {
	case r.Error != nil:
		t.Message = r.Error.Error()
	case r.Fail:
		t.Message = failureLine(r.Trace)
	}
	t.FailedCases = failedCases(r.SubResults, "", traced)
	slices.Sort(t.FailedCases)
	if r.Fail && len(r.SubResults) > 0 {
		t.Message = fmt.Sprintf("%d of %d cases failed", len(t.FailedCases), countCases(r.SubResults))
	}
	return t
}

// failedCases flattens the failed leaves of nested test cases into
// slash-separated names.
func failedCases(m tester.SubResultMap, prefix string, traced bool) []string {
	var out []string
	for name, sub := range m {
		if !sub.Fail {
			continue
		}
		if len(sub.SubResults) > 0 {
			out = append(out, failedCases(sub.SubResults, prefix+name+"/", traced)...)
			continue
		}
		if !traced {
			out = append(out, prefix+name)
			continue
		}
		out = append(out, prefix+name+": "+failureLine(sub.Trace))
	}
	return out
}

func countCases(m tester.SubResultMap) int {
	n := 0
	for _, sub := range m {
		if len(sub.SubResults) > 0 {
			n += countCases(sub.SubResults)
		} else {
			n++
		}
	}
	return n
}

// failureLine names the last expression that failed in a test's trace, with
// its file and line, as `opa test --var-values` does; the whole trace is
// rarely read and long.
func failureLine(trace []*topdown.Event) string {
	for _, e := range slices.Backward(trace) {
		if e.Op != topdown.FailOp || e.Location == nil || e.QueryID == 0 {
			continue
		}
		expr, ok := e.Node.(*ast.Expr)
		if !ok {
			continue
		}
		if _, every := expr.Terms.(*ast.Every); every {
			// The failing expression inside the every body says more.
			continue
		}
		// The expression as written, each variable's value under it, as
		// `opa test --var-values` shows it.
		var b strings.Builder
		if err := topdown.PrettyEvent(&b, e, topdown.PrettyEventOpts{PrettyVars: true}); err != nil {
			return fmt.Sprintf("%s:%d: %s is false or undefined", e.Location.File, e.Location.Row, expr)
		}
		return fmt.Sprintf("%s:%d: false or undefined:\n%s", e.Location.File, e.Location.Row, strings.TrimRight(b.String(), "\n"))
	}
	return "the test is false or undefined"
}
