package localconsul

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ACL defaults.
const (
	ACLDefaultPolicyDefault = "deny"

	// AgentRulesDefault are the rules of the client agents' token: each
	// agent registers its node and services (anti-entropy), and remote exec
	// reads the job spec and writes acks, output and exit codes under
	// whatever prefix a run uses, all with the agent token
	// (agent/remote_exec.go). Any prefix, because tests and dev mode give
	// every run its own.
	AgentRulesDefault = `node_prefix "" { policy = "write" }
service_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
`
)

// ErrACLDisabled is returned by the ACL helpers of a cluster started
// without Config.ACL.
var ErrACLDisabled = errors.New("localconsul: the cluster runs without ACLs")

// ACLConfig turns ACLs on for every agent of a cluster. The zero value is
// ACLs on with default policy deny.
//
// The server agents use the management token as their agent token: they
// must register themselves before any other token can exist, since the
// management token is only bootstrapped by the leader they elect. Client
// agents start once the server is up, with an agent token of their own
// that holds AgentRules, which also registers their services: remote exec
// works through them as in a real cluster, where the agents' token needs
// key:write on the prefix.
type ACLConfig struct {
	// DefaultPolicy is acl.default_policy, "allow" or "deny".
	// Default: ACLDefaultPolicyDefault ("deny").
	DefaultPolicy string
	// ManagementToken is the secret of the initial management token
	// (acl.tokens.initial_management), a UUID. Default: a random UUID.
	ManagementToken string
	// AgentRules are the rules of the client agents' token.
	// Default: AgentRulesDefault.
	AgentRules string
}

func (a ACLConfig) withDefaults() ACLConfig {
	a.DefaultPolicy = cmpOr(a.DefaultPolicy, ACLDefaultPolicyDefault)
	a.AgentRules = cmpOr(a.AgentRules, AgentRulesDefault)
	if a.ManagementToken == "" {
		a.ManagementToken = randomUUID()
	}
	return a
}

func (a ACLConfig) validate() error {
	if a.DefaultPolicy != "allow" && a.DefaultPolicy != "deny" {
		return fmt.Errorf("localconsul: ACL.DefaultPolicy must be allow or deny, not %q", a.DefaultPolicy)
	}
	return nil
}

// aclHCL is the agent's acl block.
func (a *Agent) aclHCL() string {
	c := a.cluster
	if c.cfg.ACL == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "acl {\n enabled = true\n default_policy = %q\n enable_token_persistence = true\n tokens {\n", c.cfg.ACL.DefaultPolicy)
	if a.server {
		fmt.Fprintf(&b, "  initial_management = %q\n  agent = %q\n", c.cfg.ACL.ManagementToken, c.cfg.ACL.ManagementToken)
	} else {
		fmt.Fprintf(&b, "  agent = %q\n", c.agentToken)
	}
	b.WriteString(" }\n}\n")
	return b.String()
}

// serviceTokenHCL is the token line of a service definition. Consul
// registers a service with its own token, or else the agent's default
// token (the anonymous one), never with the agent token; setting
// tokens.default instead would lend the agent's rights to every request
// that carries no token.
func (a *Agent) serviceTokenHCL() string {
	c := a.cluster
	switch {
	case c.cfg.ACL == nil:
		return ""
	case a.server:
		return fmt.Sprintf(" token = %q\n", c.cfg.ACL.ManagementToken)
	default:
		return fmt.Sprintf(" token = %q\n", c.agentToken)
	}
}

// ManagementToken is the secret of the cluster's management token; empty
// when ACLs are off.
func (c *Cluster) ManagementToken() string {
	if c.cfg.ACL == nil {
		return ""
	}
	return c.cfg.ACL.ManagementToken
}

// AgentToken is the secret of the client agents' token; empty when ACLs
// are off.
func (c *Cluster) AgentToken() string { return c.agentToken }

// CreateToken creates a policy with rules and a token holding it, through
// the server with the management token, and returns the token's secret.
func (c *Cluster) CreateToken(ctx context.Context, rules string) (string, error) {
	return c.createToken(ctx, "", rules)
}

// createToken creates a policy with rules and a token holding it, with the
// given secret or a random one.
func (c *Cluster) createToken(ctx context.Context, secretID, rules string) (string, error) {
	if c.cfg.ACL == nil {
		return "", ErrACLDisabled
	}
	client, err := c.apiClient(c.cfg.ACL.ManagementToken)
	if err != nil {
		return "", err
	}
	wo := (&api.WriteOptions{}).WithContext(ctx)
	name := "localconsul-" + randomHex(8)
	pol, _, err := client.ACL().PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, wo)
	if err != nil {
		return "", fmt.Errorf("localconsul: create policy: %w", err)
	}
	tok, _, err := client.ACL().TokenCreate(&api.ACLToken{
		SecretID:    secretID,
		Description: name,
		Policies:    []*api.ACLTokenPolicyLink{{ID: pol.ID}},
	}, wo)
	if err != nil {
		return "", fmt.Errorf("localconsul: create token: %w", err)
	}
	return tok.SecretID, nil
}

// startACL starts the servers alone, waits for them and for ACLs to be
// bootstrapped, creates the client agents' token and then starts the
// clients: clients started earlier would fail to register until their
// next anti-entropy round, up to a minute later.
func (c *Cluster) startACL(ctx context.Context) error {
	for _, s := range c.servers {
		if err := s.start(); err != nil {
			return err
		}
	}
	// Readiness is judged with the management token, so it also means
	// the leader has bootstrapped it.
	if err := c.WaitReady(ctx); err != nil {
		return err
	}
	if _, err := c.createToken(ctx, c.agentToken, c.cfg.ACL.AgentRules); err != nil {
		return fmt.Errorf("%w (agent token)", err)
	}
	for _, a := range c.clients {
		if err := a.start(); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) apiClient(token string) (*api.Client, error) {
	client, err := api.NewClient(&api.Config{Address: c.HTTPAddr(), Token: token})
	if err != nil {
		return nil, fmt.Errorf("localconsul: %w", err)
	}
	return client, nil
}

// randomUUID returns a random (version 4) UUID, the form Consul wants for
// token secrets.
func randomUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
