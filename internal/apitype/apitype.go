// Package apitype holds the JSON bodies of rexec-svc's HTTP API: what the
// server (internal/api) writes and reads, and what clients (internal/client
// and rexec-cli) decode and send. It depends on nothing of the server, so
// that a client does not carry the service, its database, its policy
// engine and its queue: with them, rexec-cli took 36 ms to start on the
// development machine; without, 20 ms.
package apitype

// ErrorBody is every error response.
type ErrorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// Reasons are the policy's reasons when it refused.
	Reasons []string `json:"reasons,omitempty"`
	// RequestID is the request's ID (as in the X-Request-Id header), to
	// quote when asking about the failure.
	RequestID string `json:"request_id,omitempty"`
}

// SubmitRequest is the body of POST /v1/runs.
type SubmitRequest struct {
	Argv     []string `json:"argv,omitempty"`
	Script   []byte   `json:"script,omitempty"` // base64
	Shell    *bool    `json:"shell,omitempty"`  // default true
	Node     string   `json:"node,omitempty"`
	Service  string   `json:"service,omitempty"`
	Tag      string   `json:"tag,omitempty"`
	Prefix   string   `json:"prefix,omitempty"`
	Wait     string   `json:"wait,omitempty"`
	WaitRepl string   `json:"wait_repl,omitempty"`
	Timeout  string   `json:"timeout,omitempty"`
	// StartTimeout bounds the wait to start; default the tenant's bound.
	StartTimeout string `json:"start_timeout,omitempty"`
	Reason       string `json:"reason,omitempty"`
	DryRun       bool   `json:"dry_run,omitempty"`
}

// VerdictRequest is the body of POST /v1/runs/{id}/approve and /deny.
type VerdictRequest struct {
	Comment string `json:"comment,omitempty"`
	// RequestHash is the request hash the approver saw (GET the run); the
	// verdict is refused when the run's differs.
	RequestHash string `json:"request_hash,omitempty"`
}
