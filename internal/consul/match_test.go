package consul_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/rexec/rexec/internal/consul"
)

// matchCatalog is a catalog as the view or ReadCatalog builds it: alive
// nodes sorted by name, services sorted by ID.
var matchCatalog = &consul.Catalog{Index: 42, Nodes: []consul.Node{
	{Name: "consul-server", Services: []consul.Service{{ID: "consul", Name: "consul", Tags: []string{}}}},
	{Name: "db-1", Services: []consul.Service{
		{ID: "cache-a", Name: "cache", Tags: []string{"lru"}},
		{ID: "db", Name: "db", Tags: []string{"primary"}},
	}},
	{Name: "web-1", Services: []consul.Service{{ID: "web", Name: "web", Tags: []string{"v1", "blue"}}}},
	{Name: "web-2", Services: []consul.Service{{ID: "web", Name: "web", Tags: []string{"v2", "green"}}}},
	{Name: "worker-1", Services: []consul.Service{}},
}}

func TestMatch(t *testing.T) {
	t.Parallel()
	var badFilter *consul.FilterError
	for _, tc := range []struct {
		note               string
		node, service, tag string
		want               []string
		wantErr            error
		wantAs             any
	}{
		{note: "no filter: every alive node", want: []string{"consul-server", "db-1", "web-1", "web-2", "worker-1"}},
		{note: "node regex, unanchored", node: "web", want: []string{"web-1", "web-2"}},
		{note: "node regex, anchored", node: "^web-1$", want: []string{"web-1"}},
		{note: "service regex on the ID, not the name", service: "^cache-a$", want: []string{"db-1"}},
		{note: "service name that is not an ID matches nothing", service: "^cache$", wantErr: consul.ErrNoTargets},
		{note: "the servers' consul service is never matched", service: "consul", wantErr: consul.ErrNoTargets},
		{note: "service regex, unanchored", service: "e", want: []string{"db-1", "web-1", "web-2"}},
		{note: "tag of the matched service", service: "^web$", tag: "^blue$", want: []string{"web-1"}},
		{note: "tag of another service on the node does not count", service: "^db$", tag: "lru", wantErr: consul.ErrNoTargets},
		{note: "tag on any matched service", service: ".", tag: "^(lru|v2)$", want: []string{"db-1", "web-2"}},
		{note: "node and service together", node: "-2$", service: "web", want: []string{"web-2"}},
		{note: "nothing matches", node: "^nope$", wantErr: consul.ErrNoTargets},
		{note: "tag without service", tag: "v1", wantErr: consul.ErrTagWithoutService},
		{note: "invalid regex", node: "web-(", wantAs: &badFilter},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			got, err := consul.Match(matchCatalog, consul.Spec{NodeFilter: tc.node, ServiceFilter: tc.service, TagFilter: tc.tag})
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
			case tc.wantAs != nil:
				if !errors.As(err, tc.wantAs) {
					t.Fatalf("err = %T %v, want %T", err, err, tc.wantAs)
				}
			case err != nil:
				t.Fatal(err)
			}
			if names := nodeNames(got); !slices.Equal(names, tc.want) {
				t.Errorf("matched %v, want %v", names, tc.want)
			}
			// A matched node comes with all its services, not only the
			// ones that matched: the policy sees the whole node.
			for _, n := range got {
				if n.Name == "db-1" && len(n.Services) != 2 {
					t.Errorf("db-1 with %d services", len(n.Services))
				}
			}
		})
	}
}

// BenchmarkMatch matches a service and tag filter against a catalog of
// 1,000 nodes and 100 services: what a submission costs once the catalog
// view has its snapshot.
//
//	go test ./internal/consul -run '^$' -bench Match -benchtime 2000x
func BenchmarkMatch(b *testing.B) {
	cat := &consul.Catalog{Index: 1}
	for i := range 1000 {
		n := consul.Node{Name: fmt.Sprintf("node-%04d", i), Address: fmt.Sprintf("10.0.%d.%d", i/256, i%256)}
		for j := range 3 {
			svc := fmt.Sprintf("svc-%02d", (i+j*37)%100)
			n.Services = append(n.Services, consul.Service{ID: svc, Name: svc, Tags: []string{"v1", fmt.Sprintf("shard-%d", i%10)}})
		}
		cat.Nodes = append(cat.Nodes, n)
	}
	spec := consul.Spec{ServiceFilter: "^svc-07$", TagFilter: "^shard-3$"}
	// A snapshot's first submission with these filters matches; the
	// next ones find its result.
	b.Run("first", func(b *testing.B) {
		for b.Loop() {
			if _, err := consul.Match(&consul.Catalog{Index: cat.Index, Nodes: cat.Nodes}, spec); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("again", func(b *testing.B) {
		for b.Loop() {
			if _, err := consul.Match(cat, spec); err != nil {
				b.Fatal(err)
			}
		}
	})
}
