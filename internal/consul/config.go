// Package consul speaks Consul's remote-exec protocol, the one `consul exec`
// uses: a session, a job spec acquired in the KV store, a `_rexec` user event,
// and the agents' acks, output chunks and exit codes read back from KV.
//
// It improves on `consul exec` where that client is weak: the target set is
// resolved from the catalog and pinned with an anchored node filter, so a node
// that joins later never runs the command; a run ends as soon as every
// expected node has exited; each expected node ends with exactly one
// classification (exited, lost, no_ack, cancelled); output is handed to the
// caller as it arrives and deleted from KV once the caller has stored it; and
// a run can be re-attached by another process without firing again.
//
// The package knows nothing about tenants, HTTP or SQL.
package consul

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"

	"github.com/rexec/rexec/internal/metrics"
)

// Defaults, as `consul exec` has them, except WaitReplDefault (see
// Spec.WaitRepl).
const (
	PrefixDefault         = "_rexec"
	WaitDefault           = 2 * time.Second
	WaitReplDefault       = 0
	SessionTTLDefault     = 15 * time.Second
	EventSizeLimitDefault = 512
	KVMaxValueSizeDefault = 512 * 1024
	RoundIntervalDefault  = 50 * time.Millisecond
	EventSpreadDefault    = 100 * time.Millisecond
	MaxStartingDefault    = 4
	MaxConnsDefault       = 32
	TeardownTimeout       = 10 * time.Second
	HandlerTimeout        = 30 * time.Second
)

// TLSConfig configures HTTPS to the Consul agent.
type TLSConfig struct {
	// Enabled switches the scheme to https. Setting any other field implies it.
	Enabled bool
	// CAFile is a PEM bundle of CAs to trust. Default: the system pool.
	CAFile string
	// CertFile and KeyFile are the client certificate, when the agent
	// verifies incoming HTTPS.
	CertFile, KeyFile string
	// ServerName overrides the name verified in the agent's certificate.
	ServerName string
	// InsecureSkipVerify disables certificate verification.
	InsecureSkipVerify bool
}

