package consul

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Validation errors. Callers branch on them with errors.Is / errors.As to
// choose a status code; their messages are meant for the user.
var (
	ErrNoCommand         = errors.New("no command: give a command, or - to read a script from stdin")
	ErrTagWithoutService = errors.New("a tag filter needs a service filter (-tag requires -service)")
	ErrScriptWithNoShell = errors.New("-shell=false cannot be used with a script read from stdin")
	ErrNoTargets         = errors.New("the filters match no alive node")
)

// FilterError is an invalid regular expression in a filter.
type FilterError struct {
	Filter string // "node", "service" or "tag"
	Expr   string
	Err    error
}

func (e *FilterError) Error() string {
	return fmt.Sprintf("invalid %s filter %q: %v", e.Filter, e.Expr, e.Err)
}

func (e *FilterError) Unwrap() error { return e.Err }

// TextError is a text field that cannot be carried as given: it holds a NUL
// byte or is not valid UTF-8.
type TextError struct {
	Field   string // "argv[1]", "node filter", "prefix", ...
	Problem string // "contains a NUL byte" or "is not valid UTF-8"
}

func (e *TextError) Error() string { return e.Field + " " + e.Problem }

// CheckText refuses a NUL byte or invalid UTF-8 in s, naming field. JSON,
// which carries the job spec and the event payload, would turn invalid
// UTF-8 into U+FFFD, so an agent would run or match something else than
// asked; and a NUL cannot be in a command line at all (execve and sh -c
// stop at it), which is where `consul exec` takes every one of these. A
// filter that must match a NUL can say \x00.
func CheckText(field, s string) error {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return &TextError{Field: field, Problem: "contains a NUL byte"}
	case !utf8.ValidString(s):
		return &TextError{Field: field, Problem: "is not valid UTF-8"}
	}
	return nil
}

// SpecTooLargeError is a job spec that Consul's KV store would refuse.
type SpecTooLargeError struct {
	Size, Limit int
}

func (e *SpecTooLargeError) Error() string {
	return fmt.Sprintf("job spec is %d bytes encoded, over Consul's KV value limit of %d bytes (a script is base64-encoded in the spec: keep it under about %d bytes)",
		e.Size, e.Limit, e.Limit*3/4-64)
}

// Spec is one remote-exec request: every option of `consul exec`, less the
// connection (Config) and the client-side flags that only change printing.
type Spec struct {
	// Argv is the command. In shell mode its words are joined with spaces
	// and run by the agent with /bin/sh -c, as `consul exec cmd...` does;
	// with NoShell they are run as an argument vector.
	Argv []string
	// Script, when not nil, is a script the agent writes to a file and runs
	// (`consul exec -`). Argv must then be empty.
	Script []byte
	// NoShell is `-shell=false`.
	NoShell bool

	// NodeFilter, ServiceFilter and TagFilter are regular expressions the
	// target nodes must match: the node name; the ID of a service on the
	// node; a tag of that same service. TagFilter needs ServiceFilter.
	NodeFilter    string
	ServiceFilter string
	TagFilter     string

	// Prefix is the KV prefix. Default: "_rexec".
	Prefix string
	// Wait is the quiet period after which stragglers are given up
	// (doubled while an acknowledged node has not exited), and the agents'
	// heartbeat interval. Default: 2s.
	Wait time.Duration
	// WaitRepl is a pause between writing the job spec and firing the
	// event, `consul exec -wait-repl`, honoured when given. Default: 0,
	// where `consul exec` waits 200ms "so that agents' stale reads find
	// the spec": agents need no such wait. An agent reads the spec with a
	// stale read and, when that finds nothing, again with a consistent
	// one (agent/remote_exec.go, remoteExecGetSpec), which the leader
	// answers; and the leader applied the spec before its write returned,
	// before any event went out. A follower that lags costs that agent
	// one more read (to the leader), never the run; only a spec deleted
	// meanwhile (the run torn down) is missing then too. Measured on three
	// servers and four agents (internal/simagent, BenchmarkWaitRepl, 200
	// runs of `true` each way): with 0, 408 of 800 stale reads missed and
	// every one of those agents found the spec with the consistent read,
	// no node failed to ack; a run took 270ms at the median against 474ms
	// with 200ms.
	WaitRepl time.Duration
}

