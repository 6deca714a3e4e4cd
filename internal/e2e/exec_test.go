package e2e_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestExecParity runs the same commands through rexec-cli and consul exec
// on the same cluster: same nodes, same output per node, same exit codes,
// same process exit code.
func TestExecParity(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	script := []byte("#!/bin/sh\necho \"from script $((2 + 3))\"\necho err >&2\nexit 7\n")
	for _, tc := range []struct {
		note  string
		args  []string
		stdin []byte
	}{
		{note: "every node", args: []string{"-node", execNodes, "echo hello; basename $PWD"}},
		{note: "exit codes", args: []string{"-node", execNodes, "case $(basename $PWD) in web-*) exit 0;; db-1) exit 3;; *) exit 1;; esac"}},
		{note: "service and tag", args: []string{"-service", "web", "-tag", "^v2$", "uname -s; basename $PWD"}},
		{note: "shell=false", args: []string{"-node", "^app-1$", "-shell=false", "/bin/echo", "a  b", "$HOME"}},
		{note: "stdin script", args: []string{"-node", "^(web-1|db-1)$", "-"}, stdin: script},
		{note: "multi-line and no output", args: []string{"-node", "^(web|db)-", "[ $(basename $PWD) = db-1 ] || printf 'x\\n\\n  y\\nz'"}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			// consul exec gives up on a node that acknowledges more than
			// -wait after the last report, which a loaded test machine can
			// cause; both get a longer quiet period (rexec ends early anyway).
			args := append([]string{"-wait", "5s"}, tc.args...)
			want := e.consulExec(tc.stdin, args...)
			got := e.cli(tc.stdin, append([]string{"exec"}, args...)...)
			if got.code != want.code {
				t.Errorf("exit code %d, consul exec %d\nrexec stderr: %s", got.code, want.code, got.stderr)
			}
			g, w := parseReport(got.stdout), parseReport(want.stdout)
			if len(w.exits) == 0 {
				t.Fatalf("consul exec ran nowhere:\n%s%s", want.stdout, want.stderr)
			}
			if !maps.Equal(g.exits, w.exits) {
				t.Errorf("exit codes %v, consul exec %v", g.exits, w.exits)
			}
			for node := range w.exits {
				if !slices.Equal(g.lines[node], w.lines[node]) {
					t.Errorf("%s: output %q, consul exec %q", node, g.lines[node], w.lines[node])
				}
			}
			wantSummary := []string{strings.TrimSpace(w.other[len(w.other)-1])}
			if !slices.Equal(g.other, wantSummary) {
				t.Errorf("closing lines %q, consul exec %q", g.other, wantSummary)
			}
			checkNodeOrder(t, got.stdout)
		})
	}
}

// checkNodeOrder asserts that no node's output follows its exit line.
func checkNodeOrder(t *testing.T, out string) {
	t.Helper()
	exited := map[string]bool{}
	for _, l := range strings.Split(out, "\n") {
		m := outLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if exited[m[2]] {
			t.Errorf("%s: line after its exit: %q", m[2], l)
		}
		if m[1] == "==> " {
			exited[m[2]] = true
		}
	}
}

// TestExecNoAck: a node with remote exec off is named and makes the exit
// code 2, where consul exec does not notice it.
func TestExecNoAck(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	res := e.cli(nil, "exec", "-node", "^(web-1|noexec-1)$", "-wait", "500ms", "true")
	if res.code != 2 {
		t.Errorf("exit code %d, want 2\n%s%s", res.code, res.stdout, res.stderr)
	}
	if !strings.Contains(res.stdout, "1 / 1 node(s) completed / acknowledged\n==> 1 node(s) never acknowledged: noexec-1\n") {
		t.Errorf("closing lines:\n%s", res.stdout)
	}
	if want := e.consulExec(nil, "-node", "^(web-1|noexec-1)$", "-wait", "500ms", "true"); want.code != 0 {
		t.Errorf("consul exec exited %d; the premise (it does not notice) is wrong", want.code)
	}
}

// TestLogsMatchLive: the archive returns exactly the bytes streamed live,
// per node exactly what the command wrote, and nothing is left in KV.
func TestLogsMatchLive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOpts{})
	dir := t.TempDir()
	// Output over several chunks, with binary-safe per-node content whose
	// hash the command itself records.
	cmd := "f=$(mktemp); (seq 1 3000; head -c 20000 /dev/urandom | od -An -tx1) > $f; sha256sum $f | cut -c1-64 > " + dir + "/$(basename $PWD); cat $f; rm -f $f"
	live := e.cli(nil, "exec", "-verbose", "-node", "^(web-1|web-2|db-1)$", cmd)
	if live.code != 0 {
		t.Fatalf("exec exited %d: %s", live.code, live.stderr)
	}
	id := runID(t, live.stderr)
	logs := e.cli(nil, "jobs", "logs", id)
	if logs.code != 0 || logs.stdout != live.stdout {
		t.Fatalf("jobs logs differs from the live output (exit %d)\nlive %d bytes, logs %d bytes", logs.code, len(live.stdout), len(logs.stdout))
	}
	show := e.cli(nil, "jobs", "show", id, "-json")
	var run struct {
		ID          string    `json:"id"`
		State       string    `json:"state"`
		SubmittedBy string    `json:"submitted_by"`
		CreatedAt   time.Time `json:"created_at"`
		Nodes       []struct {
			Node      string `json:"node"`
			State     string `json:"state"`
			ExitCode  *int   `json:"exit_code"`
			Bytes     int64  `json:"bytes"`
			SHA256    string `json:"sha256"`
			Truncated bool   `json:"truncated"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(show.stdout), &run); err != nil {
		t.Fatalf("jobs show -json: %v\n%s", err, show.stdout)
	}
	if run.ID != id || run.State != "completed" || run.SubmittedBy != "alice" || run.CreatedAt.IsZero() || len(run.Nodes) != 3 {
		t.Fatalf("jobs show -json: %+v", run)
	}
	for _, n := range run.Nodes {
		raw := e.cli(nil, "jobs", "logs", id, "-node", n.Node)
		sum := sha256.Sum256([]byte(raw.stdout))
		want, _ := os.ReadFile(filepath.Join(dir, n.Node))
		if hex.EncodeToString(sum[:]) != strings.TrimSpace(string(want)) || n.SHA256 != strings.TrimSpace(string(want)) {
			t.Errorf("%s: archived sha256 %x, recorded %s, command wrote %s", n.Node, sum, n.SHA256, want)
		}
		if n.State != "exited" || n.ExitCode == nil || *n.ExitCode != 0 || n.Bytes != int64(len(raw.stdout)) || n.Truncated {
			t.Errorf("%s: %+v (archived %d bytes)", n.Node, n, len(raw.stdout))
		}
	}
	if keys := e.kvKeys(); len(keys) != 0 {
		t.Errorf("left in KV: %v", keys)
	}
}

// runID finds the run ID that exec -verbose prints.
func runID(t *testing.T, stderr string) string {
	t.Helper()
	for _, l := range strings.Split(stderr, "\n") {
		if rest, ok := strings.CutPrefix(l, "==> run "); ok {
			return strings.Fields(rest)[0]
		}
	}
	t.Fatalf("no run ID in:\n%s", stderr)
	return ""
}