func (t TLSConfig) on() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// Config configures a Client.
type Config struct {
	// Address is the agent's HTTP address, host:port. Default: 127.0.0.1:8500.
	Address string
	// Datacenter to run in. Default: the agent's own. A foreign datacenter
	// binds the session to a server there, as `consul exec` does.
	Datacenter string
	// Token is the ACL token. A secret: it never appears in logs or errors.
	Token string
	// TLS configures HTTPS.
	TLS TLSConfig
	// HTTPClient replaces the HTTP client (tests count requests with it).
	// Default: the consul/api client built from the fields above.
	HTTPClient *http.Client
	// SessionTTL is the session's TTL. The session is renewed every
	// RenewInterval while a run is watched; if renewals stop, Consul deletes
	// the run's keys within one to two TTLs. A longer TTL gives a replacement
	// worker more time to re-attach. Default: 15s, as `consul exec`.
	SessionTTL time.Duration
	// RenewInterval is how often the session is renewed. Default: a third
	// of SessionTTL (5s for `consul exec`'s 15s), so that two renewals may
	// fail before Consul invalidates it. Every run renews its own session:
	// a process carrying N runs sends N/RenewInterval renewals a second. A
	// session found gone between renewals (its job spec left KV) is noticed
	// by the watch at once.
	RenewInterval time.Duration
	// EventSizeLimit is the agents' user event size limit in bytes.
	// Default: 512, Consul's.
	EventSizeLimit int
	// KVMaxValueSize is the servers' limits.kv_max_value_size. Default: 512 KiB.
	KVMaxValueSize int
	// RoundInterval is the least time between the starts of two listings
	// of the shared key watch, so that reports arriving together (many
	// nodes finishing at once) are read with one request rather than one
	// each. It adds at most this much to a run's end; a busy prefix is
	// listed at most 1/RoundInterval times a second. Default: 50ms. It
	// trades a run's latency for what it reads: on 31 agents a run of
	// `uptime` listed about 21 times at 25ms and 16 at 50ms, reading 0.55
	// and 0.44 of the bytes `consul exec` reads
	// (BenchmarkAgentsVsConsulExec), while a trivial run end to end took
	// 219 and 243 ms (BenchmarkCLIVsConsulExec; 276 ms at 100ms).
	RoundInterval time.Duration
	// MaxStarting bounds the runs of this client between Prepare and the
	// ack of their last target (or a second after firing) at once:
	// session, job spec, firing, gossip. Others wait in Prepare before
	// writing anything, so that runs come no faster than gossip carries
	// their events, which it loses past that (enterStart). Default: 4.
	MaxStarting int
	// EventSpread is how long gossip may take to carry one more event of
	// a run fired as several (a pinned target set too large for one):
	// serf sends a few user events per gossip interval, so the last of n
	// events reaches the agents about n × EventSpread after the first
	// (measured: 62 ms an event for 295 events on 5,000 virtual agents).
	// The quiet period does not start before then, or a run would end
	// while its last events were still on their way. Default: 100ms.
	EventSpread time.Duration
	// MaxConns bounds the HTTP connections to the agent that the client
	// opens at once (requests queue for one beyond it), and how many it
	// keeps idle for reuse. An agent takes at most
	// limits.http_max_conns_per_client (200 by default) connections from
	// one address, and every process talking to it from that address
	// shares that budget. However many runs a client carries, it holds one
	// long-lived connection per prefix (the shared key watch) and uses the
	// rest for short requests. Ignored with HTTPClient. Default: 32.
	MaxConns int
	// Logger receives debug and warning messages. Default: discard.
	Logger *slog.Logger
	// Metrics counts the requests to the agent and the bytes of its
	// answers, by endpoint and result. Default: none counted.
	Metrics *metrics.Metrics
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Address = cmp.Or(c.Address, "127.0.0.1:8500")
	c.SessionTTL = cmp.Or(c.SessionTTL, SessionTTLDefault)
	c.RenewInterval = cmp.Or(c.RenewInterval, c.SessionTTL/3)
	c.EventSizeLimit = cmp.Or(c.EventSizeLimit, EventSizeLimitDefault)
	c.KVMaxValueSize = cmp.Or(c.KVMaxValueSize, KVMaxValueSizeDefault)
	c.RoundInterval = cmp.Or(c.RoundInterval, RoundIntervalDefault)
	c.EventSpread = cmp.Or(c.EventSpread, EventSpreadDefault)
	c.MaxStarting = cmp.Or(c.MaxStarting, MaxStartingDefault)
	c.MaxConns = cmp.Or(c.MaxConns, MaxConnsDefault)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.SessionTTL < 10*time.Second || c.SessionTTL > 24*time.Hour:
		return errors.New("SessionTTL must be between 10s and 24h (Consul's limits)")
	case c.RenewInterval <= 0 || c.RenewInterval > c.SessionTTL/2:
		return errors.New("RenewInterval must be positive and at most half of SessionTTL")
	case c.EventSizeLimit < 128:
		return errors.New("EventSizeLimit must be at least 128")
	case c.RoundInterval < 0 || c.RoundInterval > time.Second:
		return errors.New("RoundInterval must be between 0 and 1s")
	case c.MaxStarting < 1:
		return errors.New("MaxStarting must be positive")
	case c.EventSpread < 0 || c.EventSpread > 10*time.Second:
		return errors.New("EventSpread must be between 0 and 10s")
	case c.MaxConns < 2 || c.MaxConns > 1000:
		return errors.New("MaxConns must be between 2 and 1000")
	case c.KVMaxValueSize < 1024:
		return errors.New("KVMaxValueSize must be at least 1024")
	case (c.TLS.CertFile == "") != (c.TLS.KeyFile == ""):
		return errors.New("TLS.CertFile and TLS.KeyFile go together")
	}
	return nil
}

// Client runs remote-exec jobs through one Consul agent.
type Client struct {
	cfg Config
	api *api.Client
	// fire carries event fires alone, over connections of their own: a
	// run marked firing must not wait for a connection behind other runs'
	// Raft writes (hundreds of runs starting at once fill the pool).
	fire *api.Client
	log  *slog.Logger

	// http and base carry the requests consul/api has no method for (the
	// ACL authorize endpoint wants POST) over the same transport, TLS and
	// address as every other request.
	http *http.Client
	base url.URL

	// starting is the start gate (enterStart): one token per run between
	// Prepare and the end of Fire.
	starting chan struct{}

	// watches are the shared key watches, by prefix (keywatch.go).
	watchMu sync.Mutex
	watches map[string]*keyWatch
}

