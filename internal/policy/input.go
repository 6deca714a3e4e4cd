package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
)

// Action is what a principal asks to do. Policies see it as input.action.
type Action string

// The actions rexec asks the policy about.
const (
	// ActionExecSubmit submits a new run; input.request and input.targets
	// describe it.
	ActionExecSubmit Action = "exec.submit"
	// ActionExecApprove approves a run pending approval (input.run).
	ActionExecApprove Action = "exec.approve"
	// ActionExecDeny refuses a run pending approval, which ends it denied.
	ActionExecDeny Action = "exec.deny"
	// ActionExecCancel cancels a run before or while it runs.
	ActionExecCancel Action = "exec.cancel"
	// ActionRunRead reads a run: its request, state and per-node results.
	ActionRunRead Action = "run.read"
	// ActionOutputRead reads a run's archived output.
	ActionOutputRead Action = "output.read"
	// ActionAuditRead queries the tenant's audit log.
	ActionAuditRead Action = "audit.read"
	// ActionRunList lists all of the tenant's runs.
	ActionRunList Action = "run.list"
)

// Actions lists every action, in the order above.
var Actions = []Action{
	ActionExecSubmit, ActionExecApprove, ActionExecDeny, ActionExecCancel,
	ActionRunRead, ActionOutputRead, ActionAuditRead, ActionRunList,
}

// TimeZoneDefault is the tenant time zone assumed when none is set.
const TimeZoneDefault = "UTC"

// Input is the document a policy decides on: input in Rego. Its JSON form
// (the field tags) is the contract with policy authors, documented in
// docs/policy.md; change it only together with that page.
//
// Slices are never null in the policy's view: Decide turns nil slices into
// empty arrays, so count() and iteration work without guards.
type Input struct {
	// Action is what the principal asks to do. Required.
	Action Action `json:"action"`
	// Principal is who asks.
	Principal Principal `json:"principal"`
	// Tenant is the principal's tenant; everything in the input belongs to it.
	Tenant Tenant `json:"tenant"`
	// Request is the run's request: the one being submitted for
	// exec.submit, the stored one for actions on an existing run. Absent
	// (undefined in Rego) for run.list and audit.read.
	Request *Request `json:"request,omitempty"`
	// Targets is the run's frozen target set: the nodes the filters
	// selected when the run was submitted, sorted by name. Empty for
	// actions without a run.
	Targets []Target `json:"targets"`
	// Preflight is the Consul ACL preflight of the tenant's token. Only
	// exec.submit runs it; for other actions Checked is false.
	Preflight Preflight `json:"preflight"`
	// Run is the existing run an action is about (exec.approve, exec.deny,
	// exec.cancel, run.read, output.read). Absent for exec.submit, run.list
	// and audit.read.
	Run *Run `json:"run,omitempty"`
	// Time is when the decision is asked for, RFC 3339 in JSON (use
	// time.parse_rfc3339_ns). Default: the time of the call to Decide.
	Time time.Time `json:"time"`
}

// Principal is an authenticated caller.
type Principal struct {
	// Name is unique within the tenant.
	Name string `json:"name"`
	// Roles are the principal's roles in the tenant: any of submitter,
	// approver, auditor, admin.
	Roles []string `json:"roles"`
}

// Tenant is the principal's tenant.
type Tenant struct {
	// Name is the tenant's name.
	Name string `json:"name"`
	// TimeZone is the tenant's IANA time zone ("Europe/Berlin"), for rules
	// about working hours: time.clock([ns, input.tenant.time_zone]).
	// Default: "UTC".
	TimeZone string `json:"time_zone"`
}

