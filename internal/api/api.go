// Package api is rexec-svc's HTTP interface: JSON under /v1/ with bearer
// tokens, scoped to the caller's tenant, plus /healthz, /readyz and
// /metrics. It translates between HTTP and the service package and nothing
// more.
package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/consul"
	"github.com/rexec/rexec/internal/metrics"
	"github.com/rexec/rexec/internal/service"
	"github.com/rexec/rexec/internal/store"
)

// MaxBodyBytes bounds request bodies: a script at Consul's KV limit, base64
// in JSON, fits with room to spare.
const MaxBodyBytes = 2 << 20

// MaxListLimit bounds a page of runs.
const MaxListLimit = 500

// MaxStreamWait bounds how long a stream request waits for news.
const MaxStreamWait = 30 * time.Second

// Config configures the handler.
type Config struct {
	Service  *service.Service
	Notifier *store.Notifier
	// Ready reports whether the process can serve (database reachable and
	// migrated).
	Ready  func(context.Context) error
	Logger *slog.Logger
	// Registry receives the API's metrics. Default: a new registry.
	Registry *prometheus.Registry
	// Metrics counts accepted submissions' latency and the runs the API
	// ends (a queued run cancelled, a run denied). Default: none counted.
	Metrics *metrics.Metrics
	// Limits bound the requests in flight; see Limits for the defaults.
	Limits Limits
}

type server struct {
	cfg      Config
	log      *slog.Logger
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	limits   *limiter
}

// Handler returns the HTTP handler.
func Handler(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
		cfg.Registry.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	}
	s := &server{cfg: cfg, log: cfg.Logger,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rexec_http_requests_total", Help: "API requests by route and status."}, []string{"route", "code"}),
		latency:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "rexec_http_request_seconds", Help: "API request latency by route."}, []string{"route"}),
	}
	cfg.Registry.MustRegister(s.requests, s.latency)
	s.limits = newLimiter(cfg.Limits, cfg.Registry)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	mux.HandleFunc("GET /readyz", s.ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{}))
	s.route(mux, "POST /v1/runs", s.submit)
	s.route(mux, "GET /v1/runs", s.list)
	s.route(mux, "GET /v1/runs/{id}", s.get)
	s.route(mux, "GET /v1/runs/{id}/nodes", s.nodes)
	s.route(mux, "GET /v1/runs/{id}/output", s.output)
	s.route(mux, streamRoute, s.stream)
	s.route(mux, "POST /v1/runs/{id}/cancel", s.cancel)
	s.route(mux, "POST /v1/runs/{id}/approve", s.verdict(true))
	s.route(mux, "POST /v1/runs/{id}/deny", s.verdict(false))
	s.route(mux, "GET /v1/audit", s.audit)
	s.route(mux, "GET /v1/audit/checkpoint", s.auditCheckpoint)
	s.route(mux, "GET /v1/audit/checkpoints", s.auditCheckpoints)
	s.route(mux, "GET /v1/audit/leaves", s.auditLeaves)
	s.route(mux, "GET /v1/audit/consistency", s.auditConsistency)
	s.route(mux, "GET /v1/runs/{id}/audit-bundle", s.auditBundle)
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return withRequestID(mux)
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c service.Caller) error

