package service

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/storetest"
)

// TestTokenCacheBounds: a process answers from what it learnt of a token
// for at most TokenCacheTTL. A token revoked (or a principal's roles
// changed) by another process — `rexec-svc token revoke` — is refused
// (or seen with its new roles) once that bound has passed since the
// lookup, and a token that does not resolve is never remembered. The
// cache's clock is moved by hand: no test waits out the TTL.
func TestTokenCacheBounds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st := storetest.Open(t)
	tn := storetest.Tenant(t, st, "acme")
	p := storetest.Principal(t, st, tn.ID, "alice", store.RoleSubmitter)

	for _, tc := range []struct {
		note string
		// change is what another process does after the first lookup.
		change func(t *testing.T, tokenID int64)
		// within is what the token resolves to while the bound holds,
		// after the roles it has then, or refused; and after it.
		within, after []string
	}{
		{note: "revoked",
			change: func(t *testing.T, id int64) {
				if _, err := st.RevokeToken(ctx, tn.ID, id); err != nil {
					t.Fatal(err)
				}
			},
			within: []string{store.RoleSubmitter}, after: nil},
		{note: "roles changed",
			change: func(t *testing.T, id int64) {
				if _, err := st.UpsertPrincipal(ctx, tn.ID, "alice", []string{store.RoleAuditor}); err != nil {
					t.Fatal(err)
				}
			},
			within: []string{store.RoleSubmitter}, after: []string{store.RoleAuditor}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			if _, err := st.UpsertPrincipal(ctx, tn.ID, "alice", []string{store.RoleSubmitter}); err != nil {
				t.Fatal(err)
			}
			id, token, err := st.CreateToken(ctx, p.ID)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			s := &Service{store: st, tokens: newTokenCache()}
			s.tokens.now = func() time.Time { return now }
			check := func(when string, want []string) {
				t.Helper()
				c, err := s.Authenticate(ctx, token)
				switch {
				case want == nil && !errors.Is(err, ErrForbidden):
					t.Errorf("%s: authenticated as %+v (%v), want refused", when, c.Principal, err)
				case want != nil && err != nil:
					t.Errorf("%s: %v, want roles %v", when, err, want)
				case want != nil && (len(c.Principal.Roles) != 1 || c.Principal.Roles[0] != want[0] || c.Tenant.ID != tn.ID):
					t.Errorf("%s: principal %+v of tenant %d, want roles %v of tenant %d", when, c.Principal, c.Tenant.ID, want, tn.ID)
				}
			}
			check("first lookup", []string{store.RoleSubmitter})
			tc.change(t, id)
			check("at once", tc.within)
			now = now.Add(TokenCacheTTL - time.Nanosecond)
			check("just within the bound", tc.within)
			now = now.Add(time.Nanosecond)
			check("at the bound", tc.after)
			now = now.Add(time.Hour)
			check("later", tc.after)
		})
	}

	t.Run("refusals are not remembered", func(t *testing.T) {
		s := &Service{store: st, tokens: newTokenCache()}
		for _, token := range []string{"rxt_unknown", "not-a-token", ""} {
			if _, err := s.Authenticate(ctx, token); !errors.Is(err, ErrForbidden) {
				t.Errorf("token %q: %v, want refused", token, err)
			}
		}
		if n := len(s.tokens.m); n != 0 {
			t.Errorf("%d refused tokens remembered", n)
		}
	})
}
