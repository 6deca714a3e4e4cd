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
// deleted on their own.
const deleteDelay = 100 * time.Millisecond

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
	// index is Consul's index of the latest listing taken; shared says it
	// came from the shared watch, whose listings are then taken in order.
	index   uint64
	shared  bool
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
	var failingSince time.Time
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
		lastActivity = time.Now()
		return nil
	}
	var keys []string // a listing not processed yet
	pending := false
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
				// Spare the next watcher keys that are already stored.
				dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), TeardownTimeout)
				w.flush(dctx)
				cancel()
				return "", ErrDetached
			}
			return OutcomeCancelled, nil
		}

		switch {
		case !w.started:
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
			if !ok || (!w.shared && index < w.index) {
				continue
			}
			w.shared, pending = true, true
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
		// The quiet period starts once the handler is done: time it spent
		// storing (a busy database) must not make stragglers look silent,
		// since nothing was read meanwhile.
		if len(stored) > 0 {
			lastActivity = time.Now()
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

// relative returns keys with dir cut off, sorted.
func relative(keys []string, dir string) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if rel, ok := strings.CutPrefix(k, dir); ok {
			out = append(out, rel)
		}
	}
	slices.Sort(out)
	return out
}

// fresh returns the keys of a listing not taken yet, and forgets taken
// keys the listing shows gone. A job spec gone from the listing means the
// session is likely gone (Consul deleted what it held): it is checked now
// rather than at the next renewal.
func (w *watcher) fresh(ctx context.Context, keys []string) []string {
	present := make(map[string]bool, len(keys))
	var out []string
	job := false
	for _, k := range keys {
		present[k] = true
		if k == "job" {
			job = true
			continue
		}
		if !w.taken[k] {
			out = append(out, k)
		}
	}
	for k := range w.taken {
		if !present[k] {
			delete(w.taken, k)
		}
	}
	if w.sawJob && !job {
		w.r.checkSession(ctx)
	}
	w.sawJob = job
	return out
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

// parseKey splits a key of a run's tree (relative to it) into the node
// and what it reports.
func parseKey(rel string) (node string, kind EventKind, seq int, ok bool) {
	switch {
	case strings.HasSuffix(rel, "/ack"):
		return strings.TrimSuffix(rel, "/ack"), EventAck, 0, true
	case strings.HasSuffix(rel, "/exit"):
		return strings.TrimSuffix(rel, "/exit"), EventExit, 0, true
	}
	i := strings.LastIndex(rel, "/out/")
	if i < 0 {
		return "", 0, 0, false
	}
	n, err := strconv.ParseUint(rel[i+len("/out/"):], 16, 31)
	if err != nil {
		return "", 0, 0, false
	}
	return rel[:i], EventOutput, int(n), true
}

// wants says whether the value of a new key must be read: chunks and exits
// of expected nodes that have not exited. An ack is empty, and what an
// exited node left in KV was stored before its exit was.
func (w *watcher) wants(rel string) bool {
	node, kind, _, ok := parseKey(rel)
	if !ok || kind == EventAck {
		return false
	}
	st := w.nodes[node]
	return st != nil && st.exitedAt.IsZero()
}

// maxTxnOps is the most operations Consul takes in one transaction
// (agent/txn_endpoint.go, 1.13).
const maxTxnOps = 64

// read returns the values of the fresh keys that need one, in
// transactions of at most maxTxnOps operations. Keys already stored ride
// along as deletes, first: a round costs one request where it would
// otherwise cost two. A key gone meanwhile (a session that went away) is
// simply missing from the answer.
func (w *watcher) read(ctx context.Context, fresh []string) (map[string][]byte, error) {
	var gets []string
	for _, k := range fresh {
		if w.wants(k) {
			gets = append(gets, k)
		}
	}
	values := make(map[string][]byte, len(gets))
	for len(gets) > 0 || len(w.toDelete) > 0 {
		nd := min(len(w.toDelete), maxTxnOps)
		ng := min(len(gets), maxTxnOps-nd)
		dels, batch := w.toDelete[:nd], gets[:ng]
		for {
			ops := make(api.TxnOps, 0, len(dels)+len(batch))
			for _, k := range dels {
				ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: w.r.dir + k}})
			}
			for _, k := range batch {
				ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVGet, Key: w.r.dir + k}})
			}
			ok, resp, _, err := w.r.c.api.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil {
				return nil, fmt.Errorf("read new keys: %w", err)
			}
			if ok {
				for _, res := range resp.Results {
					if res.KV != nil {
						values[strings.TrimPrefix(res.KV.Key, w.r.dir)] = res.KV.Value
					}
				}
				break
			}
			// Consul 1.13 has no get-or-empty: a key deleted since the
			// listing fails the whole transaction. Drop it and ask again.
			gone := map[int]bool{}
			for _, e := range resp.Errors {
				if e.OpIndex < len(dels) || !strings.Contains(e.What, "doesn't exist") {
					return nil, fmt.Errorf("read new keys: %s", e.What)
				}
				gone[e.OpIndex-len(dels)] = true
			}
			if len(gone) == 0 {
				return nil, errors.New("read new keys: transaction refused")
			}
			var kept []string
			for i, k := range batch {
				if !gone[i] {
					kept = append(kept, k)
				}
			}
			batch = kept
		}
		w.toDelete = w.toDelete[nd:]
		gets = gets[ng:]
	}
	return values, nil
}

