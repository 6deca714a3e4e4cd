package consul

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/hashicorp/consul/api"
)

var (
	// ErrPreflightUnsupported means the agent has no ACL authorize endpoint
	// (POST /v1/internal/acl/authorize answered 404 or 405): it is internal
	// to Consul (its UI uses it), so a Consul older or newer than the one it
	// was measured on (1.13.9) may lack it. The preflight then cannot say
	// anything about the token, and it does not guess.
	ErrPreflightUnsupported = errors.New("the Consul agent has no ACL authorize endpoint (POST /v1/internal/acl/authorize), so the token's permissions cannot be checked before a run")

	// ErrTokenUnknown means Consul does not know the client's ACL token: it
	// never existed, was deleted, or expired ("ACL not found").
	ErrTokenUnknown = errors.New("the Consul ACL token is unknown to Consul (not found, deleted or expired)")
)

// preflightKey is the key under the prefix whose key:write the preflight
// asks for. Job specs live at <prefix>/<session>/job with a session ID
// nobody knows in advance, so any key under the prefix stands for them; a
// child key rather than "<prefix>/" itself, so that an exact rule on the
// directory key does not pass for a prefix rule.
const preflightKey = "rexec-preflight"

// authorizeMax is the most items Consul's authorize endpoint takes at once.
const authorizeMax = 64

// Permission is one ACL permission, in the terms of Consul's authorize
// endpoint: a resource, a segment (the node, key, event… name; "" asks
// about a rule that covers every name, i.e. a prefix rule for "") and an
// access level.
type Permission struct {
	Resource string `json:"resource"`
	Segment  string `json:"segment"`
	Access   string `json:"access"`
}

// String renders p as `event:write on "_rexec"`, the way Consul's own
// permission-denied messages put it.
func (p Permission) String() string {
	return fmt.Sprintf("%s:%s on %q", p.Resource, p.Access, p.Segment)
}

// PreflightResult is what the preflight learned about the client's token.
type PreflightResult struct {
	// Checked is false when the agent has ACLs disabled: Consul enforces
	// nothing then, so nothing can be missing.
	Checked bool `json:"checked"`
	// Node is the local agent's node name, the segment of agent:read and
	// session:write; empty when the token may not read it and Consul's
	// refusal did not name it.
	Node string `json:"node,omitempty"`
	// Required is every permission a run needs, in a fixed order.
	Required []Permission `json:"required"`
	// Missing are the required permissions the token lacks, in the same
	// order; empty when Allowed.
	Missing []Permission `json:"missing"`
}

// Allowed reports whether the token holds every permission a run needs
// (always true when ACLs are disabled).
func (r PreflightResult) Allowed() bool { return len(r.Missing) == 0 }

