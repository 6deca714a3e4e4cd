package main

import "testing"

func TestPrefixLines(t *testing.T) {
	t.Parallel()
	// Expected values follow consul exec's TargetedUI.prefixLines.
	for _, tc := range []struct {
		note    string
		arrow   bool
		message string
		want    string
	}{
		{note: "one line", message: "hello", want: "    n: hello"},
		{note: "final newline leaves a bare prefix", message: "a\nb\n", want: "    n: a\n    n: b\n    n:"},
		{note: "inner blank line", message: "a\n\nb", want: "    n: a\n    n: \n    n: b"},
		{note: "trailing spaces trimmed at the end only", message: "a  \nb  ", want: "    n: a  \n    n: b"},
		{note: "arrow", arrow: true, message: "finished with exit code 3", want: "==> n: finished with exit code 3"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			if got := prefixLines(tc.arrow, "n", tc.message); got != tc.want {
				t.Errorf("prefixLines(%q) = %q, want %q", tc.message, got, tc.want)
			}
		})
	}
}

func TestCommandOf(t *testing.T) {
	t.Parallel()
	if got := commandOf([]string{"echo", "hi"}, 0); got != "echo hi" {
		t.Errorf("got %q", got)
	}
	if got := commandOf(nil, 42); got != "(script, 42 bytes)" {
		t.Errorf("got %q", got)
	}
	long := commandOf([]string{string(make([]byte, 100))}, 0)
	if len(long) != 60 {
		t.Errorf("long command shown as %d bytes, want 60", len(long))
	}
}
