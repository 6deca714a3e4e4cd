package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// Defaults of a CatalogView.
const (
	ViewWaitTimeDefault    = 30 * time.Second
	ViewMinIntervalDefault = 50 * time.Millisecond
	ViewGraceDefault       = 5 * time.Second
	ViewSyncWaitDefault    = 5 * time.Second
	ViewBackoffMinDefault  = 250 * time.Millisecond
	ViewBackoffMaxDefault  = 30 * time.Second
	// ViewProbeWait is the wait of the blocking round that proves a
	// broken watch has recovered.
	ViewProbeWait = time.Second
)

// Sources of a resolution (ResolveInfo.Source).
const (
	// SourceView: the targets were matched against the view's snapshot.
	SourceView = "view"
	// SourceDirect: the view could not vouch for its snapshot, and the
	// catalog was read directly (ReadCatalog).
	SourceDirect = "direct"
)

// ErrViewClosed is returned by the resolutions of a closed view.
var ErrViewClosed = errors.New("catalog view closed")

// ViewConfig configures a CatalogView. Zero values mean the defaults.
type ViewConfig struct {
	// WaitTime is how long one blocking query waits for the catalog to
	// change before Consul answers with it unchanged; an answer, changed
	// or not, is the view's proof of contact. Default: 30s.
	WaitTime time.Duration
	// MinInterval is the least time between the starts of two rounds, so
	// that a burst of changes is read once rather than once each. It adds
	// at most this much to the view's lag. Default: 50ms.
	MinInterval time.Duration
	// Grace is the time an answer may take beyond WaitTime and Consul's
	// jitter (WaitTime/16) before the view counts as broken. Default: 5s.
	Grace time.Duration
	// SyncWait bounds how long a resolution waits for a new view's first
	// round before it reads the catalog directly. Default: 5s.
	SyncWait time.Duration
	// BackoffMin and BackoffMax bound the wait after a failed round, which
	// doubles with each failure in a row. Defaults: 250ms and 30s.
	BackoffMin, BackoffMax time.Duration
	// Logger receives a warning once per breakage and a note on recovery.
	// Default: the client's logger.
	Logger *slog.Logger
}

// WithDefaults returns a copy of c with every zero field set to its
// default.
func (c ViewConfig) WithDefaults() ViewConfig {
	c.WaitTime = cmp.Or(c.WaitTime, ViewWaitTimeDefault)
	c.MinInterval = cmp.Or(c.MinInterval, ViewMinIntervalDefault)
	c.Grace = cmp.Or(c.Grace, ViewGraceDefault)
	c.SyncWait = cmp.Or(c.SyncWait, ViewSyncWaitDefault)
	c.BackoffMin = cmp.Or(c.BackoffMin, ViewBackoffMinDefault)
	c.BackoffMax = cmp.Or(c.BackoffMax, ViewBackoffMaxDefault)
	return c
}

// MaxAge is the longest a healthy view goes without an answer from
// Consul: a blocking query answers within WaitTime plus Consul's jitter
// of up to WaitTime/16; Grace covers the round trip and a slow agent.
// Past it, the view is broken.
func (c ViewConfig) MaxAge() time.Duration {
	return c.WaitTime + c.WaitTime/16 + c.Grace + c.MinInterval
}

// ResolveInfo says where a resolution's targets came from.
type ResolveInfo struct {
	// Index is the Raft index of the catalog the targets were matched
	// against.
	Index uint64
	// Source is SourceView or SourceDirect.
	Source string
	// Reason says why the view was not used (SourceDirect only).
	Reason string
}

