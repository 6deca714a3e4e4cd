// Package tenantconsul keeps one engine client per tenant: the tenant's
// Consul connection settings turned into a consul.Config, and a pool of
// clients so that connections to a tenant's agent are reused across runs
// and submissions. The service and the workers both use it. For target
// resolution it also keeps one catalog view per tenant (View), started on
// first use and shared by every submission of the tenant.
package tenantconsul

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/store"
)

// Clients keeps one engine client per tenant configuration, so that
// connections to a tenant's agent are pooled rather than opened per run
// (an agent allows only so many connections per client address).
type Clients struct {
	adjust  func(*consul.Config)
	viewCfg consul.ViewConfig
	mu      sync.Mutex
	byKey   map[int64]*cachedClient
	// swept is when View last looked for idle views.
	swept time.Time
}

type cachedClient struct {
	tenant string // the tenant's name, for the catalog view's metric
	cfg    consul.Config
	client *consul.Client
	// view is the tenant's catalog view, once a submission asked for it;
	// used is when one last did (unix nanoseconds).
	view *consul.CatalogView
	used atomic.Int64
}

// ViewIdleTimeout is how long a tenant's catalog view runs without being
// used before it is stopped (the next use starts a new one): an idle view
// costs the tenant's agent a blocking query for nothing.
const ViewIdleTimeout = time.Hour

// NewClients returns an empty cache; adjust, if not nil, amends every
// configuration before use.
func NewClients(adjust func(*consul.Config)) *Clients {
	return &Clients{adjust: adjust, byKey: map[int64]*cachedClient{}}
}

// SetViewConfig sets the configuration of the catalog views started from
// now on (the zero value means consul's defaults).
func (c *Clients) SetViewConfig(cfg consul.ViewConfig) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.viewCfg = cfg
}

// Get returns the client for the tenant's current configuration, with
// extra settings applied by mod (nil for none).
func (c *Clients) Get(t store.Tenant, mod func(*consul.Config)) (*consul.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc, err := c.get(t, mod)
	if err != nil {
		return nil, err
	}
	return cc.client, nil
}

// View returns the catalog view of the tenant's current configuration
// (with mod applied, as Get), starting it on first use. A view whose
// tenant's connection settings changed is stopped and replaced, and views
// unused for ViewIdleTimeout are stopped.
func (c *Clients) View(t store.Tenant, mod func(*consul.Config)) (*consul.CatalogView, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc, err := c.get(t, mod)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	cc.used.Store(now.UnixNano())
	if cc.view == nil {
		cc.view = consul.NewCatalogView(cc.client, c.viewCfg)
	}
	if now.Sub(c.swept) > time.Minute {
		c.swept = now
		for id, other := range c.byKey {
			if other.view != nil && id != t.ID && now.Sub(time.Unix(0, other.used.Load())) > ViewIdleTimeout {
				other.view.Close()
				other.view = nil
			}
		}
	}
	return cc.view, nil
}

// get returns the cached client of the tenant's configuration, replacing
// (and stopping the view of) one made for other settings. c.mu is held.
func (c *Clients) get(t store.Tenant, mod func(*consul.Config)) (*cachedClient, error) {
	cfg := Config(t)
	if mod != nil {
		mod(&cfg)
	}
	if c.adjust != nil {
		c.adjust(&cfg)
	}
	old, ok := c.byKey[t.ID]
	if ok && sameConfig(old.cfg, cfg) {
		return old, nil
	}
	client, err := consul.New(cfg)
	if err != nil {
		return nil, err
	}
	if ok && old.view != nil {
		// A view on the old address or token would resolve with settings
		// the tenant no longer has.
		old.view.Close()
	}
	cc := &cachedClient{tenant: t.Name, cfg: cfg, client: client}
	c.byKey[t.ID] = cc
	return cc, nil
}

// ViewAges reports the age of every running catalog view (the time since
// its last successful contact with Consul), by tenant name. It does no
// I/O: the metrics call it at every scrape.
func (c *Clients) ViewAges(report func(tenant string, age time.Duration)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.byKey {
		if cc.view != nil {
			report(cc.tenant, cc.view.Age())
		}
	}
}

// Close stops every catalog view. Clients stay usable.
func (c *Clients) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.byKey {
		if cc.view != nil {
			cc.view.Close()
			cc.view = nil
		}
	}
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
