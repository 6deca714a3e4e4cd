package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/rexec/rexec/internal/auditproof"
)

// cmdAuditLog runs `rexec-cli audit checkpoint|verify|prove|verify-bundle`.
func cmdAuditLog(ctx context.Context, sub string, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	switch sub {
	case "checkpoint":
		return cmdAuditCheckpoint(ctx, args, stdout, stderr)
	case "verify":
		return cmdAuditVerify(ctx, args, stdout, stderr)
	case "prove":
		return cmdAuditProve(ctx, args, stdout, stderr)
	case "verify-bundle":
		return cmdAuditVerifyBundle(args, stdin, stdout, stderr)
	}
	return fmt.Errorf("unknown command \"audit %s\"", sub)
}

// cmdAuditCheckpoint prints the latest signed checkpoint, exactly, for an
// auditor to keep.
func cmdAuditCheckpoint(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit checkpoint", stderr)
	conn := addConnFlags(fs)
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	cp, err := c.AuditCheckpoint(ctx, 0)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, cp.Note)
	return err
}

func cmdAuditVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit verify", stderr)
	conn := addConnFlags(fs)
	pub := fs.String("pubkey", "", "the log's public key, or a file holding it (default $REXEC_AUDIT_PUBKEY)")
	since := fs.String("since-checkpoint", "", "a checkpoint kept from before (rexec-cli audit checkpoint > FILE): the log must extend it")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	key, err := publicKey(*pub)
	if err != nil {
		return err
	}
	var kept []byte
	if *since != "" {
		if kept, err = os.ReadFile(*since); err != nil {
			return fmt.Errorf("kept checkpoint: %w", err)
		}
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	res, err := auditproof.VerifyLog(ctx, c.AuditLog(), key, kept)
	if err != nil {
		if auditproof.IsMismatch(err) {
			fmt.Fprintf(stderr, "audit log verification FAILED: %v\n", err)
			return exitError(1)
		}
		return fmt.Errorf("audit verify: %w", err)
	}
	fmt.Fprintf(stdout, "audit log %s verified: %d events\nroot %s, signed by %s\n", res.Origin, res.Size, res.Root, key.Name())
	if kept != nil {
		cp, _ := auditproof.Open(kept, key)
		fmt.Fprintf(stdout, "it extends your kept checkpoint of %d events\n", cp.Size)
	}
	return nil
}

func cmdAuditProve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("audit prove", stderr)
	conn := addConnFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: rexec-cli audit prove RUN > bundle.json")
	}
	c, err := conn.client()
	if err != nil {
		return err
	}
	b, err := c.AuditBundle(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(b)
}

// cmdAuditVerifyBundle checks a bundle offline: no server, no database.
func cmdAuditVerifyBundle(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := newFlags("audit verify-bundle", stderr)
	pub := fs.String("pubkey", "", "the log's public key, or a file holding it (default $REXEC_AUDIT_PUBKEY)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: rexec-cli audit verify-bundle -pubkey KEY bundle.json (or - for stdin)")
	}
	key, err := publicKey(*pub)
	if err != nil {
		return err
	}
	var raw []byte
	if fs.Arg(0) == "-" {
		raw, err = io.ReadAll(stdin)
	} else {
		raw, err = os.ReadFile(fs.Arg(0))
	}
	if err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	var b auditproof.Bundle
	if err := json.Unmarshal(raw, &b); err != nil {
		fmt.Fprintf(stderr, "bundle verification FAILED: not a bundle: %v\n", err)
		return exitError(1)
	}
	cp, err := b.Verify(key)
	if err != nil {
		fmt.Fprintf(stderr, "bundle verification FAILED: %v\n", err)
		return exitError(1)
	}
	fmt.Fprintf(stdout, "bundle verified: %d events of run %s are in log %s of %d events\nroot %s, signed by %s\n",
		len(b.Events), b.Run, cp.Origin, cp.Size, cp.Root, key.Name())
	for _, e := range b.Events {
		var ev struct{ Time, Type, Actor, Node string }
		_ = json.Unmarshal([]byte(e.Body), &ev)
		fmt.Fprintf(stdout, "  leaf %-8d %s  %-22s %s %s\n", e.Leaf, ev.Time, ev.Type, ev.Actor, ev.Node)
	}
	return nil
}

// publicKey reads a verifier key given as the key itself, as a file
// holding it, or from $REXEC_AUDIT_PUBKEY.
func publicKey(v string) (note.Verifier, error) {
	if v == "" {
		v = os.Getenv("REXEC_AUDIT_PUBKEY")
	}
	if v == "" {
		return nil, errors.New("no audit public key: give -pubkey (the key, or a file holding it) or set REXEC_AUDIT_PUBKEY")
	}
	if !strings.Contains(v, "+") {
		b, err := os.ReadFile(v)
		if err != nil {
			return nil, fmt.Errorf("audit public key: %w", err)
		}
		v = string(b)
	}
	return auditproof.NewVerifierKey(v)
}

func parseNoArgs(fs interface {
	Parse([]string) error
	NArg() int
	Args() []string
}, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return nil
}
