package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/policy"
	"github.com/rexec/rexec/internal/store"
)

// PreflightCacheTTL is how long a tenant's Consul ACL preflight is reused:
// a permission revoked in Consul goes unnoticed by submissions for at most
// this long (the run itself still fails at Consul's own check).
const PreflightCacheTTL = 10 * time.Second

// decide asks the policy about action and returns its decision; a policy
// that fails to decide refuses (fail closed).
func (s *Service) decide(ctx context.Context, in policy.Input) (policy.Decision, error) {
	d, err := s.policy.Decide(ctx, in)
	if err != nil {
		s.log.ErrorContext(ctx, "policy evaluation failed; refusing", "action", string(in.Action), "error", err)
		return policy.Decision{}, errorf(ErrForbidden, "the policy could not decide on %s: %v", in.Action, err)
	}
	return d, nil
}

// authorize decides an action on an existing run (r nil for a tenant-wide
// action) and turns anything but allow into a refusal naming the reasons.
func (s *Service) authorize(ctx context.Context, c Caller, action policy.Action, r *store.Run, approvals []store.Approval) error {
	in := s.input(c, action)
	if r != nil {
		in.Request = requestOf(*r)
		in.Targets = targetsOf(r.Targets)
		in.Run = runOf(*r, approvals)
	}
	d, err := s.decide(ctx, in)
	if err != nil {
		return err
	}
	if d.Outcome != policy.Allow {
		return denial(action, d)
	}
	return nil
}

// denial is the error of a refused action, with the policy's reasons.
func denial(action policy.Action, d policy.Decision) error {
	msg := fmt.Sprintf("%s refused by policy", action)
	if len(d.Reasons) > 0 {
		msg += ": " + strings.Join(d.Reasons, "; ")
	}
	return &Error{Kind: ErrForbidden, Msg: msg, Reasons: d.Reasons}
}

func (s *Service) input(c Caller, action policy.Action) policy.Input {
	return policy.Input{
		Action:    action,
		Principal: policy.Principal{Name: c.Principal.Name, Roles: c.Principal.Roles},
		Tenant:    policy.Tenant{Name: c.Tenant.Name, TimeZone: c.Tenant.TimeZone},
		Time:      time.Now(),
	}
}

// requestOf is the policy's view of a run's request.
func requestOf(r store.Run) *policy.Request {
	req := &policy.Request{
		Shell: r.Shell, NodeFilter: r.NodeFilter, ServiceFilter: r.ServiceFilter, TagFilter: r.TagFilter,
		Prefix: r.Prefix, Reason: r.Reason, Wait: r.Wait, WaitRepl: r.WaitRepl, Timeout: r.Timeout,
	}
	req.SetArgv(r.Argv)
	req.SetScript(r.Script)
	return req
}

// targetsOf is the policy's view of a frozen target set.
func targetsOf(raw json.RawMessage) []policy.Target {
	var nodes []consul.Node
	_ = json.Unmarshal(raw, &nodes)
	return policyTargets(nodes)
}

func policyTargets(nodes []consul.Node) []policy.Target {
	out := make([]policy.Target, len(nodes))
	for i, n := range nodes {
		t := policy.Target{Node: n.Name, Address: n.Address}
		for _, svc := range n.Services {
			t.Services = append(t.Services, policy.Service{ID: svc.ID, Name: svc.Name, Tags: svc.Tags})
		}
		out[i] = t
	}
	return out
}

// runOf is the policy's view of an existing run and its approvals.
func runOf(r store.Run, approvals []store.Approval) *policy.Run {
	pr := &policy.Run{
		ID: r.ID, State: r.State, SubmittedBy: r.SubmitterName, SubmittedAt: r.CreatedAt,
		RequiredApprovals: r.Policy.Approvals, ApproverRoles: r.Policy.ApproverRoles,
	}
	for _, a := range approvals {
		if a.Verdict == store.VerdictApprove {
			pr.Approvals = append(pr.Approvals, policy.Approval{Principal: a.PrincipalName, Roles: a.Roles, Time: a.CreatedAt})
		}
	}
	return pr
}

// preflight runs the Consul ACL preflight of the tenant's token, reusing a
// result for PreflightCacheTTL.
func (s *Service) preflight(ctx context.Context, t store.Tenant, client *consul.Client, prefix string) (policy.Preflight, json.RawMessage, error) {
	key := fmt.Sprintf("%d\x00%s", t.ID, prefix)
	if p, raw, ok := s.preflights.get(key, client); ok {
		return p, raw, nil
	}
	res, err := client.Preflight(ctx, prefix)
	switch {
	case errors.Is(err, consul.ErrTokenUnknown):
		return policy.Preflight{}, nil, errorf(ErrForbidden, "Consul does not know the tenant's ACL token")
	case errors.Is(err, consul.ErrPreflightUnsupported):
		return policy.Preflight{}, nil, errorf(ErrUpstream, "the tenant's Consul does not answer the ACL preflight (%v); rexec will not guess the token's permissions", err)
	case err != nil:
		return policy.Preflight{}, nil, resolveError(err)
	}
	// With ACLs off in Consul every permission is granted: the policy sees
	// a preflight that ran and found nothing missing; the stored record
	// says that ACLs were off.
	p := policy.Preflight{Checked: true, Allowed: res.Allowed()}
	for _, m := range res.Missing {
		p.Missing = append(p.Missing, m.String())
	}
	raw, err := json.Marshal(map[string]any{"acls": res.Checked, "allowed": res.Allowed(), "missing": p.Missing, "node": res.Node})
	if err != nil {
		return policy.Preflight{}, nil, err
	}
	s.preflights.put(key, client, p, raw)
	return p, raw, nil
}

// preflightCache keeps recent preflight results per tenant and prefix.
// A result belongs to the client (the tenant's connection settings) that
// produced it: a changed token is checked anew.
type preflightCache struct {
	mu sync.Mutex
	m  map[string]cachedPreflight
}

type cachedPreflight struct {
	client *consul.Client
	at     time.Time
	p      policy.Preflight
	raw    json.RawMessage
}

func (c *preflightCache) get(key string, client *consul.Client) (policy.Preflight, json.RawMessage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || e.client != client || time.Since(e.at) > PreflightCacheTTL {
		return policy.Preflight{}, nil, false
	}
	return e.p, e.raw, true
}

func (c *preflightCache) put(key string, client *consul.Client, p policy.Preflight, raw json.RawMessage) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]cachedPreflight{}
	}
	c.m[key] = cachedPreflight{client: client, at: time.Now(), p: p, raw: raw}
}