// CatalogView is a tenant's view of the catalog, kept current with
// blocking queries and shared by every resolution: a resolution matches
// the latest snapshot in memory, with no lock and no request.
//
// A round is one blocking query on the agent's node dump
// (/v1/internal/ui/nodes, what Consul's UI lists nodes with): every node
// with its services, tags and checks, read in one state-store transaction,
// under one index, that answers as soon as a node, service or check changes
// (or after WaitTime, unchanged). One request and one connection per
// tenant, however many services: the public endpoints would need a
// blocking query per service name to see tag changes, each at its own
// index. Each answer publishes a new immutable Catalog.
//
// The view vouches for its snapshot only while its last round succeeded
// and the last answer is younger than MaxAge. Otherwise — a round failed
// (the agent is down, refuses the token, lacks the endpoint) or no answer
// came in time (a hung agent) — a resolution reads the catalog directly
// with ReadCatalog and says so in its ResolveInfo, and the view logs a
// warning once per breakage. It never serves an old snapshot silently.
type CatalogView struct {
	client *Client
	cfg    ViewConfig
	log    *slog.Logger

	state  atomic.Pointer[viewState]
	synced chan struct{} // closed when the first round ends, either way
	// broken is set while a breakage has been reported, so that it is
	// reported once.
	broken atomic.Bool

	cancel context.CancelFunc
	done   chan struct{}
}

// viewState is the outcome of the view's latest round.
type viewState struct {
	cat *Catalog  // the latest snapshot; nil before the first success
	at  time.Time // when Consul last answered; zero before
	err error     // the latest round's error; nil when it succeeded
}

