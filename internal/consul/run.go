package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

var (
	// ErrSessionGone means the run's session no longer exists: it was
	// destroyed, or expired because nobody renewed it in time. Consul has
	// deleted every key it held.
	ErrSessionGone = errors.New("remote-exec session is gone")

	// ErrDetach, given as the cause when cancelling the context of
	// Execute (context.WithCancelCause), stops watching without tearing the
	// run down: the session is left to expire so that another process can
	// re-attach. Execute then returns ErrDetached.
	ErrDetach = errors.New("detach from run")

	// ErrDetached is returned by Execute after a detach or a handler error.
	ErrDetached = errors.New("detached from run; session left for re-attach")
)

// sessionName is the name `consul exec` gives its sessions.
const sessionName = "Remote Exec"

// Run is one remote execution: a session and the job spec under
// <prefix>/<session>/. Prepare or Attach creates it; Execute carries it out.
type Run struct {
	c       *Client
	spec    Spec
	targets []string
	groups  [][]string // the target names each pinned event names
	session string
	dir     string // <prefix>/<session>/

	fired     bool // true after firing or for an attached run
	firedAt   time.Time
	events    []FiredEvent
	renewStop context.CancelFunc
	renewDone chan struct{}
	lost      chan struct{} // closed when the session is found gone
	lostOnce  sync.Once
	known     []NodeResult // what earlier watchers stored (Restore)

	mu      sync.Mutex
	done    bool // closed or detached
	watched bool

	// started releases the run's place at the client's start gate (once):
	// when every target has acked, the run ended, or startHold after firing.
	started   func()
	holdTimer *time.Timer // releases the place startHold after firing
}

// Run resolves nothing: it prepares and executes spec on exactly targets.
// It is Prepare followed by Execute.
func (c *Client) Run(ctx context.Context, spec Spec, targets []Node, h Handler) (*Result, error) {
	r, err := c.Prepare(ctx, spec, targets)
	if err != nil {
		return nil, err
	}
	return r.Execute(ctx, h)
}

// Prepare validates spec and targets, creates the session and acquires the
// job spec, but fires nothing: a caller that must record the session before
// the command can run (to re-attach instead of firing again after a crash)
// does so between Prepare and Execute. A prepared run that will not be
// executed must be closed with Close.
func (c *Client) Prepare(ctx context.Context, spec Spec, targets []Node) (*Run, error) {
	spec = spec.WithDefaults()
	if err := spec.Validate(c.cfg.KVMaxValueSize); err != nil {
		return nil, err
	}
	names, err := targetNames(targets)
	if err != nil {
		return nil, err
	}
	// Every session ID has 36 bytes, so the events' sizes are known now:
	// refuse before writing anything.
	groups, err := pinnedGroups(names, encodePayload(spec.Prefix, strings.Repeat("0", 36)),
		spec.ServiceFilter, spec.TagFilter, c.cfg.EventSizeLimit)
	if err != nil {
		return nil, err
	}
	job, err := spec.encodeJob()
	if err != nil {
		return nil, fmt.Errorf("encode job spec: %w", err)
	}

	release, err := c.enterStart(ctx)
	if err != nil {
		return nil, err
	}
	session, err := c.createSession(ctx)
	if err != nil {
		release()
		return nil, err
	}
	r := c.newRun(spec, names, session)
	r.started = release
	r.groups = groups
	r.startRenewal()

	ok, _, err := c.api.KV().Acquire(&api.KVPair{Key: r.dir + "job", Value: job, Session: session},
		(&api.WriteOptions{}).WithContext(ctx))
	if err == nil && !ok {
		err = errors.New("lock not acquired")
	}
	if err != nil {
		r.teardown(ctx)
		return nil, fmt.Errorf("write job spec: %w", err)
	}
	c.log.DebugContext(ctx, "prepared remote exec", slog.String("session", session), slog.Int("targets", len(names)), slog.Int("events", len(groups)))
	return r, nil
}