// Request is what a run asks the agents to do, and where.
type Request struct {
	// Command is the command line: the words of Argv joined with spaces.
	// In shell mode the agent runs exactly this with /bin/sh -c, so a
	// policy that judges shell commands must judge this string, not Argv.
	Command string `json:"command"`
	// Argv is the command as given. Without shell mode the agent runs it
	// as an argument vector: Argv[0] is the program.
	Argv []string `json:"argv"`
	// Shell is true when the agent runs Command (or Script) through a shell.
	Shell bool `json:"shell"`
	// ScriptSHA256 is the hex sha256 of a stdin script; empty when the run
	// has no script (then Argv holds the command).
	ScriptSHA256 string `json:"script_sha256"`
	// ScriptBytes is the script's length in bytes; 0 without a script.
	ScriptBytes int `json:"script_bytes"`
	// Script is the script's text when it is valid UTF-8; empty otherwise,
	// in which case only ScriptSHA256 and ScriptBytes describe it.
	Script string `json:"script"`
	// NodeFilter, ServiceFilter and TagFilter are the run's filters
	// (regular expressions; empty when not given).
	NodeFilter    string `json:"node_filter"`
	ServiceFilter string `json:"service_filter"`
	TagFilter     string `json:"tag_filter"`
	// Prefix is the KV prefix the run uses: the tenant's or one under it.
	Prefix string `json:"prefix"`
	// Reason is the submitter's free-text reason (-reason); may be empty.
	Reason string `json:"reason"`
	// Wait is the quiet period, in nanoseconds (compare with
	// time.parse_duration_ns("2s")).
	Wait time.Duration `json:"wait"`
	// WaitRepl is the pause between writing the job and firing it, in
	// nanoseconds.
	WaitRepl time.Duration `json:"wait_repl"`
	// Timeout is the run's deadline once started, in nanoseconds; 0 means
	// none.
	Timeout time.Duration `json:"timeout"`
}

// SetScript describes script in r: its sha256 and length always, its text
// only when it is valid UTF-8 (JSON cannot carry arbitrary bytes).
func (r *Request) SetScript(script []byte) {
	if script == nil {
		r.ScriptSHA256, r.ScriptBytes, r.Script = "", 0, ""
		return
	}
	sum := sha256.Sum256(script)
	r.ScriptSHA256 = hex.EncodeToString(sum[:])
	r.ScriptBytes = len(script)
	r.Script = ""
	if utf8.Valid(script) {
		r.Script = string(script)
	}
}

// SetArgv sets Argv and the Command line derived from it.
func (r *Request) SetArgv(argv []string) {
	r.Argv = argv
	r.Command = strings.Join(argv, " ")
}

// Target is a node in a run's frozen target set.
type Target struct {
	// Node is the node's name.
	Node string `json:"node"`
	// Address is the node's address in the catalog.
	Address string `json:"address"`
	// Services are the service instances registered on the node.
	Services []Service `json:"services"`
}

// Service is a service instance on a target node.
type Service struct {
	// ID is the instance's ID (the name unless registered otherwise).
	ID string `json:"id"`
	// Name is the service's name.
	Name string `json:"name"`
	// Tags are the instance's tags.
	Tags []string `json:"tags"`
}

// Preflight is the result of asking Consul whether the tenant's token holds
// the permissions a run needs.
type Preflight struct {
	// Checked is true when the preflight ran (exec.submit).
	Checked bool `json:"checked"`
	// Allowed is true when the token holds every permission needed.
	Allowed bool `json:"allowed"`
	// Missing names each permission the token lacks, as
	// "<resource>:<access> <segment>", for example "event:write _rexec".
	Missing []string `json:"missing"`
}

// Run is an existing run that an action is about.
type Run struct {
	// ID is the run's ID.
	ID string `json:"id"`
	// State is the run's state: pending_approval, queued, running,
	// completed, failed, cancelled, denied or expired.
	State string `json:"state"`
	// SubmittedBy is the name of the principal who submitted it.
	SubmittedBy string `json:"submitted_by"`
	// SubmittedAt is when it was submitted.
	SubmittedAt time.Time `json:"submitted_at"`
	// RequiredApprovals is how many distinct approvals the submit decision
	// asked for; 0 when the run needed none.
	RequiredApprovals int `json:"required_approvals"`
	// ApproverRoles are the roles whose holders may approve it (from the
	// submit decision); empty when the run needed no approval.
	ApproverRoles []string `json:"approver_roles"`
	// Approvals are the approvals given so far, oldest first.
	Approvals []Approval `json:"approvals"`
}

