package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/rexec/rexec/internal/client"
)

// cmdVerdict approves or denies a run pending approval: it shows what the
// run asks, then sends the verdict bound to the request hash it showed, so
// that a request changed in between is refused rather than approved.
func cmdVerdict(ctx context.Context, approve bool, args []string, stdout, stderr io.Writer) error {
	verb := "deny"
	if approve {
		verb = "approve"
	}
	fs := newFlags(verb, stderr)
	conn := addConnFlags(fs)
	comment := fs.String("comment", "", "why (kept with the verdict and in the audit log)")
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return exitError(1)
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if id == "" {
		return fmt.Errorf("usage: rexec-cli %s ID [-comment TEXT]", verb)
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	run, err := c.Get(ctx, id)
	var ce *client.Error
	switch {
	case errors.As(err, &ce) && ce.Status == 403 && approve:
		// Never approve what was not shown.
		return fmt.Errorf("cannot show run %s, so it is not approved: %w", id, err)
	case errors.As(err, &ce) && ce.Status == 403:
		// A run the principal may not read (one no longer pending, say):
		// the denial itself gets the telling answer.
	case err != nil:
		return err
	default:
		fmt.Fprintf(stderr, "==> run %s by %s: %s on %d node(s)", run.ID, run.SubmittedBy, commandOf(run.Argv, run.ScriptBytes), run.TargetCount)
		if run.Reason != "" {
			fmt.Fprintf(stderr, ", reason %q", run.Reason)
		}
		fmt.Fprintf(stderr, "\n==> request hash %s\n", run.RequestHash)
	}
	run, err = c.Decide(ctx, id, approve, *comment, run.RequestHash)
	if err != nil {
		return err
	}
	given := 0
	for _, a := range run.Approvals {
		if a.Verdict == "approve" {
			given++
		}
	}
	switch {
	case !approve:
		fmt.Fprintf(stdout, "run %s denied\n", run.ID)
	case run.State == "pending_approval" && run.Policy != nil:
		fmt.Fprintf(stdout, "run %s approved (%d of %d); it waits for more\n", run.ID, given, run.Policy.Approvals)
	default:
		fmt.Fprintf(stdout, "run %s approved; it is %s\n", run.ID, run.State)
	}
	return nil
}
