package consul_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"maps"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/localconsul"
)

// execReport is what `consul exec` printed, parsed: per node its output
// lines and exit code, and the process's exit code.
type execReport struct {
	lines map[string][]string
	exits map[string]int
	code  int
	acked int
}

var (
	execLine  = regexp.MustCompile(`^(    |==> )([^:]+):(?: (.*))?$`)
	exitLine  = regexp.MustCompile(`^finished with exit code (-?\d+)$`)
	countLine = regexp.MustCompile(`^(\d+) / (\d+) node\(s\) completed / acknowledged$`)
)

// consulExec runs the real `consul exec` against addr.
func consulExec(t testing.TB, ctx context.Context, addr string, stdin []byte, args ...string) execReport {
	t.Helper()
	bin, err := localconsul.FindBinary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, append([]string{"exec", "-http-addr=" + addr}, args...)...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	rep := execReport{lines: map[string][]string{}, exits: map[string]int{}, acked: -1}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		rep.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("consul exec: %v", err)
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		line := sc.Text()
		if m := countLine.FindStringSubmatch(line); m != nil {
			rep.acked, _ = strconv.Atoi(m[2])
			continue
		}
		m := execLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unexpected consul exec line %q in:\n%s", line, out.String())
		}
		if m[1] == "    " {
			rep.lines[m[2]] = append(rep.lines[m[2]], m[3])
		} else if em := exitLine.FindStringSubmatch(m[3]); em != nil {
			rep.exits[m[2]], _ = strconv.Atoi(em[1])
		}
	}
	return rep
}

// asLines renders a node's output as `consul exec` prints a chunk (its
// command/exec TargetedUI: every line prefixed, then trailing white space of
// the whole trimmed, which leaves a bare "node:" line after a final newline)
// and parses it back as consulExec does. The tests' outputs are small and
// written at once, so each node's output is one chunk.
func asLines(node, out string) []string {
	if out == "" {
		return nil
	}
	var b strings.Builder
	for _, l := range strings.Split(out, "\n") {
		b.WriteString("    " + node + ": " + l + "\n")
	}
	var lines []string
	for _, l := range strings.Split(strings.TrimRightFunc(b.String(), unicode.IsSpace), "\n") {
		lines = append(lines, execLine.FindStringSubmatch(l)[3])
	}
	return lines
}

