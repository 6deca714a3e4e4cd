package simagent_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/localconsul"
	"github.com/rexec/rexec/internal/simagent"
	"github.com/rexec/rexec/internal/store"
	"github.com/rexec/rexec/internal/testenv"
)

// realAgents are the cluster's client agents, with debug logs: the agent
// logs each stale spec read that missed ("trying consistent fetch").
var realAgents = func() []localconsul.AgentConfig {
	var out []localconsul.AgentConfig
	for i := 1; i <= 4; i++ {
		out = append(out, localconsul.AgentConfig{Name: fmt.Sprintf("real-%d", i), LogLevel: "debug",
			Services: []localconsul.Service{{Name: "web", Tags: []string{fmt.Sprintf("v%d", i%2)}}}})
	}
	return out
}()

// TestMain starts three servers, so that agents' stale reads can go to a
// follower that lags the leader, four client agents, and a Postgres for
// the archive benchmark.
//
// REXEC_BENCH_GOSSIP_INTERVAL sets the agents' gossip interval (Consul's
// default, 200ms, otherwise), to see how much of a run's latency is the
// gossip of its event.
func TestMain(m *testing.M) {
	var gossip time.Duration
	if v := os.Getenv("REXEC_BENCH_GOSSIP_INTERVAL"); v != "" {
		var err error
		if gossip, err = time.ParseDuration(v); err != nil {
			fmt.Fprintln(os.Stderr, "REXEC_BENCH_GOSSIP_INTERVAL:", err)
			os.Exit(1)
		}
	}
	testenv.Main(m, testenv.Options{Consul: &localconsul.Config{Servers: 3, Clients: realAgents, GossipInterval: gossip},
		Postgres: true, Migrate: store.MigrateAndGrant})
}

// engine returns a rexec engine client on the first client agent (as a
// worker would use one), counting its requests.
func engine(t testing.TB, cnt *testenv.HTTPCounter) *consul.Client {
	t.Helper()
	c, err := consul.New(consul.Config{Address: testenv.Cluster(t).Clients()[0].HTTPAddr(),
		HTTPClient: &http.Client{Transport: cnt}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// collector is a handler that keeps each node's output.
type collector struct {
	mu  sync.Mutex
	out map[string]*bytes.Buffer
	n   int // events
}

func (c *collector) handle(_ context.Context, evs []consul.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.out == nil {
		c.out = map[string]*bytes.Buffer{}
	}
	for _, e := range evs {
		c.n++
		if e.Kind == consul.EventOutput {
			if c.out[e.Node] == nil {
				c.out[e.Node] = &bytes.Buffer{}
			}
			c.out[e.Node].Write(e.Data)
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

// virtualNodes are n nodes named <prefix>-00000..., with a web service
// tagged v0 or v1 like the real agents.
func virtualNodes(prefix string, n int) []simagent.Node {
	out := make([]simagent.Node, n)
	for i := range out {
		out[i] = simagent.Node{Name: fmt.Sprintf("%s-%05d", prefix, i),
			Services: []simagent.Service{{Name: "web", Tags: []string{fmt.Sprintf("v%d", i%2)}}}}
	}
	return out
}

// startSim starts a simulator of nodes that talks to a follower server
// (where stale reads can miss) and joins the gossip through every agent.
func startSim(t testing.TB, ctx context.Context, cfg simagent.Config) *simagent.Simulator {
	t.Helper()
	cl := testenv.Cluster(t)
	leader, err := cl.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range cl.Servers() {
		if s != leader {
			cfg.Address = s.HTTPAddr()
			break
		}
	}
	for _, a := range cl.Agents() {
		cfg.Join = append(cfg.Join, a.SerfLANAddr())
	}
	cfg.Logger = testenv.Logger(t)
	sim, err := simagent.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sim.Close(); err != nil {
			t.Error(err)
		}
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// Hygiene only: the cluster goes with the package. A server
		// worn out by a big benchmark may refuse it.
		if err := sim.Deregister(dctx); err != nil {
			t.Logf("deregister virtual nodes: %v", err)
		}
	})
	return sim
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
