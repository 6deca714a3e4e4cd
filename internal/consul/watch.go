package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

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
