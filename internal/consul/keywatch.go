package consul

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// keyWatchWait is how long one blocking query of a shared key watch may
// wait; Consul caps it at 10 minutes and adds some jitter.
const keyWatchWait = 5 * time.Minute

// keyWatch is ONE keys-only blocking query on a prefix, shared by every run
// of a Client under that prefix. Each run watching its own tree would hold
// an HTTP connection to the agent for the life of the run, and an agent
// takes at most limits.http_max_conns_per_client (200) connections from
// one address: a worker carrying hundreds of runs would be refused. With
// one watch, a process holds one blocking connection per (Client, prefix)
// however many runs it carries, and each run makes short requests for the
// values of its new keys only.
//
// A listing carries the names of every key under the prefix, so its size
// grows with the runs in flight (their job keys) and the reports not yet
// stored; stored reports leave KV (see watcher), so it does not grow with
// what already finished.
//
// The watch runs while at least one run subscribes: the first subscription
// starts it, the last one to leave stops it and waits for it.
type keyWatch struct {
	c      *Client
	prefix string // "<prefix>/"
	subs   map[string]*subscription
	stop   context.CancelFunc
	done   chan struct{}
}

// subscription is one run's view of a shared key watch: the latest listing
// of its own tree. Listings replace each other; a run that is busy (its
// handler is storing) takes only the latest when it comes back, which is
// enough since each one holds every key of the tree.
type subscription struct {
	kw     *keyWatch
	dir    string
	notify chan struct{} // capacity 1: "a new listing or error is there"

	mu           sync.Mutex
	keys         []string // names relative to dir, sorted
	index        uint64   // Consul's index of keys
	fresh        bool     // keys not yet taken
	failingSince time.Time
	failure      error
}

// subscribe registers dir (a run's tree, "<prefix>/<session>/") with the
// client's watch on prefix, starting the watch if it is the first.
func (c *Client) subscribe(prefix, dir string) *subscription {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	p := strings.TrimSuffix(prefix, "/") + "/"
	kw := c.watches[p]
	if kw == nil {
		ctx, cancel := context.WithCancel(context.Background())
		kw = &keyWatch{c: c, prefix: p, subs: map[string]*subscription{}, stop: cancel, done: make(chan struct{})}
		if c.watches == nil {
			c.watches = map[string]*keyWatch{}
		}
		c.watches[p] = kw
		go kw.run(ctx)
	}
	s := &subscription{kw: kw, dir: dir, notify: make(chan struct{}, 1)}
	kw.subs[dir] = s
	return s
}

// close leaves the watch; the last subscription to leave stops it.
func (s *subscription) close() {
	c := s.kw.c
	c.watchMu.Lock()
	kw := s.kw
	delete(kw.subs, s.dir)
	last := len(kw.subs) == 0
	if last {
		delete(c.watches, kw.prefix)
	}
	c.watchMu.Unlock()
	if last {
		kw.stop()
		<-kw.done
	}
}

// take returns the latest listing if it was not taken yet, and whether the
// watch has been failing since (zero when not).
func (s *subscription) take() (keys []string, index uint64, ok bool, failingSince time.Time, failure error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ok = s.fresh
	s.fresh = false
	return s.keys, s.index, ok, s.failingSince, s.failure
}

// run lists the prefix with blocking queries until stopped, and hands each
// subscriber the keys of its tree when they changed.
func (kw *keyWatch) run(ctx context.Context) {
	defer close(kw.done)
	kv := kw.c.api.KV()
	var index uint64
	var lastRound, failingSince time.Time
	for {
		// Reports arriving together (many nodes, many runs) are read with
		// one listing rather than one each.
		if wait := time.Until(lastRound.Add(kw.c.cfg.RoundInterval)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		}
		lastRound = time.Now()
		keys, meta, err := kv.Keys(kw.prefix, "", (&api.QueryOptions{WaitIndex: index, WaitTime: keyWatchWait}).WithContext(ctx))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			kw.c.log.WarnContext(ctx, "watch remote-exec keys", slog.String("prefix", kw.prefix), slog.Any("error", err))
			kw.publishFailure(failingSince, err)
			t := time.NewTimer(500 * time.Millisecond)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		failingSince = time.Time{}
		if meta.LastIndex < index {
			index = 0 // the index went backwards (a restored snapshot): start over
		} else {
			index = meta.LastIndex
		}
		kw.publish(keys, meta.LastIndex)
	}
}

// publish splits a listing by run tree and updates the subscribers whose
// keys changed.
func (kw *keyWatch) publish(keys []string, index uint64) {
	byDir := map[string][]string{}
	for _, k := range keys {
		rest := strings.TrimPrefix(k, kw.prefix)
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			continue
		}
		dir := kw.prefix + rest[:i+1]
		byDir[dir] = append(byDir[dir], rest[i+1:])
	}
	kw.c.watchMu.Lock()
	defer kw.c.watchMu.Unlock()
	for dir, s := range kw.subs {
		mine := byDir[dir]
		slices.Sort(mine)
		s.mu.Lock()
		changed := !s.failingSince.IsZero() || !slices.Equal(s.keys, mine) || s.index == 0
		if changed {
			s.keys, s.index, s.fresh = mine, index, true
			s.failingSince, s.failure = time.Time{}, nil
		}
		s.mu.Unlock()
		if changed {
			s.signal()
		}
	}
}

func (kw *keyWatch) publishFailure(since time.Time, err error) {
	kw.c.watchMu.Lock()
	defer kw.c.watchMu.Unlock()
	for _, s := range kw.subs {
		s.mu.Lock()
		s.failingSince, s.failure = since, err
		s.mu.Unlock()
		s.signal()
	}
}

func (s *subscription) signal() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}
