package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rexec/rexec/internal/apitype"
	"github.com/rexec/rexec/internal/service"
	"github.com/rexec/rexec/internal/store"
)

func caller(id int64) service.Caller {
	return service.Caller{Principal: store.Principal{ID: id, Name: fmt.Sprintf("p%d", id)}}
}

// TestLimiter: each bound refuses the request one past it, with its own
// status, and a release frees the slot.
func TestLimiter(t *testing.T) {
	t.Parallel()
	type step struct {
		stream    bool
		principal int64
		release   int // > 0: release the slot taken at this step (1-based) instead
		want      int // 0 admitted, else the refusal's status
	}
	for _, tc := range []struct {
		note  string
		steps []step
	}{
		{note: "a principal's streams", steps: []step{
			{stream: true, principal: 1}, {stream: true, principal: 1}, {stream: true, principal: 1, want: 429},
			{stream: true, principal: 2}, // another principal is not held back
			{release: 1}, {stream: true, principal: 1},
		}},
		{note: "streams over all principals", steps: []step{
			{stream: true, principal: 1}, {stream: true, principal: 2}, {stream: true, principal: 3},
			{stream: true, principal: 4, want: 503},
			{principal: 4}, // the other requests have their own bound
			{release: 2}, {stream: true, principal: 4},
		}},
		{note: "a principal at its bound hears 429 even when the server is full", steps: []step{
			{stream: true, principal: 1}, {stream: true, principal: 1}, {stream: true, principal: 2},
			{stream: true, principal: 1, want: 429}, {stream: true, principal: 3, want: 503},
		}},
		{note: "requests", steps: []step{
			{principal: 1}, {principal: 2}, {principal: 1, want: 503},
			{stream: true, principal: 1}, // streams are apart
			{release: 1}, {principal: 1},
		}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			l := newLimiter(Limits{StreamsPerPrincipal: 2, Streams: 3, Requests: 2}, prometheus.NewRegistry())
			releases := map[int]func(){}
			for i, s := range tc.steps {
				if s.release > 0 {
					releases[s.release]()
					continue
				}
				acquire := l.acquireRequest
				if s.stream {
					acquire = l.acquireStream
				}
				release, f := acquire(caller(s.principal))
				got := 0
				if f != nil {
					got = f.status
				} else {
					releases[i+1] = release
				}
				if got != s.want {
					t.Fatalf("step %d %+v: got %d, want %d (refusal %+v)", i+1, s, got, s.want, f)
				}
			}
		})
	}
}

func TestCheckContentType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ct   string
		body string
		ok   bool
	}{
		{ct: "application/json", body: "{}", ok: true},
		{ct: "application/json; charset=utf-8", body: "{}", ok: true},
		{ct: "Application/JSON", body: "{}", ok: true},
		{ct: "", body: "{}", ok: true},                        // taken as JSON
		{ct: "text/plain", body: "", ok: true},                // no body: nothing to type
		{ct: "application/x-www-form-urlencoded", body: "{}"}, // curl -d
		{ct: "multipart/form-data; boundary=x", body: "{}"},
		{ct: "text/plain", body: "{}"},
		{ct: "application/json-patch+json", body: "{}"},
		{ct: "application/json;;", body: "{}"}, // malformed
	} {
		r := httptest.NewRequest(http.MethodPost, "/v1/runs", strings.NewReader(tc.body))
		if tc.ct != "" {
			r.Header.Set("Content-Type", tc.ct)
		}
		f := checkContentType(r)
		if tc.ok != (f == nil) || (f != nil && (f.status != 415 || f.code != "unsupported_media_type")) {
			t.Errorf("Content-Type %q with body %q: refusal %+v, want ok=%v", tc.ct, tc.body, f, tc.ok)
		}
	}
}

// TestRefusalFormat: a refusal is the API's JSON error, with Retry-After
// for the bounds.
func TestRefusalFormat(t *testing.T) {
	t.Parallel()
	l := newLimiter(Limits{StreamsPerPrincipal: 1}, prometheus.NewRegistry())
	h := l.admit(streamRoute, func(w http.ResponseWriter, r *http.Request, c service.Caller) error {
		writeJSON(w, 200, map[string]string{"ok": "yes"})
		return nil
	})
	release, _ := l.acquireStream(caller(1))
	defer release()
	rec := httptest.NewRecorder()
	if err := h(rec, httptest.NewRequest(http.MethodGet, "/v1/runs/x/stream", nil), caller(1)); err != nil {
		t.Fatal(err)
	}
	var eb apitype.ErrorBody
	if rec.Code != 429 || rec.Header().Get("Retry-After") != "1" || rec.Header().Get("Content-Type") != "application/json" ||
		json.Unmarshal(rec.Body.Bytes(), &eb) != nil || eb.Code != "too_many_requests" || !strings.Contains(eb.Error, "principal p1") {
		t.Errorf("got %d %v %q", rec.Code, rec.Header(), rec.Body)
	}
}

// TestStreamOutlivesServerTimeouts: under a server whose read and write
// timeouts are shorter than a long poll, the stream route answers in full,
// its context intact, over HTTP/1.1 and HTTP/2; any other route is cut, as
// the timeouts mean it to be.
func TestStreamOutlivesServerTimeouts(t *testing.T) {
	t.Parallel()
	const timeout, poll = 300 * time.Millisecond, time.Second
	for _, tc := range []struct {
		note    string
		h2      bool
		pattern string
		wantOK  bool
	}{
		{note: "stream over HTTP/1.1", pattern: streamRoute, wantOK: true},
		{note: "stream over HTTP/2", h2: true, pattern: streamRoute, wantOK: true},
		{note: "other route over HTTP/1.1", pattern: "GET /v1/runs"},
		{note: "other route over HTTP/2", h2: true, pattern: "GET /v1/runs"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			t.Parallel()
			l := newLimiter(Limits{}, prometheus.NewRegistry())
			h := l.admit(tc.pattern, func(w http.ResponseWriter, r *http.Request, c service.Caller) error {
				select {
				case <-time.After(poll):
				case <-r.Context().Done():
					writeError(w, 500, "cut", "the request's context ended during the wait")
					return nil
				}
				writeJSON(w, 200, map[string]string{"waited": "yes"})
				return nil
			})
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// As route does: the handler sees the recorder.
				_ = h(&statusRecorder{ResponseWriter: w, code: 200}, r, caller(1))
			}))
			srv.Config.ReadTimeout, srv.Config.WriteTimeout = timeout, timeout
			if tc.h2 {
				srv.EnableHTTP2 = true
				srv.StartTLS()
			} else {
				srv.Start()
			}
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v1/runs/x/stream", nil)
			resp, err := srv.Client().Do(req)
			var body []byte
			if err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if tc.h2 && resp.ProtoMajor != 2 {
					t.Fatalf("served over %s, want HTTP/2", resp.Proto)
				}
			}
			switch {
			case tc.wantOK && (err != nil || resp.StatusCode != 200 || !strings.Contains(string(body), "waited")):
				t.Errorf("got %v %q, want the whole answer", err, body)
			case !tc.wantOK && err == nil && resp.StatusCode == 200:
				t.Errorf("got %d %q, want the request cut by the server's timeouts", resp.StatusCode, body)
			case !tc.wantOK && errors.Is(err, context.DeadlineExceeded):
				t.Errorf("the client gave up first: %v", err)
			}
		})
	}
}
