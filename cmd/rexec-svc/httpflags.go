package main

import (
	"fmt"
	"time"

	"github.com/rexec/rexec/internal/api"
	"github.com/rexec/rexec/internal/service"
)

// httpFlags are serve's flags for the API's server: TLS, timeouts and the
// bounds on requests in flight.
type httpFlags struct {
	certFile, keyFile                         *string
	readTimeout, writeTimeout, idleTimeout    *time.Duration
	streamsPerPrincipal, streams, maxRequests *int
	submitWriters                             *int
}

// httpOptions are the checked flags; the zero value means every default
// over plain HTTP (dev mode).
type httpOptions struct {
	server api.ServerConfig
	limits api.Limits
	// submitWriters is service.Config.SubmitWriters.
	submitWriters int
}

func addHTTPFlags(fs *flagSet) httpFlags {
	return httpFlags{
		certFile: fs.String("tls-cert-file", "REXEC_TLS_CERT_FILE", "", "serve HTTPS only, with this certificate (PEM, then any intermediates); needs -tls-key-file"),
		keyFile:  fs.String("tls-key-file", "REXEC_TLS_KEY_FILE", "", "the key of -tls-cert-file (PEM)"),
		readTimeout: fs.Duration("read-timeout", "REXEC_READ_TIMEOUT", api.ReadTimeoutDefault,
			"bound on reading a whole request, body included"),
		writeTimeout: fs.Duration("write-timeout", "REXEC_WRITE_TIMEOUT", api.WriteTimeoutDefault,
			fmt.Sprintf("bound on a request from its headers to the end of its answer (stream requests have %s instead)", api.StreamDeadline)),
		idleTimeout: fs.Duration("idle-timeout", "REXEC_IDLE_TIMEOUT", api.IdleTimeoutDefault,
			"how long a kept-alive connection waits for its next request"),
		streamsPerPrincipal: fs.Int("max-streams-per-principal", "REXEC_MAX_STREAMS_PER_PRINCIPAL", api.StreamsPerPrincipalDefault,
			"stream requests (long polls) one principal may have in flight; beyond: 429"),
		streams: fs.Int("max-streams", "REXEC_MAX_STREAMS", api.StreamsDefault,
			"stream requests in flight over all principals; beyond: 503"),
		maxRequests: fs.Int("max-requests", "REXEC_MAX_REQUESTS", api.RequestsDefault,
			"other API requests in flight; beyond: 503"),
		submitWriters: fs.Int("submit-writers", "REXEC_SUBMIT_WRITERS", service.SubmitWritersDefault,
			"submissions that write to the database at once; the others wait their turn"),
	}
}

// options checks the flags and reads the TLS certificate.
func (f httpFlags) options() (httpOptions, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-read-timeout", *f.readTimeout}, {"-write-timeout", *f.writeTimeout}, {"-idle-timeout", *f.idleTimeout}} {
		// Zero would mean no timeout to net/http, which is what these
		// flags exist to prevent.
		if d.v <= 0 {
			return httpOptions{}, fmt.Errorf("%s must be positive", d.name)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"-max-streams-per-principal", *f.streamsPerPrincipal}, {"-max-streams", *f.streams}, {"-max-requests", *f.maxRequests}, {"-submit-writers", *f.submitWriters}} {
		if n.v < 1 {
			return httpOptions{}, fmt.Errorf("%s must be at least 1", n.name)
		}
	}
	tlsConf, err := api.LoadTLS(*f.certFile, *f.keyFile)
	if err != nil {
		return httpOptions{}, fmt.Errorf("-tls-cert-file, -tls-key-file: %w", err)
	}
	return httpOptions{
		server:        api.ServerConfig{ReadTimeout: *f.readTimeout, WriteTimeout: *f.writeTimeout, IdleTimeout: *f.idleTimeout, TLS: tlsConf},
		limits:        api.Limits{StreamsPerPrincipal: *f.streamsPerPrincipal, Streams: *f.streams, Requests: *f.maxRequests},
		submitWriters: *f.submitWriters,
	}, nil
}
