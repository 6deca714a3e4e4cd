// Package simagent plays many virtual Consul agents against a real Consul
// cluster, so that rexec can be measured on thousands of nodes on one
// machine. It registers the virtual nodes in the catalog (alive, with their
// services), receives the `_rexec` user events through the cluster's LAN
// gossip as a real agent does, filters them for each virtual node as
// agent/user_event.go does, and answers for every node that matches the way
// agent/remote_exec.go does: it reads the job spec (stale, then
// consistent), and writes the ack, output chunks, heartbeats and exit code
// as KV locks held by the run's session, stopping a node's writes once one
// fails.
//
// Where it departs from a real agent, to stay cheap at 5,000 nodes: the
// nodes matched by one event share one spec read, and their writes of one
// step (acks, then chunk n, then exits) go together in Consul transactions
// of KVLock operations. Every key is still written once, by the same
// operation, under the same session, in the same per-node order; a
// transaction fails as a whole only when its session is gone, which would
// fail every one of its writes alone too. Commands are not run: each node
// answers with the output, exit code and duration Config.Command gives.
// Gossip reaches one member (the simulator), so delivery losses of a real
// cluster are not simulated.
package simagent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-cleanhttp"
	"github.com/hashicorp/serf/serf"
)

// Defaults.
const (
	WorkersDefault   = 32
	BatchSizeDefault = 64 // Consul's limit of operations per transaction
	// ChunkSize is the agents' output chunk size (remoteExecOutputSize).
	ChunkSize = 4 * 1024
	// MetaKey is the node meta key that marks the simulator's nodes; its
	// value is Config.ID.
	MetaKey = "rexec-simagent"
)

// Node is one virtual node.
type Node struct {
	Name     string
	Address  string // default 127.0.0.1
	Services []Service
}

// Service is a service on a virtual node. Agents match the service filter
// on the service's ID.
type Service struct {
	ID   string // default Name
	Name string
	Tags []string
}

// Job is the job spec an agent reads (consul's remoteExecSpec).
type Job struct {
	Command string
	Args    []string
	Script  []byte
	Wait    time.Duration
}

// Reply is what a virtual node's command does.
type Reply struct {
	// Output is the command's interleaved stdout and stderr, uploaded in
	// chunks of ChunkSize when the command ends.
	Output []byte
	// ExitCode is reported after the output.
	ExitCode int
}

// Config configures a Simulator.
type Config struct {
	// Address is the HTTP address of the Consul agent the virtual agents'
	// reads and writes go through (a server: real agents talk to servers).
	// Required.
	Address string
	// Token is the ACL token for registration, reads and writes.
	Token string
	// Join are LAN gossip addresses (host:port) of agents to join.
	// Required.
	Join []string
	// BindAddr is the address the simulator's gossip member binds, on a
	// free port. Default: 127.0.0.1.
	BindAddr string
	// ID tells this simulator's nodes and gossip member apart. Default: a
	// random one.
	ID string
	// Nodes are the virtual nodes.
	Nodes []Node
	// Command answers for each node. Default: no output, exit 0 (`true`).
	Command func(node string, job Job) Reply
	// Duration is how long each command runs; a node writes a heartbeat
	// (an empty chunk) every job Wait while it runs, as agents do.
	// Default: 0.
	Duration time.Duration
	// Workers bounds the batches handled at once. Default: WorkersDefault.
	Workers int
	// BatchSize is the number of nodes whose writes go in one
	// transaction, at most 64. Default: BatchSizeDefault.
	BatchSize int
	// Logger receives warnings. Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	c.BindAddr = cmp.Or(c.BindAddr, "127.0.0.1")
	c.ID = cmp.Or(c.ID, randomHex(4))
	c.Workers = cmp.Or(c.Workers, WorkersDefault)
	c.BatchSize = cmp.Or(c.BatchSize, BatchSizeDefault)
	if c.Command == nil {
		c.Command = func(string, Job) Reply { return Reply{} }
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.Address == "":
		return errors.New("simagent: Address is required")
	case len(c.Join) == 0:
		return errors.New("simagent: Join needs at least one gossip address")
	case c.Workers < 1:
		return errors.New("simagent: Workers must be positive")
	case c.BatchSize < 1 || c.BatchSize > 64:
		return errors.New("simagent: BatchSize must be between 1 and 64")
	}
	seen := map[string]bool{}
	for _, n := range c.Nodes {
		if n.Name == "" || seen[n.Name] {
			return fmt.Errorf("simagent: node name %q empty or used twice", n.Name)
		}
		seen[n.Name] = true
	}
	return nil
}

