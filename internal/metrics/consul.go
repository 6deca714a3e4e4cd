package metrics

import (
	"io"
	"net/http"
	"strings"
)

// ConsulEndpoints are every value of the endpoint label of the Consul
// metrics besides EndpointOther: Consul HTTP API routes with their variable
// parts (key, session ID, node, service, event name) cut off. A request
// whose path matches none is counted as EndpointOther, so a label value is
// always one of a fixed few — never a KV key, a session ID or a node name,
// which would both multiply the series and leak what runs where.
var ConsulEndpoints = []string{
	"kv", "txn", "query",
	"session/create", "session/destroy", "session/renew", "session/info", "session/node", "session/list",
	"event/fire", "event/list",
	"catalog/service", "catalog/services", "catalog/nodes", "catalog/node", "catalog/node-services", "catalog/datacenters",
	"health/service", "health/state", "health/node", "health/checks",
	"agent/self", "agent/members",
	"acl/token/self", "acl/token", "acl/policy",
	"internal/acl/authorize", "internal/ui/nodes",
	"status/leader", "status/peers",
}

// EndpointOther is the endpoint of a request to no route in ConsulEndpoints.
const EndpointOther = "other"

var consulEndpoints = func() map[string]bool {
	m := map[string]bool{}
	for _, e := range ConsulEndpoints {
		m[e] = true
	}
	return m
}()

// ConsulEndpoint names the route of a Consul HTTP API path: the longest
// run of its leading segments after /v1/ that is a known route, or
// EndpointOther. Whatever precedes /v1/ (a reverse proxy's prefix) is
// ignored.
func ConsulEndpoint(path string) string {
	i := strings.Index(path, "/v1/")
	if i < 0 {
		return EndpointOther
	}
	segs := strings.SplitN(path[i+len("/v1/"):], "/", 4)
	for n := min(len(segs), 3); n > 0; n-- {
		if e := strings.Join(segs[:n], "/"); consulEndpoints[e] {
			return e
		}
	}
	return EndpointOther
}

// Results of Consul requests, the values of the result label besides the
// status classes 2xx … 5xx.
const (
	// ResultError: no answer (connection refused, reset, timed out).
	ResultError = "error"
	// ResultCanceled: the caller gave up first (a blocking watch stopped
	// at the end of its run).
	ResultCanceled = "canceled"
)

// ConsulTransport counts the requests next carries, and the bytes of their
// answers, by endpoint and result. A nil *Metrics returns next unchanged.
func (m *Metrics) ConsulTransport(next http.RoundTripper) http.RoundTripper {
	if m == nil {
		return next
	}
	if next == nil {
		next = http.DefaultTransport
	}
	return &consulTransport{m: m, next: next}
}

type consulTransport struct {
	m    *Metrics
	next http.RoundTripper
}

func (t *consulTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	endpoint := ConsulEndpoint(req.URL.Path)
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		result := ResultError
		if req.Context().Err() != nil {
			result = ResultCanceled
		}
		t.m.consulRequests.WithLabelValues(endpoint, result).Inc()
		return nil, err
	}
	t.m.consulRequests.WithLabelValues(endpoint, statusClass(resp.StatusCode)).Inc()
	if resp.Body != nil && resp.Body != http.NoBody {
		resp.Body = &countingBody{ReadCloser: resp.Body, add: t.m.consulBytes.WithLabelValues(endpoint).Add}
	}
	return resp, nil
}

func statusClass(code int) string {
	switch {
	case code >= 200 && code < 300:
		return "2xx"
	case code >= 300 && code < 400:
		return "3xx"
	case code >= 400 && code < 500:
		return "4xx"
	case code >= 500 && code < 600:
		return "5xx"
	}
	return ResultError
}

// countingBody counts the bytes read from a response body as they are
// read: a blocking query's answer may take minutes to arrive.
type countingBody struct {
	io.ReadCloser
	add func(float64)
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.add(float64(n))
	}
	return n, err
}
