// Package client is a Go client of rexec-svc's HTTP API, used by rexec-cli
// and the end-to-end tests.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rexec/rexec/internal/apitype"
)

// Client talks to one rexec-svc.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// Config configures a Client.
type Config struct {
	// Addr is the server: http://host:port or https://host:port; a bare
	// host:port means http. Required.
	Addr string
	// Token is the bearer token sent with every request.
	Token string
	// CAFile names a PEM bundle of CA certificates trusted for an https
	// Addr, besides the system's. Default: the system's alone.
	CAFile string
	// TLS is the base TLS configuration for an https Addr (cloned; CAFile
	// adds to its RootCAs). Default: TLS 1.2 at least, the system's roots.
	TLS *tls.Config
}

// New returns a client for addr (http://host:port or https://host:port)
// with a bearer token; https trusts the system's CAs.
func New(addr, token string) (*Client, error) {
	return NewWithConfig(Config{Addr: addr, Token: token})
}

// NewWithConfig returns a client as cfg says.
func NewWithConfig(cfg Config) (*Client, error) {
	addr := cfg.Addr
	if addr == "" {
		return nil, errors.New("no server address: set REXEC_ADDR or -addr")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("server address: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("server address %s: the scheme must be http or https", addr)
	}
	tlsConf, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	// A clone of the default transport keeps its proxy settings, dial
	// timeouts and HTTP/2, which a bare Transport with a TLS configuration
	// would turn off.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConf
	// A Client is shared by goroutines, and the server answers submissions
	// stored together at once: with the default of 2 idle connections to a
	// host, all but two of those that come back together were closed, and
	// the next requests dialled anew.
	tr.MaxIdleConnsPerHost = maxIdleConns
	return &Client{base: strings.TrimRight(addr, "/"), token: cfg.Token, http: &http.Client{Transport: tr}}, nil
}

// maxIdleConns is how many idle connections to the server a Client keeps.
const maxIdleConns = 64

func tlsConfig(cfg Config) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLS != nil {
		conf = cfg.TLS.Clone()
	}
	if cfg.CAFile == "" {
		return conf, nil
	}
	pem, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	// Added to the trust, not instead of it: a server whose certificate
	// chains to a public CA still verifies.
	pool := conf.RootCAs
	if pool == nil {
		if pool, err = x509.SystemCertPool(); err != nil {
			pool = x509.NewCertPool()
		}
	} else {
		pool = pool.Clone()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", cfg.CAFile)
	}
	conf.RootCAs = pool
	return conf, nil
}

// Error is an error response of the API.
type Error struct {
	Status int
	Code   string
	Msg    string
	// RetryAfter is the wait the server asked for before a retry (a 429
	// or 503 from its bounds on requests in flight); zero if none.
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Msg }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("rexec-svc: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var eb apitype.ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		switch {
		case json.Unmarshal(b, &eb) == nil && eb.Error != "":
		case resp.StatusCode == http.StatusBadRequest && bytes.HasPrefix(b, []byte(httpsOnly)):
			eb = apitype.ErrorBody{Error: fmt.Sprintf("%s speaks HTTPS only: use https:// in the address", c.base), Code: "http"}
		default:
			eb = apitype.ErrorBody{Error: fmt.Sprintf("rexec-svc answered %s", resp.Status), Code: "http"}
		}
		e := &Error{Status: resp.StatusCode, Code: eb.Code, Msg: eb.Error}
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// httpsOnly opens net/http's answer to plain HTTP on a TLS port.
const httpsOnly = "Client sent an HTTP request to an HTTPS server."

// Submit submits a run (or a dry run).
func (c *Client) Submit(ctx context.Context, req apitype.SubmitRequest) (apitype.Run, error) {
	var out apitype.Run
	err := c.do(ctx, http.MethodPost, "/v1/runs", req, &out)
	return out, err
}

// Get returns a run with its nodes and targets.
func (c *Client) Get(ctx context.Context, id string) (apitype.Run, error) {
	var out apitype.Run
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id), nil, &out)
	return out, err
}

// List returns a page of runs.
func (c *Client) List(ctx context.Context, state string, limit int, before string) (apitype.RunList, error) {
	return c.ListRuns(ctx, RunQuery{Filters: Filters{State: state, Limit: limit}, Before: before})
}