// New validates cfg and returns a Client. It does not contact Consul.
func New(cfg Config) (*Client, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("consul config: %w", err)
	}
	// Built from scratch rather than from api.DefaultConfig, which reads
	// CONSUL_HTTP_TOKEN and friends: a connection is exactly what its
	// configuration says, whatever the process environment holds.
	ac, err := newAPI(cfg, cfg.MaxConns)
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	fc, err := newAPI(cfg, fireConns)
	if err != nil {
		return nil, err
	}
	fire, err := api.NewClient(fc)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	// api.NewClient completed ac: its HTTP client, scheme, address and
	// path prefix are the ones every consul/api request uses.
	base := url.URL{Scheme: ac.Scheme, Host: ac.Address, Path: ac.PathPrefix}
	return &Client{cfg: cfg, api: client, fire: fire, log: cfg.Logger, http: ac.HttpClient, base: base,
		starting: make(chan struct{}, cfg.MaxStarting)}, nil
}

// fireConns bounds the connections that carry event fires.
const fireConns = 4

// newAPI is the consul/api configuration of cfg, over an HTTP client of its
// own with at most maxConns connections (cfg.HTTPClient's copy when set).
func newAPI(cfg Config, maxConns int) (*api.Config, error) {
	ac := &api.Config{
		Address:    cfg.Address,
		Scheme:     "http",
		Datacenter: cfg.Datacenter,
		Token:      cfg.Token,
		Transport:  transport(maxConns),
	}
	if cfg.TLS.on() {
		ac.Scheme = "https"
		ac.TLSConfig = api.TLSConfig{
			Address:            cfg.TLS.ServerName,
			CAFile:             cfg.TLS.CAFile,
			CertFile:           cfg.TLS.CertFile,
			KeyFile:            cfg.TLS.KeyFile,
			InsecureSkipVerify: cfg.TLS.InsecureSkipVerify,
		}
	}
	if cfg.HTTPClient != nil {
		// A copy: the metrics' transport goes on this client's copy, not
		// on one the caller may share between clients.
		hc := *cfg.HTTPClient
		ac.HttpClient = &hc
	} else {
		// Made here, with exactly this TLS configuration: api.NewClient
		// would fill empty TLS fields from CONSUL_CACERT,
		// CONSUL_HTTP_SSL_VERIFY and the like.
		hc, err := api.NewHttpClient(ac.Transport, ac.TLSConfig)
		if err != nil {
			return nil, fmt.Errorf("consul client: %w", err)
		}
		ac.HttpClient = hc
	}
	// api.NewClient still takes the token (CONSUL_HTTP_TOKEN,
	// CONSUL_HTTP_TOKEN_FILE) and namespace from the environment when the
	// configuration has none: the transport puts back what the tenant's
	// configuration says, so that a tenant without a token never speaks
	// with the service's. api.NewClient keeps this HTTP client.
	ac.HttpClient.Transport = cfg.Metrics.ConsulTransport(pinnedIdentity{token: cfg.Token, next: ac.HttpClient.Transport})
	return ac, nil
}

// transport is a pooled transport that opens at most maxConns connections
// to the agent and keeps as many idle: cleanhttp's keeps GOMAXPROCS+1
// idle, so a burst of requests from many runs would open and close
// connections by the hundred.
func transport(maxConns int) *http.Transport {
	t := cleanhttp.DefaultPooledTransport()
	t.MaxConnsPerHost = maxConns
	t.MaxIdleConnsPerHost = maxConns
	return t
}

// API returns the underlying consul/api client.
func (c *Client) API() *api.Client { return c.api }

// pinnedIdentity sends every request with exactly the configured token
// (none when empty) and no namespace or partition, whatever consul/api took
// from the process environment.
type pinnedIdentity struct {
	token string
	next  http.RoundTripper
}

func (p pinnedIdentity) RoundTrip(req *http.Request) (*http.Response, error) {
	q := req.URL.Query()
	if req.Header.Get("X-Consul-Token") == p.token && req.Header.Get("Authorization") == "" && !q.Has("ns") && !q.Has("partition") {
		return p.next.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	r.Header.Del("Authorization")
	r.Header.Del("X-Consul-Token")
	if p.token != "" {
		r.Header.Set("X-Consul-Token", p.token)
	}
	if q.Has("ns") || q.Has("partition") {
		q.Del("ns")
		q.Del("partition")
		r.URL.RawQuery = q.Encode()
	}
	return p.next.RoundTrip(r)
}
