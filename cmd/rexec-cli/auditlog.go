package main

import (
	"context"
	"errors"
	"io"
)

// cmdAuditLog runs the audit subcommands about the transparency log:
// checkpoint, verify, prove and verify-bundle (auditLogCommands).
func cmdAuditLog(ctx context.Context, sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return errors.New("not implemented")
}