// Preflight asks Consul whether the client's token holds every permission a
// run under prefix needs, without side effects:
//
//   - agent:read on the local agent's node: asked by reading
//     /v1/agent/self, which needs exactly that and gives the node's name;
//   - session:write on the node the session is created on: the local
//     agent's, or a Consul server's in a foreign datacenter (as Prepare
//     creates it);
//   - node:read and service:read on "" — read on the whole catalog, which
//     `node_prefix "" { policy = "read" }` and its service twin grant.
//     Consul filters catalog reads silently, so a narrower grant would not
//     fail: the target set would quietly be resolved from the part of the
//     catalog the token can see, and the dry run, the policy and the audit
//     record would present that as every node the filters match;
//   - key:write on "<prefix>/rexec-preflight", standing for the job spec
//     <prefix>/<session>/job and the tree the run reads and deletes;
//   - event:write on "_rexec".
//
// Every permission but agent:read is asked in one request to Consul's
// POST /v1/internal/acl/authorize. When the token lacks agent:read, the
// node's name comes from Consul's refusal ("lacks permission 'agent:read'
// on "node-1""); should a Consul word it otherwise, Node stays empty and
// session:write is not asked (it is reported once agent:read is granted);
// nor is it for a foreign datacenter, whose session node cannot be told
// without the local agent's datacenter.
//
// With ACLs disabled the authorize endpoint answers 401 "ACL support
// disabled" (measured on 1.13.9, with any token or none): Preflight then
// returns Checked false and nothing missing. An agent without the endpoint
// gives ErrPreflightUnsupported; a token Consul does not know gives
// ErrTokenUnknown. The token never appears in an error or a log.
func (c *Client) Preflight(ctx context.Context, prefix string) (PreflightResult, error) {
	if err := validatePrefix(prefix); err != nil {
		return PreflightResult{}, fmt.Errorf("acl preflight: %w", err)
	}
	self, err := c.agentSelf(ctx)
	if err != nil {
		return PreflightResult{}, fmt.Errorf("acl preflight: %w", err)
	}
	res := PreflightResult{Checked: true, Node: self.node, Missing: []Permission{}}
	agentRead := Permission{Resource: "agent", Segment: self.node, Access: "read"}
	res.Required = append(res.Required, agentRead)
	if self.denied {
		res.Missing = append(res.Missing, agentRead)
	}

	var ask []Permission
	sessionNode, err := c.sessionNode(ctx, self)
	if err != nil {
		return PreflightResult{}, fmt.Errorf("acl preflight: %w", err)
	}
	if sessionNode != "" {
		ask = append(ask, Permission{Resource: "session", Segment: sessionNode, Access: "write"})
	}
	ask = append(ask,
		Permission{Resource: "node", Segment: "", Access: "read"},
		Permission{Resource: "service", Segment: "", Access: "read"},
		Permission{Resource: "key", Segment: prefix + "/" + preflightKey, Access: "write"},
		Permission{Resource: "event", Segment: eventName, Access: "write"},
	)
	res.Required = append(res.Required, ask...)

	allowed, aclsOn, err := c.authorize(ctx, ask)
	if err != nil {
		return PreflightResult{}, fmt.Errorf("acl preflight: %w", err)
	}
	if !aclsOn {
		// /v1/agent/self cannot have refused anything with ACLs off.
		c.log.DebugContext(ctx, "acl preflight: ACLs are disabled on the agent")
		return PreflightResult{Node: self.node, Required: res.Required, Missing: []Permission{}}, nil
	}
	for i, ok := range allowed {
		if !ok {
			res.Missing = append(res.Missing, ask[i])
		}
	}
	c.log.DebugContext(ctx, "acl preflight", slog.String("prefix", prefix), slog.Int("missing", len(res.Missing)))
	return res, nil
}

// selfInfo is what /v1/agent/self told about the local agent.
type selfInfo struct {
	node   string
	dc     string
	denied bool // the token lacks agent:read
}

// deniedOn extracts the segment from Consul's permission-denied message,
// `... lacks permission 'agent:read' on "node-1"`.
var deniedOn = regexp.MustCompile(`lacks permission 'agent:read' on "([^"]*)"`)

func (c *Client) agentSelf(ctx context.Context) (selfInfo, error) {
	status, body, err := c.do(ctx, http.MethodGet, "/v1/agent/self", nil)
	if err != nil {
		return selfInfo{}, fmt.Errorf("query local agent: %w", err)
	}
	switch {
	case status == http.StatusOK:
	case status == http.StatusForbidden && isTokenUnknown(body):
		return selfInfo{}, ErrTokenUnknown
	case status == http.StatusForbidden:
		var node string
		if m := deniedOn.FindSubmatch(body); m != nil {
			node = string(m[1])
		}
		return selfInfo{node: node, denied: true}, nil
	default:
		return selfInfo{}, fmt.Errorf("query local agent: %w", statusError(status, body))
	}
	var self struct {
		Config struct {
			NodeName   string
			Datacenter string
		}
	}
	if err := json.Unmarshal(body, &self); err != nil {
		return selfInfo{}, fmt.Errorf("query local agent: decode: %w", err)
	}
	if self.Config.NodeName == "" {
		return selfInfo{}, errors.New("query local agent: no node name in /v1/agent/self")
	}
	return selfInfo{node: self.Config.NodeName, dc: self.Config.Datacenter}, nil
}

