package localconsul_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rexec/rexec/internal/localconsul"
)

func TestConfigInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		note string
		cfg  localconsul.Config
		want string
	}{
		{"too many servers", localconsul.Config{Servers: 8}, "Servers"},
		{"negative servers", localconsul.Config{Servers: -1}, "Servers"},
		{"a client named like an extra server", localconsul.Config{Servers: 3, Clients: []localconsul.AgentConfig{{Name: "consul-server-2"}}}, "used twice"},
		{"a client without a name", localconsul.Config{Clients: []localconsul.AgentConfig{{}}}, "Name"},
	}
	for _, tc := range tests {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			_, err := localconsul.Start(context.Background(), tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want an error naming %s", err, tc.want)
			}
		})
	}
}

// TestThreeServers starts three servers and a client and checks that they
// form one Raft cluster of three voters, that Server is still the first
// one, and that a write through the client reaches every server.
func TestThreeServers(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := localconsul.Start(ctx, localconsul.Config{
		Servers: 3,
		Clients: []localconsul.AgentConfig{{Name: "three-client-1", Services: []localconsul.Service{{Name: "web"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Stop)

	servers := cl.Servers()
	var names []string
	for _, s := range servers {
		names = append(names, s.Name())
	}
	if want := []string{"consul-server", "consul-server-2", "consul-server-3"}; !slices.Equal(names, want) {
		t.Fatalf("servers = %v, want %v", names, want)
	}
	if cl.Server() != servers[0] || cl.HTTPAddr() != servers[0].HTTPAddr() {
		t.Fatal("Server/HTTPAddr is not the first server")
	}
	if got := cl.Names(); len(got) != 4 {
		t.Fatalf("Names = %v, want 4 agents", got)
	}

	c := apiClient(t, cl.Server().HTTPAddr(), "")
	raft, err := c.Operator().RaftGetConfiguration((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	voters := 0
	for _, s := range raft.Servers {
		if s.Voter {
			voters++
		}
	}
	if voters != 3 {
		t.Fatalf("raft configuration has %d voters, want 3: %+v", voters, raft.Servers)
	}
	leader, err := cl.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(servers, leader) {
		t.Fatalf("leader %s is not a server", leader.Name())
	}

	// A write through the client is read back from each server with a
	// consistent read (forwarded to the leader) and, once applied there, a
	// stale one (the server's own state).
	cc := apiClient(t, cl.Agent("three-client-1").HTTPAddr(), "")
	if _, err := cc.KV().Put(&api.KVPair{Key: "three/x", Value: []byte("v")}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		sc := apiClient(t, s.HTTPAddr(), "")
		p, _, err := sc.KV().Get("three/x", (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
		if err != nil || p == nil || string(p.Value) != "v" {
			t.Fatalf("consistent read on %s = %v, %v", s.Name(), p, err)
		}
		// A stale read blocking on the write's index returns once this
		// server has applied it.
		q := &api.QueryOptions{AllowStale: true, WaitIndex: p.ModifyIndex - 1, WaitTime: 5 * time.Second}
		p, _, err = sc.KV().Get("three/x", q.WithContext(ctx))
		if err != nil || p == nil {
			t.Fatalf("stale read on %s = %v, %v", s.Name(), p, err)
		}
	}
}
