package consul_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/testenv"
)

// longNames are node names of 63 bytes (the DNS label limit Consul warns
// about): seven of them make a pinned filter pass the 512-byte event limit.
var longNames = func() []string {
	var out []string
	for i := 1; i <= 7; i++ {
		p := fmt.Sprintf("long-%d-", i)
		out = append(out, p+strings.Repeat("x", 63-len(p)))
	}
	return out
}()

func TestMain(m *testing.M) {
	clients := []localconsul.AgentConfig{
		{Name: "web-1", Services: []localconsul.Service{{Name: "web", Tags: []string{"v1", "blue"}}}},
		{Name: "web-2", Services: []localconsul.Service{{Name: "web", Tags: []string{"v2", "green"}}}},
		{Name: "db-1", Services: []localconsul.Service{
			{Name: "db", Tags: []string{"primary"}},
			{ID: "cache-a", Name: "cache", Tags: []string{"lru"}},
		}},
		{Name: "noexec-1", DisableRemoteExec: true, Services: []localconsul.Service{{Name: "batch"}}},
		{Name: "victim-1", Services: []localconsul.Service{{Name: "victim"}}},
	}
	for _, n := range longNames {
		clients = append(clients, localconsul.AgentConfig{Name: n, Services: []localconsul.Service{{Name: "long"}}})
	}
	code := testenv.Run(m, testenv.Options{Consul: &localconsul.Config{Clients: clients}})
	stopACLCluster() // started by the first ACL test, if any ran
	os.Exit(code)
}

type bundle struct {
	cluster *localconsul.Cluster
	client  *consul.Client
	api     *api.Client
	count   *testenv.HTTPCounter
	prefix  string
}

// setup returns an engine client on the web-1 agent (a client agent, as a
// worker would use) with its own KV prefix.
func setup(t *testing.T) *bundle {
	t.Helper()
	cl := testenv.Cluster(t)
	cnt := testenv.NewHTTPCounter()
	addr := cl.Agent("web-1").HTTPAddr()
	c, err := consul.New(consul.Config{Address: addr, HTTPClient: &http.Client{Transport: cnt}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a, err := api.NewClient(&api.Config{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{cluster: cl, client: c, api: a, count: cnt, prefix: testenv.Prefix(t)}
}

func (b *bundle) spec(argv ...string) consul.Spec {
	return consul.Spec{Argv: argv, Prefix: b.prefix}
}

// resolveAndRun resolves spec's targets with a catalog view of the
// bundle's client (its agent, its token), as a submission does, and runs
// it with a collector.
func (b *bundle) resolveAndRun(t *testing.T, ctx context.Context, spec consul.Spec) (*consul.Result, *collector) {
	t.Helper()
	view := consul.NewCatalogView(b.client, consul.ViewConfig{})
	defer view.Close()
	targets, info, err := view.Resolve(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if info.Source != consul.SourceView {
		t.Errorf("targets resolved by a direct read: %s", info.Reason)
	}
	col := &collector{}
	res, err := b.client.Run(ctx, spec, targets, col.handle)
	if err != nil {
		t.Fatal(err)
	}
	return res, col
}

// collector is a Handler that keeps every event and each node's output.
type collector struct {
	mu     sync.Mutex
	events []consul.Event
	out    map[string]*bytes.Buffer
	onAck  func(node string)
}

func (c *collector) handle(_ context.Context, evs []consul.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.out == nil {
		c.out = map[string]*bytes.Buffer{}
	}
	for _, e := range evs {
		c.events = append(c.events, e)
		if e.Kind == consul.EventOutput {
			if c.out[e.Node] == nil {
				c.out[e.Node] = &bytes.Buffer{}
			}
			c.out[e.Node].Write(e.Data)
		}
		if e.Kind == consul.EventAck && c.onAck != nil {
			c.onAck(e.Node)
		}
	}
	return nil
}

func (c *collector) output(node string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := c.out[node]; b != nil {
		return b.String()
	}
	return ""
}

// checkOrder asserts per-node order: ack first, chunks by rising sequence,
// exit last, each at most once.
func (c *collector) checkOrder(t *testing.T) {
	t.Helper()
	type st struct {
		acked, exited bool
		seq           int
	}
	nodes := map[string]*st{}
	for _, e := range c.events {
		s := nodes[e.Node]
		if s == nil {
			s = &st{seq: -1}
			nodes[e.Node] = s
		}
		switch e.Kind {
		case consul.EventAck:
			if s.acked {
				t.Errorf("%s: second ack", e.Node)
			}
			s.acked = true
		case consul.EventOutput, consul.EventHeartbeat:
			if !s.acked || s.exited {
				t.Errorf("%s: chunk %d outside ack..exit", e.Node, e.Seq)
			}
			if e.Seq <= s.seq {
				t.Errorf("%s: chunk %d after %d", e.Node, e.Seq, s.seq)
			}
			s.seq = e.Seq
		case consul.EventExit:
			if !s.acked || s.exited {
				t.Errorf("%s: exit out of order", e.Node)
			}
			s.exited = true
		}
	}
}

// assertClean asserts that nothing is left under the prefix and that the
// session is gone.
func (b *bundle) assertClean(t *testing.T, session string) {
	t.Helper()
	keys, _, err := b.api.KV().Keys(b.prefix+"/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("keys left under %s: %v", b.prefix, keys)
	}
	if session == "" {
		return
	}
	entry, _, err := b.api.Session().Info(session, nil)
	if err != nil {
		t.Fatal(err)
	}
	if entry != nil {
		t.Errorf("session %s still exists", session)
	}
}

func nodeNames(nodes []consul.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

func resultsByNode(res *consul.Result) map[string]consul.NodeResult {
	out := map[string]consul.NodeResult{}
	for _, n := range res.Nodes {
		out[n.Node] = n
	}
	return out
}

// allAlive is every node the cluster runs, sorted.
func allAlive(cl *localconsul.Cluster) []string {
	names := cl.Names()
	slices.Sort(names)
	return names
}

// ctxT returns a context that ends with the test or after d.
func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
