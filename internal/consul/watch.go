package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/consul/api"
)

// Watch watches a fired or attached run and hands the agents' reports to h
// as they arrive. The run's tree is listed by name through the client's
// one blocking query per prefix (keywatch.go), however many runs it
// carries; each round then reads only the new keys' values. It returns once every expected node has exited, or the
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
		Events: len(r.events), FiredAt: r.firedAt, FinishedAt: time.Now(),
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

// deleteDelay is how long stored keys may wait in KV for the next round's
// read, which deletes them in the same transaction, before they are
// deleted on their own. A second lets a node streaming output (agents
// flush after 500 ms idle) have its stored chunks deleted by the reads of
// the next ones, and a short run's by its teardown, rather than by a
// request each (ten lines over 5 s on 12 nodes: 240 requests a run, 254
// with 100 ms; BenchmarkEngineVsConsulExec).
const deleteDelay = time.Second

// watcher collects one run's reports. Each round costs what changed, not
// what exists: the run's tree is listed by name only (by the client's
// shared key watch), the values of the new keys alone are read in one
// transaction, and every key taken — stored chunk, heartbeat, ack, exit —
// is deleted from KV once the handler has stored it. Neither the listing
// nor the work of a round grows with the nodes that already finished.
type watcher struct {
	r     *Run
	h     Handler
	nodes map[string]*nodeState
	// taken holds the keys (relative to the run's tree) already handed to
	// h, consumed, or ignored; a key leaves it once a listing shows it
	// gone from KV, so it is bounded by what KV holds.
	taken   map[string]bool
	unknown map[string]bool // nodes outside the target set, warned once
	acked   int
	exited  int
	// toDelete are taken keys that may leave KV (the handler stored them,
	// or they carry nothing to store), not deleted yet.
	toDelete []string
	// index is Consul's index of the latest listing taken: an older one
	// (the shared watch lagging behind the run's own) is of no use, and
	// would make taken keys look gone.
	index   uint64
	sawJob  bool // the latest listing held the job spec
	started bool // the run's own first listing is done
}

func newWatcher(r *Run, h Handler) *watcher {
	w := &watcher{r: r, h: h, nodes: map[string]*nodeState{}, taken: map[string]bool{}, unknown: map[string]bool{}}
	for _, n := range r.targets {
		w.nodes[n] = &nodeState{}
	}
	// What earlier watchers stored (Restore): their ack and exit keys may
	// have left KV already, and must not make the node look silent now.
	for _, k := range r.known {
		st := w.nodes[k.Node]
		if st == nil {
			continue
		}
		if !k.AckedAt.IsZero() || k.State == NodeExited {
			st.ackedAt = k.AckedAt
			if st.ackedAt.IsZero() {
				st.ackedAt = k.ExitedAt
			}
			w.acked++
		}
		if k.State == NodeExited {
			st.exitedAt, st.exitCode = k.ExitedAt, k.ExitCode
			if st.exitedAt.IsZero() {
				st.exitedAt = time.Now()
			}
			w.exited++
		}
	}
	return w
}