// Attach resumes watching a run that another process prepared and fired,
// without firing again. It fails with ErrSessionGone when the session no
// longer exists; the caller should then count every unfinished node lost.
// spec must carry the run's prefix and wait settings; targets its frozen set.
func (c *Client) Attach(ctx context.Context, spec Spec, session string, targets []Node) (*Run, error) {
	spec = spec.WithDefaults()
	if err := validatePrefix(spec.Prefix); err != nil {
		return nil, err
	}
	names, err := targetNames(targets)
	if err != nil {
		return nil, err
	}
	entry, _, err := c.api.Session().Info(session, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("look up session: %w", err)
	}
	r := c.newRun(spec, names, session)
	r.fired = true
	if entry == nil {
		// Consul deleted what the session held; remove any stragglers.
		r.teardown(ctx)
		return nil, ErrSessionGone
	}
	r.startRenewal()
	return r, nil
}

func targetNames(targets []Node) ([]string, error) {
	if len(targets) == 0 {
		return nil, ErrNoTargets
	}
	names := make([]string, len(targets))
	for i, t := range targets {
		if t.Name == "" {
			return nil, errors.New("target with an empty node name")
		}
		names[i] = t.Name
	}
	slices.Sort(names)
	if len(slices.Compact(slices.Clone(names))) != len(names) {
		return nil, errors.New("duplicate target node")
	}
	return names, nil
}

func (c *Client) newRun(spec Spec, names []string, session string) *Run {
	return &Run{
		c: c, spec: spec, targets: names, session: session,
		dir:  path.Join(spec.Prefix, session) + "/",
		lost: make(chan struct{}),
	}
}

// Session is the run's Consul session ID. Record it before Execute to be
// able to re-attach.
func (r *Run) Session() string { return r.session }

// createSession creates a session like `consul exec` does — Behavior
// delete, so that destroying or losing it deletes every key it holds — but
// with no health checks: a TTL-only session, renewed by its holder. A
// session made through an agent otherwise carries that agent's serfHealth
// check, and a restart of the one agent the tenant talks to would
// invalidate every session in flight and delete the agents' unread output.
// In a foreign datacenter it is bound to a server there, since the local
// agent is not a node of that datacenter.
func (c *Client) createSession(ctx context.Context) (string, error) {
	wo := (&api.WriteOptions{}).WithContext(ctx)
	entry := &api.SessionEntry{Name: sessionName, Behavior: api.SessionBehaviorDelete, TTL: c.cfg.SessionTTL.String()}
	if c.cfg.Datacenter != "" {
		self, err := c.api.Agent().Self()
		if err != nil {
			return "", fmt.Errorf("query local agent: %w", err)
		}
		localDC, _ := self["Config"]["Datacenter"].(string)
		if localDC != c.cfg.Datacenter {
			server, err := c.foreignServer(ctx)
			if err != nil {
				return "", err
			}
			localNode, _ := self["Config"]["NodeName"].(string)
			entry.Name = fmt.Sprintf("%s via %s@%s", sessionName, localNode, localDC)
			entry.Node = server
		}
	}
	id, _, err := c.api.Session().CreateNoChecks(entry, wo)
	if err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	return id, nil
}

// foreignServer is the node a session in the configured (foreign)
// datacenter is bound to: its first healthy Consul server. The ACL
// preflight asks about the same node.
func (c *Client) foreignServer(ctx context.Context) (string, error) {
	svcs, _, err := c.api.Health().Service("consul", "", true, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("find a Consul server in datacenter %s: %w", c.cfg.Datacenter, err)
	}
	if len(svcs) == 0 {
		return "", fmt.Errorf("find a Consul server in datacenter %s: none is healthy", c.cfg.Datacenter)
	}
	return svcs[0].Node.Node, nil
}

