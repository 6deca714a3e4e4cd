package consul_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/testenv"
)

// known is what a collector stored, as a re-attaching caller tells the
// engine (Run.Restore).
func (c *collector) known() []consul.NodeResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	byNode := map[string]*consul.NodeResult{}
	var out []consul.NodeResult
	for _, e := range c.events {
		n := byNode[e.Node]
		if n == nil {
			n = &consul.NodeResult{Node: e.Node}
			byNode[e.Node] = n
		}
		switch e.Kind {
		case consul.EventAck:
			n.AckedAt = e.At
		case consul.EventExit:
			n.State, n.ExitCode, n.ExitedAt = consul.NodeExited, e.ExitCode, e.At
		}
	}
	for _, n := range byNode {
		out = append(out, *n)
	}
	return out
}

// TestRunReattachAfterKeysLeft: a node exits while the first watcher holds
// the run, and its ack and exit keys leave KV once stored; a second watcher
// re-attaches. Told what was stored (Restore), it classifies that node
// exited and ends the run as soon as the other node exits; not told, it
// can only take the node for one that never answered.
func TestRunReattachAfterKeysLeft(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note        string
		restore     bool
		wantOutcome consul.Outcome
		wantWeb1    consul.NodeState
	}{
		{note: "restored", restore: true, wantOutcome: consul.OutcomeCompleted, wantWeb1: consul.NodeExited},
		{note: "not restored", restore: false, wantOutcome: consul.OutcomeQuiet, wantWeb1: consul.NodeNoAck},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := ctxT(t, time.Minute)
			dir := t.TempDir()
			if err := os.Chmod(dir, 0o777); err != nil {
				t.Fatal(err)
			}
			gate := filepath.Join(dir, "gate")
			spec := b.spec(fmt.Sprintf(`if [ "$(basename $PWD)" = web-1 ]; then echo one; exit 4; fi; `+
				`echo before; while [ ! -f %s ]; do sleep 0.05; done; echo after`, gate))
			spec.NodeFilter = "^web-"
			spec.Wait = 5 * time.Second // web-2 may start late on a loaded machine
			targets, err := b.client.Resolve(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			r, err := b.client.Prepare(ctx, spec, targets)
			if err != nil {
				t.Fatal(err)
			}
			session := r.Session()

			// First watcher: detach once web-1's exit and web-2's first
			// chunk are stored.
			wctx, detach := context.WithCancelCause(ctx)
			var first collector
			h1 := func(ctx context.Context, evs []consul.Event) error {
				first.handle(ctx, evs)
				if first.output("web-2") != "" && first.output("web-1") != "" && len(first.known()) == 2 {
					for _, k := range first.known() {
						if k.Node == "web-1" && k.State == consul.NodeExited {
							detach(consul.ErrDetach)
						}
					}
				}
				return nil
			}
			if _, err := r.Execute(wctx, h1); !errors.Is(err, consul.ErrDetached) {
				t.Fatalf("first watcher: err = %v, want ErrDetached", err)
			}
			// Stored keys left KV: web-1's ack, chunk and exit, web-2's ack
			// and chunk. The job spec stays.
			keys, _, err := b.api.KV().Keys(b.prefix+"/"+session+"/", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 1 || !strings.HasSuffix(keys[0], "/job") {
				t.Errorf("keys after the stored reports: %v, want the job spec alone", keys)
			}

			r2, err := b.client.Attach(ctx, spec, session, targets)
			if err != nil {
				t.Fatal(err)
			}
			if tc.restore {
				r2.Restore(first.known())
			}
			if err := os.WriteFile(gate, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			var second collector
			res, err := r2.Execute(ctx, second.handle)
			if err != nil {
				t.Fatal(err)
			}
			got := resultsByNode(res)
			if res.Outcome != tc.wantOutcome {
				t.Errorf("outcome = %s, want %s", res.Outcome, tc.wantOutcome)
			}
			if n := got["web-1"]; n.State != tc.wantWeb1 || (tc.restore && n.ExitCode != 4) {
				t.Errorf("web-1: %s %d, want %s", n.State, n.ExitCode, tc.wantWeb1)
			}
			if n := got["web-2"]; n.State != consul.NodeExited || n.ExitCode != 0 {
				t.Errorf("web-2: %s %d", n.State, n.ExitCode)
			}
			if out := first.output("web-2") + second.output("web-2"); out != "before\nafter\n" {
				t.Errorf("web-2 output across both watchers = %q", out)
			}
			if out := second.output("web-1"); out != "" {
				t.Errorf("web-1's stored output read again: %q", out)
			}
			b.assertClean(t, session)
		})
	}
}

// connCounter is an HTTP transport that counts what a client asks of the
// agent: requests, response body bytes (decompressed), bytes read from the
// connections (headers and bodies as sent, gzip included), blocking
// queries and connections, and the most of each in flight at once.
type connCounter struct {
	base              *http.Transport
	requests, bytes   atomic.Int64
	wire              atomic.Int64
	blocking, maxBlk  atomic.Int64
	open, maxOpen     atomic.Int64
	dialed            atomic.Int64
	inflight, maxFlow atomic.Int64
}

