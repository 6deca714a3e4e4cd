# Tests of submit.rego: the command allowlist. The fixtures are in
# rexec_test.rego.
package rexec_test

shell_command(line) := object.union(request(""), {"command": line, "argv": split(line, " "), "shell": true})

argv_command(argv) := object.union(request(""), {"command": concat(" ", argv), "argv": argv, "shell": false})

script(reason, text) := object.union(request(reason), {
	"command": "", "argv": [], "shell": true,
	"script": text, "script_bytes": count(text), "script_sha256": crypto.sha256(text),
})

with_request(r) := object.union(submit(principals.submitter, "", staging), {"request": r})

test_allowlisted_commands_run[line] if {
	some line in [
		"uptime",
		"hostname",
		"df -h",
		"df -h /var",
		"free -m",
		"systemctl status nginx",
		"systemctl status app@2.service",
		"journalctl --no-pager -u nginx --since=-1h",
	]
	d := decide(with_request(shell_command(line)))
	d.outcome == "allow"
}

test_allowlisted_command_needs_no_approval_on_prod if {
	inp := object.union(with_request(shell_command("uptime")), {"targets": [node("web-1", ["prod"])]})
	decide(inp).outcome == "allow"
}

test_other_commands_are_denied[line] if {
	some line in ["reboot", "systemctl restart nginx", "df", "free -g", "journalctl -f", "rm -rf /", "uptimex"]
	d := decide(with_request(shell_command(line)))
	d.outcome == "deny"
	startswith(d.reasons[0], sprintf("the command %q is not on the allowlist (uptime; hostname; ", [line]))
}

test_shell_metacharacters_are_denied[line] if {
	some line in [
		"uptime; reboot",
		"uptime && reboot",
		"uptime || reboot",
		"uptime | sh",
		"uptime & reboot",
		"uptime > /etc/motd",
		"uptime < /dev/zero",
		"uptime $(reboot)",
		"uptime `reboot`",
		"uptime ${IFS}",
		"uptime 'x'",
		"uptime \"x\"",
		"uptime \\x",
		"uptime *",
		"uptime ~root",
		"uptime #",
		"uptime\nreboot",
		"uptime (x)",
	]
	d := decide(with_request(shell_command(line)))
	d.outcome == "deny"
	contains(d.reasons[0], "has words the shell would interpret")
}

test_without_shell_arguments_are_not_interpreted if {
	# The agent runs the vector itself: "; reboot" reaches uptime as text.
	decide(with_request(argv_command(["uptime", "; reboot"]))).outcome == "allow"
}

test_without_shell_the_program_must_match_exactly[note] if {
	some note, argv in {
		"absolute path": ["/usr/bin/uptime"],
		"joined words": ["systemctl status", "nginx"],
		"other program": ["reboot"],
	}
	decide(with_request(argv_command(argv))).outcome == "deny"
}

test_script_needs_an_approver_and_names_its_hash if {
	text := "#!/bin/sh\nsystemctl restart app\n"
	d := decide(with_request(script("INC-42: app wedged", text)))
	d.outcome == "require_approval"
	d.approvals == 1
	d.approver_roles == ["approver"]
	d.reasons == [sprintf("runs a 32-byte script (sha256 %s), which the allowlist cannot judge", [crypto.sha256(text)])]
}

test_script_without_reason_is_denied if {
	d := decide(with_request(script("", "reboot\n")))
	d.outcome == "deny"
	contains(d.reasons[0], "a reason is required")
}

test_binary_script_needs_approval_too if {
	r := object.union(request("firmware"), {"command": "", "argv": [], "script": "", "script_bytes": 1024, "script_sha256": "ab12"})
	decide(with_request(r)).outcome == "require_approval"
}

test_many_targets_need_no_approval if {
	decide(object.union(with_request(shell_command("uptime")), {"targets": many(50)})).outcome == "allow"
}
