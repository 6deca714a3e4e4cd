package webhook

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
)

// Payload is the JSON body of a webhook request. Text alone is what a Slack
// incoming webhook needs (Slack ignores the fields it does not know); other
// receivers read the structured notice under "rexec".
type Payload struct {
	// Text is a one-paragraph summary in Slack mrkdwn, ending with the
	// commands that decide the run while it waits for approvals.
	Text string `json:"text"`
	// Rexec is the notice.
	Rexec Notice `json:"rexec"`
}

// Body returns the JSON body that says n.
func Body(n Notice) ([]byte, error) {
	if !n.Event.Valid() {
		return nil, fmt.Errorf("webhook body: unknown event %q", n.Event)
	}
	n = n.complete()
	b, err := json.Marshal(Payload{Text: Text(n), Rexec: n})
	if err != nil {
		return nil, fmt.Errorf("webhook body: %w", err)
	}
	return b, nil
}

// Text returns the one-paragraph summary of n, in Slack mrkdwn. Every value
// from a user is escaped, so that a reason cannot mention @channel, forge a
// link or break out of a code span.
func Text(n Notice) string {
	n = n.complete()
	var b strings.Builder
	run := fmt.Sprintf("%s's run of %s on %s", text(or(n.Submitter, "someone")), code(n.Command), nodes(n))
	switch n.Event {
	case EventApprovalRequested:
		fmt.Fprintf(&b, "*[%s] Approval needed* — %s wants to run %s on %s.",
			text(n.Tenant), text(or(n.Submitter, "someone")), code(n.Command), nodes(n))
		if n.Reason != "" {
			fmt.Fprintf(&b, " Reason: %s.", quoted(n.Reason))
		}
		fmt.Fprintf(&b, " Needs %s%s; %d given.", plural(n.ApprovalsRequired, "approval"), roles(n.ApproverRoles), n.ApprovalsGiven)
	case EventApproved:
		fmt.Fprintf(&b, "*[%s] Run approved* — %s approved %s", text(n.Tenant), text(or(n.Actor, "someone")), run)
		comment(&b, n.Comment)
		if n.pending() {
			fmt.Fprintf(&b, " %d of %d approvals given.", n.ApprovalsGiven, n.ApprovalsRequired)
		} else {
			fmt.Fprintf(&b, " %d of %d approvals given: the run is queued.", n.ApprovalsGiven, n.ApprovalsRequired)
		}
	case EventDenied:
		fmt.Fprintf(&b, "*[%s] Run denied* — %s denied %s", text(n.Tenant), text(or(n.Actor, "someone")), run)
		comment(&b, n.Comment)
		b.WriteString(" The run will not start.")
	case EventExpired:
		fmt.Fprintf(&b, "*[%s] Approval expired* — %s expired with %d of %d approvals given. The run will not start.",
			text(n.Tenant), run, n.ApprovalsGiven, n.ApprovalsRequired)
	default:
		fmt.Fprintf(&b, "*[%s] %s* — %s.", text(n.Tenant), text(string(n.Event)), run)
	}
	if n.Approve != "" {
		fmt.Fprintf(&b, " Approve: %s · Deny: %s", code(n.Approve), code(n.Deny))
	} else {
		fmt.Fprintf(&b, " Run %s.", code(n.RunID))
	}
	return b.String()
}

func comment(b *strings.Builder, c string) {
	if c == "" {
		b.WriteString(".")
		return
	}
	fmt.Fprintf(b, ": %s.", quoted(c))
}

func nodes(n Notice) string {
	s := plural(n.NodeCount, "node")
	if len(n.Nodes) == 0 {
		return s
	}
	names := make([]string, len(n.Nodes))
	for i, name := range n.Nodes {
		names[i] = text(name)
	}
	if more := n.NodeCount - len(n.Nodes); more > 0 {
		names = append(names, fmt.Sprintf("+%d more", more))
	}
	return s + " (" + strings.Join(names, ", ") + ")"
}

func roles(rs []string) string {
	if len(rs) == 0 {
		return ""
	}
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = text(r)
	}
	return " from " + strings.Join(out, " or ")
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}

func or(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

// quoted is free text, cut short and in quotes.
func quoted(s string) string {
	return `"` + text(clip(s, maxTextField)) + `"`
}

// code is s in a code span, unless it holds a backtick, which Slack cannot
// escape inside one: then it is plain (escaped) text rather than a span that
// ends early.
func code(s string) string {
	if s == "" || strings.Contains(s, "`") {
		return text(s)
	}
	return "`" + text(s) + "`"
}

// mrkdwn escapes the three characters Slack asks to escape; without it a
// value could hold <!channel> or a <url|label> link.
var mrkdwn = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

// text is a user's value made safe for the one-paragraph summary: control
// characters (newlines included) become spaces, and mrkdwn is escaped.
func text(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	return mrkdwn.Replace(s)
}
