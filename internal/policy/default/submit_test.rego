# Tests of submit.rego: what a submitted run needs under the default policy.
# The fixtures are in rexec_test.rego.
package rexec_test

test_submit_prod_run_with_reason_needs_one_approver if {
	targets := array.concat(staging, [node("web-1", ["prod", "v2"])])
	d := decide(submit(principals.submitter, "INC-123: restart stuck workers", targets))
	d.outcome == "require_approval"
	d.approvals == 1
	d.approver_roles == ["approver"]
	d.reasons == ["1 target node(s) run a service tagged prod: web-1"]
}

test_submit_prod_tag_on_any_service_of_a_node if {
	n := {"node": "db-1", "address": "10.0.0.9", "services": [
		{"id": "exporter", "name": "exporter", "tags": []},
		{"id": "pg", "name": "postgres", "tags": ["primary", "prod"]},
	]}
	decide(submit(principals.submitter, "why", [n])).outcome == "require_approval"
}

test_submit_tag_must_be_exactly_prod if {
	targets := [node("a", ["production"]), node("b", ["preprod"]), node("c", ["PROD"])]
	decide(submit(principals.submitter, "", targets)).outcome == "allow"
}

test_submit_prod_run_without_reason_is_denied if {
	d := decide(submit(principals.submitter, "", [node("web-1", ["prod"])]))
	d.outcome == "deny"
	d.reasons == ["a reason is required for a run that needs approval (1 target node(s) run a service tagged prod: web-1): submit again with -reason"]
}

test_submit_blank_reason_counts_as_none if {
	d := decide(submit(principals.submitter, " \t\n", [node("web-1", ["prod"])]))
	d.outcome == "deny"
	contains(d.reasons[0], "a reason is required")
}

test_submit_ten_targets_need_no_approval if {
	decide(submit(principals.submitter, "", many(10))).outcome == "allow"
}

test_submit_eleven_targets_need_approval if {
	d := decide(submit(principals.submitter, "rotate logs", many(11)))
	d.outcome == "require_approval"
	d.reasons == ["11 target nodes, more than 10"]
}

test_submit_eleven_targets_without_reason_are_denied if {
	d := decide(submit(principals.submitter, "", many(11)))
	d.outcome == "deny"
	contains(d.reasons[0], "11 target nodes, more than 10")
}

test_submit_prod_and_many_give_both_reasons if {
	targets := array.concat(many(11), [node("web-1", ["prod"])])
	d := decide(submit(principals.submitter, "why", targets))
	d.outcome == "require_approval"
	d.reasons == ["1 target node(s) run a service tagged prod: web-1", "12 target nodes, more than 10"]
}

test_submit_many_prod_nodes_are_summarised if {
	targets := [node(sprintf("web-%d", [i]), ["prod"]) | some i in numbers.range(1, 7)]
	d := decide(submit(principals.submitter, "why", targets))
	d.reasons == ["7 target node(s) run a service tagged prod: web-1, web-2, web-3, web-4, web-5 and 2 more"]
}

test_admin_submit_prod_still_needs_approval if {
	d := decide(submit(principals.admin, "why", [node("web-1", ["prod"])]))
	d.outcome == "require_approval"
}

test_submit_failed_preflight_beats_approval if {
	inp := object.union(submit(principals.submitter, "why", [node("web-1", ["prod"])]), {"preflight": {
		"checked": true, "allowed": false, "missing": ["event:write _rexec"],
	}})
	decide(inp).outcome == "deny"
}
