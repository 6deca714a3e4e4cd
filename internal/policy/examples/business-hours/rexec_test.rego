# Tests of rexec.rego, the rules every policy here shares, with fixtures
# for the other tests: `rexec-svc policy test` (or `opa test .`). The same
# file is in each example policy, where it must pass too.
package rexec_test

import data.rexec

# --- fixtures ---------------------------------------------------------------

principals := {
	"submitter": {"name": "alice", "roles": ["submitter"]},
	"approver": {"name": "carol", "roles": ["approver"]},
	"auditor": {"name": "erin", "roles": ["auditor"]},
	"admin": {"name": "frank", "roles": ["admin"]},
	"none": {"name": "nina", "roles": []},
}

ok_preflight := {"checked": true, "allowed": true, "missing": []}

node(name, tags) := {"node": name, "address": "10.0.0.1", "services": [{"id": "web", "name": "web", "tags": tags}]}

staging := [node("stg-1", ["staging"]), node("stg-2", [])]

request(reason) := {
	"command": "uptime", "argv": ["uptime"], "shell": true,
	"script_sha256": "", "script_bytes": 0, "script": "",
	"node_filter": "", "service_filter": "", "tag_filter": "",
	"prefix": "_rexec", "reason": reason,
	"wait": 2000000000, "wait_repl": 200000000, "timeout": 0,
}

submit(p, reason, targets) := {
	"action": "exec.submit",
	"principal": p,
	"tenant": {"name": "acme", "time_zone": "UTC"},
	"request": request(reason),
	"targets": targets,
	"preflight": ok_preflight,
	"time": "2025-06-02T10:00:00Z",
}

# A run submitted by bob; it needed one approval from an approver if
# pending, and none otherwise.
run(by, state) := {
	"id": "r-1",
	"state": state,
	"submitted_by": by,
	"submitted_at": "2025-06-02T10:00:00Z",
	"required_approvals": 1,
	"approver_roles": ["approver"],
	"approvals": [],
}

plain_run(by, state) := object.union(run(by, state), {"required_approvals": 0, "approver_roles": []})

on_run(action, p, r) := {
	"action": action,
	"principal": p,
	"tenant": {"name": "acme", "time_zone": "UTC"},
	"request": request("restart after deploy"),
	"targets": staging,
	"preflight": {"checked": false, "allowed": false, "missing": []},
	"run": r,
	"time": "2025-06-02T10:00:00Z",
}

on_tenant(action, p) := {
	"action": action,
	"principal": p,
	"tenant": {"name": "acme", "time_zone": "UTC"},
	"targets": [],
	"preflight": {"checked": false, "allowed": false, "missing": []},
	"time": "2025-06-02T10:00:00Z",
}

many(n) := [node(sprintf("n-%02d", [i]), []) | some i in numbers.range(1, n)]

decide(inp) := d if {
	d := rexec.decision with input as inp
}

# --- the role × action matrix -------------------------------------------------

# The subject of each action: another principal's run (bob's), pending
# approval where approving is the question, queued (needing no approval)
# where reading or cancelling is.
matrix_input(action, p) := submit(p, "", staging) if action == "exec.submit"

else := on_run(action, p, run("bob", "pending_approval")) if action in {"exec.approve", "exec.deny"}

else := on_run(action, p, plain_run("bob", "queued")) if action in {"exec.cancel", "output.read", "run.read"}

else := on_tenant(action, p)

matrix := {
	"exec.submit": {"submitter": "allow", "approver": "deny", "auditor": "deny", "admin": "allow", "none": "deny"},
	"exec.approve": {"submitter": "deny", "approver": "allow", "auditor": "deny", "admin": "deny", "none": "deny"},
	"exec.deny": {"submitter": "deny", "approver": "allow", "auditor": "deny", "admin": "allow", "none": "deny"},
	"exec.cancel": {"submitter": "deny", "approver": "deny", "auditor": "deny", "admin": "allow", "none": "deny"},
	"run.read": {"submitter": "deny", "approver": "deny", "auditor": "allow", "admin": "allow", "none": "deny"},
	"output.read": {"submitter": "deny", "approver": "deny", "auditor": "allow", "admin": "allow", "none": "deny"},
	"audit.read": {"submitter": "deny", "approver": "deny", "auditor": "allow", "admin": "allow", "none": "deny"},
	"run.list": {"submitter": "deny", "approver": "deny", "auditor": "allow", "admin": "allow", "none": "deny"},
}

test_matrix_covers_every_action_and_role if {
	object.keys(matrix) == rexec.actions
	every row in matrix {
		object.keys(row) == object.keys(principals)
	}
}

