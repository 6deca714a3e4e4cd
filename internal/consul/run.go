package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"slices"
	"strconv"
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
	filters []string
	session string
	dir     string // <prefix>/<session>/

	fired     bool // true after firing or for an attached run
	firedAt   time.Time
	events    int
	renewStop context.CancelFunc
	renewDone chan struct{}
	lost      chan struct{} // closed when renewal finds the session gone
	lostOnce  sync.Once

	mu      sync.Mutex
	done    bool // closed or detached
	watched bool
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
	filters, err := pinnedFilters(names, encodePayload(spec.Prefix, strings.Repeat("0", 36)),
		spec.ServiceFilter, spec.TagFilter, c.cfg.EventSizeLimit)
	if err != nil {
		return nil, err
	}
	job, err := spec.encodeJob()
	if err != nil {
		return nil, fmt.Errorf("encode job spec: %w", err)
	}

	session, err := c.createSession(ctx)
	if err != nil {
		return nil, err
	}
	r := c.newRun(spec, names, session)
	r.filters = filters
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
	c.log.DebugContext(ctx, "prepared remote exec", slog.String("session", session), slog.Int("targets", len(names)), slog.Int("events", len(filters)))
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
			svcs, _, err := c.api.Health().Service("consul", "", true, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return "", fmt.Errorf("find a Consul server in datacenter %s: %w", c.cfg.Datacenter, err)
			}
			if len(svcs) == 0 {
				return "", fmt.Errorf("find a Consul server in datacenter %s: none is healthy", c.cfg.Datacenter)
			}
			localNode, _ := self["Config"]["NodeName"].(string)
			entry.Name = fmt.Sprintf("%s via %s@%s", sessionName, localNode, localDC)
			entry.Node = svcs[0].Node.Node
		}
	}
	id, _, err := c.api.Session().CreateNoChecks(entry, wo)
	if err != nil {
		return "", fmt.Errorf("create session: %w", err)
	}
	return id, nil
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
				r.c.log.WarnContext(ctx, "remote-exec session is gone", slog.String("session", r.session))
				r.lostOnce.Do(func() { close(r.lost) })
				return
			}
		}
	}()
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
	for i, f := range r.filters {
		ev := &api.UserEvent{Name: eventName, Payload: payload, NodeFilter: f, ServiceFilter: r.spec.ServiceFilter, TagFilter: r.spec.TagFilter}
		// Once marked firing (or once one event went out), the events must
		// go out whatever happens to ctx: a cancel that lost the race to
		// the mark is handled after.
		fctx, cancel := ctx, context.CancelFunc(func() {})
		if before != nil || i > 0 {
			fctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), TeardownTimeout)
		}
		_, _, err := r.c.api.Event().Fire(ev, (&api.WriteOptions{}).WithContext(fctx))
		cancel()
		if err != nil {
			if i == 0 && before == nil {
				return fail(fmt.Errorf("fire event: %w", err))
			}
			if i == 0 {
				return fmt.Errorf("%w: %w", ErrFireFailed, err)
			}
			r.c.log.ErrorContext(ctx, "fire event", slog.Int("event", i+1), slog.Int("of", len(r.filters)), slog.Any("error", err))
			break
		}
		if i == 0 {
			r.firedAt = time.Now()
		}
		r.events++
	}
	r.fired = true
	return nil
}

// FiredAt is when the first event went out (zero before, or for an
// attached run), and Events how many did.
func (r *Run) FiredAt() (time.Time, int) { return r.firedAt, r.events }

