package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
)

// RequestIDHeader carries a request's ID: taken from the request when it is
// sane, made up otherwise, and always echoed in the answer. The audit
// events a request causes carry it, so that an auditor can tie them to a
// client's log line or to the server's.
const RequestIDHeader = "X-Request-Id"

// MaxRequestIDLen bounds an incoming request ID.
const MaxRequestIDLen = 128

// requestID returns the client's request ID when it is sane — 1 to
// MaxRequestIDLen bytes of printable ASCII, so that it cannot break a log
// line or smuggle anything into the audit log — and a new random one
// otherwise.
func requestID(given string) string {
	if saneRequestID(given) {
		return given
	}
	return newRequestID()
}

func saneRequestID(s string) bool {
	if len(s) == 0 || len(s) > MaxRequestIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// newRequestID is 16 random bytes in hex.
func newRequestID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

type requestIDKey struct{}

// RequestID returns the ID of the request ctx belongs to; empty outside
// one.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// withRequestID gives every request an ID before anything else looks at
// it: in its context and in the answer's X-Request-Id header.
func withRequestID(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := requestID(r.Header.Get(RequestIDHeader))
		w.Header().Set(RequestIDHeader, id)
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

// clientAddr is the host of the request's TCP peer. X-Forwarded-For and the
// like are not trusted: any client can write them.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