// collect turns fresh keys and their values into events in per-node order
// (ack, chunks by sequence, exit), and says which keys it took (not to be
// read again) and which of those may leave KV once the events are stored.
// Heartbeats never reach the handler: they carry nothing to store, only
// show that the node is alive.
func (w *watcher) collect(fresh []string, values map[string][]byte) (events []Event, took, stored []string) {
	type nodeNews struct {
		ack    bool
		chunks []Event
		exit   *Event
		keys   []string
	}
	news := map[string]*nodeNews{}
	now := time.Now()
	for _, k := range fresh {
		node, kind, seq, ok := parseKey(k)
		if !ok {
			w.r.c.log.Warn("unknown key", slog.String("key", w.r.dir+k))
			took = append(took, k)
			continue
		}
		st := w.nodes[node]
		if st == nil {
			if !w.unknown[node] {
				w.unknown[node] = true
				w.r.c.log.Warn("report from a node outside the target set; ignored", slog.String("node", node))
			}
			took = append(took, k)
			continue
		}
		if !st.exitedAt.IsZero() {
			// Left by a watcher that stored it and stopped before deleting.
			took, stored = append(took, k), append(stored, k)
			continue
		}
		ev := Event{Kind: kind, Node: node, Seq: seq, At: now}
		if kind != EventAck {
			v, ok := values[k]
			if !ok {
				continue // gone since the listing
			}
			switch {
			case kind == EventExit:
				code, err := strconv.Atoi(strings.TrimSpace(string(v)))
				if err != nil {
					w.r.c.log.Warn("unparsable exit code", slog.String("key", w.r.dir+k), slog.String("value", string(v)))
					took = append(took, k)
					continue
				}
				ev.ExitCode = code
			case len(v) == 0:
				ev.Kind = EventHeartbeat
			default:
				ev.Data = v
			}
		}
		took = append(took, k)
		nn := news[node]
		if nn == nil {
			nn = &nodeNews{}
			news[node] = nn
		}
		nn.keys = append(nn.keys, k)
		switch ev.Kind {
		case EventAck:
			nn.ack = true
		case EventExit:
			nn.exit = &ev
		default:
			nn.chunks = append(nn.chunks, ev)
		}
	}

	for _, node := range w.r.targets {
		nn := news[node]
		if nn == nil {
			continue
		}
		st := w.nodes[node]
		// An exit implies an ack even if the ack key was missed.
		if st.ackedAt.IsZero() {
			st.ackedAt = now
			w.acked++
			events = append(events, Event{Kind: EventAck, Node: node, At: now})
		}
		slices.SortFunc(nn.chunks, func(a, b Event) int { return a.Seq - b.Seq })
		for _, c := range nn.chunks {
			if c.Kind == EventOutput {
				events = append(events, c)
			}
		}
		if nn.exit != nil {
			st.exitedAt, st.exitCode = now, nn.exit.ExitCode
			w.exited++
			events = append(events, *nn.exit)
		}
		stored = append(stored, nn.keys...)
	}
	return events, took, stored
}

// flush deletes the keys that may leave KV, in transactions of at most
// maxTxnOps operations. Failures only leave them for the teardown.
func (w *watcher) flush(ctx context.Context) {
	for len(w.toDelete) > 0 {
		n := min(len(w.toDelete), maxTxnOps)
		ops := make(api.TxnOps, n)
		for i, k := range w.toDelete[:n] {
			ops[i] = &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVDelete, Key: w.r.dir + k}}
		}
		ok, resp, _, err := w.r.c.api.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil || !ok {
			if err == nil && resp != nil && len(resp.Errors) > 0 {
				err = errors.New(resp.Errors[0].What)
			}
			w.r.c.log.WarnContext(ctx, "delete stored keys", slog.String("session", w.r.session), slog.Any("error", err))
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