// sessionNode is the node Prepare creates the session on: the local agent's,
// or in a foreign datacenter the first healthy Consul server there (see
// createSession, which this must follow). It is "" when that cannot be
// told: a token without agent:read learns no datacenter, and its node name
// only from the refusal.
func (c *Client) sessionNode(ctx context.Context, self selfInfo) (string, error) {
	switch {
	case c.cfg.Datacenter == "":
		return self.node, nil
	case self.denied:
		return "", nil
	case self.dc == c.cfg.Datacenter:
		return self.node, nil
	}
	return c.foreignServer(ctx)
}

// authorize asks Consul's authorize endpoint about perms. aclsOn is false
// when the agent has ACLs disabled.
func (c *Client) authorize(ctx context.Context, perms []Permission) (allowed []bool, aclsOn bool, err error) {
	if len(perms) > authorizeMax {
		return nil, false, fmt.Errorf("acl authorize: %d permissions, at most %d at once", len(perms), authorizeMax)
	}
	type item struct {
		Resource string
		Segment  string
		Access   string
		Allow    bool `json:",omitempty"`
	}
	req := make([]item, len(perms))
	for i, p := range perms {
		req[i] = item{Resource: p.Resource, Segment: p.Segment, Access: p.Access}
	}
	status, body, err := c.do(ctx, http.MethodPost, "/v1/internal/acl/authorize", req)
	if err != nil {
		return nil, false, fmt.Errorf("acl authorize: %w", err)
	}
	switch {
	case status == http.StatusOK:
	case status == http.StatusUnauthorized && bytes.Contains(body, []byte("ACL support disabled")):
		return nil, false, nil
	case status == http.StatusForbidden && isTokenUnknown(body):
		return nil, false, ErrTokenUnknown
	case status == http.StatusNotFound || status == http.StatusMethodNotAllowed:
		return nil, false, fmt.Errorf("%w (HTTP %d)", ErrPreflightUnsupported, status)
	default:
		return nil, false, fmt.Errorf("acl authorize: %w", statusError(status, body))
	}
	var resp []item
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, false, fmt.Errorf("acl authorize: decode: %w", err)
	}
	if len(resp) != len(req) {
		return nil, false, fmt.Errorf("acl authorize: %d answers to %d questions", len(resp), len(req))
	}
	allowed = make([]bool, len(resp))
	for i, r := range resp {
		// Answers come in the order asked; a mismatch means the endpoint
		// is not the one measured, and a guess would be worse than an error.
		if !strings.EqualFold(r.Resource, req[i].Resource) || r.Segment != req[i].Segment {
			return nil, false, fmt.Errorf("acl authorize: answer %d is about %s:%s on %q", i, r.Resource, r.Access, r.Segment)
		}
		allowed[i] = r.Allow
	}
	return allowed, true, nil
}

func isTokenUnknown(body []byte) bool { return bytes.Contains(body, []byte("ACL not found")) }

// statusError makes an error of an unexpected answer. Consul's error bodies
// name a token by its accessor ID at most, never by its secret.
func statusError(status int, body []byte) error {
	msg := strings.TrimSpace(string(body))
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return api.StatusError{Code: status, Body: msg}
}

// maxBody bounds what is read of an answer; /v1/agent/self is the largest,
// a few KiB.
const maxBody = 1 << 20

// do sends one request through the client's HTTP transport, with the
// client's token and datacenter, as consul/api would; for the endpoints it
// has no method for.
func (c *Client) do(ctx context.Context, method, path string, in any) (int, []byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, nil, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	u := c.base
	u.Path += path
	if c.cfg.Datacenter != "" {
		u.RawQuery = url.Values{"dc": {c.cfg.Datacenter}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return 0, nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.cfg.Token != "" {
		// A header, never the URL: transport errors quote the URL.
		req.Header.Set("X-Consul-Token", c.cfg.Token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return 0, nil, fmt.Errorf("read %s answer: %w", path, err)
	}
	return resp.StatusCode, b, nil
}
