// Package e2e holds rexec's end-to-end tests: the real rexec-svc and
// rexec-cli binaries against a real PostgreSQL and a real Consul cluster,
// compared with the real `consul exec`.
package e2e
