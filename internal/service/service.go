// Package service is what rexec does for an authenticated caller: submit a
// run (validate, resolve the frozen target set, store it and queue its job
// in one transaction), read runs, their nodes and output, and cancel them.
// It knows nothing about HTTP; the API maps its errors to statuses.
package service

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/rexec/rexec/internal/audit"
	"github.com/rexec/rexec/internal/auditlog"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/tenantconsul"
)

// Error kinds the API maps to statuses.
var (
	ErrNotFound      = errors.New("not found")
	ErrForbidden     = errors.New("forbidden")
	ErrInvalid       = errors.New("invalid request")
	ErrConflict      = errors.New("conflict")
	ErrUnprocessable = errors.New("unprocessable")
	ErrUpstream      = errors.New("consul unavailable")
	ErrTooLarge      = errors.New("too large")
)

// Error is an error of one kind with a message for the user.
type Error struct {
	Kind error
	Msg  string
	// Reasons are a policy's reasons for a refusal, when it gave any.
	Reasons []string
}

func (e *Error) Error() string { return e.Msg }

// Unwrap lets errors.Is match the kind.
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Caller is an authenticated principal and its tenant, and where its
// request came from.
type Caller struct {
	Principal store.Principal
	Tenant    store.Tenant
	// RequestID is the ID of the API request (X-Request-Id), and
	// ClientAddr the address of its TCP peer: every audit event the
	// request causes carries both.
	RequestID  string
	ClientAddr string
}

// event is an audit event the caller's request causes, about runID (empty
// when about no run).
func (c Caller) event(runID, typ string, data map[string]any) audit.Event {
	return audit.Event{TenantID: c.Tenant.ID, RunID: runID, Actor: c.Principal.Name, Type: typ,
		RequestID: c.RequestID, ClientAddr: c.ClientAddr, Data: data}
}

// Service implements rexec's operations.
type Service struct {
	store      *store.Store
	river      *river.Client[pgx.Tx]
	log        *slog.Logger
	clients    *tenantconsul.Clients
	policy     *policy.Engine
	preflights preflightCache
	tokens     *tokenCache
	auditLog   *auditlog.Log
	// submissions stores accepted submissions (Config.SubmitWriters).
	submissions *batchWriter[submitWrite]
}

// Config configures a Service.
type Config struct {
	Store *store.Store
	// River inserts jobs (an insert-only client will do).
	River  *river.Client[pgx.Tx]
	Logger *slog.Logger
	// ConsulConfig adjusts each tenant's engine configuration. Optional.
	ConsulConfig func(*consul.Config)
	// Policy decides every action (required).
	Policy *policy.Engine
	// AuditLog serves the tenants' transparency logs (required).
	AuditLog *auditlog.Log
	// CatalogView configures the tenants' catalog views, which resolve
	// targets. Default: consul's defaults (consul.ViewConfig).
	CatalogView consul.ViewConfig
	// SubmitWriters bounds the transactions that store submissions at
	// once; submissions that arrive meanwhile wait, and the next writer
	// stores all of them in one transaction (submitwrite.go). Default:
	// SubmitWritersDefault.
	//
	// Every submission inserts into the same few tables and indexes, at
	// their right-hand edge: past a few transactions at once they contend
	// for the same pages and locks, and PostgreSQL spends its time on the
	// contention (BenchmarkSubmit).
	SubmitWriters int
}

