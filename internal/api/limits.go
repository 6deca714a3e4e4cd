package api

import (
	"fmt"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rexec/rexec/internal/service"
)

// Limit defaults; see Limits.
const (
	StreamsPerPrincipalDefault = 8
	StreamsDefault             = 256
	RequestsDefault            = 256
)

// streamGrace is how long a stream request may take beyond its wait: the
// queries around the wait and writing the page.
const streamGrace = 30 * time.Second

// StreamDeadline is how long a stream request has from the start of its
// handler to the end of its answer, whatever the server's write timeout: a
// long poll must not be cut by a timeout meant for the other requests.
const StreamDeadline = MaxStreamWait + streamGrace

// streamRoute is the long-polling route, which the stream bounds and
// StreamDeadline apply to instead of the request bound and the server's
// write timeout.
const streamRoute = "GET /v1/runs/{id}/stream"

// Limits bound how many requests the API serves at once, so that neither one
// principal nor a crowd can take every goroutine, database connection or
// megabyte of the server. A request beyond a bound is refused at once, with
// Retry-After, rather than queued. Zero fields take the defaults.
type Limits struct {
	// StreamsPerPrincipal bounds one principal's stream requests in flight
	// (all its tokens together); beyond it the answer is 429
	// too_many_requests. A CLI following a run holds one at a time.
	// Default 8.
	StreamsPerPrincipal int
	// Streams bounds stream requests in flight over every principal and
	// tenant; beyond it the answer is 503 overloaded. Each one that waits
	// queries the database about once a second. Default 256.
	Streams int
	// Requests bounds the other API requests in flight, authenticated
	// ones only (an unauthenticated request is answered 401 before it
	// takes a slot); beyond it the answer is 503 overloaded. Each may
	// hold a body of up to MaxBodyBytes and a database connection.
	// Default 256.
	Requests int
}

func (l Limits) withDefaults() Limits {
	if l.StreamsPerPrincipal <= 0 {
		l.StreamsPerPrincipal = StreamsPerPrincipalDefault
	}
	if l.Streams <= 0 {
		l.Streams = StreamsDefault
	}
	if l.Requests <= 0 {
		l.Requests = RequestsDefault
	}
	return l
}

// limiter counts requests in flight against Limits.
type limiter struct {
	cfg      Limits
	inFlight *prometheus.GaugeVec

	mu          sync.Mutex
	streams     int
	requests    int
	byPrincipal map[int64]int
}

func newLimiter(cfg Limits, reg prometheus.Registerer) *limiter {
	l := &limiter{cfg: cfg.withDefaults(), byPrincipal: map[int64]int{},
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rexec_http_in_flight",
			Help: "API requests in flight: streams (long polls) and the others."}, []string{"kind"}),
	}
	reg.MustRegister(l.inFlight)
	return l
}

// refusal is a request turned away before its handler ran.
type refusal struct {
	status     int
	code, msg  string
	retryAfter bool
}

func (f *refusal) write(w http.ResponseWriter) {
	if f.retryAfter {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, f.status, f.code, f.msg)
}

// admit wraps an authenticated route's handler with the checks and bounds
// that apply to it.
func (l *limiter) admit(pattern string, h handlerFunc) handlerFunc {
	stream := pattern == streamRoute
	return func(w http.ResponseWriter, r *http.Request, c service.Caller) error {
		if f := checkContentType(r); f != nil {
			f.write(w)
			return nil
		}
		acquire := l.acquireRequest
		if stream {
			acquire = l.acquireStream
		}
		release, f := acquire(c)
		if f != nil {
			f.write(w)
			return nil
		}
		defer release()
		if stream {
			extendWriteDeadline(w, time.Now().Add(StreamDeadline))
		}
		return h(w, r, c)
	}
}

func (l *limiter) acquireStream(c service.Caller) (func(), *refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// The principal's bound first: a principal at its own bound hears that
	// it is the one to slow down, whatever the others do.
	p := c.Principal.ID
	if l.byPrincipal[p] >= l.cfg.StreamsPerPrincipal {
		return nil, &refusal{status: http.StatusTooManyRequests, code: "too_many_requests", retryAfter: true,
			msg: fmt.Sprintf("principal %s has %d stream requests in flight, the most allowed; retry when one ends", c.Principal.Name, l.cfg.StreamsPerPrincipal)}
	}
	if l.streams >= l.cfg.Streams {
		return nil, &refusal{status: http.StatusServiceUnavailable, code: "overloaded", retryAfter: true,
			msg: fmt.Sprintf("the server has %d stream requests in flight, the most it serves; retry shortly", l.cfg.Streams)}
	}
	l.byPrincipal[p]++
	l.streams++
	l.inFlight.WithLabelValues("stream").Inc()
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.byPrincipal[p]--; l.byPrincipal[p] == 0 {
			delete(l.byPrincipal, p) // the map holds only principals with streams open
		}
		l.streams--
		l.inFlight.WithLabelValues("stream").Dec()
	}, nil
}

func (l *limiter) acquireRequest(service.Caller) (func(), *refusal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.requests >= l.cfg.Requests {
		return nil, &refusal{status: http.StatusServiceUnavailable, code: "overloaded", retryAfter: true,
			msg: fmt.Sprintf("the server has %d requests in flight, the most it serves; retry shortly", l.cfg.Requests)}
	}
	l.requests++
	l.inFlight.WithLabelValues("request").Inc()
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.requests--
		l.inFlight.WithLabelValues("request").Dec()
	}, nil
}

// extendWriteDeadline moves the connection's write deadline for this
// request, which would otherwise cut a long poll's answer (HTTP/1.1: the
// connection is closed; HTTP/2: the stream is reset). The read deadline
// needs nothing: net/http clears it once a request without a body is read.
// Nothing leaks into the connection's next request, for which net/http
// sets the deadlines afresh.
func extendWriteDeadline(w http.ResponseWriter, at time.Time) {
	// http.ErrNotSupported means a writer without deadlines (a test's
	// recorder): nothing to extend.
	_ = http.NewResponseController(w).SetWriteDeadline(at)
}

// Unwrap lets http.ResponseController reach the connection's deadlines
// through the recorder.
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// checkContentType refuses a body that says it is not JSON. A body with no
// Content-Type is taken as JSON: some clients send none, and the body's own
// errors then say what is wrong. One that says it is something else (a
// form, as `curl -d` sends unless told otherwise, or an upload) gets a 415
// naming the header to send, rather than a JSON syntax error about a body
// the client believes is fine.
func checkContentType(r *http.Request) *refusal {
	ct := r.Header.Get("Content-Type")
	if r.ContentLength == 0 || ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && mt == "application/json" {
		return nil
	}
	got := "a malformed Content-Type"
	if err == nil {
		got = mt
	}
	return &refusal{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type",
		msg: "the request body must be JSON with Content-Type: application/json, not " + got}
}
