// Package localconsul runs a real Consul cluster on loopback addresses: one
// server (or three, or any number) and any number of client agents, each on its own 127.x.y.z address
// with its own node name, services and remote-exec setting. Tests and
// `rexec-svc dev` use it; it knows nothing about rexec itself.
package localconsul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/childproc"
)

// Default settings.
const (
	ServerNameDefault   = "consul-server"
	ServersDefault      = 1
	StartTimeoutDefault = 60 * time.Second
	LogLevelDefault     = "info"
)

// Service is a service registered on an agent.
type Service struct {
	ID   string // defaults to Name
	Name string
	Tags []string
}

// AgentConfig describes one agent.
type AgentConfig struct {
	// Name is the node name (required for clients).
	Name string
	// Services are registered on the agent through its configuration.
	Services []Service
	// DisableRemoteExec leaves the agent's remote exec at Consul's default
	// (off). Every other agent is started with disable_remote_exec = false.
	DisableRemoteExec bool
	// ExtraHCL is appended to the agent's configuration file.
	ExtraHCL string
	// LogLevel is the agent's log_level (its log is agent.log in Dir).
	// Default: LogLevelDefault ("info").
	LogLevel string
}

// Config describes a cluster.
type Config struct {
	// Binary is the consul executable. Default: FindBinary.
	Binary string
	// Dir holds every agent's data and logs. Default: a new temporary
	// directory, removed by Stop.
	Dir string
	// Server configures the first server agent; its Name defaults to
	// ServerNameDefault.
	Server AgentConfig
	// Servers is the number of server agents, bootstrapped together
	// (bootstrap_expect = Servers) and joined to one another: 3 gives a
	// Raft cluster with followers, whose stale reads can lag the leader.
	// The servers after the first are named <Server.Name>-2, -3, ... and
	// share Server's other settings, services included. Default:
	// ServersDefault (1).
	Servers int
	// Clients are the client agents.
	Clients []AgentConfig
	// StartTimeout bounds the wait for the cluster to become ready.
	// Default: StartTimeoutDefault.
	StartTimeout time.Duration
	// Logger receives progress messages. Default: discard.
	Logger *slog.Logger
	// ACL, when set, turns ACLs on for every agent (see ACLConfig).
	// Default: ACLs off.
	ACL *ACLConfig
	// GossipInterval is every agent's gossip_lan.gossip_interval: how
	// often an agent passes queued broadcasts, user events among them, to
	// its peers, which bounds how soon agents hear of a run. Default:
	// Consul's (200ms).
	GossipInterval time.Duration
}

