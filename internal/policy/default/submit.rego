# What a submitted run needs under the default policy: an approval when it
# touches production or many nodes. (Who may submit, and the rules every
# run meets, are in rexec.rego.)
package rexec

# Runs that need approval need this many, from distinct holders of these
# roles.
approver_roles := ["approver"]

required_approvals := 1

# A service tag that marks production.
prod_tag := "prod"

# More target nodes than this need approval.
max_targets_without_approval := 10

# A comprehension rather than a partial set rule, since OPA caches a
# complete rule's value and this one is read several times per decision;
# prod_tag is bound once, outside the loops, as it is a rule too.
prod_nodes := {t.node |
	tag := prod_tag
	some t in targets
	some s in t.services
	tag in s.tags
}

approval_reasons contains msg if {
	count(prod_nodes) > 0
	msg := sprintf("%d target node(s) run a service tagged %s: %s", [count(prod_nodes), prod_tag, summary(prod_nodes)])
}

approval_reasons contains msg if {
	count(targets) > max_targets_without_approval
	msg := sprintf("%d target nodes, more than %d", [count(targets), max_targets_without_approval])
}

# summary names the first few of a set of names, and counts the rest.
summary(names) := concat(", ", sort(names)) if {
	count(names) <= 5
} else := sprintf("%s and %d more", [concat(", ", array.slice(sort(names), 0, 5)), count(names) - 5])