// Approval is one approval given to a run.
type Approval struct {
	// Principal is the approver's name.
	Principal string `json:"principal"`
	// Roles are the roles the approver held when approving.
	Roles []string `json:"roles"`
	// Time is when the approval was given.
	Time time.Time `json:"time"`
}

// value converts in to the policy's input document, exactly as its JSON
// form (TestInputValueIsJSON holds the two together) but with every nil
// slice an empty array, so that a policy never meets null where the
// documentation promises an array. Building the value directly rather than
// through JSON makes a decision on a run to hundreds of nodes several
// times cheaper.
func (in Input) value() ast.Value {
	o := obj(
		kv("action", str(string(in.Action))),
		kv("principal", ast.ObjectTerm(
			kv("name", str(in.Principal.Name)),
			kv("roles", strs(in.Principal.Roles)),
		)),
		kv("tenant", ast.ObjectTerm(
			kv("name", str(in.Tenant.Name)),
			kv("time_zone", str(in.Tenant.TimeZone)),
		)),
		kv("targets", targets(in.Targets)),
		kv("preflight", ast.ObjectTerm(
			kv("checked", ast.InternedTerm(in.Preflight.Checked)),
			kv("allowed", ast.InternedTerm(in.Preflight.Allowed)),
			kv("missing", strs(in.Preflight.Missing)),
		)),
		kv("time", timeTerm(in.Time)),
	)
	if r := in.Request; r != nil {
		o.Insert(str("request"), ast.ObjectTerm(
			kv("command", str(r.Command)),
			kv("argv", strs(r.Argv)),
			kv("shell", ast.InternedTerm(r.Shell)),
			kv("script_sha256", str(r.ScriptSHA256)),
			kv("script_bytes", num(int64(r.ScriptBytes))),
			kv("script", str(r.Script)),
			kv("node_filter", str(r.NodeFilter)),
			kv("service_filter", str(r.ServiceFilter)),
			kv("tag_filter", str(r.TagFilter)),
			kv("prefix", str(r.Prefix)),
			kv("reason", str(r.Reason)),
			kv("wait", num(int64(r.Wait))),
			kv("wait_repl", num(int64(r.WaitRepl))),
			kv("timeout", num(int64(r.Timeout))),
		))
	}
	if r := in.Run; r != nil {
		approvals := make([]*ast.Term, len(r.Approvals))
		for i, a := range r.Approvals {
			approvals[i] = ast.ObjectTerm(
				kv("principal", str(a.Principal)),
				kv("roles", strs(a.Roles)),
				kv("time", timeTerm(a.Time)),
			)
		}
		o.Insert(str("run"), ast.ObjectTerm(
			kv("id", str(r.ID)),
			kv("state", str(r.State)),
			kv("submitted_by", str(r.SubmittedBy)),
			kv("submitted_at", timeTerm(r.SubmittedAt)),
			kv("required_approvals", num(int64(r.RequiredApprovals))),
			kv("approver_roles", strs(r.ApproverRoles)),
			kv("approvals", ast.ArrayTerm(approvals...)),
		))
	}
	return o
}