// Watch watches a fired or attached run and hands the agents' reports to h
// as they arrive. It returns once every expected node has exited, or the
// quiet period passed, or ctx ended; the session is still renewed then,
// and the caller closes the run (Close) when it has recorded the result.
//
// Cancelling ctx cancels the run: Watch returns OutcomeCancelled and
// unfinished nodes are NodeCancelled; stock agents keep running the
// command, and only stop uploading once the run is closed. Cancelling with
// cause ErrDetach instead leaves the run for another process to re-attach,
// as does a handler error that wraps ErrDetach; then Watch detaches and
// returns an error. Any other handler error is retried with backoff, for
// as long as it takes, without reading further reports: a handler that
// cannot store (its database is away) holds the agents' output in Consul,
// where the renewed session keeps it.
func (r *Run) Watch(ctx context.Context, h Handler) (*Result, error) {
	r.mu.Lock()
	if r.done || !r.fired || r.watched {
		r.mu.Unlock()
		return nil, errors.New("run not fired, or already watched or closed")
	}
	r.watched = true
	r.mu.Unlock()
	w := newWatcher(r, h)
	outcome, err := w.watch(ctx)
	if err != nil || outcome == "" {
		r.Detach()
		if err == nil {
			err = ErrDetached
		}
		return nil, err
	}
	return &Result{
		Session: r.session, Outcome: outcome, Nodes: w.results(outcome),
		Events: r.events, FiredAt: r.firedAt, FinishedAt: time.Now(),
	}, nil
}

func detaching(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), ErrDetach)
}

// nodeState is what the watcher knows of one expected node.
type nodeState struct {
	ackedAt  time.Time
	exitedAt time.Time
	exitCode int
}

// watcher reads the run's KV tree with blocking queries.
type watcher struct {
	r        *Run
	h        Handler
	nodes    map[string]*nodeState
	seen     map[string]bool // keys already handed to h
	unknown  map[string]bool // nodes outside the target set, warned once
	acked    int
	exited   int
	toDelete []string // confirmed chunk keys still in KV
}

func newWatcher(r *Run, h Handler) *watcher {
	w := &watcher{r: r, h: h, nodes: map[string]*nodeState{}, seen: map[string]bool{}, unknown: map[string]bool{}}
	for _, n := range r.targets {
		w.nodes[n] = &nodeState{}
	}
	return w
}

// watch returns the outcome, or "" and an error when the run must be left
// for re-attach (handler error, detach, or Consul unreachable for too long).
func (w *watcher) watch(ctx context.Context) (Outcome, error) {
	r := w.r
	kv := r.c.api.KV()
	lastActivity := time.Now()
	var index uint64
	var failingSince, lastRound time.Time
	// Blocking reads end early when the session is found gone.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.lost:
			cancel()
		case <-wctx.Done():
		}
	}()
	for {
		if w.exited == len(w.nodes) {
			return OutcomeCompleted, nil
		}
		quiet := r.spec.Wait
		if w.acked > w.exited {
			quiet *= 2
		}
		remaining := time.Until(lastActivity.Add(quiet))
		if remaining <= 0 {
			return OutcomeQuiet, nil
		}
		select {
		case <-r.lost:
			return OutcomeSessionLost, nil
		default:
		}
		if ctx.Err() != nil {
			if detaching(ctx) {
				// Spare the next watcher chunks that are already stored.
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), TeardownTimeout)
				w.deleteConfirmed(dctx)
				cancel()
				return "", ErrDetached
			}
			return OutcomeCancelled, nil
		}
		w.deleteConfirmed(ctx)
		if wait := time.Until(lastRound.Add(r.c.cfg.RoundInterval)); wait > 0 {
			select {
			case <-time.After(wait):
			case <-wctx.Done():
			}
		}
		lastRound = time.Now()
		pairs, meta, err := kv.List(r.dir, (&api.QueryOptions{WaitIndex: index, WaitTime: remaining}).WithContext(wctx))
		if err != nil {
			if ctx.Err() != nil || isClosed(r.lost) {
				continue // classified at the top of the loop
			}
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			if time.Since(failingSince) > r.c.cfg.SessionTTL {
				return "", fmt.Errorf("read run results: %w", err)
			}
			r.c.log.WarnContext(ctx, "read run results", slog.String("session", r.session), slog.Any("error", err))
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
			// Never declare a run quiet on a read that failed.
			lastActivity = time.Now()
			continue
		}
		failingSince = time.Time{}
		if meta.LastIndex < index {
			index = 0 // the index went backwards (a restored snapshot): start over
		} else {
			index = meta.LastIndex
		}
		events := w.collect(pairs)
		if len(events) == 0 {
			continue
		}
		// The handler stores what the agents reported even when the run is
		// being cancelled: that output was produced and belongs in the
		// archive.
		if err := w.handle(ctx, events); err != nil {
			return "", err
		}
		// The quiet period starts once the handler is done: time it spent
		// storing (a busy database) must not make stragglers look silent,
		// since nothing was read meanwhile.
		lastActivity = time.Now()
		for _, e := range events {
			if e.Kind == EventOutput || e.Kind == EventHeartbeat {
				w.toDelete = append(w.toDelete, chunkKey(r.dir, e.Node, e.Seq))
			}
		}
	}
}