func newConnCounter(maxConns int) *connCounter {
	c := &connCounter{}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c.base = &http.Transport{
		MaxConnsPerHost:     maxConns,
		MaxIdleConnsPerHost: maxConns,
		IdleConnTimeout:     90 * time.Second,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			conn, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			c.dialed.Add(1)
			raise(&c.maxOpen, c.open.Add(1))
			return &countedConn{Conn: conn, c: c}, nil
		},
	}
	return c
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (cc *countedConn) Read(p []byte) (int, error) {
	n, err := cc.Conn.Read(p)
	cc.c.wire.Add(int64(n))
	return n, err
}

func (cc *countedConn) Close() error {
	cc.once.Do(func() { cc.c.open.Add(-1) })
	return cc.Conn.Close()
}

func raise(max *atomic.Int64, v int64) {
	for {
		m := max.Load()
		if v <= m || max.CompareAndSwap(m, v) {
			return
		}
	}
}

func (c *connCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.requests.Add(1)
	blocking := r.URL.Query().Get("index") != ""
	if blocking {
		raise(&c.maxBlk, c.blocking.Add(1))
		defer c.blocking.Add(-1)
	}
	raise(&c.maxFlow, c.inflight.Add(1))
	defer c.inflight.Add(-1)
	resp, err := c.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = testenv.CountBody(resp.Body, &c.bytes)
	return resp, nil
}

// TestManyRunsOneClient carries many runs at once through one client: each
// completes with its own output, and the client holds one blocking query
// (the shared key watch), not one per run, and a bounded number of
// connections to the agent.
func TestManyRunsOneClient(t *testing.T) {
	t.Parallel()
	runs, maxConns := 60, 32
	if testing.Short() {
		runs = 10
	}
	cl := testenv.Cluster(t)
	cnt := newConnCounter(maxConns)
	c, err := consul.New(consul.Config{Address: cl.Agent("web-1").HTTPAddr(), HTTPClient: &http.Client{Transport: cnt}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	prefix := testenv.Prefix(t)
	ctx := ctxT(t, 2*time.Minute)
	// A quiet period generous enough for a loaded machine: early completion,
	// not the quiet period, is what ends these runs.
	spec := consul.Spec{NodeFilter: "^(web-1|web-2|db-1)$", Prefix: prefix, Wait: 8 * time.Second}
	spec.Argv = []string{"true"}
	targets, err := c.Resolve(ctx, spec)
	if err != nil || len(targets) != 3 {
		t.Fatalf("targets %v: %v", nodeNames(targets), err)
	}
	var wg sync.WaitGroup
	for i := range runs {
		wg.Go(func() {
			s := spec
			// Silent for longer than Wait, so that each node heartbeats,
			// then output.
			s.Argv = []string{fmt.Sprintf("sleep 9; echo run %d on $(basename $PWD)", i)}
			var col collector
			res, err := c.Run(ctx, s, targets, col.handle)
			if err != nil {
				t.Errorf("run %d: %v", i, err)
				return
			}
			if res.Outcome != consul.OutcomeCompleted {
				t.Errorf("run %d: outcome %s", i, res.Outcome)
			}
			for _, n := range res.Nodes {
				want := fmt.Sprintf("run %d on %s\n", i, n.Node)
				if n.State != consul.NodeExited || n.ExitCode != 0 || col.output(n.Node) != want {
					t.Errorf("run %d %s: %s %d, output %q", i, n.Node, n.State, n.ExitCode, col.output(n.Node))
				}
			}
			for _, e := range col.events {
				if e.Kind == consul.EventHeartbeat {
					t.Errorf("run %d: a heartbeat reached the handler", i)
					break
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d runs: %d requests (%.1f per run), %d bytes read (%.0f per run); at most %d blocking queries, %d requests and %d connections at once, %d dialled",
		runs, cnt.requests.Load(), float64(cnt.requests.Load())/float64(runs), cnt.bytes.Load(), float64(cnt.bytes.Load())/float64(runs),
		cnt.maxBlk.Load(), cnt.maxFlow.Load(), cnt.maxOpen.Load(), cnt.dialed.Load())
	// One shared key watch; two for a moment when a run subscribes just
	// as the last one left and the old watch's query is still being
	// cancelled.
	if n := cnt.maxBlk.Load(); n < 1 || n > 2 {
		t.Errorf("at most %d blocking queries at once, want 1 (the shared key watch)", n)
	}
	if n := cnt.maxOpen.Load(); n > int64(maxConns) {
		t.Errorf("%d connections open at once, want at most %d", n, maxConns)
	}
	keys, _, err := c.API().KV().Keys(prefix+"/", "", nil)
	if err != nil || len(keys) != 0 {
		t.Errorf("left under the prefix: %v %v", keys, err)
	}
}