test_role_action_matrix[note] if {
	some action, row in matrix
	some role, want in row
	note := sprintf("%s %s", [role, action])
	d := decide(matrix_input(action, principals[role]))
	d.outcome == want
}

# Every decision is complete, and every denial says why.
test_decisions_are_well_formed[note] if {
	some action, row in matrix
	some role, _ in row
	note := sprintf("%s %s", [role, action])
	d := decide(matrix_input(action, principals[role]))
	object.keys(d) == {"outcome", "reasons", "approvals", "approver_roles"}
	d.outcome in {"allow", "deny", "require_approval"}
	explained(d)
}

explained(d) if d.outcome != "deny"

explained(d) if count(d.reasons) > 0

test_role_denial_names_principal_roles_and_action if {
	d := decide(submit(principals.auditor, "", staging))
	d.reasons == ["erin (roles: auditor) may not exec.submit: only submitters and admins submit runs"]
}

test_principal_without_roles_is_denied_as_none if {
	d := decide(on_tenant("run.list", principals.none))
	d.outcome == "deny"
	contains(d.reasons[0], "(roles: none)")
}

test_roles_add_up if {
	p := {"name": "gina", "roles": ["submitter", "auditor"]}
	decide(submit(p, "", staging)).outcome == "allow"
	decide(on_tenant("audit.read", p)).outcome == "allow"
}

test_unknown_action_is_denied if {
	d := decide(on_tenant("exec.rm_rf", principals.admin))
	d.outcome == "deny"
	d.reasons == ["unknown action \"exec.rm_rf\""]
}

test_missing_action_is_denied if {
	d := decide(object.remove(on_tenant("run.list", principals.admin), {"action"}))
	d.outcome == "deny"
}

test_run_action_without_run_is_denied[action] if {
	some action in rexec.run_actions
	d := decide(on_tenant(action, principals.admin))
	d.outcome == "deny"
	d.reasons == [sprintf("%s needs the run in input.run", [action])]
}

# --- exec.submit: the rules every policy shares ---------------------------------

test_submit_plain_run_is_allowed if {
	d := decide(submit(principals.submitter, "", staging))
	d == {"outcome": "allow", "reasons": [], "approvals": 0, "approver_roles": []}
}

test_submit_failed_preflight_names_missing_permissions if {
	inp := object.union(submit(principals.submitter, "", staging), {"preflight": {
		"checked": true, "allowed": false,
		"missing": ["event:write _rexec", "key:write _rexec/"],
	}})
	d := decide(inp)
	d.outcome == "deny"
	d.reasons == ["the tenant's Consul token lacks event:write _rexec, key:write _rexec/"]
}

test_submit_failed_preflight_without_list_still_denies if {
	inp := object.union(submit(principals.submitter, "", staging), {"preflight": {"checked": true, "allowed": false, "missing": []}})
	decide(inp).reasons == ["the tenant's Consul token lacks permissions this run needs"]
}

test_submit_without_preflight_is_denied if {
	inp := object.union(submit(principals.admin, "", staging), {"preflight": {"checked": false, "allowed": false, "missing": []}})
	d := decide(inp)
	d.outcome == "deny"
	contains(d.reasons[0], "preflight did not run")
}

test_submit_without_request_is_denied if {
	d := decide(object.remove(submit(principals.submitter, "", staging), {"request"}))
	d.reasons == ["exec.submit needs the request in input.request"]
}

# --- exec.approve and exec.deny -----------------------------------------------------

test_approver_approves_others_pending_run if {
	decide(on_run("exec.approve", principals.approver, run("bob", "pending_approval"))).outcome == "allow"
}

test_nobody_approves_own_run[role] if {
	some role in ["approver", "admin"]
	p := {"name": "grace", "roles": ["submitter", role]}
	d := decide(on_run("exec.approve", p, run("grace", "pending_approval")))
	d.outcome == "deny"
	d.reasons == ["nobody may approve their own run: grace submitted run r-1"]
}

test_nobody_refuses_own_run if {
	p := {"name": "grace", "roles": ["submitter", "approver"]}
	d := decide(on_run("exec.deny", p, run("grace", "pending_approval")))
	d.reasons == ["nobody may refuse their own run: grace submitted run r-1"]
}

test_admin_may_not_approve if {
	d := decide(on_run("exec.approve", principals.admin, run("bob", "pending_approval")))
	d.outcome == "deny"
	contains(d.reasons[0], "only holders of the run's approver roles (approver) approve it")
}

test_admin_holding_approver_role_approves if {
	p := {"name": "frank", "roles": ["admin", "approver"]}
	decide(on_run("exec.approve", p, run("bob", "pending_approval"))).outcome == "allow"
}