// handle hands events to the handler until it takes them. Errors other
// than a detach are retried with backoff, even once ctx is cancelled: what
// the agents reported belongs in the archive, and is not read again.
func (w *watcher) handle(ctx context.Context, events []Event) error {
	backoff := handlerBackoffMin
	for failures := 0; ; failures++ {
		hctx, hcancel := context.WithTimeout(context.WithoutCancel(ctx), HandlerTimeout)
		err := w.h(hctx, events)
		hcancel()
		switch {
		case err == nil:
			if failures > 0 {
				w.r.c.log.InfoContext(ctx, "handler recovered", slog.String("session", w.r.session), slog.Int("failures", failures))
			}
			return nil
		case errors.Is(err, ErrDetach):
			return fmt.Errorf("handle events: %w", err)
		case detaching(ctx):
			return fmt.Errorf("handle events: %w", ErrDetached)
		}
		if failures == 0 || failures%10 == 0 {
			w.r.c.log.WarnContext(ctx, "handler failed; retrying, reports stay in Consul", slog.String("session", w.r.session),
				slog.Int("failures", failures+1), slog.Any("error", err))
		}
		// A cancelled (not detached) ctx stays so: only a detach, which
		// comes first if at all, cuts the wait short.
		done := ctx.Done()
		if ctx.Err() != nil {
			done = nil
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-done:
			t.Stop()
			if detaching(ctx) {
				return fmt.Errorf("handle events: %w", ErrDetached)
			}
		}
		backoff = min(2*backoff, handlerBackoffMax)
	}
}

// Handler retry backoff.
const (
	handlerBackoffMin = 100 * time.Millisecond
	handlerBackoffMax = 5 * time.Second
)

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func chunkKey(dir, node string, seq int) string {
	return fmt.Sprintf("%s%s/out/%05x", dir, node, seq)
}

