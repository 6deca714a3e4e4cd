package api

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/service"
)

func TestDecodeSubmission(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note    string
		body    string
		want    service.Submission
		wantErr string // part of the message; "" for success
	}{
		{note: "command", body: `{"argv": ["echo", "hi"]}`, want: service.Submission{Argv: []string{"echo", "hi"}, Shell: true}},
		{note: "every field", body: `{"argv": ["ls"], "shell": false, "node": "^web", "service": "web", "tag": "v1", "prefix": "_rexec/x",
			"wait": "3s", "wait_repl": "100ms", "timeout": "1h", "reason": "r", "dry_run": true}`,
			want: service.Submission{Argv: []string{"ls"}, NodeFilter: "^web", ServiceFilter: "web", TagFilter: "v1", Prefix: "_rexec/x",
				Wait: 3 * time.Second, WaitRepl: 100 * time.Millisecond, Timeout: time.Hour, Reason: "r", DryRun: true}},
		{note: "script", body: `{"script": "AP8="}`, want: service.Submission{Script: []byte{0, 0xff}, Shell: true}},
		{note: "an empty script is no script", body: `{"argv": ["true"], "script": ""}`, want: service.Submission{Argv: []string{"true"}, Shell: true}},
		// NUL decodes: the service and the engine refuse it with a
		// message that names the field.
		{note: "NUL is decoded for the checks to name", body: `{"argv": ["a\u0000"], "reason": "\u0000"}`,
			want: service.Submission{Argv: []string{"a\x00"}, Reason: "\x00", Shell: true}},
		{note: "invalid UTF-8 becomes U+FFFD", body: "{\"argv\": [\"\xff\"]}", want: service.Submission{Argv: []string{"\uFFFD"}, Shell: true}},
		{note: "malformed JSON", body: `{"argv": [`, wantErr: "malformed JSON body"},
		{note: "unknown field", body: `{"nodes": "x"}`, wantErr: "unknown field"},
		{note: "trailing data", body: `{} {}`, wantErr: "trailing data"},
		{note: "bad duration", body: `{"wait": "soon"}`, wantErr: "wait:"},
		{note: "duration below 1ms", body: `{"timeout": "10us"}`, wantErr: "below the resolution"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			got, err := decodeSubmission(strings.NewReader(tc.body))
			if tc.wantErr != "" {
				if !errors.Is(err, service.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("decode: %v, want a 400 with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !sameSubmission(got, tc.want) {
				t.Errorf("decoded %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDecodeSubmissionTooLarge: the body limit's error passes through for
// the 413.
func TestDecodeSubmissionTooLarge(t *testing.T) {
	t.Parallel()
	body := http.MaxBytesReader(nil, readCloser{strings.NewReader(`{"reason": "` + strings.Repeat("x", 100) + `"}`)}, 10)
	var mbe *http.MaxBytesError
	if _, err := decodeSubmission(body); !errors.As(err, &mbe) {
		t.Errorf("decode: %v, want *http.MaxBytesError", err)
	}
}

type readCloser struct{ *strings.Reader }

func (readCloser) Close() error { return nil }

func TestCheckQueryText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		v  string
		ok bool
	}{{"web-1", true}, {"", true}, {"nœud", true}, {"\x00", false}, {"web\xff", false}} {
		err := checkQueryText("node", tc.v)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, service.ErrInvalid)) {
			t.Errorf("checkQueryText(%q) = %v", tc.v, err)
		}
	}
}
