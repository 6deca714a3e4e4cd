package simagent

import (
	"regexp"
	"testing"
)

// TestFilterMatchesAsRegexp checks that the filter's shortcut for pinned
// node filters answers exactly as the regexp an agent runs would.
func TestFilterMatchesAsRegexp(t *testing.T) {
	t.Parallel()
	nodes := []*vnode{
		{name: "web-1", services: []Service{{ID: "web", Tags: []string{"v1"}}}},
		{name: "web-10", services: []Service{{ID: "web", Tags: []string{"v2"}}}},
		{name: "db.1", services: []Service{{ID: "db"}}},
		{name: "dbx1"},
		{name: "a|b"},
		{name: ""},
	}
	tests := []struct {
		note      string
		ue        userEvent
		shortcut  bool // the node filter is answered by a set lookup
		wantNodes []string
	}{
		{note: "pinned names", ue: userEvent{NodeFilter: `^(?:web\-1|db\.1)$`}, shortcut: true, wantNodes: []string{"web-1", "db.1"}},
		{note: "a quoted metacharacter", ue: userEvent{NodeFilter: `^(?:a\|b)$`}, shortcut: true, wantNodes: []string{"a|b"}},
		{note: "an unquoted dot is a regexp", ue: userEvent{NodeFilter: `^(?:db.1)$`}, wantNodes: []string{"db.1", "dbx1"}},
		{note: "a class escape is a regexp", ue: userEvent{NodeFilter: `^(?:web-\d)$`}, wantNodes: []string{"web-1"}},
		{note: "unanchored", ue: userEvent{NodeFilter: `web-1`}, wantNodes: []string{"web-1", "web-10"}},
		{note: "pinned with service and tag", ue: userEvent{NodeFilter: `^(?:web\-1|web\-10)$`, ServiceFilter: "^web$", TagFilter: "^v2$"}, shortcut: true, wantNodes: []string{"web-10"}},
		{note: "no filters", ue: userEvent{}, wantNodes: []string{"web-1", "web-10", "db.1", "dbx1", "a|b", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			f, err := newFilter(tc.ue)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.names != nil; got != tc.shortcut {
				t.Errorf("shortcut = %t, want %t", got, tc.shortcut)
			}
			var got []string
			for _, n := range nodes {
				if f.matches(n) {
					got = append(got, n.name)
				}
				// The agent's own answer on its node name.
				if tc.ue.NodeFilter != "" && tc.ue.ServiceFilter == "" {
					if want := regexp.MustCompile(tc.ue.NodeFilter).MatchString(n.name); want != f.matches(n) {
						t.Errorf("%q: matches %t, regexp %t", n.name, f.matches(n), want)
					}
				}
			}
			if len(got) != len(tc.wantNodes) {
				t.Fatalf("matched %q, want %q", got, tc.wantNodes)
			}
			for i := range got {
				if got[i] != tc.wantNodes[i] {
					t.Fatalf("matched %q, want %q", got, tc.wantNodes)
				}
			}
		})
	}
}
