package store

import (
	"context"
	"errors"
	"testing"
)

// A tenant's name is part of its audit log's origin, the first line of
// every signed checkpoint: names that would break that line are refused.
func TestTenantNames(t *testing.T) {
	b := setup(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"globex", true},
		{"team-a.prod_1", true},
		{"9lives", true},
		{"", false},
		{"-lead", false},
		{"with space", false},
		{"tab\there", false},
		{"new\nline", false},
		{"slash/y", false},
		{"ünïcode", false},
		{string(make([]byte, 64)), false},
	} {
		_, err := b.st.CreateTenant(ctx, Tenant{Name: tc.name, ConsulAddr: "127.0.0.1:8500", Prefix: "_rexec", OutputCap: 1})
		if tc.ok && err != nil {
			t.Errorf("%q: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrTenantName) {
			t.Errorf("%q: %v, want ErrTenantName", tc.name, err)
		}
	}
}
