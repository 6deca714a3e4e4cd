package webhook_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/rexec/rexec/internal/webhook"
)

func TestSignVerify(t *testing.T) {
	t.Parallel()
	secret := []byte("s3cret")
	body := []byte(`{"text":"hi"}`)
	now := time.Now()
	unix := func(ts time.Time) string { return strconv.FormatInt(ts.Unix(), 10) }

	for _, tc := range []struct {
		note    string
		secret  []byte // the receiver's
		header  string
		ts      string
		body    []byte
		maxSkew time.Duration
		want    error
	}{
		{note: "valid", secret: secret, header: webhook.Sign(secret, now, body), ts: unix(now), body: body},
		{note: "valid within the skew, in the past", secret: secret, header: webhook.Sign(secret, now.Add(-4*time.Minute), body), ts: unix(now.Add(-4 * time.Minute)), body: body},
		{note: "valid within the skew, in the future", secret: secret, header: webhook.Sign(secret, now.Add(4*time.Minute), body), ts: unix(now.Add(4 * time.Minute)), body: body},
		{note: "tampered body", secret: secret, header: webhook.Sign(secret, now, body), ts: unix(now), body: []byte(`{"text":"ho"}`), want: webhook.ErrBadSignature},
		{note: "other secret", secret: []byte("other"), header: webhook.Sign(secret, now, body), ts: unix(now), body: body, want: webhook.ErrBadSignature},
		{note: "timestamp changed", secret: secret, header: webhook.Sign(secret, now, body), ts: unix(now.Add(time.Second)), body: body, want: webhook.ErrBadSignature},
		{note: "timestamp reformatted", secret: secret, header: webhook.Sign(secret, now, body), ts: "+" + unix(now), body: body, want: webhook.ErrBadSignature},
		{note: "no prefix", secret: secret, header: webhook.Sign(secret, now, body)[len("sha256="):], ts: unix(now), body: body, want: webhook.ErrBadSignature},
		{note: "not hex", secret: secret, header: "sha256=zz", ts: unix(now), body: body, want: webhook.ErrBadSignature},
		{note: "empty header", secret: secret, header: "", ts: unix(now), body: body, want: webhook.ErrBadSignature},
		{note: "stale: a replay", secret: secret, header: webhook.Sign(secret, now.Add(-10*time.Minute), body), ts: unix(now.Add(-10 * time.Minute)), body: body, want: webhook.ErrBadTimestamp},
		{note: "too far ahead", secret: secret, header: webhook.Sign(secret, now.Add(10*time.Minute), body), ts: unix(now.Add(10 * time.Minute)), body: body, want: webhook.ErrBadTimestamp},
		{note: "stale for a tighter skew", secret: secret, header: webhook.Sign(secret, now.Add(-2*time.Minute), body), ts: unix(now.Add(-2 * time.Minute)), body: body, maxSkew: time.Minute, want: webhook.ErrBadTimestamp},
		{note: "timestamp not a number", secret: secret, header: webhook.Sign(secret, now, body), ts: "yesterday", body: body, want: webhook.ErrBadTimestamp},
		{note: "empty timestamp", secret: secret, header: webhook.Sign(secret, now, body), ts: "", body: body, want: webhook.ErrBadTimestamp},
		{note: "empty secret", secret: nil, header: webhook.Sign(nil, now, body), ts: unix(now), body: body, want: webhook.ErrNoSecret},
	} {
		t.Run(tc.note, func(t *testing.T) {
			err := webhook.Verify(tc.secret, tc.header, tc.ts, tc.body, tc.maxSkew)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestSignKnownAnswer pins the construction that docs/webhook.md tells
// receivers to reproduce (and its openssl line computes).
func TestSignKnownAnswer(t *testing.T) {
	t.Parallel()
	got := webhook.Sign([]byte("secret"), time.Unix(1700000000, 0), []byte(`{"text":"hi"}`))
	// From openssl: printf %s '1700000000.{"text":"hi"}' | openssl dgst -sha256 -hmac secret
	const want = "sha256=3ad1ab8e3e2036926574b48bb349a6926291abb28309d44d18066d4f51de2112"
	if got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}
