package store

import "testing"

func TestIsUUID(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"b94aef51-7595-46f2-a20f-720a09b8a136", true},
		{"B94AEF51-7595-46F2-A20F-720A09B8A136", true},
		{"b94aef51759546f2a20f720a09b8a136", false},
		{"b94aef51-7595-46f2-a20f-720a09b8a13", false},
		{"g94aef51-7595-46f2-a20f-720a09b8a136", false},
		{"b94aef51-7595-46f2-a20f_720a09b8a136", false},
		{"x'; DROP TABLE runs; --", false},
		{"", false},
	} {
		if got := IsUUID(tc.in); got != tc.want {
			t.Errorf("IsUUID(%q) = %t, want %t", tc.in, got, tc.want)
		}
	}
}