func (c Config) withDefaults() Config {
	if c.Server.Name == "" {
		c.Server.Name = ServerNameDefault
	}
	if c.Servers == 0 {
		c.Servers = ServersDefault
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = StartTimeoutDefault
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ACL != nil {
		acl := c.ACL.withDefaults()
		c.ACL = &acl
	}
	return c
}

// serverConfigs are the server agents' configurations, the first one's
// first.
func (c Config) serverConfigs() []AgentConfig {
	out := []AgentConfig{c.Server}
	for i := 2; i <= c.Servers; i++ {
		s := c.Server
		s.Name = fmt.Sprintf("%s-%d", c.Server.Name, i)
		out = append(out, s)
	}
	return out
}

func (c Config) validate() error {
	if c.Servers < 1 || c.Servers > 7 {
		return errors.New("localconsul: Servers must be between 1 and 7")
	}
	seen := map[string]bool{}
	for _, a := range append(c.serverConfigs(), c.Clients...) {
		if a.Name == "" {
			return errors.New("localconsul: every client agent needs a Name")
		}
		if seen[a.Name] {
			return fmt.Errorf("localconsul: node name %q used twice", a.Name)
		}
		seen[a.Name] = true
	}
	if len(c.Clients)+c.Servers > 251 {
		return errors.New("localconsul: at most 251 agents (servers and clients)")
	}
	if c.ACL != nil {
		return c.ACL.validate()
	}
	return nil
}

// Cluster is a running set of agents.
type Cluster struct {
	cfg     Config
	tmpDir  bool
	servers []*Agent // the first is Server()
	clients []*Agent
	// agentToken is the client agents' ACL token, chosen before it exists
	// so that every client's configuration can name it.
	agentToken string

	mu sync.Mutex // guards agents' processes
}

// Agent is one Consul agent of a cluster.
type Agent struct {
	cluster *Cluster
	cfg     AgentConfig
	server  bool
	ip      string
	dir     string
	proc    *childproc.Process
}

// Start starts the cluster and waits until every agent is alive in the
// catalog with its services registered. On error nothing is left running.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Binary == "" {
		bin, err := FindBinary(ctx)
		if err != nil {
			return nil, err
		}
		cfg.Binary = bin
	}
	c := &Cluster{cfg: cfg}
	if cfg.ACL != nil {
		c.agentToken = randomUUID()
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "rexec-consul-")
		if err != nil {
			return nil, fmt.Errorf("localconsul: %w", err)
		}
		c.cfg.Dir, c.tmpDir = dir, true
	}
	base, err := freeSubnet()
	if err != nil {
		c.Stop()
		return nil, err
	}
	// The first server keeps .1 and the clients .2 on, as with a single
	// server; further servers come after the clients.
	c.servers = []*Agent{c.newAgent(cfg.Server, true, base+"1")}
	for i, ac := range cfg.Clients {
		c.clients = append(c.clients, c.newAgent(ac, false, fmt.Sprintf("%s%d", base, i+2)))
	}
	for i, ac := range cfg.serverConfigs()[1:] {
		c.servers = append(c.servers, c.newAgent(ac, true, fmt.Sprintf("%s%d", base, len(cfg.Clients)+2+i)))
	}
	cfg.Logger.InfoContext(ctx, "starting consul cluster", slog.String("server", c.servers[0].ip), slog.Int("servers", len(c.servers)),
		slog.Int("clients", len(c.clients)), slog.Bool("acl", cfg.ACL != nil))
	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()
	if cfg.ACL != nil {
		if err := c.startACL(ctx); err != nil {
			c.Stop()
			return nil, err
		}
	} else {
		for _, a := range c.Agents() {
			if err := a.start(); err != nil {
				c.Stop()
				return nil, err
			}
		}
	}
	if err := c.WaitReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// freeSubnet picks a random 127.a.b.0/24 whose server ports are free, so that
// test packages running in parallel get clusters that cannot collide.
func freeSubnet() (string, error) {
	for range 50 {
		base := fmt.Sprintf("127.%d.%d.", 1+rand.IntN(254), 1+rand.IntN(254))
		l, err := net.Listen("tcp", base+"1:8300")
		if err != nil {
			continue
		}
		l.Close()
		return base, nil
	}
	return "", errors.New("localconsul: no free loopback subnet found")
}

func (c *Cluster) newAgent(cfg AgentConfig, server bool, ip string) *Agent {
	return &Agent{cluster: c, cfg: cfg, server: server, ip: ip, dir: filepath.Join(c.cfg.Dir, cfg.Name)}
}

// Agents returns the servers followed by the clients.
func (c *Cluster) Agents() []*Agent { return append(slices.Clone(c.servers), c.clients...) }

// Server returns the first server agent.
func (c *Cluster) Server() *Agent { return c.servers[0] }

// Servers returns the server agents, the first one first.
func (c *Cluster) Servers() []*Agent { return slices.Clone(c.servers) }

// Clients returns the client agents.
func (c *Cluster) Clients() []*Agent { return slices.Clone(c.clients) }

// Leader returns the server agent that is the Raft leader now, as the
// servers report it.
func (c *Cluster) Leader(ctx context.Context) (*Agent, error) {
	client, err := c.apiClient(c.ManagementToken())
	if err != nil {
		return nil, err
	}
	addr, err := client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("localconsul: leader: %w", err)
	}
	host, _, _ := net.SplitHostPort(addr)
	for _, a := range c.servers {
		if a.ip == host {
			return a, nil
		}
	}
	return nil, fmt.Errorf("localconsul: leader %q is none of the cluster's servers", addr)
}

// Agent returns the agent with the given node name, or nil.
func (c *Cluster) Agent(name string) *Agent {
	for _, a := range c.Agents() {
		if a.cfg.Name == name {
			return a
		}
	}
	return nil
}

// HTTPAddr is the first server agent's HTTP address (host:port).
func (c *Cluster) HTTPAddr() string { return c.Server().HTTPAddr() }