// collect turns the keys not seen before into events, in per-node order.
func (w *watcher) collect(pairs api.KVPairs) []Event {
	type nodeNews struct {
		ack    bool
		chunks []Event
		exit   *Event
	}
	news := map[string]*nodeNews{}
	get := func(n string) *nodeNews {
		if news[n] == nil {
			news[n] = &nodeNews{}
		}
		return news[n]
	}
	now := time.Now()
	for _, p := range pairs {
		if w.seen[p.Key] {
			continue
		}
		rel := strings.TrimPrefix(p.Key, w.r.dir)
		if rel == "job" {
			continue
		}
		var node string
		var ev Event
		switch {
		case strings.HasSuffix(rel, "/ack"):
			node = strings.TrimSuffix(rel, "/ack")
			ev = Event{Kind: EventAck}
		case strings.HasSuffix(rel, "/exit"):
			node = strings.TrimSuffix(rel, "/exit")
			code, err := strconv.Atoi(strings.TrimSpace(string(p.Value)))
			if err != nil {
				w.r.c.log.Warn("unparsable exit code", slog.String("key", p.Key), slog.String("value", string(p.Value)))
				continue
			}
			ev = Event{Kind: EventExit, ExitCode: code}
		case strings.Contains(rel, "/out/"):
			i := strings.LastIndex(rel, "/out/")
			node = rel[:i]
			seq, err := strconv.ParseUint(rel[i+len("/out/"):], 16, 31)
			if err != nil {
				w.r.c.log.Warn("unknown key", slog.String("key", p.Key))
				continue
			}
			ev = Event{Kind: EventOutput, Seq: int(seq), Data: p.Value}
			if len(p.Value) == 0 {
				ev = Event{Kind: EventHeartbeat, Seq: int(seq)}
			}
		default:
			w.r.c.log.Warn("unknown key", slog.String("key", p.Key))
			continue
		}
		if w.nodes[node] == nil {
			if !w.unknown[node] {
				w.unknown[node] = true
				w.r.c.log.Warn("report from a node outside the target set; ignored", slog.String("node", node))
			}
			continue
		}
		w.seen[p.Key] = true
		ev.Node, ev.At = node, now
		nn := get(node)
		switch ev.Kind {
		case EventAck:
			nn.ack = true
		case EventExit:
			nn.exit = &ev
		default:
			nn.chunks = append(nn.chunks, ev)
		}
	}

	var out []Event
	for _, node := range w.r.targets {
		nn := news[node]
		if nn == nil {
			continue
		}
		st := w.nodes[node]
		// An exit implies an ack even if the ack key was missed.
		if (nn.ack || nn.exit != nil || len(nn.chunks) > 0) && st.ackedAt.IsZero() {
			st.ackedAt = now
			w.acked++
			out = append(out, Event{Kind: EventAck, Node: node, At: now})
		}
		slices.SortFunc(nn.chunks, func(a, b Event) int { return a.Seq - b.Seq })
		out = append(out, nn.chunks...)
		if nn.exit != nil && st.exitedAt.IsZero() {
			st.exitedAt, st.exitCode = now, nn.exit.ExitCode
			w.exited++
			out = append(out, *nn.exit)
		}
	}
	return out
}

// deleteConfirmed removes chunks the handler stored, in transactions of at
// most 64 operations (Consul's limit). Failures only leave the chunks for
// the teardown to remove.
func (w *watcher) deleteConfirmed(ctx context.Context) {
	for len(w.toDelete) > 0 {
		n := min(len(w.toDelete), 64)
		ops := make(api.TxnOps, n)
		for i, k := range w.toDelete[:n] {
			ops[i] = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: k}}
		}
		ok, resp, _, err := w.r.c.api.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || !ok {
			if err == nil && resp != nil && len(resp.Errors) > 0 {
				err = errors.New(resp.Errors[0].What)
			}
			w.r.c.log.WarnContext(ctx, "delete stored chunks", slog.String("session", w.r.session), slog.Any("error", err))
			w.toDelete = nil
			return
		}
		w.toDelete = w.toDelete[n:]
	}
}

// results classifies every expected node.
func (w *watcher) results(outcome Outcome) []NodeResult {
	out := make([]NodeResult, 0, len(w.r.targets))
	for _, name := range w.r.targets {
		st := w.nodes[name]
		nr := NodeResult{Node: name, AckedAt: st.ackedAt, ExitedAt: st.exitedAt, ExitCode: st.exitCode}
		switch {
		case !st.exitedAt.IsZero():
			nr.State = NodeExited
		case outcome == OutcomeCancelled:
			nr.State = NodeCancelled
		case !st.ackedAt.IsZero():
			nr.State = NodeLost
		case outcome == OutcomeSessionLost:
			nr.State = NodeLost
		default:
			nr.State = NodeNoAck
		}
		out = append(out, nr)
	}
	return out
}
