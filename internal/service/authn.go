package service

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/rexec/rexec/internal/store"
)

// TokenCacheTTL is how long a process reuses what an API token resolved
// to (its principal, roles and tenant) before asking the database again.
// It bounds how long a token keeps working in a running process after
// `rexec-svc token revoke` (another process, so nothing can tell this one
// at once), and how long a change of roles or of the tenant's settings
// takes to apply. A second keeps revocation prompt while a client that
// submits hundreds of runs a second costs one lookup a second, not one a
// request.
const TokenCacheTTL = time.Second

// tokenCacheMax bounds the tokens remembered at once; only tokens that
// resolved are kept, so it takes that many live tokens in use within
// TokenCacheTTL to reach it.
const tokenCacheMax = 10000

// tokenCache remembers recent token resolutions, by the token's hash (the
// process keeps no token it does not need: the hash is what the database
// stores too).
type tokenCache struct {
	// now is the clock (time.Now; tests move it).
	now func() time.Time

	mu sync.Mutex
	m  map[string]cachedToken
}

type cachedToken struct {
	principal store.Principal
	tenant    store.Tenant
	until     time.Time
}

func newTokenCache() *tokenCache {
	return &tokenCache{now: time.Now, m: map[string]cachedToken{}}
}

func (c *tokenCache) get(key string) (store.Principal, store.Tenant, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || !c.now().Before(e.until) {
		return store.Principal{}, store.Tenant{}, false
	}
	return e.principal, e.tenant, true
}

func (c *tokenCache) put(key string, p store.Principal, t store.Tenant) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if len(c.m) >= tokenCacheMax {
		for k, e := range c.m {
			if !now.Before(e.until) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= tokenCacheMax {
			clear(c.m)
		}
	}
	c.m[key] = cachedToken{principal: p, tenant: t, until: now.Add(TokenCacheTTL)}
}

// Authenticate resolves a bearer token, from what this process learnt of
// it within TokenCacheTTL or else from the database. A token that does not
// resolve (unknown, malformed, revoked) is never remembered: it is looked
// up again each time, and works as soon as it is valid.
func (s *Service) Authenticate(ctx context.Context, token string) (Caller, error) {
	key := string(store.HashToken(token))
	if p, t, ok := s.tokens.get(key); ok {
		return Caller{Principal: p, Tenant: t}, nil
	}
	p, t, err := s.store.Authenticate(ctx, token)
	if errors.Is(err, store.ErrNotFound) {
		return Caller{}, errorf(ErrForbidden, "invalid or revoked token")
	}
	if err != nil {
		return Caller{}, err
	}
	s.tokens.put(key, p, t)
	return Caller{Principal: p, Tenant: t}, nil
}
