package consul_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
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

// aclAgent is the client agent tenants talk to on the ACL cluster.
const aclAgent = "acl-web-1"

// aclEnv is a second cluster, with ACLs on and default deny, started by
// the first test that needs it and stopped by TestMain.
var aclEnv struct {
	once    sync.Once
	cluster *localconsul.Cluster
	err     error
}

func aclCluster(t *testing.T) *localconsul.Cluster {
	t.Helper()
	aclEnv.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		aclEnv.cluster, aclEnv.err = localconsul.Start(ctx, localconsul.Config{
			ACL: &localconsul.ACLConfig{DefaultPolicy: "deny"},
			Clients: []localconsul.AgentConfig{
				{Name: aclAgent, Services: []localconsul.Service{{Name: "web"}}},
				{Name: "acl-web-2", Services: []localconsul.Service{{Name: "web"}}},
				{Name: "acl-db-1", Services: []localconsul.Service{{Name: "db"}}},
			},
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
	})
	if aclEnv.err != nil {
		t.Fatalf("ACL cluster: %v", aclEnv.err)
	}
	return aclEnv.cluster
}

func stopACLCluster() {
	if aclEnv.cluster != nil {
		aclEnv.cluster.Stop()
	}
}

// tenantRule is one grant of a complete tenant policy and the permission
// the preflight names when it is missing.
type tenantRule struct {
	name string
	hcl  string
	perm consul.Permission
}

// tenantRules is the complete policy of a tenant whose agent is aclAgent
// and whose runs use prefix: the one the README documents.
func tenantRules(prefix string) []tenantRule {
	return []tenantRule{
		{"agent", `agent_prefix "" { policy = "read" }`, consul.Permission{Resource: "agent", Segment: aclAgent, Access: "read"}},
		{"session", `session_prefix "" { policy = "write" }`, consul.Permission{Resource: "session", Segment: aclAgent, Access: "write"}},
		{"node", `node_prefix "" { policy = "read" }`, consul.Permission{Resource: "node", Segment: "", Access: "read"}},
		{"service", `service_prefix "" { policy = "read" }`, consul.Permission{Resource: "service", Segment: "", Access: "read"}},
		{"key", fmt.Sprintf(`key_prefix "%s/" { policy = "write" }`, prefix), consul.Permission{Resource: "key", Segment: prefix + "/rexec-preflight", Access: "write"}},
		{"event", `event "_rexec" { policy = "write" }`, consul.Permission{Resource: "event", Segment: "_rexec", Access: "write"}},
	}
}

// readmePolicy is the example of README.md, "Setting up Consul agents",
// for aclAgent and prefix.
func readmePolicy(prefix string) string {
	return strings.NewReplacer("node-1", aclAgent, "_rexec/", prefix+"/").Replace(`
agent "node-1"    { policy = "read" }   # or agent_prefix "" — learn the agent's node name
session "node-1"  { policy = "write" }  # or session_prefix "" — the run's session, on that node
node_prefix ""    { policy = "read" }   # resolve targets from the whole catalog
service_prefix "" { policy = "read" }
key_prefix "_rexec/" { policy = "write" } # job spec, agents' reports, clean-up
event "_rexec"    { policy = "write" }  # fire the remote-exec event
`)
}

// rulesHCL joins the rules, leaving out the one named without and putting
// replace in its place.
func rulesHCL(rules []tenantRule, without, replace string) string {
	var b strings.Builder
	for _, r := range rules {
		if r.name == without {
			b.WriteString(replace + "\n")
			continue
		}
		b.WriteString(r.hcl + "\n")
	}
	return b.String()
}

func permOf(rules []tenantRule, name string) consul.Permission {
	for _, r := range rules {
		if r.name == name {
			return r.perm
		}
	}
	panic("no rule " + name)
}

// aclClient is an engine client with token on the ACL cluster's aclAgent.
func aclClient(t *testing.T, token string) *consul.Client {
	t.Helper()
	return clientAt(t, aclCluster(t).Agent(aclAgent).HTTPAddr(), token)
}

