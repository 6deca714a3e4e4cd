package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/client"
)

func TestExitCode(t *testing.T) {
	t.Parallel()
	untrusted := fmt.Errorf("rexec-svc: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}})
	for _, tc := range []struct {
		note   string
		err    error
		code   int
		stderr []string // parts of stderr, in order; nil for none
	}{
		{note: "success"},
		{note: "exit code alone", err: exitError(2), code: 2},
		{note: "an error", err: errors.New("boom"), code: 1, stderr: []string{"rexec-cli: boom\n"}},
		{note: "an untrusted certificate names the way out", err: untrusted, code: 1,
			stderr: []string{"rexec-cli: rexec-svc: tls: failed to verify certificate: x509: certificate signed by unknown authority\n",
				"give the CA that signed it with -ca-file or REXEC_CACERT"}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := exitCode(tc.err, &stderr); code != tc.code {
				t.Errorf("exit code %d, want %d", code, tc.code)
			}
			rest := stderr.String()
			for _, part := range tc.stderr {
				i := strings.Index(rest, part)
				if i < 0 {
					t.Fatalf("stderr %q lacks %q", stderr.String(), part)
				}
				rest = rest[i+len(part):]
			}
			if tc.stderr == nil && stderr.Len() > 0 {
				t.Errorf("stderr %q, want nothing", stderr.String())
			}
		})
	}
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		note     string
		err      error
		ok       bool
		min, max time.Duration
	}{
		{note: "no error"},
		{note: "another error", err: errors.New("x")},
		{note: "another API error", err: &client.Error{Status: 404, Code: "not_found"}},
		{note: "a principal's bound", err: &client.Error{Status: 429, Code: "too_many_requests", RetryAfter: time.Second}, ok: true, min: time.Second, max: 1500 * time.Millisecond},
		{note: "the server's bound", err: fmt.Errorf("x: %w", &client.Error{Status: 503, Code: "overloaded", RetryAfter: 4 * time.Second}), ok: true, min: 4 * time.Second, max: 6 * time.Second},
		{note: "no Retry-After: a second", err: &client.Error{Status: 503, Code: "overloaded"}, ok: true, min: time.Second, max: 1500 * time.Millisecond},
		{note: "a 503 that is not a bound", err: &client.Error{Status: 503, Code: "not_ready"}},
	} {
		t.Run(tc.note, func(t *testing.T) {
			d, ok := retryable(tc.err)
			if ok != tc.ok || (ok && (d < tc.min || d > tc.max)) {
				t.Errorf("retryable = %s, %v; want %v within [%s, %s]", d, ok, tc.ok, tc.min, tc.max)
			}
		})
	}
}
