// Package client is a Go client of rexec-svc's HTTP API, used by rexec-cli
// and the end-to-end tests.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/rexec/rexec/internal/api"
)

// Client talks to one rexec-svc.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for addr (http://host:port) with a bearer token.
func New(addr, token string) (*Client, error) {
	if addr == "" {
		return nil, errors.New("no server address: set REXEC_ADDR or -addr")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	if _, err := url.Parse(addr); err != nil {
		return nil, fmt.Errorf("server address: %w", err)
	}
	return &Client{base: strings.TrimRight(addr, "/"), token: token, http: &http.Client{}}, nil
}

// Error is an error response of the API.
type Error struct {
	Status int
	Code   string
	Msg    string
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
		var eb api.ErrorBody
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb = api.ErrorBody{Error: fmt.Sprintf("rexec-svc answered %s", resp.Status), Code: "http"}
		}
		return &Error{Status: resp.StatusCode, Code: eb.Code, Msg: eb.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

// Submit submits a run (or a dry run).
func (c *Client) Submit(ctx context.Context, req api.SubmitRequest) (api.Run, error) {
	var out api.Run
	err := c.do(ctx, http.MethodPost, "/v1/runs", req, &out)
	return out, err
}

// Get returns a run with its nodes and targets.
func (c *Client) Get(ctx context.Context, id string) (api.Run, error) {
	var out api.Run
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id), nil, &out)
	return out, err
}

// List returns a page of runs.
func (c *Client) List(ctx context.Context, state string, limit int, before string) (api.RunList, error) {
	q := url.Values{}
	if state != "" {
		q.Set("state", state)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if before != "" {
		q.Set("before", before)
	}
	var out api.RunList
	err := c.do(ctx, http.MethodGet, "/v1/runs?"+q.Encode(), nil, &out)
	return out, err
}

// Output returns a page of one node's output after sequence after (-1 for
// the start).
func (c *Client) Output(ctx context.Context, id, node string, after int) (api.OutputPage, error) {
	q := url.Values{"node": {node}, "after": {strconv.Itoa(after)}}
	var out api.OutputPage
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id)+"/output?"+q.Encode(), nil, &out)
	return out, err
}

// Stream returns the run's stream after cursor, waiting up to wait for news.
func (c *Client) Stream(ctx context.Context, id string, cursor int64, wait time.Duration) (api.StreamPage, error) {
	q := url.Values{"cursor": {strconv.FormatInt(cursor, 10)}, "wait": {wait.String()}}
	var out api.StreamPage
	err := c.do(ctx, http.MethodGet, "/v1/runs/"+url.PathEscape(id)+"/stream?"+q.Encode(), nil, &out)
	return out, err
}

// Decide approves (approve true) or denies a run pending approval; hash
// is the request hash the caller saw (empty: not checked).
func (c *Client) Decide(ctx context.Context, id string, approve bool, comment, hash string) (api.Run, error) {
	verb := "deny"
	if approve {
		verb = "approve"
	}
	var out api.Run
	err := c.do(ctx, http.MethodPost, "/v1/runs/"+url.PathEscape(id)+"/"+verb, api.VerdictRequest{Comment: comment, RequestHash: hash}, &out)
	return out, err
}

// Cancel cancels a run.
func (c *Client) Cancel(ctx context.Context, id string) (api.Run, error) {
	var out api.Run
	err := c.do(ctx, http.MethodPost, "/v1/runs/"+url.PathEscape(id)+"/cancel", nil, &out)
	return out, err
}