func clientAt(t *testing.T, addr, token string) *consul.Client {
	t.Helper()
	c, err := consul.New(consul.Config{Address: addr, Token: token, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPreflight(t *testing.T) {
	t.Parallel()
	cl := aclCluster(t)
	ctx := ctxT(t, time.Minute)
	prefix := testenv.Prefix(t)
	rules := tenantRules(prefix)
	all := make([]consul.Permission, len(rules))
	for i, r := range rules {
		all[i] = r.perm
	}

	for _, tc := range []struct {
		note    string
		without string // the rule left out
		replace string // what stands in its place
		token   string // instead of a token with the rules
		rules   string // instead of the tenant rules
		want    []consul.Permission
	}{
		{note: "complete tenant policy"},
		{note: "the README's policy", rules: readmePolicy(prefix)},
		{note: "management token", token: cl.ManagementToken()},
		{note: "without agent:read", without: "agent", want: []consul.Permission{permOf(rules, "agent")}},
		{note: "without session:write", without: "session", want: []consul.Permission{permOf(rules, "session")}},
		{note: "without node:read", without: "node", want: []consul.Permission{permOf(rules, "node")}},
		{note: "without service:read", without: "service", want: []consul.Permission{permOf(rules, "service")}},
		{note: "without key:write", without: "key", want: []consul.Permission{permOf(rules, "key")}},
		{note: "without event:write", without: "event", want: []consul.Permission{permOf(rules, "event")}},
		{note: "agent:read on the agent's node alone", without: "agent", replace: fmt.Sprintf(`agent %q { policy = "read" }`, aclAgent)},
		{note: "session:write on the agent's node alone", without: "session", replace: fmt.Sprintf(`session %q { policy = "write" }`, aclAgent)},
		{note: "session:write on another node", without: "session", replace: `session "acl-db-1" { policy = "write" }`, want: []consul.Permission{permOf(rules, "session")}},
		{note: "node:read on part of the catalog", without: "node", replace: `node_prefix "acl-" { policy = "read" }`, want: []consul.Permission{permOf(rules, "node")}},
		{note: "service:read on one service", without: "service", replace: `service "web" { policy = "read" }`, want: []consul.Permission{permOf(rules, "service")}},
		{note: "key:write on another prefix", without: "key", replace: `key_prefix "elsewhere/" { policy = "write" }`, want: []consul.Permission{permOf(rules, "key")}},
		{note: "key:write on the prefix's own key only", without: "key", replace: fmt.Sprintf(`key "%s/" { policy = "write" }`, prefix), want: []consul.Permission{permOf(rules, "key")}},
		{note: "key:read on the prefix", without: "key", replace: fmt.Sprintf(`key_prefix "%s/" { policy = "read" }`, prefix), want: []consul.Permission{permOf(rules, "key")}},
		{note: "event:read only", without: "event", replace: `event "_rexec" { policy = "read" }`, want: []consul.Permission{permOf(rules, "event")}},
		{note: "anonymous token", token: "-", want: all},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			token := tc.token
			switch token {
			case "":
				var err error
				if token, err = cl.CreateToken(ctx, cmpOr(tc.rules, rulesHCL(rules, tc.without, tc.replace))); err != nil {
					t.Fatal(err)
				}
			case "-":
				token = ""
			}
			res, err := aclClient(t, token).Preflight(ctx, prefix)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Checked {
				t.Error("Checked = false with ACLs on")
			}
			if res.Node != aclAgent {
				t.Errorf("Node = %q, want %q", res.Node, aclAgent)
			}
			if !slices.Equal(res.Required, all) {
				t.Errorf("Required = %v, want %v", res.Required, all)
			}
			if !slices.Equal(res.Missing, tc.want) && (len(res.Missing) != 0 || len(tc.want) != 0) {
				t.Errorf("Missing = %v, want %v", res.Missing, tc.want)
			}
			if got, want := res.Allowed(), len(tc.want) == 0; got != want {
				t.Errorf("Allowed = %t, want %t", got, want)
			}
		})
	}
}

func TestPermissionString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		perm consul.Permission
		want string
	}{
		{consul.Permission{Resource: "event", Segment: "_rexec", Access: "write"}, `event:write on "_rexec"`},
		{consul.Permission{Resource: "node", Segment: "", Access: "read"}, `node:read on ""`},
		{consul.Permission{Resource: "key", Segment: `a"b`, Access: "write"}, `key:write on "a\"b"`},
	} {
		if got := tc.perm.String(); got != tc.want {
			t.Errorf("String() = %s, want %s", got, tc.want)
		}
	}
}