test_admin_refuses_others_pending_run if {
	decide(on_run("exec.deny", principals.admin, run("bob", "pending_approval"))).outcome == "allow"
}

test_approve_needs_pending_state[state] if {
	some state in ["queued", "running", "completed", "failed", "cancelled", "denied", "expired"]
	some action in ["exec.approve", "exec.deny"]
	d := decide(on_run(action, principals.approver, run("bob", state)))
	d.outcome == "deny"
	d.reasons == [sprintf("run r-1 is %s, not pending approval", [state])]
}

test_approve_needs_one_of_the_runs_approver_roles if {
	r := object.union(run("bob", "pending_approval"), {"approver_roles": ["sre-lead"]})
	d := decide(on_run("exec.approve", principals.approver, r))
	d.outcome == "deny"
	contains(d.reasons[0], "(sre-lead)")
	p := {"name": "sam", "roles": ["sre-lead"]}
	decide(on_run("exec.approve", p, r)).outcome == "allow"
}

test_approve_twice_is_denied if {
	r := object.union(run("bob", "pending_approval"), {"approvals": [{"principal": "carol", "roles": ["approver"], "time": "2025-06-02T10:05:00Z"}]})
	d := decide(on_run("exec.approve", principals.approver, r))
	d.reasons == ["carol has already approved run r-1"]
	other := {"name": "dave", "roles": ["approver"]}
	decide(on_run("exec.approve", other, r)).outcome == "allow"
}

# --- exec.cancel ---------------------------------------------------------------------

test_submitter_cancels_own_run[state] if {
	some state in ["pending_approval", "queued", "running"]
	decide(on_run("exec.cancel", principals.submitter, run("alice", state))).outcome == "allow"
}

test_submitter_may_not_cancel_others_run if {
	d := decide(on_run("exec.cancel", principals.submitter, run("bob", "running")))
	d.reasons == ["alice (roles: submitter) may not exec.cancel run r-1: only the run's submitter or an admin cancels it"]
}

test_admin_cancels_any_run if {
	decide(on_run("exec.cancel", principals.admin, run("bob", "running"))).outcome == "allow"
}

test_nameless_principal_owns_no_run if {
	p := {"name": "", "roles": ["submitter"]}
	decide(on_run("exec.cancel", p, run("", "running"))).outcome == "deny"
}

# --- run.read and output.read -------------------------------------------------------

test_submitter_reads_own_run_and_output[action] if {
	some action in rexec.read_actions
	decide(on_run(action, principals.submitter, plain_run("alice", "completed"))).outcome == "allow"
}

test_submitter_may_not_read_others_run[action] if {
	some action in rexec.read_actions
	decide(on_run(action, principals.submitter, run("bob", "pending_approval"))).outcome == "deny"
}

test_approver_reads_run_pending_approval[action] if {
	some action in rexec.read_actions
	decide(on_run(action, principals.approver, run("bob", "pending_approval"))).outcome == "allow"
}

test_approver_reads_run_it_approved[action] if {
	some action in rexec.read_actions
	r := object.union(run("bob", "completed"), {"approvals": [{"principal": "carol", "roles": ["approver"], "time": "2025-06-02T10:05:00Z"}]})
	decide(on_run(action, principals.approver, r)).outcome == "allow"
}

test_approver_may_not_read_run_not_pending_its_approval[action] if {
	some action in rexec.read_actions
	some r in [
		plain_run("bob", "completed"), # needed no approval
		run("bob", "completed"), # approved by someone else
		object.union(run("bob", "pending_approval"), {"approver_roles": ["sre-lead"]}), # not its role
	]
	d := decide(on_run(action, principals.approver, r))
	d.outcome == "deny"
	startswith(d.reasons[0], sprintf("carol (roles: approver) may not %s run r-1", [action]))
}

test_auditor_reads_everything[action] if {
	some action in rexec.read_actions
	decide(on_run(action, principals.auditor, run("bob", "running"))).outcome == "allow"
}

# --- audit.read and run.list ------------------------------------------------------------

test_tenant_wide_reads[note] if {
	some action in rexec.tenant_actions
	some role, want in {"auditor": "allow", "admin": "allow", "submitter": "deny", "approver": "deny"}
	note := sprintf("%s %s", [role, action])
	decide(on_tenant(action, principals[role])).outcome == want
}

# --- robustness -------------------------------------------------------------------------

test_null_run_is_no_run if {
	inp := object.union(on_tenant("run.read", principals.admin), {"run": null})
	decide(inp).reasons == ["run.read needs the run in input.run"]
}
