package api

import (
	"encoding/json"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
)

// The service's runs as the API shows them (package apitype).

// runJSON is r as the API shows it, with the number of its targets.
func runJSON(r store.Run) apitype.Run {
	out := runView(r)
	var targets []json.RawMessage
	if json.Unmarshal(r.Targets, &targets) == nil {
		out.TargetCount = len(targets)
	}
	return out
}

// runView is runJSON without TargetCount, for a caller that knows the
// targets without parsing them again.
func runView(r store.Run) apitype.Run {
	out := apitype.Run{
		ID: r.ID, State: r.State, SubmittedBy: r.SubmitterName, CreatedAt: r.CreatedAt,
		StartedAt: r.StartedAt, FiredAt: r.FiredAt, FinishedAt: r.FinishedAt,
		Argv: r.Argv, ScriptBytes: len(r.Script), Shell: r.Shell,
		Node: r.NodeFilter, Service: r.ServiceFilter, Tag: r.TagFilter, Prefix: r.Prefix,
		Wait: r.Wait.String(), WaitRepl: r.WaitRepl.String(), Reason: r.Reason,
		Outcome: r.Outcome, Error: r.Error,
		StartBy: r.StartBy, FiringAt: r.FiringAt, CancelRequested: r.CancelRequested, Recoveries: r.Recoveries,
		RequestHash: r.RequestHash, ApprovalExpiresAt: r.ApprovalExpiresAt,
		CatalogIndex: r.CatalogIndex, CatalogSource: r.CatalogSource,
	}
	if r.Policy.Outcome != "" {
		out.Policy = &apitype.Policy{Outcome: r.Policy.Outcome, Reasons: r.Policy.Reasons, Revision: r.Policy.Revision,
			Approvals: r.Policy.Approvals, ApproverRoles: r.Policy.ApproverRoles}
	}
	if r.Timeout > 0 {
		out.Timeout = r.Timeout.String()
	}
	return out
}

// targetsJSON is a frozen target set as the API shows it.
func targetsJSON(nodes []consul.Node) []apitype.Target {
	out := make([]apitype.Target, len(nodes))
	for i, n := range nodes {
		var svcs []apitype.TargetService // null as stored, for a node without any
		if n.Services != nil {
			svcs = make([]apitype.TargetService, len(n.Services))
		}
		for j, s := range n.Services {
			svcs[j] = apitype.TargetService{ID: s.ID, Name: s.Name, Tags: s.Tags}
		}
		out[i] = apitype.Target{Name: n.Name, Address: n.Address, Services: svcs}
	}
	return out
}

func nodesJSON(nodes []store.NodeResult) []apitype.Node {
	out := make([]apitype.Node, len(nodes))
	for i, n := range nodes {
		out[i] = apitype.Node{Node: n.Node, State: n.State, ExitCode: n.ExitCode, AckedAt: n.AckedAt, ExitedAt: n.ExitedAt,
			Bytes: n.Bytes, Stored: n.StoredBytes, SHA256: n.SHA256, Truncated: n.Truncated}
	}
	return out
}

func approvalsJSON(as []store.Approval) []apitype.Approval {
	out := make([]apitype.Approval, len(as))
	for i, a := range as {
		out[i] = apitype.Approval{Principal: a.PrincipalName, Verdict: a.Verdict, Comment: a.Comment, RequestHash: a.RequestHash, At: a.CreatedAt}
	}
	return out
}
