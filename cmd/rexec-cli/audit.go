package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/client"
)

// auditLogCommands are the subcommands of `audit` about the transparency
// log, run by cmdAuditLog.
var auditLogCommands = []string{"checkpoint", "verify", "prove", "verify-bundle"}

// cmdAudit queries the audit log: `rexec-cli audit [filters]`, or one of
// auditLogCommands.
func cmdAudit(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 && slices.Contains(auditLogCommands, args[0]) {
		return cmdAuditLog(ctx, args[0], args[1:], stdin, stdout, stderr)
	}
	fs := newFlags("audit", stderr)
	conn := addConnFlags(fs)
	filters := addFilterFlags(fs, "events", 100)
	types := fs.String("type", "", "only events of these types, a comma list (run.submitted,node.exited)")
	run := fs.String("run", "", "only the events of this run")
	cursor := fs.String("cursor", "", "start at this page: the cursor the previous one ended with")
	all := fs.Bool("all", false, "follow the cursor to the last page")
	format := fs.String("format", "table", "table, json (one array), csv or ndjson (an event a line)")
	follow := fs.Bool("follow", false, "stream the log's new events as NDJSON, in log order, until interrupted (with -type only)")
	fromLeaf := fs.Int64("from-leaf", -1, "with -follow: start at this leaf of the log (each line's \"leaf\" + 1 resumes a stream); default: its end")
	if err := fs.Parse(args); err != nil {
		return exitError(1)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v (rexec-cli audit [filters], or audit %s)", fs.Args(), strings.Join(auditLogCommands, "|"))
	}
	if *follow {
		other := false
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "follow", "from-leaf", "type", "format", "addr", "token", "ca-file":
			default:
				other = true
			}
		})
		if other || *format != "table" && *format != "ndjson" {
			return errors.New("-follow streams every new event as NDJSON: it takes -type and -from-leaf, no other filter or format")
		}
		// Checked here: the stream has no query for the server to refuse,
		// and a misspelt type would stream nothing, forever.
		for _, t := range splitTypes(*types) {
			if !slices.Contains(audit.KnownTypes, t) {
				return fmt.Errorf("unknown event type %q (known: %s)", t, strings.Join(audit.KnownTypes, ", "))
			}
		}
		c, err := conn.client()
		if err != nil {
			return err
		}
		return followAudit(ctx, c, *fromLeaf, splitTypes(*types), stdout)
	}
	if *fromLeaf >= 0 {
		return errors.New("-from-leaf goes with -follow")
	}
	out, err := newEventWriter(*format, stdout)
	if err != nil {
		return err
	}
	f, err := filters.get()
	if err != nil {
		return err
	}
	q := client.AuditQuery{Filters: f, Run: *run, Cursor: *cursor}
	q.Types = splitTypes(*types)
	c, err := conn.client()
	if err != nil {
		return err
	}
	for {
		page, err := c.Audit(ctx, q)
		if err != nil {
			return err
		}
		for _, e := range page.Events {
			if err := out.write(e); err != nil {
				return err
			}
		}
		if page.Next == "" {
			break
		}
		if !*all {
			if err := out.close(); err != nil {
				return err
			}
			fmt.Fprintf(stderr, "==> more events: -cursor %s for the next page, or -all\n", page.Next)
			return nil
		}
		q.Cursor = page.Next
	}
	return out.close()
}

// filterFlags are the filters of runs and audit events.
type filterFlags struct {
	since, until, principal, node, service, command, state, exitCode, approver *string
	limit                                                                      *int
}

// addFilterFlags adds the filter flags to fs; what names the things
// listed, limit their default page size.
func addFilterFlags(fs *flag.FlagSet, what string, limit int) filterFlags {
	return filterFlags{
		since:     fs.String("since", "", "only "+what+" at or after this time: RFC 3339, or a duration before now (7d, 12h, 30m)"),
		until:     fs.String("until", "", "only "+what+" before this time: RFC 3339, or a duration before now"),
		principal: fs.String("principal", "", map[string]string{"runs": "only runs this principal submitted", "events": "only events this principal did"}[what]),
		node:      fs.String("node", "", map[string]string{"runs": "only runs targeting this node", "events": "only events about this node"}[what]),
		service:   fs.String("service", "", "only "+what+" of runs submitted with this -service filter"),
		command:   fs.String("command", "", "only "+what+" of runs whose command contains this text (in any case)"),
		state: fs.String("state", "", map[string]string{"runs": "only runs in this state",
			"events": "only events of runs that ended in this state (completed, failed, cancelled, denied, expired)"}[what]),
		exitCode: fs.String("exit-code", "", map[string]string{"runs": "only runs on which a node exited with this code",
			"events": "only node.exited events with this exit code"}[what]),
		approver: fs.String("approver", "", "only "+what+" of runs this principal approved or refused"),
		limit:    fs.Int("limit", limit, "at most this many "+what+" a page"),
	}
}

