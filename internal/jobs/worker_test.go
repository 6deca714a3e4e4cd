package jobs

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/consul"
)

func TestPermanent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&consul.SpecTooLargeError{Size: 2, Limit: 1}, true},
		{&consul.EventTooLargeError{Node: "n", Size: 600, Limit: 512}, true},
		{fmt.Errorf("prepare: %w", &consul.EventTooLargeError{Size: 600, Limit: 512}), true},
		{&consul.TextError{Field: "argv[0]", Problem: "contains a NUL byte"}, true},
		{&consul.FilterError{Filter: "node", Expr: "(", Err: errors.New("missing )")}, true},
		{consul.ErrNoTargets, true},
		{api.StatusError{Code: 403, Body: "Permission denied"}, true},
		{api.StatusError{Code: 500, Body: "rpc error"}, false},
		{errors.New("connection refused"), false},
		{context.DeadlineExceeded, false},
	} {
		if got := permanent(tc.err); got != tc.want {
			t.Errorf("permanent(%v) = %t, want %t", tc.err, got, tc.want)
		}
	}
}