// route authenticates, limits the body and the requests in flight, times
// the request and turns the handler's error into a JSON error.
func (s *server) route(mux *http.ServeMux, pattern string, h handlerFunc) {
	h = s.limits.admit(pattern, h)
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: 200}
		defer func() {
			s.requests.WithLabelValues(pattern, strconv.Itoa(rec.code)).Inc()
			s.latency.WithLabelValues(pattern).Observe(time.Since(start).Seconds())
			// Never headers or the query: the Authorization header is a
			// secret, and the path is all an operator needs. The request
			// ID (checked to be printable ASCII) ties the line to the
			// audit events the request caused.
			s.log.DebugContext(r.Context(), "request", slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.Int("status", rec.code), slog.Duration("took", time.Since(start)),
				slog.String("request_id", RequestID(r.Context())), slog.String("client", clientAddr(r)))
		}()
		r.Body = http.MaxBytesReader(rec, r.Body, MaxBodyBytes)
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || strings.TrimSpace(token) == "" {
			writeError(rec, http.StatusUnauthorized, "unauthenticated", "missing or malformed Authorization header: want \"Bearer <token>\"")
			return
		}
		c, err := s.cfg.Service.Authenticate(r.Context(), strings.TrimSpace(token))
		if err != nil {
			if errors.Is(err, service.ErrForbidden) {
				writeError(rec, http.StatusUnauthorized, "unauthenticated", err.Error())
				return
			}
			s.fail(rec, r, err)
			return
		}
		c.RequestID, c.ClientAddr = RequestID(r.Context()), clientAddr(r)
		if err := h(rec, r, c); err != nil {
			s.fail(rec, r, err)
		}
	})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	kinds := []struct {
		kind   error
		status int
		code   string
	}{
		{service.ErrInvalid, 400, "invalid"},
		{service.ErrForbidden, 403, "forbidden"},
		{service.ErrNotFound, 404, "not_found"},
		{service.ErrConflict, 409, "conflict"},
		{service.ErrTooLarge, 413, "too_large"},
		{service.ErrUnprocessable, 422, "unprocessable"},
		{service.ErrUpstream, 502, "consul_unavailable"},
	}
	if errors.As(err, &mbe) {
		writeError(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("request body over %d bytes", mbe.Limit))
		return
	}
	for _, k := range kinds {
		if errors.Is(err, k.kind) {
			body := apitype.ErrorBody{Error: err.Error(), Code: k.code, RequestID: w.Header().Get(RequestIDHeader)}
			var se *service.Error
			if errors.As(err, &se) {
				body.Reasons = se.Reasons
			}
			writeJSON(w, k.status, body)
			return
		}
	}
	if errors.Is(err, context.Canceled) {
		return // the client went away
	}
	s.log.ErrorContext(r.Context(), "request failed", slog.String("path", r.URL.Path), slog.Any("error", err))
	writeError(w, http.StatusInternalServerError, "internal", "internal error")
}

func (s *server) ready(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(r.Context()); err != nil {
			writeError(w, http.StatusServiceUnavailable, "not_ready", err.Error())
			return
		}
	}
	writeJSON(w, 200, map[string]string{"status": "ready"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apitype.ErrorBody{Error: msg, Code: code, RequestID: w.Header().Get(RequestIDHeader)})
}

// decodeJSON decodes exactly one JSON value with no unknown fields.
func decodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return &service.Error{Kind: service.ErrInvalid, Msg: "malformed JSON body: " + err.Error()}
	}
	if dec.More() {
		return &service.Error{Kind: service.ErrInvalid, Msg: "malformed JSON body: trailing data"}
	}
	return nil
}

// checkQueryText refuses a query parameter that reaches a text column of
// the database but could never be in one (a NUL byte, invalid UTF-8):
// Postgres would fail the query instead of finding nothing.
func checkQueryText(name, v string) error {
	if err := consul.CheckText(name, v); err != nil {
		return invalid("%v", err)
	}
	return nil
}

func invalid(format string, args ...any) error {
	return &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf(format, args...)}
}

func parseDuration(name, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalid("%s: %v", name, err)
	}
	if d != 0 && d.Abs() < time.Millisecond {
		return 0, invalid("%s: %s is below the resolution of 1ms", name, d)
	}
	return d, nil
}