func (f filterFlags) get() (client.Filters, error) {
	out := client.Filters{Since: *f.since, Until: *f.until, Principal: *f.principal, Node: *f.node, Service: *f.service,
		Command: *f.command, State: *f.state, Approver: *f.approver, Limit: *f.limit}
	if *f.exitCode != "" {
		n, err := strconv.Atoi(*f.exitCode)
		if err != nil {
			return client.Filters{}, fmt.Errorf("-exit-code must be an integer, not %q", *f.exitCode)
		}
		out.ExitCode = &n
	}
	if *f.limit < 1 {
		return client.Filters{}, fmt.Errorf("-limit must be at least 1")
	}
	return out, nil
}

// eventWriter prints events in one format.
type eventWriter interface {
	write(apitype.AuditEvent) error
	close() error
}

func newEventWriter(format string, w io.Writer) (eventWriter, error) {
	switch format {
	case "table":
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tTYPE\tACTOR\tRUN\tNODE\tSUMMARY")
		return tableWriter{tw}, nil
	case "json":
		return &jsonArrayWriter{w: w}, nil
	case "ndjson":
		return ndjsonWriter{w}, nil
	case "csv":
		cw := csv.NewWriter(w)
		return csvWriter{cw}, cw.Write(csvHeader)
	}
	return nil, fmt.Errorf("unknown -format %q: table, json, csv or ndjson", format)
}

type tableWriter struct{ tw *tabwriter.Writer }

func (t tableWriter) write(e apitype.AuditEvent) error {
	_, err := fmt.Fprintf(t.tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.DateTime), e.Type, cell(e.Actor),
		orDash(e.Run), orDash(cell(e.Node)), summary(e))
	return err
}

func (t tableWriter) close() error { return t.tw.Flush() }

// eventJSON is an event as one line of JSON, HTML characters unescaped.
func eventJSON(e apitype.AuditEvent) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(e)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), err
}

// jsonArrayWriter prints one JSON array, an event a line, as the events
// come: -all never holds every page in memory.
type jsonArrayWriter struct {
	w io.Writer
	n int
}

func (j *jsonArrayWriter) write(e apitype.AuditEvent) error {
	b, err := eventJSON(e)
	if err != nil {
		return err
	}
	sep := ",\n"
	if j.n == 0 {
		sep = "[\n"
	}
	j.n++
	_, err = fmt.Fprintf(j.w, "%s%s", sep, b)
	return err
}

func (j *jsonArrayWriter) close() error {
	end := "\n]\n"
	if j.n == 0 {
		end = "[]\n"
	}
	_, err := io.WriteString(j.w, end)
	return err
}

type ndjsonWriter struct{ w io.Writer }

func (n ndjsonWriter) write(e apitype.AuditEvent) error {
	b, err := eventJSON(e)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(n.w, "%s\n", b)
	return err
}

func (n ndjsonWriter) close() error { return nil }

// csvHeader names the CSV columns; data is the event's data as JSON.
var csvHeader = []string{"id", "time", "type", "actor", "run", "node", "request_id", "client_addr", "os_user", "data"}

type csvWriter struct{ w *csv.Writer }

func (c csvWriter) write(e apitype.AuditEvent) error {
	return c.w.Write([]string{strconv.FormatInt(e.ID, 10), e.Time.UTC().Format(time.RFC3339Nano), e.Type, e.Actor, e.Run, e.Node,
		e.RequestID, e.ClientAddr, e.OSUser, string(e.Data)})
}

func (c csvWriter) close() error {
	c.w.Flush()
	return c.w.Error()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// cell makes text safe for one table cell: no tab or line break that
// would shift the columns, nothing a terminal would act on.
func cell(s string) string {
	q := strconv.QuoteToGraphic(s)
	if q[1:len(q)-1] == s && !strings.ContainsAny(s, " \"") {
		return s
	}
	return q
}

// summaryMax bounds a table's summary column, in runes.
const summaryMax = 100

// summary is an event's data in one line: key=value for each member that
// says something, sorted by key; the node column already names the node.
func summary(e apitype.AuditEvent) string {
	var data map[string]json.RawMessage
	if json.Unmarshal(e.Data, &data) != nil {
		return cell(string(e.Data))
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		if !(k == "node" && e.Node != "") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		if v := summaryValue(data[k]); v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	s := strings.Join(parts, " ")
	if r := []rune(s); len(r) > summaryMax {
		s = string(r[:summaryMax-1]) + "…"
	}
	return s
}

// summaryValue is a data member as the summary shows it; empty for one
// that says nothing (null, "", [], {}).
func summaryValue(raw json.RawMessage) string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return ""
	}
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		if v == "" {
			return ""
		}
		return cell(v)
	case []any:
		if len(v) == 0 {
			return ""
		}
		words := make([]string, len(v))
		for i, w := range v {
			s, ok := w.(string)
			if !ok {
				return cell(string(raw))
			}
			words[i] = s
		}
		return cell(strings.Join(words, " "))
	case map[string]any:
		if len(v) == 0 {
			return ""
		}
	}
	return string(raw)
}

// splitTypes splits a comma list of event types.
func splitTypes(list string) []string {
	var out []string
	for t := range strings.SplitSeq(list, ",") {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, t)
		}
	}
	return out
}
