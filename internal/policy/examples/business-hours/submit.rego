# What a submitted run needs under the business-hours example: outside
# business hours (Monday to Friday, 09:00 to 17:00 in the tenant's time
# zone) every run needs two approvals; within them, as in the default
# policy, a run that touches a service tagged prod or more than 10 nodes
# needs one. (Who may submit, and the rules every run meets, are in
# rexec.rego, the same as in the default policy.)
#
# An unknown time zone fails the decision, and rexec then denies: a typo
# in a tenant's zone must not make every hour a business hour.
package rexec

approver_roles := ["approver"]

default required_approvals := 1

required_approvals := 2 if off_hours

prod_tag := "prod"

max_targets_without_approval := 10

business_days := {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}

# Business hours start at 09:00 and end before 17:00.
opening_hour := 9

closing_hour := 17

default time_zone := "UTC"

time_zone := input.tenant.time_zone if input.tenant.time_zone != ""

# The submission time on the tenant's clock.
now := [time.weekday([ns, time_zone]), time.clock([ns, time_zone])] if {
	ns := time.parse_rfc3339_ns(input.time)
}

in_business_hours if {
	[day, [hour, _, _]] := now
	day in business_days
	hour >= opening_hour
	hour < closing_hour
}

# Without a readable time, hours are not business hours.
off_hours if not in_business_hours

approval_reasons contains msg if {
	off_hours
	[day, [hour, minute, _]] := now
	msg := sprintf("submitted outside business hours: %s %02d:%02d %s (business hours: Monday to Friday, %02d:00 to %02d:00)", [day, hour, minute, time_zone, opening_hour, closing_hour])
}

approval_reasons contains "submitted at no readable time, so outside business hours" if {
	off_hours
	not now
}

# As in the default policy.
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
