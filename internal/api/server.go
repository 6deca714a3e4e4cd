package api

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Server defaults; see ServerConfig.
const (
	// ReadHeaderTimeout bounds reading a request's headers, so that a
	// client that opens connections and sends nothing holds none for long.
	ReadHeaderTimeout = 10 * time.Second
	// MaxHeaderBytes bounds a request's line and headers together; beyond
	// it net/http answers 431 (in plain text, not the API's JSON). A token
	// is under 100 bytes; nothing the API takes comes near it.
	MaxHeaderBytes = 64 << 10

	ReadTimeoutDefault  = time.Minute
	WriteTimeoutDefault = 2 * time.Minute
	IdleTimeoutDefault  = 2 * time.Minute
)

// ServerConfig configures the HTTP server around Handler. Zero durations
// take the defaults.
type ServerConfig struct {
	// ReadTimeout bounds reading a whole request, body included (at most
	// MaxBodyBytes): a client that trickles its body is cut off. Default
	// 1m.
	ReadTimeout time.Duration
	// WriteTimeout bounds a request from the end of its headers to the end
	// of its answer, on HTTP/1 the body's upload included, so it is longer
	// than ReadTimeout. It is meant for the ordinary requests: stream
	// requests have StreamDeadline instead. Default 2m.
	WriteTimeout time.Duration
	// IdleTimeout bounds how long a kept-alive connection waits for its
	// next request. Default 2m.
	IdleTimeout time.Duration
	// TLS, when set, makes the server speak HTTPS only (HTTP/2 and
	// HTTP/1.1); see LoadTLS. Default: plain HTTP.
	TLS *tls.Config
	// Logger receives net/http's own errors (TLS handshakes that failed,
	// a handler's panic) at warning level. Default: discard.
	Logger *slog.Logger
}

// NewServer returns the HTTP server for h; serve it with Serve.
func NewServer(cfg ServerConfig, h http.Handler) *http.Server {
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = ReadTimeoutDefault
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = WriteTimeoutDefault
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = IdleTimeoutDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.WriteTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		TLSConfig:         cfg.TLS,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
}

// Serve serves srv on l, over TLS when srv has a TLS configuration. Like
// http.Server.Serve it returns http.ErrServerClosed after Shutdown.
func Serve(srv *http.Server, l net.Listener) error {
	if srv.TLSConfig != nil {
		return srv.ServeTLS(l, "", "")
	}
	return srv.Serve(l)
}

// LoadTLS reads a certificate (PEM, the server's first, then any
// intermediates) and its key for ServerConfig.TLS. TLS 1.2 is the least
// version accepted: older ones have no cipher suite worth the name left.
// The files are read once; a renewed certificate takes a restart.
func LoadTLS(certFile, keyFile string) (*tls.Config, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("TLS needs both a certificate and its key, or neither")
	}
	if certFile == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}
