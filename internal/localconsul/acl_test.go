package localconsul_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/localconsul"
)

func TestACLConfigInvalid(t *testing.T) {
	t.Parallel()
	_, err := localconsul.Start(context.Background(), localconsul.Config{ACL: &localconsul.ACLConfig{DefaultPolicy: "maybe"}})
	if err == nil || !strings.Contains(err.Error(), "ACL.DefaultPolicy") {
		t.Fatalf("Start = %v, want an error naming ACL.DefaultPolicy", err)
	}
}

func TestNoACLHelpers(t *testing.T) {
	t.Parallel()
	c := &localconsul.Cluster{}
	if got := c.ManagementToken(); got != "" {
		t.Errorf("ManagementToken = %q, want empty", got)
	}
	if _, err := c.CreateToken(context.Background(), ""); !errors.Is(err, localconsul.ErrACLDisabled) {
		t.Errorf("CreateToken = %v, want ErrACLDisabled", err)
	}
}

// TestACLCluster starts a cluster with ACLs on, default deny, and checks
// that the client agent registered itself with its own token, and that
// tokens made by CreateToken hold exactly their rules.
func TestACLCluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := localconsul.Start(ctx, localconsul.Config{
		ACL:     &localconsul.ACLConfig{},
		Clients: []localconsul.AgentConfig{{Name: "acl-client-1", Services: []localconsul.Service{{Name: "web"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)

	if cl.ManagementToken() == "" || cl.AgentToken() == "" || cl.ManagementToken() == cl.AgentToken() {
		t.Fatalf("tokens: management %t, agent %t, distinct %t",
			cl.ManagementToken() != "", cl.AgentToken() != "", cl.ManagementToken() != cl.AgentToken())
	}
	// The client agent registered its node and service under default deny,
	// which its agent token allowed.
	mgmt := apiClient(t, cl.Agent("acl-client-1").HTTPAddr(), cl.ManagementToken())
	svcs, _, err := mgmt.Catalog().NodeServiceList("acl-client-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if svcs == nil || len(svcs.Services) != 1 || svcs.Services[0].Service != "web" {
		t.Fatalf("acl-client-1 services = %+v, want web", svcs)
	}

	limited, err := cl.CreateToken(ctx, `key_prefix "team-a/" { policy = "write" }`)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		token string
		key   string
		want  bool
	}{
		{"anonymous is denied by default", "", "team-a/x", false},
		{"management writes anywhere", cl.ManagementToken(), "elsewhere/x", true},
		{"a token writes under its prefix", limited, "team-a/x", true},
		{"a token writes nowhere else", limited, "team-b/x", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := apiClient(t, cl.Agent("acl-client-1").HTTPAddr(), tc.token)
			_, err := c.KV().Put(&api.KVPair{Key: tc.key, Value: []byte("v")}, nil)
			if got := err == nil; got != tc.want {
				t.Fatalf("put %s: err = %v, want allowed %t", tc.key, err, tc.want)
			}
			if !tc.want && !strings.Contains(err.Error(), "403") {
				t.Fatalf("put %s: err = %v, want a 403", tc.key, err)
			}
		})
	}
}

func apiClient(t *testing.T, addr, token string) *api.Client {
	t.Helper()
	c, err := api.NewClient(&api.Config{Address: addr, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
