package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// cmdAuditKeygen makes the Ed25519 key that signs audit checkpoints.
func cmdAuditKeygen(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("audit keygen", stderr)
	name := fs.String("name", "REXEC_AUDIT_KEY_NAME", "rexec", "the key's name: the signer in every checkpoint, and the first part of each log's origin (e.g. rexec.example.com)")
	out := fs.String("out", "REXEC_AUDIT_KEY_FILE", "", "file to write the private key to (created, never overwritten, mode 0600)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *out == "" {
		return errors.New("-out FILE is required: the private key is never printed")
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, *name)
	if err != nil {
		return fmt.Errorf("audit key name %q: a name is printable ASCII without spaces or '+' (%v)", *name, err)
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	if _, err := fmt.Fprintln(f, skey); err != nil {
		f.Close()
		return fmt.Errorf("write key: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write key: %w", err)
	}
	fmt.Fprintf(stderr, "wrote the private key to %s; give it to every rexec-svc as -audit-key-file.\n", *out)
	fmt.Fprintln(stderr, "the public key, for auditors (rexec-cli audit verify -pubkey, or $REXEC_AUDIT_PUBKEY):")
	fmt.Fprintln(stdout, vkey)
	return nil
}

// readAuditKey reads a signing key written by audit keygen. The key is a
// secret: no error repeats what the file holds.
func readAuditKey(path string) (note.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	s, err := note.NewSigner(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("audit key %s: not a signing key made by `rexec-svc audit keygen`", path)
	}
	return s, nil
}