func TestParityWithConsulExec(t *testing.T) {
	t.Parallel()
	script := []byte("#!/bin/sh\necho \"script $((6 * 7))\"\necho to-stderr >&2\nexit 4\n")
	for _, tc := range []struct {
		note   string
		args   []string // consul exec flags and command
		spec   consul.Spec
		stdin  []byte
		wantOK bool // consul exec exits 0
	}{
		{note: "plain command on all nodes", args: []string{"echo hello; basename $PWD"},
			spec: consul.Spec{Argv: []string{"echo hello; basename $PWD"}}, wantOK: true},
		{note: "node filter", args: []string{"-node", "^web-", "uname", "-s"},
			spec: consul.Spec{Argv: []string{"uname", "-s"}, NodeFilter: "^web-"}, wantOK: true},
		{note: "service filter", args: []string{"-service", "^web$", "basename", "$PWD"},
			spec: consul.Spec{Argv: []string{"basename", "$PWD"}, ServiceFilter: "^web$"}, wantOK: true},
		{note: "service and tag filter", args: []string{"-service", "web", "-tag", "^blue$", "basename $PWD"},
			spec: consul.Spec{Argv: []string{"basename $PWD"}, ServiceFilter: "web", TagFilter: "^blue$"}, wantOK: true},
		{note: "shell=false", args: []string{"-node", "^db-1$", "-shell=false", "/bin/echo", "a  b", "$HOME"},
			spec: consul.Spec{Argv: []string{"/bin/echo", "a  b", "$HOME"}, NoShell: true, NodeFilter: "^db-1$"}, wantOK: true},
		{note: "stdin script", args: []string{"-node", "^web-", "-"}, stdin: script,
			spec: consul.Spec{Script: script, NodeFilter: "^web-"}},
		{note: "non-zero exit codes", args: []string{"-node", "^(web|db)-", "case $(basename $PWD) in web-1) exit 0;; web-2) exit 1;; *) exit 42;; esac"},
			spec: consul.Spec{Argv: []string{"case $(basename $PWD) in web-1) exit 0;; web-2) exit 1;; *) exit 42;; esac"}, NodeFilter: "^(web|db)-"}},
		{note: "no output", args: []string{"-node", "^web-1$", "true"},
			spec: consul.Spec{Argv: []string{"true"}, NodeFilter: "^web-1$"}, wantOK: true},
		{note: "multi-line output", args: []string{"-node", "^db-1$", "printf 'one\\n\\n  three\\nfour'"},
			spec: consul.Spec{Argv: []string{"printf 'one\\n\\n  three\\nfour'"}, NodeFilter: "^db-1$"}, wantOK: true},
		{note: "command that cannot start", args: []string{"-node", "^web-2$", "-shell=false", "/no/such/binary"},
			spec: consul.Spec{Argv: []string{"/no/such/binary"}, NoShell: true, NodeFilter: "^web-2$"}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := ctxT(t, 2*time.Minute)
			// consul exec gives up on a node that acknowledges more than
			// -wait after the last report, which a loaded test machine can
			// cause; both get a longer quiet period (the engine ends early).
			args := append([]string{"-prefix", b.prefix, "-wait", "5s"}, tc.args...)
			want := consulExec(t, ctx, b.cluster.Agent("web-1").HTTPAddr(), tc.stdin, args...)
			if wantCode := map[bool]int{true: 0, false: 2}[tc.wantOK]; want.code != wantCode {
				t.Fatalf("consul exec exited %d, want %d (the case is wrong)", want.code, wantCode)
			}

			spec := tc.spec
			spec.Prefix, spec.Wait = b.prefix, 5*time.Second
			res, col := b.resolveAndRun(t, ctx, spec)

			got := resultsByNode(res)
			var exited []string
			code := 0
			for name, n := range got {
				switch n.State {
				case consul.NodeExited:
					exited = append(exited, name)
					if n.ExitCode != 0 {
						code = 2
					}
				case consul.NodeNoAck:
					if name != "noexec-1" {
						t.Errorf("%s never acknowledged", name)
					}
				default:
					t.Errorf("%s: %s", name, n.State)
				}
			}
			slices.Sort(exited)
			if wantNodes := slices.Sorted(maps.Keys(want.exits)); !slices.Equal(exited, wantNodes) {
				t.Fatalf("nodes that ran: %v, consul exec: %v", exited, wantNodes)
			}
			if len(want.exits) != want.acked {
				t.Errorf("consul exec: %d acknowledged, %d exited", want.acked, len(want.exits))
			}
			for _, name := range exited {
				if got[name].ExitCode != want.exits[name] {
					t.Errorf("%s: exit code %d, consul exec %d", name, got[name].ExitCode, want.exits[name])
				}
				if g, w := asLines(name, col.output(name)), want.lines[name]; !slices.Equal(g, w) {
					t.Errorf("%s: output %q, consul exec %q", name, g, w)
				}
			}
			if code != want.code {
				t.Errorf("exit status %d, consul exec %d", code, want.code)
			}
			col.checkOrder(t)
			b.assertClean(t, res.Session)
		})
	}
}

