package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/api"
	"github.com/rexec/rexec/internal/service"
	"github.com/rexec/rexec/internal/testcert"
)

func TestHTTPFlags(t *testing.T) {
	t.Parallel()
	f := testcert.Write(t)
	for _, tc := range []struct {
		note    string
		args    []string
		wantErr string // part of the message; "" for success
		check   func(httpOptions) bool
	}{
		{note: "defaults: plain HTTP", check: func(o httpOptions) bool {
			return o.server.TLS == nil && o.server.ReadTimeout == api.ReadTimeoutDefault && o.server.WriteTimeout == api.WriteTimeoutDefault &&
				o.server.IdleTimeout == api.IdleTimeoutDefault && o.limits == api.Limits{StreamsPerPrincipal: 8, Streams: 256, Requests: 256} &&
				o.submitWriters == service.SubmitWritersDefault
		}},
		{note: "TLS", args: []string{"-tls-cert-file", f.Cert, "-tls-key-file", f.Key}, check: func(o httpOptions) bool { return o.server.TLS != nil }},
		{note: "timeouts and limits", args: []string{"-read-timeout", "5s", "-write-timeout", "6s", "-idle-timeout", "7s",
			"-max-streams-per-principal", "2", "-max-streams", "3", "-max-requests", "4", "-submit-writers", "9"}, check: func(o httpOptions) bool {
			return o.server.ReadTimeout == 5*time.Second && o.server.WriteTimeout == 6*time.Second && o.server.IdleTimeout == 7*time.Second &&
				o.limits == api.Limits{StreamsPerPrincipal: 2, Streams: 3, Requests: 4} && o.submitWriters == 9
		}},
		{note: "certificate alone", args: []string{"-tls-cert-file", f.Cert}, wantErr: "both a certificate and its key, or neither"},
		{note: "key alone", args: []string{"-tls-key-file", f.Key}, wantErr: "both a certificate and its key, or neither"},
		{note: "unreadable certificate", args: []string{"-tls-cert-file", f.Cert + ".gone", "-tls-key-file", f.Key}, wantErr: "-tls-cert-file, -tls-key-file: load TLS certificate"},
		{note: "no read timeout", args: []string{"-read-timeout", "0"}, wantErr: "-read-timeout must be positive"},
		{note: "negative write timeout", args: []string{"-write-timeout", "-1s"}, wantErr: "-write-timeout must be positive"},
		{note: "no idle timeout", args: []string{"-idle-timeout", "0s"}, wantErr: "-idle-timeout must be positive"},
		{note: "no streams per principal", args: []string{"-max-streams-per-principal", "0"}, wantErr: "-max-streams-per-principal must be at least 1"},
		{note: "no streams", args: []string{"-max-streams", "0"}, wantErr: "-max-streams must be at least 1"},
		{note: "no requests", args: []string{"-max-requests", "-3"}, wantErr: "-max-requests must be at least 1"},
		{note: "no submit writers", args: []string{"-submit-writers", "0"}, wantErr: "-submit-writers must be at least 1"},
	} {
		t.Run(tc.note, func(t *testing.T) {
			fs := newFlagSet("serve", io.Discard)
			hf := addHTTPFlags(fs)
			if err := fs.FlagSet.Parse(tc.args); err != nil { // no environment fallback: the test's own
				t.Fatal(err)
			}
			o, err := hf.options()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.check(o) {
				t.Errorf("options %+v", o)
			}
		})
	}
}

// TestServeChecksHTTPFlagsFirst: a bad flag fails serve before it needs the
// database.
func TestServeChecksHTTPFlagsFirst(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"serve", "-database-url", "postgres://127.0.0.1:1/none", "-tls-key-file", "key.pem"}, io.Discard, &stderr)
	if err == nil || !strings.Contains(err.Error(), "both a certificate and its key, or neither") {
		t.Errorf("got %v, want the TLS flags refused", err)
	}
}

// TestServeChecksEngineFlags: -round-interval and -max-starting out of
// their ranges fail serve and worker before they need the database.
func TestServeChecksEngineFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"serve", "-round-interval", "0s"}, "-round-interval must be positive and at most 1s"},
		{[]string{"worker", "-round-interval", "2s"}, "-round-interval must be positive and at most 1s"},
		{[]string{"serve", "-max-starting", "0"}, "-max-starting must be between 1 and 1000"},
		{[]string{"worker", "-max-starting", "1001"}, "-max-starting must be between 1 and 1000"},
	} {
		args := append(tc.args, "-database-url", "postgres://127.0.0.1:1/none")
		err := run(context.Background(), args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: got %v, want %q", tc.args, err, tc.want)
		}
	}
}
