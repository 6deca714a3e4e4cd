package consul

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

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

// Catalog is what target resolution reads of Consul's catalog: the alive
// nodes (serfHealth passing) with their service instances, as of one Raft
// index. A Catalog is never modified once built: a CatalogView hands the
// same one to every resolution until the next one replaces it.
type Catalog struct {
	// Index is the catalog's Raft index (X-Consul-Index): the highest
	// index among the reads it was built from.
	Index uint64
	// Nodes are the alive nodes, sorted by name, each with its services
	// sorted by ID (never nil).
	Nodes []Node
	// matches caches Match's results by filters (matchKey → []Node), so
	// that the submissions a snapshot serves with the same filters match
	// once; nMatches bounds it.
	matches  sync.Map
	nMatches atomic.Int64
}

// maxCachedMatches bounds the results a Catalog keeps: past it, further
// filters are matched each time.
const maxCachedMatches = 1024

type matchKey struct{ node, service, tag string }

// Resolve reads the catalog (ReadCatalog) and returns the nodes spec's
// filters select (Match).
func (c *Client) Resolve(ctx context.Context, spec Spec) ([]Node, error) {
	spec = spec.WithDefaults()
	// A bad filter is refused before anything is read.
	if _, _, _, err := compileFilters(spec); err != nil {
		return nil, err
	}
	cat, err := c.ReadCatalog(ctx)
	if err != nil {
		return nil, err
	}
	return Match(cat, spec)
}

// serfHealthFilter selects the agents' own health checks.
const serfHealthFilter = `CheckID == "serfHealth" and ServiceID == ""`

// ReadCatalog reads the catalog directly from the agent with the public
// endpoints: the serfHealth checks, the nodes, the service names and one
// request per service name (rather than one per node: clusters have far
// fewer services than nodes). It is what a CatalogView falls back to.
func (c *Client) ReadCatalog(ctx context.Context) (*Catalog, error) {
	q := func() *api.QueryOptions { return (&api.QueryOptions{}).WithContext(ctx) }
	var index uint64
	seen := func(m *api.QueryMeta) {
		if m != nil {
			index = max(index, m.LastIndex)
		}
	}
	checks, meta, err := c.api.Health().State(api.HealthAny, (&api.QueryOptions{Filter: serfHealthFilter}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read node health: %w", err)
	}
	seen(meta)
	alive := map[string]bool{}
	for _, ch := range checks {
		if ch.Status == api.HealthPassing {
			alive[ch.Node] = true
		}
	}
	nodes, meta, err := c.api.Catalog().Nodes(q())
	if err != nil {
		return nil, fmt.Errorf("read catalog nodes: %w", err)
	}
	seen(meta)
	byName := map[string]*Node{}
	for _, n := range nodes {
		if alive[n.Node] {
			byName[n.Node] = &Node{Name: n.Node, Address: n.Address, Services: []Service{}}
		}
	}
	names, meta, err := c.api.Catalog().Services(q())
	if err != nil {
		return nil, fmt.Errorf("read catalog services: %w", err)
	}
	seen(meta)
	for _, name := range slices.Sorted(maps.Keys(names)) {
		insts, meta, err := c.api.Catalog().Service(name, "", q())
		if err != nil {
			return nil, fmt.Errorf("read catalog service %s: %w", name, err)
		}
		seen(meta)
		for _, in := range insts {
			if n := byName[in.Node]; n != nil {
				n.Services = append(n.Services, Service{ID: in.ServiceID, Name: in.ServiceName, Tags: nonNil(in.ServiceTags)})
			}
		}
	}
	return newCatalog(index, byName), nil
}

// newCatalog sorts the nodes and their services into a Catalog.
func newCatalog(index uint64, byName map[string]*Node) *Catalog {
	cat := &Catalog{Index: index, Nodes: make([]Node, 0, len(byName))}
	for _, n := range byName {
		slices.SortFunc(n.Services, func(a, b Service) int { return strings.Compare(a.ID, b.ID) })
		cat.Nodes = append(cat.Nodes, *n)
	}
	slices.SortFunc(cat.Nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return cat
}

// Match returns the nodes of cat that spec's filters select, sorted by
// name, with each node's services. It applies the filters exactly as
// agents apply them to themselves (agent/user_event.go): the node regex on
// the node name; the service regex on the IDs of the node's services
// (agents match the service ID, which equals the name unless a
// registration sets its own); the tag regex on the tags of a service that
// matched. Unanchored, as in Go's regexp.MatchString. cat holds alive
// nodes only: a node without an alive agent could not run anything.
//
// Match does no I/O, and matches each set of filters once per Catalog:
// the nodes it returns are shared with cat and with other callers, which
// must not modify them. It returns ErrNoTargets when nothing
// matches.
func Match(cat *Catalog, spec Spec) ([]Node, error) {
	key := matchKey{spec.NodeFilter, spec.ServiceFilter, spec.TagFilter}
	if v, ok := cat.matches.Load(key); ok {
		return matchResult(v.([]Node))
	}
	nodeRe, svcRe, tagRe, err := compileFilters(spec)
	if err != nil {
		return nil, err
	}
	// Clusters have far fewer distinct service IDs and tags than
	// instances: each regex runs once per distinct string.
	m := matcher{svcRe: svcRe, tagRe: tagRe, svc: map[string]bool{}, tag: map[string]bool{}}
	out := []Node{}
	for i := range cat.Nodes {
		n := &cat.Nodes[i]
		if nodeRe != nil && !nodeRe.MatchString(n.Name) {
			continue
		}
		if svcRe != nil && !m.matchesService(n) {
			continue
		}
		out = append(out, *n)
	}
	out = slices.Clip(out) // an append by a caller copies
	if cat.nMatches.Add(1) <= maxCachedMatches {
		cat.matches.Store(key, out)
	}
	return matchResult(out)
}

func matchResult(nodes []Node) ([]Node, error) {
	if len(nodes) == 0 {
		return nil, ErrNoTargets
	}
	return nodes, nil
}

// matcher is one Match's service and tag filters with their verdicts on
// the strings seen so far.
type matcher struct {
	svcRe, tagRe *regexp.Regexp
	svc, tag     map[string]bool
}

func (m *matcher) matchesService(n *Node) bool {
	for _, s := range n.Services {
		// The "consul" service of server nodes is not in any agent's local
		// state, so an agent never matches it.
		if s.ID == "consul" || !memo(m.svc, m.svcRe, s.ID) {
			continue
		}
		if m.tagRe == nil {
			return true
		}
		for _, tag := range s.Tags {
			if memo(m.tag, m.tagRe, tag) {
				return true
			}
		}
	}
	return false
}

func memo(seen map[string]bool, re *regexp.Regexp, s string) bool {
	v, ok := seen[s]
	if !ok {
		v = re.MatchString(s)
		seen[s] = v
	}
	return v
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
