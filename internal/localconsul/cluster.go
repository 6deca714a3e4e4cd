// Package localconsul runs a real Consul cluster on loopback addresses: one
// server and any number of client agents, each on its own 127.x.y.z address
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
	StartTimeoutDefault = 60 * time.Second
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
}

// Config describes a cluster.
type Config struct {
	// Binary is the consul executable. Default: FindBinary.
	Binary string
	// Dir holds every agent's data and logs. Default: a new temporary
	// directory, removed by Stop.
	Dir string
	// Server configures the single server agent; its Name defaults to
	// ServerNameDefault.
	Server AgentConfig
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
}

func (c Config) withDefaults() Config {
	if c.Server.Name == "" {
		c.Server.Name = ServerNameDefault
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

func (c Config) validate() error {
	seen := map[string]bool{}
	for _, a := range append([]AgentConfig{c.Server}, c.Clients...) {
		if a.Name == "" {
			return errors.New("localconsul: every client agent needs a Name")
		}
		if seen[a.Name] {
			return fmt.Errorf("localconsul: node name %q used twice", a.Name)
		}
		seen[a.Name] = true
	}
	if len(c.Clients) > 250 {
		return errors.New("localconsul: at most 250 client agents")
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
	server  *Agent
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
	c.server = c.newAgent(cfg.Server, true, base+"1")
	for i, ac := range cfg.Clients {
		c.clients = append(c.clients, c.newAgent(ac, false, fmt.Sprintf("%s%d", base, i+2)))
	}
	cfg.Logger.InfoContext(ctx, "starting consul cluster", slog.String("server", c.server.ip), slog.Int("clients", len(c.clients)), slog.Bool("acl", cfg.ACL != nil))
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

// Agents returns the server followed by the clients.
func (c *Cluster) Agents() []*Agent { return append([]*Agent{c.server}, c.clients...) }

// Server returns the server agent.
func (c *Cluster) Server() *Agent { return c.server }

// Agent returns the agent with the given node name, or nil.
func (c *Cluster) Agent(name string) *Agent {
	for _, a := range c.Agents() {
		if a.cfg.Name == name {
			return a
		}
	}
	return nil
}

// HTTPAddr is the server agent's HTTP address (host:port).
func (c *Cluster) HTTPAddr() string { return c.server.HTTPAddr() }

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
	b.WriteString("disable_update_check = true\nlog_level = \"info\"\nleave_on_terminate = false\n")
	b.WriteString("performance { raft_multiplier = 1 }\n")
	// User events travel by gossip, best effort: with serf's defaults a
	// small cluster misses about one node-delivery in a few hundred (each
	// node retransmits an event only a few times, to three random peers).
	// Gossiping to more peers, more often, makes a loss rare enough that
	// tests and dev mode see rexec's behaviour, not gossip's luck; rexec
	// reports a lost delivery as no_ack either way.
	b.WriteString("gossip_lan { gossip_nodes = 6\n retransmit_mult = 8 }\n")
	fmt.Fprintf(&b, "disable_remote_exec = %t\n", a.cfg.DisableRemoteExec)
	if a.server {
		b.WriteString("server = true\nbootstrap_expect = 1\n")
	} else {
		fmt.Fprintf(&b, "retry_join = [%q]\nretry_interval = \"1s\"\n", a.cluster.server.ip)
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
		childproc.Options{Dir: a.dir, LogPath: filepath.Join(a.dir, "agent.log")})
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
	b, _ := os.ReadFile(filepath.Join(a.dir, "agent.log"))
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
