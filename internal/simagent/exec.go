package simagent

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path"
	"strconv"
	"time"

	"github.com/hashicorp/consul/api"
)

// vnode is a virtual node's local state, as an agent knows itself.
type vnode struct {
	name     string
	services []Service
}

func newVNode(n Node) *vnode {
	v := &vnode{name: n.Name}
	for _, s := range n.Services {
		s.ID = cmp.Or(s.ID, s.Name)
		v.services = append(v.services, s)
	}
	return v
}

// startBatch hands nodes that one event matched to a worker. It blocks
// while Workers batches are in flight, which holds back the event loop: a
// slow Consul slows the virtual agents, it does not pile up goroutines.
func (s *Simulator) startBatch(ev execEvent, nodes []*vnode) {
	select {
	case s.sem <- struct{}{}:
	case <-s.ctx.Done():
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() { <-s.sem }()
		s.runBatch(s.ctx, ev, nodes)
	}()
}

// runBatch is handleRemoteExec for a batch of nodes that received the same
// event: one spec read for all (stale, then consistent when missing), then
// each step's writes for every node still going in one transaction of
// KVLock operations under the event's session.
func (s *Simulator) runBatch(ctx context.Context, ev execEvent, nodes []*vnode) {
	job, ok := s.getSpec(ctx, ev)
	if !ok {
		s.stats.specMissing.Add(int64(len(nodes)))
		return
	}
	// remoteExecWriteAck: a failed ack ends the node without an exit code.
	if !s.writeAll(ctx, ev, nodes, func(*vnode) (string, []byte, bool) { return "ack", nil, true }) {
		s.stats.writeFailed.Add(int64(len(nodes)))
		return
	}
	s.stats.acks.Add(int64(len(nodes)))

	replies := make(map[string]Reply, len(nodes))
	for _, n := range nodes {
		replies[n.name] = s.cfg.Command(n.name, job)
	}
	// The command runs for Duration, with a heartbeat (an empty chunk)
	// each job Wait without output; chunks and heartbeats share one
	// sequence. Output is uploaded when the command ends, in 4 KiB chunks.
	seq := 0
	chunk := func(data func(n *vnode) ([]byte, bool)) bool {
		key := path.Join("out", fmt.Sprintf("%05x", seq))
		seq++
		var wrote int64
		ok := s.writeAll(ctx, ev, nodes, func(n *vnode) (string, []byte, bool) {
			b, write := data(n)
			if write {
				wrote++
			}
			return key, b, write
		})
		if ok {
			s.stats.chunks.Add(wrote)
		}
		return ok
	}
	end := time.Now().Add(s.cfg.Duration)
	wait := cmp.Or(job.Wait, 2*time.Second)
	ok = true
	for ok {
		left := time.Until(end)
		if left <= 0 {
			break
		}
		t := time.NewTimer(min(left, wait))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if left > wait {
			ok = chunk(func(*vnode) ([]byte, bool) { return nil, true })
		}
	}
	longest := 0
	for _, r := range replies {
		longest = max(longest, len(r.Output))
	}
	for i := 0; ok && i*ChunkSize < longest; i++ {
		ok = chunk(func(n *vnode) ([]byte, bool) {
			out := replies[n.name].Output
			if i*ChunkSize >= len(out) {
				return nil, false
			}
			return out[i*ChunkSize : min(len(out), (i+1)*ChunkSize)], true
		})
	}
	exitCode := func(n *vnode) int { return replies[n.name].ExitCode }
	if !ok {
		// A failed output write cancels the upload and reports 255 if it
		// still can.
		s.stats.writeFailed.Add(int64(len(nodes)))
		exitCode = func(*vnode) int { return 255 }
	}
	if s.writeAll(ctx, ev, nodes, func(n *vnode) (string, []byte, bool) {
		return "exit", []byte(strconv.Itoa(exitCode(n))), true
	}) {
		s.stats.exits.Add(int64(len(nodes)))
	}
}

// getSpec is remoteExecGetSpec: a stale read, and a consistent one when
// the stale read found nothing. false when neither found the spec (the
// agent then gives up silently: no ack) or the read failed.
func (s *Simulator) getSpec(ctx context.Context, ev execEvent) (Job, bool) {
	key := path.Join(ev.Prefix, ev.Session, "job")
	var pair *api.KVPair
	for _, stale := range []bool{true, false} {
		s.stats.specReads.Add(1)
		p, _, err := s.api.KV().Get(key, (&api.QueryOptions{AllowStale: stale}).WithContext(ctx))
		if err != nil {
			s.cfg.Logger.Warn("simagent: read job spec", slog.String("key", key), slog.Any("error", err))
			return Job{}, false
		}
		if p != nil {
			pair = p
			break
		}
		if stale {
			s.stats.staleMisses.Add(1)
		}
	}
	if pair == nil {
		return Job{}, false
	}
	var job Job
	if err := json.Unmarshal(pair.Value, &job); err != nil {
		s.cfg.Logger.Warn("simagent: decode job spec", slog.String("key", key), slog.Any("error", err))
		return Job{}, false
	}
	return job, true
}

// writeAll writes, for every node that key says to, the key
// <prefix>/<session>/<node>/<suffix> as a KVLock with the event's session
// (remoteExecWriteKey), in one transaction per BatchSize nodes. false when
// a transaction failed: the session is gone (or Consul unreachable), and
// those nodes stop as an agent whose write failed does.
func (s *Simulator) writeAll(ctx context.Context, ev execEvent, nodes []*vnode, key func(*vnode) (suffix string, val []byte, write bool)) bool {
	var ops api.TxnOps
	for _, n := range nodes {
		suffix, val, write := key(n)
		if !write {
			continue
		}
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVLock,
			Key: path.Join(ev.Prefix, ev.Session, n.name, suffix), Value: val, Session: ev.Session}})
	}
	for len(ops) > 0 {
		k := min(len(ops), 64)
		if err := s.txn(ctx, ops[:k]); err != nil {
			if ctx.Err() == nil {
				s.cfg.Logger.Debug("simagent: write failed", slog.String("session", ev.Session), slog.Any("error", err))
			}
			return false
		}
		ops = ops[k:]
	}
	return true
}