// Discard destroys a session and deletes its run's tree under prefix: for
// a prepared run that was never fired and that no process holds any more
// (an earlier attempt's, recorded but abandoned).
func (c *Client) Discard(ctx context.Context, prefix, session string) error {
	if err := validatePrefix(prefix); err != nil {
		return err
	}
	r := c.newRun(Spec{Prefix: prefix}, nil, session)
	return r.destroy(ctx)
}

// startRenewal renews the session every RenewInterval until teardown or
// detach. Transient errors are retried at the next tick: the TTL leaves
// room for two misses. A session that no longer exists closes r.lost.
func (r *Run) startRenewal() {
	ctx, cancel := context.WithCancel(context.Background())
	r.renewStop = cancel
	r.renewDone = make(chan struct{})
	go func() {
		defer close(r.renewDone)
		t := time.NewTicker(r.c.cfg.RenewInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			entry, _, err := r.c.api.Session().Renew(r.session, (&api.WriteOptions{}).WithContext(ctx))
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				r.c.log.WarnContext(ctx, "renew remote-exec session", slog.String("session", r.session), slog.Any("error", err))
			case entry == nil:
				r.markLost(ctx)
				return
			}
		}
	}()
}

// markLost records that the session is gone.
func (r *Run) markLost(ctx context.Context) {
	r.lostOnce.Do(func() {
		r.c.log.WarnContext(ctx, "remote-exec session is gone", slog.String("session", r.session))
		close(r.lost)
	})
}

// checkSession asks Consul whether the session still exists, and marks
// the run lost if not. Errors say nothing: renewal goes on asking.
func (r *Run) checkSession(ctx context.Context) {
	entry, _, err := r.c.api.Session().Info(r.session, (&api.QueryOptions{}).WithContext(ctx))
	if err == nil && entry == nil {
		r.markLost(ctx)
	}
}

// Restore tells an attached run, before Watch, how its nodes stood when
// the previous watcher stopped: what that watcher's handler stored. Stored
// acks and exits leave KV during a run, so a re-attached watcher would
// otherwise take a node that already exited for one that never answered,
// and wait out the quiet period for it. Nodes with State NodeExited count
// as exited with their ExitCode; nodes with AckedAt set as acknowledged;
// the rest are ignored.
func (r *Run) Restore(nodes []NodeResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.known = slices.Clone(nodes)
}

func (r *Run) stopRenewal() {
	if r.renewStop != nil {
		r.renewStop()
		<-r.renewDone
	}
}

// Close tears the run down: it destroys the session and deletes the run's
// KV tree. It is the caller's to call after Watch (or instead of Fire), at
// the moment it is entitled to: a caller that shares runs between
// processes closes a fired run only while it still holds it, so that a
// process that stalled past its claim never destroys what another now
// watches. Renewal goes on until Close or Detach. Close is a no-op after
// Close or Detach; it reports an error when Consul could not be told, in
// which case the session expires by its TTL.
func (r *Run) Close(ctx context.Context) error {
	r.mu.Lock()
	if r.done {
		r.mu.Unlock()
		return nil
	}
	r.done = true
	r.mu.Unlock()
	r.leaveStart()
	r.stopRenewal()
	return r.destroy(ctx)
}

// teardown is Close for the engine's own failure paths.
func (r *Run) teardown(ctx context.Context) {
	_ = r.Close(ctx)
}

// destroy destroys the session first, so that agents' further writes fail,
// then deletes the tree for anything left, on a context that outlives the
// caller's cancellation.
func (r *Run) destroy(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), TeardownTimeout)
	defer cancel()
	wo := (&api.WriteOptions{}).WithContext(ctx)
	var errs []error
	if _, err := r.c.api.Session().Destroy(r.session, wo); err != nil {
		r.c.log.WarnContext(ctx, "destroy remote-exec session", slog.String("session", r.session), slog.Any("error", err))
		errs = append(errs, fmt.Errorf("destroy session: %w", err))
	}
	if _, err := r.c.api.KV().DeleteTree(strings.TrimSuffix(r.dir, "/"), wo); err != nil {
		r.c.log.WarnContext(ctx, "delete remote-exec prefix", slog.String("prefix", r.dir), slog.Any("error", err))
		errs = append(errs, fmt.Errorf("delete prefix: %w", err))
	}
	return errors.Join(errs...)
}