// Filters are what runs and audit events are both selected by; zero fields
// select all.
type Filters struct {
	// Since and Until bound the time: RFC 3339, or a duration before now
	// such as 7d, 12h, 30m.
	Since, Until string
	// Principal: a run's submitter; an event's actor.
	Principal string
	// Node: runs targeting the node; events about it.
	Node string
	// Service and Command: runs submitted with this service filter, with
	// this text in their command (in any case); for events, their runs'.
	Service, Command string
	// State: runs in this state; events of runs that ended in it.
	State string
	// ExitCode: runs on which a node exited with it; node.exited events
	// with it.
	ExitCode *int
	// Approver: runs the principal approved or refused, and their events.
	Approver string
	// Limit is the page size; zero for the server's default.
	Limit int
}

func (f Filters) values() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"since": f.Since, "until": f.Until, "principal": f.Principal, "node": f.Node,
		"service": f.Service, "command": f.Command, "state": f.State, "approver": f.Approver} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.ExitCode != nil {
		q.Set("exit_code", strconv.Itoa(*f.ExitCode))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

// RunQuery selects runs.
type RunQuery struct {
	Filters
	// Before is the previous page's Next.
	Before string
}

// ListRuns returns a page of the runs q selects, newest first.
func (c *Client) ListRuns(ctx context.Context, q RunQuery) (apitype.RunList, error) {
	v := q.values()
	if q.Before != "" {
		v.Set("before", q.Before)
	}
	var out apitype.RunList
	err := c.do(ctx, http.MethodGet, "/v1/runs?"+v.Encode(), nil, &out)
	return out, err
}

// AuditQuery selects audit events.
type AuditQuery struct {
	Filters
	// Types: events of any of these types.
	Types []string
	// Run: the events of this run.
	Run string
	// Cursor is the previous page's Next.
	Cursor string
}

// Audit returns a page of the audit events q selects, newest first.
func (c *Client) Audit(ctx context.Context, q AuditQuery) (apitype.AuditPage, error) {
	v := q.values()
	if len(q.Types) > 0 {
		v.Set("type", strings.Join(q.Types, ","))
	}
	if q.Run != "" {
		v.Set("run", q.Run)
	}
	if q.Cursor != "" {
		v.Set("cursor", q.Cursor)
	}
	var out apitype.AuditPage
	err := c.do(ctx, http.MethodGet, "/v1/audit?"+v.Encode(), nil, &out)
	return out, err
}

// Output returns a page of one node's output after sequence after (-1 for
// the start).
func (c *Client) Output(ctx context.Context, id, node string, after int) (apitype.OutputPage, error) {
	q := url.Values{"node": {node}, "after": {strconv.Itoa(after)}}
	var out apitype.OutputPage
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id)+"/output?"+q.Encode(), nil, &out)
	return out, err
}

// Stream returns the run's stream after cursor, waiting up to wait for news.
func (c *Client) Stream(ctx context.Context, id string, cursor int64, wait time.Duration) (apitype.StreamPage, error) {
	q := url.Values{"cursor": {strconv.FormatInt(cursor, 10)}, "wait": {wait.String()}}
	var out apitype.StreamPage
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id)+"/stream?"+q.Encode(), nil, &out)
	return out, err
}

// Decide approves (approve true) or denies a run pending approval; hash
// is the request hash the caller saw (empty: not checked).
func (c *Client) Decide(ctx context.Context, id string, approve bool, comment, hash string) (apitype.Run, error) {
	verb := "deny"
	if approve {
		verb = "approve"
	}
	var out apitype.Run
	err := c.do(ctx, http.MethodPost, "/v1/runs/"+url.PathEscape(id)+"/"+verb, apitype.VerdictRequest{Comment: comment, RequestHash: hash}, &out)
	return out, err
}

// Cancel cancels a run.
func (c *Client) Cancel(ctx context.Context, id string) (apitype.Run, error) {
	var out apitype.Run
	err := c.do(ctx, http.MethodPost, "/v1/runs/"+url.PathEscape(id)+"/cancel", nil, &out)
	return out, err
}
