// Package webhook tells a tenant's approvers about runs that need approval:
// a River job per notice POSTs HMAC-signed JSON, which a Slack incoming
// webhook also accepts, to the tenant's webhook, retrying receivers that are
// down and recording the outcome of every attempt.
//
// The package knows nothing of rexec's HTTP API, policy, Consul or the runs
// table: the caller says what to tell (a Notice), where a tenant's webhook is
// (a TargetSource) and where attempts are recorded (a Recorder).
//
// A webhook URL is a secret in its own right (a Slack incoming-webhook URL
// is its own credential), so neither the URL's path and query nor the
// signing secret ever appear in logs, recorded deliveries or job errors:
// only scheme://host does.
package webhook

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Event says what happened to a run that needs approval.
type Event string

// Events.
const (
	// EventApprovalRequested: a run waits for approvals.
	EventApprovalRequested Event = "approval_requested"
	// EventApproved: an approver approved; the run may need more approvals.
	EventApproved Event = "approved"
	// EventDenied: an approver denied; the run ends denied.
	EventDenied Event = "denied"
	// EventExpired: the approvals did not come in time; the run ends expired.
	EventExpired Event = "expired"
)

// Valid reports whether e is one of the events above.
func (e Event) Valid() bool {
	switch e {
	case EventApprovalRequested, EventApproved, EventDenied, EventExpired:
		return true
	}
	return false
}

// Limits on what a notice says, so that a message stays readable (and
// within what chat services accept) whatever the run looks like.
const (
	// MaxNodes is how many node names a notice lists; NodeCount says how
	// many there are in all.
	MaxNodes = 5
	// MaxCommandLen is the length, in characters, at which DescribeArgv
	// cuts a command short.
	MaxCommandLen = 300
	// maxTextField is where free text (reason, comment) is cut short in the
	// summary; the structured notice keeps it whole.
	maxTextField = 300
)

// Notice is what a webhook says about a run. It holds nothing secret: no
// tokens, no script content, no webhook URL.
type Notice struct {
	// Tenant is the tenant's name.
	Tenant string `json:"tenant"`
	// RunID is the run's ID.
	RunID string `json:"run_id"`
	// Event is what happened.
	Event Event `json:"event"`
	// Submitter is the principal who submitted the run.
	Submitter string `json:"submitter"`
	// Command is what the run executes, as DescribeArgv or DescribeScript
	// put it.
	Command string `json:"command"`
	// NodeCount is how many nodes the run targets.
	NodeCount int `json:"node_count"`
	// Nodes are the first few target nodes' names (at most MaxNodes are
	// sent).
	Nodes []string `json:"nodes,omitempty"`
	// Reason is the submitter's reason for the run.
	Reason string `json:"reason,omitempty"`
	// ApprovalsRequired is how many distinct approvals the run needs.
	ApprovalsRequired int `json:"approvals_required"`
	// ApprovalsGiven is how many it has.
	ApprovalsGiven int `json:"approvals_given"`
	// ApproverRoles are the roles whose holders may approve.
	ApproverRoles []string `json:"approver_roles,omitempty"`
	// Actor is who approved or denied (EventApproved, EventDenied).
	Actor string `json:"actor,omitempty"`
	// Comment is the actor's comment.
	Comment string `json:"comment,omitempty"`
	// Approve and Deny are the commands that decide the run while it still
	// waits for approvals. Filled in when the notice is sent; a caller
	// leaves them empty.
	Approve string `json:"approve,omitempty"`
	Deny    string `json:"deny,omitempty"`
	// Time is when the event happened. Default: when the job was inserted.
	Time time.Time `json:"time"`
}

// pending reports whether the run still waits for approvals, which is when
// telling an approver how to decide it is useful.
func (n Notice) pending() bool {
	return n.Event == EventApprovalRequested ||
		(n.Event == EventApproved && n.ApprovalsGiven < n.ApprovalsRequired)
}

// complete returns the notice as it is sent: the how-to filled in, the node
// list cut to MaxNodes.
func (n Notice) complete() Notice {
	n.Approve, n.Deny = "", ""
	if n.pending() && n.RunID != "" {
		n.Approve = "rexec-cli approve " + n.RunID
		n.Deny = "rexec-cli deny " + n.RunID
	}
	n.NodeCount = max(n.NodeCount, len(n.Nodes))
	if len(n.Nodes) > MaxNodes {
		n.Nodes = n.Nodes[:MaxNodes:MaxNodes]
	}
	return n
}

// DescribeArgv puts a command line as a notice shows it: the arguments
// joined by spaces, quoted as a POSIX shell would need them where they are
// not plain words, and cut short at MaxCommandLen characters.
func DescribeArgv(argv []string) string {
	parts := make([]string, len(argv))
	for i, a := range argv {
		parts[i] = shellQuote(a)
	}
	return clip(strings.Join(parts, " "), MaxCommandLen)
}

// DescribeScript puts a script run as a notice shows it. The content is
// never sent: approvers compare the digest with the script they were shown.
func DescribeScript(size int64, sha256Hex string) string {
	return fmt.Sprintf("script (%d bytes, sha256 %s)", size, sha256Hex)
}

// shellQuote quotes a word the way a reader would type it: plain words as
// they are, others in single quotes, and anything with control characters
// (a newline, say) Go-quoted so that it stays on one line.
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	plain := true
	for _, r := range s {
		switch {
		case r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r)):
		case strings.ContainsRune("@%+=:,./_-", r):
		case unicode.IsControl(r) || r == utf8.RuneError:
			return strconv.Quote(s)
		default:
			plain = false
		}
	}
	if plain {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// clip cuts s to at most n characters, marking the cut.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
