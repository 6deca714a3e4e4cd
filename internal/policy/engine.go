// Package policy decides, with Open Policy Agent's Rego, whether a principal
// may do an action in rexec: submit a run (and whether it needs approval),
// approve, deny or cancel one, read runs, output and the audit log.
//
// It evaluates Rego and nothing else: callers build the Input from what they
// know (the request, the frozen target set, the Consul ACL preflight, the
// run) and act on the Decision. Any error from Decide means "deny": policy
// evaluation fails closed.
//
// The policy is a directory of Rego v1 files whose package rexec defines
// decision (Query); an embedded default (default/rexec.rego) applies when no
// directory is configured. docs/policy.md documents the input and decision
// documents for policy authors.
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
)

// Query is the Rego rule every policy must define: the decision document.
const Query = "data.rexec.decision"

// ErrNoDecisionRule means a policy compiles but does not define Query, so
// that every decision would fail.
var ErrNoDecisionRule = errors.New("policy does not define " + Query)

// Config configures an Engine.
type Config struct {
	// Dir is a directory of Rego v1 files (searched recursively; files
	// ending in _test.rego, and names starting with ".", are skipped) that
	// replaces the embedded default policy. Default: "" — the embedded
	// default policy.
	Dir string
	// Logger receives a line per policy load and reload. Default: logs are
	// discarded.
	Logger *slog.Logger
}

// Engine evaluates a compiled policy. It is safe for concurrent use;
// Reload swaps the policy atomically under running decisions.
type Engine struct {
	dir string
	log *slog.Logger

	mu      sync.Mutex // serialises Reload, so the last reload wins
	current atomic.Pointer[compiled]
}

// compiled is one loaded policy: what Decide evaluates.
type compiled struct {
	query    rego.PreparedEvalQuery
	revision string
	files    []string
}

// New loads, compiles and prepares the policy that cfg names. A policy that
// does not compile is an error naming file and line.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{dir: cfg.Dir, log: cfg.Logger}
	c, err := load(ctx, cfg.Dir)
	if err != nil {
		return nil, err
	}
	e.current.Store(c)
	e.log.InfoContext(ctx, "policy loaded", slog.String("source", sourceLabel(cfg.Dir)),
		slog.String("revision", c.revision), slog.Int("files", len(c.files)))
	return e, nil
}

// Revision returns the current policy's revision: the hex sha256 over its
// files' paths (relative to the policy directory) and contents, tests
// excluded.
func (e *Engine) Revision() string { return e.current.Load().revision }

// Files names the current policy's files (tests excluded), in order:
// paths under the policy directory, or under "default" for the embedded
// policy.
func (e *Engine) Files() []string { return slices.Clone(e.current.Load().files) }

// Dir is the policy directory; empty for the embedded default.
func (e *Engine) Dir() string { return e.dir }

// Reload reads the policy directory again and, only if it compiles, makes
// it the policy for every later decision. On error the current policy stays
// in force, and the error names the file and line at fault.
func (e *Engine) Reload(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.current.Load()
	c, err := load(ctx, e.dir)
	if err != nil {
		e.log.ErrorContext(ctx, "policy reload refused; the previous policy stays in force",
			slog.String("source", sourceLabel(e.dir)), slog.String("revision", old.revision), slog.Any("error", err))
		return err
	}
	e.current.Store(c)
	e.log.InfoContext(ctx, "policy reloaded", slog.String("source", sourceLabel(e.dir)),
		slog.String("revision", c.revision), slog.String("previous_revision", old.revision), slog.Int("files", len(c.files)))
	return nil
}

// Decide evaluates the policy for in. The Decision's Revision names the
// policy that made it. An error — no action, a policy error at run time, a
// missing or malformed decision — means the action must be denied.
func (e *Engine) Decide(ctx context.Context, in Input) (Decision, error) {
	if in.Action == "" {
		return Decision{}, errors.New("policy input has no action")
	}
	if in.Time.IsZero() {
		in.Time = time.Now()
	}
	if in.Tenant.TimeZone == "" {
		in.Tenant.TimeZone = TimeZoneDefault
	}
	c := e.current.Load()
	rs, err := c.query.Eval(ctx, rego.EvalParsedInput(in.value()))
	if err != nil {
		return Decision{}, fmt.Errorf("evaluate policy %s for %s: %w", short(c.revision), in.Action, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return Decision{}, fmt.Errorf("policy %s for %s: %w: %s is undefined", short(c.revision), in.Action, ErrInvalidDecision, Query)
	}
	if len(rs) > 1 {
		return Decision{}, fmt.Errorf("policy %s for %s: %w: %s has %d results", short(c.revision), in.Action, ErrInvalidDecision, Query, len(rs))
	}
	d, err := parseDecision(rs[0].Expressions[0].Value)
	if err != nil {
		return Decision{}, fmt.Errorf("policy %s for %s: %w", short(c.revision), in.Action, err)
	}
	d.Revision = c.revision
	return d, nil
}

// load reads, compiles and prepares the policy in dir ("" for the default).
func load(ctx context.Context, dir string) (*compiled, error) {
	src, err := readSource(dir)
	if err != nil {
		return nil, err
	}
	files := src.policyFiles()
	if len(files) == 0 {
		return nil, fmt.Errorf("policy %s: %w", src.label, ErrNoPolicy)
	}
	mods, err := parse(files)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", src.label, err)
	}
	compiler := ast.NewCompiler().WithDefaultRegoVersion(ast.RegoV1)
	if compiler.Compile(mods); compiler.Failed() {
		return nil, fmt.Errorf("policy %s: %w", src.label, compiler.Errors)
	}
	if len(compiler.GetRulesExact(ast.MustParseRef(Query))) == 0 {
		return nil, fmt.Errorf("policy %s: %w", src.label, ErrNoDecisionRule)
	}
	q, err := rego.New(
		rego.Query(Query),
		rego.Compiler(compiler),
		// A builtin that fails (an unknown time zone, say) must fail the
		// decision, not make a rule silently undefined: an undefined
		// "needs more approvals" rule would fail open.
		rego.StrictBuiltinErrors(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy %s: prepare %s: %w", src.label, Query, err)
	}
	c := &compiled{query: q, revision: src.revision()}
	for _, f := range files {
		c.files = append(c.files, f.name)
	}
	return c, nil
}

func sourceLabel(dir string) string {
	if dir == "" {
		return "embedded default"
	}
	return dir
}

// short abbreviates a revision for messages; the full one is in Decision.
func short(rev string) string { return rev[:min(12, len(rev))] }
