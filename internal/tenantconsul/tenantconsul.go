// Package tenantconsul keeps one engine client per tenant: the tenant's
// Consul connection settings turned into a consul.Config, and a pool of
// clients so that connections to a tenant's agent are reused across runs
// and submissions. The service and the workers both use it.
package tenantconsul

import (
	"sync"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
)

// Clients keeps one engine client per tenant configuration, so that
// connections to a tenant's agent are pooled rather than opened per run
// (an agent allows only so many connections per client address).
type Clients struct {
	adjust func(*consul.Config)
	mu     sync.Mutex
	byKey  map[int64]cachedClient
}

type cachedClient struct {
	cfg    consul.Config
	client *consul.Client
}

// NewClients returns an empty cache; adjust, if not nil, amends every
// configuration before use.
func NewClients(adjust func(*consul.Config)) *Clients {
	return &Clients{adjust: adjust, byKey: map[int64]cachedClient{}}
}

// Get returns the client for the tenant's current configuration, with
// extra settings applied by mod (nil for none).
func (c *Clients) Get(t store.Tenant, mod func(*consul.Config)) (*consul.Client, error) {
	cfg := Config(t)
	if mod != nil {
		mod(&cfg)
	}
	if c.adjust != nil {
		c.adjust(&cfg)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.byKey[t.ID]; ok && sameConfig(cc.cfg, cfg) {
		return cc.client, nil
	}
	client, err := consul.New(cfg)
	if err != nil {
		return nil, err
	}
	c.byKey[t.ID] = cachedClient{cfg: cfg, client: client}
	return client, nil
}

// sameConfig compares the fields that make a connection; the logger and
// HTTP client are the process's own and do not vary per tenant.
func sameConfig(a, b consul.Config) bool {
	a.Logger, b.Logger = nil, nil
	a.HTTPClient, b.HTTPClient = nil, nil
	return a == b
}

// Config is the engine configuration for a tenant.
func Config(t store.Tenant) consul.Config {
	return consul.Config{
		Address:    t.ConsulAddr,
		Datacenter: t.Datacenter,
		Token:      t.ConsulToken,
		TLS: consul.TLSConfig{
			Enabled:            t.TLS.Enabled,
			CAFile:             t.TLS.CAFile,
			CertFile:           t.TLS.CertFile,
			KeyFile:            t.TLS.KeyFile,
			ServerName:         t.TLS.ServerName,
			InsecureSkipVerify: t.TLS.InsecureSkipVerify,
		},
	}
}