// decodeSubmission turns the body of POST /v1/runs into a submission. It
// checks the JSON and the durations; the service and the engine check the
// rest. A body too large for the request's MaxBytesReader fails with its
// *http.MaxBytesError.
func decodeSubmission(body io.Reader) (service.Submission, error) {
	var req apitype.SubmitRequest
	if err := decodeJSON(body, &req); err != nil {
		return service.Submission{}, err
	}
	sub := service.Submission{
		Argv: req.Argv, Script: req.Script, Shell: req.Shell == nil || *req.Shell,
		NodeFilter: req.Node, ServiceFilter: req.Service, TagFilter: req.Tag, Prefix: req.Prefix,
		Reason: req.Reason, DryRun: req.DryRun,
	}
	// An empty script is no script, as the field's omitempty says: a
	// client that sends "script": "" beside argv means the command, and
	// must not be told it gave both.
	if len(sub.Script) == 0 {
		sub.Script = nil
	}
	var err error
	if sub.Wait, err = parseDuration("wait", req.Wait); err != nil {
		return service.Submission{}, err
	}
	if sub.WaitRepl, err = parseDuration("wait_repl", req.WaitRepl); err != nil {
		return service.Submission{}, err
	}
	if sub.Timeout, err = parseDuration("timeout", req.Timeout); err != nil {
		return service.Submission{}, err
	}
	if sub.StartTimeout, err = parseDuration("start_timeout", req.StartTimeout); err != nil {
		return service.Submission{}, err
	}
	return sub, nil
}

func (s *server) submit(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	start := time.Now()
	sub, err := decodeSubmission(r.Body)
	if err != nil {
		return err
	}
	res, err := s.cfg.Service.Submit(r.Context(), c, sub)
	if err != nil {
		return err
	}
	if !res.DryRun {
		s.cfg.Metrics.SubmitAccepted(time.Since(start))
	}
	out := runView(res.Run)
	out.Targets, out.TargetCount = targetsJSON(res.Targets), len(res.Targets)
	out.CatalogReason = res.Catalog.Reason
	if res.DryRun {
		out.State = "dry_run"
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	writeJSON(w, http.StatusCreated, out)
	return nil
}

// runsParams are the query parameters of GET /v1/runs.
var runsParams = []string{"since", "until", "principal", "node", "service", "command", "state", "exit_code", "approver", "limit", "before"}

func (s *server) list(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	p := params{q: r.URL.Query(), now: time.Now()}
	if err := p.only(runsParams); err != nil {
		return err
	}
	fs, err := p.filters(MaxListLimit)
	if err != nil {
		return err
	}
	f := store.ListFilter{Since: fs.since, Until: fs.until, Principal: fs.principal, Node: fs.node, Service: fs.service,
		Command: fs.command, State: fs.state, ExitCode: fs.exitCode, Approver: fs.approver, Limit: cmp.Or(fs.limit, 50)}
	before, err := p.text("before")
	if err != nil {
		return err
	}
	if before != "" {
		at, id, ok := strings.Cut(before, "_")
		t, err := time.Parse(time.RFC3339Nano, at)
		if !ok || err != nil || !store.IsUUID(id) {
			return invalid("malformed before cursor")
		}
		f.BeforeAt, f.BeforeID = &t, id
	}
	runs, nodes, err := s.cfg.Service.List(r.Context(), c, f)
	if err != nil {
		return err
	}
	page := apitype.RunList{Runs: make([]apitype.Run, len(runs))}
	for i, run := range runs {
		page.Runs[i] = runJSON(run)
		page.Runs[i].Nodes = nodesJSON(nodes[run.ID])
	}
	if len(runs) > 0 && len(runs) == f.Limit {
		last := runs[len(runs)-1]
		page.Next = last.CreatedAt.Format(time.RFC3339Nano) + "_" + last.ID
	}
	writeJSON(w, 200, page)
	return nil
}

func (s *server) get(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	run, nodes, err := s.cfg.Service.Nodes(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	out := runJSON(run)
	if err := json.Unmarshal(run.Targets, &out.Targets); err != nil {
		return err
	}
	out.Nodes = nodesJSON(nodes)
	if run.Policy.Approvals > 0 {
		if out.Approvals, err = s.approvals(r, c, run.ID); err != nil {
			return err
		}
	}
	writeJSON(w, 200, out)
	return nil
}

func (s *server) nodes(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	_, nodes, err := s.cfg.Service.Nodes(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, 200, map[string]any{"nodes": nodesJSON(nodes)})
	return nil
}

func (s *server) output(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	q := r.URL.Query()
	node := q.Get("node")
	if node == "" {
		return invalid("node is required")
	}
	if err := checkQueryText("node", node); err != nil {
		return err
	}
	after, limit := -1, 0
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.Atoi(v); err != nil {
			return invalid("after must be a number")
		}
	}
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil {
			return invalid("limit must be a number")
		}
	}
	chunks, err := s.cfg.Service.Output(r.Context(), c, r.PathValue("id"), node, after, limit)
	if err != nil {
		return err
	}
	out := apitype.OutputPage{Node: node, Chunks: make([]apitype.Chunk, len(chunks))}
	for i, ch := range chunks {
		out.Chunks[i] = apitype.Chunk{Seq: ch.Seq, Data: ch.Data}
	}
	writeJSON(w, 200, out)
	return nil
}