// SubmitWritersDefault is the default of Config.SubmitWriters.
const SubmitWritersDefault = 2

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.River == nil || cfg.Policy == nil || cfg.AuditLog == nil {
		return nil, errors.New("service: Store, River, Policy and AuditLog are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.SubmitWriters = cmp.Or(cfg.SubmitWriters, SubmitWritersDefault)
	if cfg.SubmitWriters < 1 {
		return nil, errors.New("service: SubmitWriters must be at least 1")
	}
	clients := tenantconsul.NewClients(cfg.ConsulConfig)
	clients.SetViewConfig(cfg.CatalogView)
	s := &Service{store: cfg.Store, river: cfg.River, log: cfg.Logger, clients: clients, policy: cfg.Policy, auditLog: cfg.AuditLog,
		tokens: newTokenCache()}
	s.submissions = newBatchWriter(cfg.SubmitWriters, s.writeSubmissions)
	return s, nil
}

// Submission is a run request.
type Submission struct {
	Argv          []string
	Script        []byte
	Shell         bool
	NodeFilter    string
	ServiceFilter string
	TagFilter     string
	Prefix        string
	Wait          time.Duration
	WaitRepl      time.Duration
	Timeout       time.Duration
	// StartTimeout bounds how long the run may wait to start; zero means
	// the tenant's bound.
	StartTimeout time.Duration
	Reason       string
	DryRun       bool
}

// Limits on a submission beyond the engine's own.
const (
	MaxReason  = 4096
	MaxTimeout = 7 * 24 * time.Hour
	// MaxStartTimeout bounds a run's start bound: a run approved or
	// dequeued days later must be submitted again.
	MaxStartTimeout = 7 * 24 * time.Hour
	MaxWait         = 10 * time.Minute
)

// Submitted is a stored run, or for a dry run what would be stored.
type Submitted struct {
	Run     store.Run
	Targets []consul.Node
	DryRun  bool
	// Decision is the policy's decision on the submission.
	Decision policy.Decision
	// Catalog says where the targets came from: the catalog index (also
	// in Run), and whether the tenant's catalog view served them or a
	// direct read did, and why.
	Catalog consul.ResolveInfo
}

func (s *Service) consulClient(t store.Tenant) (*consul.Client, error) {
	return s.clients.Get(t, s.withLogger)
}

// withLogger gives a tenant's engine configuration the service's logger.
func (s *Service) withLogger(c *consul.Config) { c.Logger = s.log }

// Close stops the tenants' catalog views. Submissions after it still
// work, each starting its tenant's view again.
func (s *Service) Close() { s.clients.Close() }

// CatalogViewAges reports the age of each tenant's catalog view (for the
// rexec_catalog_view_age_seconds metric); it does no I/O.
func (s *Service) CatalogViewAges(report func(tenant string, age time.Duration)) {
	s.clients.ViewAges(report)
}

// Submit validates sub, resolves its frozen target set with the tenant's
// token, checks the token's Consul ACLs and asks the policy, and stores the
// run — queued with its River job, or pending approval — with its audit
// events in one transaction. Nothing is stored when anything fails; a
// refusal by the preflight or the policy is audited.
func (s *Service) Submit(ctx context.Context, c Caller, sub Submission) (Submitted, error) {
	spec, err := sub.Spec(c.Tenant.Prefix)
	if err != nil {
		return Submitted{}, err
	}
	client, err := s.consulClient(c.Tenant)
	if err != nil {
		return Submitted{}, errorf(ErrInvalid, "tenant's Consul configuration: %v", err)
	}
	// Refuse a bad spec before asking the catalog, with the limits the
	// worker's engine will apply.
	if err := client.CheckSpec(spec); err != nil {
		return Submitted{}, planError(err)
	}
	// The Consul ACL preflight comes before the catalog is read: a token
	// that may not read it would otherwise resolve no targets and hide
	// the permission it lacks.
	pf, pfRaw, err := s.preflight(ctx, c.Tenant, client, spec.Prefix)
	if err != nil {
		return Submitted{}, err
	}
	if pf.Checked && !pf.Allowed {
		reasons := []string{"the tenant's Consul token lacks " + strings.Join(pf.Missing, ", ")}
		if !sub.DryRun {
			if err := s.auditRefusal(ctx, c, sub, spec, nil, "", reasons, "", pfRaw); err != nil {
				return Submitted{}, err
			}
		}
		return Submitted{}, denial(policy.ActionExecSubmit, policy.Decision{Outcome: policy.Deny, Reasons: reasons})
	}
	// Targets from the tenant's catalog view: no request to Consul while
	// the view is healthy; a direct read, reported, when it is not.
	view, err := s.clients.View(c.Tenant, s.withLogger)
	if err != nil {
		return Submitted{}, errorf(ErrInvalid, "tenant's Consul configuration: %v", err)
	}
	targets, info, err := view.Resolve(ctx, spec)
	if err != nil {
		return Submitted{}, resolveError(err)
	}
	if err := checkTargets(targets); err != nil {
		return Submitted{}, err
	}
	// Whatever the engine can refuse once the targets are known (an event
	// that cannot fit) is refused now, not by the worker after storing.
	if err := client.CheckPlan(spec, targets); err != nil {
		return Submitted{}, planError(err)
	}
	names := make([]string, len(targets))
	for i, t := range targets {
		names[i] = t.Name
	}
	targetJSON, err := json.Marshal(targets)
	if err != nil {
		return Submitted{}, err
	}
	run := store.Run{
		TenantID: c.Tenant.ID, SubmittedBy: c.Principal.ID, SubmitterName: c.Principal.Name,
		State: store.StateQueued, Argv: sub.Argv, Script: sub.Script, Shell: sub.Shell,
		NodeFilter: sub.NodeFilter, ServiceFilter: sub.ServiceFilter, TagFilter: sub.TagFilter,
		Prefix: spec.Prefix, Wait: spec.Wait, WaitRepl: spec.WaitRepl, Timeout: sub.Timeout,
		Reason: sub.Reason, OutputCap: c.Tenant.OutputCap, Targets: targetJSON,
		CatalogIndex: info.Index, CatalogSource: info.Source,
		StartTimeout: cmp.Or(sub.StartTimeout, c.Tenant.StartTimeout, store.StartTimeoutDefault),
	}
	run.StartBy = time.Now().Add(run.StartTimeout)
	run.RequestHash = store.RequestHashOf(run, names)

	// Authorization: the policy, given the preflight that passed.
	in := s.input(c, policy.ActionExecSubmit)
	in.Request, in.Targets, in.Preflight = requestOf(run), policyTargets(targets), pf
	d, err := s.decide(ctx, in)
	if err != nil {
		return Submitted{}, err
	}
	run.Preflight = pfRaw
	run.Policy = store.PolicyDecision{Outcome: string(d.Outcome), Reasons: d.Reasons, Revision: d.Revision,
		Approvals: d.Approvals, ApproverRoles: d.ApproverRoles}
	if d.Outcome == policy.RequireApproval {
		run.State = store.StatePendingApproval
		run.ApprovalTTL = cmp.Or(c.Tenant.ApprovalTTL, store.ApprovalTTLDefault)
	}
	if sub.DryRun {
		if d.Outcome == policy.Deny {
			// A principal the policy refuses learns why, not the catalog.
			run.Targets, targets = nil, nil
		}
		return Submitted{Run: run, Targets: targets, DryRun: true, Decision: d, Catalog: info}, nil
	}
	if d.Outcome == policy.Deny {
		// Nothing is stored but the audited refusal.
		if err := s.auditRefusal(ctx, c, sub, spec, names, run.RequestHash, d.Reasons, d.Revision, pfRaw); err != nil {
			return Submitted{}, err
		}
		return Submitted{}, denial(policy.ActionExecSubmit, d)
	}
	// The run's ID and times are chosen here, so that its audit events
	// can name them and nothing is read back.
	run = store.PrepareRun(run, time.Now())
	submitted := requestAudit(sub, spec)
	submitted["targets"], submitted["submitted_by"] = names, c.Principal.Name
	submitted["start_timeout"], submitted["start_by"] = run.StartTimeout.String(), run.StartBy
	submitted["request_hash"], submitted["preflight"] = run.RequestHash, pfRaw
	submitted["catalog_index"], submitted["catalog_source"] = info.Index, info.Source
	if info.Reason != "" {
		submitted["catalog_reason"] = info.Reason
	}
	events := []audit.Event{c.event(run.ID, audit.RunSubmitted, submitted),
		c.event(run.ID, audit.PolicyDecided, decisionAudit(policy.ActionExecSubmit, d))}
	if run.State == store.StatePendingApproval {
		events = append(events, approvalRequested(c, run))
	} else {
		events = append(events, c.event(run.ID, audit.RunQueued, map[string]any{"approvals": 0, "required": 0}))
	}
	for i := range events {
		events[i].Time = run.CreatedAt
	}
	if err := s.submissions.store(ctx, submitWrite{tenant: c.Tenant, run: run, nodes: names, events: events}); err != nil {
		return Submitted{}, fmt.Errorf("store run: %w", err)
	}
	return Submitted{Run: run, Targets: targets, Decision: d, Catalog: info}, nil
}

// auditRefusal records a refused submission: the one trace it leaves.
func (s *Service) auditRefusal(ctx context.Context, c Caller, sub Submission, spec consul.Spec, targets []string, hash string,
	reasons []string, revision string, preflight json.RawMessage) error {
	data := requestAudit(sub, spec)
	data["targets"], data["submitted_by"], data["request_hash"] = targets, c.Principal.Name, hash
	data["reasons"], data["policy_revision"], data["preflight"] = reasons, revision, preflight
	return audit.Record(ctx, s.store.Pool(), c.event("", audit.RunRefused, data))
}

// requestAudit is what the audit log keeps of a run's request: everything
// that says what runs where and when, and the script by its hash (it may
// hold anything, secrets included).
func requestAudit(sub Submission, spec consul.Spec) map[string]any {
	data := map[string]any{
		// The command line the agents run in shell mode (the words of argv
		// joined); argv as given, which they run without a shell.
		"command": strings.Join(sub.Argv, " "), "argv": sub.Argv, "shell": sub.Shell,
		"node_filter": sub.NodeFilter, "service_filter": sub.ServiceFilter, "tag_filter": sub.TagFilter,
		"prefix": spec.Prefix, "reason": sub.Reason,
		"wait": spec.Wait.String(), "wait_repl": spec.WaitRepl.String(), "timeout": sub.Timeout.String(),
	}
	if sub.Script != nil {
		sum := sha256.Sum256(sub.Script)
		data["script_sha256"], data["script_bytes"] = hex.EncodeToString(sum[:]), len(sub.Script)
	}
	return data
}

// decisionAudit is what the audit log keeps of a policy decision.
func decisionAudit(action policy.Action, d policy.Decision) map[string]any {
	return map[string]any{"action": string(action), "outcome": string(d.Outcome), "reasons": d.Reasons,
		"revision": d.Revision, "approvals": d.Approvals, "approver_roles": d.ApproverRoles}
}

// Spec checks sub as far as it can be without the tenant's Consul and
// returns the engine's spec for it, with the tenant's prefix by default. The
// engine checks the spec itself (argv, filters, prefix, sizes) with
// consul.Client.CheckSpec and CheckPlan.
func (sub Submission) Spec(tenantPrefix string) (consul.Spec, error) {
	spec := consul.Spec{
		Argv: sub.Argv, Script: sub.Script, NoShell: !sub.Shell,
		NodeFilter: sub.NodeFilter, ServiceFilter: sub.ServiceFilter, TagFilter: sub.TagFilter,
		Prefix: sub.Prefix, Wait: sub.Wait, WaitRepl: sub.WaitRepl,
	}
	if spec.Prefix == "" {
		spec.Prefix = tenantPrefix
	}
	spec = spec.WithDefaults()
	// A prefix the engine refuses as text is a bad request (400) before it
	// is a forbidden one.
	if err := consul.CheckText("prefix", spec.Prefix); err != nil {
		return consul.Spec{}, errorf(ErrInvalid, "%v", err)
	}
	if err := checkPrefix(spec.Prefix, tenantPrefix); err != nil {
		return consul.Spec{}, err
	}
	switch {
	case sub.Wait < 0 || sub.Wait > MaxWait:
		return consul.Spec{}, errorf(ErrInvalid, "wait must be between 0 and %s", MaxWait)
	case sub.WaitRepl < 0 || sub.WaitRepl > MaxWait:
		return consul.Spec{}, errorf(ErrInvalid, "wait-repl must be between 0 and %s", MaxWait)
	case sub.Timeout < 0 || sub.Timeout > MaxTimeout:
		return consul.Spec{}, errorf(ErrInvalid, "timeout must be between 0 and %s", MaxTimeout)
	case sub.StartTimeout < 0 || sub.StartTimeout > MaxStartTimeout:
		return consul.Spec{}, errorf(ErrInvalid, "start timeout must be between 0 and %s", MaxStartTimeout)
	case len(sub.Reason) > MaxReason:
		return consul.Spec{}, errorf(ErrInvalid, "reason is longer than %d bytes", MaxReason)
	}
	// The reason is stored as text, which Postgres refuses to hold a NUL
	// or invalid UTF-8 in; the engine never sees it.
	if err := consul.CheckText("reason", sub.Reason); err != nil {
		return consul.Spec{}, errorf(ErrInvalid, "%v", err)
	}
	return spec, nil
}

// checkTargets refuses a target set that cannot be stored: node names,
// addresses, service IDs and names and tags are stored as text and JSON,
// which cannot hold a NUL or invalid UTF-8. Consul normally never hands
// out such names, but the catalog accepts registrations of any string.
func checkTargets(targets []consul.Node) error {
	for _, n := range targets {
		fields := []string{n.Name, n.Address}
		for _, svc := range n.Services {
			fields = append(fields, svc.ID, svc.Name)
			fields = append(fields, svc.Tags...)
		}
		for _, f := range fields {
			if err := consul.CheckText("a name in the catalog", f); err != nil {
				return errorf(ErrUnprocessable, "node %q cannot be targeted: %v", n.Name, err)
			}
		}
	}
	return nil
}

// checkPrefix refuses a prefix outside the tenant's: Consul ACLs written for
// the tenant's prefix would not cover it (hashicorp/consul#1238).
func checkPrefix(p, tenant string) error {
	if p == tenant || strings.HasPrefix(p, tenant+"/") {
		return nil
	}
	return errorf(ErrForbidden, "prefix %q is outside the tenant's prefix %q", p, tenant)
}

// planError maps an error of the engine's checks of a spec and its targets
// to its kind: a request that is too large for Consul is 413; a target that
// cannot be pinned (a node name too long for an event of its own) is 422,
// as is a filter that matches nothing, and one that matches more nodes than
// a run's events can pin (the request is well formed and small; the target
// set it resolves to is what cannot be processed); everything else is the
// request's fault, 400.
func planError(err error) error {
	var tooLarge *consul.SpecTooLargeError
	var event *consul.EventTooLargeError
	var tooMany *consul.TooManyEventsError
	switch {
	case errors.As(err, &tooLarge), errors.As(err, &event) && event.Node == "":
		return errorf(ErrTooLarge, "%v", err)
	case errors.As(err, &event), errors.Is(err, consul.ErrNoTargets), errors.As(err, &tooMany):
		return errorf(ErrUnprocessable, "%v", err)
	}
	return errorf(ErrInvalid, "%v", err)
}

// resolveError maps an error of target resolution to its kind.
func resolveError(err error) error {
	var se api.StatusError
	switch {
	case errors.Is(err, consul.ErrNoTargets):
		return errorf(ErrUnprocessable, "%v", err)
	case errors.As(err, &se) && (se.Code == 403 || se.Code == 401):
		return errorf(ErrForbidden, "Consul refused the tenant's token: %s", se.Body)
	case strings.Contains(err.Error(), "Permission denied"), strings.Contains(err.Error(), "ACL not found"):
		return errorf(ErrForbidden, "Consul refused the tenant's token: %v", err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return errorf(ErrUpstream, "cannot reach the tenant's Consul: %v", err)
}