// WithDefaults returns a copy of s with zero fields set to their defaults.
func (s Spec) WithDefaults() Spec {
	if s.Prefix == "" {
		s.Prefix = PrefixDefault
	}
	if s.Wait == 0 {
		s.Wait = WaitDefault
	}
	// WaitReplDefault is 0: a zero WaitRepl is the default and an explicit
	// 0 alike, so no "not given" marker is needed.
	return s
}

// jobSpec is the KV value agents read: consul's rExecSpec.
type jobSpec struct {
	Command string   `json:",omitempty"`
	Args    []string `json:",omitempty"`
	Script  []byte   `json:",omitempty"`
	Wait    time.Duration
}

func (s Spec) job() jobSpec {
	switch {
	case s.Script != nil:
		return jobSpec{Script: s.Script, Wait: s.Wait}
	case s.NoShell:
		return jobSpec{Args: s.Argv, Wait: s.Wait}
	default:
		return jobSpec{Command: strings.Join(s.Argv, " "), Wait: s.Wait}
	}
}

// encodeJob returns the job spec's KV value.
func (s Spec) encodeJob() ([]byte, error) {
	return json.Marshal(s.job())
}

// Validate checks s (after defaults) against everything that can be known
// without contacting Consul. kvLimit is the KV value limit; 0 means the
// default.
func (s Spec) Validate(kvLimit int) error {
	if kvLimit == 0 {
		kvLimit = KVMaxValueSizeDefault
	}
	if s.Script != nil {
		if s.NoShell {
			return ErrScriptWithNoShell
		}
		if len(s.Argv) > 0 {
			return errors.New("give either a command or a script, not both")
		}
		if len(s.Script) == 0 {
			return ErrNoCommand
		}
	} else if strings.TrimSpace(strings.Join(s.Argv, "")) == "" {
		return ErrNoCommand
	}
	for i, a := range s.Argv {
		if err := CheckText(fmt.Sprintf("argv[%d]", i), a); err != nil {
			return err
		}
	}
	// Without a shell the agent execs argv[0] as it is: an empty one can
	// only fail on every node (exit 255), so refuse it now.
	if s.Script == nil && s.NoShell && s.Argv[0] == "" {
		return errors.New("-shell=false needs a program name as the first word of the command")
	}
	for _, f := range []struct{ name, expr string }{
		{"node", s.NodeFilter}, {"service", s.ServiceFilter}, {"tag", s.TagFilter},
	} {
		if err := CheckText(f.name+" filter", f.expr); err != nil {
			return err
		}
		if _, err := regexp.Compile(f.expr); err != nil {
			return &FilterError{Filter: f.name, Expr: f.expr, Err: err}
		}
	}
	if s.TagFilter != "" && s.ServiceFilter == "" {
		return ErrTagWithoutService
	}
	if err := validatePrefix(s.Prefix); err != nil {
		return err
	}
	if s.Wait <= 0 {
		return errors.New("wait must be positive")
	}
	if s.WaitRepl < 0 {
		return errors.New("wait-repl must not be negative")
	}
	b, err := s.encodeJob()
	if err != nil {
		return fmt.Errorf("encode job spec: %w", err)
	}
	if len(b) > kvLimit {
		return &SpecTooLargeError{Size: len(b), Limit: kvLimit}
	}
	return nil
}

func validatePrefix(p string) error {
	if err := CheckText("prefix", p); err != nil {
		return err
	}
	switch {
	case p == "":
		return errors.New("prefix must not be empty")
	case strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/"):
		return fmt.Errorf("prefix %q must not start or end with /", p)
	case strings.Contains(p, "//"):
		return fmt.Errorf("prefix %q has an empty path segment", p)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("prefix %q must not contain . or .. segments", p)
		}
	}
	return nil
}
