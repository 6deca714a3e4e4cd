package consul

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Node is a target of a run, as the catalog described it when the run's
// target set was resolved.
type Node struct {
	Name     string    `json:"node"`
	Address  string    `json:"address"`
	Services []Service `json:"services"`
}

// Service is a service instance on a node.
type Service struct {
	ID   string   `json:"id"`
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// Resolve returns the alive nodes that spec's filters select, sorted by name,
// with each node's services. It applies the filters exactly as agents apply
// them to themselves (agent/user_event.go): the node regex on the node name;
// the service regex on the IDs of the node's services (agents match the
// service ID, which equals the name unless a registration sets its own); the
// tag regex on the tags of a service that matched. Unanchored, as in Go's
// regexp.MatchString. Nodes without an alive agent (serfHealth not passing,
// or no agent at all) are left out: they could not run anything.
//
// It returns ErrNoTargets when nothing matches.
func (c *Client) Resolve(ctx context.Context, spec Spec) ([]Node, error) {
	spec = spec.WithDefaults()
	nodeRe, svcRe, tagRe, err := compileFilters(spec)
	if err != nil {
		return nil, err
	}
	q := func() *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }

	checks, _, err := c.api.Health().State(api.HealthAny, (&api.QueryOptions{Filter: `CheckID == "serfHealth"`}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read node health: %w", err)
	}
	alive := map[string]bool{}
	for _, ch := range checks {
		if ch.Status == api.HealthPassing {
			alive[ch.Node] = true
		}
	}
	nodes, _, err := c.api.Catalog().Nodes(q())
	if err != nil {
		return nil, fmt.Errorf("read catalog nodes: %w", err)
	}
	byName := map[string]*Node{}
	for _, n := range nodes {
		if !alive[n.Node] || (nodeRe != nil && !nodeRe.MatchString(n.Node)) {
			continue
		}
		byName[n.Node] = &Node{Name: n.Node, Address: n.Address, Services: []Service{}}
	}
	if len(byName) == 0 {
		return nil, ErrNoTargets
	}

	// Services per node: one request per service name rather than one per
	// node, since clusters have far fewer services than nodes.
	names, _, err := c.api.Catalog().Services(q())
	if err != nil {
		return nil, fmt.Errorf("read catalog services: %w", err)
	}
	svcNames := make([]string, 0, len(names))
	for n := range names {
		svcNames = append(svcNames, n)
	}
	sort.Strings(svcNames)
	for _, name := range svcNames {
		insts, _, err := c.api.Catalog().Service(name, "", q())
		if err != nil {
			return nil, fmt.Errorf("read catalog service %s: %w", name, err)
		}
		for _, in := range insts {
			if n := byName[in.Node]; n != nil {
				n.Services = append(n.Services, Service{ID: in.ServiceID, Name: in.ServiceName, Tags: nonNil(in.ServiceTags)})
			}
		}
	}

	var out []Node
	for _, n := range byName {
		if svcRe != nil && !matchesService(n, svcRe, tagRe) {
			continue
		}
		slices.SortFunc(n.Services, func(a, b Service) int { return strings.Compare(a.ID, b.ID) })
		out = append(out, *n)
	}
	if len(out) == 0 {
		return nil, ErrNoTargets
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func matchesService(n *Node, svcRe, tagRe *regexp.Regexp) bool {
	for _, s := range n.Services {
		// The "consul" service of server nodes is not in any agent's local
		// state, so an agent never matches it.
		if s.ID == "consul" || !svcRe.MatchString(s.ID) {
			continue
		}
		if tagRe == nil {
			return true
		}
		if slices.ContainsFunc(s.Tags, tagRe.MatchString) {
			return true
		}
	}
	return false
}

func compileFilters(s Spec) (node, svc, tag *regexp.Regexp, err error) {
	compile := func(name, expr string) (*regexp.Regexp, error) {
		if expr == "" {
			return nil, nil
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			return nil, &FilterError{Filter: name, Expr: expr, Err: err}
		}
		return re, nil
	}
	if node, err = compile("node", s.NodeFilter); err != nil {
		return
	}
	if svc, err = compile("service", s.ServiceFilter); err != nil {
		return
	}
	if tag, err = compile("tag", s.TagFilter); err != nil {
		return
	}
	if tag != nil && svc == nil {
		err = ErrTagWithoutService
	}
	return
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
