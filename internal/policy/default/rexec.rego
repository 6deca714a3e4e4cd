# rexec's default policy: a careful team's starting point.
#
# decision is the document rexec reads (see docs/policy.md):
#   {"outcome": "allow" | "deny" | "require_approval",
#    "reasons": [string], "approvals": n, "approver_roles": [role]}
#
# It is built in three steps, and only a positive answer allows anything:
#   1. permitted: does one of the principal's roles allow this action on
#      this run at all? If not: deny, saying which roles may.
#   2. deny: prohibitions that hold even then (approving one's own run, a
#      failed Consul ACL preflight, a run needing approval without a
#      reason, ...).
#   3. approval_reasons: what makes a submitted run need approval, and
#      then from how many holders of which roles.
#
# This file holds who may do what, and is the same in the example policies
# (internal/policy/examples). What a submitted run needs lives in
# submit.rego, which defines approval_reasons (a set of strings),
# required_approvals and approver_roles, and may add to deny.
package rexec

# --- the input, with absent fields read as empty ---------------------------

default action := ""

action := input.action

default principal := ""

principal := input.principal.name

roles := {r | some r in input.principal.roles}

# input.run, or {} when the action is not about a run.
default run := {}

run := input.run if is_object(input.run)

has_run if is_object(input.run)

run_id := object.get(run, "id", "")

default request := {}

request := input.request if is_object(input.request)

has_request if is_object(input.request)

default targets := []

targets := input.targets

submit_actions := {"exec.submit"}

# Actions on an existing run: the input must describe it in input.run.
run_actions := {"exec.approve", "exec.deny", "exec.cancel", "run.read", "output.read"}

tenant_actions := {"audit.read", "run.list"}

actions := (submit_actions | run_actions) | tenant_actions

read_actions := {"run.read", "output.read"}

# The principal submitted the run. A nameless principal owns nothing.
own_run if {
	principal != ""
	run.submitted_by == principal
}

# The principal holds a role that may approve the run.
approver_of_run if {
	some r in object.get(run, "approver_roles", [])
	r in roles
}

approved_by_principal if {
	some a in object.get(run, "approvals", [])
	a.principal == principal
}

pending if run.state == "pending_approval"

# approval_actions decide on a run waiting for approval.
approval_actions := {"exec.approve", "exec.deny"}

# --- 1. what each role may do -----------------------------------------------

# Submitters and admins submit runs.
permitted if {
	action == "exec.submit"
	roles & {"submitter", "admin"} != set()
}

# Approving takes a role the run names as approving: by default "approver".
# Admins do not approve (unless they also hold that role), so that an
# approval always comes from someone whose job it is.
permitted if {
	action == "exec.approve"
	approver_of_run
}

# Refusing a run takes an approving role too; admins may also refuse one.
permitted if {
	action == "exec.deny"
	approver_of_run
}

permitted if {
	action == "exec.deny"
	"admin" in roles
}

# A run is cancelled by whoever submitted it, or by an admin.
permitted if {
	action == "exec.cancel"
	own_run
}

permitted if {
	action == "exec.cancel"
	"admin" in roles
}

# Submitters read their own runs and output.
permitted if {
	action in read_actions
	own_run
}

# Approvers read the runs they are asked to approve while these wait for
# approval, and the runs they approved. Not others.
permitted if {
	action in read_actions
	approver_of_run
	pending
}

permitted if {
	action in read_actions
	approver_of_run
	approved_by_principal
}

# Auditors read everything of the tenant, and change nothing.
permitted if {
	action in (read_actions | tenant_actions)
	"auditor" in roles
}

# Admins do everything but approve (above).
permitted if {
	action in actions
	action != "exec.approve"
	"admin" in roles
}

