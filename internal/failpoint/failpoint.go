// Package failpoint lets tests crash a process at a named point of its
// work, to check that what a real crash leaves behind is recovered: a
// worker killed between two lines cannot be arranged from outside.
//
// Points are armed only through the environment variable REXEC_FAILPOINTS,
// read once at start: a comma-separated list of point names. An armed point
// kills the process with SIGKILL the first time it is reached — no deferred
// function, no shutdown hook, as in a real crash. Unarmed, a point costs a
// map lookup on an empty map.
package failpoint

import (
	"os"
	"strings"
	"syscall"
)

// Env names the variable that arms failpoints.
const Env = "REXEC_FAILPOINTS"

// Points of the run lifecycle, in order.
const (
	// Claimed: the worker holds the run, before anything in Consul.
	Claimed = "claimed"
	// SessionRecorded: the session exists and the job spec is in KV; the
	// run has not been marked firing.
	SessionRecorded = "session-recorded"
	// FiringMarked: the run is marked firing in the database; no event has
	// gone out.
	FiringMarked = "firing-marked"
	// Fired: the event(s) went out; the fire is not yet recorded as done.
	Fired = "fired"
	// OutputStored: the round with the last node's exit is stored; the run
	// is not finished.
	OutputStored = "output-stored"
	// Finishing: the session and prefix are destroyed; the run's final
	// state is not committed.
	Finishing = "finishing"
)

var armed = parse(os.Getenv(Env))

func parse(v string) map[string]bool {
	m := map[string]bool{}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			m[p] = true
		}
	}
	return m
}

// Inject kills the process if the point name is armed.
func Inject(name string) {
	if armed[name] {
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously
	}
}
