package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/client"
)

func cmdJobs(ctx context.Context, sub string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("jobs "+sub, stderr)
	conn := addConnFlags(fs)
	var asJSON *bool
	var node *string
	var filters filterFlags
	switch sub {
	case "list":
		asJSON = fs.Bool("json", false, "print JSON")
		filters = addFilterFlags(fs, "runs", 50)
	case "show":
		asJSON = fs.Bool("json", false, "print JSON")
	case "logs":
		node = fs.String("node", "", "print only this node's output bytes, exactly")
	case "wait":
		asJSON = fs.Bool("json", false, "print the finished run as JSON instead of a summary")
	case "cancel":
	default:
		return fmt.Errorf("unknown command \"jobs %s\" (list, show, logs, wait, cancel)", sub)
	}
	// Flags may come before or after the run ID.
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return exitError(1)
	}
	if id == "" && fs.NArg() > 0 {
		id = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if sub != "list" && id == "" {
		return fmt.Errorf("usage: rexec-cli jobs %s ID", sub)
	}
	var f client.Filters
	if sub == "list" {
		var err error
		if f, err = filters.get(); err != nil {
			return err
		}
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		page, err := c.ListRuns(ctx, client.RunQuery{Filters: f})
		if err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(stdout, page)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tSUBMITTED BY\tCREATED\tNODES\tCOMMAND")
		for _, r := range page.Runs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", r.ID, r.State, r.SubmittedBy, r.CreatedAt.Local().Format(time.DateTime), r.TargetCount, commandOf(r.Argv, r.ScriptBytes))
		}
		return tw.Flush()
	case "show":
		run, err := c.Get(ctx, id)
		if err != nil {
			return err
		}
		if *asJSON {
			run.Targets = nil
			return writeJSON(stdout, run)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		for _, kv := range [][2]string{
			{"ID", run.ID}, {"State", run.State}, {"Submitted by", run.SubmittedBy},
			{"Created", run.CreatedAt.Local().Format(time.RFC3339)}, {"Command", commandOf(run.Argv, run.ScriptBytes)},
			{"Shell", fmt.Sprint(run.Shell)}, {"Filters", fmt.Sprintf("node=%q service=%q tag=%q", run.Node, run.Service, run.Tag)},
			{"Reason", run.Reason}, {"Policy", policyLine(run.Policy)}, {"Request hash", run.RequestHash},
			{"Outcome", run.Outcome}, {"Error", run.Error},
		} {
			if kv[1] != "" {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
		}
		for _, a := range run.Approvals {
			fmt.Fprintf(tw, "%s:\t%s %s %q\n", strings.ToUpper(a.Verdict[:1])+a.Verdict[1:]+"d by", a.Principal, a.At.Local().Format(time.DateTime), a.Comment)
		}
		tw.Flush()
		fmt.Fprintln(stdout)
		tw = tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tSTATE\tEXIT\tBYTES\tTRUNCATED\tSHA256")
		for _, n := range run.Nodes {
			code := "-"
			if n.ExitCode != nil {
				code = fmt.Sprint(*n.ExitCode)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%t\t%s\n", n.Node, n.State, code, n.Bytes, n.Truncated, n.SHA256)
		}
		return tw.Flush()
	case "logs":
		if *node != "" {
			return nodeLogs(ctx, c, id, *node, stdout)
		}
		return follow(ctx, c, id, followOpts{print: true, stdout: stdout, stderr: stderr})
	case "wait":
		err := follow(ctx, c, id, followOpts{asJSON: *asJSON, stdout: stdout, stderr: stderr})
		var ee exitError
		if !*asJSON && (err == nil || errors.As(err, &ee)) {
			run, gerr := c.Get(ctx, id)
			if gerr == nil {
				fmt.Fprintf(stdout, "run %s %s\n", run.ID, run.State)
			}
		}
		return err
	case "cancel":
		run, err := c.Cancel(ctx, id)
		if err != nil {
			return err
		}
		switch {
		case run.State == "running" && run.FiringAt == nil:
			fmt.Fprintf(stdout, "run %s: cancel recorded before the run fired; the command will not run\n", run.ID)
		case run.State == "running":
			fmt.Fprintf(stdout, "run %s: cancel requested; its worker stops collecting shortly (stock Consul agents keep running the process)\n", run.ID)
		default:
			fmt.Fprintf(stdout, "run %s %s\n", run.ID, run.State)
		}
		return nil
	}
	return nil
}

// nodeLogs writes one node's archived output bytes, exactly.
func nodeLogs(ctx context.Context, c *client.Client, id, node string, w io.Writer) error {
	run, err := c.Get(ctx, id)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(run.Nodes, func(n apitype.Node) bool { return n.Node == node }) {
		return fmt.Errorf("run %s has no node %q", id, node)
	}
	after := -1
	for {
		page, err := c.Output(ctx, id, node, after)
		if err != nil {
			return err
		}
		if len(page.Chunks) == 0 {
			return nil
		}
		for _, ch := range page.Chunks {
			if _, err := w.Write(ch.Data); err != nil {
				return err
			}
			after = ch.Seq
		}
	}
}

func commandOf(argv []string, scriptBytes int) string {
	if scriptBytes > 0 {
		return fmt.Sprintf("(script, %d bytes)", scriptBytes)
	}
	s := strings.Join(argv, " ")
	if len(s) > 60 {
		s = s[:57] + "..."
	}
	return s
}