// TestPreflightACLsDisabled measures the package's main cluster, which runs
// without ACLs: the authorize endpoint answers 401 "ACL support disabled"
// whatever the token, and the preflight reports that it checked nothing.
func TestPreflightACLsDisabled(t *testing.T) {
	t.Parallel()
	addr := testenv.Cluster(t).Agent("web-1").HTTPAddr()
	ctx := ctxT(t, time.Minute)

	status, body := postAuthorize(t, ctx, addr, "")
	if status != http.StatusUnauthorized || body != "ACL support disabled" {
		t.Fatalf("authorize with ACLs off: %d %q, want 401 \"ACL support disabled\"", status, body)
	}
	for _, tc := range []struct{ note, token string }{
		{"no token", ""},
		{"a token nobody created", "4a1bd7c1-5c51-4f5f-9d6a-0d3f1f3bb3e2"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			res, err := clientAt(t, addr, tc.token).Preflight(ctx, "_rexec")
			if err != nil {
				t.Fatal(err)
			}
			if res.Checked || !res.Allowed() || len(res.Missing) != 0 {
				t.Errorf("result = %+v, want unchecked, allowed, nothing missing", res)
			}
			if res.Node != "web-1" || len(res.Required) != 6 {
				t.Errorf("Node = %q, Required = %v; want web-1 and six permissions", res.Node, res.Required)
			}
		})
	}
}

func postAuthorize(t *testing.T, ctx context.Context, addr, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/internal/acl/authorize",
		strings.NewReader(`[{"Resource":"event","Segment":"_rexec","Access":"write"}]`))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, strings.TrimSpace(b.String())
}

