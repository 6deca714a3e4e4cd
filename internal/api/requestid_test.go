package api

import (
	"encoding/json"
	"github.com/rexec/rexec/internal/apitype"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

var generatedID = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestRequestID(t *testing.T) {
	for _, tc := range []struct {
		name, given string
		keep        bool
	}{
		{"uuid", "0f8fad5b-d9cb-469f-a165-70867728950e", true},
		{"printable punctuation and space", `req 42: a/b?c=d&e="f"~`, true},
		{"one byte", "x", true},
		{"at the bound", strings.Repeat("a", MaxRequestIDLen), true},
		{"empty", "", false},
		{"over the bound", strings.Repeat("a", MaxRequestIDLen+1), false},
		{"newline", "abc\ndef", false},
		{"tab", "abc\tdef", false},
		{"NUL", "abc\x00", false},
		{"DEL", "abc\x7f", false},
		{"UTF-8", "größe", false},
		{"invalid UTF-8", "abc\xff", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := requestID(tc.given)
			if tc.keep && got != tc.given {
				t.Errorf("requestID(%q) = %q, want it kept", tc.given, got)
			}
			if !tc.keep && !generatedID.MatchString(got) {
				t.Errorf("requestID(%q) = %q, want a generated one", tc.given, got)
			}
		})
	}
	if a, b := requestID(""), requestID(""); a == b {
		t.Errorf("two generated IDs are equal: %s", a)
	}
}

// TestRequestIDHeader: every answer, an error as much as a success and one
// outside /v1/, carries the request's ID, the one given when it is sane;
// an error body repeats it.
func TestRequestIDHeader(t *testing.T) {
	h := Handler(Config{})
	for _, tc := range []struct {
		name, path, given string
		status            int
		want              string // "" for a generated ID
	}{
		{"health, given", "/healthz", "abc-123", 200, "abc-123"},
		{"health, none", "/healthz", "", 200, ""},
		{"unauthenticated, given", "/v1/runs", "client-7", 401, "client-7"},
		{"unauthenticated, too long", "/v1/runs", strings.Repeat("z", 200), 401, ""},
		{"no such endpoint", "/v1/nothing", "", 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.path, nil)
			if tc.given != "" {
				r.Header.Set(RequestIDHeader, tc.given)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			got := w.Header().Get(RequestIDHeader)
			if tc.want != "" && got != tc.want || tc.want == "" && !generatedID.MatchString(got) {
				t.Errorf("X-Request-Id %q (given %q)", got, tc.given)
			}
			if tc.status >= 400 {
				var eb apitype.ErrorBody
				if err := json.Unmarshal(w.Body.Bytes(), &eb); err != nil || eb.RequestID != got {
					t.Errorf("error body %s: request_id %q, want %q (%v)", w.Body, eb.RequestID, got, err)
				}
			}
		})
	}
}

func TestClientAddr(t *testing.T) {
	for remote, want := range map[string]string{
		"192.0.2.7:51234":     "192.0.2.7",
		"[2001:db8::1]:443":   "2001:db8::1",
		"@":                   "@", // a unix socket's peer has no port
		"127.0.0.1:8080":      "127.0.0.1",
		"[::ffff:10.0.0.1]:1": "::ffff:10.0.0.1",
	} {
		r := &http.Request{RemoteAddr: remote, Header: http.Header{"X-Forwarded-For": {"203.0.113.9"}}}
		if got := clientAddr(r); got != want {
			t.Errorf("clientAddr(%q) = %q, want %q", remote, got, want)
		}
	}
}