// Detach stops renewing and leaves everything in place, for another
// process to re-attach (or for Consul to reap after the session's TTL).
func (r *Run) Detach() {
	r.mu.Lock()
	r.done = true
	r.mu.Unlock()
	r.leaveStart()
	r.stopRenewal()
}

// Execute fires the run's event(s) (unless the run was attached), watches
// it to its end and closes it: Fire(ctx, nil), Watch(ctx, h), Close.
func (r *Run) Execute(ctx context.Context, h Handler) (*Result, error) {
	if !r.fired {
		if err := r.Fire(ctx, nil); err != nil {
			if errors.Is(err, ErrFireFailed) {
				r.teardown(ctx)
			}
			return nil, err
		}
	}
	res, err := r.Watch(ctx, h)
	if err == nil {
		r.teardown(ctx)
	}
	return res, err
}

// ErrNotFired wraps every error of Fire before its before hook succeeded:
// nothing was fired, and the run is torn down.
var ErrNotFired = errors.New("nothing fired")

// ErrFireFailed wraps an error of Fire's first event after the before
// hook succeeded: nothing reached the agents, but the run is left in place
// for the caller to close.
var ErrFireFailed = errors.New("the event could not be fired")

// Fire waits wait-repl, calls before (when not nil) at the last moment
// nothing has been fired — a caller records there that the command may now
// run — and fires one event per pinned filter. On any error up to and
// including before's, or a cancelled or detached ctx meanwhile, the run is
// torn down and the error wraps ErrNotFired, as is a failed first event
// when there is no before hook. Once before has returned nil the events go
// out whatever happens to ctx, and nothing is torn down here: if the first
// event fails the error wraps ErrFireFailed and the run is left for the
// caller to close (it is marked firing elsewhere, and only
// the caller knows whether it may still tear it down). If a later event
// fails after an earlier one went out, the run goes on: those nodes were
// told, and the rest will end no_ack.
func (r *Run) Fire(ctx context.Context, before func(context.Context) error) error {
	r.mu.Lock()
	if r.done || r.fired {
		r.mu.Unlock()
		return fmt.Errorf("%w: run already fired, attached or closed", ErrNotFired)
	}
	r.mu.Unlock()
	// A fired run keeps its place at the start gate until every target
	// acks, the run ends, or startHold passes (enterStart).
	defer func() {
		if !r.fired {
			r.leaveStart()
		} else if r.started != nil {
			r.holdTimer = time.AfterFunc(startHold, r.started)
		}
	}()
	fail := func(err error) error {
		r.teardown(ctx)
		return fmt.Errorf("%w: %w", ErrNotFired, err)
	}
	t := time.NewTimer(r.spec.WaitRepl)
	select {
	case <-ctx.Done():
		t.Stop()
		return fail(fmt.Errorf("wait-repl: %w", context.Cause(ctx)))
	case <-t.C:
	}
	if before != nil {
		if err := before(ctx); err != nil {
			return fail(err)
		}
	}
	payload := encodePayload(r.spec.Prefix, r.session)
	for i, group := range r.groups {
		ev := &api.UserEvent{Name: eventName, Payload: payload, NodeFilter: anchoredFilter(group), ServiceFilter: r.spec.ServiceFilter, TagFilter: r.spec.TagFilter}
		// Once marked firing (or once one event went out), the events must
		// go out whatever happens to ctx: a cancel that lost the race to
		// the mark is handled after.
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if before != nil || i > 0 {
			fctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), TeardownTimeout)
		}
		id, _, err := r.c.fire.Event().Fire(ev, (&api.WriteOptions{}).WithContext(fctx))
		cancel()
		if err != nil {
			if i == 0 && before == nil {
				return fail(fmt.Errorf("fire event: %w", err))
			}
			if i == 0 {
				return fmt.Errorf("%w: %w", ErrFireFailed, err)
			}
			r.c.log.ErrorContext(ctx, "fire event", slog.Int("event", i+1), slog.Int("of", len(r.groups)), slog.Any("error", err))
			break
		}
		if i == 0 {
			r.firedAt = time.Now()
		}
		r.events = append(r.events, FiredEvent{ID: id, Nodes: group})
	}
	r.fired = true
	return nil
}

