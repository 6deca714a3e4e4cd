//go:build !unix

package policy

func cpuTime() (ns int64, ok bool) { return 0, false }