// NewCatalogView starts a view of the catalog client's agent serves, with
// client's token. Close stops it.
func NewCatalogView(client *Client, cfg ViewConfig) *CatalogView {
	cfg = cfg.WithDefaults()
	if cfg.Logger == nil {
		cfg.Logger = client.log
	}
	ctx, cancel := context.WithCancel(context.Background())
	v := &CatalogView{client: client, cfg: cfg, log: cfg.Logger, synced: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	v.state.Store(&viewState{})
	go v.run(ctx)
	return v
}

// Close stops the view's watch and waits for it to end.
func (v *CatalogView) Close() {
	v.cancel()
	<-v.done
}

// Snapshot returns the latest catalog and whether the view vouches for
// it (see CatalogView); the reason when it does not.
func (v *CatalogView) Snapshot() (*Catalog, bool, string) {
	st := v.state.Load()
	select {
	case <-v.done:
		return st.cat, false, ErrViewClosed.Error()
	default:
	}
	switch {
	case st.err != nil:
		return st.cat, false, fmt.Sprintf("catalog watch failing: %v", st.err)
	case st.cat == nil:
		return nil, false, "catalog view not synced yet"
	}
	if age := time.Since(st.at); age > v.cfg.MaxAge() {
		return st.cat, false, fmt.Sprintf("no answer from Consul's catalog watch for %s (limit %s)", age.Round(time.Millisecond), v.cfg.MaxAge())
	}
	return st.cat, true, ""
}

// LastContact is when Consul last answered the view's watch (zero if
// never); Age is the time since.
func (v *CatalogView) LastContact() time.Time { return v.state.Load().at }

// Age is the time since Consul last answered the view's watch: at most
// about WaitTime while the view is healthy (see ViewConfig.MaxAge).
func (v *CatalogView) Age() time.Duration {
	at := v.LastContact()
	if at.IsZero() {
		return 0
	}
	return time.Since(at)
}

// Resolve returns the nodes spec's filters select (see Match), matched
// against the view's snapshot when the view vouches for it, and otherwise
// against a catalog read directly, which info reports with the reason.
func (v *CatalogView) Resolve(ctx context.Context, spec Spec) ([]Node, ResolveInfo, error) {
	spec = spec.WithDefaults()
	if _, _, _, err := compileFilters(spec); err != nil {
		return nil, ResolveInfo{}, err
	}
	if v.state.Load().at.IsZero() {
		// A new view: its first round is as fast as a direct read, and
		// after it every resolution is free.
		t := time.NewTimer(v.cfg.SyncWait)
		select {
		case <-v.synced:
		case <-v.done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	cat, ok, reason := v.Snapshot()
	if ok {
		nodes, err := Match(cat, spec)
		return nodes, ResolveInfo{Index: cat.Index, Source: SourceView}, err
	}
	if ctx.Err() != nil {
		return nil, ResolveInfo{}, ctx.Err()
	}
	select {
	case <-v.done: // closed under this resolution: nothing broke
	default:
		v.reportBroken(reason)
	}
	info := ResolveInfo{Source: SourceDirect, Reason: reason}
	cat, err := v.client.ReadCatalog(ctx)
	if err != nil {
		return nil, info, fmt.Errorf("%w (the catalog view cannot be used: %s)", err, reason)
	}
	info.Index = cat.Index
	nodes, err := Match(cat, spec)
	return nodes, info, err
}

// reportBroken logs a breakage, once until the view recovers.
func (v *CatalogView) reportBroken(reason string) {
	if v.broken.CompareAndSwap(false, true) {
		v.log.Warn("catalog view broken: resolving targets with direct catalog reads until it recovers",
			slog.String("agent", v.client.cfg.Address), slog.String("reason", reason))
	}
}

// run is the watch: one blocking round after another until ctx ends.
func (v *CatalogView) run(ctx context.Context) {
	defer close(v.done)
	var index uint64
	failures := 0
	first := true
	for {
		start := time.Now()
		// After a failure the watch is broken until a blocking round
		// succeeds again: the read that follows a failure does not block,
		// and a fault that cuts long requests only (a proxy's timeout)
		// would let it pass. A short blocking round proves recovery.
		wait := v.cfg.WaitTime
		if failures > 0 {
			wait = min(wait, ViewProbeWait)
		}
		// A round that outlives MaxAge has hung (a frozen agent): end it
		// and start again rather than wait on it.
		rctx, cancel := context.WithTimeout(ctx, v.cfg.MaxAge())
		cat, last, err := v.client.readNodeDump(rctx, index, wait)
		cancel()
		if ctx.Err() != nil {
			return
		}
		prev := v.state.Load()
		pause := v.cfg.MinInterval - time.Since(start)
		if err != nil {
			failures++
			// The next round reads at once rather than block on the old
			// index: the snapshot is current as soon as Consul answers.
			index = 0
			v.state.Store(&viewState{cat: prev.cat, at: prev.at, err: err})
			v.reportBroken(fmt.Sprintf("catalog watch failing: %v", err))
			pause = min(v.cfg.BackoffMin<<min(failures-1, 16), v.cfg.BackoffMax)
		} else {
			if cat == nil { // unchanged: the same snapshot, fresh again
				cat = prev.cat
			}
			if failures == 0 || index != 0 {
				failures = 0
				v.state.Store(&viewState{cat: cat, at: time.Now()})
				if v.broken.Swap(false) {
					v.log.Info("catalog view recovered", slog.String("agent", v.client.cfg.Address), slog.Uint64("index", cat.Index))
				}
			} else {
				v.state.Store(&viewState{cat: cat, at: time.Now(), err: prev.err})
			}
			// Consul's rules for blocking queries: an index that goes
			// backwards (a restored snapshot) starts over; never wait on 0.
			if last < index {
				index = 0
			} else {
				index = max(last, 1)
			}
		}
		if first {
			close(v.synced)
			first = false
		}
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// dumpNode is the part of a node in /v1/internal/ui/nodes that matters.
type dumpNode struct {
	Node     string
	Address  string
	Services []struct {
		ID      string
		Service string
		Tags    []string
	}
	Checks []struct {
		CheckID   string
		ServiceID string
		Status    string
	}
}

// readNodeDump reads the node dump, blocking until its index passes
// index (0: at once) or wait passes. It returns a nil Catalog when the
// index did not move, and the answer's index.
func (c *Client) readNodeDump(ctx context.Context, index uint64, wait time.Duration) (*Catalog, uint64, error) {
	var dump []dumpNode
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	meta, err := c.api.Raw().Query("/v1/internal/ui/nodes", &dump, q)
	if err != nil {
		return nil, 0, fmt.Errorf("read node dump: %w", err)
	}
	if index != 0 && meta.LastIndex == index {
		return nil, index, nil
	}
	byName := make(map[string]*Node, len(dump))
	for _, d := range dump {
		alive := false
		for _, ch := range d.Checks {
			if ch.CheckID == "serfHealth" && ch.ServiceID == "" {
				alive = ch.Status == api.HealthPassing
			}
		}
		if !alive {
			continue
		}
		n := &Node{Name: d.Node, Address: d.Address, Services: make([]Service, 0, len(d.Services))}
		for _, s := range d.Services {
			n.Services = append(n.Services, Service{ID: s.ID, Name: s.Service, Tags: nonNil(s.Tags)})
		}
		byName[d.Node] = n
	}
	return newCatalog(meta.LastIndex, byName), meta.LastIndex, nil
}