// FiredEvent is one user event that went out: the ID Consul gave it and
// the target nodes its pinned filter names.
type FiredEvent struct {
	ID    string   `json:"id"`
	Nodes []string `json:"nodes"`
}

// FiredAt is when the first event went out (zero before, or for an
// attached run), and the events that did, in order.
func (r *Run) FiredAt() (time.Time, []FiredEvent) { return r.firedAt, r.events }

// enterStart waits for a place at the client's start gate: at most
// MaxStarting runs are between Prepare and the ack of their last target at
// once. A run waiting here has written nothing yet.
//
// The gate paces runs to what gossip carries. Consul accepts a fire at
// once, but serf sends a few user events per gossip interval from each
// node, freshest first, and relays them the same way: on the benchmark's
// 5-node cluster it carried 20–25 events a second. Runs fired faster wait
// in serf's queues, where older events lose out to newer ones and some
// nodes do not hear of them in time (the agents' logs showed each missing
// a few of 500, and the kernel dropped no datagram); the quiet period then
// ends such a run with those nodes no_ack, though the command never ran
// there (at 100 runs a second, 9 of 500 runs; at 32 a second, with 16
// places held up to the first ack, 5–16 of 500). With 4 places, runs are
// fired at about the rate the cluster carries them (18–23 a second there)
// and none was lost; the rest wait here, and a caller's bound on starting
// is still checked when it fires (Fire's before hook).
//
// A fired run keeps its place until every target has acked, not just the
// first: serf sends the freshest events first, so a new event reaches its
// nearest target quickly however congested gossip is, while older events
// wait for their remaining transmissions. Only the last ack says the event
// is through. It gives the place up at its end, or after startHold,
// whichever comes first: a run with a target that never answers (remote
// exec disabled there, or the node died) would otherwise hold it for its
// whole quiet period. The hold bounds such runs to MaxStarting/startHold
// fires a second, fewer than gossip carries, so they cannot congest it by
// themselves.
//
// The gate was first made for reasons that still hold:
// hundreds of runs claimed together would otherwise create their sessions
// and job specs all at once, and a run marked firing could wait longer for
// its event to be accepted than it may (a worker's 500 runs at once lost a
// quarter of their fires to timeouts).
func (c *Client) enterStart(ctx context.Context) (release func(), err error) {
	select {
	case c.starting <- struct{}{}:
	default:
		waited := c.cfg.Metrics.StartWaiting()
		select {
		case c.starting <- struct{}{}:
			waited()
		case <-ctx.Done():
			waited()
			return nil, fmt.Errorf("wait to start: %w", context.Cause(ctx))
		}
	}
	var once sync.Once
	return func() { once.Do(func() { <-c.starting }) }, nil
}

// startHold is the longest a fired run keeps its place at the start gate
// before all its targets acked (enterStart): five gossip intervals, about
// what an event takes to reach the last of 31 agents (540–800 ms).
const startHold = time.Second

// leaveStart releases the run's place at the start gate, if it holds one.
func (r *Run) leaveStart() {
	if r.holdTimer != nil {
		r.holdTimer.Stop()
	}
	if r.started != nil {
		r.started()
	}
}