// Stats counts what the virtual agents did.
type Stats struct {
	Events       int64 // _rexec events received
	Matched      int64 // node deliveries that passed the filters
	SpecReads    int64 // spec reads (stale, and consistent retries)
	StaleMisses  int64 // stale reads that found no spec
	SpecMissing  int64 // nodes that gave up: not even the consistent read found it
	Acks         int64
	Chunks       int64 // output chunks and heartbeats written
	Exits        int64
	WriteFailed  int64 // nodes that stopped because a write failed
	Requests     int64 // HTTP requests to Consul
	Transactions int64
	// LastEventAt is when the latest _rexec event arrived by gossip.
	LastEventAt time.Time
}

// Simulator is a running set of virtual agents. Start creates it; Close
// stops it.
type Simulator struct {
	cfg    Config
	api    *api.Client
	serf   *serf.Serf
	events chan serf.Event
	byName map[string]*vnode

	ctx    context.Context // ends with Close; every goroutine below honours it
	cancel context.CancelFunc
	wg     sync.WaitGroup // the event loop, the keeper and every batch
	sem    chan struct{}  // bounds the batches in flight

	stats struct {
		events, matched, specReads, staleMisses, specMissing, acks, chunks,
		exits, writeFailed, requests, txns atomic.Int64
		lastEvent atomic.Int64 // unix nanoseconds
	}
	closeOnce sync.Once
}

// Start registers the nodes, joins the gossip pool and starts answering
// events. Close undoes all of it except the registration (Deregister).
func Start(ctx context.Context, cfg Config) (*Simulator, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Simulator{cfg: cfg, byName: map[string]*vnode{}, sem: make(chan struct{}, cfg.Workers)}
	for _, n := range cfg.Nodes {
		s.byName[n.Name] = newVNode(n)
	}
	// Many connections kept open, so that thousands of virtual agents'
	// requests do not each open one.
	tr := cleanhttp.DefaultPooledTransport()
	tr.MaxIdleConnsPerHost = 2 * cfg.Workers
	tr.MaxIdleConns = 2 * cfg.Workers
	client, err := api.NewClient(&api.Config{Address: cfg.Address, Token: cfg.Token,
		HttpClient: &http.Client{Transport: countingTransport{tr, &s.stats.requests}}})
	if err != nil {
		return nil, fmt.Errorf("simagent: consul client: %w", err)
	}
	s.api = client
	if err := s.Register(ctx); err != nil {
		return nil, err
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.joinGossip(); err != nil {
		s.cancel()
		return nil, err
	}
	s.wg.Add(2)
	go s.eventLoop()
	go s.keepRegistered()
	return s, nil
}

// Close leaves the gossip pool and waits for the batches in flight: their
// writes fail once the run's session is gone, as a real agent's would.
func (s *Simulator) Close() error {
	var err error
	s.closeOnce.Do(func() {
		if s.serf != nil {
			if lerr := s.serf.Leave(); lerr != nil {
				err = fmt.Errorf("simagent: leave gossip: %w", lerr)
			}
			_ = s.serf.Shutdown()
		}
		s.cancel()
		s.wg.Wait()
	})
	return err
}

// Stats returns the counters so far.
func (s *Simulator) Stats() Stats {
	st := &s.stats
	return Stats{
		Events: st.events.Load(), Matched: st.matched.Load(), SpecReads: st.specReads.Load(),
		StaleMisses: st.staleMisses.Load(), SpecMissing: st.specMissing.Load(), Acks: st.acks.Load(),
		Chunks: st.chunks.Load(), Exits: st.exits.Load(), WriteFailed: st.writeFailed.Load(),
		Requests: st.requests.Load(), Transactions: st.txns.Load(),
		LastEventAt: time.Unix(0, st.lastEvent.Load()),
	}
}

type countingTransport struct {
	base http.RoundTripper
	n    *atomic.Int64
}

func (t countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	t.n.Add(1)
	return t.base.RoundTrip(r)
}
