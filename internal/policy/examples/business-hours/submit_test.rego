# Tests of submit.rego: two approvals outside business hours. The fixtures
# are in rexec_test.rego.
package rexec_test

at(time, zone, targets, reason) := object.union(submit(principals.submitter, reason, targets), {
	"time": time,
	"tenant": {"name": "acme", "time_zone": zone},
})

# 2025-06-02 is a Monday; 2025-06-06 a Friday; 2025-06-07 a Saturday.
test_business_hours[note] if {
	some note, c in {
		"Monday 09:00 UTC opens": {"time": "2025-06-02T09:00:00Z", "zone": "UTC", "inside": true},
		"Monday 08:59 UTC is early": {"time": "2025-06-02T08:59:59Z", "zone": "UTC", "inside": false},
		"Monday 16:59 UTC is late but in": {"time": "2025-06-02T16:59:59Z", "zone": "UTC", "inside": true},
		"Monday 17:00 UTC has closed": {"time": "2025-06-02T17:00:00Z", "zone": "UTC", "inside": false},
		"Saturday noon": {"time": "2025-06-07T12:00:00Z", "zone": "UTC", "inside": false},
		"Sunday noon": {"time": "2025-06-08T12:00:00Z", "zone": "UTC", "inside": false},
		"empty zone is UTC": {"time": "2025-06-02T08:30:00Z", "zone": "", "inside": false},
		"Berlin summer 09:30 is 07:30 UTC": {"time": "2025-06-02T07:30:00Z", "zone": "Europe/Berlin", "inside": true},
		"Berlin summer 17:30 is 15:30 UTC": {"time": "2025-06-02T15:30:00Z", "zone": "Europe/Berlin", "inside": false},
		"Berlin winter 09:30 is 08:30 UTC": {"time": "2025-01-06T08:30:00Z", "zone": "Europe/Berlin", "inside": true},
		"Berlin winter 08:30 is 07:30 UTC": {"time": "2025-01-06T07:30:00Z", "zone": "Europe/Berlin", "inside": false},
		"New York Friday 16:30 EDT": {"time": "2025-06-06T20:30:00Z", "zone": "America/New_York", "inside": true},
		"New York Friday 17:30 EDT": {"time": "2025-06-06T21:30:00Z", "zone": "America/New_York", "inside": false},
		"Tokyo Monday 09:30 is Monday 00:30 UTC": {"time": "2025-06-02T00:30:00Z", "zone": "Asia/Tokyo", "inside": true},
		"Tokyo Saturday 08:00 is Friday 23:00 UTC": {"time": "2025-06-06T23:00:00Z", "zone": "Asia/Tokyo", "inside": false},
		"offset in the time itself": {"time": "2025-06-02T10:00:00+02:00", "zone": "UTC", "inside": false},
	}
	d := decide(at(c.time, c.zone, staging, "maintenance"))
	expected(c.inside, d)
}

expected(true, d) if d.outcome == "allow"

expected(false, d) if {
	d.outcome == "require_approval"
	d.approvals == 2
	d.approver_roles == ["approver"]
	startswith(d.reasons[0], "submitted outside business hours: ")
}

test_off_hours_reason_names_day_time_and_zone if {
	d := decide(at("2025-06-07T10:15:00Z", "Europe/Berlin", staging, "maintenance"))
	d.reasons == ["submitted outside business hours: Saturday 12:15 Europe/Berlin (business hours: Monday to Friday, 09:00 to 17:00)"]
}

test_off_hours_without_reason_is_denied if {
	d := decide(at("2025-06-07T12:00:00Z", "UTC", staging, ""))
	d.outcome == "deny"
	contains(d.reasons[0], "a reason is required")
}

test_prod_in_business_hours_needs_one_approval if {
	d := decide(at("2025-06-02T10:00:00Z", "UTC", [node("web-1", ["prod"])], "deploy"))
	d.outcome == "require_approval"
	d.approvals == 1
	d.reasons == ["1 target node(s) run a service tagged prod: web-1"]
}

test_many_targets_in_business_hours_need_one_approval if {
	d := decide(at("2025-06-02T10:00:00Z", "UTC", many(11), "rotate"))
	d.approvals == 1
}

test_prod_off_hours_needs_two_and_says_both if {
	d := decide(at("2025-06-07T12:00:00Z", "UTC", [node("web-1", ["prod"])], "hotfix"))
	d.outcome == "require_approval"
	d.approvals == 2
	count(d.reasons) == 2
}

test_missing_time_counts_as_off_hours if {
	d := decide(object.remove(submit(principals.submitter, "why", staging), {"time"}))
	d.approvals == 2
	d.reasons == ["submitted at no readable time, so outside business hours"]
}
