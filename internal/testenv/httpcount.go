package testenv

import (
	"io"
	"net/http"
	"sync/atomic"
)

// HTTPCounter is an http.RoundTripper that counts the requests it carries,
// those that write (any method but GET), and the bytes of their answers'
// bodies as the client reads them. Tests and benchmarks give it to a
// client (consul.Config.HTTPClient) to count what that client asks of
// Consul.
type HTTPCounter struct {
	// Base carries the requests. NewHTTPCounter sets a clone of
	// http.DefaultTransport that keeps 64 idle connections per host, so
	// that counting does not add connection churn of its own.
	Base http.RoundTripper

	Requests atomic.Int64
	Writes   atomic.Int64
	Bytes    atomic.Int64
}

// NewHTTPCounter returns a counter over its own transport.
func NewHTTPCounter() *HTTPCounter {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &HTTPCounter{Base: tr}
}

// RoundTrip counts r and carries it.
func (c *HTTPCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	c.Requests.Add(1)
	if r.Method != http.MethodGet {
		c.Writes.Add(1)
	}
	resp, err := c.Base.RoundTrip(r)
	if err == nil {
		resp.Body = CountBody(resp.Body, &c.Bytes)
	}
	return resp, err
}

// CountBody returns body, adding to n every byte read from it.
func CountBody(body io.ReadCloser, n *atomic.Int64) io.ReadCloser {
	return &countedBody{ReadCloser: body, n: n}
}

// countedBody adds what is read from a response body to n.
type countedBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}
