package webhook_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/webhook"
)

const runID = "0b9d5f0e-3c2a-4d51-9a43-7f3e1c2b8a10"

func notice(ev webhook.Event) webhook.Notice {
	return webhook.Notice{
		Tenant:            "acme",
		RunID:             runID,
		Event:             ev,
		Submitter:         "alice",
		Command:           webhook.DescribeArgv([]string{"systemctl", "restart", "nginx"}),
		NodeCount:         12,
		Nodes:             []string{"web-1", "web-2", "web-3"},
		Reason:            "deploy hotfix 42",
		ApprovalsRequired: 2,
		ApproverRoles:     []string{"approver", "admin"},
		Time:              time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC),
	}
}

func TestText(t *testing.T) {
	t.Parallel()
	with := func(n webhook.Notice, f func(*webhook.Notice)) webhook.Notice { f(&n); return n }
	for _, tc := range []struct {
		note    string
		n       webhook.Notice
		want    []string // fragments of the text
		without []string
	}{
		{
			note: "approval requested",
			n:    notice(webhook.EventApprovalRequested),
			want: []string{"*[acme] Approval needed* — alice wants to run `systemctl restart nginx` on 12 nodes (web-1, web-2, web-3, +9 more). " +
				`Reason: "deploy hotfix 42". Needs 2 approvals from approver or admin; 0 given. ` +
				"Approve: `rexec-cli approve " + runID + "` · Deny: `rexec-cli deny " + runID + "`"},
		},
		{
			note: "approved, one more needed",
			n: with(notice(webhook.EventApproved), func(n *webhook.Notice) {
				n.Actor, n.Comment, n.ApprovalsGiven = "bob", "lgtm", 1
			}),
			want: []string{"*[acme] Run approved* — bob approved alice's run of `systemctl restart nginx` on 12 nodes (web-1, web-2, web-3, +9 more): " +
				`"lgtm". 1 of 2 approvals given. ` +
				"Approve: `rexec-cli approve " + runID + "` · Deny: `rexec-cli deny " + runID + "`"},
		},
		{
			note: "approved, enough",
			n: with(notice(webhook.EventApproved), func(n *webhook.Notice) {
				n.Actor, n.ApprovalsGiven, n.Nodes, n.NodeCount = "bob", 2, []string{"db-1"}, 1
			}),
			want: []string{"*[acme] Run approved* — bob approved alice's run of `systemctl restart nginx` on 1 node (db-1). " +
				"2 of 2 approvals given: the run is queued. Run `" + runID + "`."},
			without: []string{"rexec-cli"},
		},
		{
			note: "denied",
			n: with(notice(webhook.EventDenied), func(n *webhook.Notice) {
				n.Actor, n.Comment = "carol", "not during the freeze"
			}),
			want: []string{"*[acme] Run denied* — carol denied alice's run of `systemctl restart nginx` on 12 nodes (web-1, web-2, web-3, +9 more): " +
				`"not during the freeze". The run will not start. Run ` + "`" + runID + "`."},
			without: []string{"rexec-cli"},
		},
		{
			note: "expired",
			n:    with(notice(webhook.EventExpired), func(n *webhook.Notice) { n.ApprovalsGiven = 1 }),
			want: []string{"*[acme] Approval expired* — alice's run of `systemctl restart nginx` on 12 nodes (web-1, web-2, web-3, +9 more) expired " +
				"with 1 of 2 approvals given. The run will not start. Run `" + runID + "`."},
			without: []string{"rexec-cli"},
		},
		{
			note: "a script",
			n: with(notice(webhook.EventApprovalRequested), func(n *webhook.Notice) {
				n.Command = webhook.DescribeScript(120, strings.Repeat("ab", 32))
			}),
			want: []string{"alice wants to run `script (120 bytes, sha256 " + strings.Repeat("ab", 32) + ")` on 12 nodes"},
		},
		{
			note: "mrkdwn in user values is escaped",
			n: with(notice(webhook.EventApprovalRequested), func(n *webhook.Notice) {
				n.Reason = "ping <!channel> & see <https://evil.example|the docs>\nthanks"
				n.Submitter = "<@U123>"
			}),
			want:    []string{"— &lt;@U123&gt; wants to run", `Reason: "ping &lt;!channel&gt; &amp; see &lt;https://evil.example|the docs&gt; thanks".`},
			without: []string{"<!channel>", "<https://", "\n"},
		},
		{
			note: "a backtick cannot end the code span",
			n: with(notice(webhook.EventApprovalRequested), func(n *webhook.Notice) {
				n.Command = webhook.DescribeArgv([]string{"echo", "`id`"})
			}),
			want: []string{"wants to run echo '`id`' on"},
		},
		{
			note: "at most MaxNodes names",
			n: with(notice(webhook.EventApprovalRequested), func(n *webhook.Notice) {
				n.Nodes = []string{"n1", "n2", "n3", "n4", "n5", "n6", "n7"}
				n.NodeCount = 7
			}),
			want:    []string{"on 7 nodes (n1, n2, n3, n4, n5, +2 more)."},
			without: []string{"n6"},
		},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			got := webhook.Text(tc.n)
			for _, frag := range tc.want {
				if !strings.Contains(got, frag) {
					t.Errorf("Text =\n%s\nwant it to contain\n%s", got, frag)
				}
			}
			for _, s := range tc.without {
				if strings.Contains(got, s) {
					t.Errorf("Text =\n%s\nholds %q", got, s)
				}
			}
		})
	}
}

func TestBody(t *testing.T) {
	t.Parallel()
	n := notice(webhook.EventApprovalRequested)
	n.Nodes = []string{"n1", "n2", "n3", "n4", "n5", "n6"}
	b, err := webhook.Body(n)
	if err != nil {
		t.Fatal(err)
	}
	var p webhook.Payload
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	want := n
	want.Nodes = n.Nodes[:webhook.MaxNodes]
	want.Approve, want.Deny = "rexec-cli approve "+runID, "rexec-cli deny "+runID
	if !reflect.DeepEqual(p.Rexec, want) {
		t.Errorf("rexec =\n%+v\nwant\n%+v", p.Rexec, want)
	}
	if p.Text != webhook.Text(n) {
		t.Errorf("text = %q, want Text's %q", p.Text, webhook.Text(n))
	}
	// Slack needs nothing but a top-level "text" string.
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		t.Fatal(err)
	}
	if len(top) != 2 || top["text"] == nil || top["rexec"] == nil {
		t.Errorf("top-level fields = %v, want text and rexec", keys(top))
	}

	if _, err := webhook.Body(webhook.Notice{Event: "rebooted"}); err == nil {
		t.Error("Body accepted an unknown event")
	}
}

func TestDescribeArgv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		argv []string
		want string
	}{
		{[]string{"uptime"}, "uptime"},
		{[]string{"ls", "-la", "/var/log"}, "ls -la /var/log"},
		{[]string{"sh", "-c", "echo hi; id"}, "sh -c 'echo hi; id'"},
		{[]string{"echo", "it's"}, `echo 'it'\''s'`},
		{[]string{"echo", ""}, "echo ''"},
		{[]string{"printf", "a\nb"}, `printf "a\nb"`},
		{[]string{"echo", "héllo"}, "echo 'héllo'"},
		{[]string{"echo", strings.Repeat("x", 400)}, "echo " + strings.Repeat("x", webhook.MaxCommandLen-6) + "…"},
	} {
		if got := webhook.DescribeArgv(tc.argv); got != tc.want {
			t.Errorf("DescribeArgv(%q) = %q, want %q", tc.argv, got, tc.want)
		}
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