# Why a principal that is not permitted is not, action by action.
who_may := {
	"exec.submit": "only submitters and admins submit runs",
	"exec.approve": sprintf("only holders of the run's approver roles (%s) approve it", [concat(", ", object.get(run, "approver_roles", []))]),
	"exec.deny": "only holders of the run's approver roles, and admins, refuse it",
	"exec.cancel": "only the run's submitter or an admin cancels it",
	"run.read": "submitters read their own runs, approvers those they are asked to approve or approved, auditors and admins all",
	"output.read": "submitters read their own runs' output, approvers that of runs they are asked to approve or approved, auditors and admins all",
	"audit.read": "only auditors and admins read the audit log",
	"run.list": "only auditors and admins list all runs",
}

default role_list := "none"

role_list := concat(", ", sort(roles)) if count(roles) > 0

not_permitted_reason := sprintf("unknown action %q", [action]) if {
	not action in actions
} else := sprintf("%s needs the run in input.run", [action]) if {
	action in run_actions
	not has_run
} else := own_run_reason if {
	action in approval_actions
	own_run
} else := sprintf("run %s is %s, not pending approval", [run_id, object.get(run, "state", "in no state")]) if {
	action in approval_actions
	not pending
} else := sprintf("%s (roles: %s) may not %s run %s: %s", [principal, role_list, action, run_id, who_may[action]]) if {
	action in run_actions
} else := sprintf("%s (roles: %s) may not %s: %s", [principal, role_list, action, who_may[action]])

# --- 2. prohibitions --------------------------------------------------------

deny contains msg if {
	action in run_actions
	not has_run
	msg := sprintf("%s needs the run in input.run", [action])
}

deny contains "exec.submit needs the request in input.request" if {
	action == "exec.submit"
	not has_request
}

# rexec checks the tenant's Consul token before asking; a run that could
# not fire (or would write its job where the token may not) is refused now
# rather than failing halfway.
deny contains msg if {
	action == "exec.submit"
	not input.preflight.checked
	msg := "the Consul ACL preflight did not run, so the tenant's token is not known to allow this run"
}

deny contains msg if {
	action == "exec.submit"
	input.preflight.checked
	not input.preflight.allowed
	missing := object.get(input.preflight, "missing", [])
	msg := missing_permissions(missing)
}

missing_permissions(missing) := sprintf("the tenant's Consul token lacks %s", [concat(", ", missing)]) if {
	count(missing) > 0
} else := "the tenant's Consul token lacks permissions this run needs"

# As Teleport does for access requests: who asks others to approve must
# say why, so that approvers can judge.
deny contains msg if {
	action == "exec.submit"
	count(approval_reasons) > 0
	trim_space(object.get(request, "reason", "")) == ""
	msg := sprintf("a reason is required for a run that needs approval (%s): submit again with -reason", [concat("; ", sort(approval_reasons))])
}

deny contains own_run_reason if {
	action in approval_actions
	own_run
}

own_run_reason := sprintf("nobody may %s their own run: %s submitted run %s", [verb[action], principal, run_id])

deny contains msg if {
	action in approval_actions
	has_run
	not pending
	msg := sprintf("run %s is %s, not pending approval", [run_id, object.get(run, "state", "in no state")])
}

deny contains msg if {
	action == "exec.approve"
	approved_by_principal
	msg := sprintf("%s has already approved run %s", [principal, run_id])
}

verb := {"exec.approve": "approve", "exec.deny": "refuse"}

# --- the decision -----------------------------------------------------------

deny_reasons := [not_permitted_reason] if {
	not permitted
} else := sort(deny)

decision := {"outcome": "deny", "reasons": deny_reasons, "approvals": 0, "approver_roles": []} if {
	count(deny_reasons) > 0
} else := {
	"outcome": "require_approval",
	"reasons": sort(approval_reasons),
	"approvals": required_approvals,
	"approver_roles": approver_roles,
} if {
	needs_approval
} else := {"outcome": "allow", "reasons": [], "approvals": 0, "approver_roles": []} if {
	permitted
	not needs_approval
}

# Stated apart from the approval branch so that the allow branch can ask it
# too: were required_approvals undefined, say, the approval branch would
# fall through, and a run needing approval must then not be allowed.
needs_approval if {
	action == "exec.submit"
	count(approval_reasons) > 0
}
