# What a submitted run needs under the allowlist example: a command on the
# list runs without approval, wherever it runs; a script needs an approver
# and a reason; any other command is denied. (Who may submit, and the rules
# every run meets, are in rexec.rego, the same as in the default policy.)
#
# Scripts need approval rather than being denied because a script cannot be
# judged by its name, yet a team in an incident needs a way to run one. The
# approval binds to the exact request, the script's sha256 included, so the
# approver approves the script they read, and no other.
package rexec

approver_roles := ["approver"]

required_approvals := 1

# The commands that may run, each as the words it must begin with:
# ["systemctl", "status"] admits "systemctl status nginx" but not
# "systemctl restart nginx". A command on the list runs with any further
# arguments, so list only commands that are harmless with any.
allowed_commands := [
	["uptime"],
	["hostname"],
	["df", "-h"],
	["free", "-m"],
	["systemctl", "status"],
	["journalctl", "--no-pager", "-u"],
]

has_script if request.script_sha256 != ""

# The words of the command as the agent will run it. Without a shell, the
# argument vector as given; with one, the command line split at blanks.
command_words := request.argv if {
	request.shell == false
} else := regex.split(`[ \t]+`, trim_space(request.command))

# In shell mode the agent runs /bin/sh -c with the command line, so
# "uptime; reboot" would pass a check of the first word. Only plain words
# are admitted: none of the characters the shell interprets (separators,
# redirections, quotes, expansions, globs, newlines).
shell_metacharacters contains w if {
	request.shell == true
	some w in command_words
	not regex.match(`^[A-Za-z0-9_./:=,@%+-]+$`, w)
}

allowlisted if {
	not has_script
	count(shell_metacharacters) == 0
	some prefix in allowed_commands
	count(command_words) >= count(prefix)
	array.slice(command_words, 0, count(prefix)) == prefix
}

deny contains msg if {
	action == "exec.submit"
	has_request
	not has_script
	count(shell_metacharacters) > 0
	msg := sprintf("the command %q has words the shell would interpret (%s): only plain words are allowed", [request.command, concat(" ", sort(shell_metacharacters))])
}

deny contains msg if {
	action == "exec.submit"
	has_request
	not has_script
	count(shell_metacharacters) == 0
	not allowlisted
	msg := sprintf("the command %q is not on the allowlist (%s)", [request.command, concat("; ", [concat(" ", c) | some c in allowed_commands])])
}

approval_reasons contains msg if {
	has_script
	msg := sprintf("runs a %d-byte script (sha256 %s), which the allowlist cannot judge", [request.script_bytes, request.script_sha256])
}