// Stop kills every agent and removes the data directory if Start created it.
func (c *Cluster) Stop() {
	for _, a := range c.Agents() {
		if a != nil {
			a.Kill()
		}
	}
	// REXEC_KEEP_CONSUL keeps the agents' logs for a post-mortem.
	if c.tmpDir && os.Getenv("REXEC_KEEP_CONSUL") == "" {
		os.RemoveAll(c.cfg.Dir)
	}
}

// WaitReady waits until every running agent is alive in the catalog and has
// its services registered.
func (c *Cluster) WaitReady(ctx context.Context) error {
	// With ACLs on (default deny) only the management token sees every
	// node and service.
	client, err := c.apiClient(c.ManagementToken())
	if err != nil {
		return err
	}
	var lastErr error
	for {
		lastErr = c.ready(ctx, client)
		if lastErr == nil {
			return nil
		}
		for _, a := range c.Agents() {
			if a.running() {
				if exited, werr := a.proc.Exited(); exited {
					return fmt.Errorf("localconsul: agent %s exited: %v\n%s", a.cfg.Name, werr, a.logTail())
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localconsul: cluster not ready: %w (last: %v)", ctx.Err(), lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) ready(ctx context.Context, client *api.Client) error {
	q := (&api.QueryOptions{Filter: `CheckID == "serfHealth"`}).WithContext(ctx)
	checks, _, err := client.Health().State(api.HealthAny, q)
	if err != nil {
		return err
	}
	alive := map[string]bool{}
	for _, ch := range checks {
		alive[ch.Node] = ch.Status == api.HealthPassing
	}
	for _, a := range c.Agents() {
		if !a.running() {
			continue
		}
		if !alive[a.cfg.Name] {
			return fmt.Errorf("node %s not alive", a.cfg.Name)
		}
		if len(a.cfg.Services) == 0 {
			continue
		}
		svcs, _, err := client.Catalog().NodeServiceList(a.cfg.Name, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return err
		}
		if svcs == nil || len(svcs.Services) < len(a.cfg.Services) {
			return fmt.Errorf("node %s services not synced", a.cfg.Name)
		}
	}
	return nil
}

// Name is the agent's node name.
func (a *Agent) Name() string { return a.cfg.Name }

// IP is the loopback address the agent binds.
func (a *Agent) IP() string { return a.ip }

// HTTPAddr is the agent's HTTP API address.
func (a *Agent) HTTPAddr() string { return a.ip + ":8500" }

// SerfLANAddr is the agent's LAN gossip address (host:port), which a
// gossip member outside Consul joins to receive user events.
func (a *Agent) SerfLANAddr() string { return a.ip + ":8301" }

// LogPath is the agent's log file.
func (a *Agent) LogPath() string { return filepath.Join(a.dir, "agent.log") }

// Dir is the agent's data directory.
func (a *Agent) Dir() string { return a.dir }

// Running reports whether the agent's process was started and not stopped.
func (a *Agent) Running() bool { return a.running() }

func (a *Agent) running() bool {
	a.cluster.mu.Lock()
	defer a.cluster.mu.Unlock()
	return a.proc != nil
}

func (a *Agent) configHCL() string {
	var b strings.Builder
	fmt.Fprintf(&b, "node_name = %q\ndata_dir = %q\n", a.cfg.Name, filepath.Join(a.dir, "data"))
	fmt.Fprintf(&b, "bind_addr = %q\nclient_addr = %q\nadvertise_addr = %q\n", a.ip, a.ip, a.ip)
	b.WriteString("ports { dns = -1\n grpc = -1 }\n")
	fmt.Fprintf(&b, "disable_update_check = true\nlog_level = %q\nleave_on_terminate = false\n", cmpOr(a.cfg.LogLevel, LogLevelDefault))
	b.WriteString("performance { raft_multiplier = 1 }\n")
	// User events travel by gossip, best effort: with serf's defaults a
	// small cluster misses about one node-delivery in a few hundred (each
	// node retransmits an event only a few times, to three random peers).
	// Gossiping to more peers, more often, makes a loss rare enough that
	// tests and dev mode see rexec's behaviour, not gossip's luck; rexec
	// reports a lost delivery as no_ack either way.
	b.WriteString("gossip_lan { gossip_nodes = 6\n retransmit_mult = 8\n")
	if d := a.cluster.cfg.GossipInterval; d > 0 {
		fmt.Fprintf(&b, " gossip_interval = %q\n", d.String())
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "disable_remote_exec = %t\n", a.cfg.DisableRemoteExec)
	var join []string
	for _, s := range a.cluster.servers {
		if s != a {
			join = append(join, fmt.Sprintf("%q", s.ip))
		}
	}
	if a.server {
		fmt.Fprintf(&b, "server = true\nbootstrap_expect = %d\n", len(a.cluster.servers))
	}
	if len(join) > 0 {
		fmt.Fprintf(&b, "retry_join = [%s]\nretry_interval = \"1s\"\n", strings.Join(join, ", "))
	}
	for _, s := range a.cfg.Services {
		id := cmpOr(s.ID, s.Name)
		tags := make([]string, len(s.Tags))
		for i, t := range s.Tags {
			tags[i] = fmt.Sprintf("%q", t)
		}
		fmt.Fprintf(&b, "services {\n id = %q\n name = %q\n tags = [%s]\n%s}\n", id, s.Name, strings.Join(tags, ", "), a.serviceTokenHCL())
	}
	b.WriteString(a.aclHCL())
	b.WriteString(a.cfg.ExtraHCL)
	b.WriteString("\n")
	return b.String()
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (a *Agent) start() error {
	a.cluster.mu.Lock()
	defer a.cluster.mu.Unlock()
	if a.proc != nil {
		return fmt.Errorf("localconsul: agent %s already running", a.cfg.Name)
	}
	if err := os.MkdirAll(filepath.Join(a.dir, "data"), 0o755); err != nil {
		return fmt.Errorf("localconsul: %w", err)
	}
	cfgPath := filepath.Join(a.dir, "agent.hcl")
	if err := os.WriteFile(cfgPath, []byte(a.configHCL()), 0o644); err != nil {
		return fmt.Errorf("localconsul: %w", err)
	}
	p, err := childproc.Start(a.cluster.cfg.Binary, []string{"agent", "-config-file", cfgPath},
		childproc.Options{Dir: a.dir, LogPath: a.LogPath()})
	if err != nil {
		return fmt.Errorf("localconsul: agent %s: %w", a.cfg.Name, err)
	}
	a.proc = p
	return nil
}

// Kill stops the agent at once with SIGKILL, together with every command it
// was running. Other agents notice it as failed, not as having left.
func (a *Agent) Kill() {
	a.cluster.mu.Lock()
	p := a.proc
	a.proc = nil
	a.cluster.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// Freeze stops the agent and every command it runs with SIGSTOP, as a
// frozen machine would be: its connections stay open, nothing answers.
func (a *Agent) Freeze() error { return a.signal(syscall.SIGSTOP) }

// Thaw resumes a frozen agent with SIGCONT.
func (a *Agent) Thaw() error { return a.signal(syscall.SIGCONT) }

func (a *Agent) signal(sig syscall.Signal) error {
	a.cluster.mu.Lock()
	p := a.proc
	a.cluster.mu.Unlock()
	if p == nil {
		return fmt.Errorf("localconsul: agent %s is not running", a.cfg.Name)
	}
	return p.Signal(sig)
}

// Stop stops the agent gracefully (SIGINT: it leaves the cluster).
func (a *Agent) Stop() {
	a.cluster.mu.Lock()
	p := a.proc
	a.proc = nil
	a.cluster.mu.Unlock()
	if p != nil {
		p.Stop(syscall.SIGINT, 10*time.Second)
	}
}

// Restart starts a stopped agent again with the same data and configuration
// and waits until the cluster is ready.
func (a *Agent) Restart(ctx context.Context) error {
	if err := a.start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, a.cluster.cfg.StartTimeout)
	defer cancel()
	return a.cluster.WaitReady(ctx)
}

func (a *Agent) logTail() string {
	b, _ := os.ReadFile(a.LogPath())
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// Names returns the node names of the agents, sorted.
func (c *Cluster) Names() []string {
	var out []string
	for _, a := range c.Agents() {
		out = append(out, a.cfg.Name)
	}
	slices.Sort(out)
	return out
}
