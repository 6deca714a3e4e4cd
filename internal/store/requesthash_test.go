package store

import (
	"encoding/json"
	"testing"
)

// TestRequestHash: the hash binds the frozen targets by name (not their
// order), and runs stored with version 1, which bound only their number,
// still match their hash, but no other request does.
func TestRequestHash(t *testing.T) {
	t.Parallel()
	on := func(names ...string) Run {
		var nodes []map[string]any
		for _, n := range names {
			nodes = append(nodes, map[string]any{"node": n, "address": "10.0.0.1", "services": []any{}})
		}
		targets, _ := json.Marshal(nodes)
		return Run{Argv: []string{"uptime"}, Shell: true, Prefix: "_rexec", Targets: targets}
	}
	r := on("web-1", "web-2")
	h := RequestHash(r)
	if RequestHash(on("web-2", "web-1")) != h {
		t.Error("the targets' order changed the hash")
	}
	if RequestHashOf(r, []string{"web-2", "web-1"}) != h {
		t.Error("RequestHashOf differs from RequestHash")
	}
	if RequestHash(on("web-1", "db-1")) == h {
		t.Error("another target left the hash alone")
	}

	v1 := requestHash(r, []string{"", ""}, 1)
	for _, tc := range []struct {
		note   string
		run    Run
		stored string
		want   bool
	}{
		{note: "current hash", run: r, stored: h, want: true},
		{note: "current hash, a target changed", run: on("web-1", "db-1"), stored: h, want: false},
		{note: "version 1 hash", run: r, stored: v1, want: true},
		{note: "version 1 hash, the command changed", run: func() Run { c := r; c.Argv = []string{"reboot"}; return c }(), stored: v1, want: false},
		{note: "version 1 hash, a target more", run: on("web-1", "web-2", "db-1"), stored: v1, want: false},
	} {
		run := tc.run
		run.RequestHash = tc.stored
		if got := RequestHashMatches(run); got != tc.want {
			t.Errorf("%s: RequestHashMatches = %t, want %t", tc.note, got, tc.want)
		}
	}
}
