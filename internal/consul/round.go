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

// A watch round of one run, once a listing of its tree is in: which keys
// are new, their values, the events they make, and the keys that leave KV.

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