func TestValidation(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := ctxT(t, time.Minute)
	web1 := []consul.Node{{Name: "web-1"}}
	var tooLarge *consul.SpecTooLargeError
	var badFilter *consul.FilterError
	var badText *consul.TextError
	var badEvent *consul.EventTooLargeError
	for _, tc := range []struct {
		note    string
		spec    consul.Spec
		targets []consul.Node
		is      error
		as      any
		msg     string
	}{
		{note: "no command", spec: consul.Spec{}, is: consul.ErrNoCommand},
		{note: "blank command", spec: consul.Spec{Argv: []string{" ", ""}}, is: consul.ErrNoCommand},
		{note: "empty script", spec: consul.Spec{Script: []byte{}}, is: consul.ErrNoCommand},
		{note: "shell=false with a script", spec: consul.Spec{Script: []byte("echo"), NoShell: true}, is: consul.ErrScriptWithNoShell},
		{note: "tag without service", spec: consul.Spec{Argv: []string{"true"}, TagFilter: "v1"}, is: consul.ErrTagWithoutService},
		{note: "bad node regex", spec: consul.Spec{Argv: []string{"true"}, NodeFilter: "web-("}, as: &badFilter, msg: "invalid node filter"},
		{note: "bad service regex", spec: consul.Spec{Argv: []string{"true"}, ServiceFilter: "[web"}, as: &badFilter, msg: "invalid service filter"},
		{note: "bad tag regex", spec: consul.Spec{Argv: []string{"true"}, ServiceFilter: "web", TagFilter: "*v1"}, as: &badFilter, msg: "invalid tag filter"},
		{note: "script over the KV value limit", spec: consul.Spec{Script: bytes.Repeat([]byte("#"), 400_000)}, as: &tooLarge, msg: "over Consul's KV value limit of 524288 bytes"},
		{note: "prefix with ..", spec: consul.Spec{Argv: []string{"true"}, Prefix: "_rexec/../secrets"}, msg: "must not contain"},
		{note: "no targets", spec: consul.Spec{Argv: []string{"true"}}, targets: []consul.Node{}, is: consul.ErrNoTargets},
		{note: "duplicate target", spec: consul.Spec{Argv: []string{"true"}}, targets: []consul.Node{{Name: "a"}, {Name: "a"}}, msg: "duplicate target"},
		{note: "NUL in argv", spec: consul.Spec{Argv: []string{"echo", "a\x00"}}, as: &badText, msg: "argv[1] contains a NUL byte"},
		{note: "service filter leaving no room for a node filter", spec: consul.Spec{Argv: []string{"true"}, ServiceFilter: strings.Repeat("s", 500)}, targets: web1, as: &badEvent, msg: "shorten them"},
		{note: "node name too long for an event", spec: consul.Spec{Argv: []string{"true"}}, targets: []consul.Node{{Name: strings.Repeat("n", 500)}}, msg: "too long to fit"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			before := b.count.Requests.Load()
			targets := tc.targets
			if targets == nil {
				targets = web1
			}
			_, err := b.client.Prepare(ctx, tc.spec, targets)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want %v", err, tc.is)
			}
			if tc.as != nil && !errors.As(err, tc.as) {
				t.Errorf("err = %T %v, want %T", err, err, tc.as)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %q, want it to mention %q", err, tc.msg)
			}
			// Refused before anything was sent to Consul: nothing half-written.
			if n := b.count.Requests.Load() - before; n != 0 {
				t.Errorf("%d requests sent to Consul", n)
			}
			if tc.spec.WithDefaults().Validate(0) == nil && tc.targets == nil {
				t.Errorf("Validate accepted what Prepare refused")
			}
			// Submission relies on CheckPlan to refuse all of it up front.
			if perr := b.client.CheckPlan(tc.spec, targets); perr == nil || perr.Error() != err.Error() {
				t.Errorf("CheckPlan = %v, want Prepare's %v", perr, err)
			}
		})
	}

	t.Run("too large names both sizes", func(t *testing.T) {
		err := consul.Spec{Script: bytes.Repeat([]byte("x"), 400_000)}.WithDefaults().Validate(0)
		if !errors.As(err, &tooLarge) || tooLarge.Limit != 524288 || tooLarge.Size <= 524288 {
			t.Fatalf("err = %v", err)
		}
		if !strings.Contains(err.Error(), strconv.Itoa(tooLarge.Size)) {
			t.Errorf("message %q does not name the spec size", err)
		}
	})

	t.Run("filter that matches no node writes nothing", func(t *testing.T) {
		before := b.count.Writes.Load()
		_, err := b.client.Resolve(ctx, consul.Spec{Argv: []string{"true"}, NodeFilter: "^no-such-node$"})
		if !errors.Is(err, consul.ErrNoTargets) {
			t.Fatalf("err = %v", err)
		}
		if n := b.count.Writes.Load() - before; n != 0 {
			t.Errorf("%d write requests", n)
		}
	})

	t.Run("consul down", func(t *testing.T) {
		c, err := consul.New(consul.Config{Address: "127.0.0.1:1", Token: "secret-token-value"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Resolve(ctx, consul.Spec{Argv: []string{"true"}})
		if err == nil || strings.Contains(err.Error(), "secret-token-value") {
			t.Fatalf("err = %v", err)
		}
	})
}
