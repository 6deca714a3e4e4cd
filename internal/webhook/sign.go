package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Request headers.
const (
	// SignatureHeader carries Sign's result: "sha256=<hex>".
	SignatureHeader = "X-Rexec-Signature"
	// TimestampHeader carries the signing time in Unix seconds; it is part
	// of what is signed, so that a captured request cannot be replayed
	// later than the receiver's allowed skew.
	TimestampHeader = "X-Rexec-Timestamp"
	// EventHeader names the event, for receivers that route on it.
	EventHeader = "X-Rexec-Event"
	// DeliveryHeader identifies a notice across its attempts: a receiver
	// that sees it twice has been sent the same notice again.
	DeliveryHeader = "X-Rexec-Delivery"
	// UserAgent is the User-Agent of every request.
	UserAgent = "rexec-webhook/1"

	// MaxSkewDefault is the skew Verify allows when given none.
	MaxSkewDefault = 5 * time.Minute
)

const signaturePrefix = "sha256="

// Errors from Verify, for receivers that answer them differently.
var (
	// ErrNoSecret: the secret is empty, which would let anyone sign.
	ErrNoSecret = errors.New("webhook: empty secret")
	// ErrBadSignature: the signature header is malformed or does not match
	// the secret, timestamp and body.
	ErrBadSignature = errors.New("webhook: bad signature")
	// ErrBadTimestamp: the timestamp header is malformed or further from
	// now than the allowed skew (a replay, or a clock far off).
	ErrBadTimestamp = errors.New("webhook: bad timestamp")
)

// Sign returns the X-Rexec-Signature value of body sent at ts:
// "sha256=" and the hex HMAC-SHA256, keyed with secret, of the timestamp in
// Unix seconds, a dot, and the body.
func Sign(secret []byte, ts time.Time, body []byte) string {
	return signaturePrefix + hex.EncodeToString(mac(secret, strconv.FormatInt(ts.Unix(), 10), body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(ts))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a request as a receiver would: header is the
// X-Rexec-Signature value, tsHeader the X-Rexec-Timestamp value, body the
// raw request body (verify before parsing it). The timestamp may be at most
// maxSkew from now either way; maxSkew <= 0 means MaxSkewDefault. It returns
// nil, or an error wrapping ErrNoSecret, ErrBadSignature or ErrBadTimestamp.
func Verify(secret []byte, header, tsHeader string, body []byte, maxSkew time.Duration) error {
	if len(secret) == 0 {
		return ErrNoSecret
	}
	if maxSkew <= 0 {
		maxSkew = MaxSkewDefault
	}
	sec, err := strconv.ParseInt(tsHeader, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: not Unix seconds", ErrBadTimestamp)
	}
	hexSig, ok := strings.CutPrefix(header, signaturePrefix)
	if !ok {
		return fmt.Errorf("%w: not %s<hex>", ErrBadSignature, signaturePrefix)
	}
	got, err := hex.DecodeString(hexSig)
	if err != nil {
		return fmt.Errorf("%w: not %s<hex>", ErrBadSignature, signaturePrefix)
	}
	// The MAC covers the header as sent, not a reformatting of it: the
	// sender writes it canonically, and anything else is a forgery.
	if !hmac.Equal(got, mac(secret, tsHeader, body)) {
		return fmt.Errorf("%w: does not match", ErrBadSignature)
	}
	// Checked after the MAC, so that only a genuine but late request is
	// told apart as one.
	if skew := time.Since(time.Unix(sec, 0)).Abs(); skew > maxSkew {
		return fmt.Errorf("%w: %s from now, more than %s", ErrBadTimestamp, skew.Truncate(time.Second), maxSkew)
	}
	return nil
}
