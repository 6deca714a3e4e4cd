package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/rexec/rexec/internal/policy"
)

// cmdPolicyTest runs a policy directory's Rego tests and prints them as
// `opa test -v` does, so that a policy can be checked before serve loads it.
// It fails when a test fails, when there are none, and when the policy
// would not load.
func cmdPolicyTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("policy test", stderr)
	dir := fs.String("dir", "REXEC_POLICY_DIR", "", "policy directory to test, as serve -policy-dir takes it (default: the embedded default policy)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	results, err := policy.RunTests(ctx, *dir)
	if err != nil {
		return err
	}
	var passed, failed, skipped int
	for _, r := range results {
		switch {
		case r.Skipped:
			skipped++
			fmt.Fprintf(stdout, "SKIP %s\n", r.FullName())
			continue
		case r.Passed:
			passed++
			fmt.Fprintf(stdout, "PASS %s (%s)\n", r.FullName(), r.Duration.Round(time.Microsecond))
		default:
			failed++
			fmt.Fprintf(stdout, "FAIL %s (%s)\n", r.FullName(), r.Duration.Round(time.Microsecond))
			fmt.Fprintf(stdout, "    %s\n", indent(r.Message))
			for _, c := range r.FailedCases {
				fmt.Fprintf(stdout, "    case %s\n", indent(c))
			}
		}
		if out := strings.TrimSpace(r.Output); out != "" {
			fmt.Fprintf(stdout, "    %s\n", indent(out))
		}
	}
	summary := fmt.Sprintf("%d passed, %d failed", passed, failed)
	if skipped > 0 {
		summary += fmt.Sprintf(", %d skipped", skipped)
	}
	fmt.Fprintln(stdout, summary)

	// Tests can pass in a directory serve would refuse (no decision rule,
	// say): load it as serve does, and name the revision decisions will
	// record.
	e, err := policy.New(ctx, policy.Config{Dir: *dir})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revision %s\n", e.Revision())
	switch {
	case failed > 0:
		return fmt.Errorf("%d of %d policy tests failed", failed, passed+failed)
	case passed == 0:
		return fmt.Errorf("no policy tests found (rules named test_* in *_test.rego files)")
	}
	return nil
}

// indent makes a multi-line message line up under its test.
func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n    ") }
