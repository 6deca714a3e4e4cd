package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"time"
	"unicode"

	"golang.org/x/term"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
)

func cmdExec(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("exec", stderr)
	conn := addConnFlags(fs)
	node := fs.String("node", "", "regular expression to filter on node names")
	service := fs.String("service", "", "regular expression to filter on service instances")
	tag := fs.String("tag", "", "regular expression to filter on service tags; needs -service")
	shell := fs.Bool("shell", true, "run the command in a shell; -shell=false runs it as an argument vector")
	wait := fs.Duration("wait", 2*time.Second, "quiet period after which stragglers are given up")
	waitRepl := fs.Duration("wait-repl", 0, "pause between writing the job spec and firing the event (consul exec pauses 200ms; agents re-read a missing spec consistently, so rexec need not)")
	prefix := fs.String("prefix", "", "KV prefix (the tenant's, or one under it; default the tenant's)")
	verbose := fs.Bool("verbose", false, "print progress details")
	reason := fs.String("reason", "", "why this runs (kept in the audit log)")
	detach := fs.Bool("detach", false, "submit, print the run ID and exit")
	asJSON := fs.Bool("json", false, "print the finished run as JSON instead of the output")
	dryRun := fs.Bool("dry-run", false, "show the target nodes without running anything")
	timeout := fs.Duration("timeout", 0, "run deadline; unfinished nodes are cancelled after it (0: none)")
	startTimeout := fs.Duration("start-timeout", 0, "fail the run, never fire it, if it has not started this long after submission (0: the tenant's bound, 15m by default)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: rexec-cli exec [options] [-|command...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitError(1)
	}
	req := apitype.SubmitRequest{
		Shell: shell, Node: *node, Service: *service, Tag: *tag, Prefix: *prefix,
		Wait: wait.String(), WaitRepl: waitRepl.String(), Reason: *reason, DryRun: *dryRun,
	}
	if *timeout > 0 {
		req.Timeout = timeout.String()
	}
	if *startTimeout > 0 {
		req.StartTimeout = startTimeout.String()
	}
	words := fs.Args()
	switch {
	case len(words) == 1 && words[0] == "-":
		if !*shell {
			return errors.New("cannot use -shell=false when reading a script from stdin")
		}
		script, err := io.ReadAll(stdin)
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
		if len(script) == 0 {
			return errors.New("the script read from stdin is empty")
		}
		req.Script = script
	case len(words) == 0:
		return errors.New("must specify a command to execute")
	default:
		req.Argv = words
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	run, err := c.Submit(ctx, req)
	if err != nil {
		return err
	}
	switch {
	case *dryRun:
		if err := printDryRun(stdout, run, *asJSON); err != nil {
			return err
		}
		if run.Policy != nil && run.Policy.Outcome == "deny" {
			return exitError(1) // it would be refused
		}
		return nil
	case *detach:
		fmt.Fprintln(stdout, run.ID)
		return nil
	}
	if *verbose {
		fmt.Fprintf(stderr, "==> run %s submitted to %d node(s)\n", run.ID, run.TargetCount)
	}
	if run.State == "pending_approval" {
		printPending(stderr, run)
	}
	return follow(ctx, c, run.ID, followOpts{print: !*asJSON, asJSON: *asJSON, stdout: stdout, stderr: stderr, verbose: *verbose})
}

// printPending says what a run waits for and how to approve it.
func printPending(w io.Writer, run apitype.Run) {
	p := run.Policy
	if p == nil {
		return
	}
	fmt.Fprintf(w, "==> run %s waits for %d approval(s) from %s", run.ID, p.Approvals, strings.Join(p.ApproverRoles, " or "))
	if run.ApprovalExpiresAt != nil {
		fmt.Fprintf(w, " until %s", run.ApprovalExpiresAt.Local().Format(time.DateTime))
	}
	fmt.Fprintln(w)
	for _, r := range p.Reasons {
		fmt.Fprintf(w, "    %s\n", r)
	}
	fmt.Fprintf(w, "==> an approver runs: rexec-cli approve %s\n", run.ID)
}

// policyLine says in one line what the policy decided.
func policyLine(p *apitype.Policy) string {
	if p == nil {
		return ""
	}
	s := p.Outcome
	if p.Outcome == "require_approval" {
		s = fmt.Sprintf("approval needed: %d from %s", p.Approvals, strings.Join(p.ApproverRoles, " or "))
	}
	if len(p.Reasons) > 0 {
		s += " (" + strings.Join(p.Reasons, "; ") + ")"
	}
	if p.Revision != "" {
		s += " [policy " + p.Revision + "]"
	}
	return s
}

func printDryRun(w io.Writer, run apitype.Run, asJSON bool) error {
	if asJSON {
		return writeJSON(w, run)
	}
	if line := policyLine(run.Policy); line != "" {
		fmt.Fprintf(w, "policy: %s\n", line)
	}
	fmt.Fprintf(w, "%d node(s) would run it:\n", len(run.Targets))
	for _, n := range run.Targets {
		var svcs []string
		for _, s := range n.Services {
			svcs = append(svcs, s.ID+tagList(s.Tags))
		}
		fmt.Fprintf(w, "    %s  %s  %s\n", n.Name, n.Address, strings.Join(svcs, " "))
	}
	return nil
}

func tagList(tags []string) string {
	if len(tags) == 0 {
		return ""
	}
	return "[" + strings.Join(tags, ",") + "]"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type followOpts struct {
	print   bool // print output and exits in consul exec's format
	asJSON  bool // print the finished run as JSON
	verbose bool
	stdout  io.Writer
	stderr  io.Writer
}

// follow streams a run until it ends, printing as consul exec does, and
// returns the exit code consul exec would have.
func follow(ctx context.Context, c *client.Client, id string, o followOpts) error {
	prog := newProgress(o.stderr)
	var cursor int64
	exited := 0
	for {
		page, err := c.Stream(ctx, id, cursor, 20*time.Second)
		if wait, ok := retryable(err); ok {
			// The server's bound on streams in flight: the run goes on,
			// and a slot frees as soon as another poll ends.
			if sleepCtx(ctx, wait) {
				continue
			}
			err = ctx.Err()
		}
		if err != nil {
			prog.clear()
			if ctx.Err() != nil {
				fmt.Fprintf(o.stderr, "rexec-cli: stopped waiting; run %s goes on (rexec-cli jobs cancel %s to cancel it)\n", id, id)
				return exitError(1)
			}
			return err
		}
		cursor = page.Cursor
		if len(page.Items) > 0 {
			prog.clear()
		}
		for _, it := range page.Items {
			switch it.Kind {
			case "output":
				if o.print {
					fmt.Fprintln(o.stdout, prefixLines(false, it.Node, string(it.Data)))
				}
			case "exit":
				exited++
				if o.print {
					fmt.Fprintln(o.stdout, prefixLines(true, it.Node, fmt.Sprintf("finished with exit code %d", *it.ExitCode)))
				}
			}
		}
		if !page.Done {
			prog.show(page.Run.State, exited, page.Run.TargetCount)
			continue
		}
		prog.clear()
		return summarize(o, page.Run, page.Nodes)
	}
}

// retryable says whether err is a refusal by the server's bounds on
// requests in flight, and how long to wait before the retry: the server's
// Retry-After, stretched by up to half at random so that refused followers
// do not all come back at once.
func retryable(err error) (time.Duration, bool) {
	var ce *client.Error
	if !errors.As(err, &ce) || (ce.Code != "too_many_requests" && ce.Code != "overloaded") {
		return 0, false
	}
	wait := max(ce.RetryAfter, time.Second)
	return wait + rand.N(wait/2), true
}

// sleepCtx waits for d, or less if ctx ends; it reports whether it waited
// out d.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// summarize prints the closing lines and returns the exit code.
func summarize(o followOpts, run apitype.Run, nodes []apitype.Node) error {
	if o.asJSON {
		run.Nodes = nodes
		if err := writeJSON(o.stdout, run); err != nil {
			return err
		}
	}
	completed, acked, bad := 0, 0, 0
	var noAck []string
	for _, n := range nodes {
		if n.State == "exited" {
			completed++
		}
		if n.AckedAt != nil {
			acked++
		}
		if n.State == "no_ack" {
			noAck = append(noAck, n.Node)
		}
		if n.State != "exited" || n.ExitCode == nil || *n.ExitCode != 0 {
			bad++
		}
	}
	if o.print {
		fmt.Fprintf(o.stdout, "%d / %d node(s) completed / acknowledged\n", completed, acked)
		if len(noAck) > 0 {
			fmt.Fprintf(o.stdout, "==> %d node(s) never acknowledged: %s\n", len(noAck), strings.Join(noAck, ", "))
		}
	}
	if run.Error != "" {
		fmt.Fprintf(o.stderr, "rexec-cli: run %s %s: %s\n", run.ID, run.State, run.Error)
	}
	if o.verbose {
		fmt.Fprintf(o.stderr, "==> run %s %s\n", run.ID, run.State)
	}
	switch {
	case run.State == "denied" || run.State == "expired":
		return exitError(1)
	case run.State == "failed" && run.FiredAt == nil:
		return exitError(1) // it never ran anywhere: an error, not a node's failure
	case bad > 0:
		return exitError(2)
	}
	return nil
}

// prefixLines is consul exec's TargetedUI formatting: every line of message
// prefixed with the node, then trailing white space of the whole trimmed.
func prefixLines(arrow bool, node, message string) string {
	lead := "   "
	if arrow {
		lead = "==>"
	}
	var b strings.Builder
	for _, line := range strings.Split(message, "\n") {
		fmt.Fprintf(&b, "%s %s: %s\n", lead, node, line)
	}
	return strings.TrimRightFunc(b.String(), unicode.IsSpace)
}

// progress shows the run's state on stderr while waiting, when stderr is a
// terminal.
type progress struct {
	w    io.Writer
	on   bool
	last string
}

func newProgress(w io.Writer) *progress {
	f, ok := w.(*os.File)
	return &progress{w: w, on: ok && term.IsTerminal(int(f.Fd()))}
}

func (p *progress) show(state string, done, total int) {
	if !p.on {
		return
	}
	line := fmt.Sprintf("[%s] %d of %d node(s) done", state, done, total)
	if line != p.last {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.last = line
	}
}

func (p *progress) clear() {
	if p.on && p.last != "" {
		fmt.Fprint(p.w, "\r\033[K")
		p.last = ""
	}
}
