package failpoint

import (
	"maps"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]bool
	}{
		{"", map[string]bool{}},
		{"claimed", map[string]bool{"claimed": true}},
		{" fired , finishing,,", map[string]bool{"fired": true, "finishing": true}},
	} {
		if got := parse(tc.in); !maps.Equal(got, tc.want) {
			t.Errorf("parse(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