// targets converts the target set. A node's term is made once and kept
// (nodeTerms); within a set, the nodes mostly carry the same service
// instances (that is how they were selected), and terms are immutable, so
// each distinct service is made once and shared.
func targets(ts []Target) *ast.Term {
	terms := make([]*ast.Term, len(ts))
	seen := map[string]*ast.Term{}
	var key, nodeKey strings.Builder
	field := func(b *strings.Builder, f string) {
		b.WriteString(strconv.Itoa(len(f)))
		b.WriteByte(':')
		b.WriteString(f)
	}
	for i, t := range ts {
		// The node's key holds everything its term does, each field
		// prefixed by its length and each list by its count: two nodes
		// with the same key have the same term.
		nodeKey.Reset()
		field(&nodeKey, t.Node)
		field(&nodeKey, t.Address)
		nodeKey.WriteString(strconv.Itoa(len(t.Services)))
		for _, s := range t.Services {
			field(&nodeKey, s.ID)
			field(&nodeKey, s.Name)
			nodeKey.WriteString(strconv.Itoa(len(s.Tags)))
			for _, tag := range s.Tags {
				field(&nodeKey, tag)
			}
		}
		if term := nodeTerms.get(nodeKey.String()); term != nil {
			terms[i] = term
			continue
		}
		services := make([]*ast.Term, len(t.Services))
		for j, s := range t.Services {
			key.Reset()
			field(&key, s.ID)
			field(&key, s.Name)
			for _, tag := range s.Tags {
				field(&key, tag)
			}
			if term, ok := seen[key.String()]; ok {
				services[j] = term
				continue
			}
			services[j] = ast.ObjectTerm(
				kv("id", str(s.ID)),
				kv("name", str(s.Name)),
				kv("tags", strs(s.Tags)),
			)
			seen[key.String()] = services[j]
		}
		terms[i] = ast.ObjectTerm(
			kv("node", str(t.Node)),
			kv("address", str(t.Address)),
			kv("services", ast.ArrayTerm(services...)),
		)
		nodeTerms.put(nodeKey.String(), terms[i])
	}
	return ast.ArrayTerm(terms...)
}

// nodeTerms keeps target nodes' terms across decisions. A tenant's
// submissions name the same nodes, with the same services, again and
// again, and making a node's term (an object per service, a string per
// tag) was two thirds of a decision's CPU at 25 services a node.
var nodeTerms = termCache{max: 8192}

// termCache maps keys to immutable terms, which concurrent decisions may
// share. It forgets everything when full: a catalog that changes keeps
// only the terms still asked for.
type termCache struct {
	max int

	mu sync.Mutex
	m  map[string]*ast.Term
}

func (c *termCache) get(key string) *ast.Term {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *termCache) put(key string, t *ast.Term) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= c.max {
		c.m = make(map[string]*ast.Term)
	}
	c.m[key] = t
}

func obj(items ...[2]*ast.Term) ast.Object { return ast.NewObject(items...) }

func kv(k string, v *ast.Term) [2]*ast.Term {
	key, ok := keyTerms[k]
	if !ok {
		key = ast.StringTerm(k)
	}
	return ast.Item(key, v)
}

// keyTerms are the input document's keys, made once: terms are immutable,
// and sharing them saves two allocations per key of every object.
var keyTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	for _, k := range []string{
		"action", "principal", "name", "roles", "tenant", "time_zone", "targets",
		"preflight", "checked", "allowed", "missing", "time", "request", "command",
		"argv", "shell", "script_sha256", "script_bytes", "script", "node_filter",
		"service_filter", "tag_filter", "prefix", "reason", "wait", "wait_repl",
		"timeout", "run", "id", "state", "submitted_by", "submitted_at",
		"required_approvals", "approver_roles", "approvals", "node", "address",
		"services", "tags",
	} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

func str(s string) *ast.Term { return ast.StringTerm(s) }

func num(n int64) *ast.Term { return ast.NumberTerm(json.Number(strconv.FormatInt(n, 10))) }

func strs(ss []string) *ast.Term {
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.ArrayTerm(terms...)
}

// timeTerm formats t as encoding/json does.
func timeTerm(t time.Time) *ast.Term { return ast.StringTerm(t.Format(time.RFC3339Nano)) }
