// Package migrations holds rexec's SQL schema as goose migrations, embedded
// in the binary and applied by `rexec-svc migrate` (with River's own).
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