// watch returns the outcome, or "" and an error when the run must be left
// for re-attach (handler error, detach, or Consul unreachable for too long).
func (w *watcher) watch(ctx context.Context) (Outcome, error) {
	r := w.r
	sub := r.c.subscribe(r.spec.Prefix, r.dir)
	defer sub.close()
	lastActivity := time.Now()
	// Gossip carries a run's events a few at a time: silence is not
	// judged from before the last one can have reached its nodes.
	var spread time.Time
	if len(r.events) > 1 {
		spread = r.firedAt.Add(time.Duration(len(r.events)-1) * r.c.cfg.EventSpread)
	}
	var failingSince time.Time
	pending, quietChecked := false, false
	// readFailed decides about a failed read: keep trying (nil) until it
	// has failed for a session TTL, then leave the run for re-attach.
	readFailed := func(since time.Time, err error) error {
		if ctx.Err() != nil || isClosed(r.lost) {
			return nil // classified at the top of the loop
		}
		if time.Since(since) > r.c.cfg.SessionTTL {
			return fmt.Errorf("read run results: %w", err)
		}
		// Never declare a run quiet on a read that failed.
		lastActivity, quietChecked = time.Now(), false
		return nil
	}
	var keys []string // a listing not processed yet
	for {
		if w.exited == len(w.nodes) {
			return OutcomeCompleted, nil
		}
		quiet := r.spec.Wait
		if w.acked > w.exited {
			quiet *= 2
		}
		since := lastActivity
		if spread.After(since) {
			since = spread
		}
		remaining := time.Until(since.Add(quiet))
		// Silence is judged on a listing taken after the quiet period
		// passed, the run's own: the shared watch may lag behind on a
		// busy agent, and a run must not end for want of being read.
		checkQuiet := false
		if remaining <= 0 {
			if quietChecked {
				return OutcomeQuiet, nil
			}
			quietChecked, checkQuiet = true, true
		}
		select {
		case <-r.lost:
			return OutcomeSessionLost, nil
		default:
		}
		if ctx.Err() != nil {
			if detaching(ctx) {
				// Spare the next watcher keys that are already stored.
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), TeardownTimeout)
				w.flush(dctx)
				cancel()
				return "", ErrDetached
			}
			return OutcomeCancelled, nil
		}

		switch {
		case !w.started || checkQuiet:
			// The run's own listing first: keys written before it
			// subscribed (a re-attach) change nothing the shared watch
			// would wake up for.
			ks, meta, err := r.c.api.KV().Keys(r.dir, "", (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				if failingSince.IsZero() {
					failingSince = time.Now()
				}
				r.c.log.WarnContext(ctx, "list run results", slog.String("session", r.session), slog.Any("error", err))
				if err := readFailed(failingSince, err); err != nil {
					return "", err
				}
				w.pause(ctx, r.lost)
				continue
			}
			failingSince = time.Time{}
			w.started, pending = true, true
			keys, w.index = relative(ks, r.dir), meta.LastIndex
		case !pending:
			// Stored keys wait a little for the next round's read, which
			// deletes them with the same request.
			flushAt := remaining
			if len(w.toDelete) > 0 {
				flushAt = min(flushAt, deleteDelay)
			}
			t := time.NewTimer(flushAt)
			select {
			case <-sub.notify:
			case <-t.C:
				if len(w.toDelete) > 0 {
					w.flush(ctx)
				}
			case <-r.lost:
			case <-ctx.Done():
			}
			t.Stop()
			ks, index, ok, since, ferr := sub.take()
			if !since.IsZero() {
				if err := readFailed(since, ferr); err != nil {
					return "", err
				}
				continue
			}
			// Until the shared watch has caught up with the run's own
			// first listing, its older listings are of no use.
			if !ok || index < w.index {
				continue
			}
			pending = true
			keys, w.index = ks, index
		}

		fresh := w.fresh(ctx, keys)
		if len(fresh) == 0 {
			pending = false
			continue
		}
		values, err := w.read(ctx, fresh)
		if err != nil {
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			r.c.log.WarnContext(ctx, "read run results", slog.String("session", r.session), slog.Any("error", err))
			if err := readFailed(failingSince, err); err != nil {
				return "", err
			}
			w.pause(ctx, r.lost)
			continue
		}
		failingSince, pending = time.Time{}, false
		events, took, stored := w.collect(fresh, values)
		for _, k := range took {
			w.taken[k] = true
		}
		if len(events) > 0 {
			// The handler stores what the agents reported even when the run
			// is being cancelled: that output was produced and belongs in
			// the archive.
			if err := w.handle(ctx, events); err != nil {
				return "", err
			}
		}
		if w.acked == len(w.nodes) {
			// The event reached every target: the next run may fire
			// (enterStart).
			r.leaveStart()
		}
		// The quiet period starts once the handler is done: time it spent
		// storing (a busy database) must not make stragglers look silent,
		// since nothing was read meanwhile.
		if len(stored) > 0 {
			lastActivity, quietChecked = time.Now(), false
		}
		// Keys of a run that has ended leave KV with its tree.
		if w.exited < len(w.nodes) {
			w.toDelete = append(w.toDelete, stored...)
		}
	}
}

// pause waits a little after a failed read.
func (w *watcher) pause(ctx context.Context, lost <-chan struct{}) {
	t := time.NewTimer(500 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-lost:
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
