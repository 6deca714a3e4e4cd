//go:build unix

package policy

import "syscall"

// cpuTime returns the CPU time the process has used, user and system, so
// that a benchmark on a shared machine can report what a decision costs
// rather than how long it waited for a CPU.
func cpuTime() (ns int64, ok bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return ru.Utime.Nano() + ru.Stime.Nano(), true
}