func TestPreflightErrors(t *testing.T) {
	t.Parallel()
	cl := aclCluster(t)
	ctx := ctxT(t, time.Minute)
	agent := cl.Agent(aclAgent).HTTPAddr()
	good, err := cl.CreateToken(ctx, rulesHCL(tenantRules("_rexec"), "", ""))
	if err != nil {
		t.Fatal(err)
	}
	unknown := "0b5e4d7a-8c1f-4e6b-a7d2-3f9c8e1b2a40"

	// Stand-ins for a Consul without the endpoint, made of the real agent:
	// it answers 404 for a path it does not know and 405 for a method the
	// path does not take.
	rewrite := func(f func(r *http.Request)) string {
		target, _ := url.Parse("http://" + agent)
		p := httputil.NewSingleHostReverseProxy(target)
		director := p.Director
		p.Director = func(r *http.Request) {
			director(r)
			if r.URL.Path == "/v1/internal/acl/authorize" {
				f(r)
			}
		}
		srv := httptest.NewServer(p)
		t.Cleanup(srv.Close)
		return strings.TrimPrefix(srv.URL, "http://")
	}
	gone := rewrite(func(r *http.Request) { r.URL.Path = "/v1/internal/acl/authorize-gone" })
	putOnly := rewrite(func(r *http.Request) { r.Method = http.MethodPut })

	for _, tc := range []struct {
		note    string
		addr    string
		token   string
		prefix  string
		wantIs  error
		wantMsg string
	}{
		{note: "unknown token", addr: agent, token: unknown, wantIs: consul.ErrTokenUnknown},
		{note: "endpoint missing (404)", addr: gone, token: good, wantIs: consul.ErrPreflightUnsupported, wantMsg: "HTTP 404"},
		{note: "endpoint refuses POST (405)", addr: putOnly, token: good, wantIs: consul.ErrPreflightUnsupported, wantMsg: "HTTP 405"},
		{note: "Consul unreachable", addr: "127.0.0.1:1", token: good, wantMsg: "query local agent"},
		{note: "invalid prefix", addr: agent, token: good, prefix: "/abs", wantMsg: "must not start or end with /"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			_, err := clientAt(t, tc.addr, tc.token).Preflight(ctx, cmpOr(tc.prefix, "_rexec"))
			if err == nil {
				t.Fatal("no error")
			}
			t.Log(err)
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("err = %v, want %v", err, tc.wantIs)
			}
			if tc.wantIs == nil && (errors.Is(err, consul.ErrTokenUnknown) || errors.Is(err, consul.ErrPreflightUnsupported)) {
				t.Errorf("err = %v, want neither typed error", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("err = %v, want it to say %q", err, tc.wantMsg)
			}
			if strings.Contains(err.Error(), tc.token) {
				t.Errorf("err = %v carries the token", err)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestPreflightAndRunWithACLs runs a command with a complete tenant token
// on the ACL cluster, and shows what the preflight saves a tenant without
// event:write from: the run would write its job spec and fail only when
// firing.
func TestPreflightAndRunWithACLs(t *testing.T) {
	t.Parallel()
	cl := aclCluster(t)
	ctx := ctxT(t, 2*time.Minute)
	mgmt, err := api.NewClient(&api.Config{Address: cl.HTTPAddr(), Token: cl.ManagementToken()})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("complete token runs", func(t *testing.T) {
		t.Parallel()
		prefix := testenv.Prefix(t)
		token, err := cl.CreateToken(ctx, rulesHCL(tenantRules(prefix), "", ""))
		if err != nil {
			t.Fatal(err)
		}
		b := &bundle{cluster: cl, client: aclClient(t, token), api: mgmt, prefix: prefix}
		pre, err := b.client.Preflight(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if !pre.Checked || !pre.Allowed() {
			t.Fatalf("preflight = %+v, want checked and allowed", pre)
		}
		res, col := b.resolveAndRun(t, ctx, b.spec("echo", "hello"))
		if got, want := nodeNames(targetsOf(res)), allAlive(cl); !slices.Equal(got, want) {
			t.Errorf("nodes = %v, want %v", got, want)
		}
		for _, n := range res.Nodes {
			if n.State != consul.NodeExited || n.ExitCode != 0 {
				t.Errorf("%s: %s %d, want exited 0", n.Node, n.State, n.ExitCode)
			}
			if got := col.output(n.Node); got != "hello\n" {
				t.Errorf("%s: output %q", n.Node, got)
			}
		}
		b.assertClean(t, res.Session)
	})

	t.Run("without event:write the preflight names it", func(t *testing.T) {
		t.Parallel()
		prefix := testenv.Prefix(t)
		rules := tenantRules(prefix)
		token, err := cl.CreateToken(ctx, rulesHCL(rules, "event", ""))
		if err != nil {
			t.Fatal(err)
		}
		b := &bundle{cluster: cl, client: aclClient(t, token), api: mgmt, prefix: prefix}
		pre, err := b.client.Preflight(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if pre.Allowed() || !slices.Equal(pre.Missing, []consul.Permission{permOf(rules, "event")}) {
			t.Fatalf("preflight = %+v, want event:write missing", pre)
		}
		if got := pre.Missing[0].String(); got != `event:write on "_rexec"` {
			t.Errorf("missing = %s", got)
		}

		// Without the preflight: the job spec is written, and only firing
		// fails.
		targets, err := b.client.Resolve(ctx, b.spec())
		if err != nil {
			t.Fatal(err)
		}
		run, err := b.client.Prepare(ctx, b.spec("true"), targets)
		if err != nil {
			t.Fatalf("prepare: %v", err)
		}
		job := prefix + "/" + run.Session() + "/job"
		if kv, _, err := mgmt.KV().Get(job, nil); err != nil || kv == nil {
			t.Fatalf("job spec %s not written: %v", job, err)
		}
		err = run.Fire(ctx, nil)
		if !errors.Is(err, consul.ErrNotFired) || !strings.Contains(err.Error(), "403") {
			t.Fatalf("fire = %v, want ErrNotFired with a 403", err)
		}
		b.assertClean(t, run.Session())
	})
}

func targetsOf(res *consul.Result) []consul.Node {
	out := make([]consul.Node, len(res.Nodes))
	for i, n := range res.Nodes {
		out[i] = consul.Node{Name: n.Node}
	}
	return out
}

// TestPreflightDatacenterNamed names the agent's own datacenter: the
// authorize request then carries ?dc=, and the session is still the local
// agent's.
func TestPreflightDatacenterNamed(t *testing.T) {
	t.Parallel()
	cl := aclCluster(t)
	ctx := ctxT(t, time.Minute)
	prefix := testenv.Prefix(t)
	rules := tenantRules(prefix)
	token, err := cl.CreateToken(ctx, rulesHCL(rules, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	c, err := consul.New(consul.Config{Address: cl.Agent(aclAgent).HTTPAddr(), Datacenter: "dc1", Token: token, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Preflight(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Checked || !res.Allowed() || !slices.Contains(res.Required, permOf(rules, "session")) {
		t.Errorf("result = %+v, want checked, allowed, session:write on %s asked", res, aclAgent)
	}
}