func (s *server) stream(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	q := r.URL.Query()
	var cursor int64
	var err error
	if v := q.Get("cursor"); v != "" {
		if cursor, err = strconv.ParseInt(v, 10, 64); err != nil || cursor < 0 {
			return invalid("cursor must be a non-negative number")
		}
	}
	wait, err := parseDuration("wait", q.Get("wait"))
	if err != nil {
		return err
	}
	wait = min(max(wait, 0), MaxStreamWait)
	var wake <-chan struct{}
	if s.cfg.Notifier != nil && wait > 0 {
		ch, unsub := s.cfg.Notifier.Subscribe(r.PathValue("id"))
		defer unsub()
		wake = ch
	}
	page, err := s.cfg.Service.Stream(r.Context(), c, r.PathValue("id"), cursor, wait, wake)
	if err != nil {
		return err
	}
	out := apitype.StreamPage{Run: runJSON(page.Run), Cursor: page.Cursor, Done: page.Done, Items: make([]apitype.StreamItem, len(page.Items))}
	for i, it := range page.Items {
		out.Items[i] = apitype.StreamItem{Kind: it.Kind, Node: it.Node, Seq: it.Seq, Data: it.Data}
		if it.Kind == "exit" {
			code := it.ExitCode
			out.Items[i].ExitCode = &code
		}
	}
	if page.Done {
		out.Nodes = nodesJSON(page.Nodes)
	}
	writeJSON(w, 200, out)
	return nil
}

func (s *server) verdict(approve bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request, c service.Caller) error {
		var req apitype.VerdictRequest
		if r.ContentLength != 0 {
			if err := decodeJSON(r.Body, &req); err != nil {
				return err
			}
		}
		if err := checkQueryText("comment", req.Comment); err != nil {
			return err
		}
		run, approvals, err := s.cfg.Service.Decide(r.Context(), c, r.PathValue("id"), service.Verdict{Approve: approve, Comment: req.Comment, RequestHash: req.RequestHash})
		if err != nil {
			return err
		}
		if run.State == store.StateDenied {
			s.cfg.Metrics.RunFinished(run.State) // only a pending run takes a verdict: this one ended it
		}
		out := runJSON(run)
		out.Approvals = approvalsJSON(approvals)
		writeJSON(w, http.StatusOK, out)
		return nil
	}
}

// approvals returns a run's verdicts as the API shows them.
func (s *server) approvals(r *http.Request, c service.Caller, id string) ([]apitype.Approval, error) {
	as, err := s.cfg.Service.Approvals(r.Context(), c, id)
	if err != nil {
		return nil, err
	}
	return approvalsJSON(as), nil
}

func (s *server) cancel(w http.ResponseWriter, r *http.Request, c service.Caller) error {
	run, err := s.cfg.Service.Cancel(r.Context(), c, r.PathValue("id"))
	if err != nil {
		return err
	}
	if run.State == store.StateCancelled {
		// A run that had not started ended with this cancel (a cancel of a
		// run already ended is refused); a running one ends by its worker.
		s.cfg.Metrics.RunFinished(run.State)
	}
	writeJSON(w, 202, runJSON(run))
	return nil
}
